"""Server settings of the protocol classes: class attributes, with environment defaults.

Each setting is a class attribute of every protocol class, so a server wrapper sets it
on a subclass (``class Mine(HttpToolsHijackProtocol): head_timeout = 5.0``), and the
environment sets its default for all classes. ``ZttpHijackProtocol`` forwards its settings
to the HTTP/1.1 protocol it dispatches to, so a subclass of it works the same way.
"""

from __future__ import annotations

import os

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


SETTINGS = tuple(name for name in vars(HijackSettings) if not name.startswith("_"))
"""Names of the settings, which ``ZttpHijackProtocol`` forwards."""
