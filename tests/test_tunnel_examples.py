"""The examples on ``tunnel()``: ``connect_proxy.py`` and ``websocket_by_hand.py`` over HTTP/2.

The HTTP/1.1 sides keep their own tests (``tests/test_examples_*.py``). Here the clients are
the ``h2`` package, with ``wsproto``'s client for the WebSocket frames (RFC 8441).
"""

from __future__ import annotations

import socket
from typing import Any

from wsproto import ConnectionType
from wsproto.connection import Connection
from wsproto.events import CloseConnection, Ping, TextMessage
from wsproto.extensions import PerMessageDeflate

from asgi_hijack.testing import RunningServer
from examples.connect_proxy import ConnectProxyMiddleware
from examples.websocket_by_hand import app as websocket_app
from tests.helpers import H2Client, connect, parse_responses, recv_all, requires_zttp
from tests.test_examples_connect_proxy import inner_app
from tests.test_examples_connect_proxy import tcp_server as tcp_server_fixture

tcp_server = tcp_server_fixture  # upstreams: raw TCP servers on 127.0.0.1 (a fixture)

pytestmark = requires_zttp
CONNECT_ERROR = 0xA


def reverse_after_eof(sock: socket.socket) -> None:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    sock.sendall(b"%d:%s" % (len(data), data[::-1]))
    sock.shutdown(socket.SHUT_WR)


def connect_tcp(client: H2Client, port: int) -> tuple[int, dict[bytes, bytes]]:
    """Extended CONNECT ``connect-tcp`` to 127.0.0.1:``port`` by the template: ``(stream, response headers)``."""
    stream_id = client.request(
        "CONNECT", f"/.well-known/masque/tcp/127.0.0.1/{port}/", protocol="connect-tcp", end_stream=False
    )
    response = client.wait(lambda e: type(e).__name__ == "ResponseReceived" and e.stream_id == stream_id)
    return stream_id, dict(response.headers)


def proxy(hijack_server: Any, *allow: str) -> RunningServer:
    server: RunningServer = hijack_server(ConnectProxyMiddleware(inner_app, allow=allow), "zttp")
    return server


def test_connect_tcp_over_http2_with_half_close(hijack_server: Any, tcp_server: Any) -> None:
    upstream = tcp_server(reverse_after_eof)
    client = H2Client(proxy(hijack_server, f"127.0.0.1:{upstream.port}").address)
    stream_id, headers = connect_tcp(client, upstream.port)
    assert headers[b":status"] == b"200"
    client.send(stream_id, b"hello world", end_stream=True)  # END_STREAM: FIN to the upstream
    client.wait(client.ended(stream_id))  # and its FIN is our END_STREAM
    assert client.body(stream_id) == b"11:dlrow olleh"
    assert not [e for e in client.events if type(e).__name__ == "StreamReset"]


def test_connect_tcp_over_http1_upgrade(hijack_server: Any, tcp_server: Any) -> None:
    upstream = tcp_server(reverse_after_eof)
    server = proxy(hijack_server, f"127.0.0.1:{upstream.port}")
    with connect(server) as sock:
        path = f"/.well-known/masque/tcp/127.0.0.1/{upstream.port}/"
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: connect-tcp\r\n\r\nhi".encode()
        )
        sock.shutdown(socket.SHUT_WR)
        (response,), rest = parse_responses(recv_all(sock))
    assert response.status == 101 and response.headers[b"upgrade"] == b"connect-tcp"
    assert rest == b"2:ih"


def test_closed_by_default_on_http2(hijack_server: Any) -> None:
    client = H2Client(proxy(hijack_server).address)
    stream_id, headers = connect_tcp(client, 443)
    client.wait(client.ended(stream_id))
    assert headers[b":status"] == b"403"
    assert client.body(stream_id) == b"CONNECT to 127.0.0.1:443 is not allowed by this proxy's allow-list.\n"


def test_unreachable_target_is_a_502_before_the_tunnel(hijack_server: Any) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there once closed
    client = H2Client(proxy(hijack_server, f"127.0.0.1:{port}").address)
    stream_id, headers = connect_tcp(client, port)
    client.wait(client.ended(stream_id))
    assert headers[b":status"] == b"502"
    assert client.body(stream_id).startswith(f"Could not connect to 127.0.0.1:{port}: ".encode())


def test_upstream_failure_after_the_tunnel_is_connect_error(hijack_server: Any, tcp_server: Any) -> None:
    def reset_after_a_chunk(sock: socket.socket) -> None:
        sock.recv(65536)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # RST

    upstream = tcp_server(reset_after_a_chunk)
    client = H2Client(proxy(hijack_server, f"127.0.0.1:{upstream.port}").address)
    stream_id, headers = connect_tcp(client, upstream.port)
    assert headers[b":status"] == b"200"
    client.send(stream_id, b"anything")
    client.wait(client.ended(stream_id))
    resets = [e.error_code for e in client.events if type(e).__name__ == "StreamReset"]
    assert resets == [CONNECT_ERROR]


def test_websocket_by_hand_over_http2(hijack_server: Any) -> None:
    server = hijack_server(websocket_app, "zttp", ws="none")
    client = H2Client(server.address)
    deflate = PerMessageDeflate()
    stream_id = client.conn.get_next_available_stream_id()
    head = [(b":method", b"CONNECT"), (b":protocol", b"websocket"), (b":scheme", b"http"), (b":path", b"/ws")]
    head += [(b":authority", b"127.0.0.1"), (b"sec-websocket-version", b"13")]
    head += [(b"sec-websocket-extensions", f"{deflate.name}; {deflate.offer()}".encode())]
    client.conn.send_headers(stream_id, head)
    client.flush()
    response = dict(client.wait(lambda e: type(e).__name__ == "ResponseReceived").headers)
    assert response[b":status"] == b"200"
    accepted = response[b"sec-websocket-extensions"].decode()
    assert accepted.startswith(deflate.name)
    deflate.finalize(accepted)
    ws = Connection(ConnectionType.CLIENT, [deflate])

    received: list[Any] = []

    def exchange(*events: Any, until: type) -> None:
        for event in events:
            client.send(stream_id, ws.send(event))
        seen = len(client.body(stream_id))
        while not any(isinstance(e, until) for e in received):
            client.wait(lambda e, before=seen: len(client.body(stream_id)) > before)
            ws.receive_data(client.body(stream_id)[seen:])
            seen = len(client.body(stream_id))
            for event in ws.events():
                received.append(event)
                if isinstance(event, Ping):
                    client.send(stream_id, ws.send(event.response()))

    exchange(TextMessage("hello " * 100), until=TextMessage)  # compressed both ways
    exchange(TextMessage("ping"), until=Ping)
    received.clear()
    exchange(until=TextMessage)
    assert [e.data for e in received if isinstance(e, TextMessage)] == ["pong received"]
    exchange(CloseConnection(1000), until=CloseConnection)
    assert [e.code for e in received if isinstance(e, CloseConnection)] == [1000]
