"""WebSockets over HTTP/2 (RFC 8441) on ZttpHijackProtocol, on the wire with the ``h2`` package.

A real uvicorn on 127.0.0.1 (HTTP/2 by prior knowledge), the ``h2`` client library for the
HTTP/2 frames and wsproto's client for the WebSocket frames inside the stream's DATA.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Iterator
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from fastapi import FastAPI, WebSocket
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, Frame
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocketDisconnect
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from asgi_hijack.testing import serve
from examples.websocket_by_hand import app as websocket_by_hand
from tests.apps import respond
from tests.helpers import requires_zttp, with_settings

pytestmark = requires_zttp
TIMEOUT = 10.0


class H2Client:
    """One HTTP/2 connection (prior knowledge); events are kept per stream."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=TIMEOUT)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.h2.initiate_connection()
        self.flush()
        self.streams: dict[int, deque[h2.events.Event]] = {}

    def flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())

    def next(self, stream_id: int) -> h2.events.Event:
        """The next event of ``stream_id``; DATA is acknowledged (window credited) as it comes."""
        queue = self.streams.setdefault(stream_id, deque())
        while not queue:
            data = self.sock.recv(65536)
            assert data, "the server closed the connection"
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.DataReceived):
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                stream = getattr(event, "stream_id", 0)
                self.streams.setdefault(stream, deque()).append(event)
            self.flush()
        return queue.popleft()

    def request(self, method: str, path: str, *headers: tuple[bytes, bytes], end: bool = False) -> int:
        stream_id = self.h2.get_next_available_stream_id()
        pseudo = [(b":method", method.encode()), (b":scheme", b"http"), (b":path", path.encode())]
        self.h2.send_headers(stream_id, [*pseudo, (b":authority", b"127.0.0.1"), *headers], end_stream=end)
        self.flush()
        return stream_id

    def response(self, stream_id: int) -> tuple[int, dict[bytes, bytes], bytes]:
        """Status, headers and body of a complete response."""
        event = self.next(stream_id)
        assert isinstance(event, h2.events.ResponseReceived), event
        headers = dict(event.headers)
        body = b""
        while not isinstance(event := self.next(stream_id), h2.events.StreamEnded):
            body += getattr(event, "data", b"")
        return int(headers[b":status"]), headers, body

    def close(self) -> None:
        self.sock.close()


class WebSocketStream:
    """A WebSocket over one extended CONNECT stream of ``client``."""

    def __init__(self, client: H2Client, path: str, *headers: tuple[bytes, bytes]) -> None:
        self.client = client
        version = (b"sec-websocket-version", b"13")
        self.stream_id = client.request("CONNECT", path, (b":protocol", b"websocket"), version, *headers)
        event = client.next(self.stream_id)
        self.reset: int | None = event.error_code if isinstance(event, h2.events.StreamReset) else None
        self.headers: dict[bytes, bytes] = dict(getattr(event, "headers", []))
        self.status = int(self.headers.get(b":status", b"0"))
        extensions = self.headers.get(b"sec-websocket-extensions")
        self.deflate = PerMessageDeflate()
        if extensions is not None:
            self.deflate.finalize(extensions.decode())
        self.ws = Connection(ConnectionType.CLIENT, [self.deflate] if extensions is not None else [])
        self.frames: list[bytes] = []  # the DATA payloads received

    def send(self, event: Event, end_stream: bool = False) -> None:
        """Send ``event`` in DATA frames of at most 16 KiB (the tests stay within the initial window)."""
        data = self.ws.send(event)
        for start in range(0, len(data), 16384):
            self.client.h2.send_data(self.stream_id, data[start : start + 16384])
        if end_stream:
            self.client.h2.end_stream(self.stream_id)
        self.client.flush()

    def next(self) -> Event:
        """The next WebSocket event; CloseConnection 1006 at END_STREAM without a close frame."""
        while True:
            for event in self.ws.events():
                return event
            frame = self.client.next(self.stream_id)
            if isinstance(frame, h2.events.DataReceived):
                self.frames.append(frame.data)
                self.ws.receive_data(frame.data)
            elif isinstance(frame, h2.events.StreamEnded):
                self.ws.receive_data(None)
            elif not isinstance(frame, h2.events.WindowUpdated):
                raise AssertionError(f"unexpected on the WebSocket stream: {frame}")

    def message(self) -> str | bytes:
        """The next whole message (wsproto hands over the frames as they come)."""
        parts = []
        while True:
            event = self.next()
            assert isinstance(event, Message), event
            parts.append(event.data)
            if event.message_finished:
                return "".join(parts) if isinstance(event, TextMessage) else b"".join(parts)

    def close(self) -> CloseConnection:
        """Close with 1000 and END_STREAM; the server's close frame and END_STREAM must follow."""
        self.send(CloseConnection(code=1000, reason="done"), end_stream=True)
        reply = self.next()
        assert isinstance(reply, CloseConnection), reply
        while not isinstance(frame := self.client.next(self.stream_id), h2.events.StreamEnded):
            assert not getattr(frame, "data", b""), f"bytes after the close frame: {frame}"
        return reply


async def echo_endpoint(websocket: Any) -> None:
    """Starlette/FastAPI: accept the first offered subprotocol, echo text and bytes until closed."""
    await websocket.accept(subprotocol=(websocket.scope["subprotocols"] or [None])[0])
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                raise WebSocketDisconnect(message["code"], message.get("reason"))
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            else:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect as exc:
        websocket.scope["state"].setdefault("closes", []).append((exc.code, websocket.scope["http_version"]))


def starlette_app() -> Starlette:
    return Starlette(routes=[WebSocketRoute("/ws", echo_endpoint)])


def fastapi_app() -> FastAPI:
    app = FastAPI()

    @app.websocket("/ws")
    async def ws(websocket: WebSocket) -> None:
        await echo_endpoint(websocket)

    @app.get("/plain")
    async def plain() -> dict[str, str]:
        return {"hello": "h2"}

    return app


def remote_settings(client: H2Client) -> dict[int, int]:
    event = client.next(0)
    while not isinstance(event, h2.events.RemoteSettingsChanged):
        event = client.next(0)
    return {int(key): value.new_value for key, value in event.changed_settings.items()}


@pytest.mark.parametrize("make_app", [starlette_app, fastapi_app])
def test_extended_connect_echo_and_clean_close(make_app: Any) -> None:
    app = make_app()
    state: dict[str, Any] = {}

    async def with_state(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = state
        await app(scope, receive, send)

    with serve(with_state, "zttp") as server:
        client = H2Client(server.address)
        assert remote_settings(client)[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1
        ws = WebSocketStream(client, "/ws", (b"sec-websocket-protocol", b"chat, superchat"))
        assert ws.status == 200
        assert ws.headers[b"sec-websocket-protocol"] == b"chat"
        ws.send(TextMessage(data="hello over h2"))
        ws.send(BytesMessage(data=bytes(range(256)) * 150))  # 38 400 bytes: several DATA frames
        assert [ws.message(), ws.message()] == ["hello over h2", bytes(range(256)) * 150]
        ws.send(Ping(payload=b"ping"))
        assert type(ws.next()).__name__ == "Pong"
        reply = ws.close()
        assert reply.code == 1000
        client.close()
    assert state["closes"] == [(1000, "2")]


def test_permessage_deflate_over_http2() -> None:
    with serve(starlette_app(), "zttp") as server:
        client = H2Client(server.address)
        offer = (b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits")
        ws = WebSocketStream(client, "/ws", offer)
        assert ws.headers[b"sec-websocket-extensions"].startswith(b"permessage-deflate")
        ws.send(TextMessage(data="compress me " * 1000))
        assert ws.message() == "compress me " * 1000
        frame = b"".join(ws.frames)
        assert frame[0] & 0x40, "RSV1 set: the message was compressed"
        assert len(frame) < 500
        assert ws.close().code == 1000
        client.close()


def test_permessage_deflate_off_with_ws_per_message_deflate_false() -> None:
    with serve(starlette_app(), "zttp", ws_per_message_deflate=False) as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws", (b"sec-websocket-extensions", b"permessage-deflate"))
        assert ws.status == 200 and b"sec-websocket-extensions" not in ws.headers
        assert ws.close().code == 1000
        client.close()


async def gatekeeper(scope: Any, receive: Any, send: Any) -> None:
    """``/deny``: a 403 with a body (websocket.http.response); ``/close``: close before accept."""
    if scope["type"] == "http":
        await respond(send, 200, f"http {scope['http_version']}".encode())
        return
    assert (await receive())["type"] == "websocket.connect"
    if scope["path"] == "/deny":
        await send({"type": "websocket.http.response.start", "status": 403, "headers": [(b"x-reason", b"members")]})
        await send({"type": "websocket.http.response.body", "body": b"members only"})
    else:
        await send({"type": "websocket.close"})


@pytest.mark.parametrize(("path", "body"), [("/deny", b"members only"), ("/close", b"")])
def test_denial_is_an_http_response_on_the_stream(path: str, body: bytes) -> None:
    with serve(gatekeeper, "zttp") as server:
        client = H2Client(server.address)
        version = (b"sec-websocket-version", b"13")
        stream_id = client.request("CONNECT", path, (b":protocol", b"websocket"), version)
        status, headers, received = client.response(stream_id)
        assert status == 403 and received == body
        if path == "/deny":
            assert headers[b"x-reason"] == b"members"
        # the connection serves on
        assert client.response(client.request("GET", "/", end=True))[2] == b"http 2"
        client.close()


def test_option_http1_resets_with_http_1_1_required() -> None:
    with serve(starlette_app(), with_settings("zttp", h2_websockets="http1")) as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws")
        assert ws.reset == ErrorCodes.HTTP_1_1_REQUIRED == 0xD
        client.close()


def test_option_from_the_environment() -> None:
    code = "from asgi_hijack import ZttpHijackProtocol as P; print(P.h2_protocol.h2_websockets)"
    for value, expected in (("http1", "http1\n"), ("", "on\n")):
        env = {**os.environ, "ASGI_HIJACK_H2_WEBSOCKETS": value}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert result.stdout == expected, result.stderr
    env = {**os.environ, "ASGI_HIJACK_H2_WEBSOCKETS": "h2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert "ASGI_HIJACK_H2_WEBSOCKETS='h2' is not one of on, http1" in result.stderr


def test_ws_none_hands_the_app_an_http_tunnel_request() -> None:
    seen: list[tuple[str, str, Any]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((scope["type"], scope["method"], scope["extensions"].get("http.tunnel")))
        await respond(send, 404, b"no tunnels here")

    with serve(app, "zttp", ws="none") as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws")
        assert ws.status == 404
        client.close()
    assert seen == [("http", "CONNECT", {"protocol": "websocket"})]


def test_server_pings_and_sibling_streams_stay_usable() -> None:
    with serve(fastapi_app(), "zttp", ws_ping_interval=0.05, ws_ping_timeout=5) as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws")
        ping = ws.next()
        assert isinstance(ping, Ping)
        ws.send(ping.response())
        status, _, body = client.response(client.request("GET", "/plain", end=True))
        assert (status, body) == (200, b'{"hello":"h2"}')
        ws.send(TextMessage(data="still here"))
        while isinstance(event := ws.next(), Ping):
            ws.send(event.response())
        assert isinstance(event, TextMessage) and event.data == "still here"
        assert ws.close().code == 1000
        client.close()


def test_websocket_by_hand_example_asgi_route_runs_unchanged() -> None:
    with serve(websocket_by_hand, "zttp") as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws")
        assert ws.status == 200
        closing = ws.next()
        assert isinstance(closing, CloseConnection)
        assert closing.code == 1011 and "--ws none" in closing.reason, closing  # its WebSocketRoute's answer
        ws.send(closing.response(), end_stream=True)
        client.close()


def raw_frames(sock: socket.socket) -> Iterator[Frame]:
    """The server's frames, parsed without the h2 state machine, which refuses every frame after a
    GOAWAY, although RFC 9113 section 6.8 lets the streams it does not cut finish."""
    buffer = b""
    while True:
        while len(buffer) < 9 or len(buffer) < 9 + Frame.parse_frame_header(memoryview(buffer[:9]))[1]:
            data = sock.recv(65536)
            assert data, "the server closed the connection"
            buffer += data
        frame, length = Frame.parse_frame_header(memoryview(buffer[:9]))
        frame.parse_body(memoryview(buffer[9 : 9 + length]))
        buffer = buffer[9 + length :]
        yield frame


def test_server_shutdown_sends_goaway_then_closes_1012() -> None:
    state: dict[str, Any] = {}
    app = starlette_app()

    async def with_state(scope: Any, receive: Any, send: Any) -> None:
        scope["state"] = state
        await app(scope, receive, send)

    with serve(with_state, "zttp") as server:
        client = H2Client(server.address)
        ws = WebSocketStream(client, "/ws")
        ws.send(TextMessage(data="before"))
        assert ws.message() == "before"
        server.server.should_exit = True
        kinds = []
        for frame in raw_frames(client.sock):
            kinds.append(type(frame).__name__)
            if isinstance(frame, DataFrame) and frame.stream_id == ws.stream_id:
                ws.ws.receive_data(frame.data)
                closing = next(ws.ws.events())
                break
        assert "GoAwayFrame" in kinds
        assert isinstance(closing, CloseConnection) and closing.code == 1012
        ws.send(closing.response(), end_stream=True)
    client.close()
    assert state["closes"] == [(1012, "2")]
