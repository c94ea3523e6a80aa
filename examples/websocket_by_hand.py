"""WebSocket by hand over a hijacked connection, with the sans-I/O ``wsproto`` library.

Go servers (gorilla/websocket, x/net/websocket) take the connection with ``Hijack()``
and speak RFC 6455 on it themselves. This does the same with ``wsproto`` (the library
behind uvicorn's ``--ws wsproto``): it checks the handshake and computes
``Sec-WebSocket-Accept``, negotiates permessage-deflate, frames and unframes messages,
and validates what the client sends (UTF-8 in text messages, fragmentation, control
frames, close codes), reporting a violation as a close event with the code to send
(1002, or 1007 for invalid UTF-8). This module only moves bytes between it and the
hijacked connection and chooses the answers. It passes the Autobahn test suite
(``make conformance``, docs/conformance.md).

Over HTTP/2 (RFC 8441) the same code runs on the request's stream: an extended CONNECT
with ``:protocol: websocket`` is answered ``200`` with :func:`asgi_hijack.tunnel`, and the
frames are the stream's bytes (wsproto's post-handshake ``Connection``).

Run (``--ws none`` lets the upgrade request reach the app as plain HTTP; the zttp class
adds HTTP/2 on the same port)::

    python examples/websocket_by_hand.py [PORT]       # 127.0.0.1:8000
    uvicorn examples.websocket_by_hand:app --http asgi_hijack:HijackProtocol --ws none
    uvicorn examples.websocket_by_hand:app --http asgi_hijack:ZttpHijackProtocol --ws none

Try it::

    python -m websockets ws://127.0.0.1:8000/ws

``/ws`` echoes every message frame by frame, keeping its fragmentation and type (text
or binary), with permessage-deflate when the client offers it (wsproto's compressor then
holds a fragmented message's text until its last frame). The text message
``ping`` also makes the server ping the client and say ``pong received`` when the pong
arrives. When the server shuts down (SIGTERM, Ctrl-C), it closes each WebSocket with
``1012`` (service restart), as uvicorn's own WebSockets do, and waits up to
:data:`CLOSE_TIMEOUT` seconds for the client's close before it drops the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import AcceptConnection, CloseConnection, Event, Message, Ping, Pong, TextMessage
from wsproto.extensions import PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import RemoteProtocolError

from asgi_hijack import HijackedConnection, Tunnel, hijack, tunnel
from asgi_hijack.starlette import Hijacked

SERVER_PING = b"server ping"
SHUTDOWN = CloseConnection(1012, "server shutting down")
CLOSE_TIMEOUT = 1.0
"""Seconds to wait for the client's close after the server's shutdown close."""


def request_head(request: Request) -> bytes:
    """The request head as the client sent it (uvicorn has already parsed it)."""
    scope = request.scope
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    lines = [b"%s %s HTTP/%s" % (scope["method"].encode(), target, scope["http_version"].encode())]
    lines += [b"%s: %s" % header for header in scope["headers"]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def answers(ws: WSConnection, event: Event) -> list[Event]:
    """What the server sends back for one event from the client."""
    if isinstance(event, CloseConnection):  # the client's close, or the close for an error wsproto found
        return [event.response()] if ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING) else []
    if ws.state is not ConnectionState.OPEN:  # the server's close is sent: only the client's close matters now
        return []
    if isinstance(event, Ping):
        return [event.response()]
    if isinstance(event, Message):  # a text or binary frame (or part of one): echoed as it came
        if isinstance(event, TextMessage) and event.message_finished and event.data == "ping":
            return [event, Ping(SERVER_PING)]
        return [event]
    if isinstance(event, Pong) and event.payload == SERVER_PING:
        return [TextMessage("pong received")]
    return []


async def serve_websocket(ws: WSConnection | Connection, conn: HijackedConnection | Tunnel) -> None:
    """Move bytes between the connection (or HTTP/2 stream) and wsproto until the WebSocket is closed."""
    async with conn:
        with anyio.CancelScope() as scope, contextlib.suppress(ConnectionError):

            def shutting_down() -> None:
                """The server is stopping: close with 1012 and give the client CLOSE_TIMEOUT to answer."""
                if ws.state is ConnectionState.OPEN:
                    conn.writer.write(ws.send(SHUTDOWN))
                scope.deadline = asyncio.get_running_loop().time() + CLOSE_TIMEOUT

            conn.on_shutdown(shutting_down)
            while data := await conn.reader.read(65536):
                ws.receive_data(data)
                for event in ws.events():
                    for answer in answers(ws, event):
                        conn.writer.write(ws.send(answer))
                    if isinstance(event, CloseConnection):
                        return  # the closing handshake is done or the connection failed: the server closes it
                await conn.writer.drain()


async def websocket_endpoint(request: Request) -> Response:
    if request.scope["http_version"] == "2":
        return await websocket_over_http2(request)
    ws = WSConnection(ConnectionType.SERVER)
    try:
        ws.receive_data(request_head(request))
    except RemoteProtocolError as exc:  # not a valid WebSocket handshake: a plain HTTP answer
        headers = {"Upgrade": "websocket", "Sec-WebSocket-Version": "13"}
        return PlainTextResponse(f"You need a WebSocket client to connect here: {exc}.\n", 426, headers)
    list(ws.events())  # the handshake request, which wsproto found valid
    accept = ws.send(AcceptConnection(extensions=[PerMessageDeflate()]))
    conn = await hijack(request)
    conn.writer.write(accept)
    await serve_websocket(ws, conn)
    return Hijacked()


async def websocket_over_http2(request: Request) -> Response:
    """RFC 8441: an extended CONNECT with ``:protocol: websocket`` is answered ``200`` (there is no
    key to accept), and its stream carries the frames: ``tunnel()`` hands it over."""
    if tunnel_protocol(request) != "websocket" or request.headers.get("sec-websocket-version") != "13":
        headers = {"Sec-WebSocket-Version": "13"}
        return PlainTextResponse("You need a WebSocket client (RFC 8441 over HTTP/2) to connect here.\n", 400, headers)
    offers = [offer for value in request.headers.getlist("sec-websocket-extensions") for offer in value.split(",")]
    deflate = PerMessageDeflate()
    accepted = server_extensions_handshake([offer.strip() for offer in offers], [deflate])
    stream = await tunnel(request, headers=[(b"sec-websocket-extensions", accepted)] if accepted else [])
    await serve_websocket(Connection(ConnectionType.SERVER, [deflate] if accepted else []), stream)
    return Hijacked()


def tunnel_protocol(request: Request) -> str | None:
    """The ``:protocol`` of an HTTP/2 extended CONNECT (the ``http.tunnel`` extension), else None."""
    extension = request.scope.get("extensions", {}).get("http.tunnel") or {}
    protocol: str | None = extension.get("protocol")
    return protocol


async def needs_ws_none(websocket: WebSocket) -> None:
    """Reached only when uvicorn did the handshake itself: say how to run this example."""
    await websocket.accept()
    await websocket.close(1011, "run uvicorn with --ws none: this app speaks WebSocket itself")


app = Starlette(
    routes=[Route("/ws", websocket_endpoint, methods=["GET", "CONNECT"]), WebSocketRoute("/ws", needs_ws_none)]
)

if __name__ == "__main__":
    from asgi_hijack import HijackProtocol  # a class: uvicorn before 0.36 takes no import string

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port, http=HijackProtocol, ws="none")
