"""Raw TCP after HTTP: Go's ``http.Hijacker`` example, as a Starlette app.

Run (from the repository root, on 127.0.0.1:8000)::

    python examples/raw_tcp.py            # or: python -m examples.raw_tcp [PORT]
    uvicorn examples.raw_tcp:app --http asgi_hijack:HijackProtocol

Try it: ``printf 'GET / HTTP/1.1\\r\\nHost: x\\r\\n\\r\\nhi\\n' | nc 127.0.0.1 8000``, or type the
request line, a Host line, an empty line, then a line for the app::

    $ nc 127.0.0.1 8000
    GET / HTTP/1.1
    Host: localhost

    Now we're speaking raw TCP. Say hi: hi
    You said: "hi\\n"
    Bye.

``/`` and ``/hijack`` are Go's example: after the request, the connection speaks a line protocol,
with no HTTP status line or headers. ``/echo`` shows :class:`~asgi_hijack.starlette.HijackResponse`:
a ``101`` head, then each line echoed back until ``quit``; when the server shuts down
(SIGTERM, Ctrl-C), the echo says ``The server is shutting down. Bye.`` and closes. Bytes a
client sends right after the request head (even in the same packet) reach the app as the
first line.
"""

from __future__ import annotations

import json
import sys

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_hijack import HijackedConnection, hijack
from asgi_hijack.starlette import Hijacked, HijackResponse

GREETING = b"Now we're speaking raw TCP. Say hi: "
ECHO_HEAD = [(b"Upgrade", b"line-echo"), (b"Connection", b"Upgrade")]
SHUTDOWN_GOODBYE = b"The server is shutting down. Bye.\n"


async def say_hi(request: Request) -> Response:
    """Go's example: greet, read one line, answer with it quoted, close."""
    conn = await hijack(request)
    async with conn:
        conn.writer.write(GREETING)
        line = await conn.reader.readline()
        conn.writer.write(b"You said: %s\nBye.\n" % json.dumps(line.decode("utf-8", "replace")).encode())
    return Hijacked()


async def echo_lines(conn: HijackedConnection) -> None:
    """Echo each line back until ``quit``, the end of input, or the server's shutdown notice."""
    with anyio.CancelScope() as reading:
        conn.on_shutdown(reading.cancel)  # stop waiting for the next line when the server shuts down
        while line := await conn.reader.readline():
            if line.strip() == b"quit":
                conn.writer.write(b"bye\n")
                break
            conn.writer.write(line)
            await conn.writer.drain()
    if reading.cancelled_caught:
        conn.writer.write(SHUTDOWN_GOODBYE)


async def echo(request: Request) -> Response:
    return HijackResponse(echo_lines, status=101, headers=ECHO_HEAD)


app = Starlette(routes=[Route("/", say_hi), Route("/hijack", say_hi), Route("/echo", echo)])

if __name__ == "__main__":
    from asgi_hijack import HijackProtocol  # a class: uvicorn before 0.36 takes no import string

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port, http=HijackProtocol)
