"""HTTP/1.x message framing: where a request head ends and where its body ends.

The server core uses these to feed a parser exactly one message at a time, so that
the bytes after a message are never parsed before the server knows whether the
connection is handed over. Parsers still validate every byte they are fed.
"""

from __future__ import annotations

from collections.abc import Iterable

CHUNKED = -1
"""Body length marker for ``Transfer-Encoding: chunked``."""

MAX_CHUNK_LINE = 4096
"""Longest chunk-size or trailer line accepted, in bytes."""


def find_head_end(data: bytes | bytearray, start: int = 0) -> int:
    """Index just past the blank line that ends a head in ``data[start:]``, or -1.

    A head ends at the first empty line: ``LF CR LF`` or ``LF LF`` (bare LF line
    endings are accepted, as Go's net/http and h11 do).
    """
    crlf = data.find(b"\n\r\n", start)
    lf = data.find(b"\n\n", start)
    if lf >= 0 and (crlf < 0 or lf < crlf):
        return lf + 2
    return crlf + 3 if crlf >= 0 else -1


def body_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    """Declared request body length: bytes, :data:`CHUNKED`, or 0 when there is none.

    The parser has already validated these headers (conflicts and bad values are
    rejected before this is asked), so this only reads them.
    """
    length = 0
    for name, value in headers:
        if name == b"transfer-encoding":
            return CHUNKED
        if name == b"content-length":
            length = int(value)
    return length


class ChunkScanner:
    """Finds the end of a chunked body incrementally; optionally collects its content.

    ``scan(data)`` consumes the body bytes in ``data`` and returns the index just past
    the body's end (after the trailer section) or -1 when all of ``data`` belongs to
    the body and more is needed. Raises :class:`ValueError` on malformed framing.
    """

    __slots__ = ("_left", "_line", "_state", "content")

    _SIZE, _DATA, _DATA_END, _TRAILER = range(4)

    def __init__(self, collect: bool = False) -> None:
        self._state = self._SIZE
        self._left = 0
        self._line = bytearray()
        self.content: list[bytes] | None = [] if collect else None

    def _take_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        end = data.find(b"\n", pos)
        if end < 0:
            self._line += data[pos:]
            if len(self._line) > MAX_CHUNK_LINE:
                raise ValueError("chunk line too long")
            return None, len(data)
        line = bytes(self._line + data[pos:end]).rstrip(b"\r")
        self._line.clear()
        if len(line) > MAX_CHUNK_LINE:
            raise ValueError("chunk line too long")
        return line, end + 1

    def scan(self, data: bytes) -> int:
        pos = 0
        while pos < len(data):
            if self._state == self._DATA:
                take = min(self._left, len(data) - pos)
                if self.content is not None:
                    self.content.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = self._DATA_END
                continue
            line, pos = self._take_line(data, pos)
            if line is None:
                return -1
            if self._state == self._SIZE:
                size = line.split(b";", 1)[0].strip(b" \t")
                if not size or size.strip(b"0123456789abcdefABCDEF"):
                    raise ValueError("invalid chunk size")
                self._left = int(size, 16)
                self._state = self._DATA if self._left else self._TRAILER
            elif self._state == self._DATA_END:
                if line:
                    raise ValueError("missing CRLF after chunk data")
                self._state = self._SIZE
            elif not line:
                return pos
        return -1
