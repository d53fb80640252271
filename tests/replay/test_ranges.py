"""Replay and archive ranges, checked before anything is read (no broker, no database):
the edges accepted, anything outside them a one-line usage error and exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.replay.ranges import RangeError, RangeSpec, parse_partition_offset


@pytest.mark.parametrize(("text", "pair"), [("0:0", (0, 0)), ("7:1200", (7, 1200))])
def test_the_smallest_partition_and_offset_are_accepted(text: str, pair: tuple[int, int]) -> None:
    assert parse_partition_offset(text, "--from-offset") == pair


@pytest.mark.parametrize("text", ["0:-1", "-1:0", "-1:-1", "0", "0:", ":0", "a:1", "0:1.5"])
def test_a_negative_or_malformed_position_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(RangeError) as refused:
        parse_partition_offset(text, "--to-offset")
    assert str(refused.value).startswith("--to-offset: ")


def test_a_range_of_one_record_is_accepted() -> None:
    """``--to-offset`` is inclusive: start == end reads that one record."""
    spec = RangeSpec.from_options(from_offset=["2:5"], to_offset=["2:5"])
    assert spec.accepts(2, 5, None) and not spec.accepts(2, 4, None)
    assert not spec.accepts(2, 6, None)


#: (options, what the one-line error says)
BAD = [
    (["--from-offset", "0:-1"], "partition and offset must be >= 0"),
    (["--from-offset", "-1:0"], "partition and offset must be >= 0"),
    (["--from-beginning", "--to-offset", "0:-1"], "partition and offset must be >= 0"),
    (["--from-offset", "0:10", "--to-offset", "0:9"], "inverted range on partition 0"),
    (["--from-offset", "0:5", "--from-offset", "0:6"], "partition 0 given twice"),
    (["--from-offset", "0x5"], "expected PARTITION:OFFSET"),
    (
        ["--from-timestamp", "2024-05-02T00:00:00Z", "--to-timestamp", "2024-05-02T00:00:00Z"],
        "--from-timestamp is not before --to-timestamp",
    ),
    (["--from-timestamp", "yesterday"], "expected an ISO 8601 time"),
    (["--from-beginning", "--partition", "-1"], "--partition"),
    (["--from-offset", "1:0", "--partition", "0"], "not in --partition"),
]


@pytest.mark.parametrize(
    ("verb", "args", "message"),
    [(verb, args, message) for verb in ("replay", "archive") for args, message in BAD],
)
def test_a_bad_range_is_a_one_line_usage_error_exit_2(
    verb: str, args: list[str], message: str, tmp_path: Path
) -> None:
    env = {
        # Nothing listens there: an error after validation would be another one.
        "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:9",
        "CONSUMERGEN_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'never.db'}",
    }
    extra = ["--output", str(tmp_path / "out.jsonl")] if verb == "archive" else []
    result = CliRunner().invoke(cli, [verb, *args, *extra], env=env)
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("Error:"), result.stderr
    assert not (tmp_path / "never.db").exists()
    assert not (tmp_path / "out.jsonl").exists()
