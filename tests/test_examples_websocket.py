"""examples/websocket_by_hand.py: RFC 6455 over a hijacked connection, against real clients.

The ``websockets`` asyncio client and Node's ``ws`` client each check text, binary,
fragmented messages, pings both ways, permessage-deflate and a clean close. On SIGTERM
the server closes with 1012, as uvicorn's own WebSockets do.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError

from asgi_hijack.testing import RunningServer
from examples.websocket_by_hand import app
from tests.helpers import PARSERS
from tests.test_examples_raw_tcp import ExampleProcess, uvicorn_example

NODE_DIR = Path(__file__).resolve().parent / "node"
TIMEOUT = 10.0


def ws_url(server: RunningServer) -> str:
    return f"ws://127.0.0.1:{server.port}/ws"


async def websockets_session(url: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}
    async with connect(url) as ws:
        seen["extensions"] = [type(extension).__name__ for extension in ws.protocol.extensions]
        await ws.send("héllo")
        seen["text"] = await ws.recv()
        await ws.send(b"\x00\x01\xff")
        seen["binary"] = await ws.recv()
        await ws.send(["ab", "cd", "ef"])  # a fragmented message: three frames, then an empty final one
        seen["fragments"] = [fragment async for fragment in ws.recv_streaming()]
        pong = await ws.ping(b"client ping")
        await pong  # the server's pong, sent by the sans-I/O protocol
        await ws.send("ping")  # the server pings us; our pong reaches it
        seen["server_ping"] = [await ws.recv(), await ws.recv()]
        await ws.close(1000, "done")
    seen["close"] = (ws.close_code, ws.close_reason)
    return seen


@pytest.mark.parametrize("parser", PARSERS)
def test_websockets_client(hijack_server: Any, parser: str) -> None:
    server = hijack_server(app, parser, ws="none")
    seen = asyncio.run(asyncio.wait_for(websockets_session(ws_url(server)), TIMEOUT))
    assert seen == {
        "extensions": ["PerMessageDeflate"],
        "text": "héllo",
        "binary": b"\x00\x01\xff",
        # Echoed frame by frame; with permessage-deflate, wsproto sends the compressed text at the last frame.
        "fragments": ["", "", "", "abcdef"],
        "server_ping": ["ping", "pong received"],
        "close": (1000, "done"),
    }


def node_ws_installed() -> Path:
    """Node with the ``ws`` package from tests/node (``npm ci`` there if it is missing)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    assert node and npm, "Node.js and npm are needed for the ws client test (apt-get install nodejs npm)"
    if not (NODE_DIR / "node_modules" / "ws").is_dir():
        subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=300)
    return Path(node)


def test_node_ws_client(hijack_server: Any) -> None:
    node = node_ws_installed()
    server = hijack_server(app, ws="none")
    result = subprocess.run(
        [node, "ws_client.mjs", ws_url(server)], cwd=NODE_DIR, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {
        "extensions": "permessage-deflate",
        "text": {"data": "héllo", "isBinary": False},
        "binary": {"data": [0, 1, 2, 255], "isBinary": True},
        "fragmented": {"data": "abcdef", "isBinary": False},
        "pong": "client ping",
        "serverPing": ["server ping", "ping", "pong received"],
        "close": {"code": 1000, "reason": "done"},
    }


def test_not_a_websocket_handshake_gets_a_plain_http_answer(hijack_server: Any) -> None:
    server = hijack_server(app, ws="none")
    response = httpx.get(f"http://127.0.0.1:{server.port}/ws", timeout=TIMEOUT)
    assert response.status_code == 426 and response.headers["upgrade"] == "websocket"
    assert "You need a WebSocket client" in response.text


def test_without_ws_none_the_client_is_told_how_to_run_it(hijack_server: Any) -> None:
    async def session(url: str) -> ConnectionClosedError:
        async with connect(url) as ws:
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
        return closed.value

    server = hijack_server(app)  # uvicorn's own WebSocket support takes the upgrade
    closed = asyncio.run(asyncio.wait_for(session(ws_url(server)), TIMEOUT))
    assert closed.rcvd is not None and closed.rcvd.code == 1011 and "--ws none" in closed.rcvd.reason


def test_sigterm_closes_with_1012_like_uvicorn() -> None:
    async def session(server: ExampleProcess) -> ConnectionClosedError:
        host, port = server.address
        async with connect(f"ws://{host}:{port}/ws") as ws:
            await ws.send("hi")
            assert await ws.recv() == "hi"
            server.sigterm()
            with pytest.raises(ConnectionClosedError) as closed:
                await ws.recv()
        return closed.value

    with ExampleProcess(uvicorn_example("examples.websocket_by_hand:app", "--ws", "none")) as server:
        closed = asyncio.run(asyncio.wait_for(session(server), TIMEOUT))
        server.assert_exits()
    assert closed.rcvd is not None and (closed.rcvd.code, closed.rcvd.reason) == (1012, "server shutting down")
    assert closed.rcvd_then_sent  # the client answered the close: a clean closing handshake
