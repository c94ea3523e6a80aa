"""One ``uvicorn --http`` class for zttp: HTTP/1.1 with ``http.hijack``, and HTTP/2.

uvicorn refuses ``--http2`` together with a custom ``--http`` class, so this class
picks the protocol per connection itself, exactly as uvicorn's ``AutoZttpProtocol``:
by ALPN over TLS (it advertises ``h2, http/1.1``) and by sniffing the HTTP/2
preface on cleartext (prior knowledge). ``Upgrade: h2c`` is not honoured; on
HTTP/1.1 it is an upgrade token like any other, which the app may hijack.

Settings (:class:`~asgi_hijack.settings.HijackSettings`) set on a subclass of this class
are forwarded to the HTTP/1.1 and HTTP/2 protocols it dispatches to (copied when the subclass
is made: set them in its class body).
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol
from uvicorn.protocols.utils import is_ssl

from . import adapter
from ._native import hot
from .proxy_protocol import intercept, refuse_tls
from .settings import SETTINGS, HijackSettings
from .zttp_h1 import ZttpH1HijackProtocol
from .zttp_h2 import ZttpH2HijackProtocol

__all__ = ["ZttpHijackProtocol"]


class ZttpHijackProtocol(HijackSettings, AutoZttpProtocol):
    """``uvicorn app:app --http asgi_hijack:ZttpHijackProtocol``: HTTP/1.1 and HTTP/2 on zttp.

    HTTP/1.1 connections get :class:`~asgi_hijack.zttp_h1.ZttpH1HijackProtocol`, HTTP/2
    connections :class:`~asgi_hijack.zttp_h2.ZttpH2HijackProtocol`.
    """

    h1_protocol: ClassVar[type[ZttpH1HijackProtocol]] = ZttpH1HijackProtocol
    """The HTTP/1.1 class; a subclass gets its own, which reads the subclass's settings."""
    h2_protocol: ClassVar[type[ZttpH2HijackProtocol]] = ZttpH2HijackProtocol
    """The HTTP/2 class; a subclass gets its own too (``h2_websockets``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Copied when the subclass is made: a class attribute costs nothing per connection to read.
        settings = {name: getattr(cls, name) for name in SETTINGS}
        cls.h1_protocol = type(f"{cls.__name__}H1", (cls.h1_protocol,), {**settings, "__module__": cls.__module__})
        cls.h2_protocol = type(f"{cls.__name__}H2", (cls.h2_protocol,), {**settings, "__module__": cls.__module__})

    _hj_heads: hot.Deadlines | None = None
    """The server's head timer, while this connection waits in it for its first bytes."""

    def __init__(
        self, config: Any, server_state: Any, app_state: dict[str, Any], _loop: asyncio.AbstractEventLoop | None = None
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)  # (uvicorn's signature: no *args, **kwargs to pack)
        if self.proxy_protocol != "off" and self.config.is_ssl:
            refuse_tls(self)  # PROXY protocol: the header would come before the TLS handshake

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if self.proxy_protocol != "off" and intercept(self, transport, self.proxy_protocol, self.proxy_trusted):
            return  # PROXY protocol: called again once the header is read, before the HTTP/2 sniffing
        if is_ssl(transport):  # ALPN decides: uvicorn's connection_made switches protocols at once
            super().connection_made(transport)
            return
        # Cleartext, waiting to tell the HTTP/2 preface from HTTP/1.1: bound it by the head timeout
        # (uvicorn uses the keep-alive timeout, even while a prefix trickles in), with the server's
        # one head timer instead of a timer per connection.
        adapter.dispatch_without_timer(self, super().connection_made, transport)
        self._hj_heads = hot.head_deadlines(self)
        self._hj_heads.add(self)

    def _hj_head_timed_out(self) -> None:
        """No HTTP/1.1 or HTTP/2 bytes within ``head_timeout`` (called by the server's head timer)."""
        self._hj_heads = None
        self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._hj_heads is not None:
            self._hj_heads.discard(self)
        super().connection_lost(exc)

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        if self._hj_heads is not None:
            self._hj_heads.discard(self)
            self._hj_heads = None
        protocol_class = self.h2_protocol if http2 else self.h1_protocol
        protocol: asyncio.Protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
        )
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
