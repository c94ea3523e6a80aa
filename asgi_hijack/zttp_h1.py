"""``ZttpH1HijackProtocol``: uvicorn's zttp HTTP/1.1 protocol with the ``http.hijack`` extension."""

from __future__ import annotations

from uvicorn.protocols.http.zttp_impl import ZttpProtocol

from .core import HijackServerMixin

__all__ = ["ZttpH1HijackProtocol"]


class ZttpH1HijackProtocol(HijackServerMixin, ZttpProtocol):
    """HTTP/1.x over zttp, hijackable (``ZttpHijackProtocol`` adds HTTP/2)."""
