"""The shape of the code, checked: no import cycles among our modules, and the web framework
only in the web layer (docs/architecture.md)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "db", "tasks")
# The only code that may import Litestar when it runs (a TYPE_CHECKING import is fine).
WEB_LAYER = ("app.web", "app.routes")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def our_modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if "migrations" not in path.parts:
                found[module_name(path)] = path
    return found


def runtime_imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modules `path` imports when it is imported: top-level statements only (an
    import inside a function runs later, and one under `if TYPE_CHECKING` never)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path.parent)

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            if isinstance(node, (ast.If, ast.Try)):
                visit(node.body)
                visit(getattr(node, "orelse", []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*parent, base] if base else parent)
                found.add(base)
                # `from app.x import y` imports the module app.x.y when there is one.
                found.update(
                    f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules
                )

    visit(tree.body)
    return found


def graph() -> dict[str, set[str]]:
    modules = our_modules()
    edges = {}
    for name, path in modules.items():
        imported = runtime_imports(path, modules)
        # Importing app.x.y runs app/__init__ and app/x/__init__ first: count those too.
        closure = set()
        for target in imported:
            parts = target.split(".")
            closure.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        edges[name] = {m for m in closure if m in modules and m != name}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges[node]):
            if target not in index:
                connect(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            connect(node)
    return found


def test_our_modules_import_each_other_without_a_cycle():
    edges = graph()
    assert len(edges) > 60  # the walk found the code
    assert cycles(edges) == []


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_only_the_web_layer_imports_litestar():
    modules = our_modules()
    offenders = sorted(
        name
        for name, path in modules.items()
        if not name.startswith(WEB_LAYER)
        and any(
            m == "litestar" or m.startswith("litestar.") for m in runtime_imports(path, modules)
        )
    )
    assert offenders == []
