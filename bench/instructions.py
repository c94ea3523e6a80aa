"""Server instructions per ordinary request, counted by callgrind: our protocol classes vs stock uvicorn.

``python -m bench.instructions [--parsers httptools,h11,zttp] [--requests 10000] [--loop uvloop]``

Each server runs under ``valgrind --tool=callgrind``. One client connection sends ``--warmup``
keep-alive GETs of :func:`bench.apps.hello`, the counters are dumped (``callgrind_control
--dump``), then ``--requests`` more GETs, and the counters are dumped again: the second dump,
less what the idle server counts in the same time, divided by ``--requests`` is the server's
cost of one request. Instruction counts do not depend on the load of the machine, unlike CPU
time, so small differences show up reliably.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from bench.procs import HOST, ROOT, free_port, hijack_http

GOAL = 1.02  # ours / stock instructions per request, at most
_REQUEST = b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)


def _exchange(sock: socket.socket, request: bytes, count: int) -> None:
    """Send ``count`` GETs one after the other, each after the previous response arrived."""
    for _ in range(count):
        sock.sendall(request)
        data = b""
        while not data.endswith(b"Hello, world!"):
            chunk = sock.recv(4096)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk


def _dump(pid: int, workdir: Path) -> int:
    """Dump and zero the callgrind counters of ``pid``; return the instructions counted since the last dump."""
    before = set(workdir.glob("callgrind.out.*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True, cwd=workdir)
    deadline = time.monotonic() + 120
    while not (new := set(workdir.glob("callgrind.out.*")) - before) or not (total := _total(*new)):
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind did not write its dump within 120 s")
        time.sleep(0.1)
    return total


def _total(dump: Path) -> int:
    """The instruction total of a finished dump file, 0 while it is being written."""
    match = _TOTALS.search(dump.read_bytes())
    return int(match.group(1)) if match else 0


def per_request(parser: str, ours: bool, requests: int, warmup: int, loop: str, idle: float = 3.0) -> float:
    """Server instructions per keep-alive GET of one variant.

    What the server does while idle (uvicorn's 0.1 s main-loop tick) depends on wall time, which
    depends on the machine's load: it is counted for ``idle`` seconds and subtracted.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", "bench.apps:hello", "--host", HOST, "--port", str(port),
        "--http", hijack_http(parser) if ours else parser, "--loop", loop, "--no-access-log", "--log-level", "warning",
        "--lifespan", "off", "--timeout-keep-alive", "3600",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        out = workdir / "callgrind.out.%p"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--dump-line=no", f"--callgrind-out-file={out}", *cmd],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "PYTHONHASHSEED": "0"},  # the same dict layouts on every run
        )  # fmt: skip
        try:
            sock = _connect(port, server)
            with sock:
                request = _REQUEST % (HOST.encode(), port)
                _exchange(sock, request, warmup)
                _dump(server.pid, workdir)
                start = time.monotonic()
                _exchange(sock, request, requests)
                busy, busy_seconds = _dump(server.pid, workdir), time.monotonic() - start
                start = time.monotonic()
                time.sleep(idle)
                idle_rate = _dump(server.pid, workdir) / (time.monotonic() - start)
        finally:
            server.terminate()
            server.wait(60)
        return (busy - idle_rate * busy_seconds) / requests


def _connect(port: int, server: subprocess.Popen[bytes]) -> socket.socket:
    """Connect once the server (slow to start under valgrind) listens."""
    deadline = time.monotonic() + 300
    while True:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with {server.returncode} under valgrind")
        try:
            return socket.create_connection((HOST, port), timeout=120)
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server did not listen on {port} within 300 s") from None
            time.sleep(0.5)


def measure(parsers: Sequence[str], requests: int, warmup: int, loop: str) -> dict[str, dict[str, float]]:
    """Instructions per request of ours and stock, and their ratio, per parser."""
    results: dict[str, dict[str, float]] = {}
    for parser in parsers:
        ours = per_request(parser, True, requests, warmup, loop)
        stock = per_request(parser, False, requests, warmup, loop)
        results[parser] = {"ours": ours, "stock": stock, "ratio": ours / stock}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Print instructions per request per parser; exit 1 when a ratio is above the goal."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--parsers", default="httptools,h11,zttp")
    parser.add_argument("--requests", type=int, default=10_000, help="measured requests per variant")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured requests first")
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is missing: install it (apt-get install valgrind)", file=sys.stderr)
        return 2
    results = measure(args.parsers.split(","), args.requests, args.warmup, args.loop)
    if args.json:
        print(json.dumps(results))
    else:
        print(f"{'parser':<10} {'ours':>10} {'stock':>10} {'ratio':>7}  (instructions per request, {args.loop})")
        for name, r in results.items():
            print(f"{name:<10} {r['ours']:>10,.0f} {r['stock']:>10,.0f} {r['ratio']:>7.3f}")
    return 1 if any(r["ratio"] > GOAL for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
