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
from .lifecycle import (
    CONNECTION_EXTENSION,
    STATE_HOOKS_KEY,
    ConnectionInfo,
    ConnState,
    next_connection_id,
    peer_credentials,
    registered_hooks,
)

if TYPE_CHECKING:
    import asyncio

    from .core import HijackServerMixin
    from .framing import Framer

__all__ = [
    "PREFACE",
    "Connection",
    "Deadlines",
    "KeepAlive",
    "KeepAliveLoop",
    "data_received",
    "forget_request",
    "head_came",
    "head_deadlines",
    "keep_alive_loop",
    "on_response_complete",
    "send_or_hijack",
    "sniff",
    "wait_for_head",
]

Message = dict[str, Any]
Send = Callable[[Message], Awaitable[None]]

_logger = logging.getLogger("uvicorn.error")
_NEW, _ACTIVE, _HIJACKED, _CLOSED = ConnState.NEW, ConnState.ACTIVE, ConnState.HIJACKED, ConnState.CLOSED
"""(An enum member read from its class costs as much as a dict made: these are read once.)"""
_HEADS, _KEEP_ALIVE, _KEEP_ALIVE_LOOP = "_asgi_hijack_heads", "_asgi_hijack_keep_alive", "_asgi_hijack_keep_alive_loop"
"""Attributes of uvicorn's ``ServerState``: the server's head and keep-alive :class:`Deadlines`, and its
:class:`KeepAliveLoop`."""
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""The first bytes of an HTTP/2 connection (RFC 9113, section 3.4)."""
_RESOLUTION = 0.001
"""Seconds by which a timer may fire early (event loops round to milliseconds)."""


def data_received(self: HijackServerMixin, data: bytes) -> None:
    """``HijackServerMixin.data_received``: a chunk that is exactly one request head goes straight to the parser."""
    conn = self._hj
    if conn.sniff is not None and sniff(self, conn, data):  # HTTP/2 or HTTP/1.1? (ZttpHijackProtocol, cleartext)
        return
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
                if conn.timer is not None:  # the connection's first head, which came in time
                    head_came(self, conn)
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


def sniff(self: HijackServerMixin, conn: Connection, data: bytes) -> bool:
    """A cleartext connection's first bytes, on a class that speaks HTTP/2 too: HTTP/2 or HTTP/1.1?

    Returns True if it took ``data``: a prefix of the HTTP/2 preface is held (``conn.sniff``)
    until the rest comes (the head timeout bounds the wait), the preface hands the connection
    to HTTP/2 (``self._hj_to_http2``), and held bytes go to HTTP/1.1 together with ``data``.
    False: ``data`` is the first of HTTP/1.1.
    """
    held = conn.sniff or b""
    conn.sniff = None
    if not held and data[0] != 80:  # "P", as the preface starts: the common case, decided at once
        return False
    seen = held + data
    if len(seen) < len(PREFACE) and PREFACE.startswith(seen):
        conn.sniff = seen
        return True
    if seen.startswith(PREFACE):
        self._hj_to_http2(self.transport, seen)
        return True
    if held:
        data_received(self, seen)
        return True
    return False


def on_response_complete(self: HijackServerMixin) -> None:
    """``HijackServerMixin.on_response_complete``: uvicorn's, then the finished request is let go.

    uvicorn's starts the keep-alive timeout: it runs with :class:`KeepAliveLoop` as the loop,
    so the timeout is an entry in the server's :class:`Deadlines`, not a timer per request.

    Once the response is complete and the request body all read, the connection needs nothing
    of the request: an app still running holds its own cycle, whose ``receive()`` now answers
    ``http.disconnect`` at once. So an idle keep-alive connection keeps no request cycle,
    scope or headers (about 2.5 KiB) until its next request, as a new connection.
    """
    cycle = self.cycle
    conn = self._hj
    stand_in = conn.keep_alive
    if stand_in is None:
        stand_in = conn.keep_alive = keep_alive_loop(self)
    loop = self.loop
    self.loop = stand_in  # type: ignore[assignment]  # its keep-alive timer joins the Deadlines
    try:
        conn.stock_on_response_complete(self)  # (no bound method made)
    finally:
        self.loop = loop
    if cycle is not None and not cycle.more_body:
        forget_request(self, cycle)


def forget_request(self: HijackServerMixin, cycle: Any) -> None:
    """Let go of ``cycle``, a request whose response is complete and whose body is all read."""
    if self.cycle is cycle:
        self.cycle = self.scope = self.headers = None


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
        "conn_state",
        "extension",
        "framer",
        "hooks",
        "info",
        "keep_alive",
        "sniff",
        "started",
        "stock_data_received",
        "stock_on_response_complete",
        "strict_lf",
        "timer",
        "upgrade",
        "upgrade_memo",
    )

    def __init__(self, protocol: HijackServerMixin, framer: Framer) -> None:
        class_hooks = protocol.conn_state_hooks
        app_state = protocol.app_state
        self.hooks = registered_hooks(class_hooks, app_state) if class_hooks or STATE_HOOKS_KEY in app_state else ()
        self.conn_state = _NEW
        self.info: ConnectionInfo | None = None
        """Made when first needed (:meth:`identity`): when the connection opens if there are hooks, else on a hijack."""
        self.extension: dict[str, Any] = {}
        """The ``http.connection`` extension: one view per connection, ``request_index`` set per request."""
        self.app = protocol.app
        self.busy = False  # off the fast path: the framer is up to date
        self.framer = framer
        self.timer: Deadlines | None = None  # the head timeouts this connection waits in, while it does
        self.keep_alive: KeepAliveLoop | None = None  # the server's, once a response completed
        self.upgrade = False  # the parser reported a non-WebSocket upgrade
        self.upgrade_memo: tuple[Any, bool] | None = None  # see HttpToolsHijackProtocol._should_upgrade
        self.sniff: bytes | None = None  # the first bytes so far, while they may be HTTP/2's preface (zttp)
        self.started = 0  # requests started (``info`` learns it when a hook runs or the state changes)
        self.strict_lf = protocol._hj_strict_lf  # the parser rejects bare LF (see HijackServerMixin._hj_strict_lf)
        # The parser protocol's data_received and on_response_complete (functions).
        cls = type(protocol)
        self.stock_data_received = cls._hj_stock_data_received
        self.stock_on_response_complete = cls._hj_stock_on_response_complete

    def opened(self, protocol: HijackServerMixin, transport: Any) -> None:
        """The connection is made: fill in its identity, and wait for the first head."""
        credentials = proxy = None
        local = protocol.server  # uvicorn's local address: a port only on TCP
        if local is None or local[1] is None:  # maybe a unix socket (TCP needs no look at the socket's family)
            credentials = peer_credentials(transport.get_extra_info("socket"))
        if protocol.proxy_protocol != "off":
            proxy = transport.get_extra_info("proxy")
        self.extension = {
            "id": next_connection_id(),
            "request_index": 0,
            "peer_credentials": credentials,
            "state": {},
            "proxy": proxy,
        }
        if self.hooks:  # (the state is NEW already)
            self.identity(transport)
            self.set(_NEW)
        wait_for_head(protocol, self)

    def identity(self, transport: Any) -> ConnectionInfo:
        """The connection's :class:`ConnectionInfo`, up to date: made on first use (``transport`` is the
        connection's), when it opens if there are hooks, else when it is hijacked."""
        info = self.info
        if info is None:
            view = self.extension
            info = self.info = ConnectionInfo(
                view["id"],
                peer_credentials=view["peer_credentials"],
                state=view["state"],
                proxy=view["proxy"],
                transport=transport,
            )
        info._conn_state = self.conn_state
        started = self.started
        if info._started != started:
            info._started = started
            info.request_index = started - 1
        return info

    def set(self, state: ConnState) -> None:
        """Move to ``state`` and run the hooks (a hook that raises is logged, not fatal)."""
        current = self.conn_state
        if current is _HIJACKED or current is _CLOSED:
            return
        self.conn_state = state
        if self.info is None:  # nobody has it: no hooks (they get it when the connection opens), no hijack
            return
        info = self.identity(None)
        for hook in self.hooks:
            try:
                hook(info, state)
            except Exception:
                _logger.exception("connection state hook %r failed", hook)

    def lost(self, protocol: Any) -> None:
        """The connection is closed (``protocol`` is its protocol)."""
        if self.busy:  # (the fast path's framer is shared: never closed)
            self.framer.close()
        head_came(protocol, self)
        self.set(_CLOSED)

    def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> Awaitable[None]:
        """The app as uvicorn calls it: advertise the extensions, give it a ``send`` that can hijack.

        The connection is the protocol's ``app`` (no bound method to keep per connection).
        Returns the app's coroutine (no extra frame per request); uvicorn's own sends (its
        500 page) do not go through the wrapper. ``http.connection`` is the connection's one
        view, updated here: requests on a connection never overlap. The wrapper is a bound
        method, not a new closure per request (a function and two cells less to make).
        """
        ext: dict[str, Any] = {}
        index = self.started
        self.started = index + 1
        view = self.extension
        view["request_index"] = index
        scope["extensions"] = {EXTENSION: ext, CONNECTION_EXTENSION: view}
        if self.hooks:
            self.set(_ACTIVE)
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
    global _special
    if _special is None:
        from .core import special_send

        _special = special_send
    return _special(send, ext, message)


_special: Callable[[Send, dict[str, Any], Message], Awaitable[None]] | None = None
"""``asgi_hijack.core.special_send``, once imported."""


class Deadlines:
    """Timeouts of one duration on one server: one timer for all of them, not one each.

    Entries (``key``) join in the order they start and all last ``timeout`` seconds, so their
    deadlines come in that order: the timer is set for the first and, when it fires, calls
    ``expire(key)`` for every entry that is due and is set again for the first that is not.
    An entry that leaves early (``discard``) does not move the timer.
    """

    __slots__ = ("expire", "handle", "loop", "timeout", "waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float, expire: Callable[[Any], object]) -> None:
        self.loop = loop
        self.timeout = timeout
        self.expire = expire
        self.waiting: dict[Any, float] = {}
        """Key -> deadline (loop time), in the order of the deadlines."""
        self.handle: asyncio.TimerHandle | None = None

    def add(self, key: Any) -> None:
        """``key``'s timeout starts now."""
        deadline = self.loop.time() + self.timeout
        self.waiting[key] = deadline
        if self.handle is None:
            self.handle = self.loop.call_at(deadline, self._expire)

    def discard(self, key: Any) -> None:
        """``key`` no longer times out (a head came, the connection closed, ...)."""
        self.waiting.pop(key, None)

    def _expire(self) -> None:
        self.handle = None
        due = []
        now = self.loop.time() + _RESOLUTION
        for key, deadline in self.waiting.items():
            if deadline > now:
                self.handle = self.loop.call_at(deadline, self._expire)
                break
            due.append(key)
        for key in due:  # all leave first: a timeout may close (and so discard) another
            del self.waiting[key]
        for key in due:
            try:
                self.expire(key)
            except Exception:
                _logger.exception("timeout of %r failed", key)


def _head_timed_out(protocol: Any) -> None:
    protocol._hj_head_timed_out()


def _call(callback: Callable[[], object]) -> None:
    callback()


def _deadlines(protocol: Any, name: str, timeout: float, expire: Callable[[Any], object]) -> Deadlines:
    """The :class:`Deadlines` of ``protocol``'s server (uvicorn's ``ServerState``) called ``name``, for ``timeout``."""
    state = protocol.server_state
    found: Deadlines | None = getattr(state, name, None)
    if found is None or found.timeout != timeout or found.loop is not protocol.loop:
        found = Deadlines(protocol.loop, timeout, expire)
        setattr(state, name, found)
    return found


def head_deadlines(protocol: Any) -> Deadlines:
    """The head timeouts of ``protocol``'s server, for its ``head_timeout``: they call ``_hj_head_timed_out()``."""
    return _deadlines(protocol, _HEADS, protocol.head_timeout, _head_timed_out)


class KeepAliveLoop:
    """Stands in for the event loop while uvicorn's ``on_response_complete`` runs: the keep-alive
    timer it starts joins the server's :class:`Deadlines` (a dict entry, not a timer per request).

    Anything else it is asked for is the loop's own.
    """

    __slots__ = ("deadlines", "loop")

    def __init__(self, loop: asyncio.AbstractEventLoop, deadlines: Deadlines) -> None:
        self.loop = loop
        self.deadlines = deadlines

    def call_later(self, delay: float, callback: Callable[..., object], *args: Any) -> Any:
        """The keep-alive timeout (``delay`` is the server's): a :class:`KeepAlive`; anything else: the loop's."""
        if args or delay != self.deadlines.timeout:
            return self.loop.call_later(delay, callback, *args)
        self.deadlines.add(callback)
        return KeepAlive(self.deadlines, callback)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


class KeepAlive:
    """A keep-alive timeout in the server's :class:`Deadlines`: what uvicorn holds as its timer."""

    __slots__ = ("callback", "deadlines")

    def __init__(self, deadlines: Deadlines, callback: Callable[..., object]) -> None:
        self.deadlines = deadlines
        self.callback = callback

    def cancel(self) -> None:
        """The connection is busy again, or closed: the timeout does not fire."""
        self.deadlines.discard(self.callback)


def keep_alive_loop(protocol: Any) -> KeepAliveLoop:
    """The :class:`KeepAliveLoop` of ``protocol``'s server, for its ``timeout_keep_alive``."""
    deadlines = _deadlines(protocol, _KEEP_ALIVE, protocol.timeout_keep_alive, _call)
    stand_in: KeepAliveLoop | None = getattr(protocol.server_state, _KEEP_ALIVE_LOOP, None)
    if stand_in is None or stand_in.deadlines is not deadlines:
        stand_in = KeepAliveLoop(protocol.loop, deadlines)
        setattr(protocol.server_state, _KEEP_ALIVE_LOOP, stand_in)
    return stand_in


def wait_for_head(protocol: Any, conn: Connection) -> None:
    """Start the head timeout of ``protocol`` (whose state is ``conn``), unless it runs already."""
    if conn.timer is None:
        heads = conn.timer = head_deadlines(protocol)
        heads.add(protocol)


def head_came(protocol: Any, conn: Connection) -> None:
    """Stop the head timeout of ``protocol`` (whose state is ``conn``), if it runs: its head came, or it closed."""
    timer = conn.timer
    if timer is not None:
        timer.discard(protocol)
        conn.timer = None
