"""The PROXY protocol on real uvicorn servers: every class, asyncio and uvloop, over real sockets.

The client writes the header itself here, as a balancer would (``tests.helpers.proxy_header``);
``test_proxy_protocol_haproxy.py`` puts the real HAProxy in front. The last test is the
hypothesis fuzz of ``test_reliability_fuzz.py`` applied to PROXY headers: generated, mutated
and split headers are either accepted (the app sees the header's client, as the sans-I/O parser
reads it) or refused (the connection closes without a byte, the app sees nothing).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asgi_hijack.proxy_protocol import HeaderParser, ProxyHeaderError
from asgi_hijack.testing import RunningServer, serve
from tests.apps import whoami_app
from tests.helpers import (
    PARSERS,
    connect,
    curl,
    make_certificate,
    proxy_header,
    recv_to_close,
    recv_until,
    requires_zttp,
    server_errors,
    server_log,
    with_settings,
)

LOOPS = ["asyncio", "uvloop"]
FUZZ_EXAMPLES = int(os.environ.get("ASGI_HIJACK_FUZZ_EXAMPLES", "60"))
"""Examples per class of the PROXY header fuzz; the soak run raises it, as for test_reliability_fuzz."""
CLIENT, FRONT = ("203.0.113.7", 51234), ("192.0.2.1", 443)
CLIENT6 = ("2001:db8::7", 40000)
GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
HIJACK = b"GET /hijack HTTP/1.1\r\nHost: x\r\n\r\n"


def proxied(parser: str, loop: str = "asyncio", **settings: object) -> Any:
    """A server for ``whoami_app`` with the PROXY protocol on (``any``, unless set)."""
    return serve(whoami_app, with_settings(parser, **{"proxy_protocol": "any", **settings}), loop=loop)


def report(data: bytes) -> dict[str, Any]:
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), data
    result: dict[str, Any] = json.loads(body)
    return result


def refusal(server: RunningServer, data: bytes, half_close: bool = True) -> tuple[bytes, list[str]]:
    """Send ``data`` (then half-close) and read to the close: what came back, and the lines logged."""
    with server_log(logging.INFO, ["uvicorn.error", "uvicorn.access"]) as log, connect(server) as sock:
        sock.sendall(data)
        if half_close:
            with contextlib.suppress(OSError):  # the server may have closed (reset) already
                sock.shutdown(socket.SHUT_WR)
        closing = recv_to_close(sock)
    return closing.data, [line for line in log.messages() if "PROXY" in line or "HTTP/1.1" in line]


@pytest.fixture
def refusals() -> Iterator[None]:
    with server_errors() as errors:
        yield
    assert not errors.describe()


# -- the client's address, everywhere ----------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("parser", PARSERS)
def test_the_header_client_is_scope_client_and_the_extensions(parser: str, version: int, loop: str) -> None:
    with proxied(parser, loop) as server, connect(server) as sock:
        sock.sendall(proxy_header(version, CLIENT, FRONT) + GET)
        seen = report(recv_to_close(sock).data)
        balancer = list(sock.getsockname())
    assert seen["client"] == list(CLIENT)
    assert seen["proxy"] == {
        "version": version,
        "command": "PROXY",
        "source": list(CLIENT),
        "destination": list(FRONT),
        "peer": balancer,
        "authority": None,
        "alpn": None,
    }


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("parser", PARSERS)
def test_a_hijacked_connection_knows_the_client(parser: str, loop: str) -> None:
    with proxied(parser, loop) as server, connect(server) as sock:
        sock.sendall(proxy_header(2, CLIENT6, ("2001:db8::1", 443)) + HIJACK + b"after")
        line, _, echoed = recv_until(sock, b"after").partition(b"\r\n\r\n")[2].partition(b"\n")
        assert echoed == b"after"  # the bytes after the head reach the owner, not the header
        seen = json.loads(line)
        balancer = list(sock.getsockname())
        sock.shutdown(socket.SHUT_WR)
        assert recv_to_close(sock).how == "eof"
    assert seen["client"] == seen["conn_client"] == seen["info_client"] == list(CLIENT6)
    assert seen["proxy"]["peer"] == seen["socket_peer"] == balancer  # conn.socket is the real socket


async def websocket_client(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """uvicorn's WebSocket implementation: accept, send ``scope["client"]`` as JSON."""
    await receive()
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps(scope["client"])})
    await send({"type": "websocket.close"})


@pytest.mark.parametrize("parser", PARSERS)
def test_uvicorns_websockets_see_the_client(parser: str) -> None:
    handshake = (
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    cls = with_settings(parser, proxy_protocol="v2")
    with serve(websocket_client, cls) as server, connect(server) as sock:
        sock.sendall(proxy_header(2, CLIENT, FRONT) + handshake)
        data = recv_until(sock, b"]")
    assert data.startswith(b"HTTP/1.1 101 ") and json.dumps(list(CLIENT)).encode() in data


@requires_zttp
@pytest.mark.parametrize("loop", LOOPS)
def test_zttp_reads_the_header_before_telling_http2_from_http1(loop: str) -> None:
    """curl's ``--haproxy-protocol`` (v1), then the HTTP/2 preface: dispatched to HTTP/2 after the header."""
    with proxied("zttp", loop, proxy_protocol="v1") as server:
        result = curl("-s", "--haproxy-protocol", "--http2-prior-knowledge", "-w", "\n%{local_port}", server.url + "/")
    assert result.returncode == 0, result.stderr
    body, local_port = result.stdout.rsplit("\n", 1)
    seen = json.loads(body)
    assert seen["http_version"] == "2" and seen["client"] == ["127.0.0.1", int(local_port)]


@pytest.mark.parametrize("parser", PARSERS)
def test_tlvs_reach_the_app(parser: str) -> None:
    tlvs = [(0x01, b"http/1.1"), (0x02, b"api.example.com")]
    with proxied(parser) as server, connect(server) as sock:
        sock.sendall(proxy_header(2, CLIENT, FRONT, tlvs=tlvs) + GET)
        seen = report(recv_to_close(sock).data)
    assert (seen["proxy"]["alpn"], seen["proxy"]["authority"]) == ("http/1.1", "api.example.com")


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("parser", PARSERS)
def test_a_header_split_byte_by_byte_then_the_request(parser: str, loop: str) -> None:
    with proxied(parser, loop) as server, connect(server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in proxy_header(2, CLIENT, FRONT, tlvs=[(0x02, b"split.example")]):
            sock.sendall(bytes([byte]))
            time.sleep(0.001)  # one segment each (the property test splits without waiting)
        sock.sendall(GET)
        seen = report(recv_to_close(sock).data)
    assert seen["client"] == list(CLIENT) and seen["proxy"]["authority"] == "split.example"


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize("parser", PARSERS)
def test_local_and_unknown_keep_the_connection_addresses(parser: str, version: int) -> None:
    """A balancer's health check (v2 LOCAL, v1 UNKNOWN) is served as from the balancer itself."""
    with proxied(parser) as server, connect(server) as sock:
        sock.sendall(proxy_header(version) + GET)
        seen = report(recv_to_close(sock).data)
        own = list(sock.getsockname())
    assert seen["client"] == own
    assert seen["proxy"]["command"] == ("LOCAL" if version == 2 else "PROXY") and seen["proxy"]["source"] is None


@pytest.mark.parametrize("parser", PARSERS)
def test_keep_alive_requests_after_the_header(parser: str) -> None:
    with proxied(parser, proxy_protocol="v1") as server, connect(server) as sock:
        sock.sendall(proxy_header(1, CLIENT, FRONT) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        first = recv_until(sock, b"}")
        sock.sendall(GET)
        second = recv_to_close(sock).data
    assert report(first)["client"] == report(second)["client"] == list(CLIENT)


@pytest.mark.parametrize(("trusted", "served"), [("unix", True), ("127.0.0.1", False)])
@pytest.mark.parametrize("parser", PARSERS)
def test_unix_sockets_are_trusted_only_when_listed(parser: str, trusted: str, served: bool, tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    cls = with_settings(parser, proxy_protocol="v2", proxy_trusted=trusted)
    with serve(whoami_app, cls, uds=str(path)), socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(5)
        sock.connect(str(path))
        try:
            sock.sendall(proxy_header(2, CLIENT, FRONT) + GET)
        except BrokenPipeError:  # refused (closed) before the header went out: unix sockets report it on send
            data = b""
        else:
            data = recv_to_close(sock).data
    assert (report(data)["client"] == list(CLIENT)) if served else data == b""


@pytest.mark.parametrize("parser", PARSERS)
def test_off_by_default(parser: str) -> None:
    """Without the setting a PROXY line is what it is to HTTP: a bad request."""
    with serve(whoami_app, parser) as server, connect(server) as sock:
        sock.sendall(proxy_header(1, CLIENT, FRONT) + GET)
        assert recv_to_close(sock).data.startswith(b"HTTP/1.1 400 ")


# -- refused: no reply, one line logged, nothing parsed as HTTP --------------------------------------


@pytest.mark.usefixtures("refusals")
@pytest.mark.parametrize("parser", PARSERS)
def test_an_untrusted_peer_is_refused_even_with_a_good_header(parser: str) -> None:
    with proxied(parser, proxy_trusted="10.0.0.0/8") as server:
        data, lines = refusal(server, proxy_header(2, CLIENT, FRONT) + GET)
    assert data == b""
    assert (
        len(lines) == 1
        and "not a trusted balancer (if it is one, add its address to ASGI_HIJACK_PROXY_TRUSTED)" in lines[0]
    ), lines


@pytest.mark.usefixtures("refusals")
@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (GET, "no PROXY header"),
        (proxy_header(2, CLIENT, FRONT) + GET, "no PROXY header"),  # a v2 header where v1 is required
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n" + GET, "malformed PROXY v1 line"),
        (b"PROXY UNKNOWN " + b"x" * 200 + b"\r\n" + GET, "within 107 bytes"),
        (b"PROXY TCP4 203.0.113.7", "closed before the end of its PROXY header"),
    ],
)
@pytest.mark.parametrize("parser", PARSERS)
def test_missing_malformed_too_long_or_cut_headers_are_refused(parser: str, data: bytes, reason: str) -> None:
    with proxied(parser, proxy_protocol="v1") as server:
        reply, lines = refusal(server, data)  # the app never sees a request: it would answer 200
    assert reply == b""
    assert len(lines) == 1 and reason in lines[0], lines


@pytest.mark.usefixtures("refusals")
@pytest.mark.parametrize("parser", PARSERS)
def test_no_header_within_the_head_timeout(parser: str) -> None:
    with proxied(parser, head_timeout=0.2) as server:
        data, lines = refusal(server, b"PROXY TCP4 203", half_close=False)
    assert data == b"" and len(lines) == 1 and "no PROXY header within 0.2 s" in lines[0], lines


@pytest.mark.parametrize("parser", PARSERS)
def test_a_tcp_health_check_that_sends_nothing_is_not_logged(parser: str) -> None:
    with proxied(parser) as server:
        data, lines = refusal(server, b"")
    assert data == b"" and lines == []


@pytest.mark.parametrize("parser", PARSERS)
def test_tls_is_refused_with_a_clear_error_once(parser: str, tmp_path: Path) -> None:
    """The PROXY header comes before the TLS handshake, which asyncio does below the protocol."""
    key, cert = make_certificate(tmp_path)
    cls = with_settings(parser, proxy_protocol="v2")
    context = ssl.create_default_context(cafile=str(cert))
    with (
        serve(whoami_app, cls, ssl_certfile=str(cert), ssl_keyfile=str(key)) as server,
        server_errors() as errors,  # after uvicorn's logging set-up
    ):
        with connect(server) as sock:  # a balancer: the header, where the handshake should be
            sock.sendall(proxy_header(2, CLIENT, FRONT) + GET)
            assert b"HTTP" not in recv_to_close(sock).data
        with connect(server) as raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            sock.sendall(proxy_header(2, CLIENT, FRONT) + GET)  # inside TLS: refused all the same
            assert recv_to_close(sock).data == b""
    messages = errors.messages()
    assert len(messages) == 1 and "cannot be used with --ssl-keyfile" in messages[0], messages
    assert "Terminate TLS at the balancer" in messages[0]


# -- the fuzz ----------------------------------------------------------------------------------------


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    """A header (good, or mutated), then a request."""
    version = draw(st.sampled_from([1, 2]))
    source = draw(st.tuples(st.ip_addresses(v=4).map(str), st.integers(1, 65535)))
    tlvs = draw(st.lists(st.tuples(st.sampled_from([1, 2, 4, 5, 0xE0]), st.binary(max_size=16)), max_size=3))
    header = proxy_header(version, source, FRONT, tlvs=[(k, v) for k, v in tlvs if k != 2 or v.isascii()])
    if draw(st.booleans()):
        at = draw(st.integers(0, len(header) - 1))
        junk = draw(st.binary(min_size=1, max_size=3))
        header = draw(st.sampled_from([header[:at] + junk + header[at + 1 :], header[:at] + junk, header[:at]]))
    return header + GET


@settings(max_examples=FUZZ_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=streams(), cut=st.integers(0, 120))
def test_fuzz_accepted_headers_name_the_client_refused_ones_get_no_byte(
    proxied_server: RunningServer, data: bytes, cut: int
) -> None:
    with connect(proxied_server) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with contextlib.suppress(OSError):  # the server may close (reset) once the first part is refused
            sock.sendall(data[:cut])
            sock.sendall(data[cut:])
            sock.shutdown(socket.SHUT_WR)
        closing = recv_to_close(sock)
        own = list(sock.getsockname())
    assert closing.how in ("eof", "reset"), closing
    oracle = HeaderParser("any")  # the sans-I/O parser, unit-tested on its own, says what to expect
    try:
        header = oracle.feed(data)
    except ProxyHeaderError:
        header = None
    if header is None:
        assert closing.data == b"", closing
    elif oracle.rest == GET or closing.data.startswith(b"HTTP/1.1 200 "):  # "T / HTTP/1.1" is a request too
        assert report(closing.data)["client"] == list(header.source or own)


@pytest.fixture(scope="module", params=PARSERS)
def proxied_server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    with proxied(request.param, head_timeout=1.0) as server, server_errors() as errors:
        yield server
        with connect(server) as sock:  # still serving
            sock.sendall(proxy_header(2, CLIENT, FRONT) + GET)
            assert report(recv_to_close(sock).data)["client"] == list(CLIENT)
    assert not errors.describe()
