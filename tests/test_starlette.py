"""Starlette: hijack from function endpoints, HTTPEndpoint, routes under Mount, and the helpers.

Every test runs the app on a real uvicorn server with the ``hijack_server`` fixture;
under Starlette's TestClient hijack() fails and says to use that fixture.
"""

from __future__ import annotations

import threading
import warnings
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.endpoints import HTTPEndpoint
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route

from asgi_hijack import HijackedConnection, HijackNotSupported, hijack
from asgi_hijack.starlette import Hijacked, HijackResponse
from tests.helpers import PARSERS, connect, recv_all, recv_until

UPGRADE = [(b"Upgrade", b"tcp"), (b"Connection", b"Upgrade")]
UPGRADED = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: tcp\r\nConnection: Upgrade\r\n\r\n"


async def greet(request: Request) -> Response:
    conn = await hijack(request)
    async with conn:
        conn.writer.write(f"{request.url.path} says: ".encode() + await conn.reader.readline())
    return Hijacked()


class GreetEndpoint(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        return await greet(request)


async def read_body_then_hijack(request: Request) -> Response:
    body = await request.body()
    conn = await hijack(request, status=101, headers=UPGRADE)
    async with conn:
        conn.writer.write(b"body=%s pending=%s" % (body, await conn.reader.read(5)))
    return Hijacked()


async def echo_line(conn: HijackedConnection) -> None:
    conn.writer.write(b"echo " + await conn.reader.readline())


background_done = threading.Event()


async def helper(request: Request) -> Response:
    return HijackResponse(echo_line, status=101, headers=UPGRADE, background=BackgroundTask(background_done.set))


async def forgot_to_hijack(request: Request) -> Response:
    return Hijacked()


app = Starlette(
    routes=[
        Route("/function", greet),
        Route("/endpoint", GreetEndpoint),
        Mount("/mounted", routes=[Route("/route", greet), Mount("/deeper", routes=[Route("/route", GreetEndpoint)])]),
        Route("/body", read_body_then_hijack, methods=["POST"]),
        Route("/helper", helper),
        Route("/forgot", forgot_to_hijack),
    ]
)


@pytest.mark.parametrize("path", ["/function", "/endpoint", "/mounted/route", "/mounted/deeper/route"])
@pytest.mark.parametrize("parser", PARSERS)
def test_hijack_request_from_endpoints(hijack_server: Any, parser: str, path: str) -> None:
    with connect(hijack_server(app, parser)) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\nhi\n".encode())
        assert recv_all(sock) == f"{path} says: hi\n".encode()


def test_hijack_after_reading_the_body(hijack_server: Any) -> None:
    with connect(hijack_server(app)) as sock:
        sock.sendall(b"POST /body HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nbodyafter")
        assert recv_all(sock) == UPGRADED + b"body=body pending=after"


def test_hijack_response_helper(hijack_server: Any) -> None:
    background_done.clear()
    with connect(hijack_server(app)) as sock:
        sock.sendall(b"GET /helper HTTP/1.1\r\nHost: x\r\n\r\n")
        assert recv_until(sock, b"\r\n\r\n") == UPGRADED  # flushed before the handler runs
        sock.sendall(b"one\n")
        assert recv_all(sock) == b"echo one\n"  # then the helper closed the connection
    assert background_done.wait(5)


def test_hijacked_without_a_hijack_is_a_server_error(hijack_server: Any) -> None:
    with connect(hijack_server(app)) as sock:
        sock.sendall(b"GET /forgot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert recv_all(sock).startswith(b"HTTP/1.1 500 Internal Server Error\r\n")


@pytest.mark.parametrize("path", ["/function", "/helper"])
def test_testclient_error_points_to_the_fixture(path: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Starlette 1.x deprecates TestClient over httpx
        from starlette.testclient import TestClient

    with pytest.raises(HijackNotSupported, match=r"TestClient.*hijack_server"):
        TestClient(app).get(path)
