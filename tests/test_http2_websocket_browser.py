"""A browser's WebSocket over HTTP/2 (RFC 8441): headless Chromium against ZttpHijackProtocol over TLS.

The page is loaded over HTTP/2 (ALPN ``h2``, self-signed certificate made here), so Chromium
opens ``new WebSocket('wss://…/ws')`` as an extended CONNECT on that connection. The page
echoes text and binary, outlives a few server pings (Chromium answers them, or the server
would close with 1011), fetches another resource, closes with 1000, and reports what it saw.
Chromium is driven over its DevTools protocol with the ``websockets`` client.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as cdp_connect

from asgi_hijack.testing import serve
from tests.helpers import make_certificate, requires_zttp, with_settings

pytestmark = requires_zttp
TIMEOUT = 30.0

PAGE = """<!doctype html><title>ws over h2</title><script>
window.result = (async () => {
  const ws = new WebSocket(`wss://${location.host}/ws`, ["chat"]);
  ws.binaryType = "arraybuffer";
  const inbox = [], waiting = [];
  const deliver = (item) => waiting.length ? waiting.shift()(item) : inbox.push(item);
  const next = () => inbox.length ? Promise.resolve(inbox.shift()) : new Promise((r) => waiting.push(r));
  ws.onmessage = (e) => deliver(e.data);
  const closed = new Promise((r) => { ws.onclose = (e) => r({code: e.code, clean: e.wasClean}); });
  await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
  const out = {protocol: ws.protocol, extensions: ws.extensions};
  ws.send("hello from chromium");
  out.text = await next();
  ws.send(new Uint8Array([0, 1, 2, 253, 254, 255]));
  out.binary = Array.from(new Uint8Array(await next()));
  await new Promise((r) => setTimeout(r, 1500));  // several server pings, each answered by Chromium
  ws.send("still open");
  out.after_pings = await next();
  out.fetched = await (await fetch("/plain")).text();
  ws.close(1000, "done");
  out.close = await closed;
  const hops = performance.getEntries().filter((e) => e.nextHopProtocol);
  out.hops = hops.map((e) => [new URL(e.name).pathname, e.nextHopProtocol]);
  return out;
})().catch((e) => ({error: String(e)}));
</script>"""


def make_app(seen: list[tuple[str, str, Any]]) -> Starlette:
    async def page(request: Request) -> HTMLResponse:
        seen.append(("http", request.url.path, request.scope["http_version"]))
        return HTMLResponse(PAGE)

    async def plain(request: Request) -> PlainTextResponse:
        seen.append(("http", request.url.path, request.scope["http_version"]))
        return PlainTextResponse(f"plain over HTTP/{request.scope['http_version']}")

    async def echo(websocket: WebSocket) -> None:
        seen.append(("websocket", websocket.url.scheme, websocket.scope["http_version"]))
        await websocket.accept(subprotocol="chat")
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    raise WebSocketDisconnect(message["code"])
                if message.get("text") is not None:
                    await websocket.send_text(message["text"])
                else:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect as exc:
            seen.append(("closed", "", exc.code))

    return Starlette(routes=[Route("/", page), Route("/plain", plain), WebSocketRoute("/ws", echo)])


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator[str]:
    """Headless Chromium with its DevTools protocol on a free port: yields its first page's endpoint."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        pytest.fail("Chromium is not installed: run `make system-deps` (it runs `apt-get install chromium`)")
    command = [binary, "--headless", "--ignore-certificate-errors", "--remote-debugging-port=0"]
    command += [f"--user-data-dir={profile}", "--no-first-run", "--disable-gpu", "--disable-extensions"]
    if os.geteuid() == 0:
        command.append("--no-sandbox")  # Chromium refuses to run as root with its sandbox
    process = subprocess.Popen([*command, "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + TIMEOUT
        while not port_file.exists() or not port_file.read_text().strip():
            assert process.poll() is None, process.stderr.read().decode() if process.stderr else ""
            assert time.monotonic() < deadline, "Chromium did not open its DevTools port"
            time.sleep(0.05)
        port = port_file.read_text().split()[0]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=TIMEOUT) as answer:
            pages = [target for target in json.load(answer) if target["type"] == "page"]
        yield pages[0]["webSocketDebuggerUrl"]
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        process.kill()  # a no-op once it has exited
        process.wait()


class DevTools:
    """The few DevTools protocol calls the test needs, over one WebSocket."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        self.connection.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            answer = json.loads(self.connection.recv(timeout=TIMEOUT))
            if answer.get("id") == self.next_id:
                assert "error" not in answer, answer
                result: dict[str, Any] = answer["result"]
                return result

    def evaluate(self, expression: str) -> Any:
        answer = self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        return answer["result"].get("value")


@pytest.mark.parametrize(("h2_websockets", "later"), [("on", "2"), ("http1", "1.1")])
def test_chromium_websocket_over_http2(tmp_path: Path, h2_websockets: str, later: str) -> None:
    """``on``: the WebSocket is a stream of the page's HTTP/2 connection, and so are later fetches.
    ``http1``: Chromium retries the WebSocket over HTTP/1.1 after the HTTP_1_1_REQUIRED reset, and
    then sends the origin's later requests over HTTP/1.1 too (what the option costs)."""
    key, cert = make_certificate(tmp_path)
    seen: list[tuple[str, str, Any]] = []
    app = make_app(seen)
    options = {"ssl_certfile": str(cert), "ssl_keyfile": str(key), "ws_ping_interval": 0.2, "ws_ping_timeout": 1.0}
    protocol = with_settings("zttp", h2_websockets=h2_websockets)
    with (
        serve(app, protocol, **options) as server,
        chromium(tmp_path / "profile") as endpoint,
        cdp_connect(endpoint, max_size=None, open_timeout=TIMEOUT) as connection,
    ):
        devtools = DevTools(connection)
        devtools.call("Page.navigate", url=f"https://127.0.0.1:{server.port}/")
        deadline = time.monotonic() + TIMEOUT
        while (result := devtools.evaluate("window.result")) is None:
            assert time.monotonic() < deadline, "the page never ran its script"
            time.sleep(0.1)
    assert "error" not in result, result
    assert result["protocol"] == "chat"
    assert result["extensions"].startswith("permessage-deflate")
    assert result["text"] == "hello from chromium"
    assert result["binary"] == [0, 1, 2, 253, 254, 255]
    assert result["after_pings"] == "still open"
    assert result["fetched"] == f"plain over HTTP/{later}"
    assert result["close"] == {"code": 1000, "clean": True}
    hops = dict(result["hops"])  # ALPN of the page, its fetch (and Chromium's favicon request)
    assert (hops["/"], hops["/plain"]) == ("h2", "h2" if later == "2" else "http/1.1"), hops
    assert ("websocket", "wss", later) in seen  # the HTTP version the WebSocket itself went over
    assert ("closed", "", 1000) in seen
    assert ("http", "/", "2") in seen
