"""A runtime-checkable protocol must come out of mutmut's rewrite with no names added.

mutmut turns every function it mutates into a trampoline plus one method per mutant,
all of them attributes of the function's class. In a ``@runtime_checkable`` protocol
those attributes become members that ``isinstance`` asks every implementation for, so
no implementation passes and a whole group cannot start (the store group's
``dialect_for`` once failed so under ``scripts/mutation store``). Such a protocol is
marked ``# pragma: no mutate block``; this test finds them all and checks mutmut's
rendering of each, so a new one is caught here and not an hour into a run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from mutmut.mutation.file_mutation import mutate_file_contents

ROOT = Path(__file__).resolve().parents[2]


def _runtime_checkable_protocols() -> list[tuple[Path, str]]:
    found = []
    for path in sorted((ROOT / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(
                isinstance(d, ast.Name) and d.id == "runtime_checkable" for d in node.decorator_list
            ):
                found.append((path, node.name))
    return found


PROTOCOLS = _runtime_checkable_protocols()


def test_the_search_finds_the_dialect_protocol() -> None:
    assert (ROOT / "service/store/dialects/__init__.py", "Dialect") in PROTOCOLS


@pytest.mark.parametrize(
    ("path", "name"), PROTOCOLS, ids=[f"{p.relative_to(ROOT)}:{n}" for p, n in PROTOCOLS]
)
def test_mutmut_adds_no_members_to_a_runtime_checkable_protocol(path: Path, name: str) -> None:
    mutated = ast.parse(mutate_file_contents(str(path), path.read_text()).code)
    [cls] = [n for n in ast.walk(mutated) if isinstance(n, ast.ClassDef) and n.name == name]
    members = {
        n.name
        for n in cls.body
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    } | {
        t.id
        for n in cls.body
        if isinstance(n, ast.Assign)
        for t in n.targets
        if isinstance(t, ast.Name)
    }
    assert not [m for m in members if "mutmut" in m], f"{name}: mark it # pragma: no mutate block"
