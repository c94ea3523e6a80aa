"""hijack() through each Starlette middleware and uvicorn's ProxyHeadersMiddleware.

Each middleware wraps a plain ASGI app that hijacks with a ``101`` head and echoes a
line. Through a middleware, hijack must either work byte for byte, or fail with our
error, which the app then reports in an ordinary HTTP response. A second request
raises an exception after the hijack (while the connection is still open) to check
that no middleware writes an error page to the hijacked socket.

What the client saw is recorded in :data:`OUTCOMES`; after a run that covered every
middleware, the module writes the table ``docs/middleware-compat.md`` from it.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.errors import ServerErrorMiddleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.httpsredirect import HTTPSRedirectMiddleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from asgi_hijack import HijackedConnection, HijackError, hijack
from asgi_hijack.starlette import Hijacked
from asgi_hijack.testing import RunningServer
from tests.conftest import recv_all, recv_until
from tests.test_api import make_certificate

TABLE = Path(__file__).resolve().parents[1] / "docs" / "middleware-compat.md"
README = Path(__file__).resolve().parents[1] / "README.md"
START, END = "<!-- middleware-compat:start -->", "<!-- middleware-compat:end -->"
UPGRADE = [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")]
UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"
KEEP: set[asyncio.Task[None]] = set()


async def answer_later(conn: HijackedConnection) -> None:
    """Still the connection's owner after the app raised: answer one more line, then close."""
    async with conn:
        conn.writer.write(b"still mine: " + await conn.reader.readline())


async def hijacking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/echo``: hijack, echo one line. ``/raise``: the same, then raise with the connection open."""
    if "session" in scope:
        scope["session"]["visited"] = True  # a changed session would make SessionMiddleware add a cookie
    try:
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE)
    except HijackError as exc:
        body = f"{type(exc).__name__}: {exc}".encode()
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-length", b"%d" % len(body))]})
        await send({"type": "http.response.body", "body": body})
        return
    conn.writer.write(b"echo " + await conn.reader.readline())
    if scope["path"] != "/raise":
        await conn.aclose()
        return
    task = asyncio.get_running_loop().create_task(answer_later(conn))
    KEEP.add(task)
    task.add_done_callback(KEEP.discard)
    raise HTTPException(418, "raised after the hijack")  # every middleware sees it; none may write


async def passthrough(request: Request, call_next: Any) -> Response:
    response: Response = await call_next(request)
    return response


@dataclass
class Case:
    """One middleware, how the app is wrapped in it, and what the test's request carries."""

    name: str
    wrap: Callable[[Any], Any]
    tested_with: str
    headers: list[str] = field(default_factory=list)
    tls: bool = False


CASES = [
    Case("ServerErrorMiddleware", lambda app: ServerErrorMiddleware(app), "defaults"),
    Case("ExceptionMiddleware", lambda app: ExceptionMiddleware(app), "defaults; the app raises `HTTPException`"),
    Case(
        "CORSMiddleware",
        lambda app: CORSMiddleware(app, allow_origins=["*"], allow_credentials=False),
        "`allow_origins=['*']`, a request with `Origin`",
        ["Origin: http://example.com"],
    ),
    Case(
        "GZipMiddleware",
        lambda app: GZipMiddleware(app),
        "defaults, `Accept-Encoding: gzip`",
        ["Accept-Encoding: gzip"],
    ),
    Case(
        "TrustedHostMiddleware",
        lambda app: TrustedHostMiddleware(app, allowed_hosts=["127.0.0.1"]),
        "`allowed_hosts=['127.0.0.1']`",
    ),
    Case(
        "HTTPSRedirectMiddleware",
        lambda app: HTTPSRedirectMiddleware(app),
        "a request over TLS (plain http is redirected before the app runs)",
        tls=True,
    ),
    Case(
        "SessionMiddleware",
        lambda app: SessionMiddleware(app, secret_key="test"),
        "the app changes the session before hijacking",
    ),
    Case(
        "BaseHTTPMiddleware",
        lambda app: BaseHTTPMiddleware(app, dispatch=passthrough),
        "a `dispatch` that returns `await call_next(request)`",
    ),
    Case(
        "ProxyHeadersMiddleware (uvicorn)",
        lambda app: ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1"),
        "`trusted_hosts='127.0.0.1'`, `X-Forwarded-For` and `X-Forwarded-Proto`",
        ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https"],
    ),
]

STACKED = "ProxyHeaders, TrustedHost, CORS and Session stacked in a Starlette app (with its ServerError and Exception)"
OUTCOMES: dict[str, tuple[str, str]] = {}
"""Middleware name -> (result, what the client saw), recorded before each assertion."""


@pytest.fixture(scope="module", autouse=True)
def compat_table() -> Iterator[None]:
    """After the module: write the table (docs/middleware-compat.md and the README's copy) if every
    middleware was tested."""
    yield
    if set(OUTCOMES) >= {case.name for case in CASES} | {"stack"}:
        table = render_table()
        TABLE.parent.mkdir(exist_ok=True)
        TABLE.write_text(table)
        readme = README.read_text()
        if START in readme and END in readme:
            head, _, rest = readme.partition(START)
            README.write_text(head + START + "\n" + table + END + rest.partition(END)[2])


def render_table() -> str:
    lines = [
        "<!-- Written by tests/test_middleware_compat.py from what its client saw; do not edit. -->",
        "| Middleware | hijack() through it | Tested with | What the client saw |",
        "| --- | --- | --- | --- |",
    ]
    for case in CASES:
        result, seen = OUTCOMES[case.name]
        lines.append(f"| {case.name} | {result} | {case.tested_with} | {seen} |")
    result, seen = OUTCOMES["stack"]
    lines.append(f"| {STACKED} | {result} | `hijack(request)` in a route, a request with `Origin` | {seen} |")
    return "\n".join(lines) + "\n"


def exchange(server: RunningServer, case: Case, path: str, context: ssl.SSLContext | None) -> tuple[bytes, bytes]:
    """Send the request and a line; return (the first answer, the rest until EOF)."""
    raw = socket.create_connection(server.address, timeout=5)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    with sock:
        head = "".join(f"{header}\r\n" for header in ["Host: 127.0.0.1", "Connection: close", *case.headers])
        sock.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\nhi\n".encode())
        first = recv_until(sock, b"echo hi\n") if path == "/raise" else b""
        if path == "/raise":
            sock.sendall(b"bye\n")
        return first, recv_all(sock)


def observe(server: RunningServer, case: Case, context: ssl.SSLContext | None) -> tuple[str, str]:
    """Run both requests; describe the outcome from the client's side only."""
    _, echoed = exchange(server, case, "/echo", context)
    if echoed.startswith(b"HTTP/1.1 500 ") and b"\r\n\r\n" in echoed:
        error = echoed.partition(b"\r\n\r\n")[2].decode()
        name, _, message = error.partition(": ")
        return f"fails with `{name}`", message.partition(". ")[0].replace("|", "\\|") + "."
    first, rest = exchange(server, case, "/raise", context)
    if echoed == UPGRADED + b"echo hi\n" and first + rest == UPGRADED + b"echo hi\nstill mine: bye\n":
        return "works", "the `101` head and the echo byte for byte; nothing written after an exception"
    return "BROKEN", f"unexpected bytes: {(echoed, first + rest)!r}"[:300]


@pytest.mark.parametrize("case", CASES, ids=[case.name.split()[0] for case in CASES])
def test_middleware(hijack_server: Any, case: Case, tmp_path: Path) -> None:
    config: dict[str, Any] = {}
    context = None
    if case.tls:
        key, cert = make_certificate(tmp_path)
        config = {"ssl_keyfile": str(key), "ssl_certfile": str(cert)}
        context = ssl.create_default_context(cafile=str(cert))
    server = hijack_server(case.wrap(hijacking_app), **config)
    OUTCOMES[case.name] = outcome = observe(server, case, context)
    expected = (
        "fails with `MiddlewareBlockedError`" if case.name in ("GZipMiddleware", "BaseHTTPMiddleware") else "works"
    )
    assert outcome[0] == expected, outcome


async def stacked_endpoint(request: Request) -> Response:
    conn = await hijack(request, status=101, headers=UPGRADE)
    async with conn:
        conn.writer.write(b"echo " + await conn.reader.readline())
    return Hijacked()


def test_working_middleware_stacked(hijack_server: Any) -> None:
    app = Starlette(
        routes=[Route("/echo", stacked_endpoint)],
        middleware=[
            Middleware(ProxyHeadersMiddleware, trusted_hosts="127.0.0.1"),
            Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1"]),
            Middleware(CORSMiddleware, allow_origins=["*"]),
            Middleware(SessionMiddleware, secret_key="test"),
        ],
    )
    case = Case("stack", lambda app: app, "", ["Origin: http://example.com", "X-Forwarded-For: 203.0.113.7"])
    _, echoed = exchange(hijack_server(app), case, "/echo", None)
    ok = echoed == UPGRADED + b"echo hi\n"
    OUTCOMES["stack"] = (
        "works" if ok else "BROKEN",
        "the `101` head and the echo byte for byte" if ok else repr(echoed),
    )
    assert ok, echoed
