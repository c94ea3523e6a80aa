"""The app behind the proxy configurations of this folder: the examples, mounted on one server.

``/`` and ``/echo`` (examples/raw_tcp.py), ``/containers/{id}/attach`` (examples/docker_attach.py)
and ``CONNECT /_goRPC_`` (examples/go_rpc.py), so that one upstream, 127.0.0.1:8000, shows what
passes through each proxy (docs/deploy.md); ``/healthz`` answers a balancer's health check::

    uvicorn examples.deploy.app:app --http asgi_hijack:HijackProtocol --host 127.0.0.1 --port 8000
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from examples import docker_attach, go_rpc, raw_tcp


async def healthz(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[*raw_tcp.app.routes, *docker_attach.app.routes, *go_rpc.app.routes, Route("/healthz", healthz)])
