"""The archive line, exactly (service.replay.records): what ``archive`` writes for each
kind of record, and every way a line can fail to be a record, named in one sentence
(without a broker: the archive format is plain text)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from service.replay import records as archive_records
from service.replay.records import (
    ArchiveLineError,
    SourceRecord,
    from_archive_line,
    to_archive_line,
)

EVENT = b'{"schema_version":1,"event_id":"e","type":"consumer.upsert"}'


def test_a_record_is_written_as_one_compact_line_in_a_fixed_order() -> None:
    record = SourceRecord(
        "events",
        3,
        42,
        1_714_564_800_123,
        b"consumer-key",
        EVENT,
        (("content-type", b"application/json"), ("trace", b"\xff\x00")),
    )
    assert to_archive_line(record) == (
        '{"topic":"events","partition":3,"offset":42,'
        '"timestamp":"2024-05-01T12:00:00.123Z","timestamp_ms":1714564800123,'
        '"key":"consumer-key",'
        '"value":{"schema_version":1,"event_id":"e","type":"consumer.upsert"},'
        '"headers":[{"name":"content-type","value":"application/json"},'
        '{"name":"trace","value":"/wA=","base64":true}]}'
    )


def test_the_epoch_is_a_time_and_no_time_is_none() -> None:
    at_zero = json.loads(to_archive_line(SourceRecord("t", 0, 0, 0, None, None)))
    assert at_zero == {
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "timestamp": "1970-01-01T00:00:00.000Z",
        "timestamp_ms": 0,
        "key": None,
        "value": None,
    }
    untimed = json.loads(to_archive_line(SourceRecord("t", 0, 0, None, b"k", b"\xff")))
    assert untimed == {
        "topic": "t",
        "partition": 0,
        "offset": 0,
        "key": "k",
        "value": "/w==",
        "value_base64": True,
    }


def test_a_binary_key_is_base64_and_flagged() -> None:
    doc = json.loads(to_archive_line(SourceRecord("t", 1, 2, None, b"\xfe\xff", EVENT)))
    assert (doc["key"], doc["key_base64"]) == ("/v8=", True)
    assert "value_base64" not in doc
    assert (
        from_archive_line(to_archive_line(SourceRecord("t", 1, 2, None, b"\xfe", EVENT)), "x").key
        == b"\xfe"
    )


def test_a_value_too_deep_to_write_inline_is_written_base64(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[Any] = []
    real = archive_records.dump_json

    def first_too_deep(doc: Any) -> str:
        calls.append(doc)
        if len(calls) == 1:
            raise RecursionError
        return real(doc)

    monkeypatch.setattr(archive_records, "dump_json", first_too_deep)
    doc = json.loads(to_archive_line(SourceRecord("t", 0, 1, None, b"k", EVENT)))
    assert doc["value"] == base64.b64encode(EVENT).decode() and doc["value_base64"] is True
    assert len(calls) == 2


def line(**fields: Any) -> str:
    doc: dict[str, Any] = {"partition": 0, "offset": 0, "value": None}
    doc.update(fields)
    return json.dumps({k: v for k, v in doc.items() if v is not ...})


def test_the_smallest_line_is_partition_offset_and_value() -> None:
    record = from_archive_line('{"partition": 2, "offset": 9, "value": null}', "default")
    assert record == SourceRecord("default", 2, 9, None, None, None, ())
    assert record.undecodable is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("nope", "not JSON (Expecting value at column 1)"),
        (
            '{"partition": 0,',
            "not JSON (Expecting property name enclosed in double quotes at column 17)",
        ),
        ("[" * 100_000, "not JSON (nested too deeply)"),
        ("[1]", "a line must be a JSON object"),
        ('"text"', "a line must be a JSON object"),
        ('{"partition": 0, "offset": 0}', '"value" is missing'),
        (line(partition=...), '"partition" must be an integer >= 0'),
        (line(partition=-1), '"partition" must be an integer >= 0'),
        (line(partition=True), '"partition" must be an integer >= 0'),
        (line(partition="1"), '"partition" must be an integer >= 0'),
        (line(partition=1.0), '"partition" must be an integer >= 0'),
        (line(offset=...), '"offset" must be an integer >= 0'),
        (line(offset=-5), '"offset" must be an integer >= 0'),
        (line(offset=False), '"offset" must be an integer >= 0'),
        (line(timestamp_ms=-1), '"timestamp_ms" must be an integer >= 0'),
        (line(timestamp_ms="2024"), '"timestamp_ms" must be an integer >= 0'),
        (line(topic=""), '"topic" must be a non-empty string'),
        (line(topic=7), '"topic" must be a non-empty string'),
        (line(topic=None), '"topic" must be a non-empty string'),
        (line(value=5, value_base64=True), '"value" must be a string or null'),
        (
            line(value="not base64!", value_base64=True),
            '"value" is flagged base64 but is not valid base64',
        ),
        (line(key=5), '"key" must be a string or null'),
        (line(key="%%%", key_base64=True), '"key" is flagged base64 but is not valid base64'),
        (line(headers={"a": "b"}), '"headers" must be a list'),
        (line(headers=["a"]), 'each header must be {"name": ..., "value": ...}'),
        (line(headers=[{"value": "v"}]), 'each header must be {"name": ..., "value": ...}'),
        (
            line(headers=[{"name": 1, "value": "v"}]),
            'each header must be {"name": ..., "value": ...}',
        ),
        (line(headers=[{"name": "h", "value": 1}]), "a header value must be a string or null"),
        (
            line(headers=[{"name": "h", "value": "***", "base64": True}]),
            "a header value is flagged base64 but is not valid base64",
        ),
    ],
)
def test_a_line_that_is_not_a_record_is_refused_saying_why(text: str, message: str) -> None:
    with pytest.raises(ArchiveLineError) as refused:
        from_archive_line(text, "t")
    assert str(refused.value) == message
    assert refused.value.__suppress_context__ or refused.value.__context__ is None


def test_the_zero_partition_offset_and_time_are_accepted() -> None:
    record = from_archive_line(line(timestamp_ms=0, topic="events"), "t")
    assert (record.topic, record.partition, record.offset, record.timestamp_ms) == (
        "events",
        0,
        0,
        0,
    )


def test_flags_other_than_true_leave_the_fields_as_text() -> None:
    record = from_archive_line(
        line(
            key="a2V5",
            key_base64="yes",
            value="aGk=",
            value_base64=1,
            headers=[{"name": "h", "value": "aGk=", "base64": "true"}],
        ),
        "t",
    )
    assert record.key == b"a2V5"
    assert record.value == b'"aGk="'
    assert record.headers == (("h", b"aGk="),)


def test_base64_fields_are_decoded() -> None:
    record = from_archive_line(
        line(
            key="/v8=",
            key_base64=True,
            value="AAE=",
            value_base64=True,
            headers=[{"name": "h", "value": "/w==", "base64": True}, {"name": "n", "value": None}],
        ),
        "t",
    )
    assert (record.key, record.value) == (b"\xfe\xff", b"\x00\x01")
    assert record.headers == (("h", b"\xff"), ("n", b""))


def test_a_null_value_flagged_base64_is_null_and_null_headers_are_none() -> None:
    record = from_archive_line(line(value=None, value_base64=True, headers=None), "t")
    assert (record.value, record.headers) == (None, ())


def test_a_json_value_is_replayed_compact_with_its_text_unchanged() -> None:
    record = from_archive_line(
        '{"partition": 0, "offset": 0, "value": {"name": "café \\ud83d\\ude00", "n": [1, 2.5]}}',
        "t",
    )
    assert record.value == '{"name":"café 😀","n":[1,2.5]}'.encode()


def test_lone_surrogates_in_text_fields_survive_as_they_were_written() -> None:
    record = from_archive_line(line(key="\udcff", value="\ud800"), "t")
    assert record.key == "\udcff".encode("utf-8", "surrogatepass")
    assert record.value == '"\ud800"'.encode("utf-8", "surrogatepass")


def test_a_value_too_deep_to_replay_inline_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def too_deep(doc: Any) -> str:
        raise RecursionError

    monkeypatch.setattr(archive_records, "dump_json", too_deep)
    with pytest.raises(ArchiveLineError) as refused:
        from_archive_line(line(value={"a": 1}), "t")
    assert str(refused.value) == '"value" is nested too deeply: store it base64'
