"""The server's timers for head and keep-alive timeouts (``Deadlines``), on a real event loop, without sockets.

Stand-in protocols record when their head timed out. Both builds are checked: the module
as it runs (compiled where the build made the extension) and its Python source.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

import asgi_hijack
from asgi_hijack._native import hot

TIMEOUT = 0.2
EARLY = 0.002  # loops round timers to the millisecond


def _source() -> ModuleType:
    """``asgi_hijack/_hot.py`` loaded from its source under another name (the package's own stays)."""
    path = Path(asgi_hijack.__file__).with_name("_hot.py")
    spec = importlib.util.spec_from_file_location("asgi_hijack._hot_source", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=["as built", "source"])
def module(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    yield hot if request.param == "as built" else _source()


def _timed_out(protocol: Any) -> None:
    protocol._hj_head_timed_out()


class Waiter:
    """A protocol waiting for its head: records the loop time of its timeout."""

    def __init__(self, loop: asyncio.AbstractEventLoop, log: list[tuple[str, float]], name: str) -> None:
        self.loop, self.log, self.name = loop, log, name

    def _hj_head_timed_out(self) -> None:
        self.log.append((self.name, self.loop.time()))


def test_each_connection_times_out_at_its_own_deadline_in_order(module: ModuleType) -> None:
    async def main() -> tuple[list[tuple[str, float]], dict[str, float]]:
        loop = asyncio.get_running_loop()
        heads = module.Deadlines(loop, TIMEOUT, _timed_out)
        log: list[tuple[str, float]] = []
        added: dict[str, float] = {}
        for name in "abc":
            added[name] = loop.time()
            heads.add(Waiter(loop, log, name))
            await asyncio.sleep(TIMEOUT / 4)
        await asyncio.sleep(TIMEOUT + 0.1)
        assert not heads.waiting
        return log, added

    log, added = asyncio.run(main())
    assert [name for name, _ in log] == ["a", "b", "c"]
    for name, at in log:
        assert at >= added[name] + TIMEOUT - EARLY, f"{name} timed out {added[name] + TIMEOUT - at:.4f}s early"


def test_a_connection_that_leaves_never_times_out_and_the_next_one_still_does(module: ModuleType) -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        heads = module.Deadlines(loop, TIMEOUT, _timed_out)
        log: list[tuple[str, float]] = []
        first, second = Waiter(loop, log, "first"), Waiter(loop, log, "second")
        heads.add(first)
        await asyncio.sleep(TIMEOUT / 2)
        heads.add(second)
        heads.discard(first)  # its head came: the timer, set for its deadline, must move on to the next
        heads.discard(first)  # leaving twice is harmless
        await asyncio.sleep(TIMEOUT + 0.1)
        return log

    assert [name for name, _ in asyncio.run(main())] == ["second"]


def test_one_timer_serves_every_waiting_connection(module: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        heads = module.Deadlines(loop, TIMEOUT, _timed_out)
        log: list[tuple[str, float]] = []
        heads.add(Waiter(loop, log, "0"))
        handle = heads.handle
        for index in range(1, 100):
            heads.add(Waiter(loop, log, str(index)))
        assert heads.handle is handle  # one timer for all, not one per connection
        await asyncio.sleep(TIMEOUT * 2)
        assert len(log) == 100 and heads.handle is None  # nothing waits: no timer left behind

    asyncio.run(main())


def test_a_timeout_that_raises_is_logged_and_the_others_still_run(
    module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken:
        def _hj_head_timed_out(self) -> None:
            raise RuntimeError("boom")

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        heads = module.Deadlines(loop, TIMEOUT, _timed_out)
        log: list[tuple[str, float]] = []
        heads.add(Broken())
        heads.add(Waiter(loop, log, "after"))
        await asyncio.sleep(TIMEOUT + 0.1)
        return log

    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        assert [name for name, _ in asyncio.run(main())] == ["after"]
    assert "timeout of" in caplog.text and "boom" in caplog.text


def test_a_protocol_gets_its_servers_timer_for_its_head_timeout(module: ModuleType) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        state = SimpleNamespace()
        protocol: Any = SimpleNamespace(server_state=state, head_timeout=TIMEOUT, loop=loop)
        heads = module.head_deadlines(protocol)
        assert module.head_deadlines(protocol) is heads
        other: Any = SimpleNamespace(server_state=state, head_timeout=TIMEOUT * 2, loop=loop)
        assert module.head_deadlines(other).timeout == TIMEOUT * 2
        elsewhere: Any = SimpleNamespace(server_state=SimpleNamespace(), head_timeout=TIMEOUT, loop=loop)
        assert module.head_deadlines(elsewhere) is not heads

    asyncio.run(main())


def test_a_timeout_that_closes_another_waiting_connection_is_harmless(
    module: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    errors: list[dict[str, Any]] = []

    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _, context: errors.append(context))
        heads = module.Deadlines(loop, TIMEOUT, _timed_out)
        log: list[tuple[str, float]] = []
        second = Waiter(loop, log, "second")

        class Closer(Waiter):
            def _hj_head_timed_out(self) -> None:
                super()._hj_head_timed_out()
                heads.discard(second)  # as a connection closed now would (connection_lost)

        heads.add(Closer(loop, log, "first"))
        heads.add(second)
        await asyncio.sleep(TIMEOUT + 0.1)
        assert not heads.waiting
        return log

    with caplog.at_level(logging.ERROR, logger="uvicorn.error"):
        assert asyncio.run(main())[0][0] == "first"
    assert "timeout of" not in caplog.text and not errors


def test_keep_alive_timeouts_join_the_servers_deadlines(module: ModuleType) -> None:
    """uvicorn's ``loop.call_later(timeout_keep_alive, handler)``, asked of the stand-in loop, is a
    ``Deadlines`` entry that ``cancel()`` removes; any other ``call_later`` is the loop's own."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        protocol: Any = SimpleNamespace(server_state=SimpleNamespace(), timeout_keep_alive=TIMEOUT, loop=loop)
        stand_in = module.keep_alive_loop(protocol)
        assert module.keep_alive_loop(protocol) is stand_in
        fired: list[str] = []
        kept = stand_in.call_later(TIMEOUT, lambda: fired.append("kept"))
        cancelled = stand_in.call_later(TIMEOUT, lambda: fired.append("cancelled"))
        other = stand_in.call_later(TIMEOUT / 2, lambda: fired.append("other"))
        assert isinstance(other, asyncio.TimerHandle) and isinstance(kept, module.KeepAlive)
        assert stand_in.create_task == loop.create_task  # the rest is the loop's
        cancelled.cancel()
        await asyncio.sleep(TIMEOUT + 0.1)
        assert not stand_in.deadlines.waiting
        return fired

    assert asyncio.run(main()) == ["other", "kept"]
