"""Frameworks: FastAPI and Litestar on a real uvicorn server, BaseHTTPMiddleware anywhere in a
stack, what hijack() accepts, and what the server logs when the peer resets a hijacked conversation.

Starlette's own routes and helpers are in ``test_starlette.py``.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import Depends, FastAPI, WebSocket
from fastapi import Request as FastAPIRequest
from litestar import Litestar, asgi, get
from litestar import Request as LitestarRequest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from websockets.sync.client import connect as websocket_connect

from asgi_hijack import HijackedConnection, MiddlewareBlockedError, hijack
from asgi_hijack import litestar as hijack_litestar
from asgi_hijack.starlette import Hijacked, HijackResponse
from asgi_hijack.testing import RunningServer
from tests.helpers import (
    PARSERS,
    ServerLog,
    connect,
    recv_all,
    recv_exactly,
    recv_until,
    reset,
    server_log,
    wait_until,
)

UPGRADE = [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")]
UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: tcp\r\nconnection: Upgrade\r\n\r\n"


async def say(conn: HijackedConnection, prefix: str) -> None:
    """Answer the client's first line with ``prefix``, then close."""
    async with conn:
        conn.writer.write(prefix.encode() + b" " + await conn.reader.readline())


def exchange(server: RunningServer, path: str, line: bytes = b"hi\n") -> bytes:
    """A GET with ``line`` right behind the head (pending bytes); everything until the server closes."""
    with connect(server) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode() + line)
        return recv_all(sock)


# -- FastAPI -----------------------------------------------------------------------------------

closed_sessions: list[str] = []


def greeting() -> str:
    return "depends"


async def session() -> AsyncIterator[str]:
    yield "yield"
    closed_sessions.append("closed")


fastapi_app = FastAPI()


@fastapi_app.get("/endpoint", response_model=None)
async def fastapi_endpoint(request: FastAPIRequest) -> Response:
    await say(await hijack(request, status=101, headers=UPGRADE), "endpoint")
    return Hijacked()


@fastapi_app.get("/depends", response_model=None)
async def fastapi_depends(request: FastAPIRequest, word: str = Depends(greeting)) -> Response:
    await say(await hijack(request, status=101, headers=UPGRADE), word)
    return Hijacked()


@fastapi_app.get("/yield", response_model=None)
async def fastapi_yield(request: FastAPIRequest, word: str = Depends(session)) -> Response:
    await say(await hijack(request, status=101, headers=UPGRADE), word)
    return Hijacked()


@fastapi_app.get("/response", response_model=None)
async def fastapi_response() -> Response:
    async def talk(conn: HijackedConnection) -> None:
        conn.writer.write(b"response " + await conn.reader.readline())

    return HijackResponse(talk, status=101, headers=UPGRADE)


@fastapi_app.websocket("/ws")
async def fastapi_websocket(websocket: WebSocket) -> None:
    await websocket.accept()
    async for text in websocket.iter_text():
        await websocket.send_text(f"ws {text}")


@pytest.mark.parametrize(
    ("path", "word"), [("/endpoint", "endpoint"), ("/depends", "depends"), ("/response", "response")]
)
def test_fastapi_hijacks(hijack_server: Any, path: str, word: str) -> None:
    assert exchange(hijack_server(fastapi_app), path) == UPGRADED + f"{word} hi\n".encode()


def test_fastapi_yield_dependency_closes_after_the_hijack(hijack_server: Any) -> None:
    closed_sessions.clear()
    assert exchange(hijack_server(fastapi_app), "/yield") == UPGRADED + b"yield hi\n"
    assert wait_until(lambda: closed_sessions == ["closed"])


def test_fastapi_websocket_route_next_to_a_hijacking_route(hijack_server: Any) -> None:
    server = hijack_server(fastapi_app)
    with websocket_connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=5) as websocket:
        websocket.send("one")
        assert websocket.recv(timeout=5) == "ws one"
        assert exchange(server, "/endpoint") == UPGRADED + b"endpoint hi\n"
        websocket.send("two")
        assert websocket.recv(timeout=5) == "ws two"


# -- BaseHTTPMiddleware anywhere in the stack: MiddlewareBlockedError, and the app's fallback ----


async def hijack_or_426(request: Request) -> Response:
    try:
        conn = await hijack(request, status=101, headers=UPGRADE)
    except MiddlewareBlockedError as exc:
        return PlainTextResponse(str(exc), status_code=426)
    await say(conn, "hijacked")
    return Hijacked()


async def passthrough(request: Request, call_next: RequestResponseEndpoint) -> Response:
    return await call_next(request)


class TimingMiddleware(BaseHTTPMiddleware):
    """A BaseHTTPMiddleware subclass, as users write them."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        response = await call_next(request)
        response.headers["x-timing"] = "1"
        return response


class ForwardingMiddleware:
    """Pure ASGI middleware that wraps send in a closure and forwards every message."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def forward(message: Message) -> None:
            await send(message)

        await self.app(scope, receive, forward)


def fastapi_with_http_middleware() -> ASGIApp:
    app = FastAPI()
    app.middleware("http")(passthrough)
    app.get("/upgrade", response_model=None)(hijack_or_426)
    return app


def fastapi_with_middleware_further_out() -> ASGIApp:
    app = FastAPI()
    app.get("/upgrade", response_model=None)(hijack_or_426)
    app.add_middleware(ForwardingMiddleware)
    app.add_middleware(CORSMiddleware, allow_origins=["*"])
    app.add_middleware(TimingMiddleware)  # the outermost user middleware
    return app


def starlette_with_a_subclass_around_a_mount() -> ASGIApp:
    return Starlette(
        routes=[Mount("/", routes=[Route("/upgrade", hijack_or_426)])],
        middleware=[Middleware(TimingMiddleware), Middleware(ForwardingMiddleware)],
    )


@pytest.mark.parametrize(
    "make_app",
    [fastapi_with_http_middleware, fastapi_with_middleware_further_out, starlette_with_a_subclass_around_a_mount],
)
def test_base_http_middleware_anywhere_gets_the_fallback_to_the_client(
    hijack_server: Any, make_app: Callable[[], ASGIApp]
) -> None:
    answer = exchange(hijack_server(make_app()), "/upgrade")
    assert answer.startswith(b"HTTP/1.1 426 Upgrade Required\r\n"), answer[:300]
    assert b"cannot pass through Starlette's BaseHTTPMiddleware" in answer


def test_without_base_http_middleware_the_same_stack_hijacks(hijack_server: Any) -> None:
    app = FastAPI(middleware=[Middleware(CORSMiddleware, allow_origins=["*"]), Middleware(ForwardingMiddleware)])
    app.get("/upgrade", response_model=None)(hijack_or_426)
    assert exchange(hijack_server(app), "/upgrade") == UPGRADED + b"hijacked hi\n"


# -- Litestar ----------------------------------------------------------------------------------


@get("/request")
async def litestar_request(request: LitestarRequest[Any, Any, Any]) -> hijack_litestar.Hijacked:
    await say(await hijack(request, status=101, headers=UPGRADE), "litestar")
    return hijack_litestar.Hijacked()


@get("/forgot")
async def litestar_forgot() -> hijack_litestar.Hijacked:
    return hijack_litestar.Hijacked()


@asgi("/asgi", copy_scope=True)
async def litestar_asgi(scope: Scope, receive: Receive, send: Send) -> None:
    await say(await hijack(scope, receive, send, status=101, headers=UPGRADE), "asgi")


litestar_app = Litestar([litestar_request, litestar_forgot, litestar_asgi])


def test_litestar_request_hijacks_and_returns_quietly(hijack_server: Any) -> None:
    server = hijack_server(litestar_app, log_level="info", access_log=False)
    with server_log(logging.NOTSET, ["uvicorn.error", "litestar", "asyncio"]) as log:
        assert exchange(server, "/request") == UPGRADED + b"litestar hi\n"
        assert exchange(server, "/asgi") == UPGRADED + b"asgi hi\n"
    assert log.describe() == []


def test_litestar_hijacked_without_a_hijack_is_a_server_error(hijack_server: Any) -> None:
    with connect(hijack_server(litestar_app)) as sock:
        sock.sendall(b"GET /forgot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


# -- what hijack() accepts -----------------------------------------------------------------------


async def _receive() -> Message:
    return {"type": "http.disconnect"}


async def _send(message: Message) -> None:
    raise AssertionError("hijack() wrote before checking its arguments")


@pytest.mark.parametrize(
    "arguments",
    [
        (object(),),
        ({"type": "http"},),
        ({"type": "http"}, _receive),
        ("GET /", _receive, _send),
        (SimpleNamespace(scope={"type": "http"}, receive=_receive),),
    ],
    ids=["object", "scope-alone", "no-send", "not-a-scope", "request-without-send"],
)
def test_unknown_arguments_say_what_to_pass(arguments: tuple[Any, ...]) -> None:
    with pytest.raises(TypeError, match=r"pass the ASGI \(scope, receive, send\).*Starlette or FastAPI Request"):
        asyncio.run(hijack(*arguments))


# -- quiet, true logs: a peer that resets a hijacked conversation --------------------------------

PEER_WENT_AWAY = "Hijacked connection ended: the peer went away (ConnectionResetError)."


async def flood(conn: HijackedConnection) -> None:
    """Wait for one byte, then write until the peer is gone (the error escapes to the framework)."""
    await conn.reader.readexactly(1)
    while True:
        conn.writer.write(b"y" * 65536)
        await conn.writer.drain()


async def starlette_response(request: Request) -> Response:
    return HijackResponse(flood, status=101, headers=UPGRADE)


async def starlette_plain(request: Request) -> Response:
    async with await hijack(request, status=101, headers=UPGRADE) as conn:
        await flood(conn)
    return Hijacked()


@get("/plain")
async def litestar_plain(request: LitestarRequest[Any, Any, Any]) -> hijack_litestar.Hijacked:
    async with await hijack(request, status=101, headers=UPGRADE) as conn:
        await flood(conn)
    return hijack_litestar.Hijacked()


def flooding_fastapi() -> ASGIApp:
    app = FastAPI()
    app.get("/response", response_model=None)(starlette_response)
    app.get("/plain", response_model=None)(starlette_plain)
    return app


LOG_CASES: list[tuple[str, Callable[[], Any], str]] = [
    ("starlette-HijackResponse", lambda: Starlette(routes=[Route("/response", starlette_response)]), "/response"),
    ("starlette-hijack", lambda: Starlette(routes=[Route("/plain", starlette_plain)]), "/plain"),
    ("fastapi-HijackResponse", flooding_fastapi, "/response"),
    ("fastapi-hijack", flooding_fastapi, "/plain"),
    ("litestar-hijack", lambda: Litestar([litestar_plain]), "/plain"),
]


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize(("make_app", "path"), [case[1:] for case in LOG_CASES], ids=[case[0] for case in LOG_CASES])
def test_a_peer_reset_is_one_info_line(hijack_server: Any, make_app: Callable[[], Any], path: str, parser: str) -> None:
    server = hijack_server(make_app(), parser, log_level="info", access_log=False)
    with server_log(logging.NOTSET, ["uvicorn.error", "litestar", "asyncio"]) as log:
        sock = connect(server)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert recv_until(sock, b"\r\n\r\n") == UPGRADED
        sock.sendall(b"!")
        assert recv_exactly(sock, 1) == b"y"  # the handler is writing
        reset(sock)
        settle(server, log)
    assert [(r.logger, r.message, r.exc_type) for r in log.records] == [("uvicorn.error", PEER_WENT_AWAY, None)]


@pytest.mark.parametrize(("make_app", "path"), [case[1:] for case in LOG_CASES], ids=[case[0] for case in LOG_CASES])
def test_a_peer_that_goes_away_is_one_info_line(hijack_server: Any, make_app: Callable[[], Any], path: str) -> None:
    server = hijack_server(make_app(), log_level="info", access_log=False)
    with server_log(logging.NOTSET, ["uvicorn.error", "litestar", "asyncio"]) as log:
        with connect(server) as sock:
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert recv_until(sock, b"\r\n\r\n") == UPGRADED
        settle(server, log)  # the handler's read ended without its byte
    message = "Hijacked connection ended: the peer went away (IncompleteReadError)."
    assert [(r.logger, r.message, r.exc_type) for r in log.records] == [("uvicorn.error", message, None)]


def settle(server: RunningServer, log: ServerLog) -> None:
    """Wait for the first record, then for one pass of the server's loop: what it logs with it is in too."""
    assert wait_until(lambda: bool(log.records))
    checked = threading.Event()
    server.loop.call_soon_threadsafe(checked.set)
    assert checked.wait(5)


async def failing(conn: HijackedConnection) -> None:
    await conn.reader.readexactly(1)
    raise ValueError("the handler's own bug")


@pytest.mark.parametrize("parser", PARSERS)
def test_an_app_error_after_the_hijack_is_logged_as_itself(hijack_server: Any, parser: str) -> None:
    """Starlette's error middleware then tries to send a 500 and gets AlreadyHijackedError: the log
    names the handler's error, and the connection is closed."""
    app = Starlette(routes=[Route("/fail", lambda request: HijackResponse(failing, status=101, headers=UPGRADE))])
    server = hijack_server(app, parser, log_level="info", access_log=False)
    with server_log(logging.NOTSET, ["uvicorn.error"]) as log:
        with connect(server) as sock:
            sock.sendall(b"GET /fail HTTP/1.1\r\nHost: x\r\n\r\n")
            assert recv_until(sock, b"\r\n\r\n") == UPGRADED
            sock.sendall(b"!")
            assert recv_all(sock) == b""
        settle(server, log)
    assert [(r.message.strip(), r.exc_type) for r in log.records] == [("Exception in ASGI application", ValueError)]
