"""The support matrix: the core tests on every supported uvicorn minor release and Python version.

Each combination gets its own virtual environment under the cache directory (``.matrix/``):
the packages of ``uv.lock`` (``uv sync --locked``), then that uvicorn release over them
(``uv pip install``). The selected tests run in it, at most two combinations at once, and the
counts from pytest's JUnit report are merged into the results file (``docs/compat.json``).
``table`` writes the README's compatibility table from that file.

    python -m tools.matrix run --python 3.11 --uvicorn 0.30.6 --output docs/compat.json
    python -m tools.matrix table

Interpreters are never downloaded: ``pythonX.Y`` on ``PATH``, else pyenv's newest ``X.Y.*``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "compat.json"
README = ROOT / "README.md"
START, END = "<!-- uvicorn-compat:start -->", "<!-- uvicorn-compat:end -->"

# The last patch release of every uvicorn minor release we support, oldest first. pyproject.toml's
# `uvicorn>=A,<B` requirement must match (tests/test_matrix.py checks it).
UVICORN = (
    "0.30.6",
    "0.31.1",
    "0.32.1",
    "0.33.0",
    "0.34.3",
    "0.35.0",
    "0.36.1",
    "0.37.0",
    "0.38.0",
    "0.39.0",
    "0.40.0",
    "0.41.0",
    "0.42.0",
    "0.43.0",
    "0.44.0",
    "0.45.0",
    "0.46.0",
    "0.47.0",
    "0.48.0",
    "0.49.0",
    "0.50.2",
    "0.51.0",
    "0.52.4",
    "0.53.0",
    "0.54.0",
)
PYTHONS = ("3.11", "3.12", "3.13")
# The core semantics, pending-buffer, shutdown and example tests (globs, relative to the clone).
TESTS = (
    "tests/test_semantics.py",
    "tests/test_pending.py",
    "tests/test_compiled.py",
    "tests/test_shutdown.py",
    "tests/test_examples_*.py",
)
MAX_JOBS = 2  # the machines have 2 cores, and the tests run real servers


@dataclass(frozen=True)
class Combo:
    """One cell of the matrix: a Python minor version and a uvicorn release."""

    python: str
    uvicorn: str

    @property
    def name(self) -> str:
        return f"py{self.python}-uvicorn{self.uvicorn}"


@dataclass
class Outcome:
    """What one combination's run counted, as stored in ``docs/compat.json``."""

    python: str
    uvicorn: str
    interpreter: str = ""  # the full Python version that ran, e.g. 3.11.7
    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # the first failures, or why nothing ran

    @property
    def ok(self) -> bool:
        return self.passed > 0 and not (self.failed or self.errors or self.problems)


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def probe(path: str) -> tuple[str, str] | None:
    """``("3.12.1", real executable)`` for a working interpreter; None for no file or an unselected pyenv shim."""
    code = "import platform, sys; print(platform.python_version(), sys.executable)"
    try:
        run = subprocess.run([path, "-c", code], capture_output=True, text=True)
    except OSError:
        return None
    version, _, executable = run.stdout.strip().partition(" ")
    return (version, executable) if run.returncode == 0 else None


def find_interpreter(python: str) -> str:
    """``pythonX.Y`` on PATH if it runs, else the newest pyenv build of ``X.Y``."""
    candidates = [found] if (found := shutil.which(f"python{python}")) else []
    if shutil.which("pyenv"):
        bare = subprocess.run(["pyenv", "versions", "--bare"], capture_output=True, text=True).stdout.split()
        builds = sorted((v for v in bare if re.fullmatch(rf"{re.escape(python)}\.\d+", v)), key=version_key)
        root = subprocess.run(["pyenv", "root"], capture_output=True, text=True).stdout.strip()
        candidates += [f"{root}/versions/{build}/bin/python3" for build in reversed(builds)]
    for candidate in candidates:
        if (probed := probe(candidate)) and probed[0].startswith(f"{python}."):
            return probed[1]
    raise SystemExit(f"No Python {python} found: install it (`pyenv install {python}`) or put python{python} on PATH.")


def selected_tests() -> list[str]:
    files: list[str] = []
    for pattern in TESTS:
        matches = sorted(glob.glob(pattern, root_dir=ROOT))
        if not matches:
            raise SystemExit(f"{pattern} matches no test file: update TESTS in tools/matrix.py to the new names.")
        files += matches
    return files


def read_junit(path: Path) -> tuple[int, int, int, int, list[str]]:
    """Passed, failed, errors, skipped, and the first five failures (``test id: message``)."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    problems: list[str] = []
    for suite in ET.parse(path).getroot().iter("testsuite"):
        for key in counts:
            counts[key] += int(suite.get(key, "0"))
        for case in suite.iter("testcase"):
            for bad in (*case.findall("failure"), *case.findall("error")):
                message = (bad.get("message") or "").strip().splitlines()[:1]
                problems.append(f"{case.get('classname')}::{case.get('name')}: {' '.join(message)}"[:300])
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return passed, counts["failures"], counts["errors"], counts["skipped"], problems[:5]


def run_combo(combo: Combo, interpreter: str, uv: Sequence[str], cache: Path, tests: Sequence[str]) -> Outcome:
    """Build the combination's environment, run the tests in it and count; the output goes to a log."""
    venv, log_path, junit = cache / combo.name, cache / f"{combo.name}.log", cache / f"{combo.name}.xml"
    junit.unlink(missing_ok=True)
    env = {**os.environ, "UV_PROJECT_ENVIRONMENT": str(venv), "UV_PYTHON_DOWNLOADS": "never"}
    env.pop("VIRTUAL_ENV", None)
    python, shown_log = str(venv / "bin" / "python"), os.path.relpath(log_path, ROOT)
    outcome, started = Outcome(combo.python, combo.uvicorn), time.monotonic()
    steps = [
        [*uv, "sync", "--quiet", "--locked", "--all-extras", "--python", interpreter],
        [*uv, "pip", "install", "--quiet", "--python", python, f"uvicorn=={combo.uvicorn}"],
        [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}", *tests],
    ]
    with log_path.open("w") as log:
        for step in steps:
            log.write(f"$ {shlex.join(step)}\n")
            log.flush()
            code = subprocess.run(step, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
            if code and step is not steps[-1]:
                outcome.problems.append(f"set-up failed: `{shlex.join(step)}` exited {code} (see {shown_log})")
                break
    outcome.seconds = round(time.monotonic() - started, 1)
    outcome.interpreter = probed[0] if (probed := probe(python)) else ""
    if outcome.problems:
        return outcome
    if junit.exists():
        outcome.passed, outcome.failed, outcome.errors, outcome.skipped, outcome.problems = read_junit(junit)
    if code and not outcome.problems:
        tail = " ".join(log_path.read_text().strip().splitlines()[-1:])
        outcome.problems.append(f"pytest exited {code}: {tail} (see {shown_log})")
    return outcome


def summary(outcome: Outcome) -> str:
    counts = f"{outcome.passed} passed, {outcome.failed} failed, {outcome.errors} errors, {outcome.skipped} skipped"
    return f"Python {outcome.python}, uvicorn {outcome.uvicorn}: {counts} in {outcome.seconds:.0f} s"


def load_results(path: Path) -> list[Outcome]:
    if not path.exists():
        return []
    return [Outcome(**entry) for entry in json.loads(path.read_text())["results"]]


def save_results(path: Path, outcomes: Iterable[Outcome], tests: Sequence[str]) -> None:
    """Merge the outcomes into the results file: a new run of a combination replaces the old one."""
    merged = {(o.python, o.uvicorn): o for o in load_results(path)}
    merged.update({(o.python, o.uvicorn): o for o in outcomes})
    ordered = sorted(merged.values(), key=lambda o: (version_key(o.uvicorn), version_key(o.python)))
    document = {"tests": list(tests), "results": [asdict(o) for o in ordered]}
    path.write_text(json.dumps(document, indent=2) + "\n")


def cell(outcome: Outcome | None) -> str:
    if outcome is None:
        return "not run"
    if outcome.ok:
        return f"{outcome.passed} passed"
    bad = [f"{n} {word}" for n, word in ((outcome.failed, "failed"), (outcome.errors, "errors")) if n]
    return f"**{', '.join(bad) or 'did not run'}**, {outcome.passed} passed"


def render_table(outcomes: Iterable[Outcome]) -> str:
    """The README's compatibility table: one row per uvicorn release, newest first."""
    by_combo = {(o.python, o.uvicorn): o for o in outcomes}
    lines = [
        "<!-- Written by `make compat-table` from docs/compat.json (`make test-matrix`); do not edit. -->",
        "| uvicorn | " + " | ".join(f"Python {p}" for p in PYTHONS) + " |",
        "| --- |" + " --- |" * len(PYTHONS),
    ]
    for release in reversed(UVICORN):
        lines.append(f"| {release} | " + " | ".join(cell(by_combo.get((p, release))) for p in PYTHONS) + " |")
    return "\n".join(lines)


def readme_table(readme: str) -> str:
    """The table between the README's compat markers."""
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} markers for the compatibility table.")
    return readme.split(START, 1)[1].split(END, 1)[0].strip()


def write_table(results: Path, readme: Path) -> None:
    text = readme.read_text()
    readme_table(text)  # the markers are there
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    readme.write_text(f"{before}{START}\n{render_table(load_results(results))}\n{END}{after}")


def run(args: argparse.Namespace) -> int:
    tests = selected_tests()
    uv = shlex.split(args.uv)
    interpreters = {python: find_interpreter(python) for python in args.python}
    combos = [Combo(python, release) for release in args.uvicorn for python in args.python]
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    print(f"{len(combos)} combination(s), {args.jobs} at a time; logs in {args.cache_dir}", flush=True)

    def one(combo: Combo) -> Outcome:
        outcome = run_combo(combo, interpreters[combo.python], uv, args.cache_dir, tests)
        print(("ok    " if outcome.ok else "FAIL  ") + summary(outcome), flush=True)
        for problem in outcome.problems:
            print(f"      {problem}", flush=True)
        return outcome

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        outcomes = list(pool.map(one, combos))
    if args.output:
        save_results(args.output, outcomes, tests)
        print(f"wrote {args.output}")
    failed = [o for o in outcomes if not o.ok]
    print(f"matrix: {len(outcomes) - len(failed)} passed, {len(failed)} failed (combinations)")
    return 1 if failed else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.matrix", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    runner = commands.add_parser("run", help="run the tests for each combination")
    runner.add_argument("--python", action="append", choices=PYTHONS, help="repeatable; default: all")
    runner.add_argument("--uvicorn", action="append", choices=UVICORN, help="repeatable; default: all")
    runner.add_argument("--jobs", type=int, choices=range(1, MAX_JOBS + 1), default=MAX_JOBS)
    runner.add_argument("--uv", default="uv", help="the uv command, e.g. 'python3 -m uv'")
    runner.add_argument("--cache-dir", type=Path, default=ROOT / ".matrix", help="where the environments live")
    runner.add_argument("--output", type=Path, help="results file to merge into, e.g. docs/compat.json")
    table = commands.add_parser("table", help="write the README's compatibility table from the results file")
    table.add_argument("--results", type=Path, default=RESULTS)
    table.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if args.command == "table":
        write_table(args.results, args.readme)
        return 0
    args.python = args.python or list(PYTHONS)
    args.uvicorn = args.uvicorn or list(UVICORN)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
