# Developer entry points. The README's two set-up commands are `make run` and `make test`. Both first build
# .venv inside the clone from the committed uv.lock (a no-op when it is up to date), so a run never depends on
# what the machine already had. All it needs to start is a Python 3.11+ with pip (BASE_PYTHON).
BASE_PYTHON ?= python3
UV_VERSION := 0.13.9
TOOLS := $(CURDIR)/.tools
UV := $(TOOLS)/bin/uv
INTERPRETER := $(shell $(BASE_PYTHON) -c 'import sys; print(sys.executable)')
VENV := $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python
LATEST := $(CURDIR)/.venv-latest
LINTED := asgi_hijack tests examples bench soak tools
BENCH_ARGS ?=
MATRIX_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

# uv never downloads an interpreter here: every venv is made from a path (BASE_PYTHON's, or pyenv's in the matrix).
export UV_PYTHON_DOWNLOADS := never
export UV_PROJECT_ENVIRONMENT := $(VENV)

.PHONY: uv venv system-deps setup run test lint test-latest test-matrix test-matrix-ci compat-table dist bench bench-deps bench-quick

# uv itself, at the pinned version, in a small venv of its own (.tools): that works with any Python 3.11+,
# including a distribution's "externally managed" one, where `pip install` outside a venv is refused.
uv:
	@$(UV) --version 2>/dev/null | grep -q '^uv $(UV_VERSION)' \
		|| ($(BASE_PYTHON) -m venv --clear $(TOOLS) && $(TOOLS)/bin/pip install -q "uv==$(UV_VERSION)")

# .venv from uv.lock: the package (editable), every extra and the dev group. --locked fails, and says to run
# `uv lock`, when pyproject.toml's dependencies changed and the lock was not updated.
venv: uv
	@$(UV) sync --quiet --locked --all-extras --python "$(INTERPRETER)"

# The system tools the tests drive: Go (net/rpc client), curl and openssl (proxy, TLS), Node's `ws` client (npm),
# nginx and HAProxy (examples/deploy/; the tests run them in the foreground, so the services their packages
# start are stopped and disabled: installing them opens no port).
system-deps:
	@command -v go >/dev/null && command -v curl >/dev/null && command -v openssl >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq golang-go curl openssl >/dev/null)
	@command -v node >/dev/null && command -v npm >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)
	@if [ ! -d tests/node/node_modules/ws ]; then npm ci --silent --prefix tests/node; fi
	@[ -x /usr/sbin/nginx ] && [ -x /usr/sbin/haproxy ] && [ -e /usr/lib/nginx/modules/ngx_stream_module.so ] \
		|| (apt-get update -qq && apt-get install -y -qq nginx libnginx-mod-stream haproxy >/dev/null \
			&& (systemctl disable --now nginx haproxy >/dev/null 2>&1 || true))
	@# headless Chromium: a browser's WebSocket over HTTP/2 (tests/test_http2_websocket_browser.py)
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)

setup: venv system-deps

# The main job: the raw-TCP example server on the built-in defaults (127.0.0.1:8000).
run: venv
	$(PYTHON) -m uvicorn examples.raw_tcp:app --http asgi_hijack:HijackProtocol --host $(HOST) --port $(PORT)

# The whole test suite, with the type and lint checks, in .venv.
test: setup lint
	$(PYTHON) -m pytest -q

lint: venv
	$(PYTHON) -m ruff check $(LINTED)
	$(PYTHON) -m ruff format --check $(LINTED)
	$(PYTHON) -m mypy --strict asgi_hijack tools

# The suite on the newest releases that pyproject.toml allows, resolved now without the lock, in .venv-latest
# (made anew each run).
test-latest: uv system-deps
	$(UV) venv --quiet --clear --python "$(INTERPRETER)" $(LATEST)
	$(UV) pip install --quiet --python $(LATEST)/bin/python -e ".[test,starlette,zttp]"
	$(LATEST)/bin/python -m pytest -q -p no:cacheprovider

# The support matrix (tools/matrix.py): the core, pending-buffer, shutdown and example tests on every supported
# uvicorn minor release and Python version, two at a time, in venvs under .matrix/. Records the counts in
# docs/compat.json and writes the README's table from it; exits non-zero if any combination failed. About 75
# combinations of a minute each: `make test-matrix MATRIX_ARGS="--python 3.11 --uvicorn 0.30.6"` for one.
test-matrix: venv system-deps
	$(PYTHON) -m tools.matrix run --uv "$(UV)" --output docs/compat.json $(MATRIX_ARGS); \
		status=$$?; $(PYTHON) -m tools.matrix table && exit $$status

# CI's share of the matrix: the oldest and the newest uvicorn, one at a time; writes no file. The oldest runs the
# pure-Python fallback of the compiled hot path (ASGI_HIJACK_NO_EXTENSIONS, at build and at run time).
test-matrix-ci: venv system-deps
	ASGI_HIJACK_NO_EXTENSIONS=1 $(PYTHON) -m tools.matrix run --uv "$(UV)" --jobs 1 --python 3.11 --uvicorn 0.30.6
	$(PYTHON) -m tools.matrix run --uv "$(UV)" --jobs 1 --python 3.13 --uvicorn 0.54.0

# The README's compatibility table, from docs/compat.json.
compat-table: venv
	$(PYTHON) -m tools.matrix table

# The sdist and the wheels in dist/, checked by twine, and the sdist checked to hold every tracked file. One wheel
# per interpreter (BASE_PYTHON's, and WHEEL_PYTHONS: pyenv's 3.12 and 3.13 when there) with the compiled hot path
# (setup.py), and the pure-Python wheel (py3-none-any) that pip falls back to where no binary wheel fits.
PYENV_ROOT ?= $(HOME)/.pyenv
WHEEL_PYTHONS ?= $(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.12.*/bin/python3))) \
	$(lastword $(sort $(wildcard $(PYENV_ROOT)/versions/3.13.*/bin/python3)))

dist: venv
	rm -rf dist build
	$(PYTHON) -m build --quiet --outdir dist .
	@for python in $(WHEEL_PYTHONS); do $(UV) build --quiet --wheel --python $$python --out-dir dist . || exit 1; done
	rm -rf build
	ASGI_HIJACK_NO_EXTENSIONS=1 $(UV) build --quiet --wheel --python "$(INTERPRETER)" --out-dir dist .
	$(PYTHON) -m twine check --strict dist/*
	$(PYTHON) -m tools.check_sdist dist/*.tar.gz
	@ls dist

# The load generator and the instruction counter the benchmarks drive (Go and Node come with system-deps).
bench-deps:
	@command -v wrk >/dev/null && command -v callgrind_control >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq wrk valgrind >/dev/null)

# Every comparison of docs/benchmarks.md (about 20 minutes on 2 cores); rewrites docs/benchmarks.md and
# docs/benchmarks.png, exits non-zero when a goal is missed. Installs wrk and valgrind when missing (bench-deps).
bench: venv system-deps bench-deps
	$(PYTHON) -m bench.run $(BENCH_ARGS)

# Seconds-scale smoke run of the same comparisons; prints the table, writes no docs, never fails on goals.
bench-quick: venv system-deps bench-deps
	$(PYTHON) -m bench.run --quick --no-check $(BENCH_ARGS)

# The long reliability run (about 5 minutes on 2 cores; each phase time-bounded): 1,000 hijacked connections
# echoing for 60 s per parser, SIGTERM under 1,000 connections per parser, the fault, smuggling and
# slow-input tests and a larger fuzz. Rewrites docs/reliability.md from what it measured; exits non-zero
# when a check failed. `make soak SOAK_ARGS="--seconds 10 --no-docs"` for a shorter look.
SOAK_ARGS ?=

.PHONY: soak

soak: setup
	$(PYTHON) -m soak $(SOAK_ARGS)

# The README's middleware table and docs/middleware-compat.md, from what a client sees through each middleware
# on real servers (tests/test_middleware_compat.py, which fails while they are out of date); exits non-zero
# when a middleware did not behave as the test expects.
.PHONY: middleware-table

middleware-table: venv
	$(PYTHON) -m tests.test_middleware_compat --write

# WebSocket conformance (tools/conformance.py): the Autobahn test suite's fuzzing client against
# examples/websocket_by_hand.py on each protocol class, and against stock uvicorn's own WebSockets. The suite is
# installed on first use under ~/.cache/asgi-hijack/autobahn (AUTOBAHN_HOME): pinned packages from PyPI, for a
# Python 2.7 (AUTOBAHN_PYTHON, python2.7 on PATH, or pyenv's). Rewrites docs/conformance.md; exits non-zero when
# one of ours fails a case. About 100 minutes on a busy 2-core machine, most of it sections 12 and 13;
# `.venv/bin/python -m tools.conformance --cases 1,5,6,7` is the short run of tests/test_conformance.py (no file).
CONFORMANCE_ARGS ?=

.PHONY: conformance

conformance: venv
	$(PYTHON) -m tools.conformance --write docs/conformance.md $(CONFORMANCE_ARGS)
