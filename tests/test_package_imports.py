"""The package's modules import each other in one direction: no circle, not even through
an import inside a function. A circle means two parts that cannot be read, tested or
changed apart (the app was once assembled inside ``api``, which imported ``dashboard``,
which imported ``api`` back)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dropsync"


def module_name(path: Path) -> tuple[str, str]:
    """The module's dotted name and the package its relative imports start from."""
    parts = ["dropsync", *path.relative_to(PACKAGE).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts = parts[:-1]
        return ".".join(parts), ".".join(parts)
    return ".".join(parts), ".".join(parts[:-1])


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that ``path`` imports, at any depth of its code."""
    name, package = module_name(path)
    found = set()
    tree = ast.parse(path.read_text())
    for block in ast.walk(tree):  # names imported for type hints only are no import
        if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test):
            block.body = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        for candidate in candidates:
            # ``from .x import y`` imports x (and y, if y is a module); the package's
            # own __init__ runs too, but a module importing its parent package's
            # __init__ is how Python works, not a circle of ours
            while candidate and candidate not in modules:
                candidate = candidate.rpartition(".")[0]
            if candidate and candidate != name and not name.startswith(candidate + "."):
                found.add(candidate)
    return found


def import_graph() -> dict[str, set[str]]:
    paths = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p)[0] for p in paths}
    return {module_name(p)[0]: imports_of(p, modules) for p in paths}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_of_the_package_imports_itself_back():
    assert circles(import_graph()) == []


def test_the_check_sees_a_circle_through_a_function_level_import():
    graph = import_graph()
    assert "dropsync.api" in graph["dropsync"] or "dropsync.api" in {
        m for deps in graph.values() for m in deps}
    planted = {**graph, "dropsync.store": graph["dropsync.store"] | {"dropsync.hub"}}
    assert any("dropsync.store" in group for group in circles(planted))


#: The API's view modules: another audience's views, never a dashboard's helpers.
API_VIEWS = {"dropsync.api.admin", "dropsync.api.admin_files", "dropsync.api.admin_fleet",
             "dropsync.api.admin_ops", "dropsync.api.device", "dropsync.api.files",
             "dropsync.api.ota", "dropsync.api.health", "dropsync.api.openapi"}
STORE_TABLE = re.compile(r"\.stores\.(devices|history|sync_state|health|liveness|packages|"
                         r"auth|meta|manifest_versions|hub_files)\b")


def test_the_dashboard_uses_the_services_not_the_api_views_or_the_store_tables():
    graph = import_graph()
    for module, imported in graph.items():
        if module.startswith("dropsync.dashboard"):
            assert not imported & API_VIEWS, (module, imported & API_VIEWS)
    for path in (PACKAGE / "dashboard").glob("*.py"):
        found = STORE_TABLE.findall(path.read_text())
        assert not found, f"{path.name} reads store tables itself: {found}"
