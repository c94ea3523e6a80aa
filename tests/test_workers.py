"""Several processes: gunicorn with ``asgi_hijack.workers``, and ``uvicorn --workers N``, under real signals.

Every connection is hijacked by :func:`tests.apps.pid_app`, which first writes the pid of the
worker that serves it, then echoes (or, on ``/until-shutdown``, writes ``bye`` at the notice).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import pytest

from asgi_hijack.workers import drain_seconds
from tests.helpers import (
    ROOT,
    Closing,
    ServerProcess,
    connect_retry,
    free_port,
    recv_exactly,
    recv_to_close,
    recv_until,
    uvicorn_command,
    wait_until,
)

GRACE = 4
"""gunicorn's ``--graceful-timeout`` and uvicorn's ``--timeout-graceful-shutdown`` here."""
DRAIN = drain_seconds(GRACE)
"""How long a gunicorn worker waits for hijacked connections before it closes them."""
SLACK = 0.5
"""Allowance for a busy machine in the exit times."""
WORKERS = ["HijackWorker", "HijackH11Worker"]
REQUEST = b"GET %s HTTP/1.1\r\nHost: x\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"


class Supervisor(ServerProcess):
    """A server command (gunicorn, or uvicorn with ``--workers``) in a process group of its own."""

    def __init__(self, *args: str) -> None:
        super().__init__("h11")
        self.args = list(args)
        self._runtime = tempfile.TemporaryDirectory(prefix="gunicorn-")  # gunicorn 27's control socket: not in ~

    def __enter__(self) -> Supervisor:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, "XDG_RUNTIME_DIR": self._runtime.name, "PYTHONWARNINGS": "always"}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stderr=self._stderr, env=env, start_new_session=True)
        return self

    def assert_clean(self, known: str = "\0") -> None:
        """No traceback, leak or lost task, and no worker killed by the arbiter; ``known``: a known
        warning, with its tracemalloc hint."""
        bad = ("WORKER TIMEOUT", "SIGKILL", "SIGABRT", "Cancel ")
        problems = [line for line in self.problems() if known not in line and "Enable tracemalloc" not in line]
        problems += [line for line in self.stderr().splitlines() if any(word in line for word in bad)]
        assert not problems, self.stderr()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):  # the group: workers left behind too
                os.killpg(self.proc.pid, signal.SIGKILL)
        super().__exit__(exc_type, exc, tb)
        self._runtime.cleanup()


def gunicorn(worker: str, *options: str) -> tuple[Supervisor, int]:
    port = free_port()
    command = [sys.executable, "-m", "gunicorn", "tests.apps:pid_app", "-k", f"asgi_hijack.workers.{worker}"]
    return Supervisor(*command, "-b", f"127.0.0.1:{port}", "--log-level", "info", *options), port


@dataclass
class Session:
    """A hijacked connection and the pid of the worker that owns it."""

    sock: socket.socket
    pid: int

    def echo(self, size: int = 65536) -> None:
        """Send random bytes and check that the same bytes come back."""
        payload = os.urandom(size)
        self.sock.sendall(payload)
        assert recv_exactly(self.sock, size) == payload

    def finish(self) -> None:
        """Half-close after a last echo; the owner then closes: EOF with nothing more."""
        self.echo()
        self.sock.shutdown(socket.SHUT_WR)
        closing = recv_to_close(self.sock)
        assert (closing.how, closing.data) == ("eof", b"")
        self.sock.close()

    def closed_by_server(self, timeout: float) -> Closing:
        """Wait for the server to close a connection the client keeps open."""
        closing = recv_to_close(self.sock, timeout)
        assert closing.how in ("eof", "reset"), f"still open after {timeout}s"
        assert closing.data == b""
        self.sock.close()
        return closing


def open_session(port: int, path: str = "/echo") -> Session:
    sock = connect_retry(("127.0.0.1", port))
    sock.sendall(REQUEST % path.encode())
    head, _, rest = recv_until(sock, b"\r\n\r\n").partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    if b"\n" not in rest:
        rest += recv_until(sock, b"\n")
    line, _, echoed = rest.partition(b"\n")
    assert echoed == b""
    return Session(sock, int(line))


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (gunicorn's children are not ours to reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def exit_time(pid: int, started: float, timeout: float) -> float:
    """Seconds from ``started`` until process ``pid`` ended."""
    assert wait_until(lambda: not running(pid), timeout), f"worker {pid} still running after {timeout}s"
    return time.monotonic() - started


# -- gunicorn --------------------------------------------------------------------------------------


@pytest.mark.parametrize("worker", WORKERS)
def test_gunicorn_reload_drains_hijacked_connections(worker: str) -> None:
    server, port = gunicorn(worker, "--graceful-timeout", str(GRACE))
    with server:
        finishing = [open_session(port) for _ in range(10)]
        ignoring = [open_session(port) for _ in range(5)]
        notified = [open_session(port, "/until-shutdown") for _ in range(5)]
        (old,) = {session.pid for session in finishing + ignoring + notified}
        for session in finishing + ignoring:
            session.echo()
        started = time.monotonic()
        server.signal(signal.SIGHUP)
        for session in notified:  # the owners heard of the shutdown
            assert recv_to_close(session.sock, DRAIN).data == b"bye"
            session.sock.close()
        new = open_session(port)  # the old worker stopped accepting: the new one serves
        assert new.pid != old
        for session in finishing:  # owners may finish during the drain: every byte arrives
            session.finish()
        for session in ignoring:  # the rest are closed when the drain ends
            closing = session.closed_by_server(GRACE + SLACK)
            assert DRAIN - SLACK < closing.at - started < GRACE + SLACK
        assert exit_time(old, started, GRACE + SLACK) < GRACE + SLACK
        new.finish()
        assert open_session(port).pid == new.pid
        server.signal(signal.SIGTERM)
        server.wait(GRACE + SLACK)
        server.assert_clean()


@pytest.mark.parametrize("worker", WORKERS)
def test_gunicorn_stops_within_the_graceful_timeout(worker: str) -> None:
    server, port = gunicorn(worker, "--graceful-timeout", str(GRACE), "--workers", "2")
    with server:
        ignoring = [open_session(port) for _ in range(10)]
        notified = [open_session(port, "/until-shutdown") for _ in range(4)]
        for session in ignoring:
            session.echo()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for session in notified:
            assert recv_to_close(session.sock, DRAIN).data == b"bye"
            session.sock.close()
        for session in ignoring:
            closing = session.closed_by_server(GRACE + SLACK)
            assert closing.at - started > DRAIN - SLACK
        server.wait(GRACE + SLACK)
        # The arbiter kills workers left at --graceful-timeout; ours left before it.
        assert time.monotonic() - started < GRACE
        server.assert_clean()
        assert "was sent SIGTERM" in server.stderr()  # the workers' own exit (uvicorn re-raises it)


def test_a_draining_worker_keeps_its_heartbeat() -> None:
    # With --max-requests the worker leaves while the arbiter runs as usual and kills any worker
    # whose heartbeat is older than --timeout (2 s); the drain lasts longer than that.
    grace = 6
    server, port = gunicorn("HijackWorker", "--max-requests", "3", "--timeout", "2", "--graceful-timeout", str(grace))
    with server:
        sessions = [open_session(port) for _ in range(3)]
        started = time.monotonic()
        (old,) = {session.pid for session in sessions}
        for session in sessions:
            closing = session.closed_by_server(grace + SLACK)
            assert closing.at - started > drain_seconds(grace) - SLACK
        exit_time(old, started, grace)
        assert open_session(port).pid != old
        server.signal(signal.SIGTERM)
        server.wait(grace + SLACK)
        server.assert_clean()
        assert "Maximum request limit of 3 exceeded" in server.stderr()


# -- uvicorn --workers N -----------------------------------------------------------------------------


def test_uvicorn_workers_share_hijacked_connections() -> None:
    port = free_port()
    options = ("--host", "127.0.0.1", "--port", str(port), "--workers", "2", "--lifespan", "off")
    command = uvicorn_command("tests.apps:pid_app", "asgi_hijack:HijackProtocol", *options)
    with Supervisor(*command, "--timeout-graceful-shutdown", str(GRACE)) as server:
        assert wait_until(lambda: server.stderr().count("Started server process") == 2, 30), server.stderr()
        sessions: list[Session] = []
        while len({session.pid for session in sessions}) < 2 and len(sessions) < 200:
            sessions += [open_session(port) for _ in range(10)]
        pids = {session.pid for session in sessions}
        assert len(pids) == 2, f"{len(sessions)} connections all went to one worker"
        for session in sessions:
            session.echo()
        for session in sessions[::2]:
            session.finish()
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for session in sessions[1::2]:
            session.closed_by_server(GRACE + 1 + SLACK)
        server.wait(GRACE + 1 + SLACK)  # the supervisor looks at its signals every 0.5 s
        assert time.monotonic() - started < GRACE + 1 + SLACK
        # uvicorn's parent process never closes the listening socket (no raddr) it binds for its workers.
        listening = (
            f"ResourceWarning: unclosed <socket.socket fd=3, family=2, type=1, proto=0, laddr={('127.0.0.1', port)}>"
        )
        server.assert_clean(known=listening)
