"""examples/deploy/: the real nginx and HAProxy (Debian packages) in front of a real uvicorn.

uvicorn serves ``examples.deploy.app:app`` (the raw-TCP, Docker attach and Go RPC examples) as
docs/deploy.md says. Each proxy runs the shipped configuration, with its ports moved to ephemeral
ones, under a minimal main configuration in a temporary directory: a foreground process, as
``nobody`` when the tests run as root, with its pid, logs and temporary files in that directory.
Four routes reach the app: nginx's ``http`` proxy (nginx.conf), nginx's ``stream`` relay
(nginx-stream.conf), and HAProxy's ``mode http`` and ``mode tcp`` frontends (haproxy.cfg).

Tests named ``..._limitation_...`` assert what cannot pass a route, exactly as it fails today;
docs/deploy.md explains why, and what to use instead.
"""

from __future__ import annotations

import base64
import random
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import docker  # type: ignore[import-untyped]  # no stubs shipped
import pytest
from docker.utils.socket import frames_iter  # type: ignore[import-untyped]

from examples.raw_tcp import ECHO_HEAD, GREETING
from tests.helpers import (
    ReverseProxy,
    connect,
    parse_responses,
    proxy_binary,
    recv_all,
    recv_exactly,
    recv_until,
)
from tests.test_examples_docker import TIMEOUT, attach, bounded, read_frame
from tests.test_examples_go_rpc import CONNECT, go_client  # noqa: F401  (go_client: a fixture)
from tests.test_examples_raw_tcp import ANSWER, ExampleProcess, uvicorn_example

TCP_ROUTES = ["nginx-stream", "haproxy-tcp"]
HALF_CLOSE_ROUTES = ["nginx-stream", "haproxy-http", "haproxy-tcp"]
ECHO_REQUEST = b"GET /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: line-echo\r\nConnection: Upgrade\r\n\r\n"


def proxy(kind: str, upstream: int, edit: tuple[str, str] | None = None) -> ReverseProxy:
    """:class:`ReverseProxy`, or a skip where Debian's package is not installed."""
    if proxy_binary(kind) is None:
        pytest.skip(f"no {kind}: `make system-deps` installs Debian's nginx, libnginx-mod-stream and haproxy")
    return ReverseProxy(kind, upstream, edit)


@pytest.fixture(scope="module")
def upstream() -> Iterator[int]:
    """uvicorn serving examples/deploy/app.py as docs/deploy.md says; it must exit cleanly at the end."""
    with ExampleProcess(uvicorn_example("examples.deploy.app:app")) as server:
        yield server.address[1]
        server.sigterm()
        server.assert_exits(within=10)


@pytest.fixture(scope="module")
def proxies(upstream: int) -> Iterator[dict[str, int]]:
    """Each route's port: ``nginx`` (http), ``nginx-stream``, ``haproxy-http`` and ``haproxy-tcp``."""
    with proxy("nginx", upstream) as nginx, proxy("haproxy", upstream) as haproxy:
        yield {
            "nginx": nginx.ports["http"],
            "nginx-stream": nginx.ports["tcp"],
            "haproxy-http": haproxy.ports["http"],
            "haproxy-tcp": haproxy.ports["tcp"],
        }


def docker_api(port: int) -> docker.APIClient:
    return docker.APIClient(base_url=f"tcp://127.0.0.1:{port}", version="1.41", timeout=TIMEOUT)


def attach_half_close(port: int) -> list[tuple[int, bytes]]:
    """examples/docker_attach.py's documented pattern: write stdin, ``SHUT_WR``, read the frames (``wc -c``)."""
    api = docker_api(port)

    def exchange() -> list[tuple[int, bytes]]:
        sock = attach(api, "wc")
        try:
            sock._sock.sendall(b"x" * 100_000)
            sock._sock.shutdown(socket.SHUT_WR)  # wc prints the count only at the end of its stdin
            return list(frames_iter(sock, False))
        finally:
            sock._sock.close()

    try:
        return bounded(exchange)
    finally:
        api.close()


# -- 101 upgrades: every route ---------------------------------------------------------------------


@pytest.mark.parametrize("route", ["nginx", "nginx-stream", "haproxy-http", "haproxy-tcp"])
def test_101_stream_echoes_1_mib_both_ways(proxies: dict[str, int], route: str) -> None:
    rng = random.Random(route)
    lines = [base64.b64encode(rng.randbytes(767))[:1023] + b"\n" for _ in range(1024)]
    payload = b"".join(lines)
    assert len(payload) == 1 << 20
    with connect(("127.0.0.1", proxies[route]), timeout=TIMEOUT) as sock:
        sock.sendall(ECHO_REQUEST)
        head = recv_until(sock, b"\r\n\r\n", TIMEOUT)
        (response,), rest = parse_responses(head)
        assert response.status == 101 and response.headers[b"upgrade"] == dict(ECHO_HEAD)[b"Upgrade"]
        assert rest == b""
        writer = threading.Thread(target=sock.sendall, args=(payload,))  # write while the echo is read
        writer.start()
        echoed = recv_exactly(sock, len(payload), TIMEOUT)
        writer.join(TIMEOUT)
        assert echoed == payload
        sock.sendall(b"quit\n")
        assert recv_all(sock, TIMEOUT) == b"bye\n"


# -- half-close: the Docker attach example ----------------------------------------------------------


@pytest.mark.parametrize("route", HALF_CLOSE_ROUTES)
def test_docker_attach_streams_both_ways_then_half_closes(proxies: dict[str, int], route: str) -> None:
    api = docker_api(proxies[route])

    def exchange() -> list[tuple[int, bytes]]:
        sock = attach(api, "cat")
        try:
            sock._sock.sendall(b"hello\n")
            first = read_frame(sock)
            sock._sock.shutdown(socket.SHUT_WR)  # cat sees the end of its stdin and exits
            return [first, *frames_iter(sock, False)]
        finally:
            sock._sock.close()

    try:
        assert bounded(exchange) == [(1, b"hello\n")]
    finally:
        api.close()
    assert attach_half_close(proxies[route]) == [(1, b"100000\n")]


@pytest.mark.parametrize(
    "setting",
    [None, "proxy_buffering on;", "proxy_socket_keepalive on;", "proxy_request_buffering off;"],
    ids=["as-shipped", "buffering", "socket-keepalive", "no-request-buffering"],
)
def test_nginx_limitation_half_close_ends_the_whole_tunnel(upstream: int, setting: str | None) -> None:
    """nginx closes both sides of an upgraded connection once one side has ended its stream, whatever the
    setting: the process's output never comes back, and the client reads a clean end with no frame."""
    edit = None if setting is None else ("proxy_buffering off;", setting)
    with proxy("nginx", upstream, edit) as nginx:
        assert attach_half_close(nginx.ports["http"]) == []


# -- CONNECT: Go's net/rpc ------------------------------------------------------------------------


@pytest.mark.parametrize("route", TCP_ROUTES)
def test_go_rpc_over_connect(proxies: dict[str, int], go_client: Path, route: str) -> None:  # noqa: F811
    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{proxies[route]}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 54 calls\n"


def proxy_answer(port: int, request: bytes) -> tuple[int, dict[bytes, bytes]]:
    """The status and headers of the one response to ``request``, after which the proxy closes."""
    with connect(("127.0.0.1", port)) as sock:
        sock.sendall(request)
        (response,), rest = parse_responses(recv_all(sock))
    assert rest == b""
    return response.status, response.headers


def test_nginx_limitation_connect_is_refused(proxies: dict[str, int]) -> None:
    """nginx's HTTP parser refuses CONNECT itself: the request never reaches the app."""
    status, headers = proxy_answer(proxies["nginx"], CONNECT)
    assert (status, headers[b"server"]) == (405, b"nginx/1.22.1")
    status, headers = proxy_answer(proxies["nginx"], b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
    assert (status, headers[b"server"]) == (400, b"nginx/1.22.1")


def test_haproxy_http_limitation_go_rpc_connect_is_refused(proxies: dict[str, int]) -> None:
    """HAProxy's ``mode http`` takes CONNECT in authority form only: Go's ``CONNECT /_goRPC_`` gets its 400."""
    status, headers = proxy_answer(proxies["haproxy-http"], CONNECT)
    assert status == 400 and b"server" not in headers  # HAProxy's own error page names no server


@pytest.mark.parametrize("route", ["haproxy-http", *TCP_ROUTES])
def test_connect_in_authority_form_reaches_the_app(proxies: dict[str, int], route: str) -> None:
    """``CONNECT host:port`` (what an HTTP proxy gets) reaches the app: here its router's 404."""
    with connect(("127.0.0.1", proxies[route])) as sock:
        sock.sendall(b"CONNECT 127.0.0.1:9 HTTP/1.1\r\nHost: 127.0.0.1:9\r\n\r\n")
        (response,), _ = parse_responses(recv_until(sock, b"\r\n\r\nNot Found"))
    assert (response.status, response.headers[b"server"]) == (404, b"uvicorn")


# -- a hijack that writes no head: the README's "Say hi" -------------------------------------------


@pytest.mark.parametrize("route", TCP_ROUTES)
def test_hijack_without_a_head(proxies: dict[str, int], route: str) -> None:
    with connect(("127.0.0.1", proxies[route])) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, GREETING) == GREETING  # no status line, no headers: raw TCP
        sock.sendall(b"hi\n")
        assert recv_all(sock) == ANSWER


def test_nginx_limitation_hijack_without_a_head_gets_no_answer(upstream: int) -> None:
    """nginx relays bytes that are not a response head as an HTTP/0.9 body, but never relays the client's
    bytes after the request: the greeting arrives, the line never reaches the app, and nginx ends the
    exchange at ``proxy_read_timeout`` (1 s here, 1 h as shipped)."""
    with (
        proxy("nginx", upstream, ("proxy_read_timeout 1h;", "proxy_read_timeout 1s;")) as nginx,
        connect(("127.0.0.1", nginx.ports["http"])) as sock,
    ):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, GREETING) == GREETING
        sock.sendall(b"hi\n")
        assert recv_all(sock) == b""


def test_haproxy_http_limitation_hijack_without_a_head_is_a_502(proxies: dict[str, int]) -> None:
    """HAProxy's ``mode http`` rejects what is not a response head: the client gets its 502, not the greeting."""
    status, headers = proxy_answer(proxies["haproxy-http"], b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status == 502 and b"server" not in headers
