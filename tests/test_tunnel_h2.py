"""``tunnel()`` on HTTP/2 (``ZttpHijackProtocol``): extended CONNECT streams as byte streams.

Clients: Node's own ``http2`` module (``tests/node/h2_tunnel.mjs``), and the ``h2`` package
(:class:`tests.helpers.H2Client`) for the exact frames: END_STREAM, RST_STREAM codes, windows.
The app is :func:`tests.apps.tunnel_app`, the same as on HTTP/1.1 (``tests/test_tunnel.py``).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import anyio
import pytest

from asgi_hijack import AlreadyHijackedError, tunnel
from asgi_hijack.testing import RunningServer, serve
from tests.apps import RESULTS, tunnel_app
from tests.helpers import H2Client, make_certificate, requires_zttp, wait_until

pytestmark = requires_zttp

NODE_DIR = Path(__file__).resolve().parent / "node"
CANCEL, PROTOCOL_ERROR, INTERNAL_ERROR, ENHANCE_YOUR_CALM = 0x8, 0x1, 0x2, 0xB
HEAD = b"protocol=connect-tcp version=2\n"


def node_tunnels(server: RunningServer, *args: str, ca: Path | None = None) -> Any:
    """Run ``tests/node/h2_tunnel.mjs`` (Node's http2 client) against ``server``; its JSON report."""
    node = shutil.which("node")
    assert node, "Node.js is needed for the http2 client tests (apt-get install nodejs)"
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(ca)} if ca is not None else None
    command = [node, "h2_tunnel.mjs", server.url, *args]
    result = subprocess.run(command, cwd=NODE_DIR, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def is_type(name: str, stream_id: int | None = None) -> Any:
    return lambda e: type(e).__name__ == name and (stream_id is None or getattr(e, "stream_id", None) == stream_id)


def open_tunnel(client: H2Client, path: str) -> int:
    """An extended CONNECT (``:protocol: connect-tcp``) to ``path``, answered ``200`` without END_STREAM."""
    stream_id = client.request("CONNECT", path, protocol="connect-tcp", end_stream=False)
    response = client.wait(is_type("ResponseReceived", stream_id))
    assert dict(response.headers)[b":status"] == b"200" and response.stream_ended is None
    client.wait(lambda e: client.body(stream_id).startswith(HEAD))
    return stream_id


def resets(client: H2Client, stream_id: int) -> list[int]:
    return [e.error_code for e in client.events if type(e).__name__ == "StreamReset" and e.stream_id == stream_id]


@pytest.fixture
def server(hijack_server: Any) -> RunningServer:
    running: RunningServer = hijack_server(tunnel_app, "zttp")
    return running


# -- Node's http2 client ---------------------------------------------------------------------------


def test_node_extended_connect_echo_and_half_close(server: RunningServer) -> None:
    report = node_tunnels(server, "/echo", "1", "2", "0")
    assert report["connectProtocol"] is True  # the server's SETTINGS allowed :protocol
    expected = {"status": 200, "rst": 0, "head": HEAD.decode().strip(), "ok": False, "body": "11:desolc-flah"}
    assert report["tunnels"] == [expected, expected]  # Node's end() is END_STREAM, and ours reached it


def test_node_over_tls_by_alpn(hijack_server: Any, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    server = hijack_server(tunnel_app, "zttp", ssl_keyfile=str(key), ssl_certfile=str(cert))
    tunnels = node_tunnels(server, "/stream", "1", "16", "100000", ca=cert)["tunnels"]
    assert [(t["status"], t["ok"], t["head"]) for t in tunnels] == [(200, True, "protocol=connect-tcp version=2")] * 16


def test_node_1000_tunnels_over_8_connections(server: RunningServer) -> None:
    tunnels = node_tunnels(server, "/stream", "8", "125", "65536")["tunnels"]
    assert len(tunnels) == 1000
    assert [t for t in tunnels if not (t["ok"] and t["status"] == 200 and t["rst"] == 0)] == []


def test_node_128_tunnels_on_one_connection(server: RunningServer) -> None:
    # 128 is zttp's MAX_CONCURRENT_STREAMS; 256 KiB each way is four times a stream's initial window.
    tunnels = node_tunnels(server, "/stream", "1", "128", "262144")["tunnels"]
    assert len(tunnels) == 128
    assert [t for t in tunnels if not (t["ok"] and t["status"] == 200 and t["rst"] == 0)] == []


def test_node_plain_connect_is_reset_by_zttp_before_the_app(server: RunningServer) -> None:
    # zttp 0.0.35 refuses an authority-form CONNECT (no :scheme, no :path) with PROTOCOL_ERROR.
    assert node_tunnels(server, "plain") == {"status": 0, "rst": PROTOCOL_ERROR}


# -- the h2 package: the frames ---------------------------------------------------------------------


def test_frames_end_stream_both_ways(server: RunningServer) -> None:
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/echo")
    client.send(stream_id, b"hello", end_stream=True)  # END_STREAM: EOF for the app's receive()
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == HEAD + b"5:olleh"
    assert [type(e).__name__ for e in client.events if getattr(e, "stream_id", None) == stream_id][-1] == "StreamEnded"
    assert resets(client, stream_id) == []


def test_aclose_before_eof_resets_with_cancel(server: RunningServer) -> None:
    client = H2Client(server.address)
    stream_id = client.request("CONNECT", "/close", protocol="connect-tcp", end_stream=False)
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == HEAD
    assert resets(client, stream_id) == [CANCEL]


def test_aclose_after_eof_ends_the_stream(hijack_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:  # the README's example
        async with await tunnel(scope, receive, send) as t:
            while data := await t.reader.read(65536):
                await t.send(data)

    client = H2Client(hijack_server(app, "zttp").address)
    stream_id = client.request("CONNECT", "/", protocol="connect-tcp", end_stream=False)
    client.send(stream_id, b"hello", end_stream=True)
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == b"hello" and resets(client, stream_id) == []


@pytest.mark.parametrize(
    ("code", "outcome"), [(CANCEL, anyio.EndOfStream), (INTERNAL_ERROR, anyio.BrokenResourceError)]
)
def test_peer_reset(server: RunningServer, code: int, outcome: type[Exception]) -> None:
    key = f"reset-{code}"
    client = H2Client(server.address)
    stream_id = open_tunnel(client, f"/record?id={key}")
    client.conn.reset_stream(stream_id, code)
    client.flush()
    assert wait_until(lambda: key in RESULTS)
    result = RESULTS.pop(key)
    assert type(result) is outcome
    if code == INTERNAL_ERROR:  # the cause names the code
        assert str(result.__cause__) == f"the peer reset HTTP/2 stream {stream_id} with INTERNAL_ERROR (0x2)"


def test_flow_control_both_ways(server: RunningServer) -> None:
    client = H2Client(server.address, ack=False)  # the client credits nothing it receives
    stream_id = open_tunnel(client, "/stream")
    payload = bytes(range(256)) * 1024  # 256 KiB: four initial windows
    client.send(stream_id, payload, end_stream=True)  # possible only as the server credits our DATA
    assert any(is_type("WindowUpdated", stream_id)(e) for e in client.events)

    def received() -> int:
        return sum(e.flow_controlled_length for e in client.events if is_type("DataReceived", stream_id)(e))

    client.wait(lambda e: received() == 65535)  # the initial window is used up, and h2 allows no byte more
    client.ack = True
    client.conn.acknowledge_received_data(received(), stream_id)
    client.flush()
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == HEAD + payload


def test_a_tunnel_whose_app_stops_reading_stalls_no_sibling(server: RunningServer) -> None:
    client = H2Client(server.address)
    stalled = open_tunnel(client, "/stall")
    client.send(stalled, b"x" * (512 << 10))  # under the per-stream bound: held for the app
    sibling = open_tunnel(client, "/echo")
    client.send(sibling, b"still moving", end_stream=True)
    client.wait(client.ended(sibling))
    assert client.body(sibling) == HEAD + b"12:gnivom llits" and resets(client, stalled) == []
    client.send(stalled, b"x" * (1 << 20))  # over it: that stream alone is reset
    client.wait(client.ended(stalled))
    assert resets(client, stalled) == [ENHANCE_YOUR_CALM]
    again = open_tunnel(client, "/echo")
    client.send(again, b"ok", end_stream=True)
    client.wait(client.ended(again))
    assert client.body(again) == HEAD + b"2:ko"


def test_read_deadline(server: RunningServer) -> None:
    client = H2Client(server.address)
    stream_id = open_tunnel(client, "/deadline")
    expired = b"read deadline exceeded; move it with set_read_deadline() to continue\n"
    client.wait(lambda e: client.body(stream_id).endswith(expired))
    client.send(stream_id, b"a line\n")
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == HEAD + expired + b"now a line\n"


def test_shutdown_notice_then_goaway() -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed for the http2 client tests (apt-get install nodejs)"
    RESULTS.pop("shutdown-waiting", None)
    with serve(tunnel_app, "zttp") as server:
        command = [node, "h2_tunnel.mjs", server.url, "/shutdown", "1", "2", "0"]
        with subprocess.Popen(command, cwd=NODE_DIR, stdout=subprocess.PIPE, text=True) as client:
            assert wait_until(lambda: RESULTS.get("shutdown-waiting") == "2")
            server.server.should_exit = True  # the app writes "bye" to each tunnel and closes it
            output, _ = client.communicate(timeout=30)
    report = json.loads(output)
    assert report["goaways"] == [0]  # GOAWAY NO_ERROR
    assert [(t["status"], t["body"]) for t in report["tunnels"]] == [(200, "waiting\nbye\n")] * 2


def test_a_get_cannot_be_tunnelled(server: RunningServer) -> None:
    client = H2Client(server.address)
    stream_id = client.request("GET", "/echo")
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == (
        b"TunnelNotSupported supported=False: tunnel() needs a CONNECT or extended CONNECT (RFC 8441) "
        b"request on HTTP/2, got GET: only such a stream can carry a byte stream. Answer this request "
        b"with an ordinary response."
    )


def test_plain_connect_never_reaches_the_app(hijack_server: Any) -> None:
    calls: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        calls.append(scope["method"])
        await tunnel_app(scope, receive, send)

    client = H2Client(hijack_server(app, "zttp").address)
    stream_id = client.conn.get_next_available_stream_id()
    client.conn.send_headers(stream_id, [(b":method", b"CONNECT"), (b":authority", b"127.0.0.1:9")])
    client.flush()
    client.wait(client.ended(stream_id))
    assert resets(client, stream_id) == [PROTOCOL_ERROR] and calls == []
    sibling = open_tunnel(client, "/echo")  # the connection goes on
    client.send(sibling, b"", end_stream=True)
    client.wait(client.ended(sibling))
    assert client.body(sibling) == HEAD + b"0:" and calls == ["CONNECT"]


def test_write_deadline_when_the_peer_stops_reading(hijack_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async with await tunnel(scope, receive, send) as t:
            try:
                await tunnel(scope, receive, send)
            except AlreadyHijackedError as exc:
                RESULTS["second tunnel"] = exc
            t.set_write_deadline(asyncio.get_running_loop().time() + 0.2)
            try:
                while True:  # until the peer's window and the server's bound are full
                    await t.send(b"x" * 65536)
            except TimeoutError as exc:
                RESULTS["write deadline"] = exc

    client = H2Client(hijack_server(app, "zttp").address, ack=False)
    stream_id = client.request("CONNECT", "/", protocol="connect-tcp", end_stream=False)
    client.wait(client.ended(stream_id))  # the deadline passed: aclose() resets the stream
    assert resets(client, stream_id) == [CANCEL]
    assert (
        str(RESULTS.pop("write deadline")) == "write deadline exceeded; move it with set_write_deadline() to continue"
    )
    assert "tunnel() may be called once per request" in str(RESULTS.pop("second tunnel"))
