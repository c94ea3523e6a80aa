"""The invariant: every byte after the request head that the app has not received reaches it once, in order."""

from __future__ import annotations

import os
import socket
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_hijack import IncompleteBodyError
from asgi_hijack.testing import RunningServer, protocol_class
from tests.apps import RESULTS
from tests.helpers import PARSERS, connect, recv_all, recv_until

HEAD_101 = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"


def exchange(server: RunningServer, segments: list[bytes], pause: float = 0.0) -> bytes:
    """Send ``segments`` (each its own send), half-close, return everything the server sent."""
    with connect(server) as sock:
        for segment in segments:
            sock.sendall(segment)
            if pause:
                time.sleep(pause)
        sock.shutdown(socket.SHUT_WR)
        return recv_all(sock)


def test_bytes_in_the_same_segment_as_the_head(probe_server: RunningServer) -> None:
    out = exchange(probe_server, [b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\nhello, same segment"])
    assert out == b"hello, same segment"


def test_bytes_arriving_later(probe_server: RunningServer) -> None:
    out = exchange(probe_server, [b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", b"later ", b"and later"], pause=0.05)
    assert out == b"later and later"


def test_large_run_right_after_a_get(probe_server: RunningServer) -> None:
    payload = os.urandom(100 * 1024)
    out = exchange(probe_server, [b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" + payload])
    assert out == payload


def _refuses_bare_lf(server: RunningServer) -> bool:
    """httptools and zttp refuse (400) a chunk where a bare-LF head (LF LF) comes before CRLF CRLF, as
    stock uvicorn does: the fast path looks for bare LF only where the parser accepts them (h11)."""
    cls: Any = protocol_class(server.server.config.http)
    return bool(cls._hj_strict_lf)


def test_a_head_ending_in_bare_lf_and_the_next_one_in_one_segment(probe_server: RunningServer) -> None:
    """The first head ends at LF LF: what follows is never parsed with it, though the chunk ends in CRLF CRLF."""
    pipelined = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
    out = exchange(probe_server, [b"GET /echo HTTP/1.1\nHost: x\n\n" + pipelined])
    if _refuses_bare_lf(probe_server):
        assert out.startswith(b"HTTP/1.1 400 ") and out.count(b"HTTP/1.1") == 1
    else:
        assert out == pipelined


def test_a_head_with_a_bare_lf_line_that_ends_in_crlf(probe_server: RunningServer) -> None:
    out = exchange(probe_server, [b"GET /echo HTTP/1.1\nHost: x\r\n\r\nafter the head"])
    assert out == b"after the head"


def test_pipelined_requests_after_the_hijacked_one_are_raw_bytes(probe_server: RunningServer) -> None:
    pipelined = b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
    out = exchange(
        probe_server,
        [
            b"GET /plain HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /echo?status=101 HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n" + pipelined
        ],
    )
    first, _, rest = out.partition(b"\r\n\r\nok")
    assert first.startswith(b"HTTP/1.1 200 OK")
    assert rest == HEAD_101 + pipelined


def test_unread_content_length_body_is_handed_over(probe_server: RunningServer) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nContent-Length: 15\r\n\r\n"
    out = exchange(probe_server, [head + b'{"Detach":true}', b"stdin bytes"], pause=0.05)
    assert out == b'{"Detach":true}stdin bytes'


def test_body_read_with_receive_then_hijack_leaves_the_bytes_after_it(probe_server: RunningServer) -> None:
    head = (
        b"POST /echo?read=1&status=101&id=docker-exec HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\n"
        b"Connection: Upgrade\r\nContent-Type: application/json\r\nContent-Length: 15\r\n\r\n"
    )
    out = exchange(probe_server, [head + b'{"Detach":true}after the body'])
    assert RESULTS["docker-exec"] == b'{"Detach":true}'
    assert out == HEAD_101 + b"after the body"


def test_partly_received_content_length_body(probe_server: RunningServer) -> None:
    head = b"POST /partial-read?id=partial HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n"
    out = exchange(probe_server, [head + b"0123", b"456789", b"after"], pause=0.2)
    first = RESULTS["partial"]
    assert first["body"] == b"0123" and first["more_body"] is True
    assert out == b"456789after"


def test_complete_chunked_body_is_handed_over_without_framing(probe_server: RunningServer) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = exchange(probe_server, [head + b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Checksum: abc\r\n\r\nraw after"])
    assert out == b"hello worldraw after"


def test_chunked_body_read_to_the_end_then_hijack(probe_server: RunningServer) -> None:
    head = b"POST /echo?read=1&id=chunked-read HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    out = exchange(probe_server, [head + b"5\r\nhello\r\n", b"0\r\n\r\nraw after"], pause=0.1)
    assert RESULTS["chunked-read"] == b"hello"
    assert out == b"raw after"


def test_partly_arrived_chunked_body_is_refused_clearly(probe_server: RunningServer) -> None:
    head = b"POST /echo?id=chunked-partial HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    with connect(probe_server) as sock:
        sock.sendall(head + b"5\r\nhel")
        out = recv_until(sock, b"then hijack.")
    assert out.startswith(b"HTTP/1.1 409 ")
    error = RESULTS["chunked-partial"]
    assert isinstance(error, IncompleteBodyError)
    assert "receive()" in str(error)


# -- the property: any segmentation, any parser, any request kind -------------------------------

REQUESTS = {
    # name: (head, body, body read by the app, response head the server writes)
    "get": (b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", b"", False, b""),
    "get-101": (
        b"GET /echo?status=101 HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n",
        b"",
        False,
        HEAD_101,
    ),
    "connect": (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", b"", False, b""),
    "go-rpc-bare-lf": (b"CONNECT /_goRPC_ HTTP/1.0\n\n", b"", False, b""),
    "upgrade-body-unread": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nContent-Length: 7\r\n\r\n",
        b"payload",
        False,
        b"",
    ),
    "post-body-read": (
        b"POST /echo?read=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\n\r\n",
        b"payload",
        True,
        b"",
    ),
}


@st.composite
def segmented(draw: st.DrawFn) -> tuple[str, bytes, list[bytes], list[bool]]:
    kind = draw(st.sampled_from(sorted(REQUESTS)))
    head, body, _, _ = REQUESTS[kind]
    trailing = draw(st.binary(min_size=0, max_size=3000))
    stream = head + body + trailing
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=max(1, len(stream) - 1)), max_size=8)))
    segments = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True) if stream[a:b]]
    pauses = draw(st.lists(st.booleans(), min_size=len(segments), max_size=len(segments)))
    return kind, trailing, segments, pauses


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=segmented())
def test_no_byte_lost_or_duplicated_whatever_the_segmentation(
    probe_server: RunningServer, case: tuple[str, bytes, list[bytes], list[bool]]
) -> None:
    kind, trailing, segments, pauses = case
    _, body, read, response_head = REQUESTS[kind]
    with connect(probe_server) as sock:
        for segment, pause in zip(segments, pauses, strict=True):
            sock.sendall(segment)
            if pause:
                time.sleep(0.003)
        sock.shutdown(socket.SHUT_WR)
        out = recv_all(sock)
    expected = response_head + (b"" if read else body) + trailing
    assert out == expected, f"{kind}: {len(out)} bytes back, {len(expected)} expected"


@pytest.mark.parametrize("loop", ["uvloop"])
def test_no_byte_lost_on_uvloop(hijack_server: object, loop: str) -> None:
    from tests.apps import probe_app

    for parser in PARSERS:
        server = hijack_server(probe_app, parser, loop=loop)  # type: ignore[operator]
        payload = os.urandom(200_000)
        out = exchange(server, [b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n" + payload[:1000], payload[1000:]])
        assert out == payload
