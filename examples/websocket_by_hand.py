"""WebSocket by hand over a hijacked connection (``websockets``' sans-I/O protocol).

Go servers (gorilla/websocket, x/net/websocket) take the connection with ``Hijack()``
and speak RFC 6455 on it themselves. This does the same: the ``websockets`` sans-I/O
``ServerProtocol`` checks the handshake and computes ``Sec-WebSocket-Accept``, frames
and unframes messages, answers pings and runs the closing handshake; this module only
moves bytes between it and the hijacked connection.

Run (``--ws none`` lets the upgrade request reach the app as plain HTTP)::

    python examples/websocket_by_hand.py [PORT]       # 127.0.0.1:8000
    uvicorn examples.websocket_by_hand:app --http asgi_hijack:HijackProtocol --ws none

Try it::

    python -m websockets ws://127.0.0.1:8000/ws

``/ws`` echoes every message frame by frame, keeping its fragmentation and type (text
or binary), with permessage-deflate when the client offers it. The text message
``ping`` also makes the server ping the client and say ``pong received`` when the pong
arrives.
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.http11 import Request as HandshakeRequest
from websockets.protocol import SEND_EOF, State
from websockets.server import ServerProtocol

from asgi_hijack import HijackedConnection, hijack
from asgi_hijack.starlette import Hijacked

SERVER_PING = b"server ping"


def request_head(request: Request) -> bytes:
    """The request head as the client sent it (uvicorn has already parsed it)."""
    scope = request.scope
    target = scope["raw_path"] + (b"?" + scope["query_string"] if scope["query_string"] else b"")
    lines = [b"%s %s HTTP/%s" % (scope["method"].encode(), target, scope["http_version"].encode())]
    lines += [b"%s: %s" % header for header in scope["headers"]]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def flush(protocol: ServerProtocol, conn: HijackedConnection) -> bool:
    """Write what the protocol has to send; True once it has asked to close the connection."""
    eof = False
    for data in protocol.data_to_send():
        if data == SEND_EOF:
            eof = True
        else:
            conn.writer.write(data)
    await conn.writer.drain()
    return eof


def echo(protocol: ServerProtocol, frame: Frame) -> None:
    """Answer one received frame (pings and closes are answered by the protocol itself)."""
    if protocol.state is not State.OPEN:
        return
    if frame.opcode is Opcode.TEXT:
        protocol.send_text(frame.data, fin=frame.fin)
        if frame.fin and frame.data == b"ping":
            protocol.send_ping(SERVER_PING)
    elif frame.opcode is Opcode.BINARY:
        protocol.send_binary(frame.data, fin=frame.fin)
    elif frame.opcode is Opcode.CONT:
        protocol.send_continuation(frame.data, fin=frame.fin)
    elif frame.opcode is Opcode.PONG and frame.data == SERVER_PING:
        protocol.send_text(b"pong received")


async def serve_websocket(protocol: ServerProtocol, conn: HijackedConnection) -> None:
    """Move bytes between the connection and the protocol until the connection closes."""
    async with conn:
        if await flush(protocol, conn):  # the 101 response
            return
        while True:
            try:
                data = await conn.reader.read(65536)
            except OSError:
                return
            if data:
                protocol.receive_data(data)
            else:
                protocol.receive_eof()
            for event in protocol.events_received():
                if isinstance(event, Frame):
                    echo(protocol, event)
            if await flush(protocol, conn) or not data:
                return


async def websocket_endpoint(request: Request) -> Response:
    protocol = ServerProtocol(extensions=[ServerPerMessageDeflateFactory()])
    protocol.receive_data(request_head(request))
    handshake = protocol.events_received()
    if not handshake or not isinstance(handshake[0], HandshakeRequest):  # e.g. HTTP/1.0
        return PlainTextResponse(f"Failed to open a WebSocket connection: {protocol.handshake_exc}.\n", 400)
    response = protocol.accept(handshake[0])
    if response.status_code != 101:  # not a valid WebSocket handshake: a plain HTTP answer
        return Response(response.body, response.status_code, dict(response.headers.raw_items()))
    protocol.send_response(response)
    await serve_websocket(protocol, await hijack(request))
    return Hijacked()


async def needs_ws_none(websocket: WebSocket) -> None:
    """Reached only when uvicorn did the handshake itself: say how to run this example."""
    await websocket.accept()
    await websocket.close(1011, "run uvicorn with --ws none: this app speaks WebSocket itself")


app = Starlette(routes=[Route("/ws", websocket_endpoint), WebSocketRoute("/ws", needs_ws_none)])

if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port, http="asgi_hijack:HijackProtocol", ws="none")
