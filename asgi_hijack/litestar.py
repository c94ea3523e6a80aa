"""Litestar: return :class:`Hijacked` from a handler that called ``hijack(request)``.

A Litestar handler's return value becomes a response, and any HTTP response sent after a
hijack is refused. A handler annotated ``-> Hijacked`` returns an ASGI app that sends
nothing, so Litestar writes nothing and logs nothing::

    @get("/raw")
    async def raw(request: Request) -> Hijacked:
        conn = await hijack(request)
        async with conn:
            conn.writer.write(b"hello\\n")
        return Hijacked()

Litestar's own ``@asgi`` handlers take ``(scope, receive, send)`` and need nothing from here.
"""

from __future__ import annotations

from .api import Receive, Scope, Send, require_hijacked

__all__ = ["Hijacked"]


class Hijacked:
    """An ASGI app that sends nothing: the return value of a handler that hijacked its request.

    Raises :class:`RuntimeError` if the request was not hijacked, rather than leave the
    client without a response.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        require_hijacked(scope)
