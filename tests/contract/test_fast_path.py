"""The decoder's fast path accepts only what the strict path accepts, as the same event.

``service.contract.fast_path`` (orjson and lean checks) decides the common records;
``validate_strictly`` (strict ``json.loads`` and the pydantic models, held to the schema
files by ``test_schema_agreement``) decides everything else and names the error. The
fast path answers an event or None, so these tests check the one way it could go
wrong: an event where the strict path has another event or an error. They also check
that the fast path is really taken for ordinary events (a fast path that always said
None would pass the first check and speed nothing up).
"""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from contract_schemas import CORPUS
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.contract import fast_path
from service.contract.decode import (
    InvalidEvent,
    decode_document,
    decode_event,
    load_json,
    validate_strictly,
)
from service.domain.events import ConsumerEvent

REFUSED = "refused"


def strict(value: bytes) -> ConsumerEvent | str:
    try:
        return validate_strictly(load_json(value))
    except InvalidEvent:
        return REFUSED


def same(event: ConsumerEvent) -> tuple[Any, ...]:
    """Everything about an event, down to its offset and its precondition's type (``==``
    on datetimes compares instants only, and ``4 == 4.0``)."""
    return (
        event,
        event.occurred_at.utcoffset(),
        type(event.expected_generation),
        event.payload_hash(),
    )


def check(value: bytes) -> ConsumerEvent | None:
    fast = fast_path.event_from_bytes(value)
    if fast is not None:
        reference = strict(value)
        assert reference != REFUSED, value
        assert isinstance(reference, ConsumerEvent)
        assert same(fast) == same(reference), value
    return fast


CORPUS_FILES = sorted((CORPUS / "valid").glob("*.json")) + sorted(
    path for path in (CORPUS / "invalid").glob("*/*.json") if path.parent.name != "too_large"
)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_the_corpus_decides_alike(path: Path) -> None:
    value = path.read_bytes()
    check(value)
    if path.parent.name != "valid":
        assert fast_path.event_from_bytes(value) is None


@pytest.mark.parametrize(
    "name",
    [
        "compact-one-line",
        "create-with-owner",
        "delete",
        "delete-create-precondition-null",
        "generation-max",
        "names-unicode-255",
        "timestamp-nanoseconds",
        "timestamp-lower-case-t-z",
        "uuid-upper-case",
    ],
)
def test_ordinary_events_take_the_fast_path(name: str) -> None:
    value = (CORPUS / "valid" / f"{name}.json").read_bytes()
    assert check(value) is not None


GOOD_UUIDS = ["6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34", "6F1C2B9E-3D4A-4C1E-9B7A-2E5F8D0C1A34"]
BAD_UUIDS = [
    "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34\n",
    "6f1c2b9e3d4a4c1e9b7a2e5f8d0c1a34",
    "{6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34}",
    "6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a3",
    "",
    7,
    None,
]
GOOD_TEXTS = ["p", "x" * 255, "é,ü ✓", "a,b,,c", "line\nbreak", " ", "😀" * 255]
BAD_TEXTS = ["", "x" * 256, "a\x00b", None, 5, True]
#: Per field: values the contract accepts, values it refuses.
POOLS: dict[str, tuple[list[Any], list[Any]]] = {
    "schema_version": ([1], [1.0, 2, 0, "1", True, None, 10**30]),
    "event_id": (GOOD_UUIDS, BAD_UUIDS),
    "consumer_uuid": (GOOD_UUIDS, BAD_UUIDS),
    "type": (["consumer.upsert", "consumer.delete"], ["consumer.merge", None, 1]),
    "occurred_at": (
        [
            "2024-05-01T12:00:00Z",
            "2024-05-01t12:00:00.5z",
            "2024-05-01T12:00:00.123456789+02:00",
            "2024-05-01T12:00:00.1234567-00:30",
            "2999-12-31T23:59:59.999999999-23:59",
            "1970-01-01T00:00:00Z",
        ],
        [
            "1969-12-31T23:59:59Z",
            "2024-02-30T00:00:00Z",
            "2024-05-01T12:00:00",
            "2024-05-01T12:00:00Z\n",
            "2024-05-01 12:00:00Z",
            "2024-05-01T12:00:00.1234567890Z",
            0,
            None,
        ],
    ),
    "expected_generation": (
        [0, 7, 2**53 - 1, None, 4.0],
        [2**53, -1, 4.5, True, False, "3", 10**30, 1e400],
    ),
    "producer": (GOOD_TEXTS, BAD_TEXTS),
    "project_id": (GOOD_TEXTS, BAD_TEXTS),
    "user_id": (GOOD_TEXTS, BAD_TEXTS),
    "consumer_type": (["INSTANCE", "A_1", "X" * 255], ["instance", "", "X" * 256, "A,B", None]),
}
REQUIRED = {"schema_version", "event_id", "consumer_uuid", "type", "occurred_at"}
EXTRA = ["colour", "a,b", "Type", ""]


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid events: each field is absent, refused or odd with small odds."""
    doc: dict[str, Any] = {}
    for name, (good, bad) in POOLS.items():
        odds = draw(st.integers(0, 19))
        if (name in REQUIRED and odds == 0) or (name not in REQUIRED and odds < 10):
            continue  # absent
        doc[name] = draw(st.sampled_from(bad if odds == 1 else good))
    if draw(st.integers(0, 19)) == 0:
        doc[draw(st.sampled_from(EXTRA))] = "blue"
    return doc


@st.composite
def encodings(draw: st.DrawFn) -> bytes:
    doc = draw(documents())
    text = json.dumps(
        doc,
        ensure_ascii=draw(st.integers(0, 4)) == 0,
        indent=draw(st.sampled_from([None, 2])),
        separators=draw(st.sampled_from([(",", ":"), (", ", ": "), (" , ", " : ")])),
    )
    if doc and draw(st.integers(0, 9)) == 0:  # a duplicate key, first or last
        name = draw(st.sampled_from(sorted(doc)))
        good, bad = POOLS.get(name, (["blue"], []))
        extra = f"{json.dumps(name)}:{json.dumps(draw(st.sampled_from(good + bad)))}"
        text = (
            "{" + extra + "," + text.lstrip()[1:]
            if draw(st.booleans())
            else text.rstrip()[:-1] + "," + extra + "}"
        )
    return text.encode("utf-8", "surrogatepass")


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encodings())
def test_generated_records_decide_alike(value: bytes) -> None:
    check(value)
    # And the public entry point gives the strict path's answer either way.
    reference = strict(value)
    try:
        decoded: ConsumerEvent | str = decode_event(value, max_bytes=1 << 20)
    except InvalidEvent:
        decoded = REFUSED
    assert (reference == REFUSED) == (decoded == REFUSED)
    if isinstance(decoded, ConsumerEvent) and isinstance(reference, ConsumerEvent):
        assert same(decoded) == same(reference)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_generated_documents_decide_alike(doc: dict[str, Any]) -> None:
    fast = fast_path.event_from_document(doc)
    if fast is not None:
        assert same(fast) == same(validate_strictly(doc))


def test_a_document_from_python_with_a_lone_surrogate_goes_the_strict_way() -> None:
    doc = json.loads((CORPUS / "valid" / "create-with-owner.json").read_bytes())
    assert fast_path.event_from_document(doc) is not None
    doc["project_id"] = "bad \ud800"
    assert fast_path.event_from_document(doc) is None
    with pytest.raises(InvalidEvent) as caught:
        decode_document(doc)
    assert caught.value.path == "$.project_id"


def test_a_duplicate_key_is_refused_whichever_value_holds_commas() -> None:
    base = (CORPUS / "valid" / "create-with-owner.json").read_bytes().decode()
    doc = json.loads(base)
    for first, last in [("a,b", "c"), ("c", "a,b"), ("a", "b")]:
        text = json.dumps(doc | {"producer": first})[:-1] + f', "producer": "{last}"}}'
        assert fast_path.event_from_bytes(text.encode()) is None
        with pytest.raises(InvalidEvent, match="duplicate key"):
            decode_event(text.encode(), max_bytes=1 << 20)


def test_offsets_survive_the_fast_path() -> None:
    value = b'{"schema_version":1,"event_id":"6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",'
    value += b'"type":"consumer.delete","consumer_uuid":"0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",'
    value += b'"occurred_at":"2024-05-01T14:00:00.123456789+02:00","expected_generation":3}'
    event = check(value)
    assert event is not None
    assert event.occurred_at.utcoffset() == timedelta(hours=2)
    assert event.occurred_at_nanos == 789


def _with(**fields: Any) -> bytes:
    doc = json.loads((CORPUS / "valid" / "create-with-owner.json").read_bytes())
    doc.update(fields)
    return json.dumps(doc, ensure_ascii=False).encode()


@pytest.mark.parametrize(
    "value",
    [
        _with(producer="a,b", project_id=",", user_id="x,y,z"),  # commas inside strings
        _with(project_id="p", user_id="u", producer="q", consumer_type="A"),  # one character
        _with(expected_generation=0),
        _with(expected_generation=2**53 - 1),
        _with(project_id="é ✓"),
    ],
    ids=["commas-in-strings", "one-character", "generation-0", "generation-max", "non-ascii"],
)
def test_ordinary_events_at_the_limits_take_the_fast_path(value: bytes) -> None:
    assert check(value) is not None


def test_a_u_escape_goes_the_strict_way() -> None:
    value = _with(project_id="é").replace("é".encode(), b"\\u00e9")
    assert b"\\u00e9" in value
    assert fast_path.event_from_bytes(value) is None
    assert decode_event(value, max_bytes=1 << 20).project_id == "é"


@pytest.mark.parametrize("kind", [[], {}, ["consumer.upsert"], 1, None])
def test_a_type_of_another_json_kind_is_refused_as_invalid(kind: Any) -> None:
    value = _with(type=kind)
    assert fast_path.event_from_bytes(value) is None
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=1 << 20)
    assert caught.value.path == "$.type"
