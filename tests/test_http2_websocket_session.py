"""The WebSocket session of asgi_hijack.h2_websocket over an asyncio stream pair, without HTTP/2.

The engine's side of the ``http.tunnel`` contract is played by :class:`Engine`: it records the
HTTP messages and, on ``http.tunnel.accept``, hands the session one end of a socket pair, as
``ZttpH2HijackProtocol`` hands it an HTTP/2 stream. The client is wsproto's own client
connection on the other end, so every frame is real bytes through a real socket.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from types import SimpleNamespace
from typing import Any

import pytest
from uvicorn.protocols.utils import ClientDisconnected
from wsproto.connection import Connection, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from asgi_hijack.h2_websocket import Options, serve_websocket

ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]
TIMEOUT = 10.0
QUIET = Options(ping_interval=None)  # no server pings unless a test asks for them


class Engine:
    """What the HTTP/2 engine does for one extended CONNECT request, over a socket pair."""

    def __init__(self, *headers: tuple[bytes, bytes]) -> None:
        self.scope: dict[str, Any] = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "2",
            "scheme": "https",
            "method": "CONNECT",
            "server": ("127.0.0.1", 443),
            "client": ("127.0.0.1", 5000),
            "root_path": "",
            "path": "/ws",
            "raw_path": b"/ws",
            "query_string": b"q=1",
            "headers": [(b"sec-websocket-version", b"13"), (b"host", b"example"), *headers],
            "state": {},
            "extensions": {"http.tunnel": {"protocol": "websocket"}},
        }
        self.sent: list[ASGIMessage] = []
        self.client: Client | None = None
        self.shutdown_callbacks: list[Callable[[], object]] = []  # H2Stream.on_shutdown

    async def receive(self) -> ASGIMessage:
        raise AssertionError("the session never reads the HTTP request body")

    async def send(self, message: ASGIMessage) -> None:
        self.sent.append(message)
        if message["type"] == "http.tunnel.accept":
            ours, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=ours)
            stream = SimpleNamespace(reader=reader, writer=writer, on_shutdown=self.shutdown_callbacks.append)
            self.scope["extensions"]["http.tunnel"]["stream"] = stream
            accepted = dict(message["headers"]).get(b"sec-websocket-extensions")
            self.client = Client(*await asyncio.open_connection(sock=theirs), accepted)

    def header(self, name: bytes) -> bytes | None:
        return dict(self.sent[0]["headers"]).get(name)


class Client:
    """A wsproto client on the far end of the stream."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, extensions: bytes | None) -> None:
        self.reader, self.writer = reader, writer
        self.deflate = PerMessageDeflate()
        if extensions is not None:
            self.deflate.finalize(extensions.decode())
        self.conn = Connection(ConnectionType.CLIENT, [self.deflate] if extensions is not None else [])
        self.raw = b""

    def send(self, event: Event) -> None:
        self.writer.write(self.conn.send(event))

    def close(self, event: CloseConnection) -> None:
        """Send a close frame (first or in answer), then END_STREAM, as an HTTP/2 client does."""
        self.send(event)
        self.writer.write_eof()

    async def next(self) -> Event:
        """The next event; a CloseConnection with 1006 at EOF."""
        while True:
            for event in self.conn.events():
                return event
            data = await self.reader.read(65536)
            self.raw += data
            self.conn.receive_data(data or None)

    async def eof(self) -> bool:
        """True if the stream ends (END_STREAM) without more frames."""
        return await self.reader.read(65536) == b""


def run(app: Callable[[ASGIMessage, Receive, Send], Awaitable[None]], engine: Engine, options: Options = QUIET) -> None:
    """Serve ``app`` on ``engine``'s request, which it does not accept."""
    asyncio.run(asyncio.wait_for(serve_websocket(app, options, engine.scope, engine.receive, engine.send), TIMEOUT))


def session_test(
    app: Callable[[ASGIMessage, Receive, Send], Awaitable[None]],
    talk: Callable[[Client], Awaitable[None]],
    engine: Engine,
    options: Options = QUIET,
) -> None:
    """Run the session and, once accepted, ``talk`` as the client; both must finish."""

    async def main() -> None:
        served = asyncio.ensure_future(serve_websocket(app, options, engine.scope, engine.receive, engine.send))
        while engine.client is None:
            assert not served.done(), served
            await asyncio.sleep(0.001)
        await talk(engine.client)
        await served

    asyncio.run(asyncio.wait_for(main(), TIMEOUT))


async def echo(scope: ASGIMessage, receive: Receive, send: Send) -> None:
    """Accept the first offered subprotocol, echo until the client closes."""
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept", "subprotocol": (scope["subprotocols"] or [None])[0]})
    while (message := await receive())["type"] == "websocket.receive":
        await send({"type": "websocket.send", **{key: message[key] for key in ("text", "bytes") if key in message}})
    scope["state"]["disconnect"] = message


def test_scope_is_a_websocket_scope_over_http2() -> None:
    seen: dict[str, Any] = {}

    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        seen.update(scope)
        await send({"type": "websocket.close"})

    engine = Engine((b"sec-websocket-protocol", b"chat, superchat"))
    run(app, engine)
    assert seen["type"] == "websocket"
    assert (seen["http_version"], seen["scheme"], seen["path"], seen["query_string"]) == ("2", "wss", "/ws", b"q=1")
    assert seen["subprotocols"] == ["chat", "superchat"]
    assert (b"host", b"example") in seen["headers"]
    assert seen["extensions"] == {"websocket.http.response": {}}


def test_text_and_binary_echo_then_client_close_1000() -> None:
    engine = Engine((b"sec-websocket-protocol", b"chat"))

    async def talk(client: Client) -> None:
        client.send(TextMessage(data="héllo"))
        client.send(BytesMessage(data=b"\x00\xff" * 1000))
        client.send(TextMessage(data="frag", message_finished=False))
        client.send(TextMessage(data="ment"))
        assert [(await client.next()).data for _ in range(3)] == ["héllo", b"\x00\xff" * 1000, "fragment"]  # type: ignore[attr-defined]
        client.close(CloseConnection(code=1000, reason="bye"))
        reply = await client.next()
        assert isinstance(reply, CloseConnection) and reply.code == 1000
        assert await client.eof()

    session_test(echo, talk, engine)
    assert engine.sent[0]["type"] == "http.tunnel.accept" and engine.sent[0]["status"] == 200
    assert engine.header(b"sec-websocket-protocol") == b"chat"
    assert engine.scope["state"]["disconnect"] == {"type": "websocket.disconnect", "code": 1000, "reason": "bye"}


def test_permessage_deflate_is_negotiated_and_compresses() -> None:
    engine = Engine((b"sec-websocket-extensions", b"permessage-deflate; client_max_window_bits"))

    async def talk(client: Client) -> None:
        client.send(TextMessage(data="a" * 10_000))
        echoed = await client.next()
        assert isinstance(echoed, Message) and echoed.data == "a" * 10_000
        assert client.raw[0] & 0x40, "RSV1: the echo is compressed"
        assert len(client.raw) < 200
        client.close(CloseConnection(code=1000))

    session_test(echo, talk, engine)
    assert engine.header(
        b"sec-websocket-extensions",
    ).startswith(b"permessage-deflate")  # type: ignore[union-attr]


def test_permessage_deflate_off_in_options_is_not_negotiated() -> None:
    engine = Engine((b"sec-websocket-extensions", b"permessage-deflate"))

    async def talk(client: Client) -> None:
        client.close(CloseConnection(code=1000))

    session_test(echo, talk, engine, Options(per_message_deflate=False, ping_interval=None))
    assert engine.header(b"sec-websocket-extensions") is None


@pytest.mark.parametrize("how", ["close", "response"])
def test_refusal_before_accept_is_an_http_response(how: str) -> None:
    seen: list[ASGIMessage] = []

    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        await receive()
        if how == "close":
            await send({"type": "websocket.close"})
        else:
            await send({"type": "websocket.http.response.start", "status": 403, "headers": [(b"x-why", b"no")]})
            await send({"type": "websocket.http.response.body", "body": b"go ", "more_body": True})
            await send({"type": "websocket.http.response.body", "body": b"away"})
        seen.append(await receive())
        with pytest.raises(RuntimeError, match=r"after sending 'websocket\.close'"):
            await send({"type": "websocket.send", "text": "late"})

    engine = Engine()
    run(app, engine)
    assert engine.sent[0]["type"] == "http.response.start" and engine.sent[0]["status"] == 403
    body = b"".join(message.get("body", b"") for message in engine.sent[1:])
    assert body == (b"" if how == "close" else b"go away")
    assert seen == [{"type": "websocket.disconnect", "code": 1006, "reason": ""}]


def test_wrong_version_is_400_without_calling_the_app() -> None:
    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        raise AssertionError("called")

    engine = Engine()
    engine.scope["headers"] = [(b"sec-websocket-version", b"8")]
    run(app, engine)
    assert engine.sent[0]["status"] == 400
    assert b"sec-websocket-version: 13" in engine.sent[1]["body"]


def test_app_that_returns_without_handshake_gets_500() -> None:
    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        await receive()

    engine = Engine()
    run(app, engine)
    assert [message.get("status") for message in engine.sent] == [500, None]


@pytest.mark.parametrize(("fails", "code"), [(False, 1000), (True, 1011)])
def test_app_that_returns_or_raises_after_accept_closes(fails: bool, code: int) -> None:
    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.send", "text": "bye"})
        if fails:
            raise ValueError("app bug")

    async def talk(client: Client) -> None:
        assert getattr(await client.next(), "data", None) == "bye"
        closing = await client.next()
        assert isinstance(closing, CloseConnection) and closing.code == code
        client.close(closing.response())
        assert await client.eof()

    session_test(app, talk, Engine())


def test_app_close_then_peer_reply_ends_the_stream() -> None:
    after: list[ASGIMessage] = []

    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 4000, "reason": "done"})
        after.append(await receive())
        after.append(await receive())  # repeated, never hangs

    async def talk(client: Client) -> None:
        closing = await client.next()
        assert isinstance(closing, CloseConnection) and (closing.code, closing.reason) == (4000, "done")
        assert await client.eof()  # END_STREAM follows the close frame
        client.close(closing.response())

    session_test(app, talk, Engine())
    assert after == [{"type": "websocket.disconnect", "code": 4000, "reason": "done"}] * 2


def test_stream_end_without_close_is_1006_and_send_raises() -> None:
    outcome: list[object] = []

    async def app(scope: ASGIMessage, receive: Receive, send: Send) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        outcome.append(await receive())
        try:
            await send({"type": "websocket.send", "text": "anyone?"})
        except ClientDisconnected as exc:
            outcome.append(exc)

    async def talk(client: Client) -> None:
        client.writer.close()

    session_test(app, talk, Engine())
    assert outcome[0] == {"type": "websocket.disconnect", "code": 1006, "reason": ""}
    assert isinstance(outcome[1], ClientDisconnected)


def test_client_ping_is_answered() -> None:
    async def talk(client: Client) -> None:
        client.send(Ping(payload=b"1234"))
        pong = await client.next()
        assert type(pong).__name__ == "Pong" and pong.payload == b"1234"  # type: ignore[attr-defined]
        client.close(CloseConnection(code=1000))

    session_test(echo, talk, Engine())


def test_server_pings_and_closes_1011_when_no_pong_comes() -> None:
    options = Options(ping_interval=0.05, ping_timeout=0.2)

    async def talk(client: Client) -> None:
        client.conn.receive_data(await client.reader.read(65536))
        ping = next(client.conn.events())
        assert isinstance(ping, Ping)
        client.send(ping.response())  # answered: the connection stays up for the next ping
        pings = 1
        while True:  # not answered from now on
            event = await client.next()
            if isinstance(event, CloseConnection):
                break
            pings += isinstance(event, Ping)
        assert pings >= 2
        assert (event.code, event.reason) == (1011, "keepalive ping timeout")

    session_test(echo, talk, Engine(), options)


def test_message_over_max_size_closes_1009() -> None:
    engine = Engine()

    async def talk(client: Client) -> None:
        client.send(BytesMessage(data=b"x" * 1001))
        closing = await client.next()
        assert isinstance(closing, CloseConnection) and closing.code == 1009
        client.close(closing.response())

    session_test(echo, talk, engine, Options(max_size=1000, ping_interval=None))
    assert engine.scope["state"]["disconnect"]["code"] == 1009


def test_graceful_shutdown_closes_1012() -> None:
    engine = Engine()

    async def talk(client: Client) -> None:
        [going_away] = engine.shutdown_callbacks
        going_away()
        closing = await client.next()
        assert isinstance(closing, CloseConnection) and closing.code == 1012
        client.close(closing.response())

    session_test(echo, talk, engine)
    assert engine.scope["state"]["disconnect"] == {"type": "websocket.disconnect", "code": 1012, "reason": ""}


def test_invalid_utf8_closes_1007() -> None:
    engine = Engine()

    async def talk(client: Client) -> None:
        client.writer.write(b"\x81\x82\x00\x00\x00\x00\xff\xfe")  # a masked text frame: invalid UTF-8
        closing = await client.next()
        assert isinstance(closing, CloseConnection) and closing.code == 1007
        client.close(closing.response())

    session_test(echo, talk, engine)
    assert engine.scope["state"]["disconnect"]["code"] == 1007
