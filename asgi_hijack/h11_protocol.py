"""``H11HijackProtocol``: uvicorn's h11 protocol with the ``http.hijack`` extension."""

from __future__ import annotations

from uvicorn.protocols.http.h11_impl import H11Protocol

from .core import HijackServerMixin

__all__ = ["H11HijackProtocol"]


class H11HijackProtocol(HijackServerMixin, H11Protocol):
    """HTTP/1.x over h11, hijackable. Use with ``uvicorn --http asgi_hijack:H11HijackProtocol``."""

    _hj_strict_lf = False  # h11 accepts bare LF: such heads must take the slow path, to be framed as h11 does
