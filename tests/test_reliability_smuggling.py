"""No smuggling, on every parser: what follows a tunnel or an upgrade is never parsed as HTTP.

The rules under test (see docs/reliability.md):

* A request with ``Upgrade`` or the ``CONNECT`` method that the app does not hijack is
  answered with the app's response and the connection is then closed; bytes after the
  request (and after its declared body) are discarded, never parsed as a request.
* A ``2xx`` to ``CONNECT`` or a ``101`` that the app sends as a plain response, without
  hijacking, switches the connection away from HTTP as far as any intermediary is
  concerned (RFC 9110 9.3.6, 15.2.2), so the server must not parse another request on
  it either: the connection is closed after that response.
* After a hijack the server writes nothing, whatever a middleware sends or raises.

Every case checks what the app saw (no second request) and what the wire carried.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_hijack import AlreadyHijackedError, HijackError, hijack
from asgi_hijack.testing import RunningServer, serve
from tests.helpers import PARSERS, connect, parse_responses, recv_to_close, server_errors

SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
SEEN: list[tuple[int, str, str]] = []
"""(client port, method, path) of every request that reached the app."""


async def respond_as_told(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Answer with the status, body and headers that the request's ``x-respond*`` headers ask for."""
    SEEN.append((scope["client"][1], scope["method"], scope["path"]))
    headers = dict(scope["headers"])
    status = int(headers.get(b"x-respond", b"200"))
    body = headers.get(b"x-body", b"")
    while (await receive()).get("more_body"):
        pass
    response_headers = [] if b"x-no-length" in headers else [(b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture(scope="module", params=PARSERS)
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(respond_as_told, request.param, timeout_graceful_shutdown=1) as running:
        yield running


def exchange(server: RunningServer, first: bytes, later: bytes = b"") -> tuple[list[tuple[str, str]], bytes, str]:
    """Send ``first``; once it is answered, send ``later``. Return what reached the app, the wire, the ending."""
    start = len(SEEN)  # ports are reused over a long run: look only at this exchange's requests
    with connect(server.address) as sock:
        port = sock.getsockname()[1]
        sock.sendall(first)
        if later:
            sock.settimeout(5)
            data = sock.recv(65536)  # the response to the first request has begun
            time.sleep(0.05)
            with contextlib.suppress(OSError):  # already closed: nothing can be parsed
                sock.sendall(later)
        else:
            data = b""
        closing = recv_to_close(sock, timeout=3)
    seen = [(method, path) for client, method, path in SEEN[start:] if client == port]
    return seen, data + closing.data, closing.how


def one_response_then_close(wire: bytes, how: str, status: int | None) -> None:
    """At most one response, with ``status``; then the server closed. ``None``: no response at all."""
    responses, rest = parse_responses(wire)
    assert how in ("eof", "reset"), f"the connection stayed open after {wire!r}"
    assert rest == b"", f"bytes after the response: {rest!r}"
    if status is None:
        assert responses == [], wire
    else:
        assert [r.status for r in responses] == [status], wire


CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"


@pytest.mark.parametrize("status", [200, 204, 299])
@pytest.mark.parametrize("when", ["with the request", "after the response"])
def test_a_2xx_to_connect_without_hijack_is_a_tunnel_never_parsed(
    server: RunningServer, status: int, when: str
) -> None:
    head = CONNECT + b"X-Respond: %d\r\n\r\n" % status
    with server_errors():
        if when == "with the request":
            seen, wire, how = exchange(server, head + SMUGGLED)
        else:
            seen, wire, how = exchange(server, head, SMUGGLED)
    assert seen == [("CONNECT", "example.com:443")]
    one_response_then_close(wire, how, status)


@pytest.mark.parametrize("status", [101, 200, 400, 426, 500])
@pytest.mark.parametrize(
    "body",
    [b"", b"Content-Length: 5\r\n\r\nhello", b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
    ids=["no body", "content-length", "chunked"],
)
@pytest.mark.parametrize("when", ["with the request", "after the response"])
def test_bytes_after_a_declined_upgrade_are_never_parsed(
    server: RunningServer, status: int, body: bytes, when: str
) -> None:
    head = b"POST /upgrade HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\nX-Respond: %d\r\n" % status
    if status != 101:  # a 101 has no content: what follows it is the new protocol
        head += b"X-Body: declined\r\n"
    head += body or b"\r\n"
    with server_errors():
        if when == "with the request":
            seen, wire, how = exchange(server, head + SMUGGLED)
        else:
            seen, wire, how = exchange(server, head, SMUGGLED)
    assert seen == [("POST", "/upgrade")]
    # h11 refuses to send a 101 as a plain response: the app's send raises, nothing is written.
    one_response_then_close(wire, how, None if status == 101 and not wire else status)


@pytest.mark.parametrize("length", [True, False], ids=["content-length", "no framing"])
@pytest.mark.parametrize("when", ["with the request", "after the response"])
def test_a_101_without_hijack_on_a_plain_request_ends_http(server: RunningServer, length: bool, when: str) -> None:
    """An app answers 101 to a request that asked for no upgrade: a proxy in front switches to
    tunnelling, so whatever it forwards next must not be parsed as a request behind its back."""
    head = b"GET /switch HTTP/1.1\r\nHost: x\r\nX-Respond: 101\r\n" + (b"" if length else b"X-No-Length: 1\r\n")
    head += b"\r\n"
    with server_errors():
        if when == "with the request":
            seen, wire, how = exchange(server, head + SMUGGLED)
        else:
            seen, wire, how = exchange(server, head, SMUGGLED)
    assert seen == [("GET", "/switch")], "a request was parsed after a 101"
    responses, _ = parse_responses(wire)
    assert [r.status for r in responses] in ([101], []), wire
    assert how in ("eof", "reset"), f"the connection stayed open after {wire!r}"


@pytest.mark.parametrize("when", ["with the request", "after the response"])
def test_a_2xx_to_connect_without_framing_headers_is_a_tunnel_too(server: RunningServer, when: str) -> None:
    # RFC 9110 9.3.6: no Content-Length or Transfer-Encoding in a 2xx to CONNECT.
    head = CONNECT + b"X-No-Length: 1\r\n\r\n"
    with server_errors():
        if when == "with the request":
            seen, wire, how = exchange(server, head + SMUGGLED)
        else:
            seen, wire, how = exchange(server, head, SMUGGLED)
    assert seen == [("CONNECT", "example.com:443")]
    responses, _ = parse_responses(wire)
    assert [r.status for r in responses] in ([200], []), wire
    assert how in ("eof", "reset")


# -- nothing written after a hijack, whatever middleware does ------------------------------------

HEAD = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"
LATE: list[BaseException] = []


async def hijack_and_echo(scope: dict[str, Any], receive: Any, send: Any) -> None:
    conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp"), (b"connection", b"Upgrade")])
    async with conn:
        while data := await conn.reader.read(65536):
            conn.writer.write(data)
    if scope["path"].endswith("/raise"):
        raise RuntimeError("the app fails after its hijacked connection closed")


def late_responder(app: Any) -> Any:
    """Makes sure every request gets a response: sends one after the app returns."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)
        try:
            await send({"type": "http.response.start", "status": 500, "headers": []})
        except HijackError as exc:
            LATE.append(exc)
        try:
            await send({"type": "http.response.body", "body": b"late"})
        except HijackError as exc:
            LATE.append(exc)

    return middleware


def error_page(app: Any) -> Any:
    """Turns exceptions into a 500 page (and lets a failure to send it propagate)."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        try:
            await app(scope, receive, send)
        except Exception:
            await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"5")]})
            await send({"type": "http.response.body", "body": b"oops!"})

    return middleware


def timeout_responder(app: Any) -> Any:
    """Answers 504 from its own task if the app has not finished after 20 ms."""

    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        task = asyncio.ensure_future(app(scope, receive, send))
        done, _ = await asyncio.wait([task], timeout=0.02)
        if not done:
            try:
                await send({"type": "http.response.start", "status": 504, "headers": []})
            except HijackError as exc:
                LATE.append(exc)
        await task

    return middleware


async def starlette_endpoint(request: Request) -> Response:
    conn = await hijack(request, status=101, headers=[(b"upgrade", b"tcp"), (b"connection", b"Upgrade")])
    async with conn:
        while data := await conn.reader.read(65536):
            conn.writer.write(data)
    if request.url.path.endswith("/raise"):
        raise RuntimeError("the endpoint fails after its hijacked connection closed")
    return PlainTextResponse("a response after a hijack")  # a misuse: must write nothing


def plain_middleware(app: Any) -> Any:
    async def middleware(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await app(scope, receive, send)

    return middleware


STACKS = {
    "late-responder": late_responder(hijack_and_echo),
    "error-page": error_page(hijack_and_echo),
    "timeout-responder": timeout_responder(hijack_and_echo),
    "starlette": Starlette(
        routes=[Route("/{path:path}", starlette_endpoint)], middleware=[Middleware(plain_middleware)]
    ),
}


async def stacks(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/STACK/return`` or ``/STACK/raise``, through the middleware stack STACK."""
    await STACKS[scope["path"].split("/")[1]](scope, receive, send)


@pytest.fixture(scope="module", params=PARSERS)
def stacks_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with serve(stacks, request.param, timeout_graceful_shutdown=1) as running:
        yield running


@pytest.mark.parametrize("stack", sorted(STACKS))
@pytest.mark.parametrize("ending", ["return", "raise"])
def test_no_byte_from_the_server_after_a_hijack(stacks_server: RunningServer, stack: str, ending: str) -> None:
    with server_errors() as errors:
        with connect(stacks_server.address) as sock:
            request = f"GET /{stack}/{ending} HTTP/1.1\r\nHost: x\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n"
            sock.sendall(request.encode() + b"pending")
            time.sleep(0.05)  # the timeout responder fires while the connection is hijacked
            sock.sendall(b" and streamed")
            sock.shutdown(socket.SHUT_WR)
            closing = recv_to_close(sock)
        assert (closing.data, closing.how) == (HEAD + b"pending and streamed", "eof")
        time.sleep(0.05)  # whatever the stack does after the connection closed is done
    late, LATE[:] = LATE[:], []
    if stack == "timeout-responder" or (stack == "late-responder" and ending == "return"):
        assert late and all(isinstance(exc, AlreadyHijackedError) for exc in late), late
    for error in errors.records:  # only the app's failure, or a refused send after the hijack
        assert error.exc_type in (RuntimeError, AlreadyHijackedError), errors.describe()
