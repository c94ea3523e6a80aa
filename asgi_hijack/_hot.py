"""The per-request path of the core: the fast ``data_received``, the connection state and the app's ``send``.

Plain typed Python with the same behaviour either way: the build compiles this one module to a C
extension with Cython when it can (``_hot.pxd`` declares its C types; ``asgi_hijack.compiled`` says
whether it did). Without a compiler, or with ``ASGI_HIJACK_NO_EXTENSIONS=1`` at build or at run
time, it runs as Python.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from types import MethodType
from typing import TYPE_CHECKING, Any

from . import adapter
from .api import EXTENSION
from .lifecycle import CONNECTION_EXTENSION, ConnectionInfo, ConnState, ConnStateHook, peer_credentials

if TYPE_CHECKING:
    import asyncio

    from .core import HijackServerMixin
    from .framing import Framer

__all__ = ["Connection", "data_received", "send_or_hijack"]

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

_logger = logging.getLogger("uvicorn.error")


def data_received(self: HijackServerMixin, data: bytes) -> None:
    """``HijackServerMixin.data_received``: a chunk that is exactly one request head goes straight to the parser."""
    conn = self._hj
    if not conn.busy:
        cycle = self.cycle
        if cycle is None or (cycle.response_complete and not cycle.more_body):
            _, end, rest = data.partition(b"\n\r\n")  # cheaper than bytes.find (whose arguments are parsed)
            if (
                end
                and not rest  # one head, nothing after it
                and (conn.strict_lf or 10 not in data.replace(b"\r\n", b""))  # no bare LF (10; h11 takes them)
                and data[0] != 67  # "C": CONNECT takes the slow path
            ):
                timer = conn.timer
                if timer is not None:  # the connection's first head, which came in time
                    timer.cancel()
                    conn.timer = None
                try:
                    conn.stock_data_received(self, data)
                except UnicodeDecodeError:  # zttp decodes the target as ASCII unguarded
                    self._hj_reject(400, "Invalid HTTP request received.")
                    return
                if conn.upgrade:
                    self._hj_tunnel(self.cycle)
                elif self.cycle is cycle and self.transport.get_protocol() is not self:  # type: ignore[comparison-overlap]
                    self._hj_handed_to_websocket(b"")
                return
        self._hj_enter_slow_path()
    self._hj_process(data)


class Connection:
    """Per-connection state of the core, and the app entry point of the connection.

    Everything lives in this one object behind one attribute (``_hj``), which keeps uvicorn's
    protocol instances within CPython's key-sharing dict limit (a larger instance dict
    costs memory and speed). Also the server side of the connection's identity: its state
    hooks, transitions and ``http.connection`` view.
    """

    __slots__ = (
        "app",
        "busy",
        "extension",
        "framer",
        "hooks",
        "info",
        "stock_data_received",
        "strict_lf",
        "timer",
        "upgrade",
    )

    def __init__(
        self,
        hooks: tuple[ConnStateHook, ...],
        app: Any,
        strict_lf: bool,
        framer: Framer,
        stock_data_received: Callable[[Any, bytes], None],
    ) -> None:
        self.hooks = hooks
        self.info = ConnectionInfo()
        self.extension: dict[str, Any] = {}
        """The ``http.connection`` extension: one view per connection, ``request_index`` set per request."""
        self.app = app
        self.busy = False  # off the fast path: the framer is up to date
        self.framer = framer
        self.timer: asyncio.TimerHandle | None = None  # the head timeout, while a head is awaited
        self.upgrade = False  # the parser reported a non-WebSocket upgrade
        self.strict_lf = strict_lf  # the parser rejects bare LF (see HijackServerMixin._hj_strict_lf)
        self.stock_data_received = stock_data_received  # the parser protocol's data_received (a function)

    def opened(self, transport: Any, local: Any) -> None:
        """The connection is made; ``local`` is uvicorn's ``server`` address (a port only on TCP)."""
        info = self.info
        if local is None or local[1] is None:  # maybe a unix socket (TCP needs no look at the socket's family)
            info.peer_credentials = peer_credentials(transport.get_extra_info("socket"))
        info._transport = transport
        info.proxy = transport.get_extra_info("proxy")
        self.extension = {
            "id": info.id,
            "request_index": 0,
            "peer_credentials": info.peer_credentials,
            "state": info.state,
            "proxy": info.proxy,
        }
        self.set(ConnState.NEW)

    def set(self, state: ConnState) -> None:
        """Move to ``state`` and run the hooks (a hook that raises is logged, not fatal)."""
        info = self.info
        if info._conn_state is ConnState.HIJACKED or info._conn_state is ConnState.CLOSED:
            return
        info._conn_state = state
        for hook in self.hooks:
            try:
                hook(info, state)
            except Exception:
                _logger.exception("connection state hook %r failed", hook)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> Awaitable[None]:
        """The app as uvicorn calls it: advertise the extensions, give it a ``send`` that can hijack.

        The connection is the protocol's ``app`` (no bound method to keep per connection).
        Returns the app's coroutine (no extra frame per request); uvicorn's own sends (its
        500 page) do not go through the wrapper. ``http.connection`` is the connection's one
        view, updated here: requests on a connection never overlap. The wrapper is a bound
        method, not a new closure per request (a function and two cells less to make).
        """
        ext: dict[str, Any] = {}
        info = self.info
        index = info.request_index = info._started
        info._started = index + 1
        view = self.extension
        view["request_index"] = index
        scope["extensions"] = {EXTENSION: ext, CONNECTION_EXTENSION: view}
        if self.hooks:
            self.set(ConnState.ACTIVE)
            cycle = adapter.cycle_of(send)
            # The protocol (no reference kept: it may be hijacked) reports when the response completes.
            on_response = getattr(adapter.handled_by(cycle), "_hj_on_response", None)
            if on_response is not None:
                cycle.on_response = on_response
        result: Awaitable[None] = self.app(scope, receive, MethodType(send_or_hijack, (send, ext)))
        return result


def send_or_hijack(request: tuple[Send, dict[str, Any]], message: Message) -> Awaitable[None]:
    """The app's ``send``, bound to uvicorn's ``send`` and the request's ``http.hijack`` extension."""
    send, ext = request
    if ext:
        return _special_send(send, ext, message)
    kind = message["type"]
    if kind == "http.response.body":  # the most frequent message: checked first
        return send(message)
    if kind == EXTENSION:
        return _special_send(send, ext, message)
    if message.get("status") == 101:
        # A 101 sent without hijacking switches protocols with nobody to own the
        # connection: close it after the response, never parse what follows as HTTP.
        adapter.cycle_of(send).keep_alive = False
    return send(message)


def _special_send(send: Send, ext: dict[str, Any], message: Message) -> Awaitable[None]:
    """A hijack, or a message after one: the rare path, in :mod:`asgi_hijack.core` (which imports this module)."""
    from .core import special_send

    return special_send(send, ext, message)
