"""The ASGI app the reliability runs serve: hijack-and-echo routes and a plain route.

``/echo``: hijack with a ``101`` head, then echo every byte (the pending buffer first)
until the client half-closes, then close. ``/echo?graceful``: the same, but when the
server begins a graceful shutdown the owner stops reading, flushes what it has echoed
and closes (owners that ignore the notice are aborted after ``--timeout-graceful-shutdown``).
``/plain``: ``200 ok``, to check that the server still serves.
"""

from __future__ import annotations

import asyncio
from typing import Any

from asgi_hijack import HijackedConnection, hijack

UPGRADE_HEADERS = [(b"upgrade", b"echo"), (b"connection", b"Upgrade")]


async def echo(conn: HijackedConnection, graceful: bool) -> None:
    """Echo until EOF; with ``graceful``, stop at the server's shutdown notice."""
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


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    path = scope["path"]
    if path == "/echo":
        conn = await hijack(scope, receive, send, status=101, headers=UPGRADE_HEADERS)
        await echo(conn, graceful=b"graceful" in scope["query_string"])
        return
    body = b"ok" if path == "/plain" else b"not found"
    status = 200 if path == "/plain" else 404
    await send({"type": "http.response.start", "status": status, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
