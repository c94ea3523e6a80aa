"""Load: 1,000 concurrent hijacked connections echo random-sized payloads; no byte lost, no descriptor kept.

The server runs in a process of its own (``tests.helpers.ServerProcess``): its ``/proc/PID/fd`` then
counts only the server's descriptors, so "back to where they started" is exact. (The
in-process test server shares the test's descriptor table with the 1,000 client
sockets, which would blur the count.) The same client runs for 60 s in ``make soak``.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import PARSERS, ServerProcess, echo_load, raise_nofile

CONNECTIONS = 1000
SECONDS = 5.0


@pytest.mark.parametrize("parser", PARSERS)
def test_1000_hijacked_connections_lose_no_byte_and_keep_no_descriptor(parser: str) -> None:
    # This process holds the client sockets; the server inherits the limit.
    needed = 2 * CONNECTIONS + 256
    assert raise_nofile(needed) >= needed, "RLIMIT_NOFILE's hard limit is too low for 1,000 connections"
    with ServerProcess(parser) as server:
        before = server.fds()
        held: list[int] = []
        result = asyncio.run(
            echo_load(
                "127.0.0.1",
                server.port,
                connections=CONNECTIONS,
                seconds=SECONDS,
                seed=PARSERS.index(parser),
                on_hijacked=lambda: held.append(server.fds()),
            )
        )
        after = server.wait_fds(before)
    assert result.failures == [], result.failures[:10]
    assert result.hijacked == CONNECTIONS
    assert held[0] >= before + CONNECTIONS, f"the server held {held[0] - before} connections at once"
    assert result.bytes_sent > 0 and result.bytes_verified == result.bytes_sent
    assert result.ends == {"eof": CONNECTIONS}
    assert after == before, f"{after - before} descriptors left open in the server"
    assert server.problems() == [], server.stderr()
