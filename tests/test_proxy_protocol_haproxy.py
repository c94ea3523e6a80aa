"""Many machines: the real HAProxy in ``mode tcp`` (examples/deploy/haproxy-proxy-protocol.cfg) with
``send-proxy-v2`` and ``send-proxy``, in front of two uvicorn processes on different ports.

The servers run as the docs say (the uvicorn CLI, settings from ``ASGI_HIJACK_PROXY_PROTOCOL``
and ``ASGI_HIJACK_PROXY_TRUSTED``), and trust only 127.0.0.2, the address HAProxy connects
from here, so that a client on 127.0.0.1 is an untrusted one. HAProxy's health checks (which
send the header too) must keep both servers up: its log may show no warning (but a drain's), and
the servers may log no refusal but the forged header's.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker  # type: ignore[import-untyped]  # no stubs shipped
import pytest
from docker.utils.socket import frames_iter  # type: ignore[import-untyped]

from tests.helpers import (
    Balancer,
    connect,
    curl,
    proxy_binary,
    proxy_header,
    recv_to_close,
    recv_until,
    uvicorn_command,
)
from tests.test_examples_docker import attach, bounded, close_attach, read_frame
from tests.test_examples_go_rpc import go_client  # noqa: F401  (the fixture that builds the Go client)
from tests.test_examples_raw_tcp import ExampleProcess

BALANCER = "127.0.0.2"
"""The address HAProxy connects to the servers from (``source``), the only one they trust."""
FRONTENDS = ["v2", "v1"]


class Cluster:
    """Two servers and the balancer; ``forged``: refusals the servers are expected to log."""

    def __init__(self, balancer: Balancer, servers: list[ExampleProcess]) -> None:
        self.balancer, self.servers, self.forged = balancer, servers, 0

    def url(self, frontend: str) -> str:
        return f"http://127.0.0.1:{self.balancer.ports[frontend]}"


@contextlib.contextmanager
def cluster(app: str, http: str = "asgi_hijack:HijackProtocol", health: str = "/", **env: str) -> Iterator[Cluster]:
    """Two servers of ``app`` behind HAProxy, whose health checks ask for ``health``."""
    if proxy_binary("haproxy") is None:
        pytest.skip("no haproxy: `make system-deps` installs Debian's haproxy")
    settings = {"ASGI_HIJACK_PROXY_PROTOCOL": "any", "ASGI_HIJACK_PROXY_TRUSTED": BALANCER, **env}
    command = uvicorn_command(app, http, "--port", "0", "--timeout-graceful-shutdown", "1")
    with ExampleProcess(command, settings) as one, ExampleProcess(command, settings) as two:
        balancer = Balancer((one.address[1], two.address[1]), health, source=BALANCER)
        with balancer:
            running = Cluster(balancer, [one, two])
            yield running
        for server in (one, two):
            server.sigterm()
        logs = [server.assert_exits(5.0) for server in (one, two)]
    refused = sum(log.count("PROXY protocol: connection from") for log in logs)
    assert refused == running.forged, logs


@pytest.fixture(scope="module")
def whoami() -> Iterator[Cluster]:
    with cluster("tests.apps:whoami_app", "asgi_hijack:ZttpHijackProtocol") as running:
        yield running


@pytest.fixture(scope="module")
def deploy_app() -> Iterator[Cluster]:
    """examples/deploy/app.py: the Docker attach and Go RPC examples on one server."""
    with cluster("examples.deploy.app:app", health="/healthz") as running:
        yield running


# -- the client's address -------------------------------------------------------------------------


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_the_app_sees_the_real_client_on_both_servers(whoami: Cluster, frontend: str) -> None:
    pids = set()
    for _ in range(6):
        with connect(("127.0.0.1", whoami.balancer.ports[frontend])) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            seen = json.loads(recv_to_close(sock).data.partition(b"\r\n\r\n")[2])
            client = list(sock.getsockname())
        assert seen["client"] == client  # not HAProxy's address (127.0.0.2)
        proxy = seen["proxy"]
        assert (proxy["version"], proxy["command"]) == (2 if frontend == "v2" else 1, "PROXY")
        assert proxy["destination"] == ["127.0.0.1", whoami.balancer.ports[frontend]]
        assert proxy["peer"][0] == BALANCER
        pids.add(seen["pid"])
    assert len(pids) == 2  # both servers took connections


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_a_hijacked_connection_knows_the_real_client_and_half_closes(whoami: Cluster, frontend: str) -> None:
    with connect(("127.0.0.1", whoami.balancer.ports[frontend])) as sock:
        sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\nping")
        line, _, echoed = recv_until(sock, b"ping").partition(b"\r\n\r\n")[2].partition(b"\n")
        seen = json.loads(line)
        client = list(sock.getsockname())
        sock.shutdown(socket.SHUT_WR)  # the half-close passes HAProxy; the owner echoes, then closes
        closing = recv_to_close(sock)
    assert seen["conn_client"] == seen["info_client"] == seen["client"] == client
    assert echoed == b"ping" and closing.how == "eof" and closing.data == b""


def report_through(cluster: Cluster, path: str = "/") -> tuple[dict[str, Any], socket.socket]:
    """Open a connection through the v2 frontend and read the app's report (the connection stays open)."""
    sock = connect(("127.0.0.1", cluster.balancer.ports["v2"]))
    if path == "/hijack":
        sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
        return json.loads(recv_until(sock, b"}\n").partition(b"\r\n\r\n")[2]), sock
    sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    return json.loads(recv_to_close(sock).data.partition(b"\r\n\r\n")[2]), sock


def test_draining_a_server_keeps_its_tunnels_and_sends_new_connections_elsewhere(whoami: Cluster) -> None:
    seen, tunnel = report_through(whoami, "/hijack")
    with tunnel:
        drained = next(i for i, server in enumerate(whoami.servers) if server.proc.pid == seen["pid"])
        name = f"asgi_hijack_v2/app{drained + 1}"
        assert whoami.balancer.admin(f"set server {name} state drain") == "\n"
        try:
            pids = set()
            for _ in range(4):
                report, sock = report_through(whoami)
                sock.close()
                pids.add(report["pid"])
            assert pids == {whoami.servers[1 - drained].proc.pid}  # new connections: the other server only
            tunnel.sendall(b"still here")  # the drained server's tunnel is untouched
            assert recv_until(tunnel, b"still here").endswith(b"still here")
        finally:
            assert whoami.balancer.admin(f"set server {name} state ready") == "\n"
        tunnel.shutdown(socket.SHUT_WR)
        assert recv_to_close(tunnel).how == "eof"


def test_http2_through_the_balancer_sees_the_real_client(whoami: Cluster) -> None:
    result = curl("-s", "--http2-prior-knowledge", "-w", "\n%{local_port}", whoami.url("v2") + "/")
    assert result.returncode == 0, result.stderr
    body, local_port = result.stdout.rsplit("\n", 1)
    seen = json.loads(body)
    assert seen["http_version"] == "2" and seen["client"] == ["127.0.0.1", int(local_port)]


def test_a_forged_header_from_an_untrusted_address_is_refused(whoami: Cluster) -> None:
    for server in whoami.servers:
        whoami.forged += 1
        with connect(server.address) as sock:
            sock.sendall(proxy_header(2, ("198.51.100.9", 4444), ("127.0.0.1", 80)) + b"GET / HTTP/1.1\r\n\r\n")
            assert recv_to_close(sock).data == b""


# -- the examples through the balancer --------------------------------------------------------------


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello from the target"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_connect_proxy_example_with_curl(frontend: str) -> None:
    target = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=target.serve_forever, daemon=True).start()
    allow = f"127.0.0.1:{target.server_address[1]}"
    try:
        with cluster("examples.connect_proxy:app", CONNECT_PROXY_ALLOW=allow) as running:
            for _ in range(2):  # one tunnel per server
                result = curl("-s", "-p", "-x", running.url(frontend), f"http://{allow}/")
                assert result.returncode == 0, result.stderr
                assert result.stdout == "hello from the target"
    finally:
        target.shutdown()
        target.server_close()


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_go_rpc_dial_http(deploy_app: Cluster, go_client: Path, frontend: str) -> None:  # noqa: F811
    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{deploy_app.balancer.ports[frontend]}"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 54 calls\n"


@pytest.mark.parametrize("frontend", FRONTENDS)
def test_docker_attach_with_half_close(deploy_app: Cluster, frontend: str) -> None:
    api = docker.APIClient(base_url=f"tcp://127.0.0.1:{deploy_app.balancer.ports[frontend]}", version="1.41")

    def exchange() -> list[tuple[int, bytes]]:
        sock = attach(api, "cat")
        try:
            sock._sock.sendall(b"hello\n")
            first = read_frame(sock)
            sock._sock.shutdown(socket.SHUT_WR)  # through HAProxy: cat sees the end of stdin and exits
            return [first, *frames_iter(sock, False)]
        finally:
            close_attach(sock)

    try:
        assert bounded(exchange) == [(1, b"hello\n")]
    finally:
        api.close()
