"""kjax_core's modules import each other without a cycle, counting every import: at module level,
inside functions (lazy) and under ``if TYPE_CHECKING``. A lazy import hides a cycle from Python
only until the order of first use changes; the layout's layers (plugin_system, conversion, nn,
inference, ...) point one way.

The graph is read from the source with ``ast`` (nothing is imported). An edge ``a -> b`` means that
module ``a`` imports ``b``:

- ``import kjax_core.x.y`` and ``from kjax_core.x.y import name``: an edge to ``kjax_core.x.y``,
  and to ``kjax_core.x.y.name`` too where that is a submodule;
- ``from kjax_core.x import y`` (or ``from . import y``) where ``y`` is a submodule: an edge to
  ``kjax_core.x.y`` only; where ``y`` is an attribute: an edge to the package ``kjax_core.x``;
- importing a module runs its enclosing packages' ``__init__`` first: an edge to each of them,
  except the importer's own enclosing packages, which are always imported before it (so
  ``from .types import X`` in ``kjax_core.plugin_system.registry`` is no edge to
  ``kjax_core.plugin_system``, while ``from ..nn import conv`` in ``kjax_core.conversion`` is one to
  ``kjax_core.nn``).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "kjax_core"
PACKAGE = ROOT.name


def _modules() -> dict[str, tuple[Path, bool]]:
    """{module name: (file, is a package)} for every kjax_core/**/*.py."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        package = parts[-1] == "__init__"
        found[".".join(parts[:-1] if package else parts)] = (path, package)
    return found


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_graph() -> dict[str, dict[str, list[str]]]:
    """{importer: {imported: ["file:line", ...]}} over kjax_core's modules."""
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = {name: {} for name in modules}
    for name, (path, is_package) in modules.items():
        here = name if is_package else name.rpartition(".")[0]
        own = set(_ancestors(name)) | {name}

        def add(target: str, line: int) -> None:
            if target not in modules:
                return
            # Running target's enclosing packages first, but for the importer's own.
            for step in [*_ancestors(target), target]:
                if step not in own or step == target:
                    if step != name:
                        where = f"{path.relative_to(ROOT.parent)}:{line}"
                        graph[name].setdefault(step, []).append(where)

        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.split(".")[0] == PACKAGE:
                        add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = here.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                if base.split(".")[0] != PACKAGE:
                    continue
                for alias in node.names:
                    submodule = f"{base}.{alias.name}"
                    if submodule in modules:
                        add(submodule, node.lineno)
                    elif base != name:  # an attribute of base: base itself is run
                        add(base, node.lineno)
    return graph


def find_cycles(graph: dict[str, dict[str, list[str]]]) -> list[list[str]]:
    """One cycle per strongly connected component of more than one module (Tarjan), each as
    the list of its modules in import order, the first repeated at the end."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:  # recursion depth is bounded by the module count
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in graph[node]:
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)

    cycles = []
    for component in components:
        members = set(component)
        start = component[0]
        # Shortest way back to start within the component (breadth first).
        previous = {start: None}
        frontier = [start]
        back = None
        while frontier and back is None:
            following = []
            for node in frontier:
                for succ in sorted(graph[node]):
                    if succ == start:
                        back = node
                        break
                    if succ in members and succ not in previous:
                        previous[succ] = node
                        following.append(succ)
                if back is not None:
                    break
            frontier = following
        path = [start]
        node = back
        while node is not None and node != start:
            path.insert(1, node)
            node = previous[node]
        cycles.append(path + [start])
    return cycles


def describe(cycle: list[str], graph: dict[str, dict[str, list[str]]]) -> str:
    steps = [f"  {a} -> {b}  ({', '.join(graph[a][b])})" for a, b in zip(cycle, cycle[1:])]
    return "\n".join([" -> ".join(cycle), *steps])


def test_the_graph_sees_every_kind_of_import():
    """The reader finds module-level, lazy (function-level) and TYPE_CHECKING imports, resolves
    relative ones, and names a submodule imported from its package."""
    graph = import_graph()
    registry = graph["kjax_core.plugin_system.registry"]
    assert "kjax_core.plugin_system.types" in registry  # from .types import ...
    assert "kjax_core.plugin_system.core_plugin" in registry  # lazy: from . import core_plugin
    assert "kjax_core.errors" in registry  # from ..errors import ...
    assert "kjax_core.plugin_system" not in registry  # its own package
    hookspecs = graph["kjax_core.plugin_system.hookspecs"]
    assert "kjax_core.plugin_system.types" in hookspecs  # under TYPE_CHECKING
    translate = graph["kjax_core.conversion.translate"]
    assert "kjax_core.plugin_system" in translate  # another package: its __init__ runs first
    assert find_cycles({"a": {"b": []}, "b": {"c": []}, "c": {"a": []}, "d": {"a": []}}) == [
        ["a", "b", "c", "a"]]


def test_no_import_cycle():
    graph = import_graph()
    cycles = find_cycles(graph)
    report = "\n\n".join(describe(cycle, graph) for cycle in cycles)
    print(report or "no cycle")
    assert not cycles, f"import cycles in kjax_core:\n{report}"
