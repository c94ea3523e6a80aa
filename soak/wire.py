"""Raw-socket helpers shared by the reliability tests and the soak run."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

SERVER_LOGGERS = ("uvicorn.error", "asyncio")


def connect(address: tuple[str, int], timeout: float = 5.0) -> socket.socket:
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def reset(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def recv_until(sock: socket.socket, marker: bytes, timeout: float = 5.0) -> bytes:
    """Read until ``marker`` has arrived; fail on EOF or after ``timeout``."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}; got {data[:300]!r}")
        data += chunk
    return data


def recv_exactly(sock: socket.socket, size: int, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise AssertionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return data


@dataclass
class Closing:
    """What a client saw until the server closed: the bytes, how it ended, and when."""

    data: bytes
    how: str  # "eof", "reset" or "open" (still open at the deadline)
    seconds: float
    at: float = 0.0
    """``time.monotonic()`` when the reading ended."""


def recv_to_close(sock: socket.socket, timeout: float = 5.0) -> Closing:
    """Read until the server closes (EOF or RST) or ``timeout`` passes."""
    started = time.monotonic()
    deadline = started + timeout
    data = b""
    how = "open"
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            how = "reset"
            break
        except TimeoutError:
            break
        if not chunk:
            how = "eof"
            break
        data += chunk
    ended = time.monotonic()
    return Closing(data, how, ended - started, ended)


def open_fds() -> int:
    """Descriptors open in this process (the in-process test server shares them)."""
    return len(os.listdir("/proc/self/fd"))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@dataclass(frozen=True)
class LoggedError:
    logger: str
    message: str
    exc_type: type[BaseException] | None
    exc_text: str


class ErrorLog(logging.Handler):
    """What uvicorn's and asyncio's loggers report at ERROR and above.

    Only a summary is kept: a record's traceback would keep the failed frames, and the
    connections in them, alive.
    """

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.errors: list[LoggedError] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.errors.append(LoggedError(record.name, record.getMessage(), type(exc) if exc else None, repr(exc)))

    def describe(self) -> list[str]:
        return [f"{e.logger}: {e.message} {e.exc_text}" for e in self.errors]

    def exception_types(self) -> list[type[BaseException] | None]:
        return [e.exc_type for e in self.errors]


@contextlib.contextmanager
def server_errors() -> Iterator[ErrorLog]:
    """Collect what the server logs at ERROR (unhandled exceptions in apps, protocols and callbacks)."""
    handler = ErrorLog()
    loggers = [logging.getLogger(name) for name in SERVER_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


@dataclass
class Response:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    head: bytes


def parse_responses(
    data: bytes, bodiless: Callable[[int, dict[bytes, bytes]], bool] | None = None
) -> tuple[list[Response], bytes]:
    """Split ``data`` into HTTP/1.x responses; return them and the bytes after the last one.

    A body is framed by ``content-length`` or chunked encoding; a response with neither
    takes the rest of the data. ``bodiless(status, headers)`` tells responses that have no
    body whatever their headers say (answers to ``HEAD``). Parsing stops at a ``101`` (what follows is not HTTP) or
    at anything that is not a well-formed response, which is returned as the rest.
    """
    responses: list[Response] = []
    while data.startswith(b"HTTP/1."):
        end = data.find(b"\r\n\r\n")
        if end < 0:
            break
        head = data[: end + 4]
        lines = head[:-4].split(b"\r\n")
        try:
            status = int(lines[0].split(b" ")[1])
        except (IndexError, ValueError):
            break
        headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        rest = data[end + 4 :]
        if status == 101 or 100 <= status < 200:
            responses.append(Response(status, headers, b"", head))
            data = rest
            if status == 101:
                break
            continue
        if status in (204, 304) or (bodiless is not None and bodiless(status, headers)):
            body, data = b"", rest
        elif b"content-length" in headers:
            size = int(headers[b"content-length"])
            if len(rest) < size:
                break
            body, data = rest[:size], rest[size:]
        elif headers.get(b"transfer-encoding", b"").lower() == b"chunked":
            body, data, ok = _dechunk(rest)
            if not ok:
                break
        else:
            body, data = rest, b""
        responses.append(Response(status, headers, body, head))
    return responses, data


def _dechunk(data: bytes) -> tuple[bytes, bytes, bool]:
    body = b""
    while True:
        end = data.find(b"\r\n")
        if end < 0:
            return body, data, False
        size = int(data[:end].split(b";")[0], 16)
        data = data[end + 2 :]
        if size == 0:
            trailer_end = data.find(b"\r\n")
            if trailer_end < 0:
                return body, data, False
            return body, data[trailer_end + 2 :], True
        if len(data) < size + 2:
            return body, data, False
        body += data[:size]
        data = data[size + 2 :]
