"""What `replay`, `archive`, `verify` and `show` share (service.cli._operator): which
failure is a usage error (2) and which a problem of the work (1), each in one line
naming the verb; the progress display on a terminal and off it; the range options."""

from __future__ import annotations

from typing import Any

import click
import pytest
from sqlalchemy.exc import OperationalError

from service.cli import _operator
from service.kafka.clients import BrokerUnavailable
from service.kafka.records import MissingCodec
from service.replay.ranges import RangeError, RangeSpec
from service.replay.report import RichProgress
from service.replay.runner import NoProgress
from service.replay.sources import SourceError
from service.store.errors import DatabaseNotFound, SchemaNotCurrentError, TransientDatabaseError


async def _raise(error: BaseException) -> None:
    raise error


@pytest.mark.parametrize(
    "error",
    [
        RangeError("unknown partition 7: the topic has partitions 0-2"),
        SourceError("topic x does not exist"),
    ],
)
def test_what_the_source_refuses_is_a_usage_error(error: BaseException) -> None:
    with pytest.raises(click.UsageError) as caught:
        _operator.run("replay", _raise(error))
    assert caught.value.message == str(error)


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (DatabaseNotFound("no SQLite database at /x.db (nothing was created)"), 2),
        (BrokerUnavailable("cannot connect the replay reader to Kafka at k:1: refused"), 1),
        (TransientDatabaseError("database away"), 1),
        (SchemaNotCurrentError("the schema is at 0001, the code needs 0002"), 1),
        (MissingCodec("cannot decode Kafka batches compressed with lz4"), 1),
    ],
)
def test_infrastructure_and_configuration_are_one_line_naming_the_verb(
    error: BaseException, code: int, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _operator.run("archive", _raise(error))
    assert caught.value.code == code
    assert capsys.readouterr().err == f"consumergen archive: {error}\n"


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        OperationalError("SELECT 1", {}, Exception("disk I/O error")),
    ],
)
def test_an_os_or_database_error_is_described_in_one_line(
    error: BaseException, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        _operator.run("verify", _raise(error))
    assert caught.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("consumergen verify: ") and err.count("\n") == 1


def test_a_bug_is_not_turned_into_an_exit_code() -> None:
    with pytest.raises(KeyError):
        _operator.run("replay", _raise(KeyError("bug")))


def test_the_work_s_answer_is_returned() -> None:
    async def answer() -> int:
        return 42

    assert _operator.run("replay", answer()) == 42


def test_a_terminal_gets_a_bar_and_no_progress_lines_and_a_pipe_the_reverse() -> None:
    bar, every = _operator.progress_for(interactive=True)
    assert isinstance(bar, RichProgress) and every == float("inf")
    plain, every = _operator.progress_for(interactive=False)
    assert isinstance(plain, NoProgress) and every == 5.0
    plain.start(10, "x")
    plain.advance(3)
    plain.stop()


def test_off_a_terminal_the_console_is_wide_and_plain() -> None:
    console = _operator.stdout_console()
    assert not console.is_terminal
    assert console.width == 160 and console.soft_wrap is False


def _params(**given: Any) -> dict[str, Any]:
    params: dict[str, Any] = {
        "from_beginning": False,
        "from_offset": (),
        "from_timestamp": None,
        "to_offset": (),
        "to_timestamp": None,
        "partitions": (),
    }
    params.update(given)
    return params


def test_the_range_options_become_a_range() -> None:
    spec = _operator.range_spec(
        _params(from_offset=("1:5",), to_offset=("1:9",), partitions=(1,)), require_start=True
    )
    assert spec == RangeSpec(from_offsets={1: 5}, to_offsets={1: 9}, partitions=frozenset({1}))
    times = _operator.range_spec(
        _params(from_timestamp="2024-05-01T12:00:00Z", to_timestamp="2024-05-01T12:00:01Z"),
        require_start=True,
    )
    assert (times.from_timestamp, times.to_timestamp) == (1_714_564_800_000, 1_714_564_801_000)
    assert _operator.range_spec(_params(), require_start=False).from_beginning
    assert _operator.range_spec(_params(from_beginning=True), require_start=True).from_beginning
    with pytest.raises(click.UsageError, match="say where to start"):
        _operator.range_spec(_params(), require_start=True)
