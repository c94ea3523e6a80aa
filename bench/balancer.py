"""Connections per second and tunnel throughput through an L4 balancer with the PROXY protocol, against direct.

``python -m bench.balancer [--seconds 5] [--mib 256] [--rounds 3] [--write]``: ``bench.apps:tcp_upgrade``
(HttpToolsHijackProtocol, uvloop) served directly with the PROXY protocol off, and as two servers
(``ASGI_HIJACK_PROXY_PROTOCOL=any``) behind HAProxy ``mode tcp`` with
``examples/deploy/haproxy-proxy-protocol.cfg`` (:class:`tests.helpers.Balancer`): ``send-proxy-v2`` and
``send-proxy``. Connections per second: connect, ``Upgrade: tcp``, one 64-byte echo, close
(``bench.clients handshake``, 50 at a time); throughput: one hijacked connection moves MIB MiB each way
(``bench.clients bulk``). The servers share one core, the client has the other; HAProxy is not pinned.
Routes alternate after a warm-up pass. ``--write`` puts the section in ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import sys
from collections.abc import Sequence

from bench.procs import ROOT, free_port, run_client, serve, uvicorn_cmd
from bench.proxies import version, write
from tests.helpers import Balancer, proxy_binary

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench.balancer:start -->", "<!-- bench.balancer:end -->"
APP, HTTP = "bench.apps:tcp_upgrade", "asgi_hijack:HttpToolsHijackProtocol"
ROUTES = ["direct (PROXY protocol off)", "HAProxy mode tcp, send-proxy-v2", "HAProxy mode tcp, send-proxy (v1)"]


def sample(port: int, seconds: float, size: int) -> dict[str, float]:
    shake = run_client("handshake", "--kind", "tcp", "--port", str(port), "--seconds", str(seconds))
    moved = run_client("bulk", "--preface", "tcp", "--port", str(port), "--bytes", str(size))
    return {"conns": shake["value"], "upload": moved["upload"], "download": moved["download"]}


def measure(seconds: float, size: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    env = {"ASGI_HIJACK_PROXY_PROTOCOL": "any", "ASGI_HIJACK_PROXY_TRUSTED": "127.0.0.1"}
    with contextlib.ExitStack() as stack:
        direct, one, two = free_port(), free_port(), free_port()
        stack.enter_context(serve("direct", uvicorn_cmd(APP, HTTP, direct), direct))
        for port in (one, two):
            stack.enter_context(serve(f"proxied {port}", uvicorn_cmd(APP, HTTP, port), port, env=env))
        balancer = stack.enter_context(Balancer((one, two), health="/"))
        ports = dict(zip(ROUTES, [direct, balancer.ports["v2"], balancer.ports["v1"]], strict=True))
        for port in ports.values():
            sample(port, 1.0, 32 << 20)  # warm-up
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in ROUTES}
        for index in range(rounds):
            for name in ROUTES if index % 2 == 0 else reversed(ROUTES):
                samples[name].append(sample(ports[name], seconds, size))
                print(f"round {index + 1} {name}: {samples[name][-1]}", file=sys.stderr)
    return samples


def section(samples: dict[str, list[dict[str, float]]], seconds: float, size: int, rounds: int) -> str:
    keys = ("conns", "upload", "download")
    median = {name: {key: statistics.median(r[key] for r in runs) for key in keys} for name, runs in samples.items()}
    direct = median[ROUTES[0]]
    rows = [
        f"| {name} | {m['conns']:,.0f} | {m['conns'] / direct['conns']:.2f} | {m['upload']:,.0f} "
        f"| {m['download']:,.0f} | {m['upload'] / direct['upload']:.2f} / {m['download'] / direct['download']:.2f} |"
        for name, m in median.items()
    ]
    haproxy = "HAProxy " + version([str(proxy_binary("haproxy")), "-v"]).split()[2]
    return f"""{START}
## Behind an L4 balancer (PROXY protocol)

<!-- Written by `python -m bench.balancer --write` (bench/balancer.py); `make bench` does not run it. -->

Measured with `python -m bench.balancer` on {datetime.date.today()}, {haproxy} (Debian 12) in `mode tcp`
with `examples/deploy/haproxy-proxy-protocol.cfg` in front of two uvicorn processes
(`ASGI_HIJACK_PROXY_PROTOCOL=any`), against one uvicorn reached directly with the PROXY protocol off:
`bench.apps:tcp_upgrade` on HttpToolsHijackProtocol and uvloop. Connections/s: connect, `Upgrade: tcp`,
one 64-byte echo, close, 50 at a time for {seconds:g} s. Throughput: one hijacked connection moves
{size >> 20} MiB each way. {rounds} alternating rounds after a warm-up, medians. The servers share one
core and the client has the other; HAProxy is not pinned, so it competes with both. Load average at the
end: {" ".join(f"{x:.2f}" for x in os.getloadavg())} (1, 5, 15 min), on {os.cpu_count()} CPUs.

| Route | Connections/s | vs direct | Upload MiB/s | Download MiB/s | Throughput vs direct (up / down) |
|---|---:|---:|---:|---:|---:|
{chr(10).join(rows)}
{END}
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.balancer", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of connections per round (default 5)")
    parser.add_argument("--mib", type=int, default=256, help="MiB each way per round (default 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"put the section in {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    size = args.mib << 20
    text = section(measure(args.seconds, size, args.rounds), args.seconds, size, args.rounds)
    print(text)
    if args.write:
        write(text, DOCS, (START, END))
    return 0


if __name__ == "__main__":
    sys.exit(main())
