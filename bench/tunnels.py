"""Tunnel throughput and memory: ``tunnel()`` on HTTP/2 against HTTP/1.1 hijack, one server, one run.

The server is ``ZttpHijackProtocol`` running :func:`app` (pinned to the server core); the client
is Node's own ``http2`` (extended CONNECT, default 64 KiB windows) or ``net`` (HTTP/1.1
``Upgrade: tcp``), pinned to the client core (``bench/node/tunnel_client.mjs``). Each round moves
``--mib`` MiB through one fresh tunnel each way, alternating the protocols; medians are printed
with the HTTP/2 / HTTP/1.1 ratio (goal: at least 0.5). Memory: the server's RSS growth per idle
tunnel while ``--idle`` tunnels are open (HTTP/2: 100 streams per connection)::

    python -m bench.tunnels [--mib 256] [--rounds 3] [--idle 2000]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import subprocess
import time
from typing import Any
from urllib.parse import parse_qs

from asgi_hijack import tunnel
from bench.procs import CLIENT_CPU, HOST, ROOT, free_port, pinned, raise_nofile, serve, uvicorn_cmd

CLIENT = ROOT / "bench" / "node" / "tunnel_client.mjs"
BLOCK = b"x" * (1 << 20)
PROTOCOLS = {"HTTP/2 tunnel": "h2", "HTTP/1.1 hijack": "http1"}
GOAL = 0.5
Result = dict[str, float]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/download?mib=N`` sends N MiB, ``/upload`` answers the byte count, ``/idle`` waits for EOF."""
    if scope["type"] != "http":
        return
    async with await tunnel(scope, receive, send) as t:
        if scope["path"] == "/download":
            for _ in range(int(parse_qs(scope["query_string"].decode())["mib"][0])):
                t.writer.write(BLOCK)
                await t.writer.drain()
        elif scope["path"] == "/upload":
            total = 0
            while data := await t.reader.read(1 << 20):
                total += len(data)
            await t.send(b"%d\n" % total)
        await t.send_eof()
        while await t.reader.read(1 << 20):  # until the client's end: then aclose() resets nothing
            pass


def client(*args: str, stdin: Any = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        pinned(["node", str(CLIENT), *args], CLIENT_CPU), stdin=stdin, stdout=subprocess.PIPE, text=True
    )


def transfer(port: int, mode: str, op: str, mib: int) -> float:
    """MiB/s of one transfer; raises unless every byte arrived."""
    proc = client(mode, op, f"http://{HOST}:{port}", str(mib))
    output, _ = proc.communicate(timeout=600)
    report = json.loads(output)
    if report["bytes"] != mib << 20:
        raise RuntimeError(f"{mode} {op}: {report['bytes']} of {mib << 20} bytes")
    return mib / float(report["seconds"])


def idle_kib(server: Any, mode: str, count: int) -> float:
    """Server RSS growth per tunnel while ``count`` idle tunnels are open."""
    before = server.rss_kib()
    proc = client(mode, "idle", f"http://{HOST}:{server.port}", str(count), stdin=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    opened = json.loads(proc.stdout.readline())["open"]
    time.sleep(0.5)
    grown = server.rss_kib() - before
    proc.stdin.write("\n")
    proc.stdin.flush()
    proc.wait(30)
    if opened != count:
        raise RuntimeError(f"{mode}: {opened} of {count} tunnels opened")
    return float(grown) / count


def measure(mib: int, rounds: int, idle: int) -> tuple[dict[str, list[Result]], dict[str, list[Result]]]:
    """Samples per variant, as ``bench.run``'s comparisons keep them: throughput (``download`` and
    ``upload`` MiB/s, ``rounds`` alternating rounds on one server) and memory (``value``: KiB per idle
    tunnel, one fresh server per variant)."""
    raise_nofile(idle * 2 + 100)
    speeds: dict[str, list[Result]] = {name: [] for name in PROTOCOLS}
    port = free_port()
    with serve("tunnels", uvicorn_cmd("bench.tunnels:app", "asgi_hijack:ZttpHijackProtocol", port), port):
        for mode in PROTOCOLS.values():  # warm-up
            transfer(port, mode, "download", 16)
        for round_no in range(rounds):
            for name in PROTOCOLS if round_no % 2 == 0 else reversed(PROTOCOLS):
                result = {op: transfer(port, PROTOCOLS[name], op, mib) for op in ("download", "upload")}
                speeds[name].append(result)
                logging.debug("round %d %15s: %s", round_no + 1, name, result)
    memory: dict[str, list[Result]] = {}
    for name, mode in PROTOCOLS.items():  # a fresh server each, so that one's garbage is not the other's
        port = free_port()
        with serve("idle", uvicorn_cmd("bench.tunnels:app", "asgi_hijack:ZttpHijackProtocol", port), port) as server:
            memory[name] = [{"value": idle_kib(server, mode, idle)}]
    return speeds, memory


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--idle", type=int, default=2000)
    opts = parser.parse_args()
    speeds, memory = measure(opts.mib, opts.rounds, opts.idle)
    h2, h1 = PROTOCOLS
    print(f"| {opts.mib} MiB through one tunnel | {h2} | {h1} | ratio (goal ≥ {GOAL}) |")
    print("| --- | ---: | ---: | ---: |")
    for op in ("download", "upload"):
        a, b = (statistics.median(r[op] for r in speeds[name]) for name in (h2, h1))
        print(f"| {op}, MiB/s | {a:.0f} | {b:.0f} | {a / b:.2f} |")
    kib = [memory[name][0]["value"] for name in (h2, h1)]
    print(f"| memory per idle tunnel ({opts.idle} open), KiB | {kib[0]:.1f} | {kib[1]:.1f} | |")


if __name__ == "__main__":
    main()
