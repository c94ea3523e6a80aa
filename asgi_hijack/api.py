"""``hijack()``: take over the connection behind an HTTP/1.x request."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, Protocol, overload

from .connection import HijackedConnection
from .errors import AlreadyHijackedError, HijackError, HijackNotSupported, MiddlewareBlockedError

__all__ = ["EXTENSION", "hijack", "hijack_supported"]

EXTENSION = "http.hijack"
"""The ASGI extension of this library (see docs/spec.md)."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PROTOCOL_HINT = (
    "run uvicorn with --http asgi_hijack:HijackProtocol (or H11HijackProtocol, HttpToolsHijackProtocol, "
    "ZttpHijackProtocol)"
)


class _RequestLike(Protocol):
    """What hijack() needs of a Starlette ``Request``."""

    @property
    def scope(self) -> Any: ...
    @property
    def receive(self) -> Any: ...
    @property
    def _send(self) -> Any: ...


def _describe(send: object) -> str:
    """Name a send callable: the class of a bound method's instance (the real middleware), or the function."""
    owner = getattr(send, "__self__", None)
    func = getattr(send, "__func__", send)
    name = getattr(func, "__name__", None) or type(send).__qualname__
    if owner is not None:
        return f"{type(owner).__module__}.{type(owner).__qualname__}.{name}"
    return f"{getattr(func, '__module__', None) or type(send).__module__}.{getattr(func, '__qualname__', name)}"


def _unsupported(scope: Scope) -> HijackNotSupported:
    if scope.get("type") != "http":
        return HijackNotSupported(
            f"hijack() needs an HTTP request scope, got type {scope.get('type')!r}. For a WebSocket "
            "upgrade you want to handle yourself, start uvicorn with --ws none so that it reaches the "
            "app as an HTTP request."
        )
    version = str(scope.get("http_version", ""))
    if version.startswith(("2", "3")):
        return HijackNotSupported(
            f"hijack() is not possible on HTTP/{version}: the connection multiplexes many requests as "
            "streams, so no request can own the socket. Serve this route over HTTP/1.1: with "
            "asgi_hijack's ZttpHijackProtocol, an unhandled HijackNotSupported resets the stream with "
            "HTTP_1_1_REQUIRED, and clients such as curl and browsers then retry over HTTP/1.1, where "
            "the hijack works. For WebSockets, use the server's WebSocket support (an ASGI 'websocket' "
            "scope) instead of hijacking."
        )
    if scope.get("client") == ("testclient", 50000):
        return HijackNotSupported(
            "hijack() does not work under Starlette's TestClient: it has no socket to hand over. "
            "Run the app on a real server in tests with the asgi_hijack pytest fixture "
            "(`hijack_server`, see asgi_hijack.testing)."
        )
    return HijackNotSupported(
        f"the server did not offer the {EXTENSION!r} ASGI extension for this HTTP/{version} request, "
        f"so the connection cannot be taken over. With uvicorn, {PROTOCOL_HINT}; other servers "
        "(hypercorn, daphne, granian) do not implement the extension."
    )


def hijack_supported(scope: Scope) -> bool:
    """True if the server offers ``http.hijack`` for this request (HTTP/1.x on our protocols)."""
    return EXTENSION in (scope.get("extensions") or {})


@overload
async def hijack(
    scope: Scope,
    receive: Receive,
    send: Send,
    *,
    status: int | None = None,
    reason: bytes | str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> HijackedConnection: ...


@overload
async def hijack(
    scope: _RequestLike,
    receive: None = None,
    send: None = None,
    *,
    status: int | None = None,
    reason: bytes | str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> HijackedConnection: ...


async def hijack(
    scope: Any,
    receive: Receive | None = None,
    send: Send | None = None,
    *,
    status: int | None = None,
    reason: bytes | str | None = None,
    headers: Iterable[tuple[bytes, bytes]] = (),
) -> HijackedConnection:
    """Take over the connection of this HTTP/1.x request; the server lets go of it.

    Pass ``(scope, receive, send)``, or a Starlette ``Request``. With ``status`` (and
    ``headers``, ``reason``) the server first writes that response head and flushes it
    on its own; without, nothing is written. The returned connection's reader yields
    the bytes the server had read but the app had not received, then socket data.

    Raises a :class:`HijackError` subclass that says why and what to do: unsupported
    server or protocol (:class:`HijackNotSupported`), second hijack, response already
    started, app already returned, client gone, or a middleware that blocked it.
    """
    if send is None:
        request = scope
        scope, send = request.scope, request._send
    assert send is not None
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    if extension is None:
        raise _unsupported(scope)
    if "connection" in extension:
        raise AlreadyHijackedError("this connection was already hijacked; hijack() may be called once per request")
    if "BaseHTTPMiddleware" in _describe(send):
        raise MiddlewareBlockedError(
            "hijack() cannot pass through Starlette's BaseHTTPMiddleware: it runs the endpoint in a "
            "separate task and rebuilds the response from http.response.* messages, so the "
            "http.hijack message never reaches the server. Rewrite that middleware as pure ASGI "
            "middleware (forward messages it does not know), or exclude this route from it."
        )
    message: dict[str, Any] = {"type": EXTENSION, "status": status, "reason": reason, "headers": list(headers)}
    try:
        await send(message)
    except (HijackError, ValueError):
        raise
    except Exception as exc:
        raise MiddlewareBlockedError(
            f"the http.hijack message was rejected on its way to the server by {_describe(send)}: "
            f"{exc!r}. Middleware that wraps send must forward message types it does not know."
        ) from exc
    conn = extension.get("connection")
    if not isinstance(conn, HijackedConnection):
        raise MiddlewareBlockedError(
            f"the http.hijack message never reached the server: {_describe(send)} (a middleware "
            "between this app and the server) dropped it. Middleware that wraps send must forward "
            "message types it does not know; move the hijacking route outside that middleware."
        )
    return conn
