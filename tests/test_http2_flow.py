"""HTTP/2 flow control on ``ZttpHijackProtocol``: bounded response buffers, and a stream that does
not read its body never stalls its siblings.

Real servers on 127.0.0.1; real clients: Node's built-in ``http2`` client with default settings,
and the ``h2`` package for the exact frames.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from h2.errors import ErrorCodes
from hyperframe.frame import DataFrame, GoAwayFrame

from asgi_hijack.testing import RunningServer, serve
from asgi_hijack.zttp_auto import ZttpHijackProtocol
from asgi_hijack.zttp_h2 import ZttpH2HijackProtocol
from bench.apps import DOWNLOAD_BLOCK
from tests.helpers import H2Client, ServerProcess, requires_zttp, wait_until

pytestmark = requires_zttp

NODE_CLIENT = Path(__file__).parent / "node" / "h2_client.mjs"
CHUNK = 64 * 1024
DEFAULT_WINDOW = 65535  # the initial window of an HTTP/2 client that sets none


class FlowApp:
    """``/download?n=N``: N chunks of :data:`CHUNK` bytes, counting the ``send()`` calls that returned.
    ``/upload``: read the whole body, answer its length and SHA-256. ``/stall``: read nothing until
    ``release`` is set, then report what ``receive()`` returns. Anything else: ``ok``."""

    def __init__(self) -> None:
        self.returned = 0
        self.stalled: list[dict[str, Any]] = []
        self.release: asyncio.Event | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, query = scope["path"], scope["query_string"].decode()
        if path == "/download":
            count = int(query.split("=")[1])
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for left in range(count - 1, -1, -1):
                await send({"type": "http.response.body", "body": bytes(CHUNK), "more_body": left > 0})
                self.returned += 1
            return
        if path == "/stall":
            self.release = self.release or asyncio.Event()
            await self.release.wait()
            self.stalled.append(await receive())
            return
        body = b""
        if path == "/upload":
            more = True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            body = b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body or b"ok"})

    def unstall(self, server: RunningServer) -> None:
        if self.release is not None:
            server.loop.call_soon_threadsafe(self.release.set)


@pytest.fixture
def flow() -> Iterator[tuple[FlowApp, RunningServer]]:
    app = FlowApp()
    with serve(app, "zttp") as server:
        try:
            yield app, server
        finally:
            app.unstall(server)


def test_send_waits_for_the_window_of_a_client_that_does_not_read(flow: tuple[FlowApp, RunningServer]) -> None:
    app, server = flow
    client = H2Client(server.address, ack=False)
    stream_id = client.request("GET", "/download?n=64")  # 4 MiB
    client.wait(lambda event: len(client.body(stream_id)) >= DEFAULT_WINDOW)
    time.sleep(0.5)  # the app would send everything now without back-pressure
    parked = app.returned * CHUNK - DEFAULT_WINDOW
    assert 0 < app.returned < 64
    assert parked <= ZttpH2HijackProtocol.parked_bytes + CHUNK, f"{app.returned} sends returned without window"
    # The window opens: everything arrives, in order, and the app completes.
    client.ack = True
    client.conn.acknowledge_received_data(len(client.body(stream_id)), stream_id)
    client.flush()
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == bytes(64 * CHUNK)
    assert app.returned == 64
    client.close()


def test_a_reset_wakes_a_send_waiting_for_window(flow: tuple[FlowApp, RunningServer]) -> None:
    app, server = flow
    client = H2Client(server.address, ack=False)
    stream_id = client.request("GET", "/download?n=64")
    client.wait(lambda event: len(client.body(stream_id)) >= DEFAULT_WINDOW)
    client.conn.reset_stream(stream_id, ErrorCodes.CANCEL)
    client.conn.acknowledge_received_data(len(client.body(stream_id)), stream_id)  # the connection window
    client.flush()
    client.ack = True
    sibling = client.request("GET", "/")  # the connection still serves
    client.wait(client.ended(sibling))
    assert client.body(sibling) == b"ok"
    deadline = time.monotonic() + 10
    while app.returned < 64 and time.monotonic() < deadline:  # sends after the reset return at once
        time.sleep(0.01)
    assert app.returned == 64
    client.close()


class Patient(ZttpHijackProtocol):
    """A server wrapper's subclass: its HTTP/2 streams may park 4 chunks before ``send()`` waits."""

    h2_protocol = type("PatientH2", (ZttpH2HijackProtocol,), {"parked_bytes": 4 * CHUNK})


def test_shutdown_sends_the_bytes_parked_for_window_before_closing() -> None:
    app = FlowApp()
    with serve(app, Patient) as server:
        client = H2Client(server.address, ack=False)
        stream_id = client.request("GET", "/download?n=4")  # the app completes; 3 chunks wait for window
        client.wait(lambda event: len(client.body(stream_id)) >= DEFAULT_WINDOW)
        assert wait_until(lambda: app.returned == 4)
        stopping = threading.Thread(target=server.stop)
        stopping.start()
        time.sleep(0.5)  # the server is shutting down: it must not close yet
        client.conn.increment_flow_control_window(1 << 20)
        client.conn.increment_flow_control_window(1 << 20, stream_id)
        client.flush()
        frames = client.raw_frames(lambda frames: False)  # to the server's close
        stopping.join()
    data = [f for f in frames if isinstance(f, DataFrame) and f.stream_id == stream_id]
    assert len(client.body(stream_id)) + sum(len(f.data) for f in data) == 4 * CHUNK
    assert "END_STREAM" in data[-1].flags
    assert isinstance(frames[-1], GoAwayFrame)


def rss(pid: int) -> int:
    """Resident set size of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_server_memory_stays_flat_while_the_client_does_not_read() -> None:
    with ServerProcess("zttp", app="tests.apps:download_app") as server:
        client = H2Client(("127.0.0.1", server.port), ack=False)
        before = rss(server.pid)
        stream_id = client.request("GET", "/?mib=256")
        client.wait(lambda event: len(client.body(stream_id)) >= DEFAULT_WINDOW)
        time.sleep(1.0)  # without back-pressure the app parks all 256 MiB in zttp by now
        grown = rss(server.pid) - before
        client.close()
    assert grown < 16 * 1024 * 1024, f"the server grew by {grown / 2**20:.1f} MiB for a client that reads nothing"


def node_get(url: str, timeout: float = 120.0) -> dict[str, Any]:
    done = subprocess.run(["node", str(NODE_CLIENT), "get", url], capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr
    report: dict[str, Any] = json.loads(done.stdout)
    return report


def test_node_downloads_64_mib_with_default_settings() -> None:
    mib = 64
    with ServerProcess("zttp", app="tests.apps:download_app") as server:
        report = node_get(f"http://127.0.0.1:{server.port}/?mib={mib}")
        assert not server.problems()
    assert report["status"] == 200
    assert report["bytes"] == mib * len(DOWNLOAD_BLOCK)
    assert report["sha256"] == hashlib.sha256(DOWNLOAD_BLOCK * mib).hexdigest()


def test_an_upload_read_by_its_app_arrives_whole(flow: tuple[FlowApp, RunningServer]) -> None:
    _, server = flow
    client = H2Client(server.address)
    body = bytes(range(256)) * (32 * 1024)  # 8 MiB, many times the stream buffer
    stream_id = client.request("POST", "/upload", end_stream=False)
    client.send(stream_id, body, end_stream=True)
    client.wait(client.ended(stream_id))
    assert client.body(stream_id) == b"%d %s" % (len(body), hashlib.sha256(body).hexdigest().encode())
    client.close()


def test_a_stream_that_does_not_read_does_not_stall_its_siblings(flow: tuple[FlowApp, RunningServer]) -> None:
    app, server = flow
    client = H2Client(server.address)
    stalled = client.request("POST", "/stall", end_stream=False)
    client.send(stalled, bytes(256 * 1024))  # past uvicorn's 64 KiB, where it paused the connection
    latencies = []
    for _ in range(5):
        started = time.perf_counter()
        sibling = client.request("GET", "/")
        client.wait(client.ended(sibling))
        latencies.append(time.perf_counter() - started)
        assert client.body(sibling) == b"ok"
    assert statistics.median(latencies) < 0.050, f"sibling GETs took {latencies} s"
    # Past its bound the stalled stream is reset with ENHANCE_YOUR_CALM, and its app told so.
    client.send(stalled, bytes(ZttpH2HijackProtocol.stream_buffer))
    reset = client.wait(client.ended(stalled))
    assert type(reset).__name__ == "StreamReset"
    assert reset.error_code == ErrorCodes.ENHANCE_YOUR_CALM
    app.unstall(server)
    deadline = time.monotonic() + 10
    while not app.stalled and time.monotonic() < deadline:
        time.sleep(0.01)
    assert app.stalled == [{"type": "http.disconnect"}]
    client.close()
