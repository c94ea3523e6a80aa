"""Starlette helpers: hijack from an endpoint and return a response that writes nothing.

A Starlette endpoint must return a response, and any HTTP response sent after a hijack
is refused. Two ways to write a hijacking endpoint::

    async def shell(request: Request) -> Response:
        async def talk(conn: HijackedConnection) -> None:
            conn.writer.write(b"hello\\n")

        return HijackResponse(talk, status=101, headers=[(b"upgrade", b"tcp"), (b"connection", b"Upgrade")])

    async def raw(request: Request) -> Response:
        conn = await hijack(request)
        async with conn:
            conn.writer.write(b"hello\\n")
        return Hijacked()
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable

from starlette.background import BackgroundTask
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .api import hijack, require_hijacked
from .connection import HijackedConnection

__all__ = ["HijackResponse", "Hijacked"]


class HijackResponse(Response):
    """Hijack the connection when sent, run ``handler(conn)``, then close the connection.

    ``status``, ``reason`` and ``headers`` are the response head the server writes and
    flushes before the handler runs (none by default). ``background`` runs after the
    connection is closed.
    """

    def __init__(
        self,
        handler: Callable[[HijackedConnection], Awaitable[None]],
        *,
        status: int | None = None,
        reason: str | None = None,
        headers: Iterable[tuple[bytes, bytes]] = (),
        background: BackgroundTask | None = None,
    ) -> None:
        self.handler = handler
        self.status_code = status or 0
        self.reason = reason
        self.head_headers = list(headers)
        self.raw_headers = []
        self.body = b""
        self.background = background

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        conn = await hijack(
            scope, receive, send, status=self.status_code or None, reason=self.reason, headers=self.head_headers
        )
        async with conn:
            await self.handler(conn)
        if self.background is not None:
            await self.background()


class Hijacked(Response):
    """Return this from an endpoint that called ``hijack(request)`` itself: it sends nothing.

    Raises :class:`RuntimeError` if the request was not hijacked, rather than leave the
    client without a response.
    """

    def __init__(self) -> None:
        self.status_code = 0
        self.raw_headers = []
        self.body = b""
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        require_hijacked(scope)
