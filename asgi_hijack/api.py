"""``hijack()``: take over the connection behind an HTTP/1.x request."""

from __future__ import annotations

import contextlib
import functools
import types
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any, Protocol, TypeVar, overload

from .connection import HijackedConnection
from .errors import AlreadyHijackedError, HijackError, HijackNotSupported, MiddlewareBlockedError

__all__ = ["EXTENSION", "hijack", "hijack_supported"]

EXTENSION = "http.hijack"
"""The ASGI extension of this library (see docs/spec.md)."""

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
T = TypeVar("T")

PROTOCOL_HINT = (
    "run uvicorn with --http asgi_hijack:HijackProtocol (or H11HijackProtocol, HttpToolsHijackProtocol, "
    "ZttpHijackProtocol)"
)


class _RequestLike(Protocol):
    """A request object: Starlette's and FastAPI's ``Request`` (``_send``), Litestar's (``send``)."""

    @property
    def scope(self) -> Any: ...
    @property
    def receive(self) -> Any: ...


_USAGE = (
    "pass the ASGI (scope, receive, send) of an HTTP request, or a request object that carries them: "
    "a Starlette or FastAPI Request (hijack(request)) or a Litestar Request"
)


_SCOPE_TYPES = (dict, MutableMapping)
"""dict first: ``isinstance`` against the ABC runs Python code each time for a registered class such as dict."""


def scope_and_send(scope: Any, receive: Any, send: Any, caller: str = "hijack") -> tuple[Scope, Send]:
    """The scope and send of ``hijack()``'s (or ``tunnel()``'s) arguments, or a TypeError that says what to pass."""
    request = receive is None and send is None  # a request object (Starlette's is also a Mapping)
    given = scope
    if request:
        scope = getattr(given, "scope", None)
        receive = getattr(given, "receive", None)
        send = getattr(given, "_send", None) or getattr(given, "send", None)
    if not (isinstance(scope, _SCOPE_TYPES) and callable(receive) and callable(send)):
        if request:
            what = f"a {type(given).__module__}.{type(given).__qualname__} and no receive or send"
        else:
            what = f"({type(scope).__name__}, {type(receive).__name__}, {type(send).__name__})"
        raise TypeError(f"{caller}() got {what}: {_USAGE.replace('hijack(', caller + '(')}.")
    return scope, send


_BLOCKING_MIDDLEWARE = ("starlette.middleware.base", "BaseHTTPMiddleware.")
"""Where the closures of Starlette's BaseHTTPMiddleware live: its ``send`` is one of them."""
_SERVER_MODULES = ("asgi_hijack.core", "asgi_hijack._hot")
"""Modules that define the server's own ``send`` wrapper: the chain ends there."""
_CALLABLES = (types.FunctionType, types.MethodType, functools.partial)


def _wrapped(send: object) -> list[object]:
    """What ``send`` delegates to: its closure cells, a bound method's instance attributes, a partial's contents."""
    found: list[object] = []
    if isinstance(send, functools.partial):
        found.extend([send.func, *send.args, *send.keywords.values()])
    if isinstance(send, types.MethodType):
        found.extend(getattr(send.__self__, "__dict__", {}).values())
        send = send.__func__
    if isinstance(send, types.FunctionType):
        for cell in send.__closure__ or ():
            with contextlib.suppress(ValueError):  # an empty cell
                found.append(cell.cell_contents)
    return [item for item in found if isinstance(item, _CALLABLES)]


def _send_chain(send: object, limit: int = 100) -> Iterator[object]:
    """``send`` and the callables it wraps up to the server's, nearest first (at most ``limit``)."""
    queue, seen = [send], set[int]()
    while queue and len(seen) < limit:
        current = queue.pop(0)
        if id(current) not in seen:
            seen.add(id(current))
            yield current
            if getattr(current, "__module__", None) not in _SERVER_MODULES:
                queue.extend(_wrapped(current))


def _base_http_middleware(send: Send) -> bool:
    """True if a Starlette ``BaseHTTPMiddleware`` is anywhere between this ``send`` and the server."""
    if getattr(send, "__module__", None) in _SERVER_MODULES:  # the server's own: nothing in between
        return False
    module, prefix = _BLOCKING_MIDDLEWARE
    return any(
        getattr(item, "__module__", None) == module and getattr(item, "__qualname__", "").startswith(prefix)
        for item in _send_chain(send)
    )


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


async def deliver(
    caller: str, send: Send, message: dict[str, Any], extension: MutableMapping[str, Any], key: str, expected: type[T]
) -> T:
    """Send ``message`` (``http.hijack``, ``http.tunnel.accept``) to the server; return the ``expected``
    object it put in ``extension[key]``. Raises :class:`MiddlewareBlockedError`, naming the middleware
    in the way, when there is one."""
    kind = message["type"]
    if _base_http_middleware(send):
        raise MiddlewareBlockedError(
            f"{caller}() cannot pass through Starlette's BaseHTTPMiddleware: it runs the endpoint in a "
            "separate task and rebuilds the response from http.response.* messages, so the "
            f"{kind} message never reaches the server. One is between this app and the server "
            '(FastAPI\'s @app.middleware("http") makes one). Rewrite that middleware as pure ASGI '
            "middleware (forward messages it does not know), or serve this route outside it; the "
            "app can still answer this request over HTTP."
        )
    try:
        await send(message)
    except (HijackError, ValueError, ConnectionError):  # the server's own answer
        raise
    except Exception as exc:
        raise MiddlewareBlockedError(
            f"the {kind} message was rejected on its way to the server by {_describe(send)}: "
            f"{exc!r}. Middleware that wraps send must forward message types it does not know."
        ) from exc
    found = extension.get(key)
    if not isinstance(found, expected):
        raise MiddlewareBlockedError(
            f"the {kind} message never reached the server: {_describe(send)} (a middleware "
            "between this app and the server) dropped it. Middleware that wraps send must forward "
            "message types it does not know; move this route outside that middleware."
        )
    return found


def require_hijacked(scope: Scope) -> None:
    """Raise :class:`RuntimeError` unless this request was hijacked (for ``Hijacked`` responses)."""
    if "connection" not in (scope.get("extensions") or {}).get(EXTENSION, {}):
        raise RuntimeError("Hijacked() returned by a handler that did not hijack: call hijack(request) first")


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

    Pass ``(scope, receive, send)``, or a request object: Starlette's, FastAPI's or Litestar's
    ``Request`` (anything else raises :class:`TypeError`). With ``status`` (and
    ``headers``, ``reason``) the server first writes that response head and flushes it
    on its own; without, nothing is written. The returned connection's reader yields
    the bytes the server had read but the app had not received, then socket data.

    Raises a :class:`HijackError` subclass that says why and what to do: unsupported
    server or protocol (:class:`HijackNotSupported`), second hijack, response already
    started, app already returned, client gone, or a middleware that blocked it.
    """
    scope, send = scope_and_send(scope, receive, send)
    extension = (scope.get("extensions") or {}).get(EXTENSION)
    if extension is None:
        raise _unsupported(scope)
    if "connection" in extension:
        raise AlreadyHijackedError("this connection was already hijacked; hijack() may be called once per request")
    message = {"type": EXTENSION, "status": status, "reason": reason, "headers": list(headers)}
    return await deliver("hijack", send, message, extension, "connection", HijackedConnection)
