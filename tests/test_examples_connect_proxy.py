"""examples/connect_proxy.py: ConnectProxyMiddleware, with curl and httpx as proxy clients.

Upstreams are real servers on 127.0.0.1: uvicorn (plain and TLS) for the clients, and
raw TCP servers for half-close and back-pressure.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_hijack.testing import RunningServer
from examples.connect_proxy import ConnectProxyMiddleware
from examples.connect_proxy import app as example_app
from tests.helpers import PARSERS, connect, curl, make_certificate, recv_all, recv_to_close, recv_until
from tests.test_examples_raw_tcp import ExampleProcess, uvicorn_example

TIMEOUT = 10.0
ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"hello from upstream over {request.url.scheme}")


upstream_app = Starlette(routes=[Route("/", hello)])
inner_app = Starlette(routes=[Route("/", lambda request: PlainTextResponse("the app behind the proxy"))])


def proxy(hijack_server: Any, *allow: str, parser: str = "auto") -> RunningServer:
    server: RunningServer = hijack_server(ConnectProxyMiddleware(inner_app, allow=allow), parser)
    return server


class TcpServer:
    """A raw TCP server on 127.0.0.1 running ``handler(sock)`` for each connection in a thread."""

    def __init__(self, handler: Callable[[socket.socket], None]) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.errors: list[BaseException] = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.run, args=(sock,), daemon=True).start()

    def run(self, sock: socket.socket) -> None:
        with sock:
            sock.settimeout(TIMEOUT)
            try:
                self.handler(sock)
            except BaseException as exc:
                self.errors.append(exc)

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def tcp_server() -> Iterator[Callable[[Callable[[socket.socket], None]], TcpServer]]:
    servers: list[TcpServer] = []

    def start(handler: Callable[[socket.socket], None]) -> TcpServer:
        servers.append(TcpServer(handler))
        return servers[-1]

    yield start
    for server in servers:
        server.close()
        assert not server.errors, server.errors


@pytest.mark.parametrize("parser", PARSERS)
def test_curl_through_the_tunnel(hijack_server: Any, parser: str) -> None:
    upstream = hijack_server(upstream_app)
    server = proxy(hijack_server, f"127.0.0.1:{upstream.port}", parser=parser)
    result = curl("-p", "-x", server.url, f"{upstream.url}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from upstream over http"


def test_httpx_https_through_the_proxy(hijack_server: Any, tmp_path: Path) -> None:
    key, cert = make_certificate(tmp_path)
    upstream = hijack_server(upstream_app, ssl_keyfile=str(key), ssl_certfile=str(cert))
    server = proxy(hijack_server, f"127.0.0.1:{upstream.port}")
    verify = ssl.create_default_context(cafile=str(cert))
    with httpx.Client(proxy=server.url, verify=verify, timeout=TIMEOUT) as client:
        responses = [client.get(f"https://127.0.0.1:{upstream.port}/") for _ in range(2)]  # one tunnel, reused
    assert [(r.status_code, r.text) for r in responses] == [(200, "hello from upstream over https")] * 2


def test_closed_by_default(hijack_server: Any) -> None:
    upstream = hijack_server(upstream_app)
    server = proxy(hijack_server)
    result = curl("-p", "-x", server.url, f"{upstream.url}/")
    assert result.returncode != 0 and "403" in result.stderr
    with connect(server) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 403 Forbidden\r\n")
    assert response.endswith(
        f"CONNECT to 127.0.0.1:{upstream.port} is not allowed by this proxy's allow-list.\n".encode()
    )
    assert ConnectProxyMiddleware(inner_app).allow == set()
    assert example_app.allow == set()  # the example, without CONNECT_PROXY_ALLOW


def test_only_listed_targets_are_reachable(hijack_server: Any) -> None:
    upstream = hijack_server(upstream_app)
    server = proxy(hijack_server, "localhost:*", f"127.0.0.1:{upstream.port + 1}")
    assert curl("-p", "-x", server.url, f"http://localhost:{upstream.port}/").stdout.startswith("hello")
    result = curl("-p", "-x", server.url, f"{upstream.url}/")  # same server, by a name not listed
    assert result.returncode != 0 and "403" in result.stderr


def test_unreachable_target_is_a_502_that_says_why(hijack_server: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    server = proxy(hijack_server, f"127.0.0.1:{port}")
    with connect(server) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 502 Bad Gateway\r\n")
    assert f"Could not connect to 127.0.0.1:{port}: ".encode() in response and b"refused" in response


def test_bad_target_is_a_400(hijack_server: Any) -> None:
    server = proxy(hijack_server, "example.com:443")
    with connect(server) as sock:
        sock.sendall(b"CONNECT example.com HTTP/1.1\r\nHost: example.com\r\n\r\n")
        response = recv_all(sock)
    assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n") and b"host:port" in response


def test_other_requests_reach_the_app(hijack_server: Any) -> None:
    server = proxy(hijack_server, "example.com:443")
    assert httpx.get(f"{server.url}/", timeout=TIMEOUT).text == "the app behind the proxy"


@pytest.mark.parametrize("parser", PARSERS)
def test_half_close_is_passed_on_both_ways(hijack_server: Any, tcp_server: Any, parser: str) -> None:
    def reverse_after_eof(sock: socket.socket) -> None:
        data = b""
        while chunk := sock.recv(65536):  # until the client's half-close reaches us
            data += chunk
        sock.sendall(b"%d:%s" % (len(data), data[::-1]))
        sock.shutdown(socket.SHUT_WR)  # and ours reaches the client
        assert sock.recv(1) == b""

    upstream = tcp_server(reverse_after_eof)
    server = proxy(hijack_server, f"127.0.0.1:{upstream.port}", parser=parser)
    with connect(server) as sock:
        # Bytes in the same segment as the CONNECT head are tunnelled too.
        sock.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\nhello".encode())
        assert recv_until(sock, ESTABLISHED) == ESTABLISHED
        sock.sendall(b" world")
        sock.shutdown(socket.SHUT_WR)
        assert recv_all(sock) == b"11:dlrow olleh"


LIMIT = 96 << 20  # far more than the socket buffers on the way hold (about 10 MiB here)


def push_until_stalled(sock: socket.socket) -> int:
    """Send until a send blocks for a second (back-pressure) or LIMIT bytes went out."""
    chunk, sent = b"x" * 65536, 0
    sock.settimeout(1.0)
    try:
        while sent < LIMIT:
            sent += sock.send(chunk)
    except TimeoutError:
        pass
    return sent


def test_back_pressure_both_ways(hijack_server: Any, tcp_server: Any) -> None:
    reading, done = threading.Event(), threading.Event()
    upload: dict[str, int] = {}

    def slow_then_drain(sock: socket.socket) -> None:
        assert reading.wait(TIMEOUT)  # read nothing until the client has stalled
        received = 0
        while chunk := sock.recv(1 << 20):
            received += len(chunk)
        upload["received"] = received
        upload["pushed"] = push_until_stalled(sock)  # now the client does not read
        done.set()

    upstream = tcp_server(slow_then_drain)
    server = proxy(hijack_server, f"127.0.0.1:{upstream.port}")
    with connect(server) as sock:
        sock.sendall(f"CONNECT 127.0.0.1:{upstream.port} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_until(sock, ESTABLISHED) == ESTABLISHED
        sent = push_until_stalled(sock)
        assert sent < LIMIT, "the proxy read everything without waiting for the upstream to read"
        reading.set()
        sock.shutdown(socket.SHUT_WR)
        assert done.wait(TIMEOUT)
        assert upload["received"] == sent  # nothing lost or duplicated on the way
        assert upload["pushed"] < LIMIT, "the proxy read everything without waiting for the client to read"


def test_sigterm_closes_the_tunnel_at_both_ends(tcp_server: Any) -> None:
    upstream_closed = threading.Event()

    def echo(sock: socket.socket) -> None:
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(65536):
                sock.sendall(chunk)
        upstream_closed.set()

    target = f"127.0.0.1:{tcp_server(echo).port}"
    command = uvicorn_example("examples.connect_proxy:app")
    with ExampleProcess(command, env={"CONNECT_PROXY_ALLOW": target}) as server, connect(server.address) as sock:
        sock.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: x\r\n\r\nping".encode())
        assert recv_until(sock, b"ping") == ESTABLISHED + b"ping"
        server.sigterm()  # the relay is cancelled: both connections are closed
        closing = recv_to_close(sock, TIMEOUT)
        assert (closing.how, closing.data) in {("eof", b""), ("reset", b"")}
        assert upstream_closed.wait(TIMEOUT)
        server.assert_exits()
