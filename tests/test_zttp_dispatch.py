"""ZttpHijackProtocol tells HTTP/2 (prior knowledge) from HTTP/1.1 by the first bytes, however they are cut.

The class is the HTTP/1.1 protocol itself: the first bytes of a cleartext connection, while
they are a prefix of the HTTP/2 preface, are held; the whole preface hands the connection to
HTTP/2, anything else goes to HTTP/1.1 with the held bytes first. A real server on 127.0.0.1,
raw sockets cut where hypothesis says, the ``h2`` package as the HTTP/2 client.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator, Sequence
from typing import Any

import h2.config
import h2.connection
import h2.events
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_hijack.lifecycle import ConnectionInfo, ConnState
from asgi_hijack.testing import RunningServer, serve
from tests.apps import read_body, respond
from tests.helpers import connect, recv_to_close, requires_zttp, wait_until, with_settings

pytestmark = requires_zttp

STOCK = "uvicorn.protocols.http.auto_zttp_impl:AutoZttpProtocol"
"""What ``uvicorn --http zttp --http2`` runs: the reference for the choice."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
EXAMPLES = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer ``<http_version> <body>``."""
    if scope["type"] == "http":
        await respond(send, 200, scope["http_version"].encode() + b" " + await read_body(receive))


@pytest.fixture(scope="module")
def server() -> Iterator[RunningServer]:
    with serve(echo, "zttp") as running:
        yield running


def send_cut(sock: socket.socket, data: bytes, cuts: Sequence[int]) -> None:
    """Send ``data`` in pieces ending at ``cuts``, each its own TCP segment (a pause between)."""
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    start = 0
    for end in [*sorted(set(cuts)), len(data)]:
        if start < end <= len(data):
            sock.sendall(data[start:end])
            time.sleep(0.002)
            start = end


def cuts_in(size: int) -> st.SearchStrategy[list[int]]:
    """Cut points, mostly among the first 30 bytes (where the choice is made)."""
    early = st.integers(1, min(size, 30))
    return st.lists(st.one_of(early, early, st.integers(1, size)), max_size=8)


def h2_exchange(sock: socket.socket, body: bytes, cuts: Sequence[int]) -> bytes:
    """A POST of ``body`` over HTTP/2 (its first bytes cut at ``cuts``); returns the response body."""
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream_id = conn.get_next_available_stream_id()
    head = [(":method", "POST"), (":scheme", "http"), (":authority", "x"), (":path", "/echo")]
    conn.send_headers(stream_id, head)
    conn.send_data(stream_id, body, end_stream=True)
    send_cut(sock, conn.data_to_send(), cuts)
    answer = b""
    while True:
        data = sock.recv(65536)
        assert data, f"the server closed the connection; got {answer!r}"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.DataReceived):
                answer += event.data
            elif isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id:
                return answer
            elif isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                raise AssertionError(f"HTTP/2 error: {event!r}")
        sock.sendall(conn.data_to_send())


@EXAMPLES
@given(body=st.binary(max_size=2000), data=st.data())
def test_the_preface_cut_anywhere_is_http2(server: RunningServer, body: bytes, data: st.DataObject) -> None:
    with connect(server) as sock:
        assert h2_exchange(sock, body, data.draw(cuts_in(len(PREFACE) + 60))) == b"2 " + body


@EXAMPLES
@given(method=st.sampled_from([b"POST", b"PUT", b"PATCH", b"PRI"]), body=st.binary(max_size=2000), data=st.data())
def test_http1_that_starts_like_the_preface_loses_no_byte(
    server: RunningServer, method: bytes, body: bytes, data: st.DataObject
) -> None:
    """``P``, ``PR``, ``PRI``: bytes held while they may still be the preface reach HTTP/1.1 first, in order."""
    request = b"%s /echo HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (method, len(body), body)
    with connect(server) as sock:
        send_cut(sock, request, data.draw(cuts_in(len(request))))
        assert _one_response(sock).endswith(b"\r\n\r\n1.1 " + body)
        sock.sendall(b"GET /echo HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")  # the fast path after it
        assert recv_to_close(sock).data.endswith(b"\r\n\r\n1.1 ")


def _one_response(sock: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection; got {data!r}"
        data += chunk
    return data


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@pytest.mark.parametrize(
    "first",
    [
        PREFACE[:-1] + b"X",  # all but the last byte of the preface
        b"PRI * HTTP/2.0\r\n\r\n",  # its first line and blank line, then the client closes
        b"PRI * HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\r\n" + PREFACE,  # not the first bytes
    ],
)
def test_near_misses_get_the_same_answer_as_from_uvicorns_own_dispatcher(first: bytes) -> None:
    """What is not exactly the preface is HTTP/1.1 for us as for uvicorn's ``AutoZttpProtocol``."""
    answers = []
    for protocol in ("zttp", STOCK):
        with serve(echo, protocol) as running, connect(running) as sock:
            with contextlib.suppress(OSError):  # the server may answer and close before the last byte
                send_cut(sock, first, range(1, len(first)))
                sock.shutdown(socket.SHUT_WR)
            answers.append(recv_to_close(sock).data.partition(b"\r\n")[0])
    assert answers[0] == answers[1], answers


def test_state_hooks_see_http2_by_prior_knowledge_as_a_hijack() -> None:
    """As Go's h2c handler, which hijacks the HTTP/1 connection: ``new``, then ``hijacked``."""
    seen: list[str] = []

    def hook(info: ConnectionInfo, state: ConnState) -> None:
        seen.append(state.value)

    with serve(echo, with_settings("zttp", conn_state_hooks=(hook,))) as running, connect(running) as sock:
        assert h2_exchange(sock, b"x", [3, 20]) == b"2 x"
        assert wait_until(lambda: len(seen) >= 2)
    assert seen == ["new", "hijacked"]
