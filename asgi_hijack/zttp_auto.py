"""One ``uvicorn --http`` class for zttp: HTTP/1.1 with ``http.hijack``, and HTTP/2.

uvicorn refuses ``--http2`` together with a custom ``--http`` class, so this class
picks the protocol per connection itself, exactly as uvicorn's ``AutoZttpProtocol``:
by ALPN over TLS (it advertises ``h2, http/1.1``) and by sniffing the HTTP/2
preface on cleartext (prior knowledge). ``Upgrade: h2c`` is not honoured; on
HTTP/1.1 it is an upgrade token like any other, which the app may hijack.
"""

from __future__ import annotations

import asyncio

from uvicorn.protocols.http.auto_zttp_impl import AutoZttpProtocol

from asgi_hijack.zttp_h1 import ZttpH1HijackProtocol
from asgi_hijack.zttp_h2 import ZttpH2HijackProtocol

__all__ = ["ZttpHijackProtocol"]


class ZttpHijackProtocol(AutoZttpProtocol):
    """``uvicorn app:app --http asgi_hijack:ZttpHijackProtocol``: HTTP/1.1 and HTTP/2 on zttp.

    HTTP/1.1 connections get :class:`~asgi_hijack.zttp_h1.ZttpH1HijackProtocol`, HTTP/2
    connections :class:`~asgi_hijack.zttp_h2.ZttpH2HijackProtocol`.
    """

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.timeout_task is not None:
            # Cleartext, waiting to tell the HTTP/2 preface from HTTP/1.1: bound it by the
            # head timeout (uvicorn uses the keep-alive timeout, even while a prefix trickles in).
            self.timeout_task.cancel()
            self.timeout_task = self.loop.call_later(ZttpH1HijackProtocol.head_timeout, self.transport.close)

    def _switch(self, http2: bool, initial_data: bytes = b"") -> None:
        protocol_class = ZttpH2HijackProtocol if http2 else ZttpH1HijackProtocol
        protocol: asyncio.Protocol = protocol_class(
            config=self.config, server_state=self.server_state, app_state=self.app_state, _loop=self.loop
        )
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        if initial_data:
            protocol.data_received(initial_data)
