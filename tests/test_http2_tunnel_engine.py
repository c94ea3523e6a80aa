"""HTTP/2 byte streams on ``ZttpHijackProtocol``: the ``http.tunnel`` extension and ``H2Stream``.

CONNECT and extended CONNECT (RFC 8441, ``:protocol``) requests, checked frame by frame with the
``h2`` package and end to end with Node's built-in ``http2`` client.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, GoAwayFrame

from asgi_hijack.h2_stream import H2Stream
from asgi_hijack.testing import RunningServer, serve
from asgi_hijack.zttp_h2 import ZttpH2HijackProtocol
from tests.helpers import H2Client, requires_zttp, server_errors, wait_until

pytestmark = requires_zttp

NODE_TUNNEL = Path(__file__).parent / "node" / "h2_tunnel.mjs"
BIG = bytes(range(256)) * (32 * 1024)  # 8 MiB


class TunnelApp:
    """Accepts every CONNECT (``/refuse``: answers 404 instead) and then, by path:

    * ``/echo``: echo until EOF, then end its side (``?greet``: after an ``echo`` line);
    * ``/hold``: read nothing until ``release``;
    * ``/read``: read until EOF or an error, and record which;
    * ``/close``: ``writer.close()``; ``/upstream-failed``: ``reset(CONNECT_ERROR)``; ``/raise``: raise;
    * ``/misuse``: try an HTTP response and ``receive()`` after the accept;
    * ``/source?n=N``: write N chunks of 64 KiB with ``drain()``, counting the drains that returned;
    * ``/big``: write :data:`BIG` at once, then end;
    * ``/shutdown``: on the shutdown notice, say ``bye`` and end.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, Any]] = []
        self.results: list[Any] = []
        self.drained = 0
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        tunnel = scope["extensions"].get("http.tunnel")
        path = scope["path"]
        self.seen.append((scope["method"], path, tunnel if tunnel is None else dict(tunnel)))
        if tunnel is None and path == "/misuse":
            try:  # not a CONNECT: nothing to accept
                await send({"type": "http.tunnel.accept", "status": 200, "headers": []})
            except RuntimeError as exc:
                self.results.append(str(exc))
        if tunnel is None or path == "/refuse":
            await send({"type": "http.response.start", "status": 404, "headers": []})
            await send({"type": "http.response.body", "body": b"no tunnel here"})
            return
        await send({"type": "http.tunnel.accept", "status": 200, "headers": [(b"x-tunnel", b"yes")]})
        stream: H2Stream = tunnel["stream"]
        reader, writer = stream.reader, stream.writer
        if path == "/echo":
            if scope["query_string"] == b"greet":
                writer.write(b"echo\n")
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await stream.wait_closed()
        elif path == "/hold":
            self.release = self.release or asyncio.Event()
            await self.release.wait()
        elif path == "/read":
            try:
                self.results.append(await reader.read())
            except ConnectionResetError as exc:
                self.results.append(exc)
        elif path == "/close":
            writer.write(b"closing")
            writer.close()
            await writer.wait_closed()
        elif path == "/upstream-failed":
            stream.reset(ErrorCodes.CONNECT_ERROR)
        elif path == "/raise":
            raise RuntimeError("the app failed after the accept")
        elif path == "/misuse":
            try:
                await send({"type": "http.response.start", "status": 200, "headers": []})
            except RuntimeError as exc:
                self.results.append(str(exc))
            self.results.append(await receive())
            stream.reset(ErrorCodes.NO_ERROR)
        elif path == "/source":
            for _ in range(int(scope["query_string"].split(b"=")[1])):
                writer.write(bytes(65536))
                await writer.drain()
                self.drained += 1
            writer.write_eof()
        elif path == "/big":
            writer.write(BIG)  # one write: the engine hands it to zttp as the window opens
            writer.write_eof()
            await writer.drain()
            self.drained += 1
        elif path == "/shutdown":
            done = asyncio.Event()
            stream.on_shutdown(done.set)
            await done.wait()
            self.results.append(stream.shutdown_requested)
            writer.write(b"bye")
            writer.write_eof()

    def unhold(self, server: RunningServer) -> None:
        if self.release is not None:
            server.loop.call_soon_threadsafe(self.release.set)


@pytest.fixture
def tunnels() -> Iterator[tuple[TunnelApp, RunningServer]]:
    app = TunnelApp()
    with serve(app, "zttp") as server:
        try:
            yield app, server
        finally:
            app.unhold(server)


def open_tunnel(client: H2Client, path: str, protocol: str | None = "connect-tcp") -> int:
    """Send an extended CONNECT and wait for its 200; returns the stream id."""
    stream_id = client.request("CONNECT", path, protocol=protocol, end_stream=False)
    response = client.wait(
        lambda e: type(e).__name__ in ("ResponseReceived", "StreamReset") and e.stream_id == stream_id
    )
    assert type(response).__name__ == "ResponseReceived", response
    assert dict(response.headers)[b":status"] == b"200"
    assert dict(response.headers)[b"x-tunnel"] == b"yes"
    assert response.stream_ended is None  # HEADERS without END_STREAM
    return stream_id


def ending(client: H2Client, stream_id: int) -> Any:
    return client.wait(client.ended(stream_id))


def test_extended_connect_reaches_the_app_with_its_protocol(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    app, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/echo", "connect-tcp")
    assert client.conn.remote_settings.enable_connect_protocol == 1
    get = client.request("GET", "/echo")
    assert type(ending(client, get)).__name__ == "StreamEnded"
    assert client.body(get) == b"no tunnel here"
    client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.flush()
    assert app.seen[0] == ("CONNECT", "/echo", {"protocol": "connect-tcp"})  # as the app got it
    assert app.seen[1] == ("GET", "/echo", None)  # plain requests carry no http.tunnel
    client.close()


def test_echo_and_half_close_map_to_end_stream(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/echo")
    payload = bytes(range(256)) * 1024  # 256 KiB: past the initial windows both ways
    client.send(stream_id, payload, end_stream=True)
    end = ending(client, stream_id)
    assert type(end).__name__ == "StreamEnded"  # the app's write_eof(), after the client's END_STREAM
    assert client.body(stream_id) == payload
    credited = sum(e.delta for e in client.events if type(e).__name__ == "WindowUpdated" and e.stream_id == stream_id)
    assert credited >= len(payload) - 65535  # the server credited the stream as it took the bytes
    assert not any(type(e).__name__ == "StreamReset" for e in client.events)
    client.close()


def test_data_sent_before_the_answer_reaches_the_reader_first(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    stream_id = client.conn.get_next_available_stream_id()
    head = [(b":method", b"CONNECT"), (b":protocol", b"connect-tcp"), (b":scheme", b"http"), (b":path", b"/echo")]
    client.conn.send_headers(stream_id, [*head, (b":authority", b"127.0.0.1")])
    client.conn.send_data(stream_id, b"early", end_stream=True)
    client.flush()  # one write: zttp parses the request, its DATA and its end before the app runs
    assert type(ending(client, stream_id)).__name__ == "StreamEnded"
    assert client.body(stream_id) == b"early"
    client.close()


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (ErrorCodes.NO_ERROR, b"early"),
        (ErrorCodes.CANCEL, b"early"),
        (ErrorCodes.INTERNAL_ERROR, "INTERNAL_ERROR (0x2)"),
    ],
)
def test_a_peer_reset_is_eof_or_an_error(tunnels: tuple[TunnelApp, RunningServer], code: int, outcome: Any) -> None:
    app, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/read")
    client.send(stream_id, b"early")
    client.conn.reset_stream(stream_id, code)  # frames arrive in order: the bytes, then the reset
    client.flush()
    assert wait_until(lambda: bool(app.results))
    (result,) = app.results
    if isinstance(outcome, bytes):
        assert result == outcome
    else:
        assert isinstance(result, ConnectionResetError)
        assert outcome in str(result)
    client.close()


@pytest.mark.parametrize(
    ("path", "code"), [("/close", ErrorCodes.CANCEL), ("/upstream-failed", ErrorCodes.CONNECT_ERROR)]
)
def test_close_and_reset_send_rst_stream(tunnels: tuple[TunnelApp, RunningServer], path: str, code: int) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, path)
    end = ending(client, stream_id)
    assert type(end).__name__ == "StreamReset"
    assert end.error_code == code
    client.close()


def test_an_app_error_after_the_accept_resets_with_internal_error(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    with server_errors() as errors:
        stream_id = open_tunnel(client, "/raise")
        end = ending(client, stream_id)
        assert wait_until(lambda: bool(errors.records))
    assert end.error_code == ErrorCodes.INTERNAL_ERROR
    assert len(errors.records) == 1
    assert "the app failed after the accept" in errors.records[0].exc_text
    client.close()


def test_http_messages_after_the_accept_are_refused(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    app, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/misuse")
    ending(client, stream_id)
    refusal, received = app.results
    assert "after 'http.tunnel.accept'" in refusal
    assert ".writer" in refusal
    assert received == {"type": "http.disconnect"}
    get = client.request("GET", "/misuse")
    assert type(ending(client, get)).__name__ == "StreamEnded"
    assert "for a GET request: only CONNECT requests" in app.results[2]
    client.close()


def test_an_app_may_answer_connect_with_a_response(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    stream_id = client.request("CONNECT", "/refuse", protocol="connect-tcp", end_stream=False)
    assert type(ending(client, stream_id)).__name__ == "StreamEnded"
    (response,) = [e for e in client.events if type(e).__name__ == "ResponseReceived"]
    assert dict(response.headers)[b":status"] == b"404"
    client.close()


def test_writes_wait_for_the_peer_window(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    app, server = tunnels
    client = H2Client(server.address, ack=False)
    stream_id = open_tunnel(client, "/source?n=64")  # 4 MiB
    client.wait(lambda e: len(client.body(stream_id)) >= 65535)
    time.sleep(0.5)  # without back-pressure every drain() would have returned by now
    assert app.drained * 65536 - 65535 <= ZttpH2HijackProtocol.parked_bytes + 65536
    client.ack = True
    client.conn.acknowledge_received_data(len(client.body(stream_id)), stream_id)
    client.flush()
    assert type(ending(client, stream_id)).__name__ == "StreamEnded"
    assert client.body(stream_id) == bytes(64 * 65536)
    assert app.drained == 64
    client.close()


def test_one_large_write_arrives_whole_then_end_stream(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    app, server = tunnels
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/big")
    assert type(ending(client, stream_id)).__name__ == "StreamEnded"
    assert client.body(stream_id) == BIG
    assert wait_until(lambda: app.drained == 1)
    client.close()


def test_a_tunnel_that_does_not_read_is_reset_and_its_siblings_go_on(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    _, server = tunnels
    client = H2Client(server.address)
    held = open_tunnel(client, "/hold")
    echo = open_tunnel(client, "/echo")
    client.send(held, bytes(ZttpH2HijackProtocol.stream_buffer + 65536))
    end = ending(client, held)
    assert type(end).__name__ == "StreamReset"
    assert end.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    client.send(echo, b"still here", end_stream=True)
    assert type(ending(client, echo)).__name__ == "StreamEnded"
    assert client.body(echo) == b"still here"
    client.close()


def test_plain_connect_is_reset_by_zttp_before_the_app(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    """zttp 0.0.35 rejects an authority-form CONNECT (no ``:path``) with PROTOCOL_ERROR: the current
    behaviour, which the engine is ready to change (it would get ``protocol`` None)."""
    app, server = tunnels
    client = H2Client(server.address)
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"example.com:443")])
    client.flush()
    end = ending(client, stream_id)
    assert type(end).__name__ == "StreamReset"
    assert end.error_code == ErrorCodes.PROTOCOL_ERROR
    assert app.seen == []
    client.close()


def test_graceful_shutdown_notifies_the_owner_and_sends_goaway() -> None:
    app = TunnelApp()
    with serve(app, "zttp") as server:
        client = H2Client(server.address)
        stream_id = open_tunnel(client, "/shutdown")
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        ended = client.raw_frames(lambda frames: any("END_STREAM" in f.flags for f in frames))
        client.conn.end_stream(stream_id)  # the client ends its side too: the stream is closed
        client.flush()
        rest = client.raw_frames(lambda frames: False)  # to the server's close
        stopping.join()
    goaways = [f for f in ended if isinstance(f, GoAwayFrame)]
    assert goaways
    assert goaways[0].error_code == ErrorCodes.NO_ERROR
    assert goaways[0].last_stream_id >= stream_id
    after = ended[ended.index(goaways[0]) :]
    data = [f for f in after if isinstance(f, DataFrame) and f.stream_id == stream_id]
    assert b"".join(f.data for f in data) == b"bye"  # the owner's goodbye, after the GOAWAY
    assert "END_STREAM" in data[-1].flags
    assert not any(f.stream_id == stream_id and type(f).__name__ == "RstStreamFrame" for f in ended + rest)
    assert app.results == [True]


def test_node_extended_connect_echo_and_half_close(tunnels: tuple[TunnelApp, RunningServer]) -> None:
    """Node's http2 client (``tests/node/h2_tunnel.mjs``): 4 tunnels on one connection, 256 KiB each,
    echoed after a greeting line; each client half-closes, then the server ends its side."""
    app, server = tunnels
    command = ["node", str(NODE_TUNNEL), server.url, "/echo?greet", "1", "4", str(256 * 1024)]
    done = subprocess.run(command, cwd=NODE_TUNNEL.parent, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["connectProtocol"] is True
    assert [(t["status"], t["rst"], t["head"], t["ok"]) for t in report["tunnels"]] == [(200, 0, "echo", True)] * 4
    assert [tunnel["protocol"] for _, _, tunnel in app.seen] == ["connect-tcp"] * 4
