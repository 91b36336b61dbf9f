"""The layers are folders, and imports only go down (issue 12): no module imports one above its layer, and
there is no import cycle among broiler's modules — counting imports inside functions and those made only
for type checking."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "broiler"

# Lower number = lower layer. A module may import from its own layer or any lower one.
LAYERS = {
    "broiler": 0,
    "broiler.errors": 0,
    "broiler.exitcodes": 0,
    "broiler.inputs": 0,
    "broiler.x86": 0,
    "broiler.guests": 0,
    "broiler.kvm": 1,
    "broiler.core": 2,
    "broiler.pci": 3,
    "broiler.devices": 4,
    "broiler.boot": 5,
    "broiler.emulate": 6,
    "broiler.vmm": 7,
    "broiler.frontend": 8,
    "broiler.bench": 8,
    "broiler.__main__": 9,
    "broiler.api": 9,  # the public names (docs/api.md): re-exports from every layer, imported by none
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every broiler module ``path`` imports, anywhere in the file."""
    is_package = path.name == "__init__.py"
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            # `from pkg import submodule` imports the submodule; `from mod import name` the module
            targets = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != module)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {name: _imports(path, name, modules) for name, path in files.items()}


def _layer(module: str) -> int:
    best = max((prefix for prefix in LAYERS if module == prefix or module.startswith(prefix + ".")), key=len)
    return LAYERS[best]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative enough for this size)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

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
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer() -> None:
    for module in set(_graph()) - {"broiler"}:
        assert any(module == p or module.startswith(p + ".") for p in LAYERS if p != "broiler"), module


def test_no_import_cycles() -> None:
    assert _cycles(_graph()) == []


def test_imports_only_go_down() -> None:
    graph = _graph()
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) > _layer(module)
    )
    assert upward == []


def test_the_checker_sees_a_cycle_and_an_upward_import() -> None:
    """The checks above would fail on a real cycle or an upward import (guards against a vacuous walker)."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert _layer("broiler.core.vcpu") < _layer("broiler.vmm.machine")
    graph = _graph()
    assert "broiler.core.bus" in graph["broiler.vmm.machine"]


MODULE_LINES = 400
FUNCTION_LINES = 60
# Tables, not logic: the argparse option lists read top to bottom like the --help they produce.
TABLES = {"broiler.frontend.parser.build_parser", "broiler.frontend.parser._add_run_parser"}


def test_modules_and_functions_stay_short() -> None:
    """Issue 12: no module over 400 lines, no function over 60 except the option tables."""
    long_modules, long_functions = [], []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        module = _module_name(path)
        if len(text.splitlines()) > MODULE_LINES:
            long_modules.append(module)
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) or node.end_lineno is None:
                continue
            if node.end_lineno - node.lineno + 1 > FUNCTION_LINES and f"{module}.{node.name}" not in TABLES:
                long_functions.append(f"{module}.{node.name}")
    assert long_modules == [] and sorted(long_functions) == []
