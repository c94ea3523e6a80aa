"""WebSocket conformance: the Autobahn test suite against examples/websocket_by_hand.py.

The suite's fuzzing client (``wstest -m fuzzingclient``, Python 2.7 only) runs each selected
case against every target: the example on each of our protocol classes (``--ws none``), and
stock uvicorn's own WebSockets (``--ws websockets``) with a minimal echo app,
:func:`stock_echo`, for comparison. ``docs/conformance.md`` is written from its report.

    python -m tools.conformance                          # cases 1-7, 10, 12, 13; writes nothing
    python -m tools.conformance --write docs/conformance.md
    python -m tools.conformance --cases 1,5,6,7 --targets h11,httptools

The suite is installed once (:func:`install_suite`) under ``AUTOBAHN_HOME`` (default
``~/.cache/asgi-hijack/autobahn``): ``pip install --user`` of the pinned :data:`PINS`, from
PyPI, by a Python 2.7 (``AUTOBAHN_PYTHON``, else ``python2.7`` on PATH, else pyenv's newest
2.7). Exits non-zero when one of our targets fails a case or has more wrong close codes
than stock uvicorn.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import uvicorn

from asgi_hijack.testing import protocol_class

ROOT = Path(__file__).resolve().parents[1]
SUITE = "autobahntestsuite==0.8.2"
PINS = (  # the suite and every dependency, as resolved for Python 2.7; installed without resolving
    SUITE,
    "autobahn==0.10.9",
    "Twisted==20.3.0",
    "zope.interface==5.5.2",
    "txaio==2.1.0",
    "six==1.17.0",
    "Automat==22.10.0",
    "attrs==21.4.0",
    "constantly==15.1.0",
    "hyperlink==21.0.0",
    "idna==2.10",
    "incremental==22.10.0",
    "PyHamcrest==1.10.1",
    "klein==20.6.0",
    "Tubes==0.2.1",
    "Werkzeug==1.0.1",
    "Jinja2==2.11.3",
    "MarkupSafe==1.1.1",
    "enum34==1.1.10",
    "typing==3.10.0.0",
    "unittest2==1.1.0",
    "linecache2==1.0.0",
    "traceback2==1.4.0",
    "ujson==2.0.3",
    "wsaccel==0.6.6",
    "pyOpenSSL==21.0.0",
    "cryptography==3.3.2",
    "cffi==1.15.1",
    "pycparser==2.21",
    "ipaddress==1.0.23",
    "service-identity==21.1.0",
    "pyasn1==0.5.1",
    "pyasn1-modules==0.3.0",
)
ALL_CASES = ("1", "2", "3", "4", "5", "6", "7", "10", "12", "13")
"""Every section but 9 (performance) and 11 (not in the suite)."""
CI_CASES = ("1", "5", "6", "7")
"""Framing, fragmentation, UTF-8 and closing: the short run of tests/test_conformance.py."""
STOCK = "stock"
QUIET: dict[str, Any] = {"capture_output": True, "text": True, "check": False}


@dataclass(frozen=True)
class Target:
    """A server to test: the ``app`` served by uvicorn with ``http`` and ``ws``."""

    agent: str
    app: str
    http: str
    ws: str


EXAMPLE = "examples.websocket_by_hand:app"
TARGETS = {
    "h11": Target("H11HijackProtocol", EXAMPLE, "asgi_hijack:H11HijackProtocol", "none"),
    "httptools": Target("HttpToolsHijackProtocol", EXAMPLE, "asgi_hijack:HttpToolsHijackProtocol", "none"),
    "zttp": Target("ZttpHijackProtocol", EXAMPLE, "asgi_hijack:ZttpHijackProtocol", "none"),
    STOCK: Target("stock uvicorn (--ws websockets)", "tools.conformance:stock_echo", "auto", "websockets"),
}


async def stock_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echo every WebSocket message through uvicorn's own WebSocket support."""
    assert scope["type"] == "websocket", "serve it with --lifespan off"
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    while (message := await receive())["type"] == "websocket.receive":
        data = {key: message[key] for key in ("text", "bytes") if message.get(key) is not None}
        await send({"type": "websocket.send", **data})


# -- the suite ------------------------------------------------------------------------------------


def suite_home() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "asgi-hijack" / "autobahn"
    return Path(os.environ.get("AUTOBAHN_HOME") or default)


def python27() -> str:
    """A Python 2.7 interpreter: ``AUTOBAHN_PYTHON``, ``python2.7`` on PATH, or pyenv's newest 2.7."""
    candidates = [os.environ.get("AUTOBAHN_PYTHON") or "", shutil.which("python2.7") or ""]
    if shutil.which("pyenv"):
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        builds = [path for path in Path(root, "versions").glob("2.7.*") if path.name.split(".")[2].isdigit()]
        builds.sort(key=lambda path: int(path.name.split(".")[2]), reverse=True)
        candidates += [str(build / "bin" / "python") for build in builds]
    for candidate in filter(None, candidates):
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2] == (2, 7))"], **QUIET)
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return candidate
    raise SystemExit(
        "Autobahn's fuzzing client needs Python 2.7, and none was found: `pyenv install 2.7.18`, or set "
        "AUTOBAHN_PYTHON to a python2.7 executable."
    )


def install_suite() -> Path:
    """Install the pinned suite under :func:`suite_home` unless it is there already; return ``wstest``."""
    home = suite_home()
    wstest, stamp = home / "bin" / "wstest", home / "installed.txt"
    wanted = "\n".join(PINS) + "\n"
    if wstest.exists() and stamp.exists() and stamp.read_text() == wanted:
        return wstest
    home.mkdir(parents=True, exist_ok=True)
    command = [python27(), "-m", "pip", "install", "--user", "--no-deps", "--no-warn-script-location", *PINS]
    env = {**os.environ, "PYTHONUSERBASE": str(home), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    result = subprocess.run(command, env=env, timeout=900, **QUIET)
    if result.returncode != 0 or not wstest.exists():
        raise SystemExit(f"Installing the Autobahn test suite failed ({' '.join(command)}):\n{result.stderr[-3000:]}")
    stamp.write_text(wanted)
    return wstest


# -- servers --------------------------------------------------------------------------------------


def serve(name: str) -> None:
    """``python -m tools.conformance --serve NAME``: print ``listening PORT``, serve the target until a signal."""
    target = TARGETS[name]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    http: Any = target.http if target.http == "auto" else protocol_class(target.http)
    config = uvicorn.Config(target.app, http=http, ws=target.ws, lifespan="off", log_level="warning")
    print(f"listening {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


@contextmanager
def running(name: str, log: Path) -> Iterator[int]:
    """The target served in a process of its own; yields its port."""
    with open(log, "wb") as stderr:
        command = [sys.executable, "-m", "tools.conformance", "--serve", name]
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr)
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            raise SystemExit(f"The {name} server did not start: {log.read_text(errors='replace')}")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# -- running and summing up -----------------------------------------------------------------------

Results = dict[str, dict[str, dict[str, Any]]]
"""Agent, then case id (``"6.4.1"``), then the case's entry of the suite's ``index.json``."""
OUTCOMES = ("OK", "non-strict", "failed", "wrong close")


def run(names: Sequence[str], cases: Sequence[str], *, jobs: int = 2, timeout: float = 10800.0) -> Results:
    """Run the fuzzing client on ``cases`` (sections) against each target, ``jobs`` targets at a time."""
    wstest = install_suite()
    with tempfile.TemporaryDirectory(prefix="autobahn-") as folder, ThreadPoolExecutor(jobs) as pool:
        runs = [pool.submit(run_target, wstest, name, cases, Path(folder, name), timeout) for name in names]
        return {agent: report for done in runs for agent, report in done.result().items()}


def run_target(wstest: Path, name: str, cases: Sequence[str], work: Path, timeout: float) -> Results:
    """One target in a process of its own, one fuzzing client for it; the suite's ``index.json``."""
    work.mkdir()
    with running(name, work / "server.log") as port:
        spec = {
            "outdir": str(work / "reports"),
            "servers": [{"agent": TARGETS[name].agent, "url": f"ws://127.0.0.1:{port}/ws"}],
            "cases": [f"{section}.*" for section in cases],
            "exclude-cases": [],
            "exclude-agent-cases": {},
        }
        (work / "spec.json").write_text(json.dumps(spec))
        command = [str(wstest), "-m", "fuzzingclient", "-s", "spec.json"]
        env = {**os.environ, "PYTHONUSERBASE": str(suite_home())}
        try:
            done = subprocess.run(command, cwd=work, env=env, timeout=timeout, **QUIET)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"The Autobahn fuzzing client did not finish {name} within {timeout:g}s") from None
    index = work / "reports" / "index.json"
    if done.returncode != 0 or not index.exists():
        raise SystemExit(f"The Autobahn fuzzing client failed on {name}:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    results: Results = json.loads(index.read_text())
    return results


def outcome(case: dict[str, Any]) -> str:
    """One of :data:`OUTCOMES` for a case (informational cases count as OK, unimplemented ones as failed)."""
    behaviours = {case["behavior"], case["behaviorClose"]}
    if behaviours & {"FAILED", "UNIMPLEMENTED"}:
        return "failed"
    if "WRONG CODE" in behaviours:
        return "wrong close"
    return "non-strict" if "NON-STRICT" in behaviours else "OK"


def section_key(case_id: str) -> tuple[int, ...]:
    return tuple(int(part) for part in case_id.split("."))


def tally(cases: dict[str, dict[str, Any]]) -> dict[str, Counter[str]]:
    """Outcome counts per section, and ``"all"``."""
    counts: dict[str, Counter[str]] = {}
    for case_id, case in sorted(cases.items(), key=lambda item: section_key(item[0])):
        for section in (case_id.split(".")[0], "all"):
            counts.setdefault(section, Counter())[outcome(case)] += 1
    return counts


def problems(results: Results) -> list[str]:
    """Why the run fails: a failed case on our side, or more wrong close codes than stock uvicorn."""
    stock = results.get(TARGETS[STOCK].agent)
    allowed = tally(stock)["all"]["wrong close"] if stock else 0
    found = []
    for agent, cases in results.items():
        if agent == TARGETS[STOCK].agent:
            continue
        bad = sorted((c for c in cases if outcome(cases[c]) == "failed"), key=section_key)
        if bad:
            found.append(f"{agent}: {len(bad)} failed ({', '.join(bad[:20])})")
        if (wrong := tally(cases)["all"]["wrong close"]) > allowed:
            found.append(f"{agent}: {wrong} wrong close codes, stock uvicorn {allowed}")
    return found


def markdown(results: Results) -> str:
    """docs/conformance.md: per section, the counts of every agent."""
    agents = list(results)
    tallies = {agent: tally(cases) for agent, cases in results.items()}
    sections = [*sorted({s for t in tallies.values() for s in t if s != "all"}, key=int), "all"]
    lines = [
        "# WebSocket conformance",
        "",
        "<!-- Written by `make conformance` (tools/conformance.py) from the Autobahn report; do not edit. -->",
        "",
        f"The [Autobahn test suite](https://github.com/crossbario/autobahn-testsuite)'s fuzzing client "
        f"({SUITE}) against `examples/websocket_by_hand.py` on each of our protocol classes (`--ws none`), "
        "and against stock uvicorn's own WebSockets (`--ws websockets`, an echo app). "
        f"Sections {', '.join(sections[:-1])} (9 is performance; 12 and 13 use permessage-deflate). "
        f"uvicorn {version('uvicorn')}, wsproto {version('wsproto')}, websockets {version('websockets')}.",
        "",
        "Each cell: OK / non-strict / failed / wrong close code. Non-strict: accepted, but not as early "
        "or as exactly as the RFC prefers (for example failing on invalid UTF-8 only at the end of a "
        "frame). Informational cases count as OK, unimplemented ones as failed.",
        "",
        "| Section | " + " | ".join(agents) + " |",
        "| --- |" + " --- |" * len(agents),
    ]
    for section in sections:
        cells = [" / ".join(str(tallies[a].get(section, Counter())[o]) for o in OUTCOMES) for a in agents]
        label = "**all**" if section == "all" else section
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    for agent in agents:
        odd = sorted((c for c, case in results[agent].items() if outcome(case) != "OK"), key=section_key)
        listed = ", ".join(f"{c} ({outcome(results[agent][c])})" for c in odd) or "none"
        lines.append(f"* {agent}, cases not OK: {listed}.")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default=",".join(ALL_CASES), help="sections, comma-separated")
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"of {', '.join(TARGETS)}")
    parser.add_argument("--write", type=Path, help="write the summary here (docs/conformance.md)")
    parser.add_argument("--jobs", type=int, default=2, help="targets tested at once (default: 2)")
    parser.add_argument("--serve", choices=sorted(TARGETS), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    names = [name for name in args.targets.split(",") if name]
    unknown = set(names) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}: choose from {', '.join(TARGETS)}")
    cases = [section for section in re.split(r"[,\s]+", args.cases) if section]
    results = run(names, cases, jobs=args.jobs)
    text = markdown(results)
    print(text)
    if args.write:
        args.write.write_text(text)
    if found := problems(results):
        raise SystemExit("Conformance problems:\n" + "\n".join(found))


if __name__ == "__main__":
    main()
