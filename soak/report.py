"""The soak run's figures and their rendering as ``docs/reliability.md``."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

BEHAVIOUR = """\
## What the server is held to

These are the behaviours the tests check on h11, httptools and zttp alike.

* **Nothing lost, nothing reordered.** Every byte a client sends through a hijacked connection
  comes back in order: each echoed byte is compared with the byte sent at that offset, and a
  CRC-32 of each direction is compared at the end.
* **No descriptor kept.** Once the clients have closed, the server process holds exactly the
  descriptors it held before the load (counted in its `/proc/PID/fd`: the server runs in a
  process of its own so that the client's sockets are not counted with it).
* **Who closes a hijacked connection.** The app that hijacked it (`aclose()`, `async with`). A
  connection the app drops without closing (it returns or raises with the connection open and
  hands it to no other task) is closed when its last reference goes away, which in CPython is
  at once, by reference counting, when the request's task finishes or the exception holding
  its frame is released; Python then emits `ResourceWarning: unclosed <...Writer ...>`, as for
  a socket. The server itself closes hijacked connections only at shutdown: owners are notified
  (`conn.shutdown_requested`) and whatever is still open after `--timeout-graceful-shutdown`
  is aborted. A connection handed to another task is never closed by the server while that
  task holds it.
* **Resets and half-closes.** A client reset before `hijack()` makes it raise
  `ClientDisconnectedError` (httptools, zttp; on h11 only if the app called `receive()`,
  because uvicorn's h11 protocol stops reading after a complete request, so there `hijack()`
  succeeds and the first read raises `ConnectionResetError`). A reset after the hijack reaches
  the owner as `ConnectionResetError` or end of stream. A half-close before or after the hijack
  is end of stream to the owner, whose writes still reach the client.
* **Apps that raise.** Before the hijack, or inside `hijack()` before it commits: uvicorn's 500.
  After it: the exception is logged and nothing is written to the connection.
* **SIGTERM under traffic.** Owners keep being served through the grace period; owners that
  act on the notice close cleanly; the rest are aborted when it ends; every client receives
  an exact prefix of what it sent; the process exits without an error in its log.
* **No smuggling.** A request with `Upgrade` or method `CONNECT` that the app does not hijack
  is answered and the connection closed; the bytes after it (and after its declared body) are
  discarded, never parsed, whether they came with the request or after the response. A `2xx`
  to `CONNECT` or a `101` sent as a plain response, without a hijack, switches protocols for
  any proxy in front (RFC 9110 9.3.6, 15.2.2), so it also ends HTTP on the connection: closed
  after the response. After a hijack the server writes no byte, whatever a middleware sends or
  raises (late responders, error pages, timeouts answering from another task, Starlette).
* **Slow and partial input.** A request head must be complete within the head timeout
  (10 s by default; `ASGI_HIJACK_HEAD_TIMEOUT` or `HijackServerMixin.head_timeout`), counted
  from when the server starts waiting for it (a new connection, or a keep-alive response
  sent) and not restarted by trickling bytes. Then the connection is closed, after a `408`
  when part of a head had arrived. It never cuts a request whose head is complete (slow app,
  slow body) nor a hijacked connection.
* **Hostile input.** Generated request heads and trailing bytes never raise in the server,
  never hold a connection past the timeouts, are rejected with a 4xx or a close, and never
  stop the server from serving the next connection.
"""


@dataclass
class LoadRow:
    parser: str
    connections: int
    seconds: float
    bytes_checked: int
    payloads: int
    fds_before: int
    fds_held: int
    fds_after: int
    failures: list[str] = field(default_factory=list)


@dataclass
class SigtermRow:
    parser: str
    owners: str
    connections: int
    bytes_checked: int
    bytes_after_signal: int
    ends: dict[str, int]
    returncode: int
    exit_seconds: float
    failures: list[str] = field(default_factory=list)


@dataclass
class FaultModule:
    name: str
    passed: int = 0
    failed: list[str] = field(default_factory=list)


@dataclass
class Report:
    started: str
    machine: str
    command: str
    seconds: float
    duration: float = 0.0
    load: list[LoadRow] = field(default_factory=list)
    sigterm: list[SigtermRow] = field(default_factory=list)
    modules: list[FaultModule] = field(default_factory=list)
    records: list[dict[str, object]] = field(default_factory=list)
    pytest_tail: str = ""

    def failures(self) -> list[str]:
        found = [f"load {r.parser}: {f}" for r in self.load for f in r.failures]
        found += [f"sigterm {r.parser} ({r.owners}): {f}" for r in self.sigterm for f in r.failures]
        found += [f"{m.name}::{name}" for m in self.modules for name in m.failed]
        return found

    def ok(self) -> bool:
        return not self.failures() and (bool(self.modules) or not self.pytest_tail)

    def fuzz(self) -> list[dict[str, object]]:
        return [r for r in self.records if r.get("kind") == "fuzz"]

    def summary(self) -> str:
        failures = self.failures()
        head = "all checks passed" if not failures else f"{len(failures)} checks failed"
        return "\n".join([f"soak: {head} in {self.duration:.0f}s", *(f"  FAILED {f}" for f in failures)])


def _mb(count: int) -> str:
    return f"{count / 1e9:,.2f} GB" if count >= 1e9 else f"{count / 1e6:,.1f} MB"


def _int(value: object) -> int:
    return int(value) if isinstance(value, int | float | str) else 0


def render(report: Report) -> str:
    failures = report.failures()
    faults = [m for m in report.modules if "fuzz" not in m.name]
    cases = sum(m.passed + len(m.failed) for m in faults)
    cases_failed = sum(len(m.failed) for m in faults)
    fuzz_cases = [m for m in report.modules if "fuzz" in m.name]
    fuzz_failed = sum(len(m.failed) for m in fuzz_cases)
    fuzz = report.fuzz()
    fuzz_examples = sum(_int(r.get("examples")) for r in fuzz)
    load_bytes = sum(r.bytes_checked for r in report.load)
    sigterm_bytes = sum(r.bytes_checked for r in report.sigterm)
    held = max((r.connections for r in report.load), default=0)
    leaked = sum(r.fds_after - r.fds_before for r in report.load)
    lines = [
        "# Reliability",
        "",
        "<!-- Written by `make soak` (python -m soak) from the run described below; do not edit by hand. -->",
        "",
        f"Run of {report.started} on {report.machine}: `{report.command}`, {report.duration:.0f} s in all.",
        "",
        "## Summary",
        "",
        "| What | Figure |",
        "| --- | --- |",
        f"| Hijacked connections held at once | {held:,} per parser, {len(report.load)} parsers |",
        f"| Load per parser | {report.seconds:.0f} s of random-sized payloads (1 B to 16 KiB) on every connection |",
        f"| Bytes echoed and checked in order | {_mb(load_bytes)} under load, {_mb(sigterm_bytes)} around SIGTERM |",
        f"| Descriptors left open in the server after the clients closed | {leaked} |",
        f"| Fault, smuggling and slow-input cases (test cases, all parsers) | {cases - cases_failed} passed, "
        f"{cases_failed} failed |",
        f"| Fuzz examples run (hypothesis, all protocol classes) | {fuzz_examples:,} "
        f"({sum(m.passed for m in fuzz_cases)} fuzz test cases passed, {fuzz_failed} failed) |",
        f"| Result | {'every check passed' if not failures else f'{len(failures)} checks failed (listed below)'} |",
        "",
        "## Load: hijacked echo connections",
        "",
        "Each connection sends `GET /echo` with `Upgrade` and its first payload in the same write (so it",
        "goes through the pending buffer), is hijacked with a `101`, then streams payloads while reading",
        "the echo; all connections are hijacked before any streams.",
        "",
        "| Parser | Connections held | Seconds | Bytes checked | Payloads | Server fds before / held / after "
        "| Result |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for r in report.load:
        result = "ok" if not r.failures else "; ".join(r.failures[:3])
        lines.append(
            f"| {r.parser} | {r.connections:,} | {r.seconds:.1f} | {_mb(r.bytes_checked)} | {r.payloads:,} | "
            f"{r.fds_before} / {r.fds_held} / {r.fds_after} | {result} |"
        )
    lines += [
        "",
        "## SIGTERM during heavy hijacked traffic",
        "",
        "Every connection streams for 5 s, then the server gets SIGTERM. What each client got back must",
        "be an exact prefix of what it sent.",
        "",
        "| Parser | Owners | Connections | Bytes checked | Served after SIGTERM | Connections ended | Exit "
        "| Exit after | Result |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: | --- |",
    ]
    for s in report.sigterm:
        ends = ", ".join(f"{count} {how}" for how, count in sorted(s.ends.items()))
        result = "ok" if not s.failures else "; ".join(s.failures[:3])
        lines.append(
            f"| {s.parser} | {s.owners} | {s.connections:,} | {_mb(s.bytes_checked)} | {_mb(s.bytes_after_signal)} "
            f"| {ends} | {s.returncode} | {s.exit_seconds:.2f} s | {result} |"
        )
    lines += ["", "## Faults, smuggling, slow input", ""]
    if report.modules:
        lines += ["| Test module | Cases passed | Cases failed |", "| --- | ---: | ---: |"]
        lines += [f"| `{m.name}` | {m.passed} | {len(m.failed)} |" for m in report.modules]
        races: Counter[str] = Counter()
        for record in report.records:
            outcomes = record.get("outcomes")
            if record.get("kind") == "reset-race" and isinstance(outcomes, dict):
                races.update({str(k): _int(v) for k, v in outcomes.items()})
        if races:
            lines += ["", "Client resets at random moments around `hijack()`, what the app saw:", ""]
            lines += [f"* {outcome}: {count}" for outcome, count in races.most_common()]
    else:
        lines.append("Not run (`--skip-tests`).")
    lines += ["", "## Fuzz", ""]
    if fuzz:
        lines += [
            "| Protocol class | Examples | Connections | Bytes sent | What the server did |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for record in fuzz:
            outcomes = record.get("outcomes")
            seen = ", ".join(f"{k}: {v}" for k, v in sorted(outcomes.items())) if isinstance(outcomes, dict) else ""
            lines.append(
                f"| {record.get('parser')} | {_int(record.get('examples')):,} | {_int(record.get('connections')):,} "
                f"| {_int(record.get('bytes_sent')):,} | {seen} |"
            )
    else:
        lines.append("Not run.")
    if failures:
        lines += ["", "## Failed checks", ""] + [f"* {f}" for f in failures]
    lines += [
        "",
        BEHAVIOUR,
        "## Reproduce",
        "",
        "* `make soak`: this run (about 5 minutes on 2 cores; every phase time-bounded); rewrites this file.",
        "* `python -m pytest tests/test_reliability_*.py`: the same checks at test scale, part of `make test`",
        "  (about a minute): 1,000 connections for 5 s per parser, SIGTERM under 200 connections, 120 fuzz",
        "  examples per protocol class (`ASGI_HIJACK_FUZZ_EXAMPLES` raises it).",
        "",
    ]
    return "\n".join(lines)
