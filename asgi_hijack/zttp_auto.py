"""One ``uvicorn --http`` class for zttp: HTTP/1.1 with ``http.hijack``, and HTTP/2.

uvicorn refuses ``--http2`` together with a custom ``--http`` class, so this class picks
the protocol per connection itself, as uvicorn's ``AutoZttpProtocol`` does: by ALPN over
TLS (it advertises ``h2, http/1.1``) and by the HTTP/2 preface on cleartext (prior
knowledge). ``Upgrade: h2c`` is not honoured; on HTTP/1.1 it is an upgrade token like any
other, which the app may hijack.

Unlike uvicorn's, the class is the HTTP/1.1 protocol itself, not a dispatcher that makes
one per connection: a cleartext connection whose first bytes are not the preface costs
what an HTTP/1.1-only connection costs. The preface hands the connection to
:class:`~asgi_hijack.zttp_h2.ZttpH2HijackProtocol`; connection state hooks see that as a
hijack (``NEW``, then ``HIJACKED``), as Go's h2c handler hijacks the HTTP/1 connection.

Settings (:class:`~asgi_hijack.settings.HijackSettings`) set on a subclass of this class
are forwarded to its HTTP/2 protocol (copied when the subclass is made: set them in its
class body).
"""

from __future__ import annotations

from typing import Any, ClassVar

from ._native import hot
from .core import HijackServerMixin
from .lifecycle import ConnState
from .settings import SETTINGS
from .zttp_h1 import ZttpH1HijackProtocol
from .zttp_h2 import ZttpH2HijackProtocol

__all__ = ["ZttpHijackProtocol"]


class ZttpHijackProtocol(ZttpH1HijackProtocol):
    """``uvicorn app:app --http asgi_hijack:ZttpHijackProtocol``: HTTP/1.1 and HTTP/2 on zttp.

    It serves HTTP/1.1 itself, with ``http.hijack``; HTTP/2 connections go to
    :class:`~asgi_hijack.zttp_h2.ZttpH2HijackProtocol`.
    """

    alpn_protocols: ClassVar[list[str]] = ["h2", "http/1.1"]
    """What uvicorn's TLS context offers in ALPN (uvicorn reads it from the ``--http`` class)."""
    h2_protocol: ClassVar[type[ZttpH2HijackProtocol]] = ZttpH2HijackProtocol
    """The HTTP/2 class; a subclass gets its own, which reads the subclass's settings (``h2_websockets``)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # Copied when the subclass is made: a class attribute costs nothing per connection to read.
        settings = {name: getattr(cls, name) for name in SETTINGS}
        cls.h2_protocol = type(f"{cls.__name__}H2", (cls.h2_protocol,), {**settings, "__module__": cls.__module__})

    def connection_made(self, transport: Any) -> None:
        if self.config.is_ssl:  # ALPN decides at once (the PROXY protocol is refused over TLS)
            ssl_object = transport.get_extra_info("ssl_object")
            if self.proxy_protocol == "off" and ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
                self._hj_to_http2(transport, b"")
                return
        else:  # the first bytes decide (asgi_hijack._hot.sniff), within the head timeout
            self._hj.sniff = b""
        HijackServerMixin.connection_made(self, transport)

    def _hj_to_http2(self, transport: Any, data: bytes) -> None:
        """Hand the connection to the HTTP/2 protocol, with its first bytes (``data``)."""
        conn = self._hj
        hot.head_came(self, conn)
        self.connections.discard(self)
        conn.set(ConnState.HIJACKED)  # (no hook runs if the connection was not made as HTTP/1.1)
        protocol = self.h2_protocol(self.config, self.server_state, self.app_state, self.loop)
        transport.set_protocol(protocol)
        protocol.connection_made(transport)
        if data:
            protocol.data_received(data)
