"""docs/promises.md cannot rot: every row names at least one test, and every test it
names exists (the file, and a test function of that name in it, found with ``ast``:
nothing is imported)."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
INDEX = ROOT / "docs" / "promises.md"
NODE = re.compile(r"`(tests/[\w/]+\.py)::(\w+)(?:\[[^\]`]*\])?`")
#: DESIGN.md's sections that state promises: each must have its own part of the index.
SECTIONS = (
    "Who uses it, and how",
    "Event contract (schemas/)",
    "`expected_generation` semantics",
    "Invariant",
    "Two Placement gaps not to repeat",
    "Outcomes",
    "Failure classes",
    "Producers and the outcome loop",
    "Durability",
    "Delivery and ordering",
    "Logging",
    "Configuration",
    "Scale",
    "Stalls",
)


def _rows() -> list[tuple[str, str, str]]:
    """(section, promise, tests cell) of every table row of the index."""
    rows = []
    section = ""
    for line in INDEX.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            continue
        if not line.startswith("|") or set(line) <= set("|- "):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split(" | ")]
        assert len(cells) == 2, f"a row of the index is not 'promise | tests': {line}"
        if cells == ["promise", "tests"]:
            continue
        rows.append((section, cells[0], cells[1]))
    return rows


@cache
def _test_functions(path: str) -> frozenset[str]:
    """The test functions of a test module: module level or in a ``Test*`` class."""
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path)
    names = set()
    for node in tree.body:
        bodies = [node]
        if isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            bodies = list(node.body)
        for item in bodies:
            if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name.startswith(
                "test_"
            ):
                names.add(item.name)
    return frozenset(names)


def test_every_section_of_the_design_has_promises_with_tests() -> None:
    rows = _rows()
    assert {section for section, _, _ in rows} >= set(SECTIONS)
    assert len(rows) >= 60
    empty = [(section, promise) for section, promise, tests in rows if not NODE.search(tests)]
    assert not empty, f"promises without a test: {empty}"


def test_every_test_the_index_names_exists() -> None:
    missing = []
    for _, promise, tests in _rows():
        for path, name in NODE.findall(tests):
            if not (ROOT / path).is_file():
                missing.append(f"{path} (for {promise!r})")
            elif name not in _test_functions(path):
                missing.append(f"{path}::{name} (for {promise!r})")
    assert not missing, "the index names tests that do not exist:\n" + "\n".join(missing)


def test_the_index_reader_finds_what_is_missing() -> None:
    """The check itself can fail: a name that is not a test function is not found."""
    assert "test_every_test_the_index_names_exists" in _test_functions(
        "tests/unit/test_promise_index.py"
    )
    assert "_rows" not in _test_functions("tests/unit/test_promise_index.py")
    assert NODE.findall("`tests/a/test_b.py::test_c[sqlite]` and `tests/d.py::test_e`") == [
        ("tests/a/test_b.py", "test_c"),
        ("tests/d.py", "test_e"),
    ]
