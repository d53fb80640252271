"""scripts/mutation_fresh.py re-checks, each in a fresh interpreter, the mutants mutmut
left alive of functions run at import, and scripts/mutation_score.py shows those kills
apart ("fresh"), never as mutmut's (docs/mutation.md, "The command").

The end-to-end test builds a tiny work folder the way mutmut lays one out: a module
whose decorator runs at import (mutmut's trampoline around it, one mutant that breaks
it, one that changes nothing), a module that applies it, a test of the latter, mutmut's
results (both mutants "survived") and its stats."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


fresh = _script("mutation_fresh")
score = _script("mutation_score")

DECORATOR = """
from mutmut.mutation.trampoline import wrap_in_trampoline as _mutmut_mutated
mutants_x_shout__mutmut = {}


@_mutmut_mutated(mutants_x_shout__mutmut)
def shout(func):
    func.loud = True
    return func


def x_shout__mutmut_orig(func):
    func.loud = True
    return func


def x_shout__mutmut_1(func):
    func.loud = True
    return None


def x_shout__mutmut_2(func):
    func.loud = True
    return func


mutants_x_shout__mutmut["_mutmut_orig"] = x_shout__mutmut_orig
mutants_x_shout__mutmut["x_shout__mutmut_1"] = x_shout__mutmut_1
mutants_x_shout__mutmut["x_shout__mutmut_2"] = x_shout__mutmut_2


def helper():
    return 1
"""

USER = """
from pkg.deco import shout


@shout
def hello():
    return "hi"
"""

TEST = """
from pkg.user import hello


def test_hello():
    assert hello() == "hi"
"""


def work_folder(tmp_path: Path) -> Path:
    """A work folder as scripts/mutation_groups.py and mutmut leave it."""
    (tmp_path / "pyproject.toml").write_text(
        textwrap.dedent(
            """
            [tool.mutmut]
            only_mutate = ["pkg/*"]
            pytest_add_cli_args_test_selection = ["tests"]
            pytest_add_cli_args = ["-p", "no:cacheprovider"]
            """
        )
    )
    mutants = tmp_path / "mutants"
    (mutants / "pkg").mkdir(parents=True)
    (mutants / "tests").mkdir()
    (mutants / "pkg" / "__init__.py").write_text("")
    (mutants / "pkg" / "deco.py").write_text(DECORATOR)
    (mutants / "pkg" / "user.py").write_text(USER)
    (mutants / "tests" / "test_user.py").write_text(TEST)
    (mutants / "pyproject.toml").write_text((tmp_path / "pyproject.toml").read_text())
    codes = {"pkg.deco.x_shout__mutmut_1": 0, "pkg.deco.x_shout__mutmut_2": 0}
    (mutants / "pkg" / "deco.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    (mutants / "pkg" / "user.py.meta").write_text(json.dumps({"exit_code_by_key": {}}))
    stats = {
        # As mutmut records it: the import-time call lands on whichever test ran first.
        "tests_by_mangled_function_name": {
            "pkg.deco.x_shout": ["tests/test_user.py::test_hello"],
            "pkg.user.x_hello": ["tests/test_user.py::test_hello"],
        },
        "duration_by_test": {"tests/test_user.py::test_hello": 0.01},
    }
    (mutants / "mutmut-stats.json").write_text(json.dumps(stats))
    return tmp_path


def test_a_mutant_of_a_decorator_run_at_import_is_killed_in_a_fresh_interpreter(
    tmp_path: Path,
) -> None:
    base = work_folder(tmp_path)
    assert fresh.import_time_callers(base) == {"pkg.deco.x_shout": ["pkg.user"]}
    verdicts = fresh.recheck(base, workers=2)
    assert verdicts["pkg.deco.x_shout__mutmut_1"]["verdict"] == "killed"
    assert verdicts["pkg.deco.x_shout__mutmut_1"]["callers"] == ["pkg.user"]
    assert verdicts["pkg.deco.x_shout__mutmut_1"]["test_files"] == ["tests/test_user.py"]
    assert verdicts["pkg.deco.x_shout__mutmut_2"]["verdict"] == "survived"
    assert verdicts["pkg.deco.x_shout__mutmut_2"]["exit_code"] == 0
    assert set(verdicts) == {"pkg.deco.x_shout__mutmut_1", "pkg.deco.x_shout__mutmut_2"}


def test_tests_that_fail_with_no_mutant_decide_nothing(tmp_path: Path) -> None:
    base = work_folder(tmp_path)
    (base / "mutants" / "pkg" / "user.py").write_text(USER.replace('"hi"', '"bye"'))
    verdicts = fresh.recheck(base, workers=1)
    assert {name: v["verdict"] for name, v in verdicts.items()} == {
        "pkg.deco.x_shout__mutmut_1": "no clean run",
        "pkg.deco.x_shout__mutmut_2": "no clean run",
    }


def test_only_functions_called_while_importing_are_re_checked(tmp_path: Path) -> None:
    """A function called by the tests (not at import) is mutmut's to judge: its mutant
    stays out of the re-check even when it survived."""
    base = work_folder(tmp_path)
    (base / "mutants" / "tests" / "test_user.py").write_text(
        TEST + "\n\ndef test_helper():\n    from pkg.deco import helper\n    helper()\n"
    )
    meta = base / "mutants" / "pkg" / "deco.py.meta"
    codes = json.loads(meta.read_text())["exit_code_by_key"] | {"pkg.deco.x_helper__mutmut_1": 0}
    meta.write_text(json.dumps({"exit_code_by_key": codes}))
    assert set(fresh.alive(base)) == set(codes)
    assert "pkg.deco.x_helper" not in fresh.import_time_callers(base)
    assert set(fresh.recheck(base, workers=2)) == {
        "pkg.deco.x_shout__mutmut_1",
        "pkg.deco.x_shout__mutmut_2",
    }


def test_the_tests_chosen_are_the_files_of_the_calling_modules_tests_quickest_first() -> None:
    stats = {
        "tests_by_mangled_function_name": {
            "service.cli.get.x_command": ["t/a_slow.py::a", "t/b_fast.py::b"],
            "service.cli.getter.x_other": ["t/unrelated.py::c"],
            "service.cli.get.sub.x_nested": ["t/nested.py::d"],
            "service.cli._common.x_database_url_option": ["t/first-test-of-the-run.py::e"],
        },
        "duration_by_test": {
            "t/a_slow.py::a": 0.5,
            "t/a_slow.py::f": 1.0,
            "t/b_fast.py::b": 0.1,
            "t/b_fast.py::g": 0.2,
        },
    }
    assert fresh.tests_for(["service.cli.get"], stats) == ["t/b_fast.py", "t/a_slow.py"]
    assert fresh.tests_for(["service.cli.show"], stats) == []


def test_exit_codes_read_as_mutmut_reads_them() -> None:
    assert fresh.verdict_of(0) == "survived"
    assert fresh.verdict_of(1) == "killed"
    assert fresh.verdict_of(2) == "killed"  # a collection error: the mutant broke an import
    assert fresh.verdict_of(None) == "timeout"
    # A test id no longer collected (its module failed to import with the mutant on),
    # the same command having passed with no mutant.
    assert fresh.verdict_of(4) == "killed"
    assert fresh.verdict_of(5) == "other"  # no test ran: nothing decided
    assert fresh.function_of("service.cli._common.x_f__mutmut_12") == "service.cli._common.x_f"


def test_the_score_counts_fresh_kills_in_a_column_of_their_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = work_folder(tmp_path)
    (base / "mutants" / "pkg" / "deco.py.meta").write_text(
        json.dumps(
            {
                "exit_code_by_key": {
                    "pkg.deco.x_shout__mutmut_1": 0,
                    "pkg.deco.x_shout__mutmut_2": 0,
                    "pkg.deco.x_shout__mutmut_3": 1,
                    "pkg.deco.x_shout__mutmut_4": 33,
                }
            }
        )
    )
    verdicts = {
        "pkg.deco.x_shout__mutmut_1": {"verdict": "killed"},
        "pkg.deco.x_shout__mutmut_2": {"verdict": "survived"},
        "pkg.deco.x_shout__mutmut_4": {"verdict": "timeout"},
    }
    (base / "mutants" / fresh.VERDICTS).write_text(json.dumps(verdicts))
    score.report(base, ["--survivors"])
    out = capsys.readouterr().out
    header, row = out.splitlines()[0].split(), out.splitlines()[1].split()
    assert header[:5] == ["module", "score", "killed", "timeout", "fresh"]
    assert row[:7] == ["pkg/deco.py", "75.0%", "1", "0", "2", "1", "0"]
    assert "fresh: 2 mutants of code run at import" in out
    assert "  pkg.deco.x_shout__mutmut_2" in out.splitlines()
    assert "  pkg.deco.x_shout__mutmut_1" not in out.splitlines()
    score.report(base, ["--retest"])
    assert capsys.readouterr().out.split() == ["pkg.deco.x_shout__mutmut_2"]
