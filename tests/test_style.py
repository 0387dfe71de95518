"""The house style is a gate, not a habit: the formatter, the linter and the type check run with the suite, so CI
(the README's test command) fails on a violation. Configured in pyproject.toml; the same checks run before a commit
with pre-commit (.pre-commit-config.yaml)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: `pip install -e '.[test]'` installs it")
    return found


def _run(*cmd: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_the_tree_is_formatted():
    r = _run(_tool("ruff"), "format", "--check", "--diff", ".")
    assert r.returncode == 0, f"run `ruff format .`:\n{r.stdout[-4000:]}{r.stderr[-2000:]}"


def test_the_tree_passes_the_linter():
    r = _run(_tool("ruff"), "check", "--output-format", "concise", ".")
    assert r.returncode == 0, f"`ruff check .` finds:\n{r.stdout[-4000:]}{r.stderr[-2000:]}"


def test_the_library_type_checks():
    """pyright over radio/ (the include in pyproject.toml), resolving imports in this interpreter's environment."""
    r = _run(_tool("pyright"), "--pythonpath", sys.executable)
    assert r.returncode == 0 and re.search(r"^0 errors", r.stdout, re.M), (
        f"pyright finds:\n{r.stdout[-6000:]}{r.stderr}"
    )
