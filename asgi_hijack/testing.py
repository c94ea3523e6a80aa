"""Test helpers: run an app on a real uvicorn server with a hijack protocol.

Starlette's ``TestClient`` has no socket, so ``hijack()`` cannot work there. This module
runs the app on a real uvicorn server on ``127.0.0.1`` and an ephemeral port, in a
background thread, and hands the test its address. It is a pytest plugin (entry point
``asgi_hijack``) providing the ``hijack_server`` fixture::

    def test_echo(hijack_server):
        server = hijack_server(app)                      # HijackProtocol, asyncio loop
        with socket.create_connection(server.address) as sock:
            ...

``hijack_server(app, protocol="h11" | "httptools" | "zttp" | <class>, **uvicorn_config)``.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from uvicorn.importer import import_from_string

from . import adapter

__all__ = ["PROTOCOLS", "RunningServer", "hijack_server", "protocol_class", "serve"]

PROTOCOLS: dict[str, str] = {
    "auto": "asgi_hijack:HijackProtocol",
    "h11": "asgi_hijack:H11HijackProtocol",
    "httptools": "asgi_hijack:HttpToolsHijackProtocol",
    "zttp": "asgi_hijack:ZttpHijackProtocol",
}


def protocol_class(protocol: str | type[asyncio.Protocol]) -> type[asyncio.Protocol]:
    """The protocol class for a short name (``h11``, ``httptools``, ``zttp``, ``auto``), an import
    string (``module:Class``) or a class; a class, because uvicorn before 0.36 takes no import string."""
    if isinstance(protocol, str):
        imported: type[asyncio.Protocol] = import_from_string(PROTOCOLS.get(protocol, protocol))
        return imported
    return protocol


@dataclass
class RunningServer:
    """A uvicorn server running in a background thread."""

    server: uvicorn.Server
    thread: threading.Thread
    host: str = "127.0.0.1"
    port: int = 0
    uds: str | None = None
    errors: list[BaseException] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    @property
    def url(self) -> str:
        scheme = "https" if self.server.config.is_ssl else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The server's event loop (to run checks inside the server with ``call_soon_threadsafe``)."""
        loop: asyncio.AbstractEventLoop = self._loop
        return loop

    _loop: Any = None

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit (as on SIGINT) and wait for its thread."""
        self.server.should_exit = True
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(timeout)


@contextlib.contextmanager
def serve(
    app: Any,
    protocol: str | type[asyncio.Protocol] = "auto",
    **config: Any,
) -> Iterator[RunningServer]:
    """Run ``app`` on uvicorn with a hijack protocol until the block exits."""
    options: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "lifespan": "off",
        "log_level": "warning",
        "loop": "asyncio",
    }
    options.update(config)
    options["http"] = protocol_class(options.pop("http", protocol))
    uds = options.get("uds")
    sock: socket.socket | None = None
    if uds is None:
        # IPPROTO_TCP, as the sockets uvicorn makes itself: asyncio sets TCP_NODELAY only on accepted
        # sockets whose proto says TCP (with 0, small writes wait ~40 ms for the peer's delayed ACK).
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((options["host"], options.pop("port")))
        options["port"] = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, **options))
    running = RunningServer(server=server, thread=threading.Thread(), port=options.get("port", 0), uds=uds)

    async def main() -> None:
        running._loop = asyncio.get_running_loop()
        await server.serve(sockets=[sock] if sock is not None else None)

    def target() -> None:
        try:
            with asyncio.Runner(loop_factory=adapter.loop_factory(server.config)) as runner:
                runner.run(main())
        except BaseException as exc:  # reported to the test
            running.errors.append(exc)

    running.thread = threading.Thread(target=target, name="uvicorn-test-server", daemon=True)
    running.thread.start()
    try:
        deadline = 100
        while not server.started and running.thread.is_alive() and deadline:
            threading.Event().wait(0.05)
            deadline -= 1
        if not server.started:
            raise RuntimeError(f"uvicorn did not start: {running.errors!r}")
        yield running
    finally:
        running.stop()
        if sock is not None:
            sock.close()


@pytest.fixture
def hijack_server() -> Iterator[Callable[..., RunningServer]]:
    """Factory fixture: ``hijack_server(app, protocol="auto", **uvicorn_config)`` -> RunningServer."""
    with contextlib.ExitStack() as stack:

        def start(app: Any, protocol: str | type[asyncio.Protocol] = "auto", **config: Any) -> RunningServer:
            return stack.enter_context(serve(app, protocol, **config))

        yield start
