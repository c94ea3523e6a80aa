"""An HTTP CONNECT proxy as ASGI middleware, closed by default.

``ConnectProxyMiddleware(app, allow=["example.com:443"])`` answers ``CONNECT host:port``
requests itself and passes every other request to ``app``. An allowed target is
connected to, the client is told ``200 Connection established``, and the two
connections are joined with ``conn.relay()``, which forwards at the transport level: bytes
flow both ways with back-pressure (a slow reader on one side slows the writer on the
other), and a half-close on either side is passed on.
A target not on the allow-list gets ``403``, one that cannot be reached ``502``, each
with a plain-text body that says why. With no allow-list nothing is reachable.

Run (127.0.0.1:8080; the allow-list is a comma-separated ``CONNECT_PROXY_ALLOW``)::

    CONNECT_PROXY_ALLOW=example.com:443 python examples/connect_proxy.py [PORT]
    CONNECT_PROXY_ALLOW=example.com:443 uvicorn examples.connect_proxy:app --http asgi_hijack:HijackProtocol --port 8080

Try it::

    curl -p -x http://127.0.0.1:8080 https://example.com/
    python -c "import httpx; print(httpx.get('https://example.com/', proxy='http://127.0.0.1:8080'))"

Allow-list entries are ``host:port`` or ``host:*``, matched against the host name the
client asked for (case-insensitive), before any name is resolved.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Iterable

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from asgi_hijack import HijackedConnection, hijack, hijack_supported


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
    """Tunnel ``CONNECT host:port`` to allowed targets; every other request goes to ``app``.

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
        if scope["type"] != "http" or scope["method"] != "CONNECT":
            await self.app(scope, receive, send)
            return
        response = await self.tunnel(scope, receive, send)
        if response is not None:
            await response(scope, receive, send)

    async def tunnel(self, scope: Scope, receive: Receive, send: Send) -> Response | None:
        """Join the client to the target; or return the error response to send instead."""
        target = scope["raw_path"].decode("latin-1")
        address = parse_authority(target)
        if address is None or address[1] is None:
            return PlainTextResponse(f"CONNECT needs a host:port target, got {target!r}.\n", 400)
        host, port = address[0], address[1]
        if not self.allowed(host, port):
            return PlainTextResponse(f"CONNECT to {target} is not allowed by this proxy's allow-list.\n", 403)
        if not hijack_supported(scope):
            return PlainTextResponse("This server cannot hand over the connection for CONNECT (HTTP/1.1 only).\n", 501)
        try:
            upstream = await asyncio.wait_for(asyncio.open_connection(host, port), self.connect_timeout)
        except TimeoutError:
            return PlainTextResponse(f"Could not connect to {target}: no answer in {self.connect_timeout}s.\n", 502)
        except OSError as exc:
            reason = exc.strerror if isinstance(exc, socket.gaierror) or not exc.errno else os.strerror(exc.errno)
            return PlainTextResponse(f"Could not connect to {target}: {reason or exc}.\n", 502)
        up_reader, up_writer = upstream
        try:
            conn = await hijack(scope, receive, send, status=200, reason="Connection established")
        except BaseException:
            up_writer.close()
            raise
        await relay(conn, up_reader, up_writer)
        return None


async def relay(conn: HijackedConnection, up_reader: asyncio.StreamReader, up_writer: asyncio.StreamWriter) -> None:
    """Join the two connections until both are done (or the server stops), then close both.

    ``conn.relay`` forwards at the transport level: a full write buffer on one side pauses
    reading on the other (back-pressure), and EOF on one side is passed on as a half-close.
    """
    task = asyncio.current_task()
    if task is not None:
        conn.on_shutdown(task.cancel)  # a cancelled relay aborts both connections
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
