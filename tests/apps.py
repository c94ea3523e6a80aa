"""ASGI apps the tests (and the soak run) serve on real servers. Results the client cannot see go to RESULTS."""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any
from urllib.parse import parse_qs

import anyio

from asgi_hijack import HijackedConnection, HijackError, HijackNotSupported, hijack, tunnel, tunnel_supported

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


def _proxy_fields(proxy: Any) -> dict[str, Any] | None:
    if proxy is None:
        return None
    fields = ("version", "command", "source", "destination", "peer", "authority")
    return {name: getattr(proxy, name) for name in fields} | {
        "alpn": None if proxy.alpn is None else proxy.alpn.decode("latin-1")
    }


async def whoami_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A JSON report of who the server says the client is (the PROXY protocol tests).

    ``client`` (``scope["client"]``), ``proxy`` (the ``http.connection`` extension's header),
    ``pid`` and ``http_version``. ``/hijack``: hijack with a ``101`` head, write the report on a
    line with ``conn_client`` and ``info_client`` added, then :func:`echo` until the client
    half-closes.
    """
    if scope["type"] != "http":
        return
    connection = scope["extensions"].get("http.connection", {}) if "extensions" in scope else {}
    report = {
        "client": scope["client"],
        "proxy": _proxy_fields(connection.get("proxy")),
        "pid": os.getpid(),
        "http_version": scope["http_version"],
    }
    if scope["path"] != "/hijack":
        await respond(send, 200, json.dumps(report).encode())
        return
    conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
    report |= {
        "conn_client": conn.client,
        "info_client": conn.info and conn.info.client,
        "socket_peer": conn.socket.getpeername()[:2],  # the TCP peer: the balancer
    }
    conn.writer.write(json.dumps(report).encode() + b"\n")
    await echo(conn)


async def tunnel_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``tunnel()`` on HTTP/1.1 and HTTP/2 (``tests/test_tunnel*.py``). Each tunnel first says
    ``protocol=... version=...``; the path picks the rest (a CONNECT authority is ``/echo``):

    ``/echo``: read to EOF, answer ``LENGTH:REVERSED`` and half-close. ``/stream``: echo as bytes
    come, half-close at EOF. ``/deadline``: a read deadline passes, then a line is echoed.
    ``/shutdown``: ``bye`` at the shutdown notice. ``/close``: close at once. ``/stall``: never
    read. ``/record?id=``: read to the end, put the outcome in ``RESULTS``. Other requests
    (a GET without Upgrade) get ``400`` with the error; ``x-status`` sets the status.
    """
    if scope["type"] != "http":
        return
    status = dict(scope["headers"]).get(b"x-status")
    supported = tunnel_supported(scope)
    try:
        t = await tunnel(scope, receive, send, status=int(status) if status else None)
    except (HijackNotSupported, ValueError) as exc:
        await respond(send, 400, f"{type(exc).__name__} supported={supported}: {exc}".encode())
        return
    do = scope["path"] if scope["path"].startswith("/") else "/echo"
    async with t:
        await t.send(b"protocol=%s version=%s\n" % (str(t.protocol).encode(), t.http_version.encode()))
        if do == "/echo":  # the anyio face
            received = b""
            try:
                while True:
                    received += await t.receive()
            except anyio.EndOfStream:
                await t.send(b"%d:%s" % (len(received), received[::-1]))
                await t.send_eof()
                assert await t.reader.read() == b""
        elif do == "/stream":  # the asyncio face
            while data := await t.reader.read(65536):
                t.writer.write(data)
                await t.writer.drain()
            t.writer.write_eof()
            await t.wait_closed()
        elif do == "/deadline":  # the client sends nothing until told
            t.set_read_deadline(asyncio.get_running_loop().time() + 0.1)
            try:
                await t.reader.read(1)
            except TimeoutError as exc:
                t.set_read_deadline(None)
                await t.send(f"{exc}\n".encode())
                await t.send(b"now " + await t.reader.readline())
        elif do == "/shutdown":
            await t.send(b"waiting\n")
            RESULTS["shutdown-waiting"] = t.http_version
            await t.shutdown_requested.wait()
            await t.send(b"bye\n")
        elif do == "/stall":
            await t.wait_closed()
        elif do == "/record":
            key = parse_qs(scope["query_string"].decode())["id"][0]
            try:
                while True:
                    await t.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError) as exc:
                RESULTS[key] = exc


async def download_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/plain``: ``200 ok`` (for ``ServerProcess``); anything else: :func:`bench.apps.download` (``?mib=N``)."""
    from bench.apps import download

    if scope["type"] == "http" and scope["path"] == "/plain":
        return await respond(send, 200, b"ok")
    await download(scope, receive, send)
