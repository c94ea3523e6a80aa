"""Graceful shutdown with hijacked connections: uvicorn still exits, on time and cleanly."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import pytest

from asgi_hijack.testing import PROTOCOLS
from tests.helpers import PARSERS, connect_retry, free_port, recv_all, recv_until, uvicorn_command

GRACE = 2


def start_uvicorn(parser: str, port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        uvicorn_command(
            "tests.apps:probe_app",
            PROTOCOLS[parser],
            *("--host", "127.0.0.1", "--port", str(port), "--timeout-graceful-shutdown", str(GRACE)),
            *("--lifespan", "off"),
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONWARNINGS": "always", "PYTHONDEVMODE": "1"},
    )


def hijacked(port: int, route: str, count: int) -> list[socket.socket]:
    socks = []
    while len(socks) < count:
        sock = connect_retry(("127.0.0.1", port))
        sock.sendall(f"GET {route} HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n".encode())
        socks.append(sock)
    for sock in socks:
        recv_until(sock, b"\r\n\r\n" if route.startswith("/echo") else b"ready")
    return socks


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_exits_within_the_grace_period_with_hijacked_connections_open(parser: str, sig: signal.Signals) -> None:
    port = free_port()
    proc = start_uvicorn(parser, port)
    try:
        socks = hijacked(port, "/echo?status=101", 20)
        started = time.monotonic()
        proc.send_signal(sig)
        proc.wait(GRACE + 5)
        elapsed = time.monotonic() - started
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        assert elapsed < GRACE + 1, f"took {elapsed:.2f}s"
        # uvicorn re-raises the signal once it has shut down gracefully.
        assert proc.returncode in (0, -sig, 1 if sig == signal.SIGINT else 0), stderr
        assert "Finished server process" in stderr
        for bad in ("Task was destroyed", "Traceback", "ResourceWarning", "was never awaited"):
            assert bad not in stderr, stderr
        for sock in socks:  # the server closed what its owners left open
            assert recv_all(sock, timeout=2) == b""
            sock.close()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("parser", PARSERS)
def test_owners_are_notified_and_can_finish_first(parser: str) -> None:
    port = free_port()
    proc = start_uvicorn(parser, port)
    try:
        socks = hijacked(port, "/until-shutdown", 100)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        for sock in socks:
            assert recv_all(sock, timeout=GRACE) == b"bye"
            sock.close()
        proc.wait(GRACE + 5)
        assert time.monotonic() - started < GRACE, "owners closed promptly, so shutdown should not wait"
        assert proc.returncode in (0, -signal.SIGTERM)
        stderr = proc.stderr.read().decode() if proc.stderr else ""
        for bad in ("Task was destroyed", "Traceback", "ResourceWarning", "was never awaited"):
            assert bad not in stderr, stderr
    finally:
        proc.kill()
        proc.wait()
