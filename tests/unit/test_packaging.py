"""Package metadata: what PyPI and an operator's inventory read, and a version from git.

setuptools-scm derives the version at build time; these tests run it as a build would
(``pyproject.toml``'s ``[tool.setuptools_scm]``) on a clone without tags and on a tree
without git at all, the two cases that must still install.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import metadata
from pathlib import Path

import pytest

import service

ROOT = Path(__file__).parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_metadata_has_classifiers_urls_and_a_license_file() -> None:
    project = PYPROJECT["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    classifiers = project["classifiers"]
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Typing :: Typed" in classifiers
    assert set(project["urls"]) >= {"Homepage", "Repository", "Issues", "Documentation"}
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]
    license_text = (ROOT / "LICENSE").read_text()
    assert "Apache License" in license_text and "Version 2.0, January 2004" in license_text
    # The installed distribution says the same (the editable install in .venv).
    installed = metadata("consumer-generation-service")
    assert installed["License-Expression"] == "Apache-2.0"
    assert "Typing :: Typed" in installed.get_all("Classifier")


def test_the_installed_version_is_the_one_setuptools_scm_derived() -> None:
    assert service.__version__ == metadata("consumer-generation-service")["Version"]
    assert service.__version__ not in ("0.1.0", "0+unknown")


def _version_of(tree: Path) -> str:
    """What a build of ``tree`` would call itself (``python -m setuptools_scm`` reads
    ``pyproject.toml`` as the build backend does; in a child process, since importing it
    here would install its own log handlers in the test session)."""
    done = subprocess.run(
        [sys.executable, "-m", "setuptools_scm"],
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A clone of this repository's HEAD without any tag."""
    target = tmp_path / "clone"
    _git("clone", "--quiet", "--no-tags", str(ROOT), str(target), cwd=ROOT)
    return target


def test_a_clone_without_tags_has_a_development_version(clone: Path) -> None:
    assert (
        subprocess.run(
            ["git", "tag", "--list"], cwd=clone, capture_output=True, text=True, check=True
        ).stdout
        == ""
    )
    version = _version_of(clone)
    # setuptools-scm counts commits on top of the fallback: 0.1.0.devN+gHASH.
    assert re.fullmatch(r"0\.1\.0\.dev[0-9]+\+g[0-9a-f]+", version), version


def test_a_tag_sets_the_version(clone: Path) -> None:
    _git("-c", "user.name=t", "-c", "user.email=t@t", "tag", "-a", "v2.3.4", "-m", "r", cwd=clone)
    assert _version_of(clone) == "2.3.4"


def test_a_tree_without_git_uses_the_fallback(tmp_path: Path, clone: Path) -> None:
    tree = tmp_path / "context"
    shutil.copytree(clone, tree, ignore=shutil.ignore_patterns(".git"))
    fallback = PYPROJECT["tool"]["setuptools_scm"]["fallback_version"]
    assert _version_of(tree) == fallback
