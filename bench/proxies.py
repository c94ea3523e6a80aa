"""Throughput of a hijacked connection through the reverse proxies of ``examples/deploy/``, against direct.

``python -m bench.proxies [--mib 256] [--rounds 3] [--write]``: one ``Upgrade: tcp`` connection to
``bench.apps:tcp_upgrade`` (HttpToolsHijackProtocol, uvloop) moves MIB MiB client→server (``sink``), then
server→client (``source``), directly and through each route of ``examples/deploy/``: nginx's HTTP proxy
(nginx.conf), nginx's stream relay (nginx-stream.conf), and HAProxy's ``mode http`` and ``mode tcp``
(haproxy.cfg), each run as the tests run it (:class:`tests.helpers.ReverseProxy`). Routes alternate
(A B C D E, then E D C B A, ...) after one unrecorded warm-up pass. uvicorn is pinned to one core and the
client to the other; the proxy is not pinned. Prints the section; ``--write`` puts it in
``docs/benchmarks.md`` between its markers (appended the first time).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from bench.procs import ROOT, free_port, run_client, serve, uvicorn_cmd
from tests.helpers import ReverseProxy, proxy_binary

DOCS = ROOT / "docs" / "benchmarks.md"
START, END = "<!-- bench.proxies:start -->", "<!-- bench.proxies:end -->"
ROUTES = {  # route: (proxy, its frontend)
    "direct": ("", ""),
    "nginx (http, nginx.conf)": ("nginx", "http"),
    "nginx (stream, nginx-stream.conf)": ("nginx", "tcp"),
    "HAProxy (mode http, haproxy.cfg)": ("haproxy", "http"),
    "HAProxy (mode tcp, haproxy.cfg)": ("haproxy", "tcp"),
}


def bulk(port: int, size: int) -> dict[str, float]:
    """MiB/s up and down through one hijacked connection (``bench.clients bulk``, pinned)."""
    result = run_client("bulk", "--preface", "tcp", "--port", str(port), "--bytes", str(size))
    return {"upload": result["upload"], "download": result["download"]}


def measure(size: int, rounds: int) -> dict[str, list[dict[str, float]]]:
    """Per route, one result per round."""
    with contextlib.ExitStack() as stack:
        port = free_port()
        app = uvicorn_cmd("bench.apps:tcp_upgrade", "asgi_hijack:HttpToolsHijackProtocol", port)
        stack.enter_context(serve("uvicorn", app, port))
        proxies = {kind: stack.enter_context(ReverseProxy(kind, port)) for kind in ("nginx", "haproxy")}
        ports = {name: proxies[kind].ports[side] if kind else port for name, (kind, side) in ROUTES.items()}
        for name, route_port in ports.items():
            bulk(route_port, 32 << 20)  # warm-up
            print(f"warmed {name}", file=sys.stderr)
        samples: dict[str, list[dict[str, float]]] = {name: [] for name in ROUTES}
        for index in range(rounds):
            order = list(ROUTES) if index % 2 == 0 else list(reversed(ROUTES))
            for name in order:
                samples[name].append(bulk(ports[name], size))
                print(f"round {index + 1} {name}: {samples[name][-1]}", file=sys.stderr)
    return samples


def version(command: list[str]) -> str:
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return (done.stdout + done.stderr).strip().splitlines()[0]


def section(samples: dict[str, list[dict[str, float]]], size: int, rounds: int) -> str:
    """The Markdown section of docs/benchmarks.md, between its markers."""
    median = {
        name: {key: statistics.median(r[key] for r in runs) for key in ("upload", "download")}
        for name, runs in samples.items()
    }
    direct = median["direct"]
    rows = [
        f"| {name} | {m['upload']:,.0f} | {m['download']:,.0f} | {m['upload'] / direct['upload']:.2f} "
        f"| {m['download'] / direct['download']:.2f} | "
        + ", ".join(f"{r['upload']:,.0f} / {r['download']:,.0f}" for r in samples[name])
        + " |"
        for name, m in median.items()
    ]
    nginx = version([str(proxy_binary("nginx")), "-v"]).removeprefix("nginx version: ")
    haproxy = "HAProxy " + version([str(proxy_binary("haproxy")), "-v"]).split()[2]
    return f"""{START}
## Reverse proxies

<!-- Written by `python -m bench.proxies --write` (bench/proxies.py); `make bench` does not run it. -->

Measured with `python -m bench.proxies` on {datetime.date.today()}, {nginx} and {haproxy} (Debian 12),
with the configurations of `examples/deploy/` (docs/deploy.md): one `Upgrade: tcp` connection to
`bench.apps:tcp_upgrade` (HttpToolsHijackProtocol, uvloop) moves {size >> 20} MiB client→server, then
server→client, directly and through each proxy; {rounds} alternating rounds after a warm-up, medians.
uvicorn runs on one core and the client on the other; the proxy is not pinned, so it competes with both.
Load average at the end: {" ".join(f"{x:.2f}" for x in os.getloadavg())} (1, 5, 15 min), on {os.cpu_count()} CPUs:
with other work on the machine, compare the ratios of one run rather than figures across runs.

| Route | Upload MiB/s | Download MiB/s | Upload vs direct | Download vs direct | Per round (up / down) |
|---|---:|---:|---:|---:|---|
{chr(10).join(rows)}
{END}
"""


def write(text: str, path: Path = DOCS, markers: tuple[str, str] = (START, END)) -> None:
    """Replace the section between the markers, or append it."""
    document = path.read_text()
    start, end = markers
    if start in document:
        before, _, rest = document.partition(start)
        document = before + text.rstrip("\n") + rest.partition(end)[2]
    else:
        document = document.rstrip("\n") + "\n\n" + text
    path.write_text(document)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.proxies", description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB each way per round (default 256)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"put the section in {DOCS.relative_to(ROOT)}")
    args = parser.parse_args(argv)
    size = args.mib << 20
    text = section(measure(size, args.rounds), size, args.rounds)
    print(text)
    if args.write:
        write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
