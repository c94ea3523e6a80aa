"""The uvicorn adapter (asgi_hijack.adapter): the supported range and its one clear error."""

from __future__ import annotations

import subprocess
import sys

import pytest

from asgi_hijack import adapter


def test_the_installed_uvicorn_is_in_the_supported_range() -> None:
    assert adapter.SUPPORTED_MIN <= adapter.version() <= adapter.SUPPORTED_MAX
    adapter.check_version()


@pytest.mark.parametrize("text", ["0.29.0", "0.55.0", "1.0.0"])
def test_an_unsupported_version_is_one_import_error_naming_the_range(text: str) -> None:
    with pytest.raises(ImportError, match=r"supports uvicorn 0\.30 to 0\.54.*pip install 'uvicorn>=0\.30,<0\.55'"):
        adapter.check_version(text)


@pytest.mark.parametrize("text", ["0.30.0", "0.30.6", "0.54.0", "0.54.1rc1"])
def test_supported_versions_pass(text: str) -> None:
    adapter.check_version(text)


@pytest.mark.parametrize("name", ["H11HijackProtocol", "HijackProtocol", "ZttpHijackProtocol"])
def test_importing_a_protocol_class_on_an_unsupported_uvicorn_fails_clearly(name: str) -> None:
    code = f"import uvicorn; uvicorn.__version__ = '0.29.0'; import asgi_hijack; asgi_hijack.{name}"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: asgi-hijack supports uvicorn 0.30 to 0.54, but uvicorn 0.29.0"), out.stderr


def test_hijack_itself_imports_without_the_protocols() -> None:
    # An app that calls hijack() may run under another server: importing it needs no protocol class.
    code = "import uvicorn; uvicorn.__version__ = '0.29.0'; from asgi_hijack import hijack, HijackError"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
