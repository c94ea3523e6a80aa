"""``tunnel()`` on HTTP/1.1: CONNECT and Upgrade requests as byte streams, on every parser.

Real uvicorn servers on 127.0.0.1, raw sockets and curl as clients. The HTTP/2 side is in
``tests/test_tunnel_h2.py``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from asgi_hijack import HijackNotSupported, TunnelNotSupported, tunnel
from asgi_hijack.testing import serve
from tests.apps import tunnel_app
from tests.helpers import PARSERS, connect, curl, parse_responses, recv_all, recv_until

CONNECT = b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n"


@pytest.mark.parametrize("parser", PARSERS)
def test_connect_is_a_200_then_an_echo_with_half_close(hijack_server: Any, parser: str) -> None:
    server = hijack_server(tunnel_app, parser)
    with connect(server) as sock:
        sock.sendall(CONNECT + b"early ")  # bytes in the head's segment are in the tunnel too
        head = recv_until(sock, b"\n", timeout=5)
        sock.sendall(b"bytes")
        sock.shutdown(socket.SHUT_WR)
        data = head + recv_all(sock)
    (response,), rest = parse_responses(data, bodiless=lambda status, headers: True)
    assert response.status == 200 and response.head.startswith(b"HTTP/1.1 200 ")
    assert rest == b"protocol=None version=1.1\n11:setyb ylrae"


@pytest.mark.parametrize("parser", PARSERS)
def test_upgrade_is_a_101_with_its_headers_filled_in(hijack_server: Any, parser: str) -> None:
    server = hijack_server(tunnel_app, parser)
    with connect(server) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp, h2c\r\n\r\nhi")
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    (response,), rest = parse_responses(data)
    assert response.status == 101
    assert response.headers[b"upgrade"] == b"tcp" and response.headers[b"connection"] == b"Upgrade"
    assert rest == b"protocol=tcp version=1.1\n2:ih"


def test_http_1_0_connect(hijack_server: Any) -> None:
    server = hijack_server(tunnel_app, "h11")
    with connect(server) as sock:
        sock.sendall(b"CONNECT /echo HTTP/1.0\r\n\r\nx")  # a path, as Go RPC sends
        sock.shutdown(socket.SHUT_WR)
        data = recv_all(sock)
    assert data.startswith(b"HTTP/1.0 200 ") and data.endswith(b"\r\n\r\nprotocol=None version=1.0\n1:x")


@pytest.mark.parametrize("parser", PARSERS)
def test_a_get_without_upgrade_cannot_be_tunnelled(hijack_server: Any, parser: str) -> None:
    server = hijack_server(tunnel_app, parser)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        (response,), _ = parse_responses(recv_until(sock, b"call hijack()"))
    assert response.status == 400
    assert response.body.startswith(
        b"TunnelNotSupported supported=False: tunnel() needs a CONNECT request or one with an Upgrade header, "
        b"got GET without Upgrade: the client expects an HTTP response"
    )


@pytest.mark.parametrize(
    ("request_head", "error"),
    [
        (CONNECT.replace(b"\r\n\r\n", b"\r\nX-Status: 101\r\n\r\n"), b"a CONNECT tunnel is opened by a 2xx response"),
        (b"GET / HTTP/1.1\r\nUpgrade: tcp\r\nX-Status: 200\r\n\r\n", b"an Upgrade tunnel is opened by a 101 response"),
    ],
)
def test_a_status_that_opens_no_tunnel_is_refused_before_anything_is_written(
    hijack_server: Any, request_head: bytes, error: bytes
) -> None:
    server = hijack_server(tunnel_app)
    with connect(server) as sock:
        sock.sendall(request_head)
        (response,), _ = parse_responses(recv_until(sock, b"tunnel()"))
    assert response.status == 400
    assert response.body.startswith(b"ValueError supported=True: " + error)


def test_headers_given_are_kept(hijack_server: Any) -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        async with await tunnel(scope, receive, send, headers=[(b"Upgrade", b"TCP"), (b"x-tunnel", b"yes")]):
            pass

    server = hijack_server(app)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        data = recv_all(sock)
    assert data == b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: TCP\r\nx-tunnel: yes\r\nconnection: Upgrade\r\n\r\n"


@pytest.mark.parametrize("stock", ["h11_impl:H11Protocol", "httptools_impl:HttpToolsProtocol"])
def test_stock_uvicorn_says_which_class_to_use(stock: str) -> None:
    with serve(tunnel_app, f"uvicorn.protocols.http.{stock}") as server, connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        (response,), _ = parse_responses(recv_until(sock, b"HijackProtocol"))
    assert response.status == 400
    assert (
        b"TunnelNotSupported supported=False: tunnel() is built on hijack() on HTTP/1.x, and the server "
        in response.body
    )


def test_read_deadline(hijack_server: Any) -> None:
    server = hijack_server(tunnel_app)
    with connect(server) as sock:
        sock.sendall(b"GET /deadline HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        recv_until(sock, b"read deadline exceeded; move it with set_read_deadline() to continue\n")
        sock.sendall(b"a line\n")
        assert recv_all(sock) == b"now a line\n"


def test_shutdown_notice(hijack_server: Any) -> None:
    with serve(tunnel_app) as server, connect(server) as sock:
        sock.sendall(b"GET /shutdown HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
        recv_until(sock, b"waiting\n")
        server.server.should_exit = True
        assert recv_all(sock).endswith(b"bye\n")


async def proxy_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A CONNECT proxy from a Starlette ``Request``: tunnel(request), then relay to the target."""
    request = Request(scope, receive, send)
    host, _, port = request.scope["raw_path"].decode().rpartition(":")
    up_reader, up_writer = await asyncio.open_connection(host, int(port))
    async with await tunnel(request) as t:
        await t.relay(up_reader, up_writer)


@pytest.mark.parametrize("parser", PARSERS)
def test_curl_through_a_tunnel_made_from_a_starlette_request(hijack_server: Any, parser: str) -> None:
    upstream = hijack_server(Starlette(routes=[Route("/", lambda request: PlainTextResponse("upstream says hi"))]))
    server = hijack_server(proxy_app, parser)
    result = curl("-p", "-x", server.url, f"{upstream.url}/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "upstream says hi"


def test_wrong_arguments_name_tunnel() -> None:
    with pytest.raises(
        TypeError, match=r"^tunnel\(\) got a builtins.object and no receive or send: .* \(tunnel\(request\)\)"
    ):
        asyncio.run(tunnel(object()))  # type: ignore[call-overload]
    assert not isinstance(TunnelNotSupported("x"), TypeError) and issubclass(TunnelNotSupported, HijackNotSupported)
