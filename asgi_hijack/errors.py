"""Exceptions raised by :func:`asgi_hijack.hijack` and by the server side of ``http.hijack``.

Every error says what happened and what to do; all derive from :class:`HijackError`.
"""

from __future__ import annotations

__all__ = [
    "AlreadyHijackedError",
    "AppReturnedError",
    "ClientDisconnectedError",
    "HijackError",
    "HijackLimitError",
    "HijackNotSupported",
    "IncompleteBodyError",
    "MiddlewareBlockedError",
    "ResponseStartedError",
    "TunnelNotSupported",
]


class HijackError(RuntimeError):
    """Base class: the connection could not be hijacked, or was used after hijacking."""


class HijackNotSupported(HijackError):
    """The server, or the protocol of this request, cannot surrender its connection.

    Raised for HTTP/2 and HTTP/3 requests (many requests share one connection), for
    servers that do not offer the ``http.hijack`` extension (stock uvicorn, hypercorn,
    daphne, granian), and under Starlette's ``TestClient`` (there is no socket).
    """


class TunnelNotSupported(HijackNotSupported):
    """This request cannot become a byte stream with :func:`asgi_hijack.tunnel`.

    Raised for a request that asks for no tunnel (neither ``CONNECT`` nor ``Upgrade``), and
    where the server offers neither ``http.hijack`` (HTTP/1.x) nor ``http.tunnel`` (HTTP/2).
    A subclass of :class:`HijackNotSupported`, so an unhandled one on HTTP/2 also resets the
    stream with ``HTTP_1_1_REQUIRED``.
    """


class AlreadyHijackedError(HijackError):
    """The connection was already hijacked: a second hijack, or an HTTP ``send`` after it."""


class ResponseStartedError(HijackError):
    """An HTTP response was already started or completed on this request."""


class AppReturnedError(HijackError):
    """The ASGI application already returned for this request; the server has moved on."""


class ClientDisconnectedError(HijackError):
    """The client closed or reset the connection before the hijack."""


class IncompleteBodyError(HijackError):
    """A chunked request body is only partly received; its framing cannot be handed over."""


class MiddlewareBlockedError(HijackError):
    """A middleware between the app and the server dropped or rejected the ``http.hijack`` message."""


class HijackLimitError(HijackError):
    """The server's cap on concurrent hijacked connections (``max_hijacked``) is reached.

    Raised before anything is written, so the app can still answer, e.g. with a 503.
    """
