"""Faults on every parser: resets, half-closes, apps that raise or drop the connection, SIGTERM under load.

Each in-process case ends with the same check (:meth:`Guard.check`): a hijacked connection
opened before the fault still echoes, a new request is still answered, the process's file
descriptors are back where they were before the fault (the test server runs in this
process, so its sockets are counted in ``/proc/self/fd``, next to the client's, which the
test closes), the server tracks no connection it should have let go, and nothing but the
app's own exceptions was logged at ERROR.
"""

from __future__ import annotations

import asyncio
import gc
import random
import signal
import socket
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs

import pytest

from asgi_hijack import ClientDisconnectedError, HijackError, hijack
from asgi_hijack.testing import PROTOCOLS, RunningServer, serve
from tests.apps import UPGRADE_HEADERS, echo, respond
from tests.helpers import (
    PARSERS,
    ServerLog,
    ServerProcess,
    connect,
    echo_load,
    open_fds,
    raise_nofile,
    record,
    recv_exactly,
    recv_to_close,
    recv_until,
    reset,
    server_errors,
    wait_until,
)

RESULTS: dict[str, Any] = {}
"""What the app saw, by the request's ``id`` (same process as the tests)."""
TASKS: set[asyncio.Task[None]] = set()
UPGRADE = b"Upgrade: tcp\r\nConnection: Upgrade\r\n"


class AppFault(RuntimeError):
    """The exception the fault app raises on purpose."""


async def fault_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = {name: values[-1] for name, values in parse_qs(scope["query_string"].decode()).items()}
    key = query.get("id", "")
    path = scope["path"]
    RESULTS[key + "-started"] = True
    if path == "/plain":
        await respond(send, 200, b"ok")
    elif path == "/echo":
        await echo(await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS), graceful=False)
    elif path == "/wait-disconnect":
        while (await receive())["type"] != "http.disconnect":
            pass
        try:
            await hijack(scope, receive, send)
            RESULTS[key] = "hijacked"
        except HijackError as exc:
            RESULTS[key] = type(exc)
    elif path == "/race":
        await asyncio.sleep(float(query.get("delay", 0)))
        try:
            conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        except HijackError as exc:
            RESULTS[key] = type(exc).__name__
            return
        outcome = "hijacked"
        async with conn:
            try:
                while data := await conn.reader.read(65536):
                    conn.writer.write(data)
                    await conn.writer.drain()
                outcome += ", then EOF"
            except ConnectionError as exc:
                outcome += f", then {type(exc).__name__}"
        RESULTS[key] = outcome
    elif path == "/flood":
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        block = b"x" * 65536
        async with conn:
            try:
                while True:
                    conn.writer.write(block)
                    await conn.writer.drain()
            except ConnectionError as exc:
                RESULTS[key] = exc.__class__
    elif path == "/read-block":
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        async with conn:
            RESULTS[key + "-reading"] = True
            try:
                RESULTS[key] = await conn.reader.read(65536)
            except ConnectionError as exc:
                RESULTS[key] = exc.__class__
    elif path == "/close-first":
        async with await hijack(scope, receive, send) as conn:
            await conn.send(b"bye")
        RESULTS[key] = "closed"
    elif path == "/half-close":
        async with await hijack(scope, receive, send) as conn:
            data = await conn.reader.read()
            await conn.send(b"got:" + data)
    elif path == "/body":
        seen = []
        while True:
            message = await receive()
            seen.append(message["type"])
            if message["type"] == "http.disconnect" or not message.get("more_body"):
                break
        RESULTS[key] = seen
        if seen[-1] != "http.disconnect":
            await respond(send, 200, b"body read")
    elif path == "/raise-before":
        raise AppFault("the app fails before hijacking")
    elif path == "/raise-inside":
        await hijack(scope, receive, send, status=42)  # ValueError: before the hijack commits
    elif path == "/raise-closed":
        conn = await hijack(scope, receive, send)
        await conn.send(b"bye")
        await conn.aclose()
        raise AppFault("the app fails after closing the hijacked connection")
    elif path == "/raise-open":
        conn = await hijack(scope, receive, send)
        await conn.send(b"bye")
        raise AppFault("the app fails with the hijacked connection open")
    elif path == "/drop":
        conn = await hijack(scope, receive, send)
        await conn.send(b"dropped")
    elif path == "/handoff":
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        task = asyncio.get_running_loop().create_task(echo(conn, graceful=False))
        TASKS.add(task)
        task.add_done_callback(TASKS.discard)
    else:
        await respond(send, 404, b"not found")


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(fault_app, request.param, timeout_graceful_shutdown=1) as running:
        yield running


def request(path: str, extra: bytes = b"") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n".encode() + extra + b"\r\n"


def hijacked(server: RunningServer, path: str) -> socket.socket:
    sock = connect(server.address)
    sock.sendall(request(path, UPGRADE))
    head = recv_until(sock, b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 "), head
    return sock


def result(key: str, timeout: float = 5.0) -> Any:
    assert wait_until(lambda: key in RESULTS, timeout), f"the app never reported {key!r}"
    return RESULTS.pop(key)


class Guard:
    """Before a fault: a hijacked bystander, a descriptor count, a log; after it, :meth:`check`."""

    def __init__(self, server: RunningServer, errors: ServerLog) -> None:
        self.server = server
        self.errors = errors
        self.bystander = hijacked(server, "/echo")
        self.bystander.sendall(b"ready")  # a round trip: the hijack is complete
        assert recv_exactly(self.bystander, 5) == b"ready"
        self.fds = open_fds()
        self.tracked = len(server.server.server_state.connections)

    def check(self, *expected_errors: type[BaseException]) -> None:
        self.bystander.sendall(b"still there?")
        assert recv_exactly(self.bystander, 12) == b"still there?", "a hijacked connection stopped being served"
        with connect(self.server.address) as sock:
            sock.sendall(request("/plain", b"Connection: close\r\n"))
            answer = recv_to_close(sock)
        assert answer.data.startswith(b"HTTP/1.1 200 ") and answer.data.endswith(b"ok"), answer
        assert wait_until(lambda: open_fds() == self.fds), f"{open_fds()} descriptors open, {self.fds} before"
        connections = self.server.server.server_state.connections
        assert wait_until(lambda: len(connections) == self.tracked), f"server still tracks {connections}"
        assert self.errors.exception_types() == list(expected_errors), self.errors.describe()
        self.bystander.close()


@pytest.fixture
def guard(server: RunningServer) -> Iterator[Guard]:
    with server_errors() as errors:
        guard = Guard(server, errors)
        try:
            yield guard
        finally:
            guard.bystander.close()


def parser_of(server: RunningServer) -> str:
    return {value: name for name, value in PROTOCOLS.items()}.get(str(server.server.config.http), "?")


def key(name: str, server: RunningServer) -> str:
    return f"{name}-{server.port}-{time.monotonic_ns()}"


# -- client resets ----------------------------------------------------------------------------


def test_reset_before_the_hijack(server: RunningServer, guard: Guard) -> None:
    k = key("rst-before", server)
    sock = connect(server.address)
    sock.sendall(request(f"/wait-disconnect?id={k}", UPGRADE))
    assert result(k + "-started")
    reset(sock)
    assert result(k) is ClientDisconnectedError
    guard.check()


def test_reset_while_the_app_writes_to_the_hijacked_connection(server: RunningServer, guard: Guard) -> None:
    k = key("rst-writing", server)
    sock = hijacked(server, f"/flood?id={k}")
    recv_exactly(sock, 1 << 20)  # the app is streaming
    reset(sock)
    assert issubclass(result(k), ConnectionError)
    guard.check()


def test_reset_while_the_app_waits_to_read(server: RunningServer, guard: Guard) -> None:
    k = key("rst-reading", server)
    sock = hijacked(server, f"/read-block?id={k}")
    assert result(k + "-reading")
    reset(sock)
    assert result(k) in (b"", ConnectionResetError)
    guard.check()


def test_reset_after_the_app_closed_the_hijacked_connection(server: RunningServer, guard: Guard) -> None:
    k = key("rst-after", server)
    sock = connect(server.address)
    sock.sendall(request(f"/close-first?id={k}") + b"unread bytes")
    assert recv_to_close(sock).data == b"bye"
    assert result(k) == "closed"
    reset(sock)
    guard.check()


RACE_OUTCOMES = {
    "ClientDisconnectedError",
    "hijacked, then EOF",
    "hijacked, then ConnectionResetError",
    "not reached",
}


def test_resets_racing_the_hijack(server: RunningServer, guard: Guard) -> None:
    """Resets at random moments around the hijack: with the request, before, during and after it."""
    rng = random.Random(server.port)
    outcomes: Counter[str] = Counter()
    for i in range(40):
        k = key(f"race{i}", server)
        sock = connect(server.address)
        delay = rng.choice([0, 0.001, 0.003])  # before the app hijacks
        sock.sendall(request(f"/race?id={k}&delay={delay}", UPGRADE) + b"pending" * rng.randint(0, 2000))
        time.sleep(rng.choice([0, 0, 0.0005, 0.001, 0.002, 0.004]))
        reset(sock)
        if wait_until(lambda k=k: k + "-started" in RESULTS, 0.5):  # type: ignore[misc]
            RESULTS.pop(k + "-started")
            outcomes[result(k)] += 1
        else:
            outcomes["not reached"] += 1
    record("reset-race", parser=parser_of(server), outcomes=dict(outcomes))
    assert set(outcomes) <= RACE_OUTCOMES, outcomes
    guard.check()


# -- client half-close ------------------------------------------------------------------------------


def test_half_close_before_the_hijack(server: RunningServer, guard: Guard) -> None:
    sock = connect(server.address)
    sock.sendall(request("/half-close") + b"pending bytes")
    sock.shutdown(socket.SHUT_WR)
    closing = recv_to_close(sock)
    assert (closing.data, closing.how) == (b"got:pending bytes", "eof")
    sock.close()
    guard.check()


def test_half_close_after_the_hijack(server: RunningServer, guard: Guard) -> None:
    sock = hijacked(server, "/echo")
    sock.sendall(b"last words")
    sock.shutdown(socket.SHUT_WR)
    closing = recv_to_close(sock)
    assert (closing.data, closing.how) == (b"last words", "eof")
    sock.close()
    guard.check()


def test_half_close_inside_a_request_body(server: RunningServer, guard: Guard) -> None:
    k = key("half-body", server)
    sock = connect(server.address)
    sock.sendall(request(f"/body?id={k}", b"Content-Length: 10\r\n") + b"only4")
    sock.shutdown(socket.SHUT_WR)
    closing = recv_to_close(sock)
    assert closing.how == "eof" and not closing.data.startswith(b"HTTP/1.1 200"), closing
    assert result(k)[-1] == "http.disconnect"
    sock.close()
    guard.check()


# -- the app raising ---------------------------------------------------------------------------------


def test_app_raises_before_the_hijack(server: RunningServer, guard: Guard) -> None:
    with connect(server.address) as sock:
        sock.sendall(request("/raise-before"))
        assert recv_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 500 ")
    guard.check(AppFault)


def test_app_raises_inside_hijack(server: RunningServer, guard: Guard) -> None:
    with connect(server.address) as sock:
        sock.sendall(request("/raise-inside"))
        assert recv_until(sock, b"\r\n\r\n").startswith(b"HTTP/1.1 500 ")  # nothing was committed
    guard.check(ValueError)


def test_app_raises_after_closing_the_hijacked_connection(server: RunningServer, guard: Guard) -> None:
    with connect(server.address) as sock:
        sock.sendall(request("/raise-closed"))
        closing = recv_to_close(sock)
    assert (closing.data, closing.how) == (b"bye", "eof")  # no 500 after the app's bytes
    guard.check(AppFault)


@pytest.fixture
def refcount_only() -> Iterator[None]:
    """Turn the cyclic garbage collector off: only reference counting can close a dropped connection.

    The documented promise is that a connection is closed when its last reference goes
    away; with the collector off, a reference cycle cannot make the test pass by luck.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


def test_app_raises_with_the_hijacked_connection_open(server: RunningServer, guard: Guard) -> None:
    # The server closes it (flushing what was written), whoever keeps the traceback: not the collector.
    with warnings.catch_warnings(record=True) as caught, connect(server.address) as sock:
        warnings.simplefilter("always", ResourceWarning)
        sock.sendall(request("/raise-open"))
        closing = recv_to_close(sock)
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert (closing.data, closing.how) == (b"bye", "eof"), "an app that raises has its connection closed"
    assert unclosed == [], unclosed
    guard.check(AppFault)


def test_app_returns_without_closing_the_hijacked_connection(
    server: RunningServer, guard: Guard, refcount_only: None
) -> None:
    with warnings.catch_warnings(record=True) as caught, connect(server.address) as sock:
        warnings.simplefilter("always", ResourceWarning)
        sock.sendall(request("/drop"))
        closing = recv_to_close(sock)
        unclosed = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert (closing.data, closing.how) == (b"dropped", "eof"), "the connection must close once the app lets go of it"
    # asyncio's StreamWriter warns when dropped open from Python 3.11.5 on (it has __del__ there).
    assert any("unclosed" in text for text in unclosed) or not hasattr(asyncio.StreamWriter, "__del__"), unclosed
    guard.check()


def test_app_returns_after_handing_the_connection_to_a_task(server: RunningServer, guard: Guard) -> None:
    sock = hijacked(server, "/handoff")
    time.sleep(0.05)  # the request's task has returned; its connection lives on in the echo task
    for word in (b"one", b"two"):
        sock.sendall(word)
        assert recv_exactly(sock, 3) == word
    sock.shutdown(socket.SHUT_WR)
    assert recv_to_close(sock).how == "eof"
    sock.close()
    guard.check()


# -- SIGTERM under heavy hijacked traffic ---------------------------------------------------------

SIGTERM_CONNECTIONS = 200
GRACE = 1


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("owners", ["ignore the notice", "finish on the notice"])
def test_sigterm_during_heavy_hijacked_traffic(parser: str, owners: str) -> None:
    """Every connection streams echo traffic when SIGTERM arrives.

    Owners that ignore the shutdown notice keep being served until the grace period
    ends and are then aborted; owners that finish on the notice flush and close. Either
    way every byte a client gets back is an exact prefix of what it sent, every
    connection ends, the process exits cleanly and its stderr shows no error.
    """
    assert raise_nofile(4 * SIGTERM_CONNECTIONS + 256) >= 4 * SIGTERM_CONNECTIONS
    graceful = owners == "finish on the notice"
    with ServerProcess(parser, grace=GRACE) as server:
        result = asyncio.run(
            echo_load(
                "127.0.0.1",
                server.port,
                connections=SIGTERM_CONNECTIONS,
                seconds=0.5,
                graceful=graceful,
                on_mark=lambda: server.signal(signal.SIGTERM),
                finish_timeout=GRACE + 15,
            )
        )
        returncode = server.wait(GRACE + 15)
    record(
        "sigterm",
        parser=parser,
        owners=owners,
        connections=result.hijacked,
        bytes_verified=result.bytes_verified,
        bytes_after_signal=result.bytes_verified_after_mark,
        ends=dict(result.ends),
    )
    assert result.failures == [], result.failures[:10]
    assert result.hijacked == SIGTERM_CONNECTIONS
    assert sum(result.ends.values()) == SIGTERM_CONNECTIONS and set(result.ends) <= {"eof", "reset"}, result.ends
    if not graceful:
        assert result.bytes_verified_after_mark > 0, "hijacked connections must be served during the grace period"
    assert returncode in (0, -signal.SIGTERM), server.stderr()
    assert server.problems() == [], server.stderr()
