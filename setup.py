"""The build: the package as pure Python, plus asgi_hijack._hot compiled by Cython where that is possible.

The extension is optional: without Cython or a C compiler, or with ``ASGI_HIJACK_NO_EXTENSIONS=1``,
the wheel is pure Python (``asgi_hijack.compiled`` is False), with the same behaviour.
"""

from __future__ import annotations

import os

from setuptools import Extension, setup


def _extensions() -> list[Extension]:
    if os.environ.get("ASGI_HIJACK_NO_EXTENSIONS", "") not in ("", "0"):
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        return []
    extension = Extension("asgi_hijack._hot", ["asgi_hijack/_hot.py"], optional=True)
    return cythonize([extension], compiler_directives={"language_level": 3, "annotation_typing": False}, quiet=True)


setup(ext_modules=_extensions())
