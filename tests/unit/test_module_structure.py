"""The packages' structure: no import cycles, and the README's module map matches the tree.

Imports are read from the source (ast), function-level ones included: an import deferred into a
function is still a dependency, and two modules that import each other that way are one tangled
unit all the same.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"cream_operator": ROOT / "operator" / "cream_operator",
            "cream_stages": ROOT / "stages" / "cream_stages"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, directory in PACKAGES.items():
        for path in sorted(directory.rglob("*.py")):
            parts = path.relative_to(directory).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join((package, *parts))] = path
    return out


def _resolve(current: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph() -> dict[str, set[str]]:
    """module -> the project's modules it imports."""
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, is_package, node)
                # `from pkg import mod` imports the module; `from mod import name` the module.
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                           for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_project():
    graph = import_graph()
    assert "cream_stages.contract" in graph["cream_stages.runner"]  # the graph is read at all
    assert cycles(graph) == [], "modules that import each other (directly or around a loop)"


def test_the_operator_side_of_the_stage_contract_imports_no_ml():
    """The operator image has no torch: what it imports of cream_stages must not need it."""
    graph = import_graph()
    reached, todo = set(), ["cream_operator.cli", "cream_operator.startup"]
    while todo:
        mod = todo.pop()
        if mod not in reached:
            reached.add(mod)
            todo.extend(graph[mod])
    for mod in sorted(m for m in reached if m.startswith("cream_stages.")):
        source = _modules()[mod].read_text()
        top_level = [line for line in source.splitlines()
                     if re.match(r"(import|from) (torch|transformers|vllm|deepspeed|numpy|scipy)",
                                 line)]
        assert not top_level, f"{mod} imports ML libraries at module level: {top_level}"


def test_the_readme_module_map_matches_the_tree():
    """Every module is named in the README's architecture table, and every name there exists."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("The code, by what it does:", 1)[1].split("\n\n", 2)[1]
    named = set(re.findall(r"`((?:operator|stages)/[\w/]+\.py)`", section))
    for group in re.findall(r"`((?:operator|stages)/[\w/]+)/\{([\w, ]+)\}\.py`", section):
        named |= {f"{group[0]}/{m.strip()}.py" for m in group[1].split(",")}
    on_disk = {str(p.relative_to(ROOT)) for p in _modules().values()
               if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(on_disk - named) == [], "modules the README's table does not name"
    assert sorted(named - on_disk) == [], "names in the README's table that are not modules"
