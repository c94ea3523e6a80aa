"""HTTP/1.x request framing as a sans-I/O state machine: what to feed, hold, deliver or reject.

The server core puts a :class:`Framer` between the socket and the parser. The framer
decides *how much* of the byte stream the parser may see; the parser still validates
every byte it is fed. It does no I/O: the core calls :meth:`Framer.receive_data` with
socket bytes and loops on :meth:`Framer.next_event`, in the way h11's ``Connection`` is
driven, and tells the framer what the parser made of each head.

The theory. A connection carries request messages, one at a time::

    IDLE --Head--> PARSING --head_parsed(body)--> BODY --EndOfMessage--> RESPONDING --response_complete()--> IDLE
                          \\--head_parsed(0)------------------------------/
    any state --hand_over()--> SWITCHED        any state --Reject / close()--> CLOSED

* ``IDLE``: a head is awaited. Bytes accumulate until a blank line ends the head; empty
  lines before a request line are dropped (RFC 9112 2.2). Bare-LF heads are returned
  with CRLF line endings, so that every parser accepts what Go and h11 accept. A head
  larger than :data:`MAX_HEAD_SIZE` is a :class:`Reject` with status 431.
* ``PARSING``: the head went out as a :class:`Head` event; the driver feeds it to the
  parser and reports the body framing with :meth:`Framer.head_parsed`.
* ``BODY``: :class:`Body` events carry the body bytes the parser must see, or
  :class:`SkippedBody` events the bytes of a body the parser skips (llhttp skips the body
  of an Upgrade request): the driver delivers those to the request itself, chunked
  bodies decoded. Then :class:`EndOfMessage`. A malformed chunked body is a 400 ``Reject``.
* ``RESPONDING``: the message is complete and its response is not. Later bytes are held,
  never parsed: :data:`PAUSED`. They are parsed once the response completes (the next
  request), or handed over whole by :meth:`Framer.hand_over` when the app hijacks.

Nothing a client sends after a message is ever parsed before the server knows whether
the connection is handed over: that is what makes hijacking lossless and pipelining
and request smuggling safe.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BODY",
    "CHUNKED",
    "CLOSED",
    "IDLE",
    "MAX_CHUNK_LINE",
    "MAX_HEAD_SIZE",
    "NEED_DATA",
    "PARSING",
    "PAUSED",
    "RESPONDING",
    "SWITCHED",
    "Body",
    "ChunkScanner",
    "EndOfMessage",
    "Event",
    "Framer",
    "Head",
    "Reject",
    "SkippedBody",
    "body_length",
    "find_head_end",
]

CHUNKED = -1
"""Body length marker for ``Transfer-Encoding: chunked``."""

MAX_CHUNK_LINE = 4096
"""Longest chunk-size or trailer line accepted, in bytes."""

MAX_HEAD_SIZE = 65536
"""A request head larger than this is rejected with 431."""

_LINE_END = re.compile(rb"\r?\n")


class _Sentinel(type):
    """Named states and results (as h11's): a debugger shows ``BODY``, not ``2``."""

    def __repr__(cls) -> str:
        return cls.__name__


class IDLE(metaclass=_Sentinel):
    """Waiting for a request head."""


class PARSING(metaclass=_Sentinel):
    """A head was handed out; waiting for :meth:`Framer.head_parsed`."""


class BODY(metaclass=_Sentinel):
    """Handing out the body of the current message."""


class RESPONDING(metaclass=_Sentinel):
    """The message is complete, its response is not: later bytes are held."""


class SWITCHED(metaclass=_Sentinel):
    """The connection was handed over (hijacked): the framer is done."""


class CLOSED(metaclass=_Sentinel):
    """The connection is closing (rejected, or closed by either side): the framer is done."""


class NEED_DATA(metaclass=_Sentinel):
    """:meth:`Framer.next_event` needs more bytes."""


class PAUSED(metaclass=_Sentinel):
    """:meth:`Framer.next_event` holds the bytes until the response completes (or there are none)."""


State = type[IDLE] | type[PARSING] | type[BODY] | type[RESPONDING] | type[SWITCHED] | type[CLOSED]


@dataclass(frozen=True, slots=True)
class Head:
    """A complete request head (CRLF line endings) to feed to the parser."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Body:
    """Body bytes to feed to the parser."""

    data: bytes


@dataclass(frozen=True, slots=True)
class SkippedBody:
    """Body content the parser skips: the driver delivers it to the request (chunked: decoded)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The body of the current message ended; ``skipped``: it went out as :class:`SkippedBody`."""

    skipped: bool = False


@dataclass(frozen=True, slots=True)
class Reject:
    """Answer ``status`` with ``reason`` and close; nothing more is framed."""

    status: int
    reason: str


Event = Head | Body | SkippedBody | EndOfMessage | Reject | type[NEED_DATA] | type[PAUSED]


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


class Framer:
    """Frames the requests of one HTTP/1.x connection; see the module docstring for the states."""

    __slots__ = ("_buffer", "_chunks", "_left", "_responded", "_skip", "eof", "state")

    def __init__(self) -> None:
        self.state: State = IDLE
        self._buffer = b""  # bytes received and not yet handed out
        self._left = 0  # Content-Length body bytes still to hand out
        self._chunks: ChunkScanner | None = None
        self._skip = False  # the parser skips this body: hand it out as SkippedBody
        self._responded = False  # the response completed before the message did
        self.eof = False
        """The client half-closed; set by the driver (:meth:`receive_eof`)."""

    # -- inspection -----------------------------------------------------------------
    @property
    def buffered(self) -> int:
        """Bytes received and not handed out: a partial head, or bytes held while RESPONDING."""
        return len(self._buffer)

    @property
    def in_chunked_body(self) -> bool:
        """True while a chunked body is only partly received (its framing cannot be handed over)."""
        return self.state is BODY and self._chunks is not None

    # -- input ------------------------------------------------------------------------
    def receive_data(self, data: bytes) -> None:
        """Add bytes from the socket."""
        if self.state is not SWITCHED and self.state is not CLOSED:
            self._buffer += data

    def receive_eof(self) -> None:
        """The client half-closed the connection."""
        self.eof = True

    def head_parsed(self, body: int, *, skip: bool = False, responded: bool = False) -> None:
        """Report what the parser made of the last head: its body length (0, bytes or :data:`CHUNKED`).

        ``skip``: the parser skips that body (it goes out as :class:`SkippedBody`).
        ``responded``: the response is already complete. Also accepted in ``IDLE``, for a
        head the driver fed to the parser directly (its fast path).
        """
        if self.state is not PARSING and self.state is not IDLE:
            raise RuntimeError(f"head_parsed() in state {self.state!r}")
        self._responded = responded
        if body:
            self.state = BODY
            self._skip = skip
            if body == CHUNKED:
                self._chunks, self._left = ChunkScanner(collect=skip), 0
            else:
                self._chunks, self._left = None, body
        else:
            self._message_done()

    def response_complete(self) -> None:
        """The response to the current message completed: held bytes become the next request."""
        if self.state is RESPONDING:
            self.state = IDLE
        elif self.state is BODY or self.state is PARSING:
            self._responded = True

    def hand_over(self) -> bytes:
        """Switch protocols: return every byte received and not handed out; the framer is done."""
        rest, self._buffer = self._buffer, b""
        self.state = SWITCHED
        return rest

    def close(self) -> None:
        """The connection is closing: nothing more is framed."""
        if self.state is not SWITCHED:
            self.state = CLOSED
        self._buffer = b""

    def head_timed_out(self) -> Reject | None:
        """The head timeout expired: a 408 if part of a head arrived (else close quietly)."""
        partial = self.state is IDLE and bool(self._buffer)
        self.close()
        return Reject(408, "Request head timeout.") if partial else None

    # -- output -----------------------------------------------------------------------
    def next_event(self) -> Event:
        """The next thing to do with the bytes received, or :data:`NEED_DATA` / :data:`PAUSED`."""
        state = self.state
        if state is IDLE:
            return self._next_head()
        if state is BODY:
            return self._next_body()
        return PAUSED  # RESPONDING holds bytes until response_complete(); other states hand out nothing

    def _next_head(self) -> Event:
        data = self._buffer
        if data[:1] in (b"\r", b"\n"):
            data = self._buffer = data.lstrip(b"\r\n")
        if not data:
            return NEED_DATA
        end = find_head_end(data)
        if end < 0:
            if len(data) > MAX_HEAD_SIZE:
                return self._reject(431, "Request header fields too large.")
            return NEED_DATA
        if end > MAX_HEAD_SIZE:
            return self._reject(431, "Request header fields too large.")
        head, self._buffer = data[:end], data[end:]
        if head.count(b"\n") != head.count(b"\r\n"):
            head = _LINE_END.sub(b"\r\n", head)
        self.state = PARSING
        return Head(head)

    def _next_body(self) -> Event:
        data = self._buffer
        chunks = self._chunks
        if chunks is None:
            if not self._left:
                return self._end_of_message()
            if not data:
                return NEED_DATA
            piece, self._buffer = data[: self._left], data[self._left :]
            self._left -= len(piece)
            return SkippedBody(piece) if self._skip else Body(piece)
        if not data:
            return NEED_DATA
        try:
            end = chunks.scan(data)
        except ValueError as exc:
            return self._reject(400, f"Invalid chunked request body: {exc}.")
        if end < 0:
            piece, self._buffer = data, b""
        else:
            piece, self._buffer = data[:end], data[end:]
            self._chunks = None
        if chunks.content is not None:
            piece = b"".join(chunks.content)
            chunks.content.clear()
            return SkippedBody(piece)
        return Body(piece)

    def _end_of_message(self) -> EndOfMessage:
        event = EndOfMessage(self._skip)
        self._message_done()
        return event

    def _message_done(self) -> None:
        self._chunks = None
        self._left = 0
        self._skip = False
        self.state = IDLE if self._responded else RESPONDING

    def _reject(self, status: int, reason: str) -> Reject:
        self.close()
        return Reject(status, reason)
