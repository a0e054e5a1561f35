"""The linters people expect, run as tests so that CI (the README's test command) runs them.

ruff: lint rules, import order and formatting as configured in pyproject.toml ([tool.ruff]); mypy:
the modules listed in [tool.mypy] ``files``. Both are in the ``dev`` extra; a test is
skipped (with the reason) where one is not installed.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).with_name(name)
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[dev]')")
    return found


def test_ruff_finds_nothing():
    res = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]


def test_tree_is_formatted():
    """The tree was formatted once with ``ruff format`` (pyproject's [tool.ruff]); keep it so."""
    res = subprocess.run(
        [_tool("ruff"), "format", "--check", "--no-cache", "."], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, "run `ruff format .`\n" + res.stdout[-4000:] + res.stderr[-2000:]


def test_mypy_finds_nothing_in_the_checked_modules():
    res = subprocess.run([_tool("mypy"), "--no-incremental"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
