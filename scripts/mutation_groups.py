"""The groups of scripts/mutation: every module of ``service/`` in one group (or left out,
with the reason), each group with the fast tests that exercise it (docs/mutation.md).

A group runs in a work folder of its own, ``.mutation/GROUP/`` (git-ignored): a copy of
the tree (``service``, ``tests`` and the files the tests read) and a ``pyproject.toml``
whose ``[tool.mutmut]`` names the group's modules and tests, generated here from the
project's own (its other keys, the pytest arguments and the timeout, stay as written
there).  So the groups never share mutmut's state, several can be kept side by side,
and ``pyproject.toml`` is never edited to switch groups.

    python scripts/mutation_groups.py --list            the groups
    python scripts/mutation_groups.py --prepare GROUP [--fresh] [--slow]
                                                        (re)write .mutation/GROUP, print it
    python scripts/mutation_groups.py --modules GROUP   the group's modules, one a line
    python scripts/mutation_groups.py --expand NAME...  the groups NAME stands for
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / ".mutation"
#: What a work folder holds besides ``service`` and ``tests``: files the tests read.
COPIED = ("schemas", "docs", "deploy")


@dataclass(frozen=True)
class Group:
    modules: tuple[str, ...]
    #: The fast tests (``-m "not kafka"``) that exercise the modules: the figures.
    tests: tuple[str, ...]
    about: str
    #: Added for ``scripts/mutation --slow``: the broker tests that exercise them too.
    slow_tests: tuple[str, ...] = ()


GROUPS: dict[str, Group] = {
    "core": Group(
        (
            "service/domain/rules.py",
            "service/apply/applier.py",
            "service/store/writes.py",
            "service/store/errors.py",
            "service/failures.py",
            "service/contract/decode.py",
            "service/contract/models.py",
            "service/logging/redaction.py",
            "service/contract/fast_path.py",
        ),
        ("tests/apply", "tests/store", "tests/contract", "tests/unit"),
        "the rules, the applier, the store's writes, decoding, failure classes, redaction",
        ("tests/daemon", "tests/replay"),
    ),
    "contract": Group(
        (
            "service/domain/consumer.py",
            "service/domain/errors.py",
            "service/domain/events.py",
            "service/domain/inbox.py",
            "service/domain/outcomes.py",
            "service/contract/records.py",
            "service/contract/replies.py",
            "service/contract/state.py",
            "service/apply/admission.py",
            "service/apply/dryrun.py",
            "service/logging/setup.py",
            "service/event_loop.py",
        ),
        ("tests/contract", "tests/apply", "tests/unit"),
        "the domain types, the wire records and reply headers, admission, the dry run, logging",
        ("tests/daemon", "tests/producer", "tests/replay"),
    ),
    "store": Group(
        (
            "service/store/unit_of_work.py",
            "service/store/sqlite_writer.py",
            "service/store/postgresql_unit.py",
            "service/store/asyncpg_driver.py",
            "service/apply/group.py",
            "service/store/reads.py",
            "service/store/owners.py",
            "service/store/prune.py",
            "service/store/durability.py",
            "service/store/engine.py",
            "service/store/migrate.py",
            "service/store/schema.py",
            "service/store/dialects/*",
        ),
        ("tests/store", "tests/apply", "tests/unit", "tests/replay/test_verify_fields.py"),
        "the database edge but the writes: unit of work, reads, prune, durability, dialects, "
        "SQLite's writer and group commit, PostgreSQL's unit of work",
        ("tests/daemon/test_database_outage.py", "tests/replay"),
    ),
    # The daemon in seven parts (``scripts/mutation daemon`` runs them all, one after the
    # other): as one group its 3,627 mutants against every daemon test needed hours on two
    # cores.  Each part names only the fast tests that drive its modules, so mutmut's stats
    # step and each mutant's run stay short; the daemon-over-fakes tests
    # (service/testing/fake_edges.py) reach nearly every module, so they are named only
    # where they are what holds the part's rules.
    "daemon-worker": Group(
        ("service/daemon/worker.py", "service/daemon/batch.py", "service/daemon/stages.py"),
        (
            "tests/unit/test_partition_worker.py",
            "tests/unit/test_daemon_invariants.py",
            "tests/unit/test_dead_letter_line.py",
            "tests/unit/test_stages.py",
            "tests/unit/test_daemon_fetch_failures.py",
            "tests/unit/test_daemon_rebalance_rules.py",
            "tests/tracing/test_worker_trace.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_worker_records.py",
            "tests/unit/test_outcome_messages.py",
            "tests/unit/test_worker_edges.py",
        ),
        "the partition worker: admission, apply, sinks, commit order, its stop; the batch's "
        "outcomes and dead letters; the stage timings",
        ("tests/daemon",),
    ),
    "daemon-flow": Group(
        (
            "service/daemon/fetch.py",
            "service/daemon/host.py",
            "service/daemon/commits.py",
            "service/daemon/committed_log.py",
            "service/daemon/retries.py",
            "service/daemon/step_retry.py",
            "service/daemon/ports.py",
        ),
        (
            "tests/unit/test_daemon_invariants.py",
            "tests/unit/test_daemon_fetch_failures.py",
            "tests/unit/test_commit_coalescing.py",
            "tests/unit/test_committed_log.py",
            "tests/unit/test_daemon_retries.py",
            "tests/unit/test_step_retry.py",
            "tests/unit/test_partition_worker.py",
            "tests/unit/test_daemon_rebalance_rules.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_fetch_still_current.py",
            "tests/unit/test_daemon_host.py",
            "tests/unit/test_fetch_loop.py",
            "tests/unit/test_worker_config.py",
        ),
        "between the workers and Kafka: the fetch loop, the host's reports, offset commits, "
        "infrastructure retries",
        ("tests/daemon",),
    ),
    "daemon-app": Group(
        ("service/daemon/app.py",),
        (
            "tests/unit/test_daemon_kafka_edges.py",
            "tests/unit/test_daemon_invariants.py",
            "tests/unit/test_daemon_rebalance_rules.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_daemon_fetch_failures.py",
            "tests/unit/test_daemon_probes.py",
            "tests/unit/test_stalls.py",
            "tests/unit/test_daemon_postgres_edges.py",
            "tests/unit/test_daemon_listening.py",
            "tests/unit/test_daemon_stopping.py",
            "tests/unit/test_daemon_running.py",
        ),
        "the daemon itself: its edges, the clients' start and stop, its tasks, its shutdown",
        ("tests/daemon", "tests/integration"),
    ),
    "daemon-lifecycle": Group(
        (
            "service/daemon/signals.py",
            "service/daemon/membership.py",
            "service/daemon/pauses.py",
            "service/daemon/outage.py",
            "service/daemon/stalls.py",
            "service/daemon/liveness.py",
        ),
        (
            "tests/unit/test_run_daemon_signals.py",
            "tests/unit/test_daemon_rebalance_rules.py",
            "tests/unit/test_daemon_invariants.py",
            "tests/unit/test_stalls.py",
            "tests/unit/test_readiness_and_liveness.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_run_daemon_exits.py",
            "tests/unit/test_broker_outage.py",
            "tests/unit/test_pause_reasons.py",
            "tests/unit/test_membership.py",
        ),
        "the daemon's life: signals, rebalances, pauses, broker outages, stalls, the heartbeat",
        ("tests/daemon", "tests/integration"),
    ),
    "daemon-startup": Group(
        ("service/daemon/startup.py", "service/daemon/probes.py", "service/daemon/listeners.py"),
        (
            "tests/unit/test_daemon_probes.py",
            "tests/unit/test_daemon_startup.py",
            "tests/unit/test_probe_rules.py",
            "tests/unit/test_listener_rules.py",
            "tests/daemon/test_listeners.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_daemon_rebalance_rules.py",
            "tests/unit/test_stalls.py",
            "tests/unit/test_probe_verdicts.py",
        ),
        "the clients' start and the schema wait, the broker and database probes, the lag, "
        "the listeners' checks",
        ("tests/daemon", "tests/integration"),
    ),
    "daemon-http": Group(
        (
            "service/daemon/http_server.py",
            "service/daemon/health.py",
            "service/daemon/read_api.py",
            "service/daemon/read_tokens.py",
            "service/daemon/log_limits.py",
            "service/daemon/timeline.py",
        ),
        (
            "tests/unit/test_readiness_and_liveness.py",
            "tests/unit/test_read_api_answers.py",
            "tests/unit/test_read_tokens.py",
            "tests/unit/test_log_limits.py",
            "tests/unit/test_log_setup.py",
            "tests/unit/test_timeline.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_read_api_state.py",
        ),
        "the HTTP edge: the server, /readyz and /livez, the read API and its tokens; the "
        "log limits, the timeline",
        ("tests/daemon", "tests/producer/test_read_client.py"),
    ),
    "daemon-metrics": Group(
        ("service/daemon/metrics.py",),
        (
            "tests/unit/test_metrics.py",
            "tests/unit/test_daemon_retries.py",
            "tests/unit/test_stages.py",
            "tests/unit/test_daemon_reports.py",
            "tests/unit/test_readiness_and_liveness.py",
            "tests/unit/test_metrics_catalogue.py",
        ),
        "the Prometheus series: names, help, labels, what each counts",
        ("tests/daemon",),
    ),
    "sinks": Group(
        ("service/sinks/*",),
        ("tests/unit",),
        "dead letters (and their fitting) and outcome records",
        ("tests/daemon", "tests/producer"),
    ),
    "kafka": Group(
        ("service/kafka/*",),
        ("tests/unit", "tests/contract"),
        "the Kafka client edge: options, TLS, topics, partitioning, record parsing",
        ("tests/daemon", "tests/integration", "tests/replay"),
    ),
    "producer": Group(
        ("service/producer/*",),
        ("tests/unit", "tests/producer"),
        "the producer API: events, the read-modify-write loop, replies, the read client",
        (),
    ),
    "replay": Group(
        ("service/replay/*",),
        ("tests/replay", "tests/unit"),
        "replay, archive, verify, ranges",
        (),
    ),
    "config": Group(
        ("service/config.py",),
        ("tests/unit",),
        "the settings and their bounds",
        ("tests/integration",),
    ),
    "cli": Group(
        ("service/cli/*",),
        ("tests/unit", "tests/replay", "tests/store"),
        "the command line: arguments, exit codes, tables",
        ("tests/producer", "tests/integration"),
    ),
    "tracing": Group(
        ("service/tracing/*", "service/logging/trace_ids.py"),
        ("tests/tracing", "tests/unit"),
        "traces: OTEL_* set-up, trace context in Kafka headers, spans, their redaction",
        ("tests/tracing",),
    ),
}

#: Names that stand for several groups, run (and scored) one after the other.
ALIASES: dict[str, tuple[str, ...]] = {
    "daemon": tuple(name for name in GROUPS if name.startswith("daemon-")),
}


def expand(names: list[str]) -> list[str]:
    """``names`` with each alias replaced by its groups (``daemon``: its seven parts)."""
    return [group for name in names for group in ALIASES.get(name, (name,))]


#: Modules no group mutates, and why (docs/mutation.md says the same).
LEFT_OUT: dict[str, str] = {
    "service/embedded/*": "the local Kafka and PostgreSQL launchers: test machinery, run "
    "by every test session, exercised by every broker test and by none fast",
    "service/testing/*": "public test support (the model, fixtures' helpers), never run "
    "by the service",
    "service/store/migrations/*": "Alembic's environment and the migration scripts: every "
    "database test runs them (tests/store/test_store_schema.py compares the result with "
    "the tables), and their upgrade steps are data, not logic",
    "service/__main__.py": "one line: python -m service runs the CLI",
    "service/__init__.py": "the package's docstring and version",
    "service/*/__init__.py": "package docstrings and re-exports (a group whose glob "
    "covers its package's __init__ mutates it all the same)",
}


def owner(module: str) -> str:
    """The group that mutates ``module`` (a path under service/), or ``left out``; a
    group's own pattern wins over ``LEFT_OUT``."""
    found = [name for name, group in GROUPS.items() if _matches(module, group.modules)]
    if len(found) > 1:
        raise ValueError(f"{module} is in several groups: {found}")
    if found:
        return found[0]
    if _matches(module, tuple(LEFT_OUT)):
        return "left out"
    raise ValueError(f"{module} is in no group and not left out")


def _matches(module: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns)


def _toml_list(values: list[str] | tuple[str, ...]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def without_marker(args: list[str]) -> list[str]:
    """pytest arguments with the ``-m EXPRESSION`` pair left out."""
    kept: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
        elif arg == "-m":
            skip = True
        else:
            kept.append(arg)
    return kept


def mutmut_section(name: str, *, slow: bool = False) -> str:
    """The ``[tool.mutmut]`` of group ``name``: the project's, with its modules and tests
    (``slow``: its broker tests too, and no ``-m`` marker, for ``--slow``)."""
    group = GROUPS[name]
    base = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]
    tests = group.tests + group.slow_tests if slow else group.tests
    pytest_args = (
        without_marker(base["pytest_add_cli_args"]) if slow else base["pytest_add_cli_args"]
    )
    lines = [
        f"# Generated by scripts/mutation_groups.py for the group {name!r}"
        + (" with its broker tests" if slow else "")
        + ": do not edit.",
        "[tool.mutmut]",
        f"source_paths = {_toml_list(base['source_paths'])}",
        f"only_mutate = {_toml_list(group.modules)}",
        f"also_copy = {_toml_list(COPIED)}",
        f"timeout_multiplier = {float(base['timeout_multiplier'])}",
        # A work folder is a copy, not a git checkout: decide nothing from git.
        "use_git_change_detection = false",
        f"pytest_add_cli_args_test_selection = {_toml_list(tests)}",
        f"pytest_add_cli_args = {_toml_list(pytest_args)}",
    ]
    return "\n".join(lines) + "\n"


def pyproject_for(name: str, *, slow: bool = False) -> str:
    """The project's pyproject.toml with its ``[tool.mutmut]`` replaced by the group's."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    before, marker, after = text.partition("\n[tool.mutmut]\n")
    if not marker:
        raise ValueError("pyproject.toml has no [tool.mutmut] section")
    rest = after.split("\n[", 1)
    tail = "\n[" + rest[1] if len(rest) == 2 else ""
    return before + "\n" + mutmut_section(name, slow=slow) + tail


def prepare(name: str, *, fresh: bool, slow: bool = False) -> Path:
    """Write ``.mutation/NAME`` (``NAME-slow`` with its broker tests): a copy of the tree
    and the group's pyproject.toml.  ``fresh`` also drops its earlier results."""
    if name not in GROUPS:
        raise SystemExit(f"mutation: no group {name!r} (groups: {', '.join(GROUPS)})")
    folder = WORK / (f"{name}-slow" if slow else name)
    if fresh:
        shutil.rmtree(folder / "mutants", ignore_errors=True)
    folder.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis")
    for part in ("service", "tests", *COPIED):
        shutil.rmtree(folder / part, ignore_errors=True)
        shutil.copytree(ROOT / part, folder / part, ignore=ignore)
    (folder / "pyproject.toml").write_text(pyproject_for(name, slow=slow), encoding="utf-8")
    return folder


def every_module() -> list[str]:
    return sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "service").rglob("*.py"))


def main(argv: list[str]) -> int:
    if argv[:1] == ["--prepare"] and len(argv) >= 2:
        print(prepare(argv[1], fresh="--fresh" in argv, slow="--slow" in argv))
        return 0
    if argv[:1] == ["--expand"]:
        print("\n".join(expand(argv[1:])))
        return 0
    if argv[:1] == ["--modules"] and len(argv) == 2:
        print("\n".join(GROUPS[argv[1]].modules))
        return 0
    if argv[:1] == ["--list"]:
        for name, group in GROUPS.items():
            print(f"{name:16} {group.about}")
            print(f"{'':16} mutates {' '.join(group.modules)}")
            print(f"{'':16} tests   {' '.join(group.tests)}")
            if group.slow_tests:
                print(f"{'':16} --slow  + {' '.join(group.slow_tests)}")
        for alias, names in ALIASES.items():
            print(f"{alias:16} = {' '.join(names)}")
        print("left out: " + ", ".join(LEFT_OUT))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
