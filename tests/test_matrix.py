"""tools/matrix.py: the README's compatibility table and pyproject.toml agree with the support matrix."""

from __future__ import annotations

import tomllib

from tools.matrix import README, RESULTS, UVICORN, load_results, readme_table, render_table

ROOT = README.parent


def test_readme_table_is_the_one_written_from_docs_compat_json() -> None:
    assert readme_table(README.read_text()) == render_table(load_results(RESULTS)), (
        "README.md's compatibility table is out of date with docs/compat.json: run `make compat-table`"
    )


def test_pyproject_declares_the_uvicorn_range_the_matrix_tests() -> None:
    oldest, newest = (release.split(".") for release in (UVICORN[0], UVICORN[-1]))
    expected = f"uvicorn>={oldest[0]}.{oldest[1]},<{newest[0]}.{int(newest[1]) + 1}"
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert expected in dependencies, f"pyproject.toml should require {expected!r}, as tools/matrix.py tests"
