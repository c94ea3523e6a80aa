"""examples/raw_tcp.py: Go's raw-TCP hijack example, driven by a raw socket client.

Also runs the example the two documented ways (``python examples/raw_tcp.py PORT`` and
``uvicorn examples.raw_tcp:app --http asgi_hijack:HijackProtocol``) as real processes.
"""

from __future__ import annotations

import re
import selectors
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from examples.raw_tcp import ECHO_HEAD, GREETING, app
from tests.helpers import PARSERS, connect, recv_all, recv_until, uvicorn_command

ROOT = Path(__file__).resolve().parents[1]
HEAD = b"GET /hijack HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
ANSWER = b'You said: "hi\\n"\nBye.\n'


@pytest.mark.parametrize("path", ["/", "/hijack"])
@pytest.mark.parametrize("parser", PARSERS)
def test_line_sent_with_the_request_head_is_read_by_the_app(hijack_server: Any, parser: str, path: str) -> None:
    with connect(hijack_server(app, parser)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nhi\n".encode())  # one segment: "hi" is pending
        assert recv_all(sock) == GREETING + ANSWER


@pytest.mark.parametrize("parser", PARSERS)
def test_conversation_after_the_greeting(hijack_server: Any, parser: str) -> None:
    with connect(hijack_server(app, parser)) as sock:
        sock.sendall(HEAD)
        assert recv_until(sock, GREETING) == GREETING  # no status line, no headers: raw TCP
        sock.sendall(b"hi\n")
        assert recv_all(sock) == ANSWER


def test_hijack_response_helper_writes_its_head_then_echoes(hijack_server: Any) -> None:
    head = b"HTTP/1.1 101 Switching Protocols\r\n" + b"".join(b"%s: %s\r\n" % h for h in ECHO_HEAD) + b"\r\n"
    with connect(hijack_server(app)) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\none\ntwo\n")
        assert recv_until(sock, b"two\n") == head + b"one\ntwo\n"
        sock.sendall(b"quit\n")
        assert recv_all(sock) == b"bye\n"


@pytest.fixture(
    params=[
        [sys.executable, "examples/raw_tcp.py", "0"],
        uvicorn_command("examples.raw_tcp:app", "asgi_hijack:HijackProtocol", "--port", "0"),
    ],
    ids=["script", "uvicorn-cli"],
)
def example_process(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The example started as documented (port 0 instead of 8000), and the address it logs."""
    proc = subprocess.Popen(request.param, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:
        yield started_address(proc)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


def started_address(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[str, int]:
    """Read uvicorn's log until it says where it listens."""
    assert proc.stderr is not None
    log = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                line = proc.stderr.readline()
                if not line:
                    break
                log += line
                if match := re.search(rb"running on http://([\d.]+):(\d+)", line):
                    return match[1].decode(), int(match[2])
    raise AssertionError(f"the example did not start: {log.decode(errors='replace')}")


def test_example_runs_as_documented(example_process: tuple[str, int]) -> None:
    host, port = example_process
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(HEAD + b"hi\n")
        assert recv_all(sock) == GREETING + ANSWER
