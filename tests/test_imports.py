"""The import graph of chanscope/ and cli/ (imports inside functions included) has no cycle."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules() -> dict[str, tuple[Path, bool]]:
    mods = {}
    for p in [*(ROOT / "chanscope").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]:
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "cli":  # installed as chanscope.cli
            parts = ["chanscope", "cli", *parts[1:]]
        is_pkg = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_pkg else parts)] = (p, is_pkg)
    return mods


def import_graph() -> dict[str, set[str]]:
    """module -> the chanscope modules it imports anywhere in its body (`from pkg import mod` counts as mod)."""
    mods, graph = _modules(), {}
    for name, (path, is_pkg) in mods.items():
        pkg = name if is_pkg else name.rsplit(".", 1)[0]
        out = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                out |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[:len(pkg.split(".")) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                out |= {f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names}
        graph[name] = {m for m in out if m in mods and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative enough for this size)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    g = import_graph()
    assert len(g) > 50 and "chanscope.models.sources" in g["chanscope.workflows.zoo"]
    g["chanscope.errors"] = g["chanscope.errors"] | {"chanscope.workflows.zoo"}  # zoo imports errors
    assert any("chanscope.errors" in c and "chanscope.workflows.zoo" in c for c in cycles(g))


CORE = ("chanscope.models", "chanscope.attacks", "chanscope.observe", "chanscope.train", "chanscope.losses",
        "chanscope.data", "chanscope.sharding")
OUTER = ("chanscope.accel", "chanscope.workflows", "chanscope.cli")


def outward_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Core modules that import the speed layer, the workflows or the CLI."""
    return {m: sorted(d for d in deps if d.startswith(OUTER)) for m, deps in graph.items()
            if m.startswith(CORE) and any(d.startswith(OUTER) for d in deps)}


def test_the_core_never_imports_the_speed_layer_the_workflows_or_the_cli():
    g = import_graph()
    assert "chanscope.attacks.evaluation" in g and "chanscope.observe.study" in g  # the evaluation and study
    assert outward_imports(g) == {}
    g["chanscope.observe.study"] = g["chanscope.observe.study"] | {"chanscope.accel.distributed"}
    assert outward_imports(g) == {"chanscope.observe.study": ["chanscope.accel.distributed"]}
