"""Every use of a uvicorn internal, in one place: review this file when uvicorn changes.

asgi-hijack subclasses uvicorn's protocol classes and reaches into their private state.
Each private attribute or method it touches is declared below as a :class:`typing.Protocol`
member, with the uvicorn source it relies on (``h11_impl.py``, ``httptools_impl.py``,
``zttp_impl.py`` and ``zttp_h2_impl.py`` in ``uvicorn/protocols/http/``, and
``uvicorn/server.py``). The core is typed against these protocols, so mypy reports any
use that is not declared here. The functions below are the operations that change uvicorn's
state in ways its own code does not: releasing a hijacked request cycle, resetting an
HTTP/2 stream, finding the request cycle behind an ASGI ``send``.

Supported: uvicorn :data:`SUPPORTED_MIN` to :data:`SUPPORTED_MAX` (every minor release is
tested, see the README's compatibility table). Importing a protocol class on another
version raises one :class:`ImportError` that names the range.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Protocol

import uvicorn

from .errors import AlreadyHijackedError

__all__ = [
    "SUPPORTED_MAX",
    "SUPPORTED_MIN",
    "Cycle",
    "FlowControl",
    "H1Protocol",
    "ServerState",
    "check_version",
    "cycle_of",
    "hijacked_connections",
    "loop_factory",
    "release",
    "require_zttp",
    "version",
]

SUPPORTED_MIN = (0, 30)
"""Oldest supported uvicorn minor release."""
SUPPORTED_MAX = (0, 54)
"""Newest supported uvicorn minor release."""


def version(text: str | None = None) -> tuple[int, int]:
    """``(major, minor)`` of uvicorn's version string (the installed one by default)."""
    major, minor = (text or uvicorn.__version__).split(".")[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def check_version(text: str | None = None) -> None:
    """Raise :class:`ImportError` unless uvicorn's version is in the supported range."""
    found = version(text)
    if not SUPPORTED_MIN <= found <= SUPPORTED_MAX:
        low = "{}.{}".format(*SUPPORTED_MIN)
        high = "{}.{}".format(*SUPPORTED_MAX)
        raise ImportError(
            f"asgi-hijack supports uvicorn {low} to {high}, but uvicorn {text or uvicorn.__version__} is "
            f"installed: its protocol internals may differ. Install a supported release with "
            f"pip install 'uvicorn>={low},<{SUPPORTED_MAX[0]}.{SUPPORTED_MAX[1] + 1}'."
        )


def require_zttp() -> None:
    """Raise :class:`ImportError` unless this uvicorn has its zttp protocols and zttp is installed."""
    import importlib.util

    if importlib.util.find_spec("zttp") is None:
        raise ImportError("ZttpHijackProtocol needs the zttp package: pip install 'asgi-hijack[zttp]'")
    if importlib.util.find_spec("uvicorn.protocols.http.auto_zttp_impl") is None:
        raise ImportError(
            f"ZttpHijackProtocol needs a uvicorn with zttp HTTP/2 support (0.53 or later); uvicorn "
            f"{uvicorn.__version__} has none. Use HttpToolsHijackProtocol or H11HijackProtocol, "
            "or upgrade uvicorn."
        )


check_version()


class FlowControl(Protocol):
    """``uvicorn.protocols.http.flow_control.FlowControl`` (unchanged since 0.30)."""

    write_paused: bool  # read by RequestResponseCycle.send before each write

    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class MessageEvent(Protocol):
    """The ``asyncio.Event`` a cycle's ``receive()`` waits on (``message_event``)."""

    def set(self) -> None: ...
    def clear(self) -> None: ...
    async def wait(self) -> Any: ...


class Cycle(Protocol):
    """``RequestResponseCycle`` of ``h11_impl``, ``httptools_impl`` and ``zttp_impl`` (same fields).

    ``run_asgi`` (all three, 0.30 to 0.54): if the app raises, it logs "Exception in ASGI
    application" with ``logger`` and sends a 500 unless ``response_started``, else closes
    ``transport``; ``send`` returns at once and ``receive`` returns ``http.disconnect`` once
    ``disconnected`` is set. ``on_response`` is called when the response completes.
    """

    scope: MutableMapping[str, Any]
    transport: asyncio.Transport
    flow: FlowControl
    logger: logging.Logger
    message_event: MessageEvent
    on_response: Callable[[], None]
    body: bytes | bytearray  # request body received, not yet returned by receive() (which leaves b"")
    more_body: bool  # the request body has not ended
    disconnected: bool
    keep_alive: bool
    waiting_for_100_continue: bool
    response_started: bool
    response_complete: bool


class ServerState(Protocol):
    """``uvicorn.server.ServerState``: ``Server.shutdown`` calls ``shutdown()`` on every member of
    ``connections`` and, with no ``--timeout-graceful-shutdown``, waits until it is empty."""

    connections: set[Any]
    total_requests: int


class H1Protocol(Protocol):
    """What the core uses of ``H11Protocol``, ``HttpToolsProtocol`` and ``ZttpProtocol``.

    Besides these attributes the core overrides ``__init__``, ``data_received``, ``eof_received``,
    ``connection_made``, ``connection_lost``, ``on_response_complete`` and
    ``_unsupported_upgrade_warning`` (called by each parser class for an Upgrade that is not
    a WebSocket one), and reads ``transport.get_protocol()`` to see that uvicorn handed a
    connection to its WebSocket implementation. ``self.app`` is replaced per instance to enter
    the app through the core. Between requests (a response complete, its request body all
    read) the core sets ``cycle``, ``scope`` and ``headers`` to None, as before a first
    request: every parser class sets them anew for the next head, and reads them as None-able.
    While uvicorn's ``on_response_complete`` runs, ``loop`` is a stand-in whose ``call_later``
    for ``timeout_keep_alive`` joins the server's keep-alive deadlines (each parser class
    starts its keep-alive timer there, and nowhere else); all else is the loop's.
    """

    app: Any
    app_state: dict[str, Any]
    config: Any  # uvicorn.Config: timeout_graceful_shutdown
    loop: asyncio.AbstractEventLoop
    logger: logging.Logger
    access_log: bool
    transport: asyncio.Transport
    flow: FlowControl
    server_state: ServerState
    connections: set[Any]  # server_state.connections
    cycle: Cycle | None  # the current request; None before the first head and between requests
    scope: Any  # the current request's; None between requests
    headers: Any  # the current request head's pairs; None between requests

    def on_response_complete(self) -> None: ...  # counts the request, arms keep-alive, unpauses pipelining
    def _unset_keepalive_if_required(self) -> None: ...  # cancels the keep-alive timer


def loop_factory(config: Any) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop factory of a ``uvicorn.Config`` (``get_loop_factory``, uvicorn 0.36+).

    Before 0.36 uvicorn set a global event loop policy instead (``setup_event_loop``); the
    factory is derived from ``config.loop`` here, so that no global policy is touched.
    """
    get = getattr(config, "get_loop_factory", None)
    if get is not None:
        factory: Callable[[], asyncio.AbstractEventLoop] | None = get()
        return factory
    if config.loop == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def hijacked_connections(server_state: Any) -> set[Any]:
    """The hijacked connections open on this server, kept on uvicorn's ``ServerState`` (one per
    ``uvicorn.Server``, so one per process): a set of our own, under a private attribute."""
    live: set[Any] | None = getattr(server_state, "_asgi_hijack_hijacked", None)
    if live is None:
        live = server_state._asgi_hijack_hijacked = set()
    return live


def cycle_of(send: Callable[[Any], Awaitable[None]]) -> Cycle:
    """The request cycle behind uvicorn's ASGI ``send`` (a bound ``RequestResponseCycle.send``)."""
    cycle: Cycle = send.__self__  # type: ignore[attr-defined]
    return cycle


def handled_by(cycle: Cycle) -> Any:
    """The object whose method completes the cycle's response (the protocol, while it is live)."""
    return getattr(cycle.on_response, "__self__", None)


class _Detached:
    """Stands in for a hijacked cycle's flow control and message event (uvicorn's code on a
    ``disconnected`` cycle only reads ``write_paused`` and calls ``set``/``clear``/``wait``)."""

    write_paused = False

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass

    async def wait(self) -> bool:
        return True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


_DETACHED = _Detached()

_PEER_GONE = (ConnectionError, EOFError)


class _HijackedLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    """The logger of a hijacked cycle: a peer that went away is one INFO line, not a traceback."""

    def error(self, msg: object, *args: object, exc_info: Any = None, **kwargs: Any) -> None:
        if isinstance(exc_info, AlreadyHijackedError) and exc_info.__context__ is not None:
            # Error middleware tried to answer the app's real error over HTTP after the hijack:
            # report the real error, not the refused answer.
            exc_info = exc_info.__context__
        exc = exc_info if isinstance(exc_info, BaseException) else None
        seen: set[int] = set()
        while exc is not None and id(exc) not in seen:
            if isinstance(exc, _PEER_GONE):
                self.logger.info("Hijacked connection ended: the peer went away (%s).", type(exc).__name__)
                return
            seen.add(id(exc))
            exc = exc.__cause__ or exc.__context__
        self.logger.error(msg, *args, exc_info=exc_info, **kwargs)


def _noop() -> None:
    pass


_hijacked_logs: dict[logging.Logger, _HijackedLog] = {}
"""One adapter per logger (uvicorn's ``uvicorn.error``), shared by every hijacked cycle."""


def release(cycle: Cycle, protocol: Any) -> None:
    """Detach a hijacked request cycle and its protocol from the server, deterministically.

    The app's ``receive``/``send`` keep the cycle alive for as long as the app runs:
    ``disconnected`` makes uvicorn's code on it a no-op (``receive`` returns
    ``http.disconnect``; ``send`` writes nothing), and dropping its links lets the
    protocol, its parser and its flow control be freed. ``response_started`` makes
    ``run_asgi`` close the connection if the app raises (instead of a 500 that would be
    dropped): a hijacked connection never outlives an app that failed.

    The protocol gets no ``connection_lost``, where uvicorn's httptools class drops its
    ``parser`` (which holds the protocol's callbacks: a reference cycle). It is dropped
    here, so that reference counting frees the protocol and the garbage collector has
    no cycle to find per hijack.
    """
    cycle.disconnected = True
    cycle.response_started = True
    cycle.waiting_for_100_continue = False
    cycle.body = b""
    cycle.message_event.set()  # wake a receive() in progress: it returns http.disconnect
    cycle.message_event = _DETACHED
    cycle.on_response = _noop
    cycle.flow = _DETACHED
    logger = cycle.logger
    if isinstance(logger, logging.Logger):
        if logger not in _hijacked_logs:
            _hijacked_logs[logger] = _HijackedLog(logger, {})
        cycle.logger = _hijacked_logs[logger]  # type: ignore[assignment]
    if hasattr(cycle, "conn"):  # the h11 / zttp connection state machine
        cycle.conn = None
    if hasattr(protocol, "parser"):  # httptools_impl: HttpRequestParser(self)
        protocol.parser = None


# -- zttp's HTTP/2 protocol (uvicorn 0.51+: ``zttp_h2_impl.py``) ----------------------------
class H2Stream(Protocol):
    """A zttp HTTP/2 stream, as ``RequestResponseCycle.stream`` holds it."""

    stream_id: int

    def reset(self, error_code: Any) -> None: ...
    def send_response(self, status: int, headers: list[tuple[bytes, bytes]]) -> None: ...


class H2Cycle(Protocol):
    """``zttp_h2_impl.RequestResponseCycle``: ``stream`` and ``conn`` (the zttp connection, whose
    ``data_to_send()`` returns the frames to write) besides the HTTP/1.1 cycle's flags."""

    stream: H2Stream
    conn: Any
    scope: MutableMapping[str, Any]
    transport: asyncio.Transport
    logger: logging.Logger
    message_event: MessageEvent
    on_response: Callable[[int], None]  # the protocol's on_response_complete, then a no-op
    body: bytearray  # request body received, not yet returned by receive()
    more_body: bool
    disconnected: bool
    response_started: bool
    response_complete: bool


class H2Protocol(Protocol):
    """``zttp_h2_impl.ZttpH2Protocol``: ``cycles`` maps stream ids to cycles, ``handle_request``
    (overridden) makes the cycle of a ``zttp.Request`` event and starts its app.

    ``ZttpH2HijackProtocol`` also overrides ``events`` (the generator ``handle_events`` consumes:
    it takes DATA, END_STREAM and WINDOW_UPDATE there), ``data_received``, ``connection_lost``,
    ``shutdown`` and the private ``_close_connection`` (GOAWAY and close, called when the last
    cycle ends after a shutdown or the peer's GOAWAY, and by the keep-alive timer); and it calls
    ``flush`` (writes ``conn.data_to_send()``), ``on_response_complete(stream_id)`` and
    ``flow.drain()``. ``zttp_h2_impl.FORBIDDEN_HEADERS`` filters the headers of a tunnel's answer.
    """

    app: Any
    cycles: dict[int, H2Cycle]


def h2_cycles(protocol: Any) -> dict[int, H2Cycle]:
    """``ZttpH2Protocol.cycles``: the request cycles of the open streams, by stream id."""
    cycles: dict[int, H2Cycle] = protocol.cycles
    return cycles


def h2_cycle_of(send: Callable[[Any], Awaitable[None]]) -> H2Cycle | None:
    """The HTTP/2 request cycle behind uvicorn's ``send``, or None if it is not one."""
    from uvicorn.protocols.http.zttp_h2_impl import RequestResponseCycle

    cycle = getattr(send, "__self__", None)
    return cycle if isinstance(cycle, RequestResponseCycle) else None  # type: ignore[return-value]


def reset_stream(cycle: H2Cycle, error_code: Any) -> None:
    """Reset the cycle's stream with ``error_code``; uvicorn then neither answers nor logs it."""
    if not cycle.transport.is_closing():
        cycle.stream.reset(error_code)
        cycle.transport.write(cycle.conn.data_to_send())
    cycle.disconnected = True  # later sends are dropped


def make_tunnel(cycle: H2Cycle) -> None:
    """Turn an answered CONNECT cycle into a byte stream's: uvicorn's code leaves it alone.

    ``disconnected``: ``receive()`` returns ``http.disconnect`` and ``run_asgi`` neither
    answers nor resets when the app returns; ``response_started``: no 500 either. The
    protocol's ``on_response`` is not called when the app returns: the engine completes the
    request when the byte stream ends, so the connection stays busy (no keep-alive timeout,
    no close on shutdown) while the stream is open.
    """
    cycle.response_started = True
    cycle.disconnected = True
    cycle.message_event.set()  # wake a receive() in progress: it returns http.disconnect
    cycle.on_response = _ignore_stream


def _ignore_stream(stream_id: int) -> None:
    pass


def end_headers_only_request(protocol: H2Protocol, stream_id: int) -> None:
    """Wake ``receive()`` for a request whose HEADERS frame ended the stream (a GET).

    uvicorn 0.54's ``handle_request`` leaves ``more_body`` set, and no Data or
    EndOfMessage event follows, so ``receive()`` would wait for ever.
    """
    cycle = protocol.cycles[stream_id]
    cycle.more_body = False
    cycle.message_event.set()
