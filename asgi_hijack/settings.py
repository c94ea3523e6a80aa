"""Server settings of the protocol classes: class attributes, with environment defaults.

Each setting is a class attribute of every protocol class, so a server wrapper sets it
on a subclass (``class Mine(HttpToolsHijackProtocol): head_timeout = 5.0``), and the
environment sets its default for all classes. ``ZttpHijackProtocol`` forwards its settings
to the HTTP/2 protocol it hands HTTP/2 connections to, so a subclass of it works the same way.
"""

from __future__ import annotations

import os
from typing import Any

from . import proxy_protocol
from .lifecycle import ConnStateHook

__all__ = ["DRAIN_TIMEOUT", "HEAD_TIMEOUT", "SETTINGS", "HijackSettings"]

HEAD_TIMEOUT = 10.0
"""Seconds a client has to send a complete request head, from connecting or from its first
byte (Go's ``ReadHeaderTimeout``); environment override: ``ASGI_HIJACK_HEAD_TIMEOUT``."""

DRAIN_TIMEOUT = 5.0
"""Seconds a graceful shutdown waits for the owners of hijacked connections to close them
when uvicorn's ``--timeout-graceful-shutdown`` is not given; then they are closed.
Environment override: ``ASGI_HIJACK_DRAIN_TIMEOUT`` (``none``: wait for ever)."""


def _count(name: str) -> int | None:
    text = os.environ.get(name, "").strip()
    if not text or text.lower() == "none":
        return None
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a whole number (for example {name}=1000)") from None
    if value < 0:
        raise ValueError(f"{name}={text!r} must not be negative")
    return value


def _seconds(name: str, default: float | None) -> float | None:
    text = os.environ.get(name)
    if text is None or not text.strip():
        return default
    if text.strip().lower() in ("none", "inf", "infinity"):
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number of seconds (for example {name}=10)") from None
    if value <= 0:
        raise ValueError(f"{name}={text!r} must be a positive number of seconds")
    return value


def _choice(name: str, choices: tuple[str, ...], default: str) -> str:
    text = os.environ.get(name, "").strip().lower() or default
    if text not in choices:
        raise ValueError(f"{name}={text!r} is not one of {', '.join(choices)}")
    return text


def _networks(name: str, default: str) -> str:
    text = os.environ.get(name, "").strip() or default
    proxy_protocol.trusted_networks(text)  # raises on a word that is not an address or CIDR
    return text


class HijackSettings:
    """The settings every protocol class has (see the module docstring)."""

    head_timeout: float = _seconds("ASGI_HIJACK_HEAD_TIMEOUT", HEAD_TIMEOUT) or HEAD_TIMEOUT
    """Seconds allowed to send a complete request head (see :data:`HEAD_TIMEOUT`)."""
    drain_timeout: float | None = _seconds("ASGI_HIJACK_DRAIN_TIMEOUT", DRAIN_TIMEOUT)
    """Shutdown drain for hijacked connections without ``--timeout-graceful-shutdown`` (see
    :data:`DRAIN_TIMEOUT`); ``None`` waits for ever."""
    max_hijacked: int | None = _count("ASGI_HIJACK_MAX_HIJACKED")
    """Cap on the hijacked connections open at once in this server process (``None``: no cap).
    Over it, :func:`~asgi_hijack.hijack` raises :class:`~asgi_hijack.errors.HijackLimitError`
    before anything is written. Environment: ``ASGI_HIJACK_MAX_HIJACKED``."""
    conn_state_hooks: tuple[ConnStateHook, ...] = ()
    """Connection state hooks of a server wrapper; apps register theirs in lifespan state."""
    h2_websockets: str = _choice("ASGI_HIJACK_H2_WEBSOCKETS", ("on", "http1"), "on")
    """WebSockets over HTTP/2 (RFC 8441) on ``ZttpHijackProtocol``: ``on`` serves them as ASGI
    ``websocket`` scopes, ``http1`` resets them with ``HTTP_1_1_REQUIRED`` so that browsers retry
    over HTTP/1.1. Environment: ``ASGI_HIJACK_H2_WEBSOCKETS``."""
    proxy_protocol: str = _choice("ASGI_HIJACK_PROXY_PROTOCOL", proxy_protocol.MODES, "off")
    """``off``, or the PROXY protocol header every connection must start with: ``v1``, ``v2`` or
    ``any`` (see :mod:`asgi_hijack.proxy_protocol`). Environment: ``ASGI_HIJACK_PROXY_PROTOCOL``."""
    proxy_trusted: str | tuple[str, ...] = _networks("ASGI_HIJACK_PROXY_TRUSTED", "127.0.0.1")
    """Peers allowed to send the PROXY header: addresses and CIDRs (``*``: all, ``unix``: unix
    sockets), in a string separated by commas or a tuple. Environment: ``ASGI_HIJACK_PROXY_TRUSTED``."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own = vars(cls)
        if "proxy_protocol" in own or "proxy_trusted" in own:
            # A server wrapper's settings are checked when its class is made, not per connection.
            proxy_protocol.validate(cls.proxy_protocol, cls.proxy_trusted, cls.__qualname__)


SETTINGS = tuple(name for name in vars(HijackSettings) if not name.startswith("_"))
"""Names of the settings, which ``ZttpHijackProtocol`` forwards."""
