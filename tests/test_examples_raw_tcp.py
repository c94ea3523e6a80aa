"""examples/raw_tcp.py: Go's raw-TCP hijack example, driven by a raw socket client.

Also runs the example the two documented ways (``python examples/raw_tcp.py PORT`` and
``uvicorn examples.raw_tcp:app --http asgi_hijack:HijackProtocol``) as real processes.
:class:`ExampleProcess` runs an example that way for the SIGTERM test of every example.
"""

from __future__ import annotations

import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from examples.raw_tcp import ECHO_HEAD, GREETING, SHUTDOWN_GOODBYE, app
from tests.helpers import PARSERS, STDERR_PROBLEMS, connect, recv_all, recv_until, uvicorn_command

ROOT = Path(__file__).resolve().parents[1]
HEAD = b"GET /hijack HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
ANSWER = b'You said: "hi\\n"\nBye.\n'
EXIT_WITHIN = 2.0
"""Seconds from SIGTERM to the exit of a server whose connections honour the shutdown notice."""


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


def uvicorn_example(app: str, *options: str) -> list[str]:
    """``uvicorn APP --http asgi_hijack:HijackProtocol --port 0 OPTIONS...``, as the examples document it."""
    return uvicorn_command(app, "asgi_hijack:HijackProtocol", "--port", "0", *options)


@pytest.fixture(
    params=[
        [sys.executable, "examples/raw_tcp.py", "0"],
        uvicorn_example("examples.raw_tcp:app"),
    ],
    ids=["script", "uvicorn-cli"],
)
def example_process(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The example started as documented (port 0 instead of 8000), and the address it logs."""
    with ExampleProcess(request.param) as server:
        yield server.address


class ExampleProcess:
    """``with ExampleProcess(command) as server:`` runs an example server in a process of its own.

    :func:`uvicorn_example` makes the command as the examples document it, with no
    ``--timeout-graceful-shutdown``. ``server.address`` is where it says it listens;
    :meth:`sigterm`, then :meth:`assert_exits` checks that it stopped cleanly in time.
    """

    def __init__(self, command: list[str], env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen(
            command, cwd=ROOT, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env={**os.environ, **(env or {})}
        )
        self.address = ("", 0)
        self.signalled = 0.0

    def __enter__(self) -> ExampleProcess:
        try:
            self.address = started_address(self.proc)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def sigterm(self) -> None:
        self.signalled = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)

    def assert_exits(self, within: float = EXIT_WITHIN) -> str:
        """The server exits cleanly, with no error logged, within ``within`` seconds of :meth:`sigterm`; its log.

        uvicorn 0.29 and later re-raise the signal once shut down, so the process ends by SIGTERM.
        """
        try:
            code = self.proc.wait(max(0.0, self.signalled + within - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server was still running {within:g}s after SIGTERM") from None
        assert self.proc.stderr is not None
        log = self.proc.stderr.read().decode(errors="replace")
        assert code in (0, -signal.SIGTERM) and not any(problem in log for problem in STDERR_PROBLEMS), log
        return log

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        assert self.proc.stderr is not None
        self.proc.stderr.close()


def started_address(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> tuple[str, int]:
    """Read uvicorn's log until it says where it listens."""
    assert proc.stderr is not None
    log = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stderr, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                # os.read, not readline: a buffered reader may hold the next lines where select cannot see them.
                chunk = os.read(proc.stderr.fileno(), 65536)
                if not chunk:
                    break
                log += chunk
                if match := re.search(rb"running on http://([\d.]+):(\d+)", log):
                    return match[1].decode(), int(match[2])
    raise AssertionError(f"the example did not start: {log.decode(errors='replace')}")


def test_example_runs_as_documented(example_process: tuple[str, int]) -> None:
    host, port = example_process
    assert host == "127.0.0.1"
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(HEAD + b"hi\n")
        assert recv_all(sock) == GREETING + ANSWER


def test_sigterm_ends_the_echo_with_a_goodbye() -> None:
    with ExampleProcess(uvicorn_example("examples.raw_tcp:app")) as server, connect(server.address) as sock:
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\none\n")
        assert recv_until(sock, b"one\n").endswith(b"\r\n\r\none\n")
        server.sigterm()
        assert recv_all(sock) == SHUTDOWN_GOODBYE
        server.assert_exits()
