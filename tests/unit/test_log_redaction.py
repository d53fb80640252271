"""The redaction processor and pseudonym function alone: no logging configured."""

from __future__ import annotations

import copy
import enum
import hashlib
import hmac
import uuid
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from service.logging import Redactor, canonical_uuid, find_clear_uuid, pseudonym

KEY = "test-key"
U = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")


def expected(u: uuid.UUID, key: str = KEY) -> str:
    """The pseudonym computed independently, as an operator would with any HMAC tool."""
    digest = hmac.new(key.encode("utf-8"), str(u).encode("utf-8"), hashlib.sha256)
    return "uuid:" + digest.hexdigest()[:12]


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(KEY.encode())


FORMS = {
    "dashed lower": str(U),
    "dashed upper": str(U).upper(),
    "dashed mixed": "123E4567-e89B-12d3-A456-426614174000",
    "undashed lower": U.hex,
    "undashed upper": U.hex.upper(),
    "braces dashed": "{" + str(U) + "}",
    "braces undashed": "{" + U.hex.upper() + "}",
    "urn": "urn:uuid:" + str(U),
    "urn upper": "URN:UUID:" + str(U).upper(),
}


@pytest.mark.parametrize("form", FORMS.values(), ids=FORMS.keys())
def test_each_form_becomes_the_same_pseudonym(redactor: Redactor, form: str) -> None:
    assert redactor.redact_text(f"consumer={form}; next") == f"consumer={expected(U)}; next"


def test_pseudonym_function_matches_independent_hmac_for_every_form() -> None:
    assert {pseudonym(form, KEY) for form in FORMS.values()} == {expected(U)}
    assert pseudonym(U, KEY.encode()) == expected(U)


def test_pseudonym_is_stable_across_instances_and_differs_across_keys() -> None:
    first, second = Redactor(b"k1"), Redactor(b"k1")
    other = Redactor(b"k2")
    assert first.redact_uuid(U) == second.redact_uuid(U) == expected(U, "k1")
    assert other.redact_uuid(U) == expected(U, "k2") != expected(U, "k1")


def test_pseudonym_rejects_non_uuid() -> None:
    with pytest.raises(ValueError):
        pseudonym("not-a-uuid", KEY)
    assert canonical_uuid("{" + U.hex.upper() + "}") == str(U)


def test_several_uuids_in_one_text_each_replaced(redactor: Redactor) -> None:
    other = uuid.uuid4()
    text = f"moved {U} to {other.hex} ({U})"
    assert redactor.redact_text(text) == f"moved {expected(U)} to {expected(other)} ({expected(U)})"


def test_longer_hex_runs_are_pseudonymised_whole(redactor: Redactor) -> None:
    digest = hashlib.sha256(b"payload").hexdigest()
    out = redactor.redact_text(f"payload_sha256={digest}")
    assert out.startswith("payload_sha256=hex:") and len(out) == len("payload_sha256=hex:") + 12
    # A UUID glued to hex letters ("consumed" ends in d) or to another UUID never leaks.
    for text in (f"consumed{U.hex}", U.hex + uuid.uuid4().hex, f"{U}{'ab' * 10}"):
        out = redactor.redact_text(text)
        assert find_clear_uuid(out) is None, out


def test_short_hex_and_plain_text_left_alone(redactor: Redactor) -> None:
    text = "offset 0x7f3a2b1c4d50 topic t-0123456789ab and 31 hex " + "a" * 31
    assert redactor.redact_text(text) is text


class Colour(enum.StrEnum):
    RED = str(U)


class Level(enum.IntEnum):
    HIGH = 3


class Holder:
    def __init__(self, value: object) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"Holder({self.value!r})"


class Unrenderable:
    def __repr__(self) -> str:
        raise RuntimeError(f"cannot show {U}")


class WithStructlog:
    def __structlog__(self) -> dict[str, Any]:
        return {"id": U}


def test_nested_values_keys_and_objects(redactor: Redactor) -> None:
    event = {
        "event": f"applied {U}",
        str(U): "key as string",
        "nested": {"list": [U, (U.hex,)], "set": {str(U)}, "frozen": frozenset([U]), U: 1},
        "tuple_key": {(U, 1): "x"},
        "obj": Holder(U),
        "enum": Colour.RED,
        "int_enum": Level.HIGH,
        "structlog_aware": WithStructlog(),
        "plain": 5,
        "none": None,
        "flag": True,
        "ratio": 0.5,
    }
    p = expected(U)
    out = redactor(None, "info", event)
    assert out["event"] == f"applied {p}"
    assert out[p] == "key as string"
    assert out["nested"] == {"list": [p, (p,)], "set": [p], "frozen": [p], p: 1}
    assert out["tuple_key"] == {f"({p!r}, 1)": "x"}
    assert out["obj"] == f"Holder(UUID('{p}'))"
    assert out["enum"] == p
    assert out["int_enum"] == "<Level.HIGH: 3>"
    assert out["structlog_aware"] == {"id": p}
    assert (out["plain"], out["none"], out["flag"], out["ratio"]) == (5, None, True, 0.5)
    assert find_clear_uuid(repr(out)) is None


def test_bytes_values(redactor: Redactor) -> None:
    raw = str(U).encode()
    out = redactor(None, "info", {"b": raw, "ba": bytearray(U.hex.encode()), "mv": memoryview(raw)})
    assert out == {"b": f"b'{expected(U)}'", "ba": f"b'{expected(U)}'", "mv": f"b'{expected(U)}'"}


def test_unrenderable_value_is_replaced_not_leaked(redactor: Redactor) -> None:
    out = redactor(None, "info", {"event": "x", "bad": Unrenderable()})
    assert out == {"event": "x", "bad": "<unrenderable Unrenderable>"}


def test_self_referencing_structure_is_cut(redactor: Redactor) -> None:
    loop: list[Any] = [str(U)]
    loop.append(loop)
    out = redactor(None, "info", {"loop": loop})
    assert find_clear_uuid(repr(out)) is None
    assert "<nested too deep>" in repr(out)


def test_broken_mapping_gives_a_fixed_event() -> None:
    class Broken(dict[str, Any]):
        def items(self) -> Any:
            raise RuntimeError(str(U))

    out = Redactor(b"k")(None, "info", Broken(event="x"))
    assert out == {"event": "log event could not be redacted", "error": "RuntimeError"}


def test_callers_objects_are_not_mutated(redactor: Redactor) -> None:
    event: dict[str, Any] = {
        "event": str(U),
        "ids": [U, str(U)],
        "nested": {str(U): {"deep": [U.hex]}},
        "obj": Holder([str(U)]),
    }
    before = copy.deepcopy(event)
    holder_list = event["obj"].value
    redactor(None, "info", event)
    assert event["event"] == before["event"] and event["ids"] == before["ids"]
    assert event["nested"] == before["nested"]
    assert holder_list == [str(U)] and event["obj"].value is holder_list


_FORMATTERS = [
    str,
    lambda u: u.hex,
    lambda u: str(u).upper(),
    lambda u: "{" + str(u) + "}",
    lambda u: "urn:uuid:" + str(u),
]


@given(
    prefix=st.text(max_size=40),
    suffix=st.text(max_size=40),
    value=st.uuids(),
    form=st.sampled_from(_FORMATTERS),
)
@example(
    prefix="0" * 24,
    suffix="",
    value=uuid.UUID("e3e70682-c209-4cac-629f-6fbed82c07cd"),
    form=_FORMATTERS[0],
)  # a hex run ending in the UUID's first group once left the other four groups in clear
def test_no_uuid_survives_in_any_surrounding_text(
    prefix: str, suffix: str, value: uuid.UUID, form: Any
) -> None:
    out = Redactor(b"k").redact_text(prefix + form(value) + suffix)
    assert find_clear_uuid(out) is None
