"""hijack() through each Starlette middleware and uvicorn's ProxyHeadersMiddleware.

Each middleware wraps a plain ASGI app that hijacks with a ``101`` head and echoes a
line. Through a middleware, hijack must either work byte for byte, or fail with our
error, which the app then reports in an ordinary HTTP response. A second request
raises an exception after the hijack (while the connection is still open) to check
that no middleware writes an error page to the hijacked socket.

What the client saw is also the table in README.md (between the ``middleware-compat``
markers) and in ``docs/middleware-compat.md``. ``make middleware-table`` (``python -m
tests.test_middleware_compat --write``) writes both; the tests only read them, and
:func:`test_the_committed_table_is_up_to_date` fails when they differ from what the client saw.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable
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

from asgi_hijack import HijackError, hijack
from asgi_hijack.starlette import Hijacked
from asgi_hijack.testing import RunningServer, serve
from tests.helpers import ROOT, make_certificate, recv_all, recv_until

TABLE = ROOT / "docs" / "middleware-compat.md"
README = ROOT / "README.md"
START, END = "<!-- middleware-compat:start -->", "<!-- middleware-compat:end -->"
UPGRADE = [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")]
UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"
WORKS = "works"
BLOCKED = "fails with `MiddlewareBlockedError`"


async def hijacking_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/echo``: hijack, echo one line. ``/raise``: the same, then raise with the connection open
    (the server then closes it: docs/spec.md, Ownership)."""
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
    expected: str = WORKS


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
        expected=BLOCKED,
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
        expected=BLOCKED,
    ),
    Case(
        "ProxyHeadersMiddleware (uvicorn)",
        lambda app: ProxyHeadersMiddleware(app, trusted_hosts="127.0.0.1"),
        "`trusted_hosts='127.0.0.1'`, `X-Forwarded-For` and `X-Forwarded-Proto`",
        ["X-Forwarded-For: 203.0.113.7", "X-Forwarded-Proto: https"],
    ),
]

STACKED = "ProxyHeaders, TrustedHost, CORS and Session stacked in a Starlette app (with its ServerError and Exception)"
STACK = Case("stack", lambda app: app, "", ["Origin: http://example.com", "X-Forwarded-For: 203.0.113.7"])
OUTCOMES: dict[str, tuple[str, str]] = {}
"""Middleware name -> (result, what the client saw): each observed once per process."""


def exchange(server: RunningServer, case: Case, path: str, context: ssl.SSLContext | None) -> tuple[bytes, bytes]:
    """Send the request and a line; return (the first answer, the rest until EOF)."""
    raw = socket.create_connection(server.address, timeout=5)
    sock = context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
    with sock:
        head = "".join(f"{header}\r\n" for header in ["Host: 127.0.0.1", "Connection: close", *case.headers])
        sock.sendall(f"GET {path} HTTP/1.1\r\n{head}\r\nhi\n".encode())
        first = recv_until(sock, b"echo hi\n") if path == "/raise" else b""
        return first, recv_all(sock)


def observe(server: RunningServer, case: Case, context: ssl.SSLContext | None) -> tuple[str, str]:
    """Run both requests; describe the outcome from the client's side only."""
    _, echoed = exchange(server, case, "/echo", context)
    if echoed.startswith(b"HTTP/1.1 500 ") and b"\r\n\r\n" in echoed:
        error = echoed.partition(b"\r\n\r\n")[2].decode()
        name, _, message = error.partition(": ")
        return f"fails with `{name}`", message.partition(". ")[0].replace("|", "\\|") + "."
    first, rest = exchange(server, case, "/raise", context)
    if echoed == UPGRADED + b"echo hi\n" and first + rest == UPGRADED + b"echo hi\n":
        return WORKS, "the `101` head and the echo byte for byte; nothing written after an exception"
    return "BROKEN", f"unexpected bytes: {(echoed, first + rest)!r}"[:300]


async def stacked_endpoint(request: Request) -> Response:
    conn = await hijack(request, status=101, headers=UPGRADE)
    async with conn:
        conn.writer.write(b"echo " + await conn.reader.readline())
    return Hijacked()


def observe_stack() -> tuple[str, str]:
    app = Starlette(
        routes=[Route("/echo", stacked_endpoint)],
        middleware=[
            Middleware(ProxyHeadersMiddleware, trusted_hosts="127.0.0.1"),
            Middleware(TrustedHostMiddleware, allowed_hosts=["127.0.0.1"]),
            Middleware(CORSMiddleware, allow_origins=["*"]),
            Middleware(SessionMiddleware, secret_key="test"),
        ],
    )
    with serve(app) as server:
        _, echoed = exchange(server, STACK, "/echo", None)
    if echoed == UPGRADED + b"echo hi\n":
        return WORKS, "the `101` head and the echo byte for byte"
    return "BROKEN", repr(echoed)


def outcome(case: Case, folder: Path) -> tuple[str, str]:
    """Serve the app behind ``case``'s middleware (``folder`` holds a certificate if needed); what the client saw."""
    if case.name not in OUTCOMES:
        if case is STACK:
            OUTCOMES[case.name] = observe_stack()
        else:
            config: dict[str, Any] = {}
            context = None
            if case.tls:
                key, cert = make_certificate(folder)
                config = {"ssl_keyfile": str(key), "ssl_certfile": str(cert)}
                context = ssl.create_default_context(cafile=str(cert))
            with serve(case.wrap(hijacking_app), **config) as server:
                OUTCOMES[case.name] = observe(server, case, context)
    return OUTCOMES[case.name]


def render_table(folder: Path) -> str:
    """The table of what the client saw through every middleware (observed as needed)."""
    lines = [
        "<!-- Written by `make middleware-table` from what tests/test_middleware_compat.py saw; do not edit. -->",
        "| Middleware | hijack() through it | Tested with | What the client saw |",
        "| --- | --- | --- | --- |",
    ]
    for case in CASES:
        result, seen = outcome(case, folder)
        lines.append(f"| {case.name} | {result} | {case.tested_with} | {seen} |")
    result, seen = outcome(STACK, folder)
    lines.append(f"| {STACKED} | {result} | `hijack(request)` in a route, a request with `Origin` | {seen} |")
    return "\n".join(lines) + "\n"


def committed_tables() -> tuple[str, str]:
    """The table as README.md (between the markers) and docs/middleware-compat.md hold it."""
    readme = README.read_text()
    return readme.partition(START + "\n")[2].partition(END)[0], TABLE.read_text() if TABLE.exists() else ""


def write_tables(table: str) -> None:
    readme = README.read_text()
    if START not in readme or END not in readme:
        raise SystemExit(f"README.md has no {START} ... {END} markers: put them where the table belongs")
    head, _, rest = readme.partition(START)
    README.write_text(head + START + "\n" + table + END + rest.partition(END)[2])
    TABLE.write_text(table)


@pytest.mark.parametrize("case", CASES, ids=[case.name.split()[0] for case in CASES])
def test_middleware(case: Case, tmp_path: Path) -> None:
    result = outcome(case, tmp_path)
    assert result[0] == case.expected, result


def test_working_middleware_stacked(tmp_path: Path) -> None:
    result = outcome(STACK, tmp_path)
    assert result[0] == WORKS, result


def test_the_committed_table_is_up_to_date(tmp_path: Path) -> None:
    table = render_table(tmp_path)
    assert committed_tables() == (table, table), (
        "README.md's middleware table or docs/middleware-compat.md differs from what the client saw: "
        "run `make middleware-table` and commit the result"
    )


def main(argv: list[str] | None = None) -> int:
    """Print the table (``--write``: rewrite README.md's and docs/middleware-compat.md). When a middleware did
    not behave as the tests expect, write nothing and exit 1."""
    parser = argparse.ArgumentParser(prog="python -m tests.test_middleware_compat", description=main.__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite README.md's table and docs/middleware-compat.md")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        table = render_table(Path(folder))
    unexpected = [case.name for case in [*CASES, STACK] if OUTCOMES[case.name][0] != case.expected]
    if unexpected:
        print(table, file=sys.stderr)
        print(
            f"Not written: unexpected results for {', '.join(unexpected)} (see the table above). Fix the "
            "regression, or change the case's `expected` in tests/test_middleware_compat.py first.",
            file=sys.stderr,
        )
        return 1
    if args.write:
        write_tables(table)
        print(f"wrote the table to {README} and {TABLE}")
    else:
        print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
