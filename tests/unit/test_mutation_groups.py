"""scripts/mutation's groups cover every module of service/ once (or leave it out with a
reason), name tests that exist, and generate a mutmut configuration that is the
project's own but for the group's modules and tests (docs/mutation.md)."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _groups_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "mutation_groups", ROOT / "scripts" / "mutation_groups.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("mutation_groups", module)
    spec.loader.exec_module(module)
    return module


groups = _groups_module()


def test_every_module_of_the_service_is_in_one_group_or_left_out_with_a_reason() -> None:
    owners = {module: groups.owner(module) for module in groups.every_module()}
    assert owners, "no module found"
    left_out = sorted(m for m, owner in owners.items() if owner == "left out")
    outside = ("service/embedded/", "service/testing/", "service/store/migrations/")
    for module in left_out:
        assert module.startswith(outside) or module.endswith(
            ("/__init__.py", "service/__main__.py")
        ), module
    assert all(reason.strip() for reason in groups.LEFT_OUT.values())
    assert owners["service/daemon/worker.py"] == "daemon-worker"
    assert owners["service/domain/rules.py"] == "core"


def test_daemon_stands_for_exactly_the_groups_that_own_the_daemons_modules() -> None:
    """``scripts/mutation daemon`` (and ``--score daemon``) runs every part of the daemon,
    and nothing else: the parts together are what the one daemon group was."""
    owners = {
        groups.owner(module)
        for module in groups.every_module()
        if module.startswith("service/daemon/") and not module.endswith("/__init__.py")
    }
    assert sorted(groups.expand(["daemon"])) == sorted(owners)
    assert groups.expand(["core", "daemon", "sinks"])[0] == "core"
    assert groups.expand(["core", "daemon", "sinks"])[-1] == "sinks"
    assert "daemon" not in groups.GROUPS  # an alias, never a group of its own


@pytest.mark.parametrize("name", sorted(groups.GROUPS))
def test_each_group_names_modules_and_tests_that_exist(name: str) -> None:
    group = groups.GROUPS[name]
    every = groups.every_module()
    for pattern in group.modules:
        assert any(groups._matches(m, (pattern,)) for m in every), pattern
    for tests in group.tests:
        assert (ROOT / tests).exists(), tests


@pytest.mark.parametrize("name", sorted(groups.GROUPS))
def test_a_groups_configuration_is_the_projects_with_its_modules_and_tests(name: str) -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    generated = tomllib.loads(groups.pyproject_for(name))
    mutmut = generated["tool"]["mutmut"]
    assert mutmut["only_mutate"] == list(groups.GROUPS[name].modules)
    assert mutmut["pytest_add_cli_args_test_selection"] == list(groups.GROUPS[name].tests)
    assert mutmut["pytest_add_cli_args"] == project["tool"]["mutmut"]["pytest_add_cli_args"]
    assert "not kafka" in mutmut["pytest_add_cli_args"]  # fast tests only
    assert set(groups.COPIED) <= set(mutmut["also_copy"])
    # Everything else of the project's pyproject.toml is as it was.
    del generated["tool"]["mutmut"], project["tool"]["mutmut"]
    assert generated == project


def test_the_core_group_is_what_pyproject_names() -> None:
    """``pyproject.toml``'s own ``[tool.mutmut]`` is the core group's (the run in the
    tree, as before the groups): the two lists cannot drift apart."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    mutmut = project["tool"]["mutmut"]
    assert list(groups.GROUPS["core"].modules) == mutmut["only_mutate"]
    assert list(groups.GROUPS["core"].tests) == mutmut["pytest_add_cli_args_test_selection"]
