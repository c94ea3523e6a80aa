"""asgi-hijack: Go's ``http.Hijacker`` for ASGI on uvicorn.

Run ``uvicorn app:app --http asgi_hijack:HijackProtocol`` and call
``conn = await hijack(scope, receive, send)`` in the app.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .api import hijack, hijack_supported
from .connection import HijackedConnection
from .errors import (
    AlreadyHijackedError,
    AppReturnedError,
    ClientDisconnectedError,
    HijackError,
    HijackLimitError,
    HijackNotSupported,
    IncompleteBodyError,
    MiddlewareBlockedError,
    ResponseStartedError,
    TunnelNotSupported,
)
from .tunnel import Tunnel, tunnel, tunnel_supported

if TYPE_CHECKING:
    from .h11_protocol import H11HijackProtocol
    from .httptools_protocol import HttpToolsHijackProtocol
    from .zttp_auto import ZttpHijackProtocol

__all__ = [
    "AlreadyHijackedError",
    "AppReturnedError",
    "ClientDisconnectedError",
    "H11HijackProtocol",
    "HijackError",
    "HijackLimitError",
    "HijackNotSupported",
    "HijackProtocol",
    "HijackedConnection",
    "HttpToolsHijackProtocol",
    "IncompleteBodyError",
    "MiddlewareBlockedError",
    "ResponseStartedError",
    "Tunnel",
    "TunnelNotSupported",
    "ZttpHijackProtocol",
    "compiled",
    "hijack",
    "hijack_supported",
    "tunnel",
    "tunnel_supported",
]

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Protocol classes are imported on first use, after the uvicorn version check (adapter),
    # so that an app that only calls hijack() imports nothing of uvicorn's protocols.
    if name.endswith("Protocol"):
        from . import adapter  # noqa: F401  (raises ImportError on an unsupported uvicorn)
    if name == "H11HijackProtocol":
        from .h11_protocol import H11HijackProtocol

        return H11HijackProtocol
    if name == "HttpToolsHijackProtocol":
        from .httptools_protocol import HttpToolsHijackProtocol

        return HttpToolsHijackProtocol
    if name == "ZttpHijackProtocol":
        from .adapter import require_zttp

        require_zttp()
        from .zttp_auto import ZttpHijackProtocol

        return ZttpHijackProtocol
    if name == "compiled":  # True if the server's per-request path runs as a C extension (README, Compiled)
        from ._native import compiled

        return compiled
    if name == "HijackProtocol":
        try:
            from .httptools_protocol import HttpToolsHijackProtocol
        except ImportError:
            from .h11_protocol import H11HijackProtocol

            return H11HijackProtocol
        return HttpToolsHijackProtocol
    raise AttributeError(f"module 'asgi_hijack' has no attribute {name!r}")
