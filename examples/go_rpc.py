"""RPC over CONNECT: serve Go's ``net/rpc/jsonrpc`` clients the way a Go server does.

Go's ``rpc.DialHTTP`` sends ``CONNECT /_goRPC_ HTTP/1.0``, expects
``HTTP/1.0 200 Connected to Go RPC``, then speaks RPC on the same connection; Go's
server (``rpc.HandleHTTP``) hijacks the connection for it. This app does the same and
serves the JSON-RPC codec (``net/rpc/jsonrpc``): a stream of
``{"method": "Arith.Multiply", "params": [{"A": 7, "B": 8}], "id": 0}`` requests,
each answered with ``{"id": 0, "result": 56, "error": null}``.

Run, then call it from Go (``examples/go/rpc_client.go``, standard library only)::

    python examples/go_rpc.py [PORT]        # 127.0.0.1:8000
    uvicorn examples.go_rpc:app --http asgi_hijack:HijackProtocol
    cd examples/go && go run . -addr 127.0.0.1:8000

Any other method on ``/_goRPC_`` is answered ``405``, as Go's server does. When the
server shuts down (SIGTERM, Ctrl-C), each connection answers the calls it has read, then
closes: the client gets the reply to its call in flight, then EOF
(``rpc.ErrShutdown`` for later calls).
"""

from __future__ import annotations

import codecs
import json
import sys
from collections.abc import Callable
from typing import Any

import anyio
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from asgi_hijack import HijackedConnection
from asgi_hijack.starlette import HijackResponse

RPC_PATH = "/_goRPC_"  # rpc.DefaultRPCPath
CONNECTED = "Connected to Go RPC"  # the status Go's client checks
MAX_REQUEST = 1 << 20


class RPCError(Exception):
    """An error returned to the caller (Go's client raises it as ``rpc.ServerError``)."""


def multiply(args: dict[str, int]) -> int:
    return args["A"] * args["B"]


def divide(args: dict[str, int]) -> dict[str, int]:
    if args["B"] == 0:
        raise RPCError("divide by zero")
    quo, rem = divmod(args["A"], args["B"])
    return {"Quo": quo, "Rem": rem}


SERVICES: dict[str, Callable[[Any], Any]] = {"Arith.Multiply": multiply, "Arith.Divide": divide}


def call(request: Any) -> dict[str, Any]:
    """Answer one JSON-RPC request with Go's error wording."""
    if not isinstance(request, dict):
        request = {}
    method, params = str(request.get("method", "")), request.get("params")
    answer: dict[str, Any] = {"id": request.get("id")}
    service = method.partition(".")[0]
    try:
        if not isinstance(params, list) or len(params) != 1:
            raise RPCError("rpc: request params must be a one-element array")
        if method not in SERVICES:
            known = any(name.startswith(service + ".") for name in SERVICES)
            raise RPCError(f"rpc: can't find {'method' if known else 'service'} {method}")
        answer.update(result=SERVICES[method](params[0]), error=None)
    except RPCError as exc:
        answer.update(result=None, error=str(exc))
    except (KeyError, TypeError, ValueError) as exc:
        answer.update(result=None, error=f"rpc: bad params for {method}: {exc!r}")
    return answer


async def serve_jsonrpc(conn: HijackedConnection) -> None:
    """Read concatenated JSON requests, write one JSON answer line per request.

    On the server's shutdown notice it stops reading: every request already read has
    been answered (a call runs without waiting), and the answers are sent before the
    connection closes.
    """
    decoder, text = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    buffer = ""
    with anyio.CancelScope() as reading:
        conn.on_shutdown(reading.cancel)
        while chunk := await conn.reader.read(65536):
            try:
                buffer += text.decode(chunk)
            except UnicodeDecodeError:
                return  # not JSON-RPC: drop the connection
            while buffer := buffer.lstrip():
                try:
                    request, end = decoder.raw_decode(buffer)
                except json.JSONDecodeError:
                    if len(buffer) > MAX_REQUEST:
                        return  # not JSON-RPC: drop the connection
                    break  # incomplete: read more
                buffer = buffer[end:]
                conn.writer.write(json.dumps(call(request)).encode() + b"\n")
            await conn.writer.drain()


async def rpc_endpoint(request: Request) -> Response:
    return HijackResponse(serve_jsonrpc, status=200, reason=CONNECTED)


app = Starlette(routes=[Route(RPC_PATH, rpc_endpoint, methods=["CONNECT"])])

if __name__ == "__main__":
    from asgi_hijack import HijackProtocol  # a class: uvicorn before 0.36 takes no import string

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    uvicorn.run(app, host="127.0.0.1", port=port, http=HijackProtocol)
