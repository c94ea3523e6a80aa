"""``python -m soak``: the long reliability run; writes ``docs/reliability.md`` from what it measured.

Phases, each with its own time bound (the load and SIGTERM phases by their durations plus fixed
margins, the test phase by what is left of ``--budget``, at least 120 s, and pytest's per-test
timeout):

1. load: per parser, a server process (``tests.helpers.ServerProcess``), ``--connections`` hijacked
   connections held at once, echoing random-sized payloads for ``--seconds``, every
   byte compared; the server's ``/proc/PID/fd`` counted before, while held, and after;
2. SIGTERM: per parser and owner behaviour, ``--sigterm-connections`` connections
   streaming when the server gets SIGTERM (``--grace`` seconds of graceful shutdown);
3. the reliability test modules (faults, smuggling, slow input, fuzz with
   ``--fuzz-examples`` examples per protocol class), run by pytest, counted from its
   JUnit report and from the figures the tests record (``tests.helpers.record``).

Exit status: 0 when every check passed, 1 otherwise. ``make soak`` runs it with the defaults
(about 5 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path

from soak.report import FaultModule, LoadRow, Report, SigtermRow, render
from tests.helpers import PARSERS, ROOT, STATS_ENV, LoadResult, ServerProcess, echo_load, raise_nofile

TEST_MODULES = [
    "tests/test_reliability_faults.py",
    "tests/test_reliability_smuggling.py",
    "tests/test_reliability_slow.py",
    "tests/test_reliability_fuzz.py",
]


def run_load(parser: str, connections: int, seconds: float, seed: int, loop: str) -> LoadRow:
    with ServerProcess(parser, loop=loop) as server:
        before = server.fds()
        held: list[int] = []
        result = asyncio.run(
            echo_load(
                "127.0.0.1",
                server.port,
                connections=connections,
                seconds=seconds,
                seed=seed,
                on_hijacked=lambda: held.append(server.fds()),
                finish_timeout=120,
            )
        )
        after = server.wait_fds(before, timeout=30)
    problems = server.problems()
    failures = result.failures[:5] + problems[:5]
    if result.bytes_verified != result.bytes_sent or result.ends != {"eof": connections}:
        failures.append(f"verified {result.bytes_verified} of {result.bytes_sent} bytes; ends {dict(result.ends)}")
    if not held or held[0] < before + connections:
        failures.append(f"server held {held[0] - before if held else 0} descriptors for {connections} connections")
    if after != before:
        failures.append(f"{after - before} descriptors left open")
    return LoadRow(parser, result.hijacked, result.seconds, result.bytes_verified, result.chunks, before,
                   held[0] if held else 0, after, failures)  # fmt: skip


def run_sigterm(parser: str, connections: int, graceful: bool, grace: int, seed: int, loop: str) -> SigtermRow:
    with ServerProcess(parser, grace=grace, loop=loop) as server:
        signalled: list[float] = []

        def terminate() -> None:
            signalled.append(time.monotonic())
            server.signal(signal.SIGTERM)

        result: LoadResult = asyncio.run(
            echo_load(
                "127.0.0.1",
                server.port,
                connections=connections,
                seconds=5,
                seed=seed,
                graceful=graceful,
                on_mark=terminate,
                finish_timeout=grace + 60,
            )
        )
        returncode = server.wait(grace + 60)
        exited = time.monotonic() - signalled[0] if signalled else 0.0
    failures = result.failures[:5] + server.problems()[:5]
    if returncode not in (0, -signal.SIGTERM):
        failures.append(f"exit status {returncode}")
    if sum(result.ends.values()) != connections or not set(result.ends) <= {"eof", "reset"}:
        failures.append(f"connection ends {dict(result.ends)}")
    if not graceful and not result.bytes_verified_after_mark:
        failures.append("no traffic served during the grace period")
    return SigtermRow(parser, "finish on the notice" if graceful else "ignore the notice", result.hijacked,
                      result.bytes_verified, result.bytes_verified_after_mark, dict(result.ends), returncode,
                      exited, failures)  # fmt: skip


def run_tests(fuzz_examples: int, timeout: float) -> tuple[list[FaultModule], list[dict[str, object]], str]:
    with tempfile.TemporaryDirectory() as tmp:
        junit, stats = Path(tmp) / "junit.xml", Path(tmp) / "stats.jsonl"
        env = {
            **os.environ,
            "ASGI_HIJACK_FUZZ_EXAMPLES": str(fuzz_examples),
            STATS_ENV: str(stats),
        }
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *TEST_MODULES]
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
            tail = "\n".join(done.stdout.splitlines()[-15:])
        except subprocess.TimeoutExpired:
            tail = f"pytest did not finish within {timeout:.0f}s"
        modules: dict[str, FaultModule] = {}
        if junit.exists():
            for case in ET.parse(junit).iter("testcase"):
                name = case.get("classname", "").rsplit(".", 1)[-1]
                module = modules.setdefault(name, FaultModule(name))
                if case.find("failure") is not None or case.find("error") is not None:
                    module.failed.append(case.get("name", "?"))
                elif case.find("skipped") is None:
                    module.passed += 1
        records = [json.loads(line) for line in stats.read_text().splitlines()] if stats.exists() else []
    return list(modules.values()), records, tail


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m soak", description=__doc__.splitlines()[0])
    parser.add_argument("--parsers", default=",".join(PARSERS), help=f"comma-separated: {','.join(PARSERS)}")
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60.0, help="load duration per parser")
    parser.add_argument("--sigterm-connections", type=int, default=1000)
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio", help="the server's event loop")
    parser.add_argument("--grace", type=int, default=3, help="--timeout-graceful-shutdown for the SIGTERM phase")
    parser.add_argument("--fuzz-examples", type=int, default=1500, help="hypothesis examples per protocol class")
    parser.add_argument("--skip-tests", action="store_true", help="only the load and SIGTERM phases")
    parser.add_argument("--budget", type=float, default=1500.0, help="seconds; the test phase gets what is left")
    parser.add_argument("--output", default=str(ROOT / "docs" / "reliability.md"))
    parser.add_argument("--no-docs", action="store_true", help="print the report, do not write --output")
    args = parser.parse_args(argv)
    parsers = [p for p in args.parsers.split(",") if p]
    started = time.monotonic()
    raise_nofile(2 * max(args.connections, args.sigterm_connections) + 512)
    report = Report(
        started=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        machine=f"{os.cpu_count()} CPUs, {platform.system()} {platform.release()}, Python {platform.python_version()}, "
        f"uvicorn {version('uvicorn')}, {args.loop} event loop in the server",
        command="python -m soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        seconds=args.seconds,
    )
    for index, name in enumerate(parsers):
        print(f"load: {name}, {args.connections} connections, {args.seconds:.0f}s", flush=True)
        report.load.append(run_load(name, args.connections, args.seconds, seed=index, loop=args.loop))
        print(f"  {asdict(report.load[-1])}", flush=True)
    for index, name in enumerate(parsers):
        for graceful in (False, True):
            print(f"sigterm: {name}, {args.sigterm_connections} connections, graceful={graceful}", flush=True)
            row = run_sigterm(name, args.sigterm_connections, graceful, args.grace, seed=index, loop=args.loop)
            report.sigterm.append(row)
            print(f"  {asdict(report.sigterm[-1])}", flush=True)
    if not args.skip_tests:
        left = max(120.0, args.budget - (time.monotonic() - started))
        print(f"tests: {', '.join(TEST_MODULES)} ({args.fuzz_examples} fuzz examples per class)", flush=True)
        report.modules, report.records, report.pytest_tail = run_tests(args.fuzz_examples, left)
    report.duration = time.monotonic() - started
    text = render(report)
    if args.no_docs:
        print(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
        print(f"wrote {args.output}")
    print(report.summary())
    return 0 if report.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
