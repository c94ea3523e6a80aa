"""Docker-style attach: stream a local process's stdin/stdout/stderr over a hijacked connection.

The Docker daemon answers ``POST /containers/{id}/attach?stream=1&stdin=1&stdout=1``
with ``Upgrade: tcp`` by ``101 UPGRADED`` and then streams the container's output over
the same connection, multiplexed in frames with an 8-byte header (stream 1 is stdout,
2 is stderr), while whatever the client writes goes to the container's stdin. This app
does the same for a few fixed local commands, so the Docker SDK for Python can attach
to them. Each attach starts a fresh process of the named "container".

Run (TCP on 127.0.0.1:8000, or a unix socket like the daemon's)::

    python examples/docker_attach.py [PORT]
    uvicorn examples.docker_attach:app --http asgi_hijack:HijackProtocol --uds /tmp/attach.sock

Try it::

    import docker, socket
    from docker.utils.socket import frames_iter
    api = docker.APIClient(base_url="tcp://127.0.0.1:8000", version="1.41")  # or unix:///tmp/attach.sock
    sock = api.attach_socket("cat", params={"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1})
    sock._sock.sendall(b"hello\\n")
    sock._sock.shutdown(socket.SHUT_WR)   # half-close: the process sees the end of its stdin
    print(list(frames_iter(sock, tty=False)))   # [(1, b'hello\\n'), ...]

When the client half-closes, the process's stdin is closed and its remaining output is
still sent; the connection closes when the process has exited and its output is sent.
When the server shuts down (SIGTERM, Ctrl-C), each attached process is stopped as
``docker stop`` does: SIGTERM to its process group, SIGKILL after :data:`STOP_TIMEOUT`
seconds. What it prints until it exits is still sent, then the connection closes. The
``service`` container shows it: it echoes lines, and says ``stopped`` on stderr when
it gets SIGTERM.

A client may read the ``101`` head in a buffer of its own: the Docker SDK does, and
loses any bytes that arrived together with the head. The server flushes the head
before the process starts, and these commands print only in answer to their input, so
no output can arrive before the client has read the head.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import struct
import sys

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from asgi_hijack import HijackedConnection
from asgi_hijack.starlette import HijackResponse

CONTAINERS: dict[str, list[str]] = {
    "cat": ["cat"],  # echoes stdin
    "wc": ["wc", "-c"],  # prints the byte count once stdin is closed
    "shout": ["sh", "-c", "tr a-z A-Z; echo 'stdin closed' >&2"],  # stdout and stderr
    "service": ["sh", "-c", "trap 'echo stopped >&2; exit' TERM; while read -r line; do echo \"$line\"; done"],
}
STDOUT, STDERR = 1, 2
RAW_STREAM = b"application/vnd.docker.raw-stream"
STOP_TIMEOUT = 5.0
"""Seconds a process has to exit after SIGTERM when the server shuts down (``docker stop -t``)."""


def flag(request: Request, name: str) -> bool:
    return request.query_params.get(name, "0").lower() in ("1", "true")


async def copy_in(conn: HijackedConnection, stdin: asyncio.StreamWriter) -> None:
    """Client to process stdin; the client's half-close closes stdin."""
    with contextlib.suppress(ConnectionError):
        while data := await conn.reader.read(65536):
            stdin.write(data)
            await stdin.drain()
    stdin.close()


async def copy_out(output: asyncio.StreamReader, stream: int, conn: HijackedConnection, send: bool) -> None:
    """Process output to the client, one frame per read (read and dropped if not attached)."""
    while data := await output.read(65536):
        if send:
            conn.writer.write(struct.pack(">BxxxL", stream, len(data)) + data)
            await conn.writer.drain()


def signal_process(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
    """Signal the process and its children (its process group), unless it has exited."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, sig)


def stop(process: asyncio.subprocess.Process) -> None:
    """Stop the process as ``docker stop`` does: SIGTERM now, SIGKILL after STOP_TIMEOUT."""
    signal_process(process, signal.SIGTERM)
    asyncio.get_running_loop().call_later(STOP_TIMEOUT, signal_process, process, signal.SIGKILL)


async def attach(request: Request) -> Response:
    command = CONTAINERS.get(request.path_params["id"])
    if command is None:
        return JSONResponse({"message": f"No such container: {request.path_params['id']}"}, 404)
    stdin, stdout, stderr = flag(request, "stdin"), flag(request, "stdout"), flag(request, "stderr")

    async def stream(conn: HijackedConnection) -> None:
        pipe = asyncio.subprocess.PIPE  # in a process group of its own, which stop() signals
        process = await asyncio.create_subprocess_exec(
            *command, stdin=pipe, stdout=pipe, stderr=pipe, start_new_session=True
        )
        assert process.stdin is not None and process.stdout is not None and process.stderr is not None
        conn.on_shutdown(lambda: stop(process))
        feeder = asyncio.create_task(copy_in(conn, process.stdin)) if stdin else None
        if not stdin:
            process.stdin.close()  # like `docker run` without -i: stdin is empty
        try:
            with contextlib.suppress(ConnectionError):  # the client went away: stop the process
                await asyncio.gather(
                    copy_out(process.stdout, STDOUT, conn, stdout), copy_out(process.stderr, STDERR, conn, stderr)
                )
                await process.wait()
        finally:
            if feeder is not None:
                feeder.cancel()
            if process.returncode is None:
                signal_process(process, signal.SIGKILL)
                await process.wait()

    if request.headers.get("upgrade", "").lower() == "tcp":
        head = [(b"Content-Type", RAW_STREAM), (b"Connection", b"Upgrade"), (b"Upgrade", b"tcp")]
        return HijackResponse(stream, status=101, reason="UPGRADED", headers=head)
    return HijackResponse(stream, status=200, headers=[(b"Content-Type", RAW_STREAM)])  # older clients


ATTACH = "/containers/{id}/attach"
app = Starlette(
    routes=[Route(ATTACH, attach, methods=["POST"]), Route("/v{version}" + ATTACH, attach, methods=["POST"])]
)

if __name__ == "__main__":
    from asgi_hijack import HijackProtocol  # a class: uvicorn before 0.36 takes no import string

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port, http=HijackProtocol)
