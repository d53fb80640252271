"""The Dockerfile, .dockerignore and the lock file, read statically.

No container engine runs on the project's machines, so the image is never built here;
what an orchestrator and a reviewer rely on is checked in the files instead: two
stages, a numeric non-root user, the health port exposed and probed, SQLite on the
data volume, dependencies only from the hash-checked lock, and a build context that
is only what the Dockerfile copies.
"""

from __future__ import annotations

import fnmatch
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

ROOT = Path(__file__).parents[2]


@dataclass
class Stage:
    name: str
    #: (instruction, arguments) in order, continuation lines joined.
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def _stages() -> list[Stage]:
    text = (ROOT / "Dockerfile").read_text()
    logical = re.sub(r"\\\n", " ", text)
    stages: list[Stage] = []
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        instruction = instruction.upper()
        if instruction == "FROM":
            words = args.split()
            stages.append(Stage(words[-1] if "AS" in (w.upper() for w in words) else args))
        elif stages:
            stages[-1].instructions.append((instruction, args.strip()))
    return stages


def _env(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in stage.args("ENV"):
        for word in shlex.split(args):
            key, _, value = word.partition("=")
            env[key] = value
    return env


def test_the_image_is_multi_stage_and_the_runtime_copies_only_the_virtualenv() -> None:
    stages = _stages()
    assert [s.name for s in stages] == ["build", "runtime"]
    runtime = stages[-1]
    copies = runtime.args("COPY")
    assert copies == ["--from=build /opt/venv /opt/venv"]
    assert not any("pip install" in run for run in runtime.args("RUN"))


def test_the_runtime_user_is_numeric_and_not_root() -> None:
    runtime = _stages()[-1]
    [user] = runtime.args("USER")
    assert re.fullmatch(r"[0-9]+(:[0-9]+)?", user), f"USER {user}: runAsNonRoot needs a number"
    assert all(int(part) != 0 for part in user.split(":"))
    # The user exists with that id, and owns the data volume.
    uid = user.split(":")[0]
    run = " ".join(runtime.args("RUN"))
    assert f"--uid {uid}" in run and f"-o {uid}" in run and "/data" in run
    # It is the deploy/ manifests' runAsUser too.
    deployment = (ROOT / "deploy" / "kubernetes" / "deployment.yaml").read_text()
    assert f"runAsUser: {uid}" in deployment


def test_the_health_port_is_exposed_bound_to_all_interfaces_and_probed() -> None:
    runtime = _stages()[-1]
    env = _env(runtime)
    assert env["CONSUMERGEN_HEALTH_HOST"] == "0.0.0.0"
    assert runtime.args("EXPOSE") == [env["CONSUMERGEN_HEALTH_PORT"]]
    [healthcheck] = runtime.args("HEALTHCHECK")
    assert "/livez" in healthcheck and "CONSUMERGEN_HEALTH_PORT" in healthcheck
    assert re.search(r"--interval=\d+s", healthcheck) and re.search(r"--timeout=\d+s", healthcheck)


def test_sqlite_defaults_to_the_writable_data_volume() -> None:
    runtime = _stages()[-1]
    assert runtime.args("VOLUME") == ['["/data"]']
    assert (
        _env(runtime)["CONSUMERGEN_DATABASE_URL"] == "sqlite+aiosqlite:////data/consumergen.sqlite3"
    )
    assert runtime.args("WORKDIR") == ["/data"]


def test_dependencies_come_only_from_the_hash_checked_lock_files() -> None:
    build = _stages()[0]
    installs = [cmd for run in build.args("RUN") for cmd in run.split("&&") if "pip install" in cmd]
    assert installs
    for cmd in installs:
        words = cmd.split()
        if "--no-deps" in words:  # the project's own wheel, built from the context
            assert words[-1] == "/wheels/*.whl", cmd
            continue
        assert "--require-hashes" in words, cmd
        assert words[words.index("-r") + 1] in ("requirements.lock", "requirements-build.lock")
    assert "--no-build-isolation" in " ".join(build.args("RUN"))


def _matches(glob: str, path: str) -> bool:
    """A .dockerignore pattern matches a path when it matches the path or a parent."""
    parts = path.split("/")
    for i in range(len(parts)):
        prefix = parts[: i + 1]
        if glob.startswith("**/"):
            rest = glob.removeprefix("**/")
            if any(fnmatch.fnmatchcase("/".join(prefix[j:]), rest) for j in range(len(prefix))):
                return True
        elif fnmatch.fnmatchcase("/".join(prefix), glob):
            return True
    return False


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches decides; ``!`` re-includes."""
    verdict = False
    for pattern in patterns:
        if _matches(pattern.removeprefix("!"), path):
            verdict = not pattern.startswith("!")
    return verdict


def test_the_build_context_is_only_what_the_dockerfile_copies() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for heavy in (
        ".venv/bin/python",
        ".git/HEAD",
        ".tools/node_modules/@asyncapi/parser/package.json",
        ".local/kafka/meta.properties",
        "consumergen.sqlite3",
        "tests/conftest.py",
        "service/__pycache__/config.cpython-311.pyc",
        "service/store/x.sqlite3-wal",
    ):
        assert _ignored(heavy, patterns), heavy
    for stage in _stages():
        for copy in stage.args("COPY"):
            if copy.startswith("--from="):
                continue
            *sources, _ = copy.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                assert not _ignored(source, patterns), f"COPY {source} is not in the context"
    assert not _ignored("service/daemon/metrics.py", patterns)


def _locked(lock: str = "requirements.lock") -> dict[str, tuple[str, bool]]:
    """name -> (pinned version, has hashes) of a lock file (requirements.lock by default)."""
    text = (ROOT / lock).read_text()
    pins: dict[str, tuple[str, bool]] = {}
    for block in re.split(r"\n(?=\S)", text):
        first = block.split("\\", 1)[0].split("#", 1)[0].strip()
        if not first:
            continue
        requirement = Requirement(first)
        [spec] = requirement.specifier
        assert spec.operator == "==", first
        pins[canonicalize_name(requirement.name)] = (spec.version, "--hash=sha256:" in block)
    return pins


def test_the_lock_pins_every_runtime_dependency_within_its_range_with_hashes() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _locked()
    for line in project["dependencies"]:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run scripts/lock"
        version, hashed = pins[name]
        assert requirement.specifier.contains(version), f"{name}=={version} vs {line}"
        assert hashed, name
    # Extras pull in their own packages (aiokafka's codecs: cramjam).
    assert "cramjam" in pins
    # Nothing of the dev extra is in the image's lock.
    for dev in ("pytest", "mypy", "ruff", "hypothesis"):
        assert dev not in pins, dev


def test_the_lock_pins_the_traces_extra_so_the_image_can_trace() -> None:
    """Tracing stays off in the image until OTEL_TRACES_EXPORTER names an exporter
    (compose.yaml's daemon does); the SDK must be there for that."""
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]["traces"]
    pins = _locked()
    for line in extra:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement.name} is not in requirements.lock: run scripts/lock"
        version, hashed = pins[name]
        assert requirement.specifier.contains(version), f"{name}=={version} vs {line}"
        assert hashed, name


def test_the_build_lock_pins_the_build_backend() -> None:
    text = (ROOT / "requirements-build.lock").read_text()
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    for line in requires:
        name = canonicalize_name(Requirement(line).name)
        assert re.search(rf"^{re.escape(name)}==\S+ \\$", text, re.M), name
    assert "--hash=sha256:" in text


def test_the_runtime_has_no_pip_setuptools_or_wheel() -> None:
    """The virtualenv loses them after its last install (build stage), the base image's
    own go in the runtime stage; nothing installs anything after that."""
    build, runtime = _stages()
    commands = [cmd.strip() for run in build.args("RUN") for cmd in run.split("&&")]
    into_venv = [i for i, cmd in enumerate(commands) if cmd.startswith("/opt/venv/bin/")]
    last = commands[into_venv[-1]]
    assert last == "/opt/venv/bin/python -m pip uninstall --yes pip setuptools wheel", last
    assert all("pip install" in commands[i] for i in into_venv[:-1])
    runtime_run = " ".join(runtime.args("RUN"))
    assert re.search(
        r"python -m pip uninstall --yes (--no-cache-dir )?pip setuptools wheel", runtime_run
    )
    assert "ensurepip/_bundled" in runtime_run
    assert not any("pip install" in run for run in runtime.args("RUN"))


#: The documented build command: README's, and the Dockerfile's own comment says the same.
_BUILD = re.compile(r'docker build --build-arg VERSION="\$\((?P<version>[^)]+)\)" -t \S+ \.')


def _documented_version_command() -> str:
    [readme] = {m.group("version") for m in _BUILD.finditer((ROOT / "README.md").read_text())}
    [dockerfile] = {m.group("version") for m in _BUILD.finditer((ROOT / "Dockerfile").read_text())}
    assert readme == dockerfile, (readme, dockerfile)
    return readme


def _git(tree: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=tree,
        check=True,
        capture_output=True,
    )


def _version_in(tree: Path) -> Version:
    """Run the documented command in ``tree`` as a shell would ($(...) captures stdout),
    with this checkout's .venv standing for the tree's own."""
    command = _documented_version_command()
    if command.startswith(".venv/bin/python "):
        command = shlex.quote(sys.executable) + command.removeprefix(".venv/bin/python")
    done = subprocess.run(
        ["sh", "-c", command], cwd=tree, capture_output=True, text=True, check=True
    )
    text = done.stdout.strip()
    assert "\n" not in text, done.stdout
    return Version(text)  # InvalidVersion would fail the image's build the same way


@pytest.fixture
def repository(tmp_path: Path) -> Path:
    """A git repository with this project's setuptools-scm configuration and no tag."""
    tree = tmp_path / "repo"
    tree.mkdir()
    shutil.copy(ROOT / "pyproject.toml", tree)
    _git(tree, "init", "--quiet")
    _git(tree, "add", "pyproject.toml")
    _git(tree, "commit", "--quiet", "-m", "first")
    return tree


def test_the_documented_version_is_pep_440_untagged_on_a_tag_and_between_tags(
    repository: Path,
) -> None:
    untagged = _version_in(repository)
    assert untagged.is_devrelease and untagged.local is not None, untagged
    assert untagged.base_version == "0.1.0"
    _git(repository, "tag", "-a", "v1.2.3", "-m", "release")
    assert _version_in(repository) == Version("1.2.3")
    (repository / "change").write_text("x")
    _git(repository, "add", "change")
    _git(repository, "commit", "--quiet", "-m", "after the tag")
    between = _version_in(repository)
    assert between.base_version == "1.2.4" and between.dev == 1, between
    assert between.local is not None and between.local.startswith("g"), between
    # What the old documented command gave is no version: it would fail the build.
    described = subprocess.run(
        ["git", "describe", "--tags", "--always"],
        cwd=repository,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    with pytest.raises(InvalidVersion):
        Version(described)


def test_the_dockerfile_default_version_is_pep_440_and_passed_to_setuptools_scm() -> None:
    build = _stages()[0]
    [default] = [a for a in build.args("ARG") if a.startswith("VERSION=")]
    Version(default.removeprefix("VERSION="))
    assert any(
        'SETUPTOOLS_SCM_PRETEND_VERSION_FOR_CONSUMER_GENERATION_SERVICE="${VERSION}"' in run
        for run in build.args("RUN")
    )


def test_the_dev_lock_pins_what_ci_installs_at_the_images_versions() -> None:
    """scripts/bootstrap installs requirements-dev.lock, so a clean clone tests with the
    versions main was tested with: every dev and runtime requirement pinned within its
    range, with hashes, and each runtime package at the image's own pin."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    dev = _locked("requirements-dev.lock")
    wanted = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for line in wanted:
        requirement = Requirement(line)
        name = canonicalize_name(requirement.name)
        if name == canonicalize_name(project["name"]):
            continue  # the package itself: installed from the clone, not the lock
        assert name in dev, f"{requirement.name} is not in requirements-dev.lock: run scripts/lock"
        version, hashed = dev[name]
        assert requirement.specifier.contains(version), f"{name}=={version} vs {line}"
        assert hashed, name
    for name, (version, _) in _locked().items():
        assert dev[name][0] == version, f"{name}: dev lock {dev[name][0]}, image lock {version}"
    bootstrap = (ROOT / "scripts" / "bootstrap").read_text()
    assert "--require-hashes -r requirements-dev.lock" in bootstrap
