"""Fixtures. Shared helpers are in :mod:`tests.helpers`, the apps in :mod:`tests.apps`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from asgi_hijack.testing import RunningServer, serve
from tests.apps import probe_app
from tests.helpers import PARSERS


@pytest.fixture(scope="module", params=[(p, loop) for loop in ("asyncio", "uvloop") for p in PARSERS], ids="-".join)
def probe_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    """The probe app (tests/apps.py) on each of our HTTP/1.x protocols, on both event loops."""
    parser, loop = request.param
    with serve(probe_app, parser, loop=loop) as server:
        yield server
