"""examples/go_rpc.py: Go's own net/rpc/jsonrpc client, over a CONNECT it sends itself.

The Go client (examples/go, standard library only) is built once per session. Its test
skips only where no Go toolchain is installed; the raw-socket tests below need no Go.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from examples.go_rpc import app
from tests.helpers import PARSERS, connect, recv_all, recv_until
from tests.test_examples_raw_tcp import ExampleProcess, uvicorn_example

GO_CLIENT_DIR = Path(__file__).resolve().parents[1] / "examples" / "go"
CONNECT = b"CONNECT /_goRPC_ HTTP/1.0\n\n"  # byte for byte what rpc.DialHTTP sends
CONNECTED = b"HTTP/1.0 200 Connected to Go RPC\r\n\r\n"


@pytest.fixture(scope="session")
def go_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain: install it (apt-get install golang-go) to run Go's net/rpc client; .ci/run does")
    out = tmp_path_factory.mktemp("go") / "rpc_client"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    if not any(name in env for name in ("GOCACHE", "XDG_CACHE_HOME", "HOME")):  # Go needs a build cache
        env["GOCACHE"] = str(tmp_path_factory.getbasetemp() / "gocache")
    subprocess.run([go, "build", "-o", str(out), "."], cwd=GO_CLIENT_DIR, env=env, check=True, timeout=300)
    return out


@pytest.mark.parametrize("parser", PARSERS)
def test_go_jsonrpc_client(hijack_server: Any, go_client: Path, parser: str) -> None:
    server = hijack_server(app, parser)
    result = subprocess.run(
        [str(go_client), "-addr", f"127.0.0.1:{server.port}"], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok: 54 calls\n"


@pytest.mark.parametrize("parser", PARSERS)
def test_connect_is_answered_with_go_status_line_then_jsonrpc(hijack_server: Any, parser: str) -> None:
    calls = [
        {"method": "Arith.Multiply", "params": [{"A": 6, "B": 7}], "id": 1},
        {"method": "Arith.Divide", "params": [{"A": 1, "B": 0}], "id": 2},
        {"method": "Nope.Missing", "params": [{}], "id": 3},
    ]
    with connect(hijack_server(app, parser)) as sock:
        sock.sendall(CONNECT + json.dumps(calls[0]).encode())  # the first call in the same segment
        assert recv_until(sock, b"}\n") == CONNECTED + b'{"id": 1, "result": 42, "error": null}\n'
        sock.sendall(b"".join(json.dumps(call).encode() for call in calls[1:]))
        sock.shutdown(socket.SHUT_WR)  # the server answers what it has, then closes
        answers = [json.loads(line) for line in recv_all(sock).splitlines()]
    assert answers == [
        {"id": 2, "result": None, "error": "divide by zero"},
        {"id": 3, "result": None, "error": "rpc: can't find service Nope.Missing"},
    ]


def test_other_methods_are_refused(hijack_server: Any) -> None:
    server = hijack_server(app)
    response = httpx.get(f"http://127.0.0.1:{server.port}/_goRPC_", timeout=5)
    assert response.status_code == 405 and response.headers["allow"] == "CONNECT"


def test_sigterm_answers_the_call_in_flight_then_closes() -> None:
    with ExampleProcess(uvicorn_example("examples.go_rpc:app")) as server, connect(server.address) as sock:
        sock.sendall(CONNECT + b'{"method": "Arith.Multiply", "params": [{"A": 6, "B": 7}], "id": 1}')
        assert recv_until(sock, b"}\n") == CONNECTED + b'{"id": 1, "result": 42, "error": null}\n'
        sock.sendall(b'{"method": "Arith.Divide", "params": [{"A": 7, "B": 2}], "id": 2}')
        server.sigterm()  # with the call in flight: it is answered, then the connection closes
        assert recv_all(sock) == b'{"id": 2, "result": {"Quo": 3, "Rem": 1}, "error": null}\n'
        server.assert_exits()
