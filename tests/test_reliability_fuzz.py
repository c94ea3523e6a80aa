"""Hostile input: hypothesis-generated request heads and trailing bytes against every protocol class.

Each example opens a connection and sends a generated request (malformed request lines,
huge or numerous headers, bare LF and bare CR line ends, NUL and control bytes, obs-fold,
conflicting ``Content-Length``/``Transfer-Encoding`` with ``Upgrade``, ``CONNECT`` with bad
authorities, the HTTP/2 preface, bodies, pipelined and smuggled requests), possibly split
over two writes. The properties:

* the server closes the connection within bounded time (after the client's half-close,
  or, when the client goes silent, after the head, keep-alive and app idle timeouts);
* every response the server writes on its own (a rejection) is a 4xx;
* after a request that switches protocols (``CONNECT``, ``Upgrade``), no further request
  on that connection reaches the app; after a hijack, only the app's bytes (an echo of
  what the client sent) follow the hijack head;
* nothing is logged at ERROR (no unhandled exception in a protocol, callback or app);
* a new connection is served normally afterwards.

``ASGI_HIJACK_FUZZ_EXAMPLES`` sets the number of examples per protocol (the soak run
raises it); the figures go to ``docs/reliability.md`` through ``tests.helpers.record``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from asgi_hijack import HijackError, hijack
from asgi_hijack.core import HijackServerMixin
from asgi_hijack.testing import RunningServer, serve
from tests.helpers import PARSERS, assert_serving, connect, parse_responses, record, recv_to_close, server_errors

EXAMPLES = int(os.environ.get("ASGI_HIJACK_FUZZ_EXAMPLES", "120"))
SILENT_BATCHES = max(2, EXAMPLES // 60)
SILENT_BATCH = 8
HEAD_TIMEOUT = 0.3
KEEP_ALIVE = 0.3
IDLE = 0.3
"""How long the fuzz app waits for body or tunnel bytes before giving up."""
BOUND = 5.0
"""A connection must be closed this long after the client's last byte."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


# -- the app -----------------------------------------------------------------------------------------

SEEN: dict[int, list[tuple[str, bool]]] = {}
"""Client port -> (method, switches protocols) of every request that reached the app."""


def switches(scope: dict[str, Any]) -> bool:
    if scope["type"] == "websocket" or scope["method"] == "CONNECT":
        return True
    names = [name for name, _ in scope["headers"]]
    tokens = {t.strip().lower() for name, value in scope["headers"] if name == b"connection" for t in value.split(b",")}
    return b"upgrade" in names and b"upgrade" in tokens


async def respond(send: Any, status: int, body: bytes) -> None:
    headers = [(b"content-length", b"%d" % len(body)), (b"x-fuzz", b"app")]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def fuzz_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] not in ("http", "websocket"):
        return
    SEEN.setdefault(scope["client"][1], []).append((scope.get("method", "WS"), switches(scope)))
    if scope["type"] == "websocket":
        await receive()
        await send({"type": "websocket.close"})
        return
    if b"hijack" in scope["raw_path"]:
        try:
            status = 200 if scope["method"] == "CONNECT" else 101
            conn = await hijack(scope, receive, send, status=status, headers=[(b"x-fuzz", b"hijacked")])
        except HijackError:  # e.g. a chunked body not yet complete: answer instead
            await respond(send, 409, b"not hijacked")
            return
        received = 0
        async with conn:
            try:
                while data := await asyncio.wait_for(conn.reader.read(65536), IDLE):
                    received += len(data)
            except (TimeoutError, ConnectionError, OSError):
                pass
            with contextlib.suppress(ConnectionError, OSError):
                await conn.send(b"hijacked:%d" % received)  # the only bytes after the hijack head
        return
    try:
        while True:
            message = await asyncio.wait_for(receive(), IDLE)
            if message["type"] == "http.disconnect":
                return
            if not message.get("more_body"):
                break
    except TimeoutError:
        await respond(send, 408, b"body too slow")
        return
    if scope["method"] == "CONNECT":
        await respond(send, 403, b"no tunnel")  # a 2xx to CONNECT would have no content
    else:
        await respond(send, 200, b"ok")


@dataclass
class Tally:
    examples: int = 0
    connections: int = 0
    bytes_sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)


TALLIES: dict[str, Tally] = {}


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    parser = request.param
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HijackServerMixin, "head_timeout", HEAD_TIMEOUT)
        with serve(fuzz_app, parser, timeout_keep_alive=KEEP_ALIVE, timeout_graceful_shutdown=1) as running:
            running.parser = parser  # type: ignore[attr-defined]
            TALLIES[parser] = Tally()
            yield running
    tally = TALLIES.pop(parser)
    record("fuzz", parser=parser, **{k: v for k, v in vars(tally).items() if k != "outcomes"}, outcomes=tally.outcomes)


# -- the generator -------------------------------------------------------------------------------------

methods = st.sampled_from(
    [b"GET", b"POST", b"PUT", b"HEAD", b"OPTIONS", b"CONNECT", b"PRI", b"get", b"G\x00T", b"GET GET", b"\xff", b""]
)
authorities = st.sampled_from(
    [
        b"example.com:443",
        b"hijack.example:443",
        b":443",
        b"example.com:",
        b"[::1]:443",
        b"[::1",
        b"example.com:99999",
        b"a:b:c",
        b"ex ample:1",
        b"ex\x00ample:1",
        b"http://hijack.example/",
        b"example.com",
        b"hijack.example:0",
        b"@hijack:1",
    ]
)
paths = st.sampled_from(
    [b"/", b"/hijack", b"/decline", b"/hijack?x=1", b"*", b"http://x/hijack", b"/%00", b"/a b", b"//", b"/\xff", b""]
)
targets = st.one_of(paths, authorities, st.binary(max_size=16))
versions = st.sampled_from(
    [b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9", b"http/1.1", b"HTTP/1", b""]
)
NAMED_HEADERS = [
    b"Host: x",
    b"Host: y",
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Content-Length: -1",
    b"Content-Length: 5, 5",
    b"Content-Length: 5, 6",
    b"Content-Length: 99999999999999999999999",
    b"Content-Length: 0x5",
    b"Content-Length : 5",
    b"Content-Length: +5",
    b"Transfer-Encoding: chunked",
    b"Transfer-Encoding: gzip, chunked",
    b"Transfer-Encoding: chunked, gzip",
    b"Transfer-Encoding:\tchunked",
    b"Transfer-Encoding: xchunked",
    b"Transfer-Encoding : chunked",
    b"Transfer-Encoding: identity",
    b"Upgrade: tcp",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Upgrade:",
    b"Connection: Upgrade",
    b"Connection: upgrade, keep-alive",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
    b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA",
    b" folded continuation",
    b"\tobs-fold",
    b"NoColon",
    b": empty name",
    b"X-Nul: a\x00b",
    b"X-Bad\x01Name: v",
    b"X-CR: a\rb",
    b"X-Huge: " + b"a" * 70_000,
    b"X-Long: " + b"b" * 10_000,
]
header_lines = st.one_of(
    st.sampled_from(NAMED_HEADERS),
    st.builds(lambda n, v: n + b": " + v, st.binary(min_size=1, max_size=12), st.binary(max_size=24)),
    st.integers(50, 400).map(lambda n: b"\r\n".join(b"X-Many-%d: v" % i for i in range(n))),
)
line_ends = st.sampled_from([b"\r\n", b"\r\n", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])


def chunked(data: bytes) -> bytes:
    return (b"%x\r\n%s\r\n" % (len(data), data) if data else b"") + b"0\r\n\r\n"


bodies = st.one_of(
    st.just(b""),
    st.binary(max_size=64),
    st.binary(max_size=64).map(chunked),
    st.sampled_from([b"5\r\nhello\r\n", b"zz\r\n", b"5\r\nhelloXX0\r\n\r\n", b"0\r\n\r\n", b"-1\r\n"]),
)
trailers = st.sampled_from(
    [b"", b"", SMUGGLED, PREFACE, b"\r\n\r\n", b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\ntail", b"\x00\xff" * 8]
)


FRAMING = [
    b"Content-Length: 5",
    b"Content-Length: 0",
    b"Transfer-Encoding: chunked",
    b"Upgrade: tcp",
    b"Upgrade: websocket",
    b"Upgrade: h2c",
    b"Connection: Upgrade",
    b"Connection: close",
    b"Connection: keep-alive",
    b"Expect: 100-continue",
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
    b"Sec-WebSocket-Version: 13",
]


@st.composite
def plausible(draw: st.DrawFn) -> bytes:
    """A request a parser accepts, or nearly: valid lines, framing and upgrade headers in any mix."""
    method = draw(st.sampled_from([b"GET", b"POST", b"PUT", b"HEAD", b"CONNECT"]))
    connect_form = method == b"CONNECT" and draw(st.booleans())
    target = draw(authorities if connect_form else st.sampled_from([b"/hijack", b"/decline", b"/hijack?q=1", b"/"]))
    version = draw(st.sampled_from([b"HTTP/1.1", b"HTTP/1.1", b"HTTP/1.0"]))
    headers = [b"Host: x", *draw(st.lists(st.sampled_from(FRAMING), max_size=5))]
    end = draw(st.sampled_from([b"\r\n", b"\r\n", b"\n"]))
    head = end.join([method + b" " + target + b" " + version, *headers]) + end + end
    if b"Transfer-Encoding: chunked" in headers and draw(st.booleans()):
        body = chunked(draw(st.binary(max_size=32)))
    elif b"Content-Length: 5" in headers and draw(st.booleans()):
        body = draw(st.binary(min_size=5, max_size=5))
    else:
        body = draw(bodies)
    return head + body + draw(trailers)


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    """A request, more or less: request line, header lines, end of head, body, trailing bytes."""
    kind = draw(st.integers(0, 19))  # hypothesis favours 0: make it the common case
    if kind == 19:
        return PREFACE + draw(st.binary(max_size=64))
    if kind < 10:
        return draw(plausible())
    end = draw(line_ends)
    line = draw(methods) + b" " + draw(targets) + b" " + draw(versions)
    if draw(st.booleans()):
        line = draw(st.sampled_from([b"", b"\r\n", b"\r\n\r\n", b"\n"])) + line
    lines = [line, *draw(st.lists(header_lines, max_size=8))]
    head = end.join(lines) + end
    if draw(st.integers(0, 9)) < 9:  # usually a complete head
        head += draw(line_ends)
    return head + draw(bodies) + draw(trailers)


# -- the checks ------------------------------------------------------------------------------------------


def exchange(server: RunningServer, payload: bytes, split: int, half_close: bool) -> tuple[bytes, str, int]:
    """Send ``payload`` (in two writes at ``split``), optionally half-close; read until the server closes."""
    with connect(server.address) as sock:
        port = sock.getsockname()[1]
        SEEN.pop(port, None)  # a port is reused over a long run
        try:
            sock.sendall(payload[:split])
            if split < len(payload):
                time.sleep(0.001)
                sock.sendall(payload[split:])
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may reject and close before everything is sent
        closing = recv_to_close(sock, BOUND)
    assert closing.how != "open", f"the server kept the connection open {BOUND}s; got {closing.data[:200]!r}"
    return closing.data, closing.how, port


def check_exchange(server: RunningServer, payload: bytes, wire: bytes, port: int, tally: Tally) -> None:
    seen = SEEN.pop(port, [])
    for index, (_, switched) in enumerate(seen):
        assert not switched or index == len(seen) - 1, f"a request reached the app after a protocol switch: {seen}"
    tally.connections += 1
    tally.bytes_sent += len(payload)
    if server.parser == "zttp" and payload.startswith(PREFACE):  # type: ignore[attr-defined]
        tally.outcomes["http/2"] += 1  # ZttpHijackProtocol speaks HTTP/2 with prior knowledge
        return
    head = [payload.lstrip(b"\r\n").startswith(b"HEAD ")]  # the app's first answer may be to a HEAD

    def bodiless(status: int, headers: dict[bytes, bytes]) -> bool:
        if headers.get(b"x-fuzz") != b"app":
            return False
        first, head[0] = head[0], False
        return first

    responses, rest = parse_responses(wire, bodiless)
    for response in responses:
        marker = response.headers.get(b"x-fuzz")
        if marker == b"hijacked":
            assert response is responses[-1]
            assert re.fullmatch(rb"(hijacked:\d+)?", rest), f"bytes after the hijack head not from the app: {rest!r}"
            tally.outcomes["hijacked"] += 1
            return
        if marker == b"app":
            tally.outcomes[f"app {response.status}"] += 1
        elif response.status == 100:
            tally.outcomes["100 continue"] += 1
        else:
            assert 400 <= response.status < 500, f"the server answered {response.head!r}"
            tally.outcomes[f"rejected {response.status}"] += 1
    assert rest == b"", f"unframed bytes from the server: {rest[:200]!r}"
    if not responses:
        tally.outcomes["closed without a response"] += 1


FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@FUZZ
@given(payload=payloads(), cut=st.floats(0, 1))
def test_hostile_requests_then_half_close(server: RunningServer, payload: bytes, cut: float) -> None:
    tally = TALLIES[server.parser]  # type: ignore[attr-defined]
    tally.examples += 1
    with server_errors() as errors:
        wire, _, port = exchange(server, payload, int(len(payload) * cut), half_close=True)
        check_exchange(server, payload, wire, port, tally)
        assert_serving(server)
    assert errors.records == [], errors.describe()


REGRESSIONS = {
    # zttp: UnicodeDecodeError escaped data_received (no 400, an asyncio "Fatal error").
    "non-ascii target": (b"GET \x80 HTTP/1.0\r\n\r\n", True),
    # h11: after the server's 400 for a bad chunked body, the app's response raised LocalProtocolError.
    "bad chunked body under a running app": (
        b"GET /hijack HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n" + SMUGGLED,
        True,
    ),
    # h11 and zttp (as stock uvicorn's h11): the 400 for a bad chunked body of a HEAD request raised
    # LocalProtocolError out of data_received.
    "bad chunked body of a HEAD request": (
        b"HEAD / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        True,
    ),
    # All parsers, with uvicorn's default WebSocket implementation (websockets-sansio): a handshake
    # with a body was handed over and then held open forever (silent client).
    "websocket handshake with a body, then silence": (
        b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 5\r\n\r\nabcde",
        False,
    ),
}


@pytest.mark.parametrize("name", sorted(REGRESSIONS))
def test_hostile_requests_found_by_the_fuzz(server: RunningServer, name: str) -> None:
    payload, half_close = REGRESSIONS[name]
    with server_errors() as errors:
        wire, _, port = exchange(server, payload, len(payload), half_close=half_close)
        check_exchange(server, payload, wire, port, Tally())
        assert_serving(server)
    assert errors.records == [], errors.describe()


# No shrinking: a failing batch costs BOUND seconds per attempt, and the message names the payload.
@settings(FUZZ, max_examples=SILENT_BATCHES, phases=[Phase.explicit, Phase.reuse, Phase.generate])
@given(batch=st.lists(payloads(), min_size=SILENT_BATCH, max_size=SILENT_BATCH))
def test_hostile_requests_then_silence(server: RunningServer, batch: list[bytes]) -> None:
    """The client never half-closes: only the server's timeouts can end these connections."""
    tally = TALLIES[server.parser]  # type: ignore[attr-defined]
    tally.examples += len(batch)
    with server_errors() as errors:
        socks = []
        for payload in batch:
            sock = connect(server.address)
            SEEN.pop(sock.getsockname()[1], None)  # a port is reused over a long run
            with contextlib.suppress(OSError):  # the server may reject and close first
                sock.sendall(payload)
            socks.append(sock)
        deadline = time.monotonic() + BOUND  # the connections wait for their timeouts together
        for payload, sock in zip(batch, socks, strict=True):
            with sock:
                closing = recv_to_close(sock, max(0.01, deadline - time.monotonic()))
                assert closing.how != "open", f"{payload[:200]!r} kept open; got {closing.data[:200]!r}"
                check_exchange(server, payload, closing.data, sock.getsockname()[1], tally)
        assert_serving(server)
    assert errors.records == [], errors.describe()
