"""HTTP/2 over zttp: uvicorn's protocol with a refused hijack mapped to ``HTTP_1_1_REQUIRED``.

HTTP/2 multiplexes many requests on one connection, so no request may take the
socket: ``http.hijack`` is not advertised and :func:`asgi_hijack.hijack` raises
:class:`~asgi_hijack.errors.HijackNotSupported`. If the application does not
handle that (lets it escape, or answers it with a 500 from error middleware), the
stream is reset with ``RST_STREAM`` ``HTTP_1_1_REQUIRED`` (RFC 9113 section 8.1)
instead, so clients retry the request over HTTP/1.1, where the hijack works. Sibling
streams on the connection are untouched.

Everything else is uvicorn's ``ZttpH2Protocol``, plus one fix: uvicorn 0.54 never
wakes ``receive()`` for a request whose HEADERS frame ends the stream (a GET).
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable
from typing import Any

import zttp
from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, ASGISendEvent, Scope
from uvicorn.config import Config
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.server import ServerState
from zttp.error_codes import H2ErrorCode

from . import adapter
from .errors import HijackNotSupported

__all__ = ["ZttpH2HijackProtocol"]


def _refuse(send: ASGISendCallable, exc: HijackNotSupported) -> bool:
    """Reset the stream of ``send`` with ``HTTP_1_1_REQUIRED`` unless its response started.

    Returns False if the response had started: then the stream is left to uvicorn.
    """
    cycle = adapter.h2_cycle_of(send)
    if cycle is None or cycle.response_started:
        return False
    if not cycle.disconnected:
        cycle.logger.info("HTTP/2 stream %d reset with HTTP_1_1_REQUIRED: %s", cycle.stream.stream_id, exc)
        adapter.reset_stream(cycle, H2ErrorCode.HTTP_1_1_REQUIRED)
    return True


def _reset_refused_hijacks(app: ASGI3Application) -> ASGI3Application:
    """Wrap ``app`` so that a ``HijackNotSupported`` it does not handle resets the stream.

    "Not handled" is either the exception escaping before a response started, or a
    500 response started while it is being handled: what error middleware such as
    Starlette's ``ServerErrorMiddleware`` sends before re-raising. Costs one
    coroutine frame and a plain ``send`` wrapper per request (well under 1 us).
    """

    async def run(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
        def guarded_send(message: ASGISendEvent) -> Awaitable[None]:
            if message["type"] == "http.response.start" and message["status"] == 500:
                exc = sys.exc_info()[1]
                if isinstance(exc, HijackNotSupported):
                    _refuse(send, exc)
            return send(message)

        try:
            return await app(scope, receive, guarded_send)
        except HijackNotSupported as exc:
            if not _refuse(send, exc):
                raise

    return run


class ZttpH2HijackProtocol(ZttpH2Protocol):
    """uvicorn's zttp HTTP/2 protocol; an unhandled ``HijackNotSupported`` resets the stream.

    Not for ``uvicorn --http`` on its own (it cannot serve HTTP/1.1 clients): use
    :class:`asgi_hijack.zttp_auto.ZttpHijackProtocol`, which dispatches to it.
    """

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.app = _reset_refused_hijacks(self.app)

    def handle_request(self, event: zttp.Request) -> None:
        super().handle_request(event)
        if event.end_stream:  # HEADERS carried END_STREAM: no Data or EndOfMessage event follows
            adapter.end_headers_only_request(self, event.stream_id)  # type: ignore[arg-type]
