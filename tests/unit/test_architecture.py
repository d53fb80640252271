"""The layout's rules, checked on the source: data flows one way and the domain stands alone.

The import graph is read with ``ast`` (every ``import`` and ``from … import``, also those
inside functions and under ``TYPE_CHECKING``: a deferred import is still a dependency),
folded to the top-level parts of ``service`` (``service.store.writes`` -> ``store``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "service"
#: Modules may be longer than this only when their docstring says why.
MAX_LINES = 350
LONG_MODULE_MARK = "Why this module is long:"


def _modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if "migrations" in path.parts:
            continue
        yield path


def _part_of(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0].removesuffix(".py")


def _is_part(name: str) -> bool:
    return (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file()


def _imported_parts(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    parts: set[str] = set()
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
            if node.module == "service":  # ``from service import store``, not ``__version__``
                names = [f"service.{alias.name}" for alias in node.names if _is_part(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            raise AssertionError(f"{path}: relative import; the layout uses absolute ones")
        for name in names:
            pieces = name.split(".")
            if pieces[0] == "service" and len(pieces) > 1:
                parts.add(pieces[1])
    return parts


def import_graph() -> dict[str, set[str]]:
    """``{part: parts it imports}`` over the whole package, self-imports left out."""
    graph: dict[str, set[str]] = {}
    for path in _modules():
        part = _part_of(path)
        if part in {"__init__", "__main__"}:
            continue
        graph.setdefault(part, set()).update(_imported_parts(path) - {part})
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*stack[stack.index(target) :], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_domain_imports_nothing_from_the_rest_of_the_service() -> None:
    graph = import_graph()
    assert "domain" in graph, "service/domain is where the rules live"
    assert graph["domain"] == set()


def test_no_import_cycle_between_service_packages() -> None:
    assert _cycle(import_graph()) is None


def test_the_cycle_finder_sees_a_cycle() -> None:
    """The check above could pass by never finding anything: show it finds one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("path", list(_modules()), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_is_long_without_a_stated_reason(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    lines = text.count("\n")
    if lines <= MAX_LINES:
        return
    docstring = ast.get_docstring(ast.parse(text)) or ""
    assert LONG_MODULE_MARK in docstring, (
        f"{path.name} has {lines} lines; split it or say why in its docstring "
        f"({LONG_MODULE_MARK!r})"
    )


def test_only_the_test_support_imports_the_test_support() -> None:
    """service.testing is shipped for tests, benchmarks and users; the service itself
    must run without it."""
    importers = sorted(part for part, parts in import_graph().items() if "testing" in parts)
    assert importers == []


@pytest.mark.parametrize(
    "path",
    sorted((PACKAGE / "testing").rglob("*.py")),
    ids=lambda p: str(p.relative_to(PACKAGE)),
)
def test_the_test_support_does_not_need_pytest(path: Path) -> None:
    """Importing service.testing must work where pytest is not installed (benchmarks,
    a user's own harness): no module-level ``import pytest``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in tree.body:
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        assert not any(name.split(".")[0] in {"pytest", "_pytest"} for name in names), path.name
