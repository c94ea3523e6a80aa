"""Server instructions per exchange, counted by callgrind: our protocol classes vs stock uvicorn.

``python -m bench.instructions [--workload get|close|handshake|upgrade|plain|plain-close] [--parsers ...]``

Each server runs under ``valgrind --tool=callgrind``. One client sends ``--warmup`` exchanges one
after the other, the counters are dumped (``callgrind_control --dump``), then ``--requests`` more
exchanges, and the counters are dumped again: the second dump, less what the idle server counts in
the same time, divided by ``--requests`` is the server's cost of one exchange. Instruction counts
do not depend on the load of the machine, unlike CPU time, so small differences show up reliably.

Workloads: ``get``, keep-alive GETs of :func:`bench.apps.hello` on one connection (ours and stock
serve the same app); ``handshake``, ours hijacks (:func:`bench.apps.tcp_upgrade`: new connection,
``Upgrade: tcp``, ``101``, one 64-byte echo, close) against stock uvicorn answering a ``Connection:
close`` GET of :func:`bench.apps.hello` on a new connection (the cheapest plain exchange);
``close``, that ``Connection: close`` GET on a new connection on both (what a new connection costs);
``plain``, the handshake's echo on a plain ``asyncio.start_server`` server in the same process (no
HTTP: what the echo and the connection cost in asyncio streams by themselves; no goal). Two more
take the handshake apart (no goal, not in ``make bench``): ``upgrade``, the handshake without its echo
(``101``, then the client half-closes: what the hijack costs against the stock GET), and
``plain-close``, the plain server's connection with no echo (so ``plain`` less ``plain-close`` is
what the echo costs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.clients import ECHOES, PREFACES
from bench.procs import HOST, ROOT, free_port, hijack_http

GOALS = {"get": 1.02, "close": 1.02, "handshake": 1.0}
"""Ours / stock instructions per exchange, at most, per workload."""
_REQUEST = b"GET / HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
_TOTALS = re.compile(rb"^(?:summary|totals): (\d+)", re.MULTILINE)
Exchange = Callable[[int], None]
"""Runs ``count`` exchanges with the server on a port (bound), one after the other."""


def _recv_until(sock: socket.socket, done: Callable[[bytes], bool]) -> bytes:
    data = b""
    while not done(data):
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("the server closed the connection")
        data += chunk
    return data


def _keepalive_gets(port: int) -> Exchange:
    """GETs on one keep-alive connection, each after the previous response arrived."""
    sock = socket.create_connection((HOST, port), timeout=120)
    request = _REQUEST % (HOST.encode(), port)

    def exchange(count: int) -> None:
        for _ in range(count):
            sock.sendall(request)
            _recv_until(sock, lambda data: data.endswith(b"Hello, world!"))

    return exchange


def _connections(port: int, kind: str, *, http: bool = True, echo: bool = True) -> Exchange:
    """A new connection per exchange (``bench.clients`` handshake ``kind``: ``tcp`` or ``close``).

    The client half-closes after the reply and reads to EOF, so that each exchange, the server's
    close included, is over before the next begins (the server sees the same FIN as on a close).
    Without ``http``, only what follows the HTTP exchange (a plain server's echo); without
    ``echo``, the client half-closes right after the HTTP exchange.
    """
    request, status = PREFACES[kind]
    message, reply = ECHOES[kind] if echo else (b"", b"")

    def exchange(count: int) -> None:
        for _ in range(count):
            with socket.create_connection((HOST, port), timeout=120) as sock:
                if http:
                    sock.sendall(request)
                    data = _recv_until(sock, lambda data: b"\r\n\r\n" in data)
                    if not data.startswith(b"HTTP/1.1 %d " % status):
                        raise ConnectionError(f"unexpected answer {data[:40]!r}")
                if message:  # after the 101, as bench.clients does: no pending bytes
                    sock.sendall(message)
                    _recv_until(sock, lambda data: data == reply)
                sock.shutdown(socket.SHUT_WR)
                while sock.recv(4096):
                    pass

    return exchange


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
    """Server instructions per keep-alive GET of one variant."""
    http = hijack_http(parser) if ours else parser
    return per_exchange("bench.apps:hello", http, _keepalive_gets, requests, warmup, loop, idle)


def per_handshake(
    parser: str, ours: bool, requests: int, warmup: int, loop: str, idle: float = 3.0, echo: bool = True
) -> float:
    """Server instructions per hijack handshake (ours; without its echo unless ``echo``) or per
    ``Connection: close`` GET (stock)."""
    if ours:
        return per_exchange(
            "bench.apps:tcp_upgrade", hijack_http(parser), lambda port: _connections(port, "tcp", echo=echo),
            requests, warmup, loop, idle,
        )  # fmt: skip
    return per_exchange(
        "bench.apps:hello", parser, lambda port: _connections(port, "close"), requests, warmup, loop, idle
    )


def per_close(parser: str, ours: bool, requests: int, warmup: int, loop: str, idle: float = 3.0) -> float:
    """Server instructions per ``Connection: close`` GET on a new connection."""
    http = hijack_http(parser) if ours else parser
    return per_exchange(
        "bench.apps:hello", http, lambda port: _connections(port, "close"), requests, warmup, loop, idle
    )


def per_plain(
    parser: str, ours: bool, requests: int, warmup: int, loop: str, idle: float = 3.0, echo: bool = True
) -> float:
    """Server instructions per echo exchange (without ``echo``: connection and close only) with the
    plain ``asyncio.start_server`` server of :func:`bench.apps.hello`'s lifespan (``ours`` and
    ``parser`` only pick the HTTP server beside it)."""
    http = hijack_http(parser) if ours else parser
    plain = free_port()
    return per_exchange(
        "bench.apps:hello", http, lambda port: _connections(plain, "tcp", http=False, echo=echo),
        requests, warmup, loop, idle, env={"BENCH_PLAIN_PORT": str(plain)},
    )  # fmt: skip


def per_exchange(
    app: str,
    http: str,
    client: Callable[[int], Exchange],
    requests: int,
    warmup: int,
    loop: str,
    idle: float,
    env: dict[str, str] | None = None,
) -> float:
    """Server instructions per exchange of ``client`` with uvicorn serving ``app`` with ``--http http``.

    What the server does while idle (uvicorn's 0.1 s main-loop tick) depends on wall time, which
    depends on the machine's load: it is counted for ``idle`` seconds and subtracted.
    """
    port = free_port()
    cmd = [
        sys.executable, "-m", "uvicorn", app, "--host", HOST, "--port", str(port),
        "--http", http, "--loop", loop, "--no-access-log", "--log-level", "warning",
        "--lifespan", "on" if env else "off", "--timeout-keep-alive", "3600",
    ]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        out = workdir / "callgrind.out.%p"
        server = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--dump-line=no", f"--callgrind-out-file={out}", *cmd],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, **(env or {}), "PYTHONHASHSEED": "0"},  # the same dict layouts on every run
        )  # fmt: skip
        try:
            _connect(port, server).close()
            exchange = client(port)
            exchange(warmup)
            _dump(server.pid, workdir)
            start = time.monotonic()
            exchange(requests)
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


def measure(
    parsers: Sequence[str], requests: int, warmup: int, loop: str, workload: str = "get"
) -> dict[str, dict[str, float]]:
    """Instructions per exchange of ours and stock, and their ratio, per parser."""
    counters: dict[str, Callable[[str, bool, int, int, str], float]] = {
        "get": per_request,
        "close": per_close,
        "handshake": per_handshake,
        "upgrade": functools.partial(per_handshake, echo=False),
        "plain": per_plain,
        "plain-close": functools.partial(per_plain, echo=False),
    }
    count = counters[workload]
    results: dict[str, dict[str, float]] = {}
    for parser in parsers:
        ours = count(parser, True, requests, warmup, loop)
        stock = count(parser, False, requests, warmup, loop)
        results[parser] = {"ours": ours, "stock": stock, "ratio": ours / stock}
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Print instructions per exchange per parser; exit 1 when a ratio is above the goal."""
    parser = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="get", choices=(*GOALS, "upgrade", "plain", "plain-close"))
    parser.add_argument("--parsers", default="httptools,h11,zttp")
    parser.add_argument("--requests", type=int, default=10_000, help="measured exchanges per variant")
    parser.add_argument("--warmup", type=int, default=200, help="unmeasured exchanges first")
    parser.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        print("valgrind is missing: install it (apt-get install valgrind)", file=sys.stderr)
        return 2
    results = measure(args.parsers.split(","), args.requests, args.warmup, args.loop, args.workload)
    if args.json:
        print(json.dumps(results))
    else:
        print(
            f"{'parser':<10} {'ours':>10} {'stock':>10} {'ratio':>7}  (instructions per {args.workload}, {args.loop})"
        )
        for name, r in results.items():
            print(f"{name:<10} {r['ours']:>10,.0f} {r['stock']:>10,.0f} {r['ratio']:>7.3f}")
    return 1 if any(r["ratio"] > GOALS.get(args.workload, float("inf")) for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
