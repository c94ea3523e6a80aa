"""The response heads the core writes itself (:mod:`asgi_hijack.head`), without sockets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import pytest

from asgi_hijack.head import build_head, build_rejection

UPGRADE = [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")]


def test_status_line_and_headers_exactly_as_given() -> None:
    assert build_head("1.1", 101, None, UPGRADE) == (
        b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"
    )


def test_no_headers_http_1_0_and_unknown_status() -> None:
    assert build_head("1.0", 200, None, ()) == b"HTTP/1.0 200 OK\r\n\r\n"
    assert build_head("1.1", 599, None, []) == b"HTTP/1.1 599 \r\n\r\n"


@pytest.mark.parametrize(("reason", "line"), [("Yes", b"Yes"), (b"Bien s\xfbr", b"Bien s\xfbr"), ("", b"")])
def test_a_reason_phrase_replaces_the_standard_one(reason: str | bytes, line: bytes) -> None:
    assert build_head("1.1", 200, reason, ()) == b"HTTP/1.1 200 " + line + b"\r\n\r\n"


def test_headers_from_a_generator_and_bytearrays() -> None:
    def pairs() -> Iterable[tuple[Any, Any]]:
        yield bytearray(b"x-a"), b"1"
        yield b"x-b", bytearray(b"two words\tand a tab")

    assert build_head("1.1", 200, None, pairs()) == b"HTTP/1.1 200 OK\r\nx-a: 1\r\nx-b: two words\tand a tab\r\n\r\n"


def test_the_same_arguments_give_the_same_head_every_time() -> None:
    heads = {build_head("1.1", 101, None, list(UPGRADE)) for _ in range(3)}
    assert len(heads) == 1


@pytest.mark.parametrize("status", [True, 99, 1000, 101.0, "101", None])
def test_a_status_outside_100_to_999_or_not_an_int_is_refused(status: Any) -> None:
    with pytest.raises(ValueError, match="status must be an int from 100 to 999"):
        build_head("1.1", status, None, ())


@pytest.mark.parametrize("reason", ["OK\r\nx-injected: 1", b"a\nb", "nul\x00"])
def test_a_reason_that_would_break_the_head_is_refused(reason: str | bytes) -> None:
    with pytest.raises(ValueError, match="reason phrase must not contain control characters"):
        build_head("1.1", 200, reason, ())


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        ([(b"x-a", b"1\r\nx-injected: 1")], "invalid header value in hijack head for b'x-a'"),
        ([(b"x-a", b"1"), (b"x-b", b"\n")], "invalid header value in hijack head for b'x-b'"),
        ([(b"x-a", b"\x7f")], "invalid header value"),
        ([(b"bad name", b"1")], "invalid header name in hijack head: b'bad name'"),
        ([(b"x-a", b"1"), (b"x:b", b"1")], "invalid header name in hijack head: b'x:b'"),
        ([(b"", b"1")], "invalid header name"),
        ([(b"x-a\r\n", b"1")], "invalid header name"),
        ([("x-a", b"1")], "hijack headers must be \\(bytes, bytes\\) pairs"),
        ([(b"x-a", "1")], "hijack headers must be \\(bytes, bytes\\) pairs"),
        ([(memoryview(b"x-a"), b"1")], "hijack headers must be \\(bytes, bytes\\) pairs"),
    ],
)
def test_a_header_that_would_break_the_head_is_refused_and_named(headers: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_head("1.1", 200, None, headers)


def test_rejection_is_a_complete_closing_response() -> None:
    assert build_rejection(431, "Request header too large") == (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: text/plain; charset=utf-8\r\n"
        b"content-length: 24\r\nconnection: close\r\n\r\nRequest header too large"
    )
