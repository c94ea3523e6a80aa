"""Download time over HTTP/2 and HTTP/1.1 on ``asgi_hijack:ZttpHijackProtocol``, with Node's clients.

The server runs :func:`bench.apps.download` (one ``http.response.body`` message per MiB),
pinned to the server core; Node's built-in ``http2`` client (default settings: 64 KiB
windows) and ``http`` client (HTTP/1.1), pinned to the client core, each GET N MiB on a
fresh connection (``tests/node/h2_client.mjs``). Rounds alternate; medians are printed.
With ``--stock``, uvicorn's own ``--http zttp --http2`` is measured as well (only up to
16 MiB: it parks the whole body in zttp, which drains it in quadratic time)::

    python -m bench.h2_download [--sizes 16,64,256] [--rounds 3] [--stock]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
from collections.abc import Callable

from bench.apps import DOWNLOAD_BLOCK
from bench.procs import CLIENT_CPU, HOST, ROOT, free_port, pinned, serve, uvicorn_cmd

NODE_CLIENT = ROOT / "tests" / "node" / "h2_client.mjs"
VARIANTS: dict[str, tuple[str, str, tuple[str, ...]]] = {  # client mode, uvicorn --http, extra options
    "h2": ("get", "asgi_hijack:ZttpHijackProtocol", ()),
    "http1": ("get-http1", "asgi_hijack:ZttpHijackProtocol", ()),
}
STOCK = ("stock-h2", ("get", "zttp", ("--http2",)))
STOCK_MAX_MIB = 16


def download(port: int, mode: str, mib: int, timeout: float = 600.0) -> float:
    """Seconds for one GET of ``mib`` MiB with Node's client; raises unless every byte arrived."""
    cmd = ["node", str(NODE_CLIENT), mode, f"http://{HOST}:{port}/?mib={mib}"]
    done = subprocess.run(pinned(cmd, CLIENT_CPU), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"node {mode} failed: {done.stderr.strip()}")
    report = json.loads(done.stdout)
    if report["status"] != 200 or report["bytes"] != mib * len(DOWNLOAD_BLOCK):
        raise RuntimeError(f"node {mode}: incomplete download {report}")
    seconds: float = report["seconds"]
    return seconds


def measure(port: int, mode: str, mib: int) -> Callable[[], dict[str, float]]:
    """A ``bench.run`` measure: ``{"value": MiB/s}`` of one download of ``mib`` MiB."""
    return lambda: {"value": mib / download(port, mode, mib)}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--sizes", default="16,64,256", help="MiB, comma-separated")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--stock", action="store_true", help=f"also stock uvicorn, up to {STOCK_MAX_MIB} MiB")
    opts = parser.parse_args()
    sizes = [int(size) for size in opts.sizes.split(",")]
    variants = dict(VARIANTS, **dict([STOCK])) if opts.stock else VARIANTS
    seconds: dict[tuple[str, int], list[float]] = {}
    with contextlib.ExitStack() as stack:
        ports = {}
        for name, (_, http, extra) in variants.items():
            port = free_port()
            stack.enter_context(serve(name, uvicorn_cmd("bench.apps:download", http, port, *extra), port))
            ports[name] = port
        for round_no in range(opts.rounds):
            for name in variants if round_no % 2 == 0 else reversed(variants):
                mode = variants[name][0]
                for mib in sizes:
                    if name == STOCK[0] and mib > STOCK_MAX_MIB:
                        continue
                    taken = download(ports[name], mode, mib)
                    seconds.setdefault((name, mib), []).append(taken)
                    print(f"round {round_no + 1} {name:>8} {mib:4d} MiB: {taken:7.3f} s", flush=True)
    print("\n| variant | MiB | median s | MiB/s |\n| --- | ---: | ---: | ---: |")
    for (name, mib), values in seconds.items():
        median = statistics.median(values)
        print(f"| {name} | {mib} | {median:.3f} | {mib / median:.0f} |")


if __name__ == "__main__":
    main()
