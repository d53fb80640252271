"""What `consumergen verify` prints, line by line: the rebuild's table, the comparison's
verdict with thousands separators, what pruning left, and the differences (every field
of a different consumer on a row of its own, a missing value as ``-``, the table cut at
``--limit`` and saying so, nothing at ``--limit 0``); a pruned tombstone a difference
only with ``--strict`` (``verify``'s own rendering, over reports built here;
``tests/replay/test_cli_operator.py`` runs the whole verb)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from service.cli import verify
from service.replay.runner import Mode, ReplayReport
from service.replay.verify import Difference, VerifyReport

C1 = "00000000-0000-4000-8000-0000000000c1"
C2 = "00000000-0000-4000-8000-0000000000c2"
C3 = "00000000-0000-4000-8000-0000000000c3"

REBUILD = """\
rebuild of the expected state
┏━━━━━━━━━━━━━┳━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ what        ┃ reason ┃           count ┃
┡━━━━━━━━━━━━━╇━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ source      │        │ archive a.jsonl │
│ events read │        │           1,234 │
│ time        │        │          0.00 s │
│ rate        │        │      0 events/s │
└─────────────┴────────┴─────────────────┘
"""

DIFFERENCES = f"""\
┏━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━┳━━━━━━━━━━━┳━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━┳━━━━━━━━━━━━━━━━━┓
┃ consumer                             ┃ kind      ┃ field      ┃ expected (log) ┃ live (database) ┃
┡━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━╇━━━━━━━━━━━╇━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━╇━━━━━━━━━━━━━━━━━┩
│ {C1} │ missing   │            │                │                 │
│ {C2} │ different │ generation │ 2              │ 5               │
│ {C2} │ different │ user_id    │ u              │ -               │
└──────────────────────────────────────┴───────────┴────────────┴────────────────┴─────────────────┘
"""


def report(*, strict: bool = False, differences: bool = True) -> VerifyReport:
    found = [
        Difference(C1, "missing", {}),
        Difference(C2, "different", {"generation": (2, 5), "user_id": ("u", None)}),
        Difference(C3, "pruned_tombstone", {}),
    ]
    return VerifyReport(
        ReplayReport("archive a.jsonl", Mode.APPLY, read=1234),
        compared=2345,
        differences=found if differences else [],
        pruned_tombstones=1001 if differences else 0,
        inbox_pruned=1002 if differences else 0,
        strict=strict,
    )


def printed(capsys: pytest.CaptureFixture[str], found: VerifyReport, limit: int) -> str:
    verify._print(found, limit)
    out, err = capsys.readouterr()
    assert err == ""
    return "".join(line.rstrip() + "\n" for line in out.splitlines())


PRUNED = (
    "1,001 tombstones are in the log but not in the database (pruned by `db prune`; "
    "--strict counts them)\n"
    "1,002 consumers have fewer applied inbox rows than their generation (inbox rows pruned)\n"
)


def test_the_differences_whole(capsys: pytest.CaptureFixture[str]) -> None:
    verify._print(report(), 2)
    raw = capsys.readouterr().out
    assert "".join(line.rstrip() + "\n" for line in raw.splitlines()) == (
        REBUILD
        + "compared 2,345 consumers: 2 differences\n"
        + PRUNED
        + "differences\n"
        + DIFFERENCES
    )
    # The title is left-justified over its table: padded to the table's width.
    lines = raw.splitlines()
    title = lines.index("differences".ljust(len(lines[-1])))
    assert lines[title + 1].startswith("┏━")


def test_on_a_narrow_terminal_the_ids_stay_whole_and_the_rest_folds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = io.StringIO()
    console = Console(file=out, width=60, force_terminal=False, highlight=False)
    monkeypatch.setattr(verify, "stdout_console", lambda: console)
    verify._print(report(), 50)
    lines = out.getvalue().splitlines()
    table = lines[lines.index("differences".ljust(60)) :]
    assert all("…" not in line and len(line) <= 60 for line in lines)
    body = [line.split("│")[1:6] for line in table if line.startswith("│")]
    assert [cells[0].strip() for cells in body if cells[0].strip()] == [C1, C2, C2]
    columns = ["".join(cells[i].strip() for cells in body) for i in range(1, 5)]
    assert columns == ["missingdifferentdifferent", "generationuser_id", "2u", "5-"]


def test_the_differences_cut_at_the_limit_and_none_at_0(capsys: pytest.CaptureFixture[str]) -> None:
    first = printed(capsys, report(), 1).splitlines()
    assert first[first.index("differences (first 1)") + 4].split()[1:3] == [C1, "│"]
    assert C2 not in "\n".join(first)
    assert printed(capsys, report(), 0) == (
        REBUILD + "compared 2,345 consumers: 2 differences\n" + PRUNED
    )


def test_strict_counts_a_pruned_tombstone(capsys: pytest.CaptureFixture[str]) -> None:
    out = printed(capsys, report(strict=True), 50)
    assert "compared 2,345 consumers: 3 differences\n" in out
    assert f"│ {C3} │ pruned_tombstone │" in out


def test_a_clean_comparison_says_so_and_nothing_else(capsys: pytest.CaptureFixture[str]) -> None:
    assert printed(capsys, report(differences=False), 50) == (
        REBUILD + "compared 2,345 consumers: clean\n"
    )
