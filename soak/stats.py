"""Figures the reliability tests report to the soak run (``docs/reliability.md``).

A test calls :func:`record`; when ``ASGI_HIJACK_RELIABILITY_STATS`` names a file (the
soak run sets it), a JSON line is appended there. In a plain test run nothing is written.
"""

from __future__ import annotations

import json
import os

STATS_ENV = "ASGI_HIJACK_RELIABILITY_STATS"


def record(kind: str, **figures: object) -> None:
    path = os.environ.get(STATS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"kind": kind, **figures}, default=str) + "\n")
