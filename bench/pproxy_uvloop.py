"""Run ``pproxy`` on uvloop: ``python -m bench.pproxy_uvloop -l http://127.0.0.1:PORT``.

pproxy calls ``uvloop.install()`` and then ``asyncio.get_event_loop()``, which uvloop 0.22+
refuses outside a running loop; setting a uvloop loop instead keeps pproxy on uvloop as intended.
"""

from __future__ import annotations

import asyncio

import pproxy.server  # type: ignore[import-untyped]
import uvloop


def _install() -> None:
    asyncio.set_event_loop(uvloop.new_event_loop())


if __name__ == "__main__":
    uvloop.install = _install  # what pproxy's main() calls
    pproxy.server.main()
