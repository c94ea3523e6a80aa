"""examples/websocket_by_hand.py against the Autobahn WebSocket test suite, on every protocol class.

The short run: sections 1 (framing), 5 (fragmentation), 6 (UTF-8) and 7 (closing), with the
suite's fuzzing client, which :mod:`tools.conformance` installs on first use (Python 2.7, the
pinned packages from PyPI). ``make conformance`` runs every section, stock uvicorn too, and
writes docs/conformance.md.
"""

from __future__ import annotations

import pytest

from tests.helpers import PARSERS
from tools import conformance


@pytest.mark.timeout(600)  # the first run installs the suite
def test_autobahn_core_sections_pass_on_every_protocol_class() -> None:
    results = conformance.run(PARSERS, conformance.CI_CASES, jobs=len(PARSERS), timeout=300)
    assert sorted(results) == sorted(conformance.TARGETS[parser].agent for parser in PARSERS)
    for cases in results.values():
        assert {case.split(".")[0] for case in cases} == set(conformance.CI_CASES)
        assert len(cases) == len(next(iter(results.values())))
    assert conformance.problems(results) == []
