"""Which :mod:`asgi_hijack._hot` runs: the compiled extension if the build made one, else its Python source.

``ASGI_HIJACK_NO_EXTENSIONS=1`` in the environment imports the source even where the extension exists.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

__all__ = ["compiled", "hot", "no_extensions"]


def no_extensions() -> bool:
    """True if ``ASGI_HIJACK_NO_EXTENSIONS`` asks for pure Python (read at build and at import time)."""
    return os.environ.get("ASGI_HIJACK_NO_EXTENSIONS", "") not in ("", "0")


def _source() -> ModuleType:
    name = f"{__package__}._hot"
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_hot.py"))
    assert spec is not None and spec.loader is not None
    module = sys.modules[name] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if TYPE_CHECKING or not no_extensions():
    from . import _hot as hot
else:
    hot = _source()

compiled: bool = not str(hot.__file__).endswith(".py")
"""True if the hot path runs compiled (``asgi_hijack.compiled``)."""
