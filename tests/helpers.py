"""Sockets and servers for the tests and the soak run (``python -m soak``): the one copy of each.

* Parsers: :data:`PARSERS` lists the parsers the installed uvicorn offers; tests that need
  zttp (HTTP/2, its protocol classes) carry :data:`requires_zttp`.
* Clients: :func:`connect` and the ``recv_*`` readers, :func:`parse_responses`, :func:`curl`,
  :func:`proxy_header` (what an L4 balancer writes first).
* Servers: :class:`ServerProcess` (uvicorn in a process of its own, whose descriptors can be
  counted: ``python -m tests.helpers``), :func:`free_port`, :func:`make_certificate`.
* Observation: :func:`server_errors`, :func:`open_fds`, :func:`wait_until`, and :func:`record`
  for figures the soak report shows.
* Load: :func:`echo_load`, many hijacked connections with every byte checked.
* Reverse proxies: :class:`ReverseProxy`, the real nginx or HAProxy with the configurations of
  ``examples/deploy/`` (``tests/test_deploy_proxies.py``, ``python -m bench.proxies``), and
  :class:`Balancer`, HAProxy sending the PROXY protocol to two servers.

ASGI apps live in :mod:`tests.apps`; ``conftest.py`` holds fixtures only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import importlib
import ipaddress
import json
import logging
import os
import pwd
import random
import re
import resource
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import pytest
import uvicorn
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from asgi_hijack import adapter
from asgi_hijack.testing import PROTOCOLS, RunningServer, protocol_class

ROOT = Path(__file__).resolve().parent.parent

# -- parsers -------------------------------------------------------------------------------------


def _import_error(*modules: str) -> str | None:
    """Why one of ``modules`` does not import, or ``None`` when all do."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            return str(exc)
    return None


_NO_ZTTP = _import_error("zttp", "uvicorn.protocols.http.auto_zttp_impl")
PARSERS = [
    name
    for name, missing in [("h11", None), ("httptools", _import_error("httptools")), ("zttp", _NO_ZTTP)]
    if missing is None
]
"""The HTTP/1.x parsers of the installed uvicorn: ``zttp`` needs a uvicorn with zttp support and the
``zttp`` package, ``httptools`` the ``httptools`` package."""

requires_zttp = pytest.mark.skipif(
    _NO_ZTTP is not None,
    reason=f"needs zttp support (uvicorn 0.51 or later, and the zttp package); with uvicorn {uvicorn.__version__} "
    f"here: {_NO_ZTTP}",
)
"""For tests of zttp alone (HTTP/2, the zttp protocol classes)."""

# -- clients -------------------------------------------------------------------------------------


def connect(target: RunningServer | tuple[str, int], timeout: float = 5.0) -> socket.socket:
    """A TCP connection (``TCP_NODELAY``) to a test server or an address."""
    address = target if isinstance(target, tuple) else target.address
    sock = socket.create_connection(address, timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def connect_retry(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    """:func:`connect` to a server that may still be starting: retry until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect(address)
        except OSError as exc:
            if time.monotonic() > deadline:
                raise OSError(f"nothing accepted a connection on {address} within {timeout:g}s: {exc}") from exc
            time.sleep(0.05)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (for a server started as a subprocess)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


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


def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Read until the server closes the connection (EOF or RST); fail if it is still open after ``timeout``."""
    closing = recv_to_close(sock, timeout)
    if closing.how == "open":
        raise TimeoutError(f"the server kept the connection open for {timeout:g}s; got {closing.data[:300]!r}")
    return closing.data


def assert_serving(target: RunningServer | tuple[str, int]) -> None:
    """The server (its app: :mod:`tests.apps` style) still answers ``GET /plain`` with ``ok``."""
    with connect(target) as sock:
        sock.sendall(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert recv_to_close(sock).data.endswith(b"\r\n\r\nok"), "the server stopped serving"


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


def curl(*args: str, timeout: float = 10.0) -> subprocess.CompletedProcess[str]:
    """Run the curl binary, silent but for errors, every transfer bounded by ``timeout``."""
    path = shutil.which("curl")
    assert path, "the curl binary is needed (apt-get install curl)"
    command = [path, "--silent", "--show-error", "--max-time", f"{timeout:g}", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout + 5, check=False)


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (a CA, so clients can trust it directly): ``(key, cert)``."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = folder / "key.pem", folder / "cert.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return key_path, cert_path


def proxy_header(
    version: int,
    source: tuple[str, int] | None = None,
    destination: tuple[str, int] = ("192.0.2.1", 443),
    *,
    tlvs: Sequence[tuple[int, bytes]] = (),
) -> bytes:
    """A PROXY protocol header as a balancer writes it: ``source`` None is LOCAL (v2) or UNKNOWN (v1)."""
    if version == 1:
        if source is None:
            return b"PROXY UNKNOWN\r\n"
        tcp = "TCP4" if ipaddress.ip_address(source[0]).version == 4 else "TCP6"
        return f"PROXY {tcp} {source[0]} {destination[0]} {source[1]} {destination[1]}\r\n".encode()
    block, family = b"", 0x00
    if source is not None:
        src, dst = ipaddress.ip_address(source[0]), ipaddress.ip_address(destination[0])
        family = 0x11 if src.version == 4 else 0x21
        block = src.packed + dst.packed + struct.pack("!HH", source[1], destination[1])
    block += b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    command = 0x21 if source is not None else 0x20
    return b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", command, family, len(block)) + block


# -- observation ---------------------------------------------------------------------------------

SERVER_LOGGERS = ("uvicorn.error", "asyncio")
STATS_ENV = "ASGI_HIJACK_RELIABILITY_STATS"


def open_fds() -> int:
    """Descriptors open in this process (the in-process test server shares them)."""
    return len(os.listdir("/proc/self/fd"))


def count_fds(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.01) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)
    return True


@dataclass(frozen=True)
class LoggedRecord:
    logger: str
    message: str
    exc_type: type[BaseException] | None
    exc_text: str


class ServerLog(logging.Handler):
    """What the server's loggers reported at the handler's level and above.

    Only a summary is kept: a record's traceback would keep the failed frames, and the
    connections in them, alive.
    """

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.records: list[LoggedRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        exc = record.exc_info[1] if record.exc_info else None
        self.records.append(LoggedRecord(record.name, record.getMessage(), type(exc) if exc else None, repr(exc)))

    def messages(self) -> list[str]:
        return [r.message for r in self.records]

    def describe(self) -> list[str]:
        return [f"{r.logger}: {r.message} {r.exc_text}" for r in self.records]

    def exception_types(self) -> list[type[BaseException] | None]:
        return [r.exc_type for r in self.records]


@contextlib.contextmanager
def server_log(level: int, loggers: Sequence[str]) -> Iterator[ServerLog]:
    """Collect what ``loggers`` report at ``level`` and above while the block runs."""
    handler = ServerLog(level)
    targets = [logging.getLogger(name) for name in loggers]
    for logger in targets:
        logger.addHandler(handler)
    try:
        yield handler
    finally:
        for logger in targets:
            logger.removeHandler(handler)


def server_errors() -> contextlib.AbstractContextManager[ServerLog]:
    """Collect what the server logs at ERROR (unhandled exceptions in apps, protocols and callbacks)."""
    return server_log(logging.ERROR, SERVER_LOGGERS)


def record(kind: str, **figures: object) -> None:
    """Report figures to the soak run (``docs/reliability.md``): a JSON line appended to the file that
    ``ASGI_HIJACK_RELIABILITY_STATS`` names. In a plain test run it is unset and nothing is written."""
    path = os.environ.get(STATS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"kind": kind, **figures}, default=str) + "\n")


# -- a server in a process of its own --------------------------------------------------------------

STDERR_PROBLEMS = ("Traceback", "Task was destroyed", "was never awaited", "Exception in", "ResourceWarning")
"""Lines that must never appear in the server's stderr."""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m tests.helpers --parser h11``: bind ``127.0.0.1`` on an ephemeral port, print
    ``listening PORT`` on stdout and serve ``--app`` (:func:`tests.apps.echo_app`) until a signal."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--parser", choices=sorted(PROTOCOLS), default="httptools")
    parser.add_argument("--app", default="tests.apps:echo_app")
    parser.add_argument("--loop", default="asyncio")
    parser.add_argument("--grace", type=float, default=None, help="--timeout-graceful-shutdown")
    args = parser.parse_args(argv)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP_NODELAY, as uvicorn's own
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(
        args.app,
        http=protocol_class(args.parser),
        loop=args.loop,
        lifespan="off",
        log_level="warning",
        backlog=4096,
        timeout_graceful_shutdown=None if args.grace is None else int(args.grace),
    )
    print(f"listening {sock.getsockname()[1]}", flush=True)
    uvicorn.Server(config).run(sockets=[sock])


class ServerProcess:
    """``with ServerProcess("h11") as server:`` -- a :func:`main` subprocess; ``server.port``, ``server.fds()``.

    Its ``/proc/PID/fd`` is the directory the server sees as ``/proc/self/fd``, read from
    outside so that counting does not itself open a connection to the server.
    """

    def __init__(
        self,
        parser: str,
        *,
        grace: float | None = None,
        loop: str = "asyncio",
        app: str = "tests.apps:echo_app",
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = [sys.executable, "-W", "always::ResourceWarning", "-m", "tests.helpers", "--parser", parser]
        self.args += ["--loop", loop, "--app", app]
        if grace is not None:
            self.args += ["--grace", str(grace)]
        self.env = env or {}
        self.port = 0
        self._stderr: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115 -- closed in __exit__
        self._stderr_text: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        env = {**os.environ, "PYTHONPATH": path, **self.env}
        self.proc = subprocess.Popen(self.args, cwd=ROOT, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line.startswith("listening "):
            self.__exit__(None, None, None)
            raise RuntimeError(f"server did not start: {line!r} {self.stderr()}")
        self.port = int(line.split()[1])
        self._wait_accepting()
        return self

    def _wait_accepting(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                assert_serving(("127.0.0.1", self.port))
                return
            except (OSError, AssertionError):
                pass
            if time.monotonic() > deadline or (self.proc is not None and self.proc.poll() is not None):
                raise RuntimeError(f"server not serving: {self.stderr()}")
            time.sleep(0.05)

    def fds(self) -> int:
        return count_fds(self.pid)

    def wait_fds(self, target: int, timeout: float = 15.0) -> int:
        """Poll until the server holds ``target`` descriptors (or ``timeout``); return the last count."""
        deadline = time.monotonic() + timeout
        count = self.fds()
        while count != target and time.monotonic() < deadline:
            time.sleep(0.05)
            count = self.fds()
        return count

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def stderr(self) -> str:
        if self._stderr_text is not None:
            return self._stderr_text
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")

    def problems(self) -> list[str]:
        """Lines of the server's stderr that show an error, a leak or a lost task."""
        return [line for line in self.stderr().splitlines() if any(bad in line for bad in STDERR_PROBLEMS)]

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(30)
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        self._stderr_text = self.stderr()
        self._stderr.close()


# -- the echo load ---------------------------------------------------------------------------------
# Each connection sends ``GET /echo`` with ``Upgrade`` and its first payload in the same write (so
# it travels through the server's pending buffer), waits for the ``101`` head, then streams
# payloads of random sizes while reading the echo concurrently. Every received byte is compared
# with the byte sent at the same offset (a reordered, lost, duplicated or corrupted byte fails at
# once), and a CRC-32 of each direction is compared at the end. In-flight bytes per connection are
# bounded by a window, so memory stays flat. All connections complete the hijack before any starts
# streaming: ``connections`` are held concurrently, not one after another.

ECHO_REQUEST = b"GET /echo%s HTTP/1.1\r\nHost: soak\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
POOL_SIZE = 1 << 20


def raise_nofile(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to at least ``needed`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


@dataclass
class LoadResult:
    """What a run did and what went wrong (``failures`` is empty when every byte checked out)."""

    connections: int
    hijacked: int = 0
    seconds: float = 0.0
    bytes_sent: int = 0
    bytes_verified: int = 0
    bytes_verified_after_mark: int = 0
    chunks: int = 0
    failures: list[str] = field(default_factory=list)
    ends: Counter[str] = field(default_factory=Counter)
    """How connections ended: ``eof`` (the server closed after our EOF or on its own), ``reset``."""


class _EchoConnection:
    def __init__(self, index: int, seed: int, pool: bytes, max_chunk: int, window: int) -> None:
        self.index = index
        self.rng = random.Random(seed * 1_000_003 + index)
        self.pool = pool
        self.max_chunk = max_chunk
        self.window = window
        self.expected = bytearray()  # sent, not yet echoed
        self.space = asyncio.Event()
        self.finished = False
        self.marked = False
        self.sent = self.verified = self.verified_after_mark = self.chunks = 0
        self.crc_sent = self.crc_received = 0
        self.error: str | None = None
        self.end = ""
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    def chunk(self) -> bytes:
        # Sizes from 1 byte to max_chunk, half of them small.
        size = self.rng.randint(1, 512) if self.rng.random() < 0.5 else self.rng.randint(1, self.max_chunk)
        offset = self.rng.randrange(len(self.pool) - size)
        data = self.pool[offset : offset + size]
        self.expected += data
        self.sent += size
        self.chunks += 1
        self.crc_sent = zlib.crc32(data, self.crc_sent)
        return data

    async def handshake(self, host: str, port: int, query: bytes) -> None:
        self.reader, self.writer = await asyncio.open_connection(host, port, limit=1 << 17)
        self.writer.write(ECHO_REQUEST % query + self.chunk())
        head = await self.reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101 "):
            raise AssertionError(f"connection {self.index}: not hijacked: {head[:200]!r}")

    async def write(self, stop: asyncio.Event, half_close: bool) -> None:
        writer = self.writer
        assert writer is not None
        try:
            while not stop.is_set() and not self.finished:
                while len(self.expected) >= self.window and not self.finished:
                    self.space.clear()
                    await self.space.wait()
                if self.finished:
                    return
                writer.write(self.chunk())
                await writer.drain()
            if half_close:
                writer.write_eof()
        except ConnectionError:
            if half_close:
                raise

    async def read(self) -> None:
        reader = self.reader
        assert reader is not None
        try:
            while data := await reader.read(65536):
                size = len(data)
                if self.expected[:size] != data:
                    offset = self.verified + next(
                        (i for i, (a, b) in enumerate(zip(self.expected, data, strict=False)) if a != b),
                        min(size, len(self.expected)),
                    )
                    self.error = f"connection {self.index}: echo differs from what was sent at byte {offset}"
                    return
                del self.expected[:size]
                self.verified += size
                if self.marked:
                    self.verified_after_mark += size
                self.crc_received = zlib.crc32(data, self.crc_received)
                self.space.set()
            self.end = "eof"
        except ConnectionError:
            self.end = "reset"
        finally:
            self.finished = True
            self.space.set()

    async def run(self, stop: asyncio.Event, half_close: bool) -> None:
        results = await asyncio.gather(self.write(stop, half_close), self.read(), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and self.error is None:
                self.error = f"connection {self.index}: {result!r}"

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def echo_load(
    host: str,
    port: int,
    *,
    connections: int,
    seconds: float,
    seed: int = 0,
    max_chunk: int = 16384,
    window: int = 65536,
    graceful: bool = False,
    on_hijacked: Callable[[], object] | None = None,
    on_mark: Callable[[], object] | None = None,
    finish_timeout: float = 60.0,
) -> LoadResult:
    """Stream through ``connections`` hijacked echo connections (:func:`tests.apps.echo_app`).

    Without ``on_mark``: stream for ``seconds``, half-close, and require every byte back,
    in order, before the server's EOF. With ``on_mark`` (e.g. send SIGTERM to the server):
    stream for ``seconds``, call it, keep streaming until the server ends every connection,
    and require what came back to be an exact prefix of what was sent. ``on_hijacked`` is
    called once every connection has been hijacked (to count the server's descriptors).
    """
    pool = random.Random(seed).randbytes(POOL_SIZE)
    conns = [_EchoConnection(i, seed, pool, max_chunk, window) for i in range(connections)]
    result = LoadResult(connections=connections)
    query = b"?graceful" if graceful else b""
    loop = asyncio.get_running_loop()
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(c.handshake(host, port, query) for c in conns), return_exceptions=True), finish_timeout
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                result.failures.append(f"handshake: {outcome!r}")
        result.hijacked = connections - len(result.failures)
        if result.failures:
            return result
        if on_hijacked is not None:
            on_hijacked()
        stop = asyncio.Event()
        half_close = on_mark is None
        started = loop.time()
        runs = asyncio.gather(*(c.run(stop, half_close) for c in conns))
        done, _ = await asyncio.wait([runs], timeout=seconds)
        if on_mark is None:
            stop.set()
        else:
            for conn in conns:
                conn.marked = True
            on_mark()
        done, _ = await asyncio.wait([runs], timeout=finish_timeout)
        result.seconds = loop.time() - started
        if not done:
            runs.cancel()
            unfinished = sum(not c.finished for c in conns)
            result.failures.append(f"{unfinished} connections still open {finish_timeout:.0f}s after the end")
            await asyncio.gather(runs, return_exceptions=True)
    finally:
        for conn in conns:
            conn.close()
        await asyncio.sleep(0)  # let the transports finish closing before the loop ends
    for conn in conns:
        result.bytes_sent += conn.sent
        result.bytes_verified += conn.verified
        result.bytes_verified_after_mark += conn.verified_after_mark
        result.chunks += conn.chunks
        result.ends[conn.end or "unfinished"] += 1
        if conn.error is not None:
            result.failures.append(conn.error)
        elif on_mark is None:
            if conn.end != "eof" or conn.expected:
                ended = conn.end or "timeout"
                result.failures.append(
                    f"connection {conn.index}: ended by {ended}, {len(conn.expected)} bytes not echoed"
                )
            elif conn.crc_sent != conn.crc_received:
                result.failures.append(f"connection {conn.index}: CRC-32 of the echo differs")
    return result


if __name__ == "__main__":
    main()


def uvicorn_command(app: str, http: str, *options: str) -> list[str]:
    """``python -m uvicorn APP --http HTTP OPTIONS...`` as a user runs it, on any supported uvicorn.

    uvicorn before 0.36 refuses ``--http module:Class`` (its option is a fixed choice); there the
    command registers the class under its own import string first, which the CLI then accepts.
    """
    if adapter.version() >= (0, 36):
        return [sys.executable, "-m", "uvicorn", app, "--http", http, *options]
    code = (
        "import sys, uvicorn, uvicorn.config as c; m = sys.modules['uvicorn.main']; "
        "c.HTTP_PROTOCOLS[sys.argv[3]] = sys.argv[3]; m.HTTP_CHOICES.choices = (*m.HTTP_CHOICES.choices, sys.argv[3]); "
        "sys.argv[0] = 'uvicorn'; m.main()"
    )
    return [sys.executable, "-c", code, app, "--http", http, *options]


# -- reverse proxies: examples/deploy/ --------------------------------------------------------------

DEPLOY = ROOT / "examples" / "deploy"
DEPLOY_UPSTREAM, DEPLOY_HTTP, DEPLOY_TCP = 8000, 8080, 8081
"""The ports of the shipped configurations: uvicorn, the proxy's HTTP frontend, its TCP relay."""
_PROXY_PROBLEMS = re.compile(r"\[(emerg|alert|crit|ALERT|WARNING)\]")


def proxy_binary(name: str) -> str | None:
    """Where the ``nginx`` or ``haproxy`` binary is (Debian puts them in /usr/sbin), or ``None``."""
    return shutil.which(name, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"]))


def deploy_config(name: str, ports: Mapping[int, int], edit: tuple[str, str] | None = None) -> str:
    """The shipped ``examples/deploy/NAME`` with each ``127.0.0.1:PORT`` moved to ``ports[PORT]``, and
    ``edit = (old, new)`` applied."""
    text = (DEPLOY / name).read_text()
    for shipped, port in ports.items():
        assert f"127.0.0.1:{shipped}" in text, f"{name} no longer listens on or proxies to 127.0.0.1:{shipped}"
        text = text.replace(f"127.0.0.1:{shipped}", f"127.0.0.1:{port}")
    if edit is not None:
        assert edit[0] in text, f"{name} has no {edit[0]!r} to change"
        text = text.replace(edit[0], edit[1])
    return text


class ReverseProxy:
    """``with ReverseProxy("nginx", upstream_port) as proxy:`` runs the real nginx or HAProxy.

    The configurations of ``examples/deploy/`` (nginx.conf and nginx-stream.conf, or haproxy.cfg),
    their ports moved to ephemeral ones, go under a minimal main configuration in a temporary
    directory, with the pid, log and temporary files. The proxy is a foreground process, as
    ``nobody`` when we are root. ``proxy.ports["http"]`` is its HTTP frontend, ``proxy.ports["tcp"]``
    its TCP relay. ``edit = (old, new)`` changes the HTTP configuration. On exit the proxy is
    stopped, and its log must show no error or warning of its own but those in ``expected``.
    """

    def __init__(self, kind: str, upstream: int, edit: tuple[str, str] | None = None) -> None:
        binary = proxy_binary(kind)
        if binary is None:
            raise FileNotFoundError(f"no {kind} binary: `make system-deps` installs Debian's nginx and haproxy")
        self.kind, self.binary, self.upstream, self.edit = kind, binary, upstream, edit
        self.ports = {"http": free_port(), "tcp": free_port()}
        self.folder = Path(tempfile.mkdtemp(prefix=f"asgi-hijack-{kind}-"))
        self.log = self.folder / "error.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.expected: list[str] = []
        """Warnings a test causes on purpose (parts of the log lines), not counted as problems."""

    def _command(self) -> list[str]:
        folder, upstream, http, tcp = self.folder, self.upstream, self.ports["http"], self.ports["tcp"]
        if self.kind == "haproxy":
            config = deploy_config(
                "haproxy.cfg", {DEPLOY_UPSTREAM: upstream, DEPLOY_HTTP: http, DEPLOY_TCP: tcp}, self.edit
            )
            (folder / "haproxy.cfg").write_text("global\n    maxconn 1024\n\n" + config)
            return [self.binary, "-db", "-f", str(folder / "haproxy.cfg")]
        built = subprocess.run([self.binary, "-V"], capture_output=True, text=True, check=True).stderr
        modules = re.search(r"--modules-path=(\S+)", built)
        assert modules, built
        (folder / "site.conf").write_text(
            deploy_config("nginx.conf", {DEPLOY_UPSTREAM: upstream, DEPLOY_HTTP: http}, self.edit)
        )
        (folder / "stream.conf").write_text(
            deploy_config("nginx-stream.conf", {DEPLOY_UPSTREAM: upstream, DEPLOY_TCP: tcp})
        )
        temp = "".join(
            f"    {kind}_temp_path {folder}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (folder / "nginx.conf").write_text(
            f"load_module {modules[1]}/ngx_stream_module.so;\n"
            f"worker_processes 1;\npid {folder}/nginx.pid;\nerror_log {self.log} notice;\n"
            "events { worker_connections 1024; }\n"
            f"http {{\n    access_log off;\n{temp}    include {folder}/site.conf;\n}}\n"
            f"include {folder}/stream.conf;\n"
        )
        return [
            self.binary,
            "-p",
            str(folder),
            "-c",
            str(folder / "nginx.conf"),
            "-e",
            str(self.log),
            "-g",
            "daemon off;",
        ]

    def __enter__(self) -> ReverseProxy:
        command = self._command()
        self.log.touch()
        account: dict[str, Any] = {}
        if os.geteuid() == 0:  # never run the proxy as root: as nobody, owning its folder
            nobody = pwd.getpwnam("nobody")
            for path in [self.folder, *self.folder.iterdir()]:
                os.chown(path, nobody.pw_uid, nobody.pw_gid)
            account = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=log, cwd=self.folder, **account)
        try:
            for port in self.ports.values():
                connect_retry(("127.0.0.1", port)).close()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
        log = self.log.read_text(errors="replace")
        shutil.rmtree(self.folder, ignore_errors=True)
        if exc_type is None:
            problems = [line for line in log.splitlines() if not any(ok in line for ok in self.expected)]
            assert not _PROXY_PROBLEMS.search("\n".join(problems)), f"{self.kind} logged a problem:\n{log}"


class Balancer(ReverseProxy):
    """HAProxy in ``mode tcp`` with ``examples/deploy/haproxy-proxy-protocol.cfg`` in front of two servers.

    ``ports["v2"]`` sends PROXY v2 to ``upstreams``, ``ports["v1"]`` v1. Health checks ask for
    ``health``; with ``source``, HAProxy connects to the servers from that address.
    """

    def __init__(self, upstreams: tuple[int, int], health: str = "/healthz", source: str | None = None) -> None:
        super().__init__("haproxy", upstreams[0], ("uri /healthz ", f"uri {health} "))
        self.upstreams, self.source = upstreams, source
        self.ports = {"v2": free_port(), "v1": free_port()}

    def _command(self) -> list[str]:
        ports = {DEPLOY_UPSTREAM: self.upstreams[0], DEPLOY_UPSTREAM + 1: self.upstreams[1]}
        ports |= {DEPLOY_HTTP: self.ports["v2"], DEPLOY_TCP: self.ports["v1"]}
        config = deploy_config("haproxy-proxy-protocol.cfg", ports, self.edit)
        if self.source is not None:
            config = config.replace("    mode tcp\n", f"    mode tcp\n    source {self.source}\n", 1)
        admin = f"    stats socket {self.folder / 'admin.sock'} mode 600 level admin\n"
        (self.folder / "haproxy.cfg").write_text("global\n    maxconn 1024\n" + admin + "\n" + config)
        return [self.binary, "-db", "-f", str(self.folder / "haproxy.cfg")]

    def admin(self, command: str) -> str:
        """Run ``command`` on HAProxy's admin socket (``set server asgi_hijack_v2/app1 state drain``).

        The warnings a drain logs are expected."""
        self.expected += ["enters drain state", "(leaving forced drain)"]
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.folder / "admin.sock"))
            sock.sendall(command.encode() + b"\n")
            return recv_all(sock).decode()


def with_settings(parser: str, **settings: object) -> type[asyncio.Protocol]:
    """A subclass of the public protocol class for ``parser`` with these settings, as a server wrapper writes one."""
    base = protocol_class(parser)
    protocol: type[asyncio.Protocol] = type(f"My{base.__name__}", (base,), settings)
    return protocol


# -- HTTP/2 at the frame level ---------------------------------------------------------------------


class H2Client:
    """A blocking HTTP/2 client (the ``h2`` package) on a real socket: every frame is the test's to see.

    ``ack`` credits received DATA back at once (WINDOW_UPDATE); with ``ack=False`` the client is a
    reader that never reads, and the server's send window stays as it was.
    """

    def __init__(self, address: tuple[str, int], *, ack: bool = True, timeout: float = 10.0) -> None:
        import h2.config
        import h2.connection

        self.sock = connect(address, timeout)
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.conn.initiate_connection()
        self.ack = ack
        self.timeout = timeout
        self.events: list[Any] = []
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str = "/", *, protocol: str | None = None, end_stream: bool = True) -> int:
        """Send a request's HEADERS; returns its stream id."""
        stream_id: int = self.conn.get_next_available_stream_id()
        head = [(b":method", method.encode())]
        if protocol is not None:
            head.append((b":protocol", protocol.encode()))
        head += [(b":scheme", b"http"), (b":path", path.encode()), (b":authority", b"127.0.0.1")]
        self.conn.send_headers(stream_id, head, end_stream=end_stream)
        self.flush()
        return stream_id

    def send(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        """Send ``data`` as DATA frames, waiting for window as needed; stops if the stream is reset."""
        import h2.exceptions

        view = memoryview(data)
        while True:
            if any(type(e).__name__ == "StreamReset" and e.stream_id == stream_id for e in self.events):
                return
            try:
                window = self.conn.local_flow_control_window(stream_id)
            except h2.exceptions.StreamClosedError:
                return
            size = min(len(view), window, self.conn.max_outbound_frame_size)
            if size or not view:
                self.conn.send_data(stream_id, bytes(view[:size]), end_stream=end_stream and size == len(view))
                self.flush()
                view = view[size:]
                if not view:
                    return
            else:
                seen = len(self.events)
                self.wait(lambda _: len(self.events) > seen)  # noqa: B023 -- called before seen changes

    def wait(self, until: Callable[[Any], bool], timeout: float | None = None) -> Any:
        """Read frames until an event satisfies ``until`` (one received earlier counts); returns it.

        Every event is kept in :attr:`events`."""
        import h2.events

        deadline = time.monotonic() + (timeout or self.timeout)
        while True:
            for event in self.events:
                if until(event):
                    return event
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no awaited HTTP/2 event within {timeout or self.timeout} s: {self.events[-5:]!r}")
            self.sock.settimeout(left)
            data = self.sock.recv(1 << 20)
            if not data:
                raise ConnectionError(f"the server closed the connection: {self.events[-5:]!r}")
            for event in self.conn.receive_data(data):
                self.events.append(event)
                if self.ack and isinstance(event, h2.events.DataReceived) and event.flow_controlled_length:
                    self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            self.flush()

    def raw_frames(self, until: Callable[[list[Any]], bool]) -> list[Any]:
        """Frames from the socket, parsed by ``hyperframe`` alone (``h2`` refuses frames after a
        GOAWAY), until ``until(frames)`` or the server closes."""
        from hyperframe.frame import Frame

        frames: list[Any] = []
        raw = b""
        self.sock.settimeout(self.timeout)
        while not until(frames) and (chunk := self.sock.recv(65536)):
            raw += chunk
            while len(raw) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(raw[:9]))
                if len(raw) < 9 + length:
                    break
                frame.parse_body(memoryview(raw[9 : 9 + length]))
                frames.append(frame)
                raw = raw[9 + length :]
        return frames

    def body(self, stream_id: int) -> bytes:
        """The DATA received so far on ``stream_id``."""
        return b"".join(e.data for e in self.events if type(e).__name__ == "DataReceived" and e.stream_id == stream_id)

    def ended(self, stream_id: int) -> Callable[[Any], bool]:
        """``until`` for the end of ``stream_id``: END_STREAM or RST_STREAM."""
        return lambda e: type(e).__name__ in ("StreamEnded", "StreamReset") and e.stream_id == stream_id

    def close(self) -> None:
        self.sock.close()
