"""Connection identity, per-connection state and state hooks (Go's ConnContext and ConnState)."""

from __future__ import annotations

import enum
import itertools
import logging
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
_logger = logging.getLogger("uvicorn.error")


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


class ConnectionInfo:
    """One accepted HTTP/1.x connection: identity, per-connection state, lifecycle state.

    ``state`` is a mapping every request on the connection sees (Go's ``ConnContext``):
    created when the connection opens, dropped with the connection. After a hijack the
    new owner still reaches it as ``conn.info.state``.
    """

    __slots__ = ("conn_state", "extension", "hooks", "id", "peer_credentials", "requests", "state", "transport")

    def __init__(self, hooks: tuple[ConnStateHook, ...]) -> None:
        self.id: int = next(_ids)
        self.hooks = hooks
        self.requests = 0
        self.state: dict[str, Any] = {}
        self.peer_credentials: tuple[int, int, int] | None = None
        self.transport: Any = None
        self.conn_state = ConnState.NEW
        self.extension: dict[str, Any] = {}
        """Template of the ``http.connection`` extension; each request gets a copy with its index."""

    def opened(self, transport: Any) -> None:
        sock = transport.get_extra_info("socket")
        self.peer_credentials = peer_credentials(sock)
        self.extension = {"id": self.id, "peer_credentials": self.peer_credentials, "state": self.state}
        self.transport = transport
        self.set(ConnState.NEW)

    @property
    def client(self) -> Any:
        """The peer address (``None`` on unix sockets)."""
        return self.transport.get_extra_info("peername") or None if self.transport is not None else None

    @property
    def server(self) -> Any:
        """The local address the connection was accepted on."""
        return self.transport.get_extra_info("sockname") if self.transport is not None else None

    def set(self, state: ConnState) -> None:
        """Move to ``state`` and run the hooks (a hook that raises is logged, not fatal)."""
        if self.conn_state in (ConnState.HIJACKED, ConnState.CLOSED):
            return
        self.conn_state = state
        for hook in self.hooks:
            try:
                hook(self, state)
            except Exception:
                _logger.exception("connection state hook %r failed", hook)


def registered_hooks(class_hooks: Iterable[ConnStateHook], app_state: Mapping[str, Any]) -> tuple[ConnStateHook, ...]:
    """Hooks from a protocol subclass (``conn_state_hooks``) and from the app's lifespan state."""
    return (*class_hooks, *app_state.get(STATE_HOOKS_KEY, ()))
