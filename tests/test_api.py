"""The connection object and the errors users see, on real servers and real clients."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.tls import TLSStream

from asgi_hijack import HijackedConnection, HijackError, HijackNotSupported, hijack
from asgi_hijack.testing import RunningServer, serve
from tests.helpers import (
    PARSERS,
    ROOT,
    connect,
    connect_retry,
    free_port,
    make_certificate,
    recv_all,
    recv_until,
    server_log,
)


async def stream_api_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Exercises every part of the connection object and reports on the wire."""
    conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp"), (b"connection", b"Upgrade")])
    assert isinstance(conn, HijackedConnection)
    conn.socket.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    peer = conn.socket.getpeername()
    async with conn:
        assert await conn.reader.readexactly(len(b"pending|")) == b"pending|"  # pending buffer first
        line = await conn.reader.readline()  # then socket data
        conn.writer.write(
            b"keepalive=%d peer=%s line=%s"
            % (
                conn.socket.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                str(peer[0]).encode(),
                line,
            )
        )
        await conn.writer.drain()
        await conn.send(b"anyio send;")  # the anyio ByteStream face
        rest = b""
        try:
            while True:
                rest += await conn.receive()
        except anyio.EndOfStream:
            pass
        await conn.send(b"received=" + rest)
        await conn.send_eof()
        assert conn.extra(anyio.abc.SocketAttribute.remote_address) == peer


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_streams_socket_and_anyio_interfaces(hijack_server: Any, parser: str, loop: str) -> None:
    server = hijack_server(stream_api_app, parser, loop=loop)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\npending|")
        head = recv_until(sock, b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        sock.sendall(b"a line\n")
        got = recv_until(sock, b"anyio send;")
        assert got.endswith(b"keepalive=1 peer=127.0.0.1 line=a line\nanyio send;")
        sock.sendall(b"tail")
        sock.shutdown(socket.SHUT_WR)  # half-close: the app still answers
        assert recv_all(sock) == b"received=tail"


@pytest.mark.parametrize("parser", PARSERS)
def test_over_tls_the_streams_carry_the_tls_layer(hijack_server: Any, parser: str, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
        async with conn:
            data = await conn.reader.readexactly(5)
            await conn.send(b"tls:" + data + b":" + scope["scheme"].encode())

    server = hijack_server(app, parser, ssl_keyfile=str(key), ssl_certfile=str(cert))
    context = ssl.create_default_context(cafile=str(cert))
    with (
        socket.create_connection(server.address, timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\nhello")
        data = recv_all(sock)
    assert data.endswith(b"\r\n\r\ntls:hello:https")


def test_the_connection_wraps_in_anyio_tls_stream(hijack_server: Any, tmp_path: Path) -> None:
    """STARTTLS-style: plain HTTP upgrade, then TLS negotiated on the hijacked connection."""
    key, cert = make_certificate(tmp_path)
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"starttls")])
        tls = await TLSStream.wrap(conn, server_side=True, ssl_context=server_context)
        async with tls:
            await tls.send(b"secret:" + await tls.receive())

    server = hijack_server(app)
    context = ssl.create_default_context(cafile=str(cert))
    with connect(server) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: starttls\r\nConnection: Upgrade\r\n\r\n")
        recv_until(raw, b"\r\n\r\n")
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(b"payload")
            assert recv_until(sock, b"payload") == b"secret:payload"


def test_writer_start_tls_says_to_use_tls_stream(hijack_server: Any) -> None:
    """asyncio's start_tls() would handshake as a client: refused, with the way that works."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"starttls")])
        async with conn:
            try:
                await conn.writer.start_tls(ssl.create_default_context())
            except NotImplementedError as exc:
                await conn.send(str(exc).encode() + b"\n")

    server = hijack_server(app)
    with connect(server) as raw:
        raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: starttls\r\nConnection: Upgrade\r\n\r\n")
        recv_until(raw, b"\r\n\r\n")
        assert b"TLSStream.wrap(conn, server_side=True" in recv_until(raw, b"\n")


# -- servers and protocols that cannot hijack: HijackNotSupported says what to do -------------


async def report_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    try:
        await hijack(scope, receive, send)
    except HijackError as exc:
        body = f"{type(exc).__name__}: {exc}".encode()
        await send({"type": "http.response.start", "status": 501, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})


STOCK_PROTOCOLS = {
    "h11": "h11_impl:H11Protocol",
    "httptools": "httptools_impl:HttpToolsProtocol",
    "zttp": "zttp_impl:ZttpProtocol",
}


@pytest.mark.parametrize("http", [STOCK_PROTOCOLS[parser] for parser in PARSERS])
def test_stock_uvicorn_says_which_http_value_to_use(http: str) -> None:
    with serve(report_app, f"uvicorn.protocols.http.{http}") as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        body = recv_until(sock, b"implement the extension.").partition(b"\r\n\r\n")[2].decode()
    assert body.startswith("HijackNotSupported: ")
    assert "--http asgi_hijack:HijackProtocol" in body


def test_hypercorn_http11_says_which_server_to_use() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "hypercorn", "tests.test_api:report_app", "--bind", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with connect_retry(("127.0.0.1", port)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            body = recv_until(sock, b"implement the extension.").partition(b"\r\n\r\n")[2].decode()
        assert body.startswith("HijackNotSupported: ") and "hypercorn" in body
    finally:
        proc.terminate()
        proc.wait(10)


def test_testclient_points_to_the_pytest_fixture() -> None:
    from starlette.testclient import TestClient

    response = TestClient(report_app).get("/")
    assert response.status_code == 501
    assert "TestClient" in response.text and "hijack_server" in response.text


def test_not_an_http_scope() -> None:
    async def main() -> None:
        with pytest.raises(HijackNotSupported, match="--ws none"):
            await hijack({"type": "websocket"}, _never, _never)

    asyncio.run(main())


async def _never(*args: Any) -> Any:
    raise AssertionError("not reached")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_head_larger_than_the_socket_buffers_is_in_the_kernel_when_hijack_returns(
    hijack_server: Any, loop: str
) -> None:
    big = b"x" * (16 << 20)  # more than the kernel takes at once: the transport buffers the rest

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        conn = await hijack(scope, receive, send, status=101, headers=[(b"x-big", big)])
        async with conn:
            conn.writer.write(b"buffered=%d" % conn.transport.get_write_buffer_size())
            await conn.writer.drain()

    server = hijack_server(app, loop=loop)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        data = recv_all(sock)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert data.endswith(b"\r\nx-big: " + big + b"\r\n\r\nbuffered=0")


# -- logging: one line, as hijacked ------------------------------------------------------


def test_access_log_says_hijacked_once(hijack_server: Any) -> None:
    from tests.apps import probe_app

    server: RunningServer = hijack_server(probe_app, access_log=True, log_level="info")
    with server_log(logging.NOTSET, ["uvicorn.error", "uvicorn.access"]) as log, connect(server) as sock:
        sock.sendall(b"GET /echo?status=101 HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\nx")
        sock.shutdown(socket.SHUT_WR)
        recv_all(sock)
    lines = [line for line in log.messages() if "/echo" in line]
    assert len(lines) == 1, lines
    assert lines[0].endswith('"GET /echo?status=101 HTTP/1.1" [hijacked 101]')
