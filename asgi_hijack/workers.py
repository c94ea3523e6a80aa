"""gunicorn worker classes: ``gunicorn app:app -k asgi_hijack.workers.HijackWorker``.

They are the ``uvicorn-worker`` package's worker classes with a hijack protocol class
(``pip install 'asgi-hijack[gunicorn]'``), plus a shutdown that fits gunicorn's clock:

* On SIGTERM, which gunicorn sends to a worker on ``gunicorn`` shutdown and to the old
  workers on a SIGHUP reload, uvicorn notifies the owners of hijacked connections
  (``conn.shutdown_requested``) and waits for them. The drain lasts gunicorn's
  ``--graceful-timeout`` less :data:`EXIT_MARGIN` (it is uvicorn's
  ``timeout_graceful_shutdown``); then the connections still open are closed, and the worker
  exits before gunicorn would kill it.
* The worker touches gunicorn's heartbeat file from an event loop task for its whole life,
  the drain included, so the arbiter never kills a draining worker for a missed heartbeat,
  and still kills one whose event loop is stuck.
"""

from __future__ import annotations

import asyncio
from typing import Any

try:
    from uvicorn_worker import UvicornWorker
except ImportError as exc:
    raise ImportError(
        f"asgi_hijack.workers needs gunicorn, uvicorn-worker and uvicorn 0.36 or newer ({exc}): "
        "pip install 'asgi-hijack[gunicorn]'"
    ) from exc

__all__ = ["EXIT_MARGIN", "HEARTBEAT", "HijackH11Worker", "HijackWorker", "drain_seconds"]

EXIT_MARGIN = 1.0
"""Seconds of gunicorn's ``--graceful-timeout`` kept for the rest of the shutdown (lifespan,
exit) after the drain; at most half of it."""

HEARTBEAT = 1.0
"""Seconds between heartbeats, or half of gunicorn's notify interval if that is shorter."""


def drain_seconds(graceful_timeout: float) -> float:
    """How long a worker waits for hijacked connections when gunicorn gives it ``graceful_timeout``."""
    return max(graceful_timeout - EXIT_MARGIN, graceful_timeout / 2)


class HijackWorker(UvicornWorker):
    """uvicorn's worker with ``asgi_hijack:HijackProtocol`` (httptools if installed, else h11)."""

    # An instance variable in uvicorn-worker, so no ClassVar.
    CONFIG_KWARGS: dict[str, Any] = {"loop": "auto", "http": "asgi_hijack:HijackProtocol"}  # noqa: RUF012

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn annotates it as int, and takes any number of seconds.
        self.config.timeout_graceful_shutdown = drain_seconds(self.cfg.graceful_timeout)  # type: ignore[assignment]

    async def _serve(self) -> None:
        # uvicorn-worker's coroutine that runs the server: run the heartbeat beside it.
        heartbeat = asyncio.create_task(self._heartbeat())
        try:
            await super()._serve()
        finally:
            heartbeat.cancel()

    async def _heartbeat(self) -> None:
        # gunicorn's notify interval (self.timeout) is half its --timeout; 0 disables the check.
        interval = min(HEARTBEAT, self.timeout / 2) or HEARTBEAT
        while True:
            await self.callback_notify()
            await asyncio.sleep(interval)


class HijackH11Worker(HijackWorker):
    """The same with ``asgi_hijack:H11HijackProtocol`` and the asyncio loop, like ``UvicornH11Worker``."""

    CONFIG_KWARGS: dict[str, Any] = {"loop": "asyncio", "http": "asgi_hijack:H11HijackProtocol"}  # noqa: RUF012
