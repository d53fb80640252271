"""The models and the ``schemas/`` files accept and reject the same documents.

The corpus under ``corpus/`` is the shared evidence (producers in other languages can use
it too); hypothesis then throws many near-valid documents at both sides.
"""

from __future__ import annotations

import base64
import json
import string
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from contract_schemas import CORPUS, DEAD_LETTER, EVENT, OUTCOME, load, schema_accepts
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import ValidationError as PydanticValidationError

from service.apply.admission import admit
from service.contract.decode import InvalidEvent, decode_document, decode_event
from service.contract.models import (
    FAILED_REASONS,
    INVALID_REASONS,
    REJECTED_REASONS,
    DeadLetterHeaders,
    OutcomeRecord,
)
from service.domain.outcomes import DEAD_LETTER_REASONS, Reason

#: The corpus is decoded with the smallest limit the settings allow.
MAX_BYTES = 1024
VALID = sorted((CORPUS / "valid").glob("*.json"))
INVALID = sorted((CORPUS / "invalid").glob("*/*.json"))
#: Reasons decided on the bytes, before any schema can apply.
BYTE_LEVEL = {"not_json", "not_utf8", "too_large"}


def _id(path: Path) -> str:
    return f"{path.parent.name}/{path.stem}"


def model_accepts(document: Any) -> bool:
    try:
        decode_document(document)
    except InvalidEvent:
        return False
    return True


def test_corpus_covers_every_reason() -> None:
    reasons = {path.parent.name for path in INVALID}
    assert reasons == {
        "not_json",
        "not_utf8",
        "schema_violation",
        "unsupported_version",
        "too_large",
    }
    assert len(VALID) >= 15


@pytest.mark.parametrize("name", [EVENT, DEAD_LETTER, OUTCOME])
def test_schema_files_are_valid_draft_2020_12_with_valid_examples(name: str) -> None:
    schema = load(name)
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith("/" + name)
    assert schema["description"]
    assert schema["examples"]
    for example in schema["examples"]:
        assert schema_accepts(name, example), example


def test_event_schema_examples_decode_with_the_model() -> None:
    for example in load(EVENT)["examples"]:
        event = decode_document(example)
        assert event.event_id == example["event_id"]


@pytest.mark.parametrize("path", VALID, ids=_id)
def test_valid_documents_are_accepted_by_both(path: Path) -> None:
    value = path.read_bytes()
    event = decode_event(value, max_bytes=MAX_BYTES)
    document = json.loads(value)
    assert schema_accepts(EVENT, document)
    # Canonical form: lower-case UUIDs, whatever case was sent.
    assert event.event_id == document["event_id"].lower()
    assert event.consumer_uuid == document["consumer_uuid"].lower()
    # Re-encoding gives a document both sides still accept, with the same meaning.
    again = decode_event(event.to_json_bytes(), max_bytes=MAX_BYTES)
    assert again == event
    assert schema_accepts(EVENT, event.to_document())


@pytest.mark.parametrize("path", INVALID, ids=_id)
def test_invalid_documents_are_rejected_with_their_reason(path: Path) -> None:
    reason = path.parent.name
    value = path.read_bytes()
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=MAX_BYTES)
    assert caught.value.reason.value == reason
    assert "\n" not in caught.value.message
    if reason == "schema_violation":
        field = path.stem.split("--")[0]
        assert caught.value.path == ("$" if field == "_root" else f"$.{field}")
    if reason in BYTE_LEVEL:
        return
    document = json.loads(value)
    assert not schema_accepts(EVENT, document), "the schema accepts what the model rejects"


def test_byte_level_cases_are_what_they_claim() -> None:
    for path in INVALID:
        value = path.read_bytes()
        reason = path.parent.name
        if reason == "not_utf8":
            with pytest.raises(UnicodeDecodeError):
                value.decode("utf-8")
        elif reason == "too_large":
            assert len(value) > MAX_BYTES
            assert schema_accepts(EVENT, json.loads(value))  # only the size is wrong
        elif reason == "not_json":
            value.decode("utf-8")  # it is text, just not (strict, single) JSON


# --- hypothesis: near-valid documents ------------------------------------------------

_UUID = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"

uuids = st.one_of(
    st.uuids().map(str),
    st.uuids().map(lambda u: str(u).upper()),
    st.uuids().map(lambda u: u.hex),
    st.sampled_from([_UUID + "\n", "{" + _UUID + "}", _UUID[:-1] + "g", "", 7, None]),
)
texts = st.one_of(
    st.text(min_size=0, max_size=260),
    st.text(alphabet=string.ascii_uppercase + string.digits + "_", min_size=0, max_size=5),
    st.sampled_from(["a\x00", "\ud800", "ok\n", "X" * 255, "X" * 256, None, 3, True]),
)
timestamps = st.one_of(
    st.datetimes(timezones=st.timezones()).map(lambda d: d.isoformat()),
    st.datetimes().map(lambda d: d.isoformat()),
    st.sampled_from(
        [
            "2024-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "2024-05-01T12:00:00Z\n",
            "2024-05-01T12:00:00.1234567890Z",
            "1970-01-01T00:00:00-23:59",
            "2999-12-31T23:59:59.999999999+23:59",
            "2024-05-01T12:00:60Z",
            1714564800,
        ]
    ),
)
generations = st.one_of(
    st.none(),
    st.integers(min_value=-3, max_value=2**54),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.0, 5.0, 2.0**53, "1"]),
)
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "schema_version": st.sampled_from([1, 1.0, 2, 0, "1", True, None, 1.5]),
    "event_id": uuids,
    "type": st.sampled_from(["consumer.upsert", "consumer.delete", "consumer.update", None]),
    "consumer_uuid": uuids,
    "expected_generation": generations,
    "project_id": texts,
    "user_id": texts,
    "consumer_type": texts,
    "occurred_at": timestamps,
    "producer": texts,
    "unknown": st.just("x"),
}
VALID_BASE = json.loads((CORPUS / "valid" / "minimal-upsert.json").read_bytes())


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    doc = dict(VALID_BASE)
    for name in draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=3)):
        if draw(st.booleans()) and name in doc:
            del doc[name]
        else:
            doc[name] = draw(FIELDS[name])
    return doc


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents())
def test_models_and_schema_agree_on_generated_documents(document: dict[str, Any]) -> None:
    assert model_accepts(document) == schema_accepts(EVENT, document), document


# --- outsized numbers, Kafka keys, dead letters and outcomes with the new reasons -------

#: Values with numbers Python cannot hold: larger than the smallest limit, so they are
#: decoded under the default one (1 MiB).
OUTSIZED = sorted((CORPUS / "outsized").glob("*/*.json"))
KEYED = sorted((CORPUS / "keyed").glob("*.json"))
DEAD_LETTERS = sorted((CORPUS / "dead-letter").glob("*/*.json"))
OUTCOMES = sorted((CORPUS / "outcome").glob("*/*.json"))


def _json_with_decimals(value: bytes) -> Any:
    """What a JSON Schema validator in another language sees: the number, however large
    (Python's ``json`` cannot make an int of more than 4,300 digits; a Decimal it can)."""
    return json.loads(value, parse_int=Decimal, parse_float=Decimal)


@pytest.mark.parametrize("path", OUTSIZED, ids=_id)
def test_outsized_numbers_are_refused_at_their_path_by_both(path: Path) -> None:
    reason = path.parent.name
    value = path.read_bytes()
    with pytest.raises(InvalidEvent) as caught:
        decode_event(value, max_bytes=1 << 20)
    assert caught.value.reason.value == reason
    assert caught.value.path == "$." + path.stem.split("--")[0]
    assert "9999" not in caught.value.describe()
    assert not schema_accepts(EVENT, _json_with_decimals(value))


@pytest.mark.parametrize("path", KEYED, ids=_id)
def test_keyed_records_are_admitted_or_refused_with_their_reason(path: Path) -> None:
    case = json.loads(path.read_bytes())
    key = case["key"]
    if key is not None:
        key = base64.b64decode(key) if case.get("key_base64") else key.encode()
    value = json.dumps(case["value"]).encode()
    if case["reason"] is None:
        assert admit(key, value, MAX_BYTES).consumer_uuid.encode() == key
        return
    with pytest.raises(InvalidEvent) as caught:
        admit(key, value, MAX_BYTES)
    assert caught.value.reason.value == case["reason"]


def test_the_corpora_cover_every_invalid_reason_but_undecodable() -> None:
    """``undecodable`` has no corpus case by design: no known input raises anything the
    decoder does not turn into another reason (tests/contract/test_boundary.py)."""
    covered = {path.parent.name for path in INVALID + OUTSIZED}
    covered |= {json.loads(path.read_bytes())["reason"] for path in KEYED} - {None}
    assert covered == INVALID_REASONS - {"undecodable"}
    letters = {json.loads(p.read_bytes())["error.reason"] for p in DEAD_LETTERS}
    assert {"key_mismatch", "undecodable"} <= letters


def test_the_schemas_list_exactly_the_models_reasons() -> None:
    # Every reason the domain defines belongs to exactly one outcome's group.
    every_reason = {r.value for r in Reason}
    assert every_reason == INVALID_REASONS | FAILED_REASONS | REJECTED_REASONS
    assert len(every_reason) == len(INVALID_REASONS) + len(FAILED_REASONS) + len(REJECTED_REASONS)
    letter = load(DEAD_LETTER)["properties"]["error.reason"]["enum"]
    assert set(letter) == INVALID_REASONS | FAILED_REASONS == DEAD_LETTER_REASONS
    outcome = load(OUTCOME)["properties"]["reason"]["enum"]
    assert set(outcome) - {None} == INVALID_REASONS | FAILED_REASONS | REJECTED_REASONS
    for reason in ("key_mismatch", "undecodable"):
        assert reason in load(DEAD_LETTER)["properties"]["error.reason"]["description"]
        assert reason in load(OUTCOME)["properties"]["reason"]["description"]


@pytest.mark.parametrize("path", DEAD_LETTERS, ids=_id)
def test_dead_letter_headers_agree_with_the_model(path: Path) -> None:
    headers = json.loads(path.read_bytes())
    valid = path.parent.name == "valid"
    assert schema_accepts(DEAD_LETTER, headers) is valid
    try:
        DeadLetterHeaders.model_validate(headers)
    except PydanticValidationError:
        assert not valid
    else:
        assert valid


@pytest.mark.parametrize("path", OUTCOMES, ids=_id)
def test_outcome_records_agree_with_the_model(path: Path) -> None:
    record = json.loads(path.read_bytes())
    valid = path.parent.name == "valid"
    assert schema_accepts(OUTCOME, record) is valid
    try:
        OutcomeRecord.model_validate_json(path.read_bytes())
    except PydanticValidationError:
        assert not valid
    else:
        assert valid
