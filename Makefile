# Developer entry points. The README's two set-up commands are `make run` and `make test`;
# both install what they need first (idempotent), so they work on a fresh machine.
PYTHON ?= python
BENCH_ARGS ?=
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: setup run test lint bench bench-quick

# Python package and test dependencies (PyPI), and the system tools the tests drive:
# Go (net/rpc client), curl and openssl (proxy, TLS), Node's `ws` client (npm).
setup:
	$(PYTHON) -m pip install -q -e ".[test,starlette,zttp]"
	@command -v go >/dev/null && command -v curl >/dev/null && command -v openssl >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq golang-go curl openssl >/dev/null)
	@command -v node >/dev/null && command -v npm >/dev/null \
		|| (apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null)
	@if [ ! -d tests/node/node_modules/ws ]; then npm ci --silent --prefix tests/node; fi

# The main job: the raw-TCP example server on the built-in defaults (127.0.0.1:8000).
run:
	$(PYTHON) -m pip install -q -e ".[starlette]"
	$(PYTHON) -m uvicorn examples.raw_tcp:app --http asgi_hijack:HijackProtocol --host $(HOST) --port $(PORT)

# The whole test suite, with the type and lint checks.
test: setup lint
	$(PYTHON) -m pytest -q

lint:
	$(PYTHON) -m ruff check asgi_hijack tests examples bench soak
	$(PYTHON) -m ruff format --check asgi_hijack tests examples bench soak
	$(PYTHON) -m mypy --strict asgi_hijack

# Every comparison of docs/benchmarks.md (about 10 minutes on 2 cores); rewrites docs/benchmarks.md and
# docs/benchmarks.png, exits non-zero when a goal is missed. Needs wrk, go, node and pproxy (see bench/run.py).
bench:
	$(PYTHON) -m bench.run $(BENCH_ARGS)

# Seconds-scale smoke run of the same comparisons; prints the table, writes no docs, never fails on goals.
bench-quick:
	$(PYTHON) -m bench.run --quick --no-check $(BENCH_ARGS)

# The long reliability run (about 5 minutes on 2 cores; each phase time-bounded): 1,000 hijacked connections
# echoing for 60 s per parser, SIGTERM under 1,000 connections per parser, the fault, smuggling and
# slow-input tests and a larger fuzz. Rewrites docs/reliability.md from what it measured; exits non-zero
# when a check failed. `make soak SOAK_ARGS="--seconds 10 --no-docs"` for a shorter look.
SOAK_ARGS ?=

.PHONY: soak

soak: setup
	$(PYTHON) -m soak $(SOAK_ARGS)
