"""Re-check, each in a fresh interpreter, the mutants mutmut could not see: those of
functions that run while the modules are imported (docs/mutation.md, "The command").

mutmut 3.8.1 imports the tests once, in its main process (its stats run), and forks one
worker per mutant from there, switching the mutant on in the child.  A function called
at import (a click option decorator, a table built at module level) has already run
unmutated by then, so its mutants survive whatever the tests say; neither
``process_isolation = "forkserver"`` nor its ``forkserver_warmup`` changes that (the fork
server is forked from the same process).  So, after mutmut has finished a group:

1. *Which functions run at import*, found positively: a fresh interpreter in the group's
   ``mutants/`` folder collects the group's tests (``pytest --collect-only``, which
   imports every test module and what it imports) with mutmut's trampolines reporting
   each call, and notes for each mutated function the modules whose import called it.
2. *Which tests can see them*: the test files holding the tests mutmut recorded for
   the functions of those calling modules (``mutants/mutmut-stats.json``), whole and
   quickest first; e.g. the option ``--database-url`` is seen by the test files of the
   verbs whose modules applied it (``tests/unit/test_cli_shared_options.py`` reads
   their ``--help``).
3. Each mutant mutmut left alive (survived, or no tests) of such a function runs those
   tests in a new ``python -m pytest -x`` with ``MUTANT_UNDER_TEST`` set, so the module
   is imported with the mutant on.  The same command with no mutant must pass first
   (tried twice; else its mutants stay undecided, "no clean run", and the script exits
   1 after writing the other verdicts), so a failure is the mutant's doing:
   exit 1 (a test failed), 2 (collection interrupted: the mutant broke an import), 3
   (pytest's internal error) or 4 (a test id named but no longer collected, its module
   having failed to import) is *killed*, 0 *survived*, a run past its time limit
   *timeout* (killed, as mutmut counts it); anything else (5: no test ran) *other*.

The verdicts go to ``mutants/fresh-verdicts.json`` (dropped with the folder on a fresh
run); ``scripts/mutation_score.py`` shows them as a column of their own, "fresh", never
merged into mutmut's "killed".

    python scripts/mutation_fresh.py --group GROUP     (MUTATION_WORKERS runs at once)
    python scripts/mutation_fresh.py --folder PATH     a work folder elsewhere (a copy)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERDICTS = "fresh-verdicts.json"
#: mutmut's exit codes of a mutant it left alive (scripts/mutation_score.py's STATUS).
ALIVE = {0: "survived", 5: "no tests", 33: "no tests"}

#: Run in the ``mutants/`` folder: collect the tests with every trampoline reporting its
#: calls, and print {function: [modules whose import called it]} as JSON on the last line.
_PROBE = """
import inspect, json, os, sys
os.environ["MUTANT_UNDER_TEST"] = "stats"
sys.path.insert(0, os.getcwd())
import mutmut.mutation.trampoline as trampoline
import pytest
hits = {}
def record(name, caller=None):
    frame = inspect.currentframe()
    while frame is not None and frame.f_code.co_name != "<module>":
        frame = frame.f_back
    module = frame.f_globals.get("__name__", "?") if frame is not None else "?"
    hits.setdefault(name, set()).add(module)
trampoline.record_trampoline_hit = record
code = pytest.main(["--collect-only", "-q", *sys.argv[1:]])
print(json.dumps({"exit": int(code), "hits": {k: sorted(v) for k, v in hits.items()}}))
"""


def pytest_arguments(base: Path) -> tuple[list[str], list[str]]:
    """The group's pytest arguments and test selection, from its ``[tool.mutmut]``."""
    config = tomllib.loads((base / "pyproject.toml").read_text(encoding="utf-8"))
    mutmut = config["tool"]["mutmut"]
    return list(mutmut["pytest_add_cli_args"]), list(mutmut["pytest_add_cli_args_test_selection"])


def import_time_callers(base: Path) -> dict[str, list[str]]:
    """{mutated function: the modules whose import called it}, from a fresh collection."""
    args, selection = pytest_arguments(base)
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, "-p", "no:randomly", *args, *selection],
        cwd=base / "mutants",
        capture_output=True,
        text=True,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    found = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else None
    if found is None or found["exit"] != 0:
        raise SystemExit(
            f"mutation_fresh: collecting the tests in {base / 'mutants'} failed:\n"
            + done.stdout[-2000:]
            + done.stderr[-2000:]
        )
    hits: dict[str, list[str]] = found["hits"]
    return hits


def function_of(mutant: str) -> str:
    """``service.x.y.x_f__mutmut_3`` -> ``service.x.y.x_f`` (mutmut's key of the function)."""
    return mutant.rsplit("__mutmut_", 1)[0]


def alive(base: Path) -> list[str]:
    """The mutants mutmut left alive in the run in ``base``."""
    names = []
    for meta in sorted((base / "mutants").rglob("*.py.meta")):
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        names += [name for name, code in codes.items() if code in ALIVE]
    return names


def tests_for(callers: Iterable[str], stats: dict[str, object]) -> list[str]:
    """The test files holding a test mutmut recorded for any function of the ``callers``
    modules, whole (a test that only reads what the import built, such as a verb's
    ``--help``, reaches no function of the module, yet sits beside tests that do), the
    quickest files first (so that ``-x`` stops a killed mutant early)."""
    by_function: dict[str, list[str]] = stats["tests_by_mangled_function_name"]  # type: ignore[assignment]
    durations: dict[str, float] = stats["duration_by_test"]  # type: ignore[assignment]
    files = {
        test.split("::", 1)[0]
        for function, names in by_function.items()
        for caller in callers
        if function.startswith(caller + ".") and "." not in function[len(caller) + 1 :]
        for test in names
    }
    took = {f: sum(s for t, s in durations.items() if t.split("::", 1)[0] == f) for f in files}
    return sorted(files, key=lambda f: (took[f], f))


def verdict_of(code: int | None) -> str:
    if code is None:
        return "timeout"
    return {0: "survived", 1: "killed", 2: "killed", 3: "killed", 4: "killed"}.get(code, "other")


def run_tests(base: Path, tests: list[str], mutant: str, limit: float) -> tuple[int | None, float]:
    """pytest on ``tests`` in a new interpreter with ``mutant`` on ("" for none): its exit
    code (``None`` past ``limit`` seconds) and how long it took."""
    args, _ = pytest_arguments(base)
    env = dict(os.environ, MUTANT_UNDER_TEST=mutant)
    began = time.monotonic()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:randomly", *args, *tests],
            cwd=base / "mutants",
            env=env,
            capture_output=True,
            check=False,
            timeout=limit,
        )
    except subprocess.TimeoutExpired:
        return None, time.monotonic() - began
    return done.returncode, time.monotonic() - began


def recheck(base: Path, workers: int) -> dict[str, dict[str, object]]:
    """The fresh verdict of every mutant mutmut left alive of a function run at import."""
    callers = import_time_callers(base)
    stats = json.loads((base / "mutants" / "mutmut-stats.json").read_text())
    todo = {
        mutant: callers[function_of(mutant)]
        for mutant in alive(base)
        if function_of(mutant) in callers
    }
    selections = {mutant: tests_for(modules, stats) for mutant, modules in todo.items()}
    baseline: dict[tuple[str, ...], float | None] = {}
    for tests in {tuple(t) for t in selections.values() if t}:
        # Twice at most: a test that fails once under load decides nothing either way.
        for _ in range(2):
            code, took = run_tests(base, list(tests), "", limit=3600)
            if code == 0:
                break
        baseline[tests] = took if code == 0 else None
        if code != 0:
            print(
                f"mutation_fresh: the tests fail with no mutant (exit {code}), so their "
                f"mutants stay undecided: {' '.join(tests)}",
                file=sys.stderr,
            )

    def one(mutant: str) -> tuple[str, dict[str, object]]:
        tests = selections[mutant]
        record: dict[str, object] = {"callers": todo[mutant], "test_files": tests}
        if not tests:
            return mutant, record | {"verdict": "no tests", "exit_code": None}
        clean = baseline[tuple(tests)]
        if clean is None:
            return mutant, record | {"verdict": "no clean run", "exit_code": None}
        limit = 30 + 10 * clean
        code, took = run_tests(base, tests, mutant, limit)
        return mutant, record | {
            "verdict": verdict_of(code),
            "exit_code": code,
            "seconds": round(took, 1),
        }

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return dict(pool.map(one, sorted(todo)))


def main(argv: list[str]) -> int:
    if argv[:1] not in (["--group"], ["--folder"]) or len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    base = ROOT / ".mutation" / argv[1] if argv[0] == "--group" else Path(argv[1]).resolve()
    began = time.monotonic()
    verdicts = recheck(base, int(os.environ.get("MUTATION_WORKERS", "2")))
    (base / "mutants" / VERDICTS).write_text(json.dumps(verdicts, indent=1, sort_keys=True) + "\n")
    killed = sum(1 for v in verdicts.values() if v["verdict"] in {"killed", "timeout"})
    undecided = sum(1 for v in verdicts.values() if v["verdict"] == "no clean run")
    print(
        f"mutation_fresh: {len(verdicts)} mutants of code run at import re-checked in a fresh "
        f"interpreter, {killed} killed, {undecided} undecided (their tests failed with no "
        f"mutant), in {time.monotonic() - began:.0f}s",
        file=sys.stderr,
    )
    return 1 if undecided else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
