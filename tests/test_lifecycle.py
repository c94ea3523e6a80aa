"""Connection identity, per-connection state, state hooks, peer credentials, deadlines and keepalive."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

import httpx
import pytest

from asgi_hijack import hijack
from asgi_hijack.lifecycle import STATE_HOOKS_KEY, ConnectionInfo, ConnState
from asgi_hijack.testing import RunningServer
from tests.apps import respond
from tests.helpers import PARSERS, connect, recv_all, recv_to_close, recv_until, wait_until


async def identity_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Reports the http.connection extension; counts requests in the per-connection state."""
    if scope["type"] != "http":
        return
    connection = scope["extensions"]["http.connection"]
    connection["state"]["seen"] = connection["state"].get("seen", 0) + 1
    body = json.dumps(
        {
            "id": connection["id"],
            "request_index": connection["request_index"],
            "peer_credentials": connection["peer_credentials"],
            "seen": connection["state"]["seen"],
        }
    ).encode()
    await respond(send, 200, body)


def keep_alive_requests(sock: socket.socket, count: int) -> list[dict[str, Any]]:
    answers = []
    for _ in range(count):
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        answers.append(json.loads(recv_until(sock, b"}").partition(b"\r\n\r\n")[2]))
    return answers


@pytest.mark.parametrize("parser", PARSERS)
def test_identity_request_index_and_per_connection_state(hijack_server: Any, parser: str) -> None:
    server = hijack_server(identity_app, parser)
    with connect(server) as first, connect(server) as second:
        a = keep_alive_requests(first, 3)
        b = keep_alive_requests(second, 2)
    assert [r["request_index"] for r in a] == [0, 1, 2]
    assert [r["seen"] for r in a] == [1, 2, 3]  # the same mapping on every request of a connection
    assert [r["seen"] for r in b] == [1, 2]  # a fresh mapping on another connection
    assert len({r["id"] for r in a}) == 1 and len({r["id"] for r in b}) == 1
    assert a[0]["id"] != b[0]["id"]
    assert a[0]["peer_credentials"] is None  # TCP: no peer credentials


async def identity_then_hijack_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``identity_app``; on ``/hijack``, hijacks and reports ``conn.info`` (no state hooks registered)."""
    if scope["type"] != "http" or scope["path"] != "/hijack":
        return await identity_app(scope, receive, send)
    connection = scope["extensions"]["http.connection"]
    conn = await hijack(scope, receive, send)
    async with conn:
        info = conn.info
        assert info is not None
        report = {
            "same_id": info.id == connection["id"],
            "same_state": info.state is connection["state"],
            "seen": info.state["seen"],
            "request_index": info.request_index,
            "requests": info.requests,
            "conn_state": info.conn_state.value,
            "client": list(info.client),
        }
        await conn.send(json.dumps(report).encode())


@pytest.mark.parametrize("parser", PARSERS)
def test_conn_info_of_a_later_request_without_hooks(hijack_server: Any, parser: str) -> None:
    """Without state hooks the server makes the ConnectionInfo only when the connection is hijacked:
    it must still be the connection's identity, as of the hijacking request."""
    server = hijack_server(identity_then_hijack_app, parser)
    with connect(server) as sock:
        keep_alive_requests(sock, 2)
        sock.sendall(b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
        report = json.loads(recv_to_close(sock).data)
        client = list(sock.getsockname())
    assert report == {
        "same_id": True,
        "same_state": True,
        "seen": 2,
        "request_index": 2,
        "requests": 3,
        "conn_state": "hijacked",
        "client": client,
    }


@pytest.mark.parametrize("parser", PARSERS)
def test_unix_socket_ids_are_unique_and_peer_credentials_are_the_callers(
    hijack_server: Any, parser: str, tmp_path: Path
) -> None:
    path = str(tmp_path / "s.sock")
    hijack_server(identity_app, parser, uds=path)
    ids = set()
    for _ in range(3):
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            (answer,) = keep_alive_requests(sock, 1)
        ids.add(answer["id"])
        assert answer["peer_credentials"] == [os.getpid(), os.getuid(), os.getgid()]
    assert len(ids) == 3


class Recorder:
    """A connection state hook that records transitions per connection id."""

    def __init__(self) -> None:
        self.events: dict[int, list[str]] = {}
        self.lock = threading.Lock()

    def __call__(self, info: ConnectionInfo, state: ConnState) -> None:
        with self.lock:
            self.events.setdefault(info.id, []).append(state.value)

    def wait_for(self, count: int, last: str) -> list[list[str]]:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with self.lock:
                done = [e for e in self.events.values() if e and e[-1] == last]
            if len(done) >= count:
                return done
            time.sleep(0.02)
        raise AssertionError(f"transitions: {self.events}")


def with_lifespan_hooks(app: Any, hook: Any) -> Any:
    """The app registers its hooks in lifespan state: works for `uvicorn --http ...` and for Config()."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    scope["state"][STATE_HOOKS_KEY] = [hook]
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        await app(scope, receive, send)

    return wrapped


async def state_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["path"] == "/hijack":
        async with await hijack(scope, receive, send) as conn:
            await conn.send(b"mine")
    else:
        await respond(send, 200, b"ok")


@pytest.mark.parametrize("parser", PARSERS)
def test_state_hooks_from_lifespan_state_see_every_transition_in_order(hijack_server: Any, parser: str) -> None:
    recorder = Recorder()
    server = hijack_server(with_lifespan_hooks(state_app, recorder), parser, lifespan="on")
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            recv_until(sock, b"ok")
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nGET /hijack HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_all(sock).endswith(b"mine")
    closed = recorder.wait_for(1, "closed")
    hijacked = recorder.wait_for(1, "hijacked")
    assert closed == [["new", "active", "idle", "active", "idle", "closed"]]
    assert hijacked == [["new", "active", "idle", "active", "hijacked"]]


def test_state_hooks_from_a_protocol_subclass(hijack_server: Any) -> None:
    """A server wrapper registers hooks on a protocol subclass, for programmatic uvicorn.Config(http=...)."""
    from asgi_hijack import H11HijackProtocol

    recorder = Recorder()

    class Observed(H11HijackProtocol):
        conn_state_hooks = (recorder,)

    server = hijack_server(state_app, Observed)
    with connect(server) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        recv_all(sock)
    assert recorder.wait_for(1, "closed") == [["new", "active", "closed"]]  # Connection: close: never idle


# -- deadlines and keepalive on hijacked connections ---------------------------------------

DEADLINE_RESULTS: dict[str, Any] = {}


async def deadline_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
    loop = asyncio.get_running_loop()
    async with conn:
        if scope["path"] == "/read":
            conn.set_read_deadline(loop.time() + 0.3)
            started = loop.time()
            try:
                await conn.reader.read(10)
            except TimeoutError as exc:
                DEADLINE_RESULTS["read"] = (exc, loop.time() - started)
            with contextlib.suppress(TimeoutError):
                await conn.reader.read(10)  # still past the deadline: fails at once
                DEADLINE_RESULTS["read-again"] = "no error"
            conn.set_read_deadline(loop.time() + 5)  # moved: reads work again
            await conn.send(b"moved")
            DEADLINE_RESULTS["after-move"] = await conn.reader.readexactly(5)
        elif scope["path"] == "/read-moved":
            # A read already waiting is cut by a deadline set, or moved, while it waits.
            async def move() -> None:
                await asyncio.sleep(0.1)
                conn.set_read_deadline(loop.time() + 0.2)  # set while the read waits
                await asyncio.sleep(0.1)
                conn.set_read_deadline(loop.time() + 0.6)  # moved later before it expired

            mover = asyncio.ensure_future(move())
            started = loop.time()
            try:
                await conn.reader.read(10)
            except TimeoutError as exc:
                DEADLINE_RESULTS["read-moved"] = (exc, loop.time() - started)
            await mover
        elif scope["path"] == "/write":
            conn.set_write_deadline(loop.time() + 0.5)
            sent = 0
            try:
                while True:
                    await conn.send(b"x" * 65536)
                    sent += 65536
            except TimeoutError as exc:
                DEADLINE_RESULTS["write"] = (exc, sent)
        elif scope["path"] == "/keepalive":
            conn.set_keepalive(idle=30, interval=10, count=5)
            sock = conn.socket
            await conn.send(
                json.dumps(
                    [
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                    ]
                ).encode()
            )


def test_read_deadline_on_a_silent_client_and_moving_it(hijack_server: Any) -> None:
    server = hijack_server(deadline_app)
    with connect(server) as sock:
        sock.sendall(b"GET /read HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        recv_until(sock, b"moved", timeout=5)  # the client stayed silent past the deadline
        sock.sendall(b"later")
        recv_all(sock)
    exc, waited = DEADLINE_RESULTS["read"]
    assert isinstance(exc, TimeoutError) and "set_read_deadline" in str(exc)
    assert 0.25 < waited < 3
    assert "read-again" not in DEADLINE_RESULTS
    assert DEADLINE_RESULTS["after-move"] == b"later"


def test_write_deadline_on_a_client_that_stops_reading(hijack_server: Any) -> None:
    server = hijack_server(deadline_app)
    with connect(server) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(b"GET /write HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        deadline = time.monotonic() + 10
        while "write" not in DEADLINE_RESULTS and time.monotonic() < deadline:
            time.sleep(0.05)  # never read: the server's writes back up
    exc, sent = DEADLINE_RESULTS["write"]
    assert isinstance(exc, TimeoutError) and "set_write_deadline" in str(exc)
    assert sent > 0


def test_tcp_keepalive_with_idle_interval_and_count(hijack_server: Any) -> None:
    server = hijack_server(deadline_app)
    with connect(server) as sock:
        sock.sendall(b"GET /keepalive HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        data = recv_all(sock)
    assert json.loads(data.partition(b"\r\n\r\n")[2]) == [1, 30, 10, 5]


# -- the admin example: authorize by uid over a real unix socket ----------------------------


@pytest.mark.parametrize("allow_self", [True, False])
def test_admin_endpoint_answers_only_allowed_uids(hijack_server: Any, tmp_path: Path, allow_self: bool) -> None:
    from examples.admin_uds import AdminApp

    path = str(tmp_path / "admin.sock")
    allow = frozenset({os.getuid()}) if allow_self else frozenset({os.getuid() + 12345})
    hijack_server(AdminApp(allow), uds=path)
    with httpx.Client(transport=httpx.HTTPTransport(uds=path), timeout=5) as client:
        response = client.get("http://admin/status")
    if allow_self:
        assert response.status_code == 200
        assert response.json()["uid"] == os.getuid() and response.json()["pid"] == os.getpid()
    else:
        assert response.status_code == 403
        assert "not allowed" in response.json()["error"]


def test_admin_endpoint_refuses_tcp_callers(hijack_server: Any) -> None:
    from examples.admin_uds import AdminApp

    server: RunningServer = hijack_server(AdminApp())
    response = httpx.get(server.url + "/status", timeout=5)
    assert response.status_code == 403


def test_a_waiting_read_is_cut_by_a_deadline_set_or_moved_while_it_waits(hijack_server: Any) -> None:
    server = hijack_server(deadline_app)
    with connect(server) as sock:
        sock.sendall(b"GET /read-moved HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n")
        recv_all(sock)  # the app closes once its read was cut
    exc, waited = DEADLINE_RESULTS["read-moved"]
    assert isinstance(exc, TimeoutError) and "set_read_deadline" in str(exc)
    assert 0.6 < waited < 3  # the first deadline (0.3 s in) was moved to 0.8 s in: it did not fire


class _Marker:
    """Put in a request's scope: it lives exactly as long as something holds that scope."""


_markers: list[weakref.ref[_Marker]] = []


async def marking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Marks the scope and answers at once, without reading any request body."""
    if scope["type"] != "http":
        return
    marker = scope["marker"] = _Marker()
    _markers.append(weakref.ref(marker))
    del marker
    await respond(send, 200, b"ok")


def _freed(ref: weakref.ref[_Marker]) -> bool:
    gc.collect()
    return ref() is None


@pytest.mark.parametrize("parser", PARSERS)
def test_an_idle_keep_alive_connection_keeps_nothing_of_its_last_request(hijack_server: Any, parser: str) -> None:
    server = hijack_server(marking_app, parser)
    with connect(server) as sock:
        for _ in range(2):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_until(sock, b"ok").endswith(b"\r\n\r\nok")
            # The connection is open and idle: its request (scope, headers, cycle) is already gone.
            assert wait_until(lambda: _freed(_markers[-1])), "the finished request is still held"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("first", [0, 5], ids=["head-alone", "head-and-half-the-body"])
def test_a_request_answered_before_its_body_arrived_is_kept_until_the_body_is_read(
    hijack_server: Any, parser: str, first: int
) -> None:
    server = hijack_server(marking_app, parser)
    body = b"0123456789"
    with connect(server) as sock:
        sock.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + body[:first])
        assert recv_until(sock, b"ok").endswith(b"\r\n\r\nok")
        time.sleep(0.2)
        sock.sendall(body[first:] + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # the rest of the body, the next request
        assert recv_until(sock, b"ok").endswith(b"\r\n\r\nok")
        assert len(_markers) >= 2 and wait_until(lambda: _freed(_markers[-2]) and _freed(_markers[-1]))


@pytest.mark.parametrize("parser", PARSERS)
def test_the_keep_alive_timeout_closes_an_idle_connection_and_each_request_restarts_it(
    hijack_server: Any, parser: str
) -> None:
    server = hijack_server(marking_app, parser, timeout_keep_alive=0.5)
    with connect(server) as sock:
        for _ in range(3):  # 0.3 s apart: past the first response's timeout, which each request cancelled
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_until(sock, b"ok").endswith(b"\r\n\r\nok")
            since = time.monotonic()
            time.sleep(0.3)
        closing = recv_to_close(sock)
    assert closing.how == "eof" and closing.data == b""
    assert 0.45 <= closing.at - since <= 3.0, "the keep-alive timeout did not close the idle connection in time"
