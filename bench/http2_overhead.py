"""HTTP/2 cost of ``asgi_hijack:ZttpHijackProtocol`` against uvicorn's own ``--http zttp --http2``.

Both servers run :func:`bench.apps.hello` (it does not call ``receive()``, which
never returns for a GET on stock uvicorn 0.54) pinned to the server core; ``h2load``
(Debian ``nghttp2-client``) pinned to the client core sends cleartext
prior-knowledge GETs. Rounds alternate A/B (ABBA...); the medians of the request
rate and of the server's CPU time per request are printed with their ratios::

    python -m bench.http2_overhead [--rounds 5] [--connections 16] [--streams 16]

Each h2load connection sends fewer than 4096 requests: zttp 0.0.35 closes an
HTTP/2 connection at its 4097th stream ("flood detected").
"""

from __future__ import annotations

import argparse
import contextlib
import re
import shutil
import statistics
import subprocess

from bench.procs import CLIENT_CPU, HOST, Server, free_port, pinned, serve, uvicorn_cmd

VARIANTS: dict[str, tuple[str, ...]] = {  # uvicorn --http value, then extra options
    "ours": ("asgi_hijack:ZttpHijackProtocol",),
    "uvicorn": ("zttp", "--http2"),
}
REQUESTS_PER_CONNECTION = 4000


def h2load(port: int, connections: int, streams: int) -> float:
    """Requests per second of one pinned ``h2load`` run; raises on any failed request."""
    total = connections * REQUESTS_PER_CONNECTION
    cmd = ["h2load", "-t1", f"-c{connections}", f"-m{streams}", f"-n{total}", f"http://{HOST}:{port}/"]
    out = subprocess.run(pinned(cmd, CLIENT_CPU), capture_output=True, text=True, check=False).stdout
    done = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded", out)
    rate = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if not done or not rate or done[1] != done[2]:
        raise RuntimeError(f"h2load saw failures or unexpected output:\n{out}")
    return float(rate[1])


def measure(server: Server, connections: int, streams: int) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request) of one round."""
    cpu = server.cpu_seconds()
    rate = h2load(server.port, connections, streams)
    return rate, (server.cpu_seconds() - cpu) / (connections * REQUESTS_PER_CONNECTION) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--streams", type=int, default=16, help="concurrent streams per connection")
    opts = parser.parse_args()
    if shutil.which("h2load") is None:
        raise SystemExit("h2load not found: apt-get install nghttp2-client")

    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in VARIANTS}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name, (http, *extra) in VARIANTS.items():
            port = free_port()
            servers[name] = stack.enter_context(serve(name, uvicorn_cmd("bench.apps:hello", http, port, *extra), port))
            h2load(port, 2, opts.streams)  # warm-up, not measured
        for round_no in range(opts.rounds):
            for name in VARIANTS if round_no % 2 == 0 else reversed(VARIANTS):
                samples[name].append(measure(servers[name], opts.connections, opts.streams))
                rate, cpu_us = samples[name][-1]
                print(f"round {round_no + 1} {name:>7}: {rate:8.0f} req/s {cpu_us:6.1f} us CPU/req", flush=True)

    rates = {name: statistics.median(r for r, _ in values) for name, values in samples.items()}
    cpus = {name: statistics.median(c for _, c in values) for name, values in samples.items()}
    print(f"median req/s:        ours {rates['ours']:.0f}  uvicorn {rates['uvicorn']:.0f}")
    print(f"median us CPU/req:   ours {cpus['ours']:.1f}  uvicorn {cpus['uvicorn']:.1f}")
    rate_ratio, cpu_ratio = rates["ours"] / rates["uvicorn"], cpus["ours"] / cpus["uvicorn"]
    print(f"ratio ours/uvicorn:  req/s {rate_ratio:.3f}  CPU/req {cpu_ratio:.3f}")


if __name__ == "__main__":
    main()
