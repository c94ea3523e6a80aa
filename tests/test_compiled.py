"""The compiled hot path (asgi_hijack._hot as a C extension) and its pure-Python fallback serve alike.

Each parser runs as a real server twice: as built, and with ``ASGI_HIJACK_NO_EXTENSIONS=1``, which
imports the module's Python source even where the extension exists. ``asgi_hijack.compiled`` tells
which one runs; where the build made no extension (no compiler), both runs exercise the fallback.
"""

from __future__ import annotations

import importlib.machinery
import shutil
import types
from pathlib import Path
from typing import Any

import pytest

import asgi_hijack
from asgi_hijack._native import hot, no_extensions

from .apps import echo_app, respond
from .helpers import ECHO_REQUEST, PARSERS, ServerProcess, connect, parse_responses, recv_until

PACKAGE = Path(asgi_hijack.__file__).parent


def extensions() -> list[Path]:
    """The compiled ``_hot`` for this interpreter that the build left beside its source (none or one)."""
    return [path for suffix in importlib.machinery.EXTENSION_SUFFIXES if (path := PACKAGE / f"_hot{suffix}").exists()]


def extension_built() -> bool:
    return bool(extensions())


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``/compiled``: the server's ``asgi_hijack.compiled``; anything else: :func:`tests.apps.echo_app`."""
    if scope["type"] == "http" and scope["path"] == "/compiled":
        await respond(send, 200, str(asgi_hijack.compiled).encode())
    else:
        await echo_app(scope, receive, send)


def test_a_machine_with_a_compiler_builds_the_extension() -> None:
    """The extension is optional for installs, not for our builds: a failed compile must not pass unseen."""
    if shutil.which("cc") is None or no_extensions():
        pytest.skip("no C compiler, or ASGI_HIJACK_NO_EXTENSIONS: the pure-Python fallback is expected")
    assert extension_built(), "setup.py built no extension although a C compiler is here: see `make venv`'s output"


def test_compiled_says_which_module_runs() -> None:
    expected = extension_built() and not no_extensions()
    assert asgi_hijack.compiled is expected
    assert isinstance(hot.data_received, types.FunctionType) is not expected
    # `uv sync` (make venv) rebuilds it when the source changes (pyproject.toml, tool.uv.cache-keys).
    sources = max((PACKAGE / name).stat().st_mtime for name in ("_hot.py", "_hot.pxd"))
    assert all(path.stat().st_mtime >= sources for path in extensions()), "stale extension: run `make venv`"


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("pure", [False, True], ids=["as-built", "pure-python"])
def test_server_on_either_module(parser: str, pure: bool) -> None:
    env = {"ASGI_HIJACK_NO_EXTENSIONS": "1" if pure else ""}
    with ServerProcess(parser, app="tests.test_compiled:app", env=env) as server:
        with connect(("127.0.0.1", server.port)) as sock:
            # Keep-alive requests one at a time (the fast path), then a pipelined pair (the framer).
            get = b"GET /compiled HTTP/1.1\r\nHost: t\r\n\r\n"
            expected = str(extension_built() and not pure).encode()
            for _ in range(3):
                sock.sendall(get)
                responses, rest = parse_responses(recv_until(sock, b"\r\n\r\n" + expected))
                assert [(r.status, r.body) for r in responses] == [(200, expected)] and rest == b""
            sock.sendall(get + b"GET /plain HTTP/1.1\r\nHost: t\r\n\r\n")
            responses, rest = parse_responses(recv_until(sock, b"\r\n\r\nok"))
            assert [(r.status, r.body) for r in responses] == [(200, expected), (200, b"ok")] and rest == b""
        with connect(("127.0.0.1", server.port)) as sock:
            sock.sendall(ECHO_REQUEST % b"" + b"first")
            assert recv_until(sock, b"first").endswith(b"\r\n\r\nfirst")  # the 101 head, then the echo
        assert server.problems() == []
