"""Imports run one way, downward (DESIGN.md): no import circles between modules, not even through imports
inside functions, and the libraries never reach up into the jobs."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("radio", "teachers", "pipelines")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in (ROOT / pkg).rglob("*.py"):
            parts = f.relative_to(ROOT).with_suffix("").parts
            mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return mods


def _edges(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, at any depth of its code (function bodies included)."""
    edges = defaultdict(set)
    for name, f in mods.items():
        pkg = name if f.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            edges[name] |= {t for t in targets if t in mods and t != name}
    return edges


def _cycles(edges: dict[str, set[str]], nodes) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def test_no_import_circles_anywhere():
    mods = _modules()
    edges = _edges(mods)
    cycles = _cycles(edges, mods)
    assert not cycles, "import circles: " + "; ".join(
        " <-> ".join(c) + f" (edges: {[(a, sorted(edges[a] & set(c))) for a in c]})" for c in cycles
    )


def test_libraries_never_import_the_jobs():
    mods = _modules()
    edges = _edges(mods)
    up = {(a, b) for a, bs in edges.items() for b in bs if not a.startswith("pipelines") and b.startswith("pipelines")}
    assert not up, up
    # radio and teachers are siblings; the one crossing is radio's optional, lazy text side (RADIO's encode_text)
    crossing = {
        (a, b)
        for a, bs in edges.items()
        for b in bs
        if a.split(".")[0] != b.split(".")[0] and not a.startswith("pipelines")
    }
    assert crossing <= {("radio.model", "teachers")}, crossing


def test_the_checker_sees_a_circle(tmp_path):
    """The checker itself: a made-up circle through an import inside a function is found."""
    edges = defaultdict(set, {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}})
    assert _cycles(edges, ["a", "b", "c", "d"]) == [["a", "b", "c"]]
