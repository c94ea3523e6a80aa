"""Go Hijacker semantics on every protocol class: what reaches the app, what the server stops doing."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from asgi_hijack import (
    AlreadyHijackedError,
    AppReturnedError,
    ClientDisconnectedError,
    ResponseStartedError,
    hijack,
)
from asgi_hijack.testing import RunningServer
from tests.apps import KEEP, RESULTS, probe_app
from tests.helpers import PARSERS, connect, recv_all, recv_until


def get_json(server: RunningServer, raw: bytes) -> dict[str, object]:
    with connect(server) as sock:
        sock.sendall(raw)
        data = recv_all(sock, timeout=3) if b"close" in raw else recv_until(sock, b"}")
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    result: dict[str, object] = json.loads(body)
    return result


# -- what reaches the app -------------------------------------------------------------------


def test_extension_advertised_on_http_11_and_10(probe_server: RunningServer) -> None:
    for version in (b"1.1", b"1.0"):
        info = get_json(probe_server, b"GET /scope HTTP/" + version + b"\r\nHost: x\r\n\r\n")
        assert info["extensions"] == ["http.connection", "http.hijack"]
        assert info["http_version"] == version.decode()


def test_authority_form_connect_reaches_the_app(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nTLS bytes")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"TLS bytes"


@pytest.mark.parametrize("parser", PARSERS)
def test_authority_form_target_appears_verbatim_in_path_and_raw_path(hijack_server: object, parser: str) -> None:
    seen: list[tuple[object, ...]] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        seen.append((scope["method"], scope["path"], scope["raw_path"], scope["query_string"]))
        async with await hijack(scope, receive, send, status=200, reason="Connection Established") as conn:  # type: ignore[arg-type]
            await conn.send(b"tunnel")

    server = hijack_server(app, parser)  # type: ignore[operator]
    with connect(server) as sock:
        sock.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
        assert recv_all(sock) == b"HTTP/1.1 200 Connection Established\r\n\r\ntunnel"
    assert seen == [("CONNECT", "example.com:443", b"example.com:443", b"")]


def test_go_rpc_connect_with_bare_lf_reaches_the_app(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b'CONNECT /_goRPC_ HTTP/1.0\n\n{"method":"Arith.Multiply"}')
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b'{"method":"Arith.Multiply"}'


@pytest.mark.parametrize("token", [b"tcp", b"h2c", b"x-custom/1.0"])
def test_any_upgrade_token_can_be_hijacked(probe_server: RunningServer, token: bytes) -> None:
    with connect(probe_server) as sock:
        sock.sendall(
            b"GET /echo?status=101 HTTP/1.1\r\nHost: x\r\nUpgrade: " + token + b"\r\nConnection: Upgrade\r\n\r\nhi"
        )
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock).endswith(b"\r\n\r\nhi")


@pytest.mark.parametrize("parser", PARSERS)
def test_websocket_upgrade_goes_to_uvicorn_unless_ws_none(hijack_server: object, parser: str) -> None:
    import websockets.sync.client

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        if scope["type"] == "websocket":
            await receive()  # type: ignore[operator]
            await send({"type": "websocket.accept"})  # type: ignore[operator]
            await send({"type": "websocket.send", "text": "uvicorn ws"})  # type: ignore[operator]
            await send({"type": "websocket.close"})  # type: ignore[operator]
        else:
            await probe_app(scope, receive, send)

    server = hijack_server(app, parser)  # type: ignore[operator]
    with websockets.sync.client.connect(f"ws://127.0.0.1:{server.port}/echo", open_timeout=5) as ws:
        assert ws.recv(timeout=5) == "uvicorn ws"

    raw = (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\nframes"
    )
    server = hijack_server(app, parser, ws="none")  # type: ignore[operator]
    with connect(server) as sock:
        sock.sendall(raw)
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"frames"  # the app hijacked it: no 101 from uvicorn


def test_head_is_written_exactly_as_given_with_the_request_version(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b"GET /echo?status=200 HTTP/1.0\r\n\r\n")
        head = recv_until(sock, b"\r\n\r\n")
    assert head == b"HTTP/1.0 200 OK\r\n\r\n"


# -- httpx's network_stream as the client ------------------------------------------------------


def test_httpx_network_stream_talks_over_the_hijacked_connection(probe_server: RunningServer) -> None:
    url = f"http://127.0.0.1:{probe_server.port}/echo?status=101"
    with (
        httpx.Client(timeout=5) as client,
        client.stream("GET", url, headers={"Upgrade": "tcp", "Connection": "Upgrade"}) as response,
    ):
        assert response.status_code == 101
        stream = response.extensions["network_stream"]
        stream.write(b"ping over httpx")
        assert stream.read(1024) == b"ping over httpx"


# -- what the server stops doing ------------------------------------------------------------


def test_keep_alive_timeout_does_not_close_a_hijacked_connection(hijack_server: object) -> None:
    for parser in PARSERS:
        server = hijack_server(probe_app, parser, timeout_keep_alive=1)  # type: ignore[operator]
        with connect(server) as sock:
            sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\nGET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"ok")
            time.sleep(1.6)
            sock.sendall(b"still mine")
            assert recv_until(sock, b"still mine") == b"still mine"


def test_the_app_raising_after_hijack_writes_no_500(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b"GET /raise-after HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(sock) == b"bye"
    with connect(probe_server) as sock:  # and the server keeps serving
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, b"ok").endswith(b"ok")


def test_an_app_that_raises_after_the_hijack_has_its_connection_closed(probe_server: RunningServer) -> None:
    # Deterministic, whoever still holds a reference: the exception means the handler failed.
    with connect(probe_server) as sock:
        sock.sendall(b"GET /raise-before-close HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(sock) == b"still here"  # what it wrote is flushed, then EOF: no 500
    conn = KEEP.pop()
    assert conn.is_closing


def test_the_server_does_not_close_a_connection_the_app_kept_after_returning(probe_server: RunningServer) -> None:
    # Go's contract: after the hijack the server does nothing with the connection, whoever owns it.
    with connect(probe_server) as sock:
        sock.sendall(b"GET /keep-open?id=kept HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 101 ")
        time.sleep(0.3)  # the app returned: uvicorn must neither write nor close
        conn = KEEP.pop()
        assert RESULTS.pop("kept") is conn and not conn.is_closing
        probe_server.loop.call_soon_threadsafe(conn.writer.write, b"still owned")
        assert recv_until(sock, b"owned") == b"still owned"
        probe_server.loop.call_soon_threadsafe(conn.close)
        assert recv_all(sock) == b""


def test_send_after_hijack_raises_and_writes_nothing(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b"GET /send-after?id=send-after HTTP/1.1\r\nHost: x\r\n\r\nraw")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"raw"
    assert isinstance(RESULTS["send-after"], AlreadyHijackedError)
    assert isinstance(RESULTS["send-after-body"], AlreadyHijackedError)
    assert "conn.writer" in str(RESULTS["send-after"])
    assert RESULTS["send-after-receive"] == {"type": "http.disconnect"}


def test_declined_upgrade_closes_the_connection_after_the_response(probe_server: RunningServer) -> None:
    # Bytes after an Upgrade or CONNECT request are never parsed as HTTP (no smuggling).
    with connect(probe_server) as sock:
        sock.sendall(
            b"GET /plain HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n"
            b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        data = recv_all(sock)
    assert data.count(b"HTTP/1.1 200") == 1 and data.endswith(b"ok")


# -- misuse: clear errors ------------------------------------------------------------------


def test_second_hijack_is_refused(probe_server: RunningServer) -> None:
    with connect(probe_server) as sock:
        sock.sendall(b"GET /twice?id=twice HTTP/1.1\r\nHost: x\r\n\r\nx")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"x"
    assert isinstance(RESULTS["twice"], AlreadyHijackedError)


@pytest.mark.parametrize("route", ["after-start", "after-complete"])
def test_hijack_after_the_response_started_or_completed(probe_server: RunningServer, route: str) -> None:
    key = f"{route}-{probe_server.port}"
    with connect(probe_server) as sock:
        sock.sendall(f"GET /{route}?id={key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_until(sock, b"ok").endswith(b"ok")
        time.sleep(0.1)
    error = RESULTS[key]
    assert isinstance(error, ResponseStartedError)
    assert ("started" if route == "after-start" else "completed") in str(error)
    assert "status=" in str(error)


def test_hijack_after_the_app_returned(probe_server: RunningServer) -> None:
    key = f"after-return-{probe_server.port}"
    with connect(probe_server) as sock:
        sock.sendall(f"GET /after-return?id={key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        recv_until(sock, b"ok")
        deadline = time.monotonic() + 5
        while key not in RESULTS and time.monotonic() < deadline:
            time.sleep(0.02)
    assert isinstance(RESULTS[key], AppReturnedError)
    assert "before it returns" in str(RESULTS[key])


def test_hijack_after_the_client_disconnected(probe_server: RunningServer) -> None:
    key = f"gone-{probe_server.port}"
    sock = connect(probe_server)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.sendall(f"GET /disconnected?id={key} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    sock.close()  # RST
    deadline = time.monotonic() + 5
    while key not in RESULTS and time.monotonic() < deadline:
        time.sleep(0.02)
    assert isinstance(RESULTS[key], ClientDisconnectedError)
