"""Run asgi-hijack's benchmarks side by side, print the table, write ``docs/benchmarks.md`` and its chart.

``python -m bench.run`` (full, about 20 minutes) or ``python -m bench.run --quick`` (about 7 minutes).
Variants of a comparison run in alternating rounds (A B C, C B A, ...) against servers pinned
to one core while the load generator is pinned to the other; the table reports medians and
ratios. Exits 1 when a goal is missed (unless ``--no-check``), 2 when a comparison failed.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from asgi_hijack.relay import SPLICE_ENV
from bench import h2_download, instructions, procs, proxies, report, tunnels
from bench.procs import (
    CLIENT_CPU,
    HIJACK_PROTOCOLS,
    ROOT,
    Server,
    free_port,
    hijack_http,
    run_client,
    run_wrk,
    serve,
    uvicorn_cmd,
)
from bench.report import Goal, Row

Result = dict[str, float]
Measure = Callable[[], Result]
Pair = tuple[str, str, str, str, Goal | None]  # ours, baseline, metric, unit, goal

EXAMPLE_PROXY = "examples.connect_proxy:app"  # relays with conn.relay() (asgi_hijack.relay)
STREAMS_PROXY = "bench.apps:connect_proxy_streams"  # the same tunnel relayed with a streams loop
KEPT_SECTION = re.compile(r"<!-- (bench\.\w+):start -->.*?<!-- \1:end -->", re.DOTALL)
"""A section of ``docs/benchmarks.md`` that another tool writes (``python -m bench.proxies --write``)."""
SECTIONS = {
    1: "1. Ordinary requests",
    2: "2. Hijacked stream throughput",
    3: "3. Hijack handshakes",
    4: "4. Memory, idle connections",
    5: "5. CONNECT proxy",
    6: "6. Instructions per ordinary request",
    7: "7. HTTP/2 downloads",
    8: "8. Tunnels",
}


@dataclass(frozen=True)
class Settings:
    """Sizes and durations of one run."""

    mode: str
    rounds: int
    wrk_seconds: float
    bulk_bytes: int
    handshake_seconds: float
    idle_count: int
    proxy_bytes: int
    memory_rounds: int
    instr_requests: int
    request_rounds: int  # ordinary requests: the issue asks for medians of at least 5
    instr_handshakes: int  # counted under callgrind per variant in comparison 3
    connections: int = 50
    warmup_seconds: float = 1.0


FULL = Settings("full", 3, 5, 1 << 30, 10, 10_000, 1 << 30, 2, 3_000, 5, 500)
QUICK = Settings("quick", 2, 2, 128 << 20, 2, 2_000, 128 << 20, 1, 500, 2, 100)


def log(message: str, *, detail: bool = False) -> None:
    """Progress goes to stderr, each round's numbers (``detail``) only with ``--verbose``; the table goes to stdout."""
    logging.getLogger("bench").log(logging.DEBUG if detail else logging.INFO, message)


def alternate(section: str, variants: dict[str, Measure], rounds: int) -> dict[str, list[Result]]:
    """Measure every variant once per round, reversing the order every other round."""
    results: dict[str, list[Result]] = {name: [] for name in variants}
    for n in range(rounds):
        order = list(variants) if n % 2 == 0 else list(variants)[::-1]
        for name in order:
            result = variants[name]()
            results[name].append(result)
            shown = ", ".join(f"{k} {v:,.2f}" for k, v in result.items())
            log(f"  {section} | round {n + 1}/{rounds} | {name}: {shown}", detail=True)
    return results


def on_server(server: Server, measure: Measure) -> Measure:
    """Add the server's CPU utilisation during ``measure`` to its result."""

    def measured() -> Result:
        cpu, start = server.cpu_seconds(), time.monotonic()
        result = measure()
        result["server_cpu_s"] = server.cpu_seconds() - cpu
        result["server_cpu"] = result["server_cpu_s"] / (time.monotonic() - start)
        return result

    return measured


class Runner:
    """Starts servers for each comparison, alternates the variants, collects rows."""

    def __init__(self, settings: Settings, parsers: Sequence[str], proxy_app: str) -> None:
        self.s = settings
        self.parsers = parsers
        self.proxy_app = proxy_app
        self.rows: list[Row] = []
        self.samples: dict[str, dict[str, list[Result]]] = {}
        self.stack = contextlib.ExitStack()

    @contextlib.contextmanager
    def servers(self) -> Iterator[None]:
        """Servers started inside this block are stopped when it ends."""
        outer, self.stack = self.stack, contextlib.ExitStack()
        try:
            with self.stack:
                yield
        finally:
            self.stack = outer

    # -- servers -------------------------------------------------------------------------
    def uvicorn(self, name: str, app: str, http: str, *extra: str, env: dict[str, str] | None = None) -> Server:
        """Start a uvicorn server for the current comparison."""
        port = free_port()
        cmd = uvicorn_cmd(app, http, port, "--timeout-keep-alive", "3600", *extra)
        return self.stack.enter_context(serve(name, cmd, port, env=env))

    def go(self, *, raw: bool = False, cpu: int = procs.SERVER_CPU) -> Server:
        """Start the Go hijack server; ``raw`` serves the stream protocol on bare TCP."""
        port = free_port()
        flag = "-raw" if raw else "-http"
        cmd = [go_binary("hijack_server"), flag, f"{procs.HOST}:{port}"]
        return self.stack.enter_context(serve("go", cmd, port, cpu=cpu))

    def go_proxy(self, target: int) -> Server:
        """Start the Go CONNECT proxy (``Hijack()`` + ``io.Copy``) that tunnels to ``target`` only."""
        port = free_port()
        cmd = [go_binary("connect_proxy"), "-listen", f"{procs.HOST}:{port}", "-allow", f"{procs.HOST}:{target}"]
        return self.stack.enter_context(serve("go-proxy", cmd, port))

    def node(self) -> Server:
        """Start the Node ``server.on('upgrade')`` server."""
        port = free_port()
        cmd = ["node", str(ROOT / "bench/node/upgrade_server.js"), str(port)]
        return self.stack.enter_context(serve("node", cmd, port))

    # -- bookkeeping ---------------------------------------------------------------------
    def rows_for(
        self, section: str, results: dict[str, list[Result]], pairs: Sequence[Pair], delta: bool = False
    ) -> None:
        """Add a row per ``(ours, baseline, metric, unit, goal)``; ``delta`` rows compare by difference."""
        self.samples.setdefault(section, {}).update(results)
        for ours, base, key, unit, goal in pairs:
            row = Row(section, ours, base, key, unit, [r[key] for r in results[ours]], [r[key] for r in results[base]])
            row.goal, row.delta, row.chart = goal, delta, key not in ("cpu_us", "instructions")
            busy = [v for v in (ours, base) if statistics.median(r.get("client_cpu", 0) for r in results[v]) > 0.85]
            if busy:
                row.note = f"load generator saturated on {', '.join(busy)}"
            self.rows.append(row)

    def warm(self, variants: dict[str, Measure]) -> None:
        """One unrecorded pass over every variant."""
        for measure in variants.values():
            measure()

    # -- comparisons ---------------------------------------------------------------------
    def ordinary(self, section: str) -> None:
        """Keep-alive GETs of a plain ASGI app with wrk: hijack protocol vs stock, per parser."""
        for parser in self.parsers:
            with self.servers():
                servers = {
                    f"{HIJACK_PROTOCOLS[parser]}": self.uvicorn("ours", "bench.apps:hello", hijack_http(parser)),
                    f"{parser}": self.uvicorn("stock", "bench.apps:hello", parser),
                }
                self.warm({n: self.wrk(srv, self.s.warmup_seconds) for n, srv in servers.items()})
                variants = {n: self.wrk(srv, self.s.wrk_seconds) for n, srv in servers.items()}
                ours, stock = variants
                results = alternate(f"{section} [{parser}]", variants, self.s.request_rounds)
                for result in (r for samples in results.values() for r in samples):
                    result["cpu_us"] = result["server_cpu_s"] / result["requests"] * 1e6
                pairs: list[Pair] = [
                    (ours, stock, "value", "req/s", Goal(0.98)),
                    (ours, stock, "cpu_us", "µs", Goal(1.02, lower=True)),
                ]
                self.rows_for(section, results, pairs)

    def wrk(self, server: Server, seconds: float) -> Measure:
        """Measure of one wrk run against ``server``."""
        return on_server(server, lambda: run_wrk(server.port, seconds, self.s.connections))

    def throughput(self, section: str) -> None:
        """Bulk upload and download through one hijacked connection vs asyncio.start_server vs Go."""
        plain_port = free_port()
        with self.servers():
            ours = self.uvicorn(
                "ours",
                "bench.apps:tcp_upgrade",
                hijack_http(self.parsers[0]),
                env={"BENCH_PLAIN_PORT": str(plain_port)},
            )
            variants = {
                "hijacked": on_server(ours, bulk(ours.port, "tcp", self.s.bulk_bytes)),
                "asyncio.start_server": on_server(ours, bulk(plain_port, "none", self.s.bulk_bytes)),
            }
            warmups = {"hijacked": bulk(ours.port, "tcp", 32 << 20), "plain": bulk(plain_port, "none", 32 << 20)}
            if have("go"):
                go = self.go()
                variants["Go net/http Hijack"] = on_server(go, bulk(go.port, "tcp", self.s.bulk_bytes))
                warmups["go"] = bulk(go.port, "tcp", 32 << 20)
            self.warm(warmups)
            results = alternate(section, variants, self.s.rounds)
        pairs: list[Pair] = []
        for key in ("upload", "download"):
            pairs.append(("hijacked", "asyncio.start_server", key, "MiB/s", Goal(0.95)))
            if "Go net/http Hijack" in results:
                pairs.append(("hijacked", "Go net/http Hijack", key, "MiB/s", None))
        self.rows_for(section, results, pairs)

    def handshakes(self, section: str) -> None:
        """New connection + upgrade + one 64-byte echo + close, 50 clients: hijack vs WebSocket, Go, Node.

        The hijack's own cost: against stock uvicorn answering a ``Connection: close`` GET on a new
        connection, the cheapest plain exchange, on the same parser.
        """
        targets: dict[str, tuple[Server, str]] = {}
        pairs: list[Pair] = []
        with self.servers():
            for parser in self.parsers:
                name, ws_name = f"{HIJACK_PROTOCOLS[parser]} hijack", f"{parser} WebSocket"
                close_name = f"{parser} Connection: close GET"
                targets[name] = (self.uvicorn("ours", "bench.apps:tcp_upgrade", hijack_http(parser)), "tcp")
                stock = self.uvicorn("stock", "bench.apps:ws_echo", parser)  # HTTP requests get bench.apps:hello
                targets[ws_name], targets[close_name] = (stock, "ws"), (stock, "close")
                pairs.append((name, ws_name, "value", "conn/s", Goal(1.0, strict=True)))
                pairs.append((name, close_name, "value", "conn/s", Goal(1.0)))
            best = f"{HIJACK_PROTOCOLS[self.parsers[0]]} hijack"
            for tool, name, start in (("go", "Go net/http Hijack", self.go), ("node", "Node upgrade", self.node)):
                if have(tool):
                    targets[name] = (start(), "tcp")
                    pairs.append((best, name, "value", "conn/s", None))

            def measure(seconds: float) -> dict[str, Measure]:
                c = self.s.connections
                return {n: on_server(srv, handshake(srv.port, kind, seconds, c)) for n, (srv, kind) in targets.items()}

            self.warm(measure(self.s.warmup_seconds))
            results = alternate(section, measure(self.s.handshake_seconds), self.s.rounds)
        self.rows_for(section, results, pairs)
        if have("valgrind"):
            self.handshake_instructions(section)
        else:
            log(f"{section}: valgrind is missing, no instruction counts (apt-get install valgrind)")

    def handshake_instructions(self, section: str) -> None:
        """Server instructions per hijack handshake vs per ``Connection: close`` GET, under callgrind, per parser.

        The same exchanges as the conn/s rows, one after the other (:mod:`bench.instructions`); the
        counts do not depend on the machine's load, so one round is enough.
        """
        count = self.s.instr_handshakes
        for parser in self.parsers:
            hijack = f"{HIJACK_PROTOCOLS[parser]} hijack (callgrind)"
            stock = f"{parser} Connection: close GET (callgrind)"
            ours = f"{HIJACK_PROTOCOLS[parser]} Connection: close GET (callgrind)"
            plain = "the echo on asyncio.start_server, no HTTP (callgrind)"
            variants: dict[str, Measure] = {
                hijack: counted(parser, ours=True, requests=count, workload="handshake"),
                stock: counted(parser, ours=False, requests=count, workload="close"),
                ours: counted(parser, ours=True, requests=count, workload="close"),
            }
            if parser == self.parsers[0]:  # the same server whatever the parser: once
                variants[plain] = counted(parser, ours=False, requests=count, workload="plain")
            results = alternate(f"{section} [{parser}, callgrind]", variants, 1)
            pairs: list[Pair] = [
                (hijack, stock, "instructions", "instr", Goal(1.0, lower=True)),
                (ours, stock, "instructions", "instr", Goal(instructions.GOALS["close"], lower=True)),
            ]
            if plain in variants:
                pairs.append((plain, stock, "instructions", "instr", None))
            self.rows_for(section, results, pairs)

    def memory(self, section: str) -> None:
        """RSS per idle connection: hijacked vs keep-alive on stock uvicorn (and on the hijack protocol)."""
        count = self.s.idle_count
        variants: dict[str, Measure] = {}
        pairs: list[Pair] = []
        for parser in self.parsers:
            proto = hijack_http(parser)
            stock, hijacked = f"{parser} keep-alive", f"{HIJACK_PROTOCOLS[parser]} hijacked"
            keepalive = f"{HIJACK_PROTOCOLS[parser]} keep-alive"
            variants[stock] = self.idle_measure("bench.apps:hello", parser, "get", count)
            variants[hijacked] = self.idle_measure("bench.apps:tcp_upgrade", proto, "tcp", count)
            variants[keepalive] = self.idle_measure("bench.apps:hello", proto, "get", count)
            pairs.append((hijacked, stock, "value", "KiB/conn", Goal(2.0)))
            pairs.append((keepalive, stock, "value", "KiB/conn", Goal(0.5)))
        main = self.parsers[0]
        plain = "asyncio.start_server streams"
        variants[plain] = self.idle_measure("bench.apps:tcp_upgrade", hijack_http(main), "none", count, plain=True)
        pairs.append((f"{HIJACK_PROTOCOLS[main]} hijacked", plain, "value", "KiB/conn", None))
        results = alternate(section, variants, self.s.memory_rounds)
        self.rows_for(section, results, pairs, delta=True)

    def idle_measure(self, app: str, http: str, kind: str, count: int, *, plain: bool = False) -> Measure:
        """Fresh server; RSS growth per connection over the second half of ``count`` idle connections.

        The first half takes up what the server's allocators hold free after start-up (the
        compiler's garbage, which differs with what each server imports), so the second half's
        growth is the steady cost of one more connection. ``plain`` connects to the app's
        ``asyncio.start_server`` instead of uvicorn.
        """

        def measure() -> Result:
            with self.servers():
                port = free_port()
                server = self.uvicorn("idle", app, http, env={"BENCH_PLAIN_PORT": str(port)} if plain else None)
                port = port if plain else server.port
                client = subprocess.Popen(
                    procs.client_cmd("idle", "--port", str(port), "--kind", kind, "--count", str(count)),
                    cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                )  # fmt: skip
                assert client.stdin and client.stdout
                try:
                    if client.stdout.readline().strip() != "warm":
                        raise RuntimeError("idle client failed while warming up")
                    time.sleep(0.5)
                    growth = []
                    for half in (count // 2, count - count // 2):
                        rss, fds = server.rss_kib(), server.fds()
                        client.stdin.write("\n")
                        client.stdin.flush()
                        opened = json.loads(client.stdout.readline())["opened"]
                        deadline = time.monotonic() + 10  # established client-side may still wait in the accept queue
                        while server.fds() - fds < opened and time.monotonic() < deadline:
                            time.sleep(0.2)
                        rss, fds = server.rss_kib() - rss, server.fds() - fds
                        if opened < half or fds < opened:
                            raise RuntimeError(f"only {opened}/{half} connections opened, {fds} server fds")
                        growth.append(rss / opened)
                    client.stdin.write("\n")
                    client.stdin.flush()
                    client.wait(30)
                finally:
                    if client.poll() is None:
                        client.kill()
                        client.wait()
            return {"value": growth[1], "first_half": growth[0]}

        return measure

    def proxy(self, section: str) -> None:
        """1 transfer each way through a CONNECT tunnel: the proxy app (splice and transport paths) vs baselines.

        Besides MiB/s each way, ``gib_per_cpu_s``: GiB relayed per CPU-second of the proxy process
        (its user + system time from ``/proc``), the inverse of its CPU time per GiB.
        """
        size = self.s.proxy_bytes
        app_name = "connect_proxy.py" if self.proxy_app == EXAMPLE_PROXY else self.proxy_app
        splice, transport = f"{app_name} (conn.relay, splice)", f"{app_name} (conn.relay, transport)"
        streams_name, go_name = "streams-loop proxy", "Go net/http Hijack + io.Copy"
        with self.servers():
            target = self.go(raw=True, cpu=CLIENT_CPU)
            http = hijack_http("httptools")
            allow = {"CONNECT_PROXY_ALLOW": f"{procs.HOST}:{target.port}"}  # the example is closed by default
            servers = {
                splice: self.uvicorn("proxy", self.proxy_app, http, env=allow),
                transport: self.uvicorn("proxy", self.proxy_app, http, env={**allow, SPLICE_ENV: "0"}),
                streams_name: self.uvicorn("streams", STREAMS_PROXY, http),
            }
            if have("pproxy"):
                port = free_port()
                cmd = [sys.executable, "-m", "bench.pproxy_uvloop", "-l", f"http://{procs.HOST}:{port}"]
                servers["pproxy"] = self.stack.enter_context(serve("pproxy", cmd, port))
            if have("go"):
                servers[go_name] = self.go_proxy(target.port)
            variants = {n: relayed(on_server(srv, bulk(srv.port, "connect", size, target.port)), size)
                        for n, srv in servers.items()}  # fmt: skip
            self.warm({n: bulk(srv.port, "connect", 32 << 20, target.port) for n, srv in servers.items()})
            results = alternate(section, variants, self.s.rounds)
        pairs: list[Pair] = []
        if go_name in results:
            pairs.append((splice, go_name, "gib_per_cpu_s", "GiB/CPU-s", Goal(1.0)))
        pairs.append((splice, transport, "gib_per_cpu_s", "GiB/CPU-s", None))
        for key in ("upload", "download"):
            pairs.append((splice, transport, key, "MiB/s", Goal(1.0)))
            if go_name in results:
                pairs.append((splice, go_name, key, "MiB/s", None))
            if "pproxy" in results:
                pairs.append((splice, "pproxy", key, "MiB/s", Goal(1.0, strict=True)))
            pairs.append((splice, streams_name, key, "MiB/s", None))
        self.rows_for(section, results, pairs)

    def instructions(self, section: str) -> None:
        """Server instructions per keep-alive GET under callgrind (:mod:`bench.instructions`), per parser.

        Instruction counts do not depend on the machine's load: one round is enough.
        """
        if not have("valgrind"):
            raise RuntimeError("valgrind is missing: install it (apt-get install valgrind) or leave out comparison 6")
        for parser in self.parsers:
            variants: dict[str, Measure] = {
                f"{HIJACK_PROTOCOLS[parser]}": counted(parser, ours=True, requests=self.s.instr_requests),
                f"{parser}": counted(parser, ours=False, requests=self.s.instr_requests),
            }
            ours, stock = variants
            results = alternate(f"{section} [{parser}]", variants, 1)
            self.rows_for(section, results, [(ours, stock, "instructions", "instr", Goal(1.02, lower=True))])

    def downloads(self, section: str) -> None:
        """A GET of 16, 64 and 256 MiB over HTTP/2 against HTTP/1.1 on ZttpHijackProtocol, Node's clients.

        Node's ``http2`` client keeps its default 64 KiB windows: the time must grow in proportion
        to the size (:mod:`bench.h2_download`; stock uvicorn parks the whole body in zttp).
        """
        sizes = (16, 64, 256) if self.s.mode == "full" else (16,)
        with self.servers():
            server = self.uvicorn("zttp", "bench.apps:download", "asgi_hijack:ZttpHijackProtocol")
            variants: dict[str, Measure] = {}
            for mib in sizes:
                for label, mode in (("HTTP/2", "get"), ("HTTP/1.1", "get-http1")):
                    variants[f"{label} GET {mib} MiB"] = on_server(server, h2_download.measure(server.port, mode, mib))
            results = alternate(section, variants, self.s.rounds)
        pairs: list[Pair] = [(f"HTTP/2 GET {m} MiB", f"HTTP/1.1 GET {m} MiB", "value", "MiB/s", None) for m in sizes]
        self.rows_for(section, results, pairs)

    def tunnels(self, section: str) -> None:
        """``tunnel()`` on HTTP/2 against HTTP/1.1 hijack: throughput each way and memory per idle tunnel."""
        speeds, memory = tunnels.measure(self.s.proxy_bytes >> 22, self.s.rounds, min(self.s.idle_count, 2000))
        h2, h1 = tunnels.PROTOCOLS
        self.rows_for(section, speeds, [(h2, h1, k, "MiB/s", Goal(tunnels.GOAL)) for k in ("download", "upload")])
        self.rows_for(section, memory, [(h2, h1, "value", "KiB/conn", None)], delta=True)


def counted(parser: str, *, ours: bool, requests: int, workload: str = "get") -> Measure:
    """Measure of the server instructions per exchange of ``workload`` (see :data:`bench.instructions.GOALS`)."""
    if workload == "get":
        return lambda: {"instructions": instructions.per_request(parser, ours, requests, 200, "uvloop")}
    count = {"handshake": instructions.per_handshake, "close": instructions.per_close, "plain": instructions.per_plain}
    return lambda: {"instructions": count[workload](parser, ours, requests, 50, "uvloop")}


def relayed(measure: Measure, size: int) -> Measure:
    """Add ``gib_per_cpu_s`` to an ``on_server`` bulk measure that moved ``size`` bytes each way."""

    def measured() -> Result:
        result = measure()
        result["gib_per_cpu_s"] = 2 * size / (1 << 30) / result["server_cpu_s"]
        return result

    return measured


def go_binary(name: str) -> str:
    """Build ``bench/go/NAME.go`` into ``bench/.build/NAME`` when it is missing or older; return its path."""
    binary, source = ROOT / "bench/.build" / name, ROOT / f"bench/go/{name}.go"
    if not binary.exists() or binary.stat().st_mtime < source.stat().st_mtime:
        binary.parent.mkdir(exist_ok=True)
        subprocess.run(
            ["go", "build", "-o", str(binary), str(source)], check=True, cwd=source.parent, capture_output=True
        )
    return str(binary)


def have(tool: str) -> bool:
    """Whether an optional baseline can run (missing ones are skipped with a note)."""
    if tool == "pproxy":
        return importlib.util.find_spec("pproxy") is not None
    return procs.version([tool, "version" if tool == "go" else "--version"]) != "missing"


def bulk(port: int, preface: str, size: int, target: int = 0) -> Measure:
    """Measure of one ``bench.clients bulk`` run (upload and download MiB/s)."""
    args = ["bulk", "--port", str(port), "--preface", preface, "--bytes", str(size), "--target", str(target)]
    return lambda: run_client(*args)


def handshake(port: int, kind: str, seconds: float, concurrency: int) -> Measure:
    """Measure of one ``bench.clients handshake`` run (connections per second)."""
    args = ["handshake", "--port", str(port), "--kind", kind, "--seconds", str(seconds)]
    return lambda: run_client(*args, "--concurrency", str(concurrency))


def available_parsers(wanted: Sequence[str]) -> list[str]:
    """The parsers whose hijack protocol class exists in asgi_hijack."""
    module = importlib.import_module("asgi_hijack")
    found = [p for p in wanted if hasattr(module, HIJACK_PROTOCOLS[p])]
    for p in set(wanted) - set(found):
        log(f"skipping {p}: asgi_hijack.{HIJACK_PROTOCOLS[p]} does not exist yet")
    return found


def load_average() -> str:
    """The 1, 5 and 15 minute load averages."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(load_before: str) -> dict[str, str]:
    """What the numbers were measured on; ``load_before``: the load average when the run started."""
    import uvicorn

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.machine())  # fmt: skip
    return {
        "cpu": f"{cpu}, {os.cpu_count()} CPUs, server on CPU {procs.SERVER_CPU}, clients on CPU {CLIENT_CPU}"
        + ("" if procs.PINNING else " (NOT pinned)"),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "uvicorn": uvicorn.__version__,
        "uvloop": importlib.metadata.version("uvloop"),
        "go": procs.version(["go", "version"]),
        "node": procs.version(["node", "--version"]),
        "wrk": procs.version(["wrk", "--version"]).split(" Copyright")[0],
        "load": f"{load_before} at the start, {load_average()} at the end (1, 5, 15 min)",
    }


def markdown(runner: Runner, rows: list[Row], meta: dict[str, str], errors: list[str], elapsed: float) -> str:
    """The whole ``docs/benchmarks.md``."""
    s = runner.s
    samples = ["| Comparison | Variant | Per round | Server CPU | Client CPU |", "|---|---|---|---|---|"]
    for section, results in runner.samples.items():
        for name, runs in results.items():
            key = next(k for k in ("value", "upload", "instructions") if k in runs[0])
            per_round = ", ".join(
                report.fmt(r[key]) + (f" / {r['download']:,.0f}" if key == "upload" else "") for r in runs
            )
            cpus = [", ".join(f"{r[k]:.0%}" for r in runs if k in r) or "—" for k in ("server_cpu", "client_cpu")]
            samples.append(f"| {section.split('.')[0]} | {name} | {per_round} | {cpus[0]} | {cpus[1]} |")
    failed = "".join(f"\n**Failed:** `{e}`\n" for e in errors)
    return f"""# Benchmarks

<!-- Generated by `make bench` (python -m bench.run); do not edit by hand. -->

Measured with `{"make bench" if s.mode == "full" else "make bench-quick"}` ({s.mode} mode, {elapsed / 60:.1f} min) on \
{datetime.date.today()}:

- {meta["cpu"]}; {meta["os"]}; load average {meta["load"]}
- Python {meta["python"]}, uvicorn {meta["uvicorn"]}, uvloop {meta["uvloop"]}; {meta["go"]}; Node {meta["node"]};
  {meta["wrk"]}

Absolute numbers drift on a shared 2-core machine, so each comparison runs its variants side by side in
{s.rounds} alternating rounds (A B C, then C B A, ...; ordinary requests: {s.request_rounds}; memory:
{s.memory_rounds}) and reports the medians and their ratio. Servers run pinned to one core, load generators
(`wrk`, and the uvloop clients in `bench/clients.py`) to the other. A row notes when the load generator was
saturated: the baseline may then be faster than shown.

![ours / baseline per comparison, and memory per idle connection](benchmarks.png)

{report.table(rows)}
{failed}
## What is measured

1. **Ordinary requests**: `wrk -t1 -c{s.connections} -d{s.wrk_seconds:g}s` keep-alive GETs of a plain ASGI hello
   world (`bench/apps.py:hello`), access log off: our protocol class vs uvicorn's own, per parser. The server's
   CPU time per request is shown too: it is less sensitive than req/s to other load on the machine.
2. **Hijacked stream throughput**: one connection, {s.bulk_bytes >> 20} MiB client→server (`sink`) then
   server→client (`source`), served by the same coroutine (`bench/apps.py:serve_stream`) on the hijacked
   connection's `reader`/`writer` and on an `asyncio.start_server` started by the app in the same uvicorn
   process and loop; and by a Go `net/http` server after `Hijack()` (`bench/go/hijack_server.go`).
3. **Hijack handshakes**: {s.connections} concurrent clients for {s.handshake_seconds:g} s, each looping over: new TCP
   connection, `Upgrade: tcp` request, `101`, one 64-byte echo round trip, close. uvicorn's WebSocket path
   (stock protocol class, default `--ws`) does the same with a WebSocket echo of one 64-byte message. Go and
   Node (`bench/node/upgrade_server.js`, `server.on('upgrade')`) serve the `Upgrade: tcp` variant. What the
   hijack costs by itself: the same loop against stock uvicorn answering a `Connection: close` GET of
   `bench/apps.py:hello` instead (new connection, request, response, close), on the same parser; and the
   same two exchanges one after the other from one client, {s.instr_handshakes:,} each after 50 unmeasured,
   with the server under callgrind (`python -m bench.instructions --workload handshake`, as in 6): server
   instructions per exchange, which do not depend on the machine's load. Also under callgrind, what a new
   connection costs on our class: the same `Connection: close` GET on both (`--workload close`; goal as for
   an ordinary request in 6); and, for scale, the handshake's echo alone (connect, `echo` and 64 bytes, their
   echo, close) on a plain `asyncio.start_server` server on the same loop, with no HTTP (`--workload plain`):
   what asyncio streams cost by themselves, against the stock `Connection: close` GET. `ZttpHijackProtocol`
   also tells HTTP/2 from HTTP/1.1 on each new connection, which stock `--http zttp` (HTTP/1.1 only) does
   not; it does so in the HTTP/1.1 protocol itself, where stock `--http zttp --http2` puts a dispatcher in
   front of it that costs about 10% more per new connection than `--http zttp`.
4. **Memory**: a client opens {s.idle_count:,} idle connections in two halves (after a warm-up); the row is
   the growth of the server's RSS over the second half, per connection (the first half takes up what the
   allocators hold free after start-up, which depends on what each server imported and compiled: without it
   stock httptools, which imports less, looked 0.3 KiB cheaper per connection than it is). Hijacked (the app
   awaits a command on `conn.reader`) vs keep-alive on stock uvicorn; also keep-alive on our protocol class,
   and idle `asyncio.start_server` connections running the same coroutine (what the streams and the app task
   cost by themselves).
5. **CONNECT proxy**: {s.proxy_bytes >> 20} MiB each way through a CONNECT tunnel to a Go upstream (on the client
   core), with the proxy app `{runner.proxy_app}` (`examples/connect_proxy.py` joins the tunnel with
   `conn.relay()`, `asgi_hijack.relay`), once on the splice path (`splice(2)` through a pipe, the default between
   plain TCP sockets on Linux) and once on the transport path (`ASGI_HIJACK_SPLICE=0`, forwarding in
   `data_received`); with a Go `net/http` proxy doing `Hijack()` plus `io.Copy` both ways, which splices too
   (`bench/go/connect_proxy.go`); with `pproxy` (on uvloop); and with an asyncio streams loop
   (`read`/`write`/`drain`, 64 KiB chunks: `bench/apps.py:connect_proxy_streams`). GiB/CPU-s is the GiB relayed
   (both ways) per CPU-second of the proxy process (user + system, from `/proc`): the inverse of its CPU time
   per GiB.
6. **Instructions per ordinary request**: the GETs of 1, one after the other on one keep-alive connection, with the
   server under `valgrind --tool=callgrind` (`python -m bench.instructions`): after 200 warm-up requests the
   counters are dumped, then {s.instr_requests:,} requests are counted, less what the idle server counts in the same
   time (uvicorn's main-loop tick). Unlike CPU time, instruction counts do not depend on other load on the
   machine, so they show small differences reliably (one round is enough).
7. **HTTP/2 downloads**: one GET of 16, 64 and 256 MiB (`bench/apps.py:download`, one `http.response.body` per
   MiB) on `ZttpHijackProtocol`, by Node's `http2` client on its default settings (64 KiB windows) and by Node's
   `http` client over HTTP/1.1 (`bench/h2_download.py`, `tests/node/h2_client.mjs`), a fresh connection each.
   Time must grow in proportion to the size: `send()` waits for the client's window (stock uvicorn parks the
   whole body in zttp, which drains it in quadratic time: 3.4 s for 16 MiB, over 30 s for 64 MiB).
8. **Tunnels**: `tunnel()` on HTTP/2 (an extended CONNECT stream, Node's `http2` client) against `tunnel()` on
   HTTP/1.1 (a hijacked `Upgrade: tcp` connection, Node's `net`), {s.proxy_bytes >> 22} MiB each way through
   one fresh tunnel per round, on one `ZttpHijackProtocol` server (`bench/tunnels.py`); goal: HTTP/2 at least
   half the HTTP/1.1 figure. Memory: the server's RSS growth per idle tunnel while
   {min(s.idle_count, 2000):,} are open (HTTP/2: 100 streams per connection).

## Profiling

To see where a server spends its time, run it under py-spy with the same pinning and load, e.g.:

```sh
taskset -c 0 py-spy record --format raw -o prof.txt -- python -m uvicorn bench.apps:hello \\
    --http asgi_hijack:HttpToolsHijackProtocol --loop uvloop --no-access-log --port 8000 &
taskset -c 1 wrk -t1 -c50 -d10s http://127.0.0.1:8000/; kill -INT %1
```

## Samples

Per round: the primary metric (bulk rows: upload / download MiB/s; memory: KiB per connection) and the CPU
utilisation of the server and of the load generator.

{chr(10).join(samples)}
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Parse options, run the selected comparisons, report; return the exit status."""
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds-scale runs and smaller transfers")
    parser.add_argument("--only", default="1,2,3,4,5,6,7,8", help="comparisons to run, e.g. 1,3 (default: all)")
    parser.add_argument("--rounds", type=int, help="alternating rounds per comparison")
    parser.add_argument("--parsers", default="httptools,h11,zttp", help="parsers to compare, first is the main one")
    parser.add_argument("--proxy-app", default=EXAMPLE_PROXY, help=f"CONNECT proxy app (default: {EXAMPLE_PROXY})")
    parser.add_argument("--docs", type=Path, help="write benchmarks.md/.png here (default: docs/ in full mode)")
    parser.add_argument("--no-check", action="store_true", help="exit 0 even when a goal is missed")
    parser.add_argument("--verbose", action="store_true", help="log every round's numbers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")

    settings = QUICK if args.quick else FULL
    if args.rounds:
        rounds = {"rounds": args.rounds, "memory_rounds": args.rounds, "request_rounds": args.rounds}
        settings = Settings(**{**asdict(settings), **rounds})
    docs = args.docs or (None if args.quick else ROOT / "docs")
    nofile = procs.raise_nofile(settings.idle_count + 4096)
    if nofile < settings.idle_count + 1000:
        settings = Settings(**{**asdict(settings), "idle_count": nofile - 1000})
        log(f"open-files limit {nofile}: memory comparison uses {settings.idle_count} connections")
    runner = Runner(settings, available_parsers(args.parsers.split(",")), args.proxy_app)
    comparisons = {
        1: runner.ordinary,
        2: runner.throughput,
        3: runner.handshakes,
        4: runner.memory,
        5: runner.proxy,
        6: runner.instructions,
        7: runner.downloads,
        8: runner.tunnels,
    }
    errors: list[str] = []
    start, load_before = time.monotonic(), load_average()
    for number in sorted({int(n) for n in args.only.split(",")}):
        section, begun = SECTIONS[number], time.monotonic()
        try:
            comparisons[number](section)
        except Exception as exc:
            traceback.print_exc()
            errors.append(f"{section}: {exc!r}"[:500])
        log(f"{section}: {time.monotonic() - begun:.0f} s")
    elapsed = time.monotonic() - start

    rows = runner.rows
    print(report.table(rows))
    for error in errors:
        print(f"\nFAILED {error}")
    if docs is not None:
        docs.mkdir(parents=True, exist_ok=True)
        page = docs / "benchmarks.md"
        kept = page.read_text() if page.exists() else ""
        page.write_text(markdown(runner, rows, machine(load_before), errors, elapsed))
        for kept_section in KEPT_SECTION.finditer(kept):  # written by bench.proxies, bench.balancer...: keep them
            name = kept_section.group(1)
            proxies.write(kept_section.group(0), page, (f"<!-- {name}:start -->", f"<!-- {name}:end -->"))
        if rows:
            report.chart(rows, docs / "benchmarks.png", f"asgi-hijack benchmarks ({settings.mode} mode)")
        log(f"wrote {docs / 'benchmarks.md'} and {docs / 'benchmarks.png'}")
    raw = ROOT / "bench/.build/last-run.json"
    raw.parent.mkdir(exist_ok=True)
    raw.write_text(json.dumps({"settings": asdict(settings), "samples": runner.samples}, indent=1))
    log(f"done in {elapsed:.0f} s")
    if errors:
        return 2
    missed = [row for row in rows if row.passed is False]
    return 1 if missed and not args.no_check else 0


if __name__ == "__main__":
    sys.exit(main())
