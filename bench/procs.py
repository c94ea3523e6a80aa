"""Process plumbing: pinned subprocesses, port waits, reliable teardown, /proc sampling."""

from __future__ import annotations

import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
_CPUS = sorted(os.sched_getaffinity(0))
PINNING = len(_CPUS) >= 2 and shutil.which("taskset") is not None
SERVER_CPU = _CPUS[0]
CLIENT_CPU = _CPUS[1] if len(_CPUS) >= 2 else _CPUS[0]
_TICK = os.sysconf("SC_CLK_TCK")
HIJACK_PROTOCOLS = {"httptools": "HttpToolsHijackProtocol", "h11": "H11HijackProtocol", "zttp": "ZttpHijackProtocol"}
"""Our protocol class for each parser."""


def hijack_http(parser: str) -> str:
    """``--http`` value of our protocol class for ``parser``."""
    return f"asgi_hijack:{HIJACK_PROTOCOLS[parser]}"


def raise_nofile(want: int = 0) -> int:
    """Raise the open-files limit (inherited by children) to ``want``, or at least to the hard limit.

    Raising the hard limit needs privileges; without them the hard limit is the ceiling.
    Returns the new soft limit.
    """
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, hard), max(want, hard)))
        return max(want, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def pinned(cmd: Sequence[str], cpu: int) -> list[str]:
    """Prefix ``cmd`` with ``taskset`` so that it runs on ``cpu`` alone (when there are 2+ CPUs)."""
    return ["taskset", "-c", str(cpu), *cmd] if PINNING else list(cmd)


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def uvicorn_cmd(app: str, http: str, port: int, *extra: str) -> list[str]:
    """Command line of a quiet single-process uvicorn on uvloop."""
    return [
        sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--http", http, "--loop", "uvloop", "--no-access-log", "--log-level", "warning", *extra,
    ]  # fmt: skip


@dataclass
class Server:
    """A running server subprocess (its own process group) listening on ``port``."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: IO[bytes]

    def cpu_seconds(self) -> float:
        """User + system CPU time consumed so far."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK

    def rss_kib(self) -> int:
        """Resident set size in KiB."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        assert match, status
        return int(match.group(1))

    def fds(self) -> int:
        """Number of open file descriptors."""
        return len(os.listdir(f"/proc/{self.proc.pid}/fd"))

    def log_tail(self, limit: int = 3000) -> str:
        """The last ``limit`` characters the server wrote to stdout/stderr."""
        self.log.flush()
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-limit:]


def _wait_port(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            socket.create_connection((HOST, server.port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{server.name} did not listen on {server.port}:\n{server.log_tail()}") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the process group we created, then SIGKILL it if it lingers."""
    for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            break
    # Children that outlived the leader still belong to its group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def serve(
    name: str,
    cmd: Sequence[str],
    port: int,
    *,
    cpu: int = SERVER_CPU,
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Run ``cmd`` pinned to ``cpu``, wait until ``port`` accepts, and always tear it down."""
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            pinned(cmd, cpu), cwd=ROOT, env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        server = Server(name, proc, port, log)
        try:
            _wait_port(server, timeout)
            yield server
            if proc.poll() is not None:
                raise RuntimeError(f"{name} died during the benchmark:\n{server.log_tail()}")
        finally:
            _stop(proc)


def client_cmd(*args: str) -> list[str]:
    """Command line of a pinned ``bench.clients`` load generator."""
    return pinned([sys.executable, "-m", "bench.clients", *args], CLIENT_CPU)


def run_client(*args: str, timeout: float = 600.0) -> dict[str, Any]:
    """Run a pinned ``bench.clients`` subcommand to completion; return its JSON result."""
    done = subprocess.run(client_cmd(*args), cwd=ROOT, capture_output=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"client {args} failed ({done.returncode}):\n{done.stderr.decode()[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    return result


def run_wrk(port: int, seconds: float, connections: int) -> dict[str, float]:
    """Requests per second (``value``) and ``requests`` of a pinned ``wrk -t1`` keep-alive GET run.

    Raises on any failed request.
    """
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"http://{HOST}:{port}/"]
    out = subprocess.run(pinned(cmd, CLIENT_CPU), capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk saw errors:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if not rate or not total:
        raise RuntimeError(f"unexpected wrk output:\n{out}")
    return {"value": float(rate.group(1)), "requests": float(total.group(1))}


def version(cmd: Sequence[str]) -> str:
    """First output line of a ``--version``-style command, or ``"missing"``."""
    if shutil.which(cmd[0]) is None:
        return "missing"
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0] if (done.stdout or done.stderr) else "?"
