"""The mutation score of scripts/mutation, per module and in total (docs/mutation.md).

Reads mutmut's per-file results (``mutants/<path>.meta``) and the equivalent mutants
listed in ``docs/mutation.md`` (a mutant named there in backticks, in the section
"Equivalent mutants": they change no observable behaviour, so they are left out of the
score instead of counted as survivors).  Score = killed / (mutants - equivalent), where
killed includes timeouts (a mutant that hangs the tests is caught by them).

``--survivors`` lists the surviving mutant names too; ``--retest`` prints only the
names of the mutants to test again after tests were added (survived, no tests, not
checked), one per line, for ``scripts/mutation --retest``.  ``--group NAME`` (repeatable)
reads the results of that group's work folder (``.mutation/NAME``,
``scripts/mutation_groups.py``) instead of the tree's own ``mutants/``, one table per
group (``NAME-slow``: the ``--slow`` run, which counts only the mutants it checked, the
fast run's survivors: its "killed" are those only the broker tests kill).  Exit code 0
always: the score is a figure to read, not a gate (mutation testing is not in CI).

Mutants of code run at import, which mutmut left alive and ``scripts/mutation_fresh.py``
killed in a fresh interpreter (``mutants/fresh-verdicts.json``), are counted in a column
of their own, "fresh", and caught in the score like "killed"; a line under the table
says how many, so the figure never hides which verdicts are not mutmut's.
"""

from __future__ import annotations

import fnmatch
import json
import re
import sys
import tomllib
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS |= {36: "timeout", 24: "timeout", -24: "timeout", 152: "timeout", 255: "timeout"}
COLUMNS = ("killed", "timeout", "fresh", "survived", "no tests", "equivalent", "other")
#: What scripts/mutation_fresh.py writes in a work folder's ``mutants/``.
FRESH = "fresh-verdicts.json"


def fresh_kills(base: Path) -> set[str]:
    """The mutants killed (or timed out) in a fresh interpreter by scripts/mutation_fresh.py."""
    path = base / "mutants" / FRESH
    if not path.exists():
        return set()
    verdicts: dict[str, dict[str, object]] = json.loads(path.read_text())
    return {name for name, v in verdicts.items() if v["verdict"] in {"killed", "timeout"}}


def equivalent_mutants() -> set[str]:
    doc = ROOT / "docs" / "mutation.md"
    text = doc.read_text(encoding="utf-8") if doc.exists() else ""
    section = text.split("## Equivalent mutants", 1)[1] if "## Equivalent mutants" in text else ""
    section = section.split("\n## ", 1)[0]
    return set(re.findall(r"`(service\.[^`\s]+__mutmut_\d+)`", section))


def modules(base: Path) -> list[str]:
    """The mutated modules of the run in ``base``: its ``only_mutate`` (paths or globs),
    as the files mutmut wrote results for (a glob names every file it matches)."""
    config = tomllib.loads((base / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = list(config["tool"]["mutmut"]["only_mutate"])
    results = sorted(
        p.relative_to(base / "mutants").as_posix().removesuffix(".meta")
        for p in (base / "mutants").rglob("*.py.meta")
    )
    found = [p for pattern in patterns for p in results if fnmatch.fnmatchcase(p, pattern)]
    return list(dict.fromkeys(found))


def main(argv: list[str]) -> int:
    groups = [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg == "--group"]
    if not groups:
        return report(ROOT, argv)
    for group in groups:
        if "--retest" not in argv:
            print(f"\ngroup {group}:")
        report(ROOT / ".mutation" / group, argv)
    return 0


def report(base: Path, argv: list[str]) -> int:
    """The table (or the names ``--retest`` asks for) of the run in ``base``."""
    equivalent = equivalent_mutants()
    fresh = fresh_kills(base)
    total: Counter[str] = Counter()
    survivors: list[str] = []
    retest: list[str] = []
    rows = []
    if not (base / "pyproject.toml").exists():
        print(f"mutation: no results in {base} (run scripts/mutation first)")
        return 0
    for path in modules(base):
        meta = base / "mutants" / f"{path}.meta"
        if not meta.exists():
            continue
        codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        counts: Counter[str] = Counter()
        for name, code in sorted(codes.items()):
            if code is None and base.name.endswith("-slow"):
                continue  # a --slow run checks the fast run's survivors only
            status = "not checked" if code is None else STATUS.get(code, "other")
            if name in equivalent:
                status = "equivalent"
            elif status in {"survived", "no tests"} and name in fresh:
                status = "fresh"
            elif status == "survived":
                survivors.append(name)
            if status in {"survived", "no tests", "not checked"}:
                retest.append(name)
            counts[status if status in COLUMNS else "other"] += 1
        rows.append((path, counts))
        total.update(counts)
    if "--retest" in argv:
        print("\n".join(retest))
        return 0
    if not rows:
        print("mutation: no results in mutants/ (run scripts/mutation first)")
        return 0
    rows.append(("total", total))
    width = max(34, *(len(path) for path, _ in rows))
    print(f"{'module':{width}} {'score':>7} " + " ".join(f"{c:>10}" for c in COLUMNS))
    for path, counts in rows:
        caught = counts["killed"] + counts["timeout"] + counts["fresh"]
        counted = sum(counts.values()) - counts["equivalent"]
        score = f"{100 * caught / counted:6.1f}%" if counted else "    -  "
        print(f"{path:{width}} {score:>7} " + " ".join(f"{counts[c]:>10}" for c in COLUMNS))
    if total["fresh"]:
        print(
            f"fresh: {total['fresh']} mutants of code run at import, left alive by mutmut, "
            "killed in a fresh interpreter (scripts/mutation_fresh.py)"
        )
    if "--survivors" in argv:
        print("\nsurvivors (mutmut show NAME prints the change):")
        for name in survivors:
            print(f"  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
