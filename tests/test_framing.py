"""The sans-I/O framer (asgi_hijack.framing), byte by byte, without sockets.

The driver here stands in for the server core: it calls ``receive_data``, loops on
``next_event`` and reports what a parser made of each head with ``head_parsed``.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_hijack.framing import (
    BODY,
    CHUNKED,
    CLOSED,
    IDLE,
    MAX_HEAD_SIZE,
    NEED_DATA,
    PARSING,
    PAUSED,
    RESPONDING,
    SWITCHED,
    Body,
    ChunkScanner,
    EndOfMessage,
    Event,
    Framer,
    Head,
    Reject,
    SkippedBody,
    body_length,
    find_head_end,
)

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def events(framer: Framer, data: bytes = b"") -> list[Event]:
    """Feed ``data`` and collect events until the framer needs data or pauses (included)."""
    framer.receive_data(data)
    out: list[Event] = []
    while True:
        event = framer.next_event()
        out.append(event)
        if event is NEED_DATA or event is PAUSED or isinstance(event, Reject):
            return out
        if isinstance(event, Head):
            return out  # the driver must call head_parsed() before asking again


def post(body: bytes) -> bytes:
    return b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)


# -- primitives -------------------------------------------------------------------------
def test_find_head_end_accepts_crlf_and_bare_lf() -> None:
    assert find_head_end(GET) == len(GET)
    assert find_head_end(b"CONNECT /_goRPC_ HTTP/1.0\n\nrest") == len(b"CONNECT /_goRPC_ HTTP/1.0\n\n")
    assert find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n") == -1


def test_body_length_reads_the_framing_headers() -> None:
    assert body_length([(b"host", b"x")]) == 0
    assert body_length([(b"content-length", b"12")]) == 12
    assert body_length([(b"transfer-encoding", b"chunked"), (b"content-length", b"3")]) == CHUNKED


def test_chunk_scanner_finds_the_end_after_the_trailers_and_collects_content() -> None:
    scanner = ChunkScanner(collect=True)
    body = b"3;ext=1\r\nabc\r\n0\r\nTrailer: t\r\n\r\n"
    assert scanner.scan(body + b"next") == len(body)
    assert scanner.content == [b"abc"]


@pytest.mark.parametrize("body", [b"zz\r\n", b"3\r\nabcX\r\n", b"1" * 5000])
def test_chunk_scanner_rejects_malformed_framing(body: bytes) -> None:
    with pytest.raises(ValueError):
        ChunkScanner().scan(body)


# -- heads --------------------------------------------------------------------------------
def test_a_head_goes_out_whole_and_nothing_after_it_until_the_parser_reported() -> None:
    framer = Framer()
    assert events(framer, GET + b"GET /2") == [Head(GET)]
    assert framer.state is PARSING
    assert framer.next_event() is PAUSED  # the rest waits for head_parsed()


def test_a_head_split_anywhere_waits_for_its_blank_line() -> None:
    framer = Framer()
    for byte in GET[:-1]:
        assert events(framer, bytes([byte])) == [NEED_DATA]
    assert framer.buffered == len(GET) - 1
    assert events(framer, GET[-1:]) == [Head(GET)]


def test_empty_lines_before_a_request_line_are_dropped() -> None:
    assert events(Framer(), b"\r\n\r\n" + GET) == [Head(GET)]


def test_bare_lf_heads_come_out_with_crlf() -> None:
    assert events(Framer(), b"CONNECT /_goRPC_ HTTP/1.0\n\n") == [Head(b"CONNECT /_goRPC_ HTTP/1.0\r\n\r\n")]


def test_a_head_over_the_limit_is_rejected_with_431_and_the_framer_closes() -> None:
    framer = Framer()
    result = events(framer, b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_SIZE)
    assert result == [Reject(431, "Request header fields too large.")]
    assert framer.state is CLOSED
    assert events(framer, GET) == [PAUSED]


def test_the_head_timeout_rejects_a_partial_head_with_408_and_an_idle_one_quietly() -> None:
    partial = Framer()
    events(partial, b"GET / HT")
    assert partial.head_timed_out() == Reject(408, "Request head timeout.")
    idle = Framer()
    assert idle.head_timed_out() is None
    assert partial.state is CLOSED and idle.state is CLOSED


# -- messages and the bytes after them ----------------------------------------------------
def test_bytes_after_a_message_are_held_until_its_response_completes() -> None:
    framer = Framer()
    assert events(framer, GET + GET) == [Head(GET)]
    framer.head_parsed(0)
    assert framer.state is RESPONDING
    assert events(framer, b"more") == [PAUSED]
    assert framer.buffered == len(GET) + 4
    framer.response_complete()
    assert framer.state is IDLE
    assert events(framer) == [Head(GET)]


def test_a_response_that_completed_first_lets_the_next_head_through() -> None:
    framer = Framer()
    events(framer, GET)
    framer.head_parsed(0, responded=True)
    assert framer.state is IDLE


def test_a_content_length_body_goes_to_the_parser_then_the_message_ends() -> None:
    framer = Framer()
    data = post(b"hello") + GET
    head = data[: data.index(b"hello")]
    assert events(framer, data[: -len(GET) - 2]) == [Head(head)]
    framer.head_parsed(5)
    assert framer.state is BODY
    assert events(framer) == [Body(b"hel"), NEED_DATA]
    assert events(framer, b"lo" + GET) == [Body(b"lo"), EndOfMessage(), PAUSED]
    assert framer.state is RESPONDING


def test_a_body_the_parser_skips_is_handed_out_to_deliver_chunked_bodies_decoded() -> None:
    framer = Framer()
    events(framer, b"GET / HTTP/1.1\r\nUpgrade: tcp\r\nTransfer-Encoding: chunked\r\n\r\n")
    framer.head_parsed(CHUNKED, skip=True)
    assert framer.in_chunked_body
    assert events(framer, b"2\r\nhi\r\n") == [SkippedBody(b"hi"), NEED_DATA]
    assert events(framer, b"0\r\n\r\nraw") == [SkippedBody(b""), EndOfMessage(skipped=True), PAUSED]
    assert not framer.in_chunked_body
    assert framer.hand_over() == b"raw"


def test_a_malformed_chunked_body_is_a_400() -> None:
    framer = Framer()
    events(framer, b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
    framer.head_parsed(CHUNKED)
    assert events(framer, b"xyz\r\n") == [Reject(400, "Invalid chunked request body: invalid chunk size.")]
    assert framer.state is CLOSED


def test_a_response_during_the_body_frees_the_connection_when_the_body_ends() -> None:
    framer = Framer()
    events(framer, post(b"ab")[:-2])
    framer.head_parsed(2)
    framer.response_complete()
    assert events(framer, b"ab") == [Body(b"ab"), EndOfMessage(), NEED_DATA]
    assert framer.state is IDLE


def test_hand_over_returns_every_byte_not_handed_out_and_ends_framing() -> None:
    framer = Framer()
    events(framer, GET + b"\x00raw bytes")
    framer.head_parsed(0)
    assert framer.hand_over() == b"\x00raw bytes"
    assert framer.state is SWITCHED
    assert events(framer, b"later") == [PAUSED]


def test_head_parsed_out_of_turn_is_a_driver_bug() -> None:
    framer = Framer()
    events(framer, GET)
    framer.head_parsed(0)
    with pytest.raises(RuntimeError, match="RESPONDING"):
        framer.head_parsed(0)


# -- the invariant, for any segmentation ---------------------------------------------------
@given(
    bodies=st.lists(st.binary(max_size=40), min_size=1, max_size=4),
    tail=st.binary(max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
)
def test_every_byte_comes_out_once_in_order_whatever_the_segmentation(
    bodies: list[bytes], tail: bytes, cuts: list[int]
) -> None:
    """Heads, bodies and held bytes, concatenated, are exactly the input, however it is split."""
    stream = b"".join(post(body) for body in bodies) + b"\x00" + tail
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    framer = Framer()
    out = bytearray()
    messages = 0
    for start, end in itertools.pairwise(points):
        framer.receive_data(stream[start:end])
        while True:
            event = framer.next_event()
            if isinstance(event, Head):
                out += event.data
                length = len(bodies[messages])
                framer.head_parsed(length)
                messages += not length  # no body: the message is complete with its head
            elif isinstance(event, Body):
                out += event.data
            elif isinstance(event, EndOfMessage):
                messages += 1
            elif event is PAUSED and framer.state is RESPONDING and messages < len(bodies):
                framer.response_complete()
            else:
                assert event is NEED_DATA or event is PAUSED
                break
    assert messages == len(bodies)
    out += framer.hand_over()
    assert bytes(out) == stream
