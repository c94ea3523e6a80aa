"""HTTP/2: hijack is refused clearly, and clients are told to retry over HTTP/1.1.

Real servers on 127.0.0.1, real clients (httpx, the ``h2`` library, curl). Every wait
is bounded by :data:`TIMEOUT`, so a regression fails fast instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import subprocess
import threading
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any, cast

import h2.config
import h2.connection
import h2.events
import httpx
import pytest
from h2.errors import ErrorCodes
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config as HypercornConfig
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_hijack import HijackNotSupported, hijack, hijack_supported
from asgi_hijack.testing import serve
from tests.helpers import PARSERS, connect_retry, curl, make_certificate, requires_zttp

TIMEOUT = 10.0
HIJACKED = b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\nconnection: close\r\n\r\nhijacked"
H2C_BODY = b"HTTP/2 spoken by the app on a hijacked connection"
HTTP_1_1_REQUIRED = f"error_code:{ErrorCodes.HTTP_1_1_REQUIRED:d},"  # how httpx reports the reset

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class App:
    """Test app; records ``(http_version, path)`` of every request it sees.

    ``/echo``: read the whole body, answer ``"<http_version> <body>"``.
    ``/hijack``: hijack and answer with a raw HTTP/1.1 response (Go's classic hijack).
    ``/refusal``: try to hijack, answer 200 with what ``HijackNotSupported`` said.
    ``/h2c``: hijack an ``Upgrade: h2c`` request and speak HTTP/2 on the connection.
    """

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        self.seen.append((scope["http_version"], scope["path"]))
        if scope["path"] == "/hijack":
            conn = await hijack(scope, receive, send)
            conn.writer.write(HIJACKED)
            await conn.aclose()
        elif scope["path"] == "/h2c":
            await h2c_over_hijack(scope, receive, send)
        elif scope["path"] == "/refusal":
            try:
                await hijack(scope, receive, send)
            except HijackNotSupported as exc:
                report = {"message": str(exc), "supported": hijack_supported(scope)}
                report["extensions"] = sorted(scope.get("extensions") or {})
                await respond(send, json.dumps(report).encode())
        else:
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await respond(send, scope["http_version"].encode() + b" " + body)


async def respond(send: Send, body: bytes) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})


async def h2c_over_hijack(scope: Scope, receive: Receive, send: Send) -> None:
    """Complete an ``Upgrade: h2c`` (RFC 7540 section 3.2) in the app, with the ``h2`` library."""
    headers = dict(scope["headers"])
    assert headers[b"upgrade"] == b"h2c", headers
    conn = await hijack(scope, receive, send, status=101, headers=[(b"connection", b"Upgrade"), (b"upgrade", b"h2c")])
    async with conn:
        h2conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        h2conn.initiate_upgrade_connection(headers[b"http2-settings"])
        h2conn.send_headers(1, [(b":status", b"200"), (b"content-length", b"%d" % len(H2C_BODY))])
        h2conn.send_data(1, H2C_BODY, end_stream=True)
        conn.writer.write(h2conn.data_to_send())
        # Answer the client's preface and SETTINGS until it hangs up.
        while data := await asyncio.wait_for(conn.reader.read(65536), TIMEOUT):
            events = h2conn.receive_data(data)
            conn.writer.write(h2conn.data_to_send())
            if any(isinstance(event, h2.events.ConnectionTerminated) for event in events):
                break


# -- servers ----------------------------------------------------------------------


@contextlib.contextmanager
def hypercorn_server(app: App) -> Iterator[tuple[str, int]]:
    """hypercorn (cleartext: HTTP/1.1 and h2c prior knowledge) in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    address: tuple[str, int] = sock.getsockname()
    config = HypercornConfig()
    config.bind = [f"fd://{sock.detach()}"]
    loop = asyncio.new_event_loop()
    stop = asyncio.Event()
    main = hypercorn_serve(cast(Any, app), config, shutdown_trigger=stop.wait)
    thread = threading.Thread(target=loop.run_until_complete, args=(main,), daemon=True)
    thread.start()
    try:
        connect_retry(address, TIMEOUT).close()
        yield address
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(TIMEOUT)
        loop.close()


@contextlib.contextmanager
def h2_server(kind: str, app: App) -> Iterator[tuple[str, int]]:
    """A cleartext HTTP/2-capable server: ours, stock ``uvicorn --http zttp --http2``, or hypercorn."""
    if kind == "hypercorn":
        with hypercorn_server(app) as address:
            yield address
        return
    # AutoZttpProtocol is exactly what ``--http zttp --http2`` loads.
    stock = "uvicorn.protocols.http.auto_zttp_impl:AutoZttpProtocol"
    with serve(app, "zttp" if kind == "asgi_hijack" else stock) as server:
        yield server.address


def h2c_client(address: tuple[str, int]) -> httpx.Client:
    """httpx speaking HTTP/2 with prior knowledge (no HTTP/1.1) to ``address``."""
    return httpx.Client(http1=False, http2=True, base_url=f"http://{address[0]}:{address[1]}", timeout=TIMEOUT)


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key: ``(cert.pem, key.pem)``."""
    key, cert = make_certificate(tmp_path_factory.mktemp("tls"))
    return cert, key


def curl_traced(*args: str) -> subprocess.CompletedProcess[str]:
    """Run curl with its trace on stderr; stdout ends with a line holding the HTTP version of the last response."""
    return curl("--verbose", "-w", "\n%{http_version}", *args, timeout=TIMEOUT)


# -- the END_STREAM receive() fix -----------------------------------------------------


@requires_zttp
@pytest.mark.parametrize("method", ["GET", "POST", "DELETE"])
def test_http2_receive_returns_for_every_request(method: str) -> None:
    """uvicorn 0.54 never returns from receive() when HEADERS end the stream (a GET); we do."""
    app = App()
    with serve(app, "zttp") as server, h2c_client(server.address) as client:
        body = b"x" * 100_000 if method == "POST" else b""
        response = client.request(method, "/echo?q=1", content=body)
        empty = client.request(method, "/echo")  # a second stream on the same connection
    assert response.http_version == "HTTP/2"
    assert response.content == b"2 " + body
    assert empty.content == b"2 "
    assert app.seen == [("2", "/echo"), ("2", "/echo")]


@requires_zttp
def test_http2_over_tls_by_alpn(tls: tuple[Path, Path]) -> None:
    """ALPN ``h2`` selects HTTP/2, ``http/1.1`` selects HTTP/1.1 where the hijack works."""
    cert, key = tls
    context = ssl.create_default_context(cafile=str(cert))
    with serve(App(), "zttp", ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        with httpx.Client(http2=True, verify=context, timeout=TIMEOUT) as client:
            response = client.get(f"{server.url}/echo")
            assert (response.http_version, response.content) == ("HTTP/2", b"2 ")
            with pytest.raises(httpx.RemoteProtocolError, match=HTTP_1_1_REQUIRED):
                client.get(f"{server.url}/hijack")
        with httpx.Client(http2=False, verify=context, timeout=TIMEOUT) as client:
            response = client.get(f"{server.url}/hijack")
            assert (response.http_version, response.content) == ("HTTP/1.1", b"hijacked")


# -- RST_STREAM HTTP_1_1_REQUIRED -------------------------------------------------------


@requires_zttp
def test_refused_hijack_resets_only_its_stream() -> None:
    """A hijack escaping on stream 3 resets it with HTTP_1_1_REQUIRED; open stream 1 completes."""
    with serve(App(), "zttp") as server, socket.create_connection(server.address, timeout=TIMEOUT) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        conn.initiate_connection()

        def request(stream_id: int, method: str, path: str, end_stream: bool) -> None:
            headers = [(":method", method), (":scheme", "http"), (":authority", "127.0.0.1"), (":path", path)]
            conn.send_headers(stream_id, headers, end_stream=end_stream)

        def exchange(until: Callable[[h2.events.Event], bool]) -> list[h2.events.Event]:
            sock.sendall(conn.data_to_send())
            events: list[h2.events.Event] = []
            while not any(until(event) for event in events):
                data = sock.recv(65536)
                assert data, f"server closed the connection after {events}"
                events += conn.receive_data(data)
                sock.sendall(conn.data_to_send())
            assert not any(isinstance(event, h2.events.ConnectionTerminated) for event in events), events
            return events

        request(1, "POST", "/echo", end_stream=False)  # its body comes later: the stream stays open
        request(3, "GET", "/hijack", end_stream=True)
        events = exchange(lambda event: isinstance(event, h2.events.StreamReset))
        resets = [(event.stream_id, event.error_code) for event in events if isinstance(event, h2.events.StreamReset)]
        assert resets == [(3, ErrorCodes.HTTP_1_1_REQUIRED)]

        conn.send_data(1, b"sibling", end_stream=True)
        request(5, "GET", "/echo", end_stream=True)  # the connection still takes new streams
        events += exchange(lambda event: isinstance(event, h2.events.StreamEnded) and event.stream_id == 5)
    bodies = {1: b"", 5: b""}
    for event in events:
        if isinstance(event, h2.events.ResponseReceived):
            assert dict(event.headers)[b":status"] == b"200"
        elif isinstance(event, h2.events.DataReceived):
            bodies[event.stream_id] += event.data
    assert bodies == {1: b"2 sibling", 5: b"2 "}


@requires_zttp
def test_starlette_500_for_a_refused_hijack_becomes_the_reset() -> None:
    """Starlette's ServerErrorMiddleware sends a 500 before re-raising: on HTTP/2 the stream is reset instead."""

    async def failing(request: Request) -> Response:
        raise RuntimeError("an ordinary error")

    app = Starlette(routes=[Route("/hijack", App()), Route("/fail", failing)])  # App(): an ASGI endpoint
    with serve(app, "zttp") as server:
        with h2c_client(server.address) as client:
            with pytest.raises(httpx.RemoteProtocolError, match=HTTP_1_1_REQUIRED):
                client.get("/hijack")
            assert client.get("/fail").status_code == 500  # other errors are left alone
        with httpx.Client(base_url=server.url, timeout=TIMEOUT) as client:
            assert client.get("/hijack").content == b"hijacked"


@pytest.mark.parametrize(
    "kind",
    [pytest.param("asgi_hijack", marks=requires_zttp), pytest.param("uvicorn", marks=requires_zttp), "hypercorn"],
)
def test_http2_hijack_refused_with_clear_error(kind: str) -> None:
    """Every HTTP/2 server: no ``http.hijack`` extension, and hijack() says why and what to do."""
    app = App()
    with h2_server(kind, app) as address, h2c_client(address) as client:
        report = client.get("/refusal").json()
        if kind == "asgi_hijack":
            with pytest.raises(httpx.RemoteProtocolError, match=HTTP_1_1_REQUIRED):
                client.get("/hijack")
        else:  # other servers answer an escaped exception with a 500
            assert client.get("/hijack").status_code == 500
    assert app.seen == [("2", "/refusal"), ("2", "/hijack")]
    assert report["supported"] is False
    assert "http.hijack" not in report["extensions"]
    message = report["message"]  # why (HTTP/2), and what to do instead (HTTP/1.1, WebSockets)
    assert "HTTP/2" in message and "HTTP/1.1" in message and "WebSocket" in message


# -- curl -----------------------------------------------------------------------------


@requires_zttp
def test_curl_http2_over_tls_retries_over_http1(tls: tuple[Path, Path]) -> None:
    """curl (7.88 here) takes HTTP_1_1_REQUIRED, retries over HTTP/1.1, and the hijack answers."""
    cert, key = tls
    app = App()
    with serve(app, "zttp", ssl_certfile=str(cert), ssl_keyfile=str(key)) as server:
        done = curl_traced("--http2", "--cacert", str(cert), f"{server.url}/hijack")
    assert "HTTP_1_1_REQUIRED" in done.stderr  # curl's trace of the reset, before its retry
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hijacked\n1.1", done.stderr
    assert app.seen == [("2", "/hijack"), ("1.1", "/hijack")]


@requires_zttp
def test_curl_http2_prior_knowledge_retries_over_http1() -> None:
    """curl with prior knowledge also retries over HTTP/1.1 on the same cleartext port."""
    app = App()
    with serve(app, "zttp") as server:
        done = curl_traced("--http2-prior-knowledge", f"{server.url}/hijack")
        echo = curl_traced("--http2-prior-knowledge", f"{server.url}/echo")
    assert "HTTP_1_1_REQUIRED" in done.stderr
    assert done.returncode == 0, done.stderr
    assert done.stdout == "hijacked\n1.1", done.stderr
    assert echo.stdout == "2 \n2", echo.stderr
    assert app.seen == [("2", "/hijack"), ("1.1", "/hijack"), ("2", "/echo")]


# -- Upgrade: h2c on HTTP/1.1 -----------------------------------------------------------


@pytest.mark.parametrize("protocol", PARSERS)
def test_h2c_upgrade_is_an_ordinary_upgrade_token(protocol: str) -> None:
    """``curl --http2 http://`` asks ``Upgrade: h2c``: served as HTTP/1.1, or hijacked by the app."""
    app = App()
    with serve(app, protocol) as server:
        plain = curl_traced("--http2", f"{server.url}/echo")
        upgraded = curl_traced("--http2", f"{server.url}/h2c")
    assert "Upgrade: h2c" in plain.stderr and "Upgrade: h2c" in upgraded.stderr
    assert plain.stdout == "1.1 \n1.1", plain.stderr
    assert upgraded.stdout == H2C_BODY.decode() + "\n2", upgraded.stderr
    assert app.seen == [("1.1", "/echo"), ("1.1", "/h2c")]
