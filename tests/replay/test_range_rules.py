"""The range rules of replay and archive (service.replay.ranges), each with its exact
message: positions are non-negative, one start, ranges not inverted, times are UTC
unless they say otherwise, partitions named must exist, and an archive line is inside
the range by the same rules a topic is seeked by."""

from __future__ import annotations

import time

import pytest

from service.replay.ranges import (
    PartitionRange,
    RangeError,
    RangeSpec,
    parse_partition_offset,
    parse_timestamp,
)

NOON_UTC = 1_714_564_800_000  # 2024-05-01T12:00:00Z


@pytest.mark.parametrize(
    "text",
    [
        "2024-05-01T12:00:00Z",
        "2024-05-01T12:00:00",  # naive: UTC
        "2024-05-01T14:00:00+02:00",
        "  2024-05-01T12:00:00Z\n",
        "2024-05-01 12:00:00+00:00",
    ],
)
def test_a_time_is_kafka_milliseconds_utc_unless_it_says_otherwise(text: str) -> None:
    assert parse_timestamp(text, "--from-timestamp") == NOON_UTC


def test_a_time_keeps_its_milliseconds() -> None:
    assert parse_timestamp("2024-05-01T12:00:00.123Z", "--to-timestamp") == NOON_UTC + 123


def test_a_bad_time_names_the_option_and_an_example() -> None:
    with pytest.raises(RangeError) as refused:
        parse_timestamp("yesterday", "--to-timestamp")
    assert str(refused.value) == (
        "--to-timestamp: expected an ISO 8601 time, e.g. 2024-05-01T12:00:00Z, not 'yesterday'"
    )


def test_bad_positions_say_what_is_expected() -> None:
    with pytest.raises(RangeError) as malformed:
        parse_partition_offset("0x5", "--from-offset")
    assert str(malformed.value) == (
        "--from-offset: expected PARTITION:OFFSET, e.g. 0:1200, not '0x5'"
    )
    with pytest.raises(RangeError) as negative:
        parse_partition_offset("3:-1", "--to-offset")
    assert str(negative.value) == "--to-offset: partition and offset must be >= 0 in '3:-1'"
    assert parse_partition_offset(" 3 : 4 ", "--to-offset") == (3, 4)


@pytest.mark.parametrize(
    "options",
    [
        {"from_beginning": True, "from_offset": ["0:1"]},
        {"from_beginning": True, "from_timestamp": "2024-05-01T00:00:00Z"},
        {"from_offset": ["0:1"], "from_timestamp": "2024-05-01T00:00:00Z"},
    ],
)
def test_one_start_only(options: dict[str, object]) -> None:
    with pytest.raises(RangeError) as refused:
        RangeSpec.from_options(**options)  # type: ignore[arg-type]
    assert str(refused.value) == (
        "choose one start: --from-beginning, --from-offset or --from-timestamp"
    )


def test_a_start_is_required_unless_the_source_has_one() -> None:
    with pytest.raises(RangeError) as refused:
        RangeSpec.from_options(to_offset=["0:5"])
    assert str(refused.value) == (
        "say where to start: --from-beginning, --from-offset P:O or --from-timestamp T"
    )
    spec = RangeSpec.from_options(to_offset=["0:5"], require_start=False)
    assert spec.from_beginning and spec.to_offsets == {0: 5}


def test_each_start_is_kept_as_given() -> None:
    by_offset = RangeSpec.from_options(from_offset=["0:5", "2:7"])
    assert not by_offset.from_beginning
    assert by_offset.from_offsets == {0: 5, 2: 7} and by_offset.to_offsets == {}
    assert by_offset.from_timestamp is None and by_offset.to_timestamp is None
    by_time = RangeSpec.from_options(
        from_timestamp="2024-05-01T12:00:00Z", to_timestamp="2024-05-01T12:00:01Z"
    )
    assert not by_time.from_beginning
    assert (by_time.from_timestamp, by_time.to_timestamp) == (NOON_UTC, NOON_UTC + 1000)
    assert by_time.uses_timestamps
    assert RangeSpec.from_options(from_beginning=True).from_beginning
    assert RangeSpec.from_options(from_beginning=True, partitions=[0, 3]).partitions == {0, 3}


def test_a_partition_given_twice_with_the_same_offset_is_one() -> None:
    spec = RangeSpec.from_options(from_offset=["2:5", "2:5"])
    assert spec.from_offsets == {2: 5}
    with pytest.raises(RangeError, match=r"^--to-offset: partition 2 given twice$"):
        RangeSpec.from_options(from_beginning=True, to_offset=["2:5", "2:6"])


def test_the_range_order_rules() -> None:
    with pytest.raises(RangeError) as inverted:
        RangeSpec.from_options(from_offset=["4:10", "5:0"], to_offset=["4:9", "5:0"])
    assert str(inverted.value) == (
        "inverted range on partition 4: --from-offset 10 is after --to-offset 9"
    )
    # An end on another partition than the start is no inversion.
    RangeSpec.from_options(from_offset=["4:10"], to_offset=["5:0"])
    with pytest.raises(RangeError) as times:
        RangeSpec.from_options(
            from_timestamp="2024-05-01T12:00:01Z", to_timestamp="2024-05-01T12:00:00Z"
        )
    assert str(times.value) == "inverted range: --from-timestamp is not before --to-timestamp"
    # One of the two times alone is a half-open range.
    assert RangeSpec.from_options(from_timestamp="2024-05-01T12:00:01Z").uses_timestamps
    assert RangeSpec.from_options(
        from_beginning=True, to_timestamp="2024-05-01T12:00:01Z"
    ).uses_timestamps
    assert not RangeSpec.from_options(from_beginning=True).uses_timestamps


def test_partition_options_must_agree() -> None:
    with pytest.raises(RangeError, match=r"^--partition must be >= 0$"):
        RangeSpec.from_options(from_beginning=True, partitions=[0, -1])
    assert RangeSpec.from_options(from_beginning=True, partitions=[0]).partitions == {0}
    with pytest.raises(RangeError) as outside:
        RangeSpec.from_options(from_offset=["5:0", "3:0"], to_offset=["1:9"], partitions=[1])
    assert str(outside.value) == "partition 3 has an offset option but is not in --partition"
    with pytest.raises(RangeError, match=r"^partition 2 has an offset option"):
        RangeSpec.from_options(from_beginning=True, to_offset=["2:9"], partitions=[1])


def test_the_partitions_read() -> None:
    assert RangeSpec(partitions=frozenset({2, 0})).chosen([0, 1, 2, 3]) == [0, 2]
    named = RangeSpec(from_offsets={3: 0}, to_offsets={1: 5})
    assert named.chosen([3, 2, 1, 0]) == [1, 3]
    assert RangeSpec().chosen([2, 0, 1, 1]) == [0, 1, 2]


@pytest.mark.parametrize(
    ("existing", "described"),
    [
        ([], "none"),
        ([0], "0"),
        ([0, 1], "0, 1"),
        ([0, 1, 2], "0-2"),
        ([1, 2, 3, 4], "1-4"),
        ([0, 2, 3], "0, 2, 3"),
    ],
)
def test_an_unknown_partition_names_the_ones_there_are(existing: list[int], described: str) -> None:
    with pytest.raises(RangeError) as refused:
        RangeSpec(partitions=frozenset({9, 7})).chosen(existing)
    assert str(refused.value) == f"unknown partition 7: the topic has partitions {described}"


def test_an_archive_line_is_in_the_range_by_the_topic_rules() -> None:
    spec = RangeSpec(partitions=frozenset({1, 2}), from_offsets={1: 5}, to_offsets={2: 8})
    assert not spec.accepts(0, 10, None)
    assert spec.accepts(1, 5, None) and not spec.accepts(1, 4, None)
    assert spec.accepts(2, 0, None) and spec.accepts(2, 8, None) and not spec.accepts(2, 9, None)
    everything = RangeSpec(from_beginning=True)
    assert everything.accepts(7, 0, None) and everything.accepts(0, 10**12, 0)
    named = RangeSpec(to_offsets={3: 4})
    assert named.accepts(3, 4, None) and not named.accepts(0, 0, None)
    times = RangeSpec(from_timestamp=1_000, to_timestamp=2_000)
    assert not times.accepts(0, 0, 999)
    assert times.accepts(0, 0, 1_000) and times.accepts(0, 0, 1_999)
    assert not times.accepts(0, 0, 2_000)
    assert times.accepts(0, 0, None)  # a line without a time is not filtered by time
    assert RangeSpec(to_timestamp=5).accepts(0, 0, 4) and RangeSpec(from_timestamp=5).accepts(
        0, 0, 5
    )


def test_a_resolved_range_is_never_negative() -> None:
    assert PartitionRange(0, 5, 9).size == 4
    assert PartitionRange(0, 9, 9).size == 0
    assert PartitionRange(0, 9, 5).size == 0


def test_a_naive_time_is_utc_whatever_the_machine_s_zone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        assert parse_timestamp("2024-05-01T12:00:00", "--from-timestamp") == NOON_UTC
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"from_offset": ["0:-1"]}, "--from-offset: partition and offset must be >= 0 in '0:-1'"),
        ({"from_offset": ["x"]}, "--from-offset: expected PARTITION:OFFSET, e.g. 0:1200, not 'x'"),
        ({"from_offset": ["2:1", "2:3"]}, "--from-offset: partition 2 given twice"),
        (
            {"from_beginning": True, "to_offset": ["0:-1"]},
            "--to-offset: partition and offset must be >= 0 in '0:-1'",
        ),
        (
            {"from_beginning": True, "to_offset": ["y"]},
            "--to-offset: expected PARTITION:OFFSET, e.g. 0:1200, not 'y'",
        ),
        (
            {"from_timestamp": "soon"},
            "--from-timestamp: expected an ISO 8601 time, e.g. 2024-05-01T12:00:00Z, not 'soon'",
        ),
        (
            {"from_beginning": True, "to_timestamp": "later"},
            "--to-timestamp: expected an ISO 8601 time, e.g. 2024-05-01T12:00:00Z, not 'later'",
        ),
    ],
)
def test_each_option_s_error_names_that_option(options: dict[str, object], message: str) -> None:
    with pytest.raises(RangeError) as refused:
        RangeSpec.from_options(**options)  # type: ignore[arg-type]
    assert str(refused.value) == message
