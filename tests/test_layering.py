"""The import layering: jobs -> pipelines -> mtl_rec, no cycle, and the config package a leaf.

Every import statement of the three packages is read with `ast` (function-local ones included,
`if TYPE_CHECKING:` blocks excluded from the cycle check: they never run), so a new upward import or
cycle fails here, not in a Ray worker.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = {"mtl_rec": 0, "pipelines": 1, "jobs": 2}  # a module imports its own layer or lower ones

# Known cycles, each closed by one function-local import, with the reason it cannot be avoided.
ALLOWED_CYCLE_EDGES = {
    (
        "mtl_rec.models.escm2",
        "mtl_rec.models",
    ): "ESCM2 wraps any registered backbone; the registry imports escm2",
}


def _modules() -> dict[str, Path]:
    modules = {}
    for package in LAYERS:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            inside |= {id(child) for stmt in node.body for child in ast.walk(stmt)}
    return inside


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """({module: project modules it imports}, the same without TYPE_CHECKING imports)."""
    modules = _modules()

    def resolve(name: str) -> str | None:  # the longest project module that `name` is or lies in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    every, runtime = {}, {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        typing_only = _type_checking_nodes(tree)
        every[name], runtime[name] = set(), set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parts, base] if base else parts)
                targets = [base, *(f"{base}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in filter(None, map(resolve, targets)):
                if target != name:
                    every[name].add(target)
                    if id(node) not in typing_only:
                        runtime[name].add(target)
    return every, runtime


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_layers_import_downward_only():
    every, _ = import_graph()
    upward = [
        f"{module} -> {target}"
        for module, targets in every.items()
        for target in targets
        if LAYERS[target.split(".")[0]] > LAYERS[module.split(".")[0]]
    ]
    assert not upward, f"imports against the layering (jobs -> pipelines -> mtl_rec): {upward}"


def test_no_import_cycles():
    _, runtime = import_graph()
    pruned = {
        module: targets - {t for m, t in ALLOWED_CYCLE_EDGES if m == module}
        for module, targets in runtime.items()
    }
    assert not cycles(pruned), f"import cycles: {cycles(pruned)}"
    for module, target in ALLOWED_CYCLE_EDGES:  # an allowance that closes no cycle any more goes
        assert target in runtime[module], f"{module} no longer imports {target}: drop the allowance"


def test_a_detector_that_can_fail():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_config_package_is_a_leaf_that_imports_no_torch():
    every, _ = import_graph()
    outside = sorted(
        f"{module} -> {target}"
        for module, targets in every.items()
        if module.startswith("mtl_rec.config")
        for target in targets
        if not target.startswith("mtl_rec.config")
    )
    assert not outside, f"mtl_rec.config must be a leaf: {outside}"
    check = (  # a whole preset read and checked (everything but the registries) in a fresh interpreter
        "import sys; from mtl_rec.config.run import read_run_config;"
        "cfg = read_run_config('jobs/configs/mmoe.yaml');"
        "assert cfg.model.arch == 'mmoe', cfg.model.arch;"
        "heavy = ('torch', 'torchrec', 'ray', 'mtl_rec.models', 'mtl_rec.weighting');"
        "heavy = sorted(m for m in heavy if m in sys.modules);"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", check], cwd=ROOT, check=True, timeout=120)
