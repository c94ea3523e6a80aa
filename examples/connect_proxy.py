"""An HTTP CONNECT proxy as ASGI middleware, closed by default, on HTTP/1.1 and HTTP/2.

``ConnectProxyMiddleware(app, allow=["example.com:443"])`` answers tunnel requests itself
and passes every other request to ``app``. It takes three forms of the same request, and
serves them with the same code, :func:`asgi_hijack.tunnel`:

* HTTP/1.1 ``CONNECT host:port`` (``curl -p -x``, every HTTP client's proxy setting);
* HTTP/2 extended CONNECT with ``:protocol: connect-tcp``, and HTTP/1.1 ``Upgrade:
  connect-tcp``, to the template ``/.well-known/masque/tcp/{host}/{port}/``
  (draft-ietf-httpbis-connect-tcp, templated TCP proxying);
* HTTP/2 ``CONNECT`` with ``:authority host:port`` (RFC 9113 section 8.5), for the day the
  HTTP/2 engine delivers it: zttp 0.0.35 resets it with ``PROTOCOL_ERROR`` first.

An allowed target is connected to, the client is told ``200``, and the two are joined
with ``tunnel.relay()``: bytes flow both ways with back-pressure (a slow reader on one side
slows the writer on the other), and a half-close on either side is passed on (``FIN``,
``END_STREAM``). A target not on the allow-list gets ``403``, one that cannot be reached
``502``, each with a plain-text body that says why; an upstream that fails later resets an
HTTP/2 tunnel with ``CONNECT_ERROR``. With no allow-list nothing is reachable.

Run (127.0.0.1:8080; the allow-list is a comma-separated ``CONNECT_PROXY_ALLOW``)::

    CONNECT_PROXY_ALLOW=example.com:443 python examples/connect_proxy.py [PORT]     # HTTP/1.1
    CONNECT_PROXY_ALLOW=example.com:443 uvicorn examples.connect_proxy:app \\
        --http asgi_hijack:ZttpHijackProtocol --port 8080                           # and HTTP/2

Try it::

    curl -p -x http://127.0.0.1:8080 https://example.com/
    python -c "import httpx; print(httpx.get('https://example.com/', proxy='http://127.0.0.1:8080'))"

Allow-list entries are ``host:port`` or ``host:*``, matched against the host name the
client asked for (case-insensitive), before any name is resolved.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
from collections.abc import Iterable
from urllib.parse import unquote

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from asgi_hijack import Tunnel, tunnel, tunnel_supported


def parse_authority(target: str, any_port: bool = False) -> tuple[str, int | None] | None:
    """``host:port`` or ``[v6]:port`` to ``(host, port)``, ``host:*`` to ``(host, None)`` if
    ``any_port``; None if malformed."""
    host, sep, port = target.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c in host for c in "/[]@ "):
        return None
    if any_port and port == "*":
        return host.lower(), None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host.lower(), int(port)


class ConnectProxyMiddleware:
    """Tunnel ``CONNECT host:port`` and ``connect-tcp`` to allowed targets; other requests go to ``app``.

    ``allow``: ``"host:port"`` or ``"host:*"`` entries; nothing is allowed by default.
    ``connect_timeout``: seconds to reach the target before answering ``502``.
    """

    def __init__(self, app: ASGIApp, allow: Iterable[str] = (), *, connect_timeout: float = 10.0) -> None:
        self.app = app
        self.allow: set[tuple[str, int | None]] = set()
        for entry in allow:
            address = parse_authority(entry, any_port=True)
            if address is None:
                raise ValueError(f"allow-list entries are host:port or host:*, got {entry!r}")
            self.allow.add(address)
        self.connect_timeout = connect_timeout

    def allowed(self, host: str, port: int) -> bool:
        return (host, port) in self.allow or (host, None) in self.allow

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        target = target_of(scope) if scope["type"] == "http" else None
        if target is None:
            await self.app(scope, receive, send)
            return
        response = await self.tunnel(scope, receive, send, target)
        if response is not None:
            await response(scope, receive, send)

    async def tunnel(self, scope: Scope, receive: Receive, send: Send, target: str | None = None) -> Response | None:
        """Join the client to the target (by default :func:`target_of` the request); or return the error response."""
        target = (target_of(scope) or "") if target is None else target
        address = parse_authority(target)
        if address is None or address[1] is None:
            return PlainTextResponse(
                f"CONNECT needs a host:port target (connect-tcp: the path {TEMPLATE_TEXT}), got {target!r}.\n",
                400,
            )
        host, port = address[0], address[1]
        if not self.allowed(host, port):
            return PlainTextResponse(f"CONNECT to {target} is not allowed by this proxy's allow-list.\n", 403)
        if not tunnel_supported(scope):
            return PlainTextResponse(
                "This server cannot hand over the connection for CONNECT: run uvicorn with "
                "--http asgi_hijack:ZttpHijackProtocol (or HijackProtocol for HTTP/1.1 alone).\n",
                501,
            )
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        except TimeoutError:
            return PlainTextResponse(f"Could not connect to {target}: no answer in {self.connect_timeout}s.\n", 502)
        except OSError as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
            return PlainTextResponse(f"Could not connect to {target}: {reason or exc}.\n", 502)
        up_reader, up_writer = upstream
        try:
            conn = await tunnel(scope, receive, send)
        except BaseException:
            up_writer.close()
            raise
        await relay(conn, up_reader, up_writer)
        return None


TEMPLATE_TEXT = "/.well-known/masque/tcp/{host}/{port}/"
"""draft-ietf-httpbis-connect-tcp's default URI template."""
TEMPLATE = re.compile(r"/\.well-known/masque/tcp/([^/]+)/([^/]+)/")


def target_of(scope: Scope) -> str | None:
    """What a tunnel request asks for, ``host:port`` when well-formed; None for other requests."""
    protocol = (scope.get("extensions", {}).get("http.tunnel") or {}).get("protocol")
    headers = dict(scope["headers"])
    if scope["method"] == "CONNECT" and protocol is None:  # classic CONNECT, authority form
        if scope["http_version"] == "2":
            return str((headers.get(b":authority") or headers.get(b"host") or b"").decode("latin-1"))
        return str(scope["raw_path"].decode("latin-1"))
    if protocol != "connect-tcp" and headers.get(b"upgrade", b"").lower() != b"connect-tcp":
        return None
    path = scope["raw_path"].decode("latin-1")
    match = TEMPLATE.fullmatch(path)
    if match is None:
        return path
    host, port = unquote(match[1]), unquote(match[2])
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def relay(conn: Tunnel, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Join the two until both are done (or the server stops), then close both.

    ``tunnel.relay`` keeps back-pressure (a full buffer on one side pauses reading on the
    other) and passes EOF on as a half-close; on HTTP/2 a failed upstream resets the stream
    with ``CONNECT_ERROR``.
    """
    task = asyncio.current_task()
    if task is not None:
        conn.on_shutdown(task.cancel)  # a cancelled relay closes both ends
    try:
        await conn.relay(up_reader, up_writer)
    except asyncio.CancelledError:
        pass
    finally:
        up_writer.close()
        await conn.aclose()


async def index(request: Request) -> Response:
    return PlainTextResponse("This is a CONNECT proxy: curl -p -x http://HOST:PORT https://target/\n")


ALLOW = [entry for entry in os.environ.get("CONNECT_PROXY_ALLOW", "").split(",") if entry.strip()]
app = ConnectProxyMiddleware(Starlette(routes=[Route("/", index)]), allow=ALLOW)

if __name__ == "__main__":
    from asgi_hijack import HijackProtocol  # a class: uvicorn before 0.36 takes no import string

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    uvicorn.run(app, host="127.0.0.1", port=port, http=HijackProtocol)
