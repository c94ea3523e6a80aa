"""WebSockets over HTTP/2 (RFC 8441): an extended CONNECT served as an ASGI ``websocket`` scope.

A client that saw ``SETTINGS_ENABLE_CONNECT_PROTOCOL = 1`` opens a WebSocket as one stream
of its HTTP/2 connection: HEADERS with ``:method CONNECT``, ``:protocol websocket``,
``sec-websocket-version: 13`` and optionally ``sec-websocket-protocol`` and
``sec-websocket-extensions`` (no ``Sec-WebSocket-Key``, no ``Upgrade``). A ``200`` without
END_STREAM accepts; from then on the stream's DATA carries WebSocket frames both ways, as
the bytes after a ``101`` do on HTTP/1.1. Any other status refuses.

:func:`serve_websocket` runs an ASGI app on such a request with the message rules of
uvicorn's WebSocket protocols:

* ``receive()`` first returns ``websocket.connect``.
* ``websocket.accept`` answers ``200`` with the chosen subprotocol and permessage-deflate
  parameters (if the client offered it and ``--ws-per-message-deflate`` is on); the engine
  turns the stream into a byte stream (the ``http.tunnel`` extension), framed by wsproto.
* ``websocket.close`` before accepting answers ``403``; ``websocket.http.response.start`` and
  ``.body`` send that HTTP response instead (the ``websocket.http.response`` extension).
* Pings are answered, the server pings every ``--ws-ping-interval`` seconds and closes with
  ``1011`` when no pong comes within ``--ws-ping-timeout``; a message over ``--ws-max-size``
  closes with ``1009``.
* A close, from either side, is followed by END_STREAM; the stream ends when the peer's
  END_STREAM arrives, or is reset with ``CANCEL`` after :data:`CLOSE_TIMEOUT`. An app that
  returns without closing closes with ``1000``, one that raises with ``1011``.
* ``receive()`` returns ``websocket.disconnect`` (with the close code: ``1006`` if the stream
  ended without a close frame) once closed, as often as it is called; ``send()`` then raises
  uvicorn's ``ClientDisconnected`` (an ``OSError``).

The byte stream is any asyncio reader and writer pair, so the framing rules are tested
without HTTP/2 (``tests/test_http2_websocket_session.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass
from typing import Any, cast

from uvicorn import _types as asgi
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected, get_client_addr, get_path_with_query_string
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import BytesMessage, CloseConnection, Event, Message, Ping, Pong, TextMessage
from wsproto.extensions import Extension, PerMessageDeflate
from wsproto.handshake import server_extensions_handshake
from wsproto.utilities import LocalProtocolError, RemoteProtocolError, split_comma_header

from .tunnel import EXTENSION as TUNNEL

__all__ = ["CLOSE_TIMEOUT", "Options", "serve_websocket", "websocket_scope"]

ASGIMessage = MutableMapping[str, Any]
Send = Callable[[ASGIMessage], Awaitable[None]]

CLOSE_TIMEOUT = 10.0
"""Seconds to wait for the peer's END_STREAM after the close handshake (uvicorn's close timeout)."""

READ_SIZE = 65536
logger = logging.getLogger("uvicorn.error")


class State(enum.Enum):
    """Where the session is; the ASGI messages the app may send depend on it."""

    CONNECTING = "connecting"  # before the app's answer: accept, close (403) or an HTTP response
    RESPONDING = "responding"  # an HTTP response instead of the WebSocket (websocket.http.response)
    OPEN = "open"  # accepted: messages both ways
    CLOSING = "closing"  # a close frame sent: waiting for the peer's close and END_STREAM
    CLOSED = "closed"  # done: receive() returns websocket.disconnect, send() raises


@dataclass(frozen=True)
class Options:
    """The uvicorn settings a session follows (``--ws-max-size`` and friends)."""

    max_size: int = 16 * 1024 * 1024
    max_queue: int = 32
    per_message_deflate: bool = True
    ping_interval: float | None = 20.0
    ping_timeout: float | None = 20.0
    close_timeout: float = CLOSE_TIMEOUT

    @classmethod
    def from_config(cls, config: Config) -> Options:
        return cls(
            max_size=config.ws_max_size,
            max_queue=config.ws_max_queue,
            per_message_deflate=config.ws_per_message_deflate,
            ping_interval=config.ws_ping_interval or None,
            ping_timeout=config.ws_ping_timeout,
        )


def _header_tokens(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> list[str]:
    return [token for key, value in headers if key == name for token in split_comma_header(value)]


def websocket_scope(scope: ASGIMessage) -> ASGIMessage:
    """The ASGI ``websocket`` scope for an HTTP/2 extended CONNECT request's ``http`` scope."""
    extensions: dict[str, Any] = {"websocket.http.response": {}}
    if "http.connection" in scope.get("extensions", {}):
        extensions["http.connection"] = scope["extensions"]["http.connection"]
    return {
        "type": "websocket",
        "asgi": {"version": scope["asgi"]["version"], "spec_version": "2.4"},
        "http_version": "2",
        "scheme": "wss" if scope["scheme"] == "https" else "ws",
        "server": scope["server"],
        "client": scope["client"],
        "root_path": scope["root_path"],
        "path": scope["path"],
        "raw_path": scope["raw_path"],
        "query_string": scope["query_string"],
        "headers": scope["headers"],
        "subprotocols": _header_tokens(scope["headers"], b"sec-websocket-protocol"),
        "state": scope["state"],
        "extensions": extensions,
    }


def _received(last: Message[Any], parts: list[str | bytes]) -> ASGIMessage:
    if isinstance(last, TextMessage):
        return {"type": "websocket.receive", "text": "".join(cast(list[str], parts))}
    return {"type": "websocket.receive", "bytes": b"".join(cast(list[bytes], parts))}


class Session:
    """One WebSocket on one extended CONNECT stream: the app's ``receive`` and ``send``."""

    def __init__(self, scope: ASGIMessage, send: Send, options: Options) -> None:
        self.http_scope = scope
        self.http_send = send
        self.scope = websocket_scope(scope)
        self.options = options
        self.state = State.CONNECTING
        self.conn: Connection | None = None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.queue: asyncio.Queue[ASGIMessage] = asyncio.Queue()
        self.queue.put_nowait({"type": "websocket.connect"})
        self.room = asyncio.Event()  # set when the app took a message off a full queue
        self.disconnect: ASGIMessage | None = None  # the last message receive() returns for ever
        self.app_closed = False  # the app sent websocket.close (or an HTTP response)
        self.eof_sent = False
        self.pong = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    # -- the app's side --------------------------------------------------------------------

    async def receive(self) -> ASGIMessage:
        if self.disconnect is not None and self.queue.empty():  # delivered already
            return self.disconnect
        message = await self.queue.get()
        self.room.set()
        return message

    async def send(self, message: ASGIMessage) -> None:
        kind = message["type"]
        if self.state is State.CONNECTING:
            if kind == "websocket.accept":
                await self._accept(message)
            elif kind == "websocket.close":
                self._log(403)
                await self._respond({"type": "http.response.start", "status": 403, "headers": []})
                await self._respond({"type": "http.response.body", "body": b""})
            elif kind == "websocket.http.response.start":
                self._log(message["status"])
                self.state = State.RESPONDING
                await self.http_send(
                    {"type": "http.response.start", "status": message["status"], "headers": message.get("headers", [])}
                )
            else:
                raise RuntimeError(
                    "Expected ASGI message 'websocket.accept', 'websocket.close' or "
                    f"'websocket.http.response.start', but got {kind!r}."
                )
        elif self.state is State.RESPONDING:
            if kind != "websocket.http.response.body":
                raise RuntimeError(f"Expected ASGI message 'websocket.http.response.body', but got {kind!r}.")
            await self._respond(
                {
                    "type": "http.response.body",
                    "body": message.get("body", b""),
                    "more_body": message.get("more_body", False),
                }
            )
        elif self.state is State.OPEN:
            if kind == "websocket.send":
                data = message.get("bytes")
                event: Event = BytesMessage(data=data) if data is not None else TextMessage(data=message["text"])
                await self._write(event)
            elif kind == "websocket.close":
                code, reason = message.get("code", 1000), message.get("reason") or ""
                self.app_closed = True
                self._queue_disconnect(code, reason)
                await self._close(code, reason)
            else:
                raise RuntimeError(f"Expected ASGI message 'websocket.send' or 'websocket.close', but got {kind!r}.")
        elif self.app_closed:
            raise RuntimeError(f"Unexpected ASGI message {kind!r}, after sending 'websocket.close' or a response.")
        else:
            raise ClientDisconnected("the WebSocket is closed: stop sending (receive() says why)")

    # -- the handshake ---------------------------------------------------------------------

    async def _respond(self, message: ASGIMessage) -> None:
        """An HTTP response instead of the WebSocket: the app gets ``websocket.disconnect`` 1006."""
        await self.http_send(message)
        if not message.get("more_body", False):
            self.state = State.CLOSED
            self.app_closed = True
            self._queue_disconnect(1006)

    async def _accept(self, message: ASGIMessage) -> None:
        headers: list[tuple[bytes, bytes]] = []
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            headers.append((b"sec-websocket-protocol", subprotocol.encode()))
        extensions: list[Extension] = [PerMessageDeflate()] if self.options.per_message_deflate else []
        offers = _header_tokens(self.scope["headers"], b"sec-websocket-extensions")
        agreed = server_extensions_handshake(offers, extensions) if offers and extensions else None
        if agreed is not None:
            headers.append((b"sec-websocket-extensions", agreed))
        else:
            extensions = []
        headers.extend(message.get("headers", []))
        await self.http_send({"type": "http.tunnel.accept", "status": 200, "headers": headers})
        stream = self.http_scope["extensions"][TUNNEL]["stream"]
        self.reader, self.writer = stream.reader, stream.writer
        self.conn = Connection(ConnectionType.SERVER, extensions)
        self.state = State.OPEN
        self.tasks.append(asyncio.ensure_future(self._read()))
        if self.options.ping_interval is not None:
            self.tasks.append(asyncio.ensure_future(self._keepalive(self.options.ping_interval)))
        stream.on_shutdown(self._going_away)
        self._log("[accepted]")

    def _going_away(self) -> None:
        """Graceful shutdown: close with 1012 (service restart), as uvicorn's WebSockets do."""
        if self.state is State.OPEN:
            self.state = State.CLOSING  # from now on: the app's close or return sends nothing more
            self._queue_disconnect(1012)
            self.tasks.append(asyncio.ensure_future(self._close(1012)))

    def _log(self, outcome: int | str) -> None:
        client = get_client_addr(self.scope)  # type: ignore[arg-type]
        logger.info('%s - "WebSocket %s" %s', client, get_path_with_query_string(self.scope), outcome)  # type: ignore[arg-type]

    # -- frames ----------------------------------------------------------------------------

    async def _write(self, event: Event) -> None:
        assert self.conn is not None and self.writer is not None
        try:
            self.writer.write(self.conn.send(event))
            await self.writer.drain()
        except (LocalProtocolError, ConnectionError) as exc:
            raise ClientDisconnected(f"the WebSocket is closed: {exc}") from exc

    async def _close(self, code: int, reason: str = "") -> None:
        """Send a close frame (first or in answer) and END_STREAM."""
        assert self.conn is not None and self.writer is not None
        self.state = State.CLOSING
        if self.conn.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            with contextlib.suppress(OSError):
                await self._write(CloseConnection(code=code, reason=reason))
        if not self.eof_sent:
            self.eof_sent = True
            with contextlib.suppress(OSError):
                self.writer.write_eof()

    def _queue_disconnect(self, code: int, reason: str = "") -> None:
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason}
            self.queue.put_nowait(self.disconnect)

    async def _read(self) -> None:
        """Feed the stream to wsproto until END_STREAM; queue messages, answer pings and closes."""
        assert self.conn is not None and self.reader is not None
        parts: list[str | bytes] = []
        size = 0
        while True:
            try:
                data: bytes | None = await self.reader.read(READ_SIZE)
            except OSError:  # reset, or the connection is gone
                data = b""
            if not data:
                data = None
            try:
                self.conn.receive_data(data)
            except LocalProtocolError:  # bytes after the close handshake: ignored
                continue
            try:
                for event in self.conn.events():
                    if isinstance(event, Message):
                        if self.state is not State.OPEN:  # after a close: dropped, as uvicorn does
                            continue
                        parts.append(event.data)
                        size += len(event.data.encode()) if isinstance(event, TextMessage) else len(event.data)
                        if size > self.options.max_size:
                            reason = f"Message exceeds the maximum size ({self.options.max_size} bytes)"
                            self._queue_disconnect(1009, reason)
                            await self._close(1009, reason)
                        elif event.message_finished:
                            await self._deliver(_received(event, parts))
                            parts, size = [], 0
                    elif isinstance(event, Ping) and not self.eof_sent:
                        with contextlib.suppress(OSError):
                            await self._write(event.response())
                    elif isinstance(event, Pong):
                        self.pong.set()
                    elif isinstance(event, CloseConnection):
                        self._queue_disconnect(event.code, event.reason or "")
                        await self._close(event.code, event.reason or "")
            except RemoteProtocolError as exc:  # a framing error: close with its code (1002, 1007)
                hint = exc.event_hint
                code, reason = (hint.code, hint.reason or "") if isinstance(hint, CloseConnection) else (1002, "")
                self._queue_disconnect(code, reason)
                await self._close(code, reason)
            if data is None:
                self._queue_disconnect(1006)
                self.state = State.CLOSED
                return

    async def _deliver(self, message: ASGIMessage) -> None:
        self.queue.put_nowait(message)
        while self.queue.qsize() >= self.options.max_queue:  # back-pressure: stop reading the stream
            self.room.clear()
            await self.room.wait()

    async def _keepalive(self, interval: float) -> None:
        """Ping every ``interval`` seconds; close with 1011 when a pong is late."""
        while self.state is State.OPEN:
            await asyncio.sleep(interval)
            if self.state is not State.OPEN:
                return
            self.pong.clear()
            with contextlib.suppress(OSError):
                await self._write(Ping(payload=os.urandom(4)))
            if self.options.ping_timeout is None:
                continue
            try:
                await asyncio.wait_for(self.pong.wait(), self.options.ping_timeout)
            except TimeoutError:
                if self.state is State.OPEN:
                    self._queue_disconnect(1011, "keepalive ping timeout")
                    await self._close(1011, "keepalive ping timeout")
                    self.abort()
                return

    # -- the end ---------------------------------------------------------------------------

    async def finish(self, code: int) -> None:
        """After the app returned: close with ``code`` if it did not, then end the stream."""
        if self.writer is None:
            return
        if self.state is State.OPEN:
            self._queue_disconnect(code)
            await self._close(code)
        reading, *_ = self.tasks
        done, _ = await asyncio.wait([reading], timeout=self.options.close_timeout)
        if not done:
            logger.info(
                "WebSocket over HTTP/2: no END_STREAM %s s after the close; resetting", self.options.close_timeout
            )
        self.abort()

    def abort(self) -> None:
        """Stop reading and pinging; reset the stream unless it ended both ways."""
        for task in self.tasks:
            if task is not asyncio.current_task():
                task.cancel()
        self.state = State.CLOSED
        if self.writer is not None:
            self.writer.close()


async def _plain_response(send: Send, status: int, text: str, *headers: tuple[bytes, bytes]) -> None:
    content_type = (b"content-type", b"text/plain; charset=utf-8")
    await send({"type": "http.response.start", "status": status, "headers": [content_type, *headers]})
    await send({"type": "http.response.body", "body": text.encode()})


async def serve_websocket(
    app: asgi.ASGI3Application,
    options: Options,
    scope: asgi.Scope,
    receive: asgi.ASGIReceiveCallable,
    send: asgi.ASGISendCallable,
) -> None:
    """Run ``app`` on an extended CONNECT ``websocket`` request as an ASGI ``websocket`` scope.

    ``scope``, ``receive`` and ``send`` are the request's ``http`` ones, whose ``send`` takes
    ``http.tunnel.accept`` (the engine's ``http.tunnel`` extension). A request without
    ``sec-websocket-version: 13`` is answered ``400`` without calling the app.
    """
    del receive  # after the accept, the stream's bytes go to its reader only
    http_send = cast(Send, send)
    http_scope = cast(ASGIMessage, scope)
    if _header_tokens(http_scope["headers"], b"sec-websocket-version") != ["13"]:
        text = "WebSocket over HTTP/2 needs the header sec-websocket-version: 13\n"
        await _plain_response(http_send, 400, text, (b"sec-websocket-version", b"13"))
        return
    session = Session(http_scope, http_send, options)
    try:
        await app(cast(Any, session.scope), cast(Any, session.receive), cast(Any, session.send))
    except ClientDisconnected:
        await session.finish(1006)
    except Exception:
        if session.writer is None:
            raise  # not accepted: uvicorn logs it and answers 500 (or resets a started response)
        logger.exception("Exception in ASGI application\n")
        await session.finish(1011)
    except BaseException:  # cancelled: the server is going away
        session.abort()
        raise
    else:
        if session.state is State.CONNECTING:
            logger.error("ASGI callable returned without completing handshake.")
            await _plain_response(http_send, 500, "Internal Server Error")
        await session.finish(1000)
