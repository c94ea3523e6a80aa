"""Serialization of the response heads the core writes itself: a hijack head, and its rejections."""

from __future__ import annotations

import http
import re
from collections.abc import Iterable

_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_PHRASES = {status.value: status.phrase.encode("ascii") for status in http.HTTPStatus}
"""Reason phrases by status code (looked up per hijack: cheaper than ``HTTPStatus(status)``)."""
_BYTES = (bytes, bytearray)
_STATUS_LINES: dict[tuple[bytes, int], bytes] = {}
"""Status lines with the standard phrase, made once per version and status (at most 2 x 900)."""


def build_head(
    http_version: str,
    status: int,
    reason: bytes | str | None,
    headers: Iterable[tuple[bytes, bytes]],
) -> bytes:
    """Status line and header lines, exactly as given (nothing added), ending in CRLF CRLF.

    Raises :class:`ValueError` for a status outside 100-999, or a reason or header that
    would break the head (CR, LF, NUL, bad header names).
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 999:
        raise ValueError(f"hijack status must be an int from 100 to 999, got {status!r}")
    version = b"HTTP/1.0" if http_version == "1.0" else b"HTTP/1.1"
    if reason is None:
        line = _STATUS_LINES.get((version, status))
        if line is None:
            line = _STATUS_LINES[version, status] = b"%s %d %s\r\n" % (version, status, _PHRASES.get(status, b""))
    else:
        phrase = reason.encode("latin-1") if isinstance(reason, str) else bytes(reason)
        if _BAD_VALUE.search(phrase):
            raise ValueError(f"hijack reason phrase must not contain control characters: {reason!r}")
        line = b"%s %d %s\r\n" % (version, status, phrase)
    parts = [line]
    for name, value in headers:
        if not isinstance(name, _BYTES) or not isinstance(value, _BYTES):
            raise ValueError(f"hijack headers must be (bytes, bytes) pairs, got {(name, value)!r}")
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name in hijack head: {name!r}")
        if _BAD_VALUE.search(value):
            raise ValueError(f"invalid header value in hijack head for {name!r}: control characters")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    return b"".join(parts)


def build_rejection(status: int, reason: str) -> bytes:
    """A complete ``Connection: close`` response for a request the core rejects (400, 408, 431)."""
    body = reason.encode("utf-8")
    phrase = _PHRASES[status]
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
        b"connection: close\r\n\r\n%s" % (status, phrase, len(body), body)
    )
