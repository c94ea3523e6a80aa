"""ASGI apps the tests (and the soak run) serve on real servers. Results the client cannot see go to RESULTS."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

from asgi_hijack import HijackedConnection, HijackError, hijack

RESULTS: dict[str, Any] = {}
"""Keyed by the request's ``id`` query parameter; read by the tests (same process)."""

KEEP: list[HijackedConnection] = []
UPGRADE_HEADERS = [(b"upgrade", b"echo"), (b"connection", b"Upgrade")]


async def respond(send: Any, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def echo(conn: HijackedConnection, graceful: bool = False) -> None:
    """Echo everything (pending buffer, then socket) until EOF, then close; with ``graceful``, stop
    at the server's shutdown notice."""
    task = asyncio.current_task()
    if graceful and task is not None:
        # Cancelling a task parked in read() or drain() loses no byte: read() takes nothing
        # from the buffer until it returns, and written bytes stay in the transport's buffer,
        # which close() flushes.
        conn.on_shutdown(task.cancel)
    async with conn:
        try:
            while data := await conn.reader.read(65536):
                conn.writer.write(data)
                await conn.writer.drain()
        except ConnectionError:
            pass  # the client went away: nothing to echo to
        except asyncio.CancelledError:
            if not conn.shutdown_requested.is_set():
                raise


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What the load runs (``tests.helpers.echo_load``, ``python -m soak``) and ``ServerProcess`` serve.

    ``/echo``: hijack with a ``101`` head, then :func:`echo` until the client half-closes.
    ``/echo?graceful``: the same, but when the server begins a graceful shutdown the owner
    stops reading, flushes what it has echoed and closes (owners that ignore the notice are
    aborted after ``--timeout-graceful-shutdown``). ``/plain``: ``200 ok``, to check that the
    server still serves.
    """
    if scope["type"] != "http":
        return
    if scope["path"] == "/echo":
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        await echo(conn, graceful=b"graceful" in scope["query_string"])
    elif scope["path"] == "/plain":
        await respond(send, 200, b"ok")
    else:
        await respond(send, 404, b"not found")


async def pid_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """What ``tests/test_workers.py`` serves from several processes: every request is hijacked with a
    ``101`` head, and the process writes its pid on a line. ``/until-shutdown`` then writes ``bye``
    when the server begins a graceful shutdown and closes; any other path is :func:`echo`."""
    if scope["type"] != "http":
        return
    conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
    conn.writer.write(b"%d\n" % os.getpid())
    if scope["path"] != "/until-shutdown":
        await echo(conn)
        return
    async with conn:
        await conn.shutdown_requested.wait()
        await conn.send(b"bye")


def _head(query: dict[str, str]) -> dict[str, Any]:
    if "status" not in query:
        return {}
    return {
        "status": int(query["status"]),
        "headers": [(b"upgrade", b"tcp"), (b"connection", b"Upgrade")] if query["status"] == "101" else [],
    }


async def read_body(receive: Any) -> bytes:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def probe_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    query = {k: v[-1] for k, v in parse_qs(scope["query_string"].decode()).items()}
    key = query.get("id", "")
    path = scope["path"]
    if path == "/plain":
        await respond(send, 200, b"ok")
    elif path == "/scope":
        info = {
            "extensions": sorted(scope.get("extensions", {})),
            "path": scope["path"],
            "raw_path": scope["raw_path"].decode("latin-1"),
            "method": scope["method"],
            "http_version": scope["http_version"],
            "query_string": scope["query_string"].decode(),
        }
        await respond(send, 200, json.dumps(info).encode())
    elif path == "/echo" or scope["method"] == "CONNECT":
        if "read" in query:
            RESULTS[key] = await read_body(receive)
        try:
            conn = await hijack(scope, receive, send, **_head(query))
        except HijackError as exc:
            RESULTS[key] = exc
            await respond(send, 409, str(exc).encode())
            return
        await echo(conn)
    elif path == "/pending":
        conn = await hijack(scope, receive, send)
        async with conn:
            conn.writer.write(b"%d:%s" % (len(conn.pending), conn.pending))
    elif path == "/partial-read":
        message = await receive()
        RESULTS[key] = message
        await echo(await hijack(scope, receive, send))
    elif path == "/twice":
        conn = await hijack(scope, receive, send)
        try:
            await hijack(scope, receive, send)
        except HijackError as exc:
            RESULTS[key] = exc
        await echo(conn)
    elif path == "/after-start":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        try:
            await hijack(scope, receive, send)
        except HijackError as exc:
            RESULTS[key] = exc
        await send({"type": "http.response.body", "body": b"ok"})
    elif path == "/after-complete":
        await respond(send, 200, b"ok")
        try:
            await hijack(scope, receive, send)
        except HijackError as exc:
            RESULTS[key] = exc
    elif path == "/after-return":

        async def later() -> None:
            await asyncio.sleep(0.1)
            try:
                await hijack(scope, receive, send)
            except HijackError as exc:
                RESULTS[key] = exc

        RESULTS[key + "-task"] = asyncio.get_running_loop().create_task(later())
        await respond(send, 200, b"ok")
    elif path == "/send-after":
        conn = await hijack(scope, receive, send)
        try:
            await send({"type": "http.response.start", "status": 500, "headers": []})
        except HijackError as exc:
            RESULTS[key] = exc
        try:
            await send({"type": "http.response.body", "body": b"Internal Server Error"})
        except HijackError as exc:
            RESULTS[key + "-body"] = exc
        RESULTS[key + "-receive"] = await receive()
        await echo(conn)
    elif path == "/raise-after":
        conn = await hijack(scope, receive, send)
        conn.writer.write(b"bye")
        await conn.aclose()
        raise RuntimeError("the app fails after the hijack")
    elif path == "/raise-before-close":
        conn = await hijack(scope, receive, send)
        KEEP.append(conn)
        conn.writer.write(b"still here")
        raise RuntimeError("the app fails while the hijacked connection is open")
    elif path == "/keep-open":
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
        KEEP.append(conn)
        RESULTS[key] = conn
    elif path == "/until-shutdown":
        conn = await hijack(scope, receive, send, status=101, headers=[(b"upgrade", b"tcp")])
        async with conn:
            await conn.send(b"ready")
            await conn.shutdown_requested.wait()
            await conn.send(b"bye")
    elif path == "/disconnected":
        await asyncio.sleep(0.3)
        try:
            await hijack(scope, receive, send)
        except HijackError as exc:
            RESULTS[key] = exc
    else:
        await respond(send, 404, b"not found")
