"""Connection identity, per-connection state and state hooks (Go's ConnContext and ConnState)."""

from __future__ import annotations

import enum
import itertools
import socket
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "CONNECTION_EXTENSION",
    "STATE_HOOKS_KEY",
    "ConnState",
    "ConnStateHook",
    "ConnectionInfo",
    "peer_credentials",
]

CONNECTION_EXTENSION = "http.connection"
"""Scope extension carrying the connection's identity (see docs/spec.md)."""

STATE_HOOKS_KEY = "asgi_hijack.conn_state"
"""Lifespan-state key under which an app registers its connection state hooks."""

_ids = itertools.count(1)
next_connection_id: Callable[[], int] = _ids.__next__
"""A new connection id (1, 2, ...)."""


class ConnState(enum.Enum):
    """States of a connection, as Go's ``http.ConnState``; HIJACKED and CLOSED are terminal."""

    NEW = "new"
    ACTIVE = "active"
    IDLE = "idle"
    HIJACKED = "hijacked"
    CLOSED = "closed"


ConnStateHook = Callable[["ConnectionInfo", ConnState], object]


def peer_credentials(sock: socket.socket | None) -> tuple[int, int, int] | None:
    """``(pid, uid, gid)`` of the process at the other end of a Linux unix socket, else None."""
    if sock is None or sock.family != socket.AF_UNIX or not hasattr(socket, "SO_PEERCRED"):
        return None
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    return pid, uid, gid


_NEW = ConnState.NEW  # (an enum member read from its class costs as much as a dict made: read once)


class ConnectionInfo:
    """The identity of one accepted HTTP/1.x connection (``conn.info``, and what state hooks receive).

    ``id``, ``request_index`` (of the latest request), ``peer_credentials``, ``proxy`` and ``state``, a
    mapping every request on the connection sees (Go's ``ConnContext``): the same values as the
    connection's ``http.connection`` extension, dropped with the connection. Read-only:
    ``client``, ``server``, ``requests`` (how many have started) and ``conn_state``.
    """

    __slots__ = ("_conn_state", "_started", "_transport", "id", "peer_credentials", "proxy", "request_index", "state")

    def __init__(
        self,
        id: int,
        *,
        peer_credentials: tuple[int, int, int] | None,
        state: dict[str, Any],
        proxy: Any,
        transport: Any,
    ) -> None:
        self.id = id
        self.request_index = 0
        self._started = 0
        self.peer_credentials = peer_credentials
        self.state = state
        self.proxy = proxy
        """The connection's :class:`~asgi_hijack.proxy_protocol.ProxyHeader` (None without the PROXY protocol)."""
        self._transport = transport
        self._conn_state = _NEW

    def __repr__(self) -> str:
        return f"<ConnectionInfo id={self.id} request_index={self.request_index} {self._conn_state.value}>"

    @property
    def client(self) -> Any:
        """The peer address (``None`` on unix sockets); behind the PROXY protocol, the client's."""
        return self._transport.get_extra_info("peername") or None if self._transport is not None else None

    @property
    def server(self) -> Any:
        """The local address the connection was accepted on."""
        return self._transport.get_extra_info("sockname") if self._transport is not None else None

    @property
    def requests(self) -> int:
        """How many requests have started on the connection."""
        return self._started

    @property
    def conn_state(self) -> ConnState:
        """The connection's lifecycle state."""
        return self._conn_state


def registered_hooks(class_hooks: Iterable[ConnStateHook], app_state: Mapping[str, Any]) -> tuple[ConnStateHook, ...]:
    """Hooks from a protocol subclass (``conn_state_hooks``) and from the app's lifespan state."""
    return (*class_hooks, *app_state.get(STATE_HOOKS_KEY, ()))
