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


def test_the_librarys_public_functions_are_typed():
    """Every public function and method of radio/ (and the hub entry points) annotates its arguments and its
    return: what a user imports says what it takes. Private helpers (a leading underscore) may stay bare."""
    import ast

    bare = []
    for f in sorted([*(ROOT / "radio").rglob("*.py"), ROOT / "hubconf.py"]):

        def walk(node: ast.AST, public: bool, where: str, f: Path = f) -> None:
            for n in ast.iter_child_nodes(node):
                if isinstance(n, ast.ClassDef):
                    walk(n, public and not n.name.startswith("_"), f"{where}{n.name}.")
                elif isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef):
                    if not public or (n.name.startswith("_") and n.name != "__init__"):
                        continue
                    a = n.args
                    args = [x for x in a.posonlyargs + a.args + a.kwonlyargs if x.arg not in ("self", "cls")]
                    missing = [x.arg for x in args if x.annotation is None]
                    if n.returns is None:
                        missing.append("return")
                    if missing:
                        bare.append(f"{f.relative_to(ROOT)}:{n.lineno} {where}{n.name}: {missing}")

        walk(ast.parse(f.read_text()), True, "")
    assert not bare, "\n".join(bare)
