"""Redaction's rules for the shape of a logged value: how deep it looks (24 levels are kept,
the 25th becomes ``<nested too deep>``, the event dict itself not counted), what becomes
of each container and key, and the shortest text that can hold a UUID (32 characters:
``uuid.hex``) being looked at, not skipped."""

from __future__ import annotations

import hashlib
import hmac
import uuid
from typing import Any

import pytest

from service.logging import Redactor

KEY = b"shape-key"
U = uuid.UUID("123e4567-e89b-12d3-a456-426614174000")
P = "uuid:" + hmac.new(KEY, str(U).encode(), hashlib.sha256).hexdigest()[:12]
TOO_DEEP = "<nested too deep>"


@pytest.fixture
def redactor() -> Redactor:
    return Redactor(KEY)


def wrap(levels: int, inner: Any, container: str) -> Any:
    value = inner
    for _ in range(levels):
        value = (
            {"a": value} if container == "dict" else (value,) if container == "tuple" else [value]
        )
    return value


def unwrap(value: Any) -> tuple[int, Any]:
    levels = 0
    while isinstance(value, dict | list | tuple):
        value = value["a"] if isinstance(value, dict) else value[0]
        levels += 1
    return levels, value


@pytest.mark.parametrize("container", ["list", "tuple", "dict"])
def test_twenty_four_levels_are_kept_the_twenty_fifth_is_cut(
    redactor: Redactor, container: str
) -> None:
    kept = redactor.redact_value(wrap(24, str(U), container))
    assert unwrap(kept) == (24, P)
    assert type(kept) is {"list": list, "tuple": tuple, "dict": dict}[container]
    cut = redactor.redact_value(wrap(25, str(U), container))
    levels, inner = unwrap(cut)
    assert (levels, str(inner), repr(inner)) == (24, TOO_DEEP, TOO_DEEP)


def test_the_event_dict_itself_is_not_a_level(redactor: Redactor) -> None:
    kept = redactor(None, "info", wrap(25, str(U), "dict"))
    assert unwrap(kept) == (25, P)
    cut = redactor(None, "info", wrap(26, str(U), "dict"))
    assert unwrap(cut)[0] == 25 and str(unwrap(cut)[1]) == TOO_DEEP
    listed = redactor(None, "info", {"k": wrap(24, str(U), "list")})
    assert unwrap(listed["k"]) == (24, P)


def test_a_value_of_exactly_one_uuid_hex_is_redacted(redactor: Redactor) -> None:
    assert len(U.hex) == 32
    assert redactor.redact_text(U.hex) == P
    assert redactor(None, "info", {"id": U.hex, U.hex: "v"}) == {"id": P, P: "v"}
    assert redactor.redact_value([U.hex]) == [P]


def test_text_too_short_for_a_uuid_is_returned_as_is(redactor: Redactor) -> None:
    short = "0123456789abcdef0123456789abcde"  # 31 hex digits
    assert redactor.redact_text(short) is short
    dashes = "0123456789abcdef-0123456789abcde!"  # 32 characters, 31 hex digits
    assert redactor.redact_text(dashes) is dashes


def test_containers_become_plain_lists_tuples_and_dicts(redactor: Redactor) -> None:
    out = redactor.redact_value({"s": {str(U)}, "f": frozenset([U]), "t": (U,), "l": [U]})
    assert out == {"s": [P], "f": [P], "t": (P,), "l": [P]}
    assert type(out["t"]) is tuple and type(out["s"]) is list and type(out["f"]) is list


def test_keys_keep_their_type_when_plain_and_become_text_otherwise(redactor: Redactor) -> None:
    out = redactor(None, "info", {1: "one", None: "none", U: "uuid", (U, 2): "pair"})
    assert out == {1: "one", None: "none", P: "uuid", f"({P!r}, 2)": "pair"}
    assert redactor.redact_value({2.5: U}) == {2.5: P}


def test_plain_values_pass_through_unchanged(redactor: Redactor) -> None:
    values = [0, -1, 2.5, True, False, None]
    assert redactor.redact_value(values) == values
    for value in values:
        assert redactor.redact_value(value) is value


def test_an_object_that_cannot_even_name_its_type_gets_a_fixed_placeholder(
    redactor: Redactor,
) -> None:
    class Nameless(type):
        def __getattribute__(cls, name: str) -> Any:
            if name == "__qualname__":
                raise RuntimeError(str(U))
            return super().__getattribute__(name)

    class Hostile(metaclass=Nameless):
        def __repr__(self) -> str:
            raise RuntimeError(str(U))

    out = redactor(None, "info", {"v": Hostile()})
    assert out == {"v": "<unrenderable object>"}


def test_a_hex_run_ending_in_a_uuid_first_group_splits_there_and_only_there(
    redactor: Redactor,
) -> None:
    digest = hashlib.sha256(b"x").hexdigest()
    hex_p = "hex:" + hmac.new(KEY, digest.encode(), hashlib.sha256).hexdigest()[:12]
    # A digest followed by a dash and text that is not the rest of a UUID: one run.
    assert redactor.redact_text(digest + "-not-a-uuid-at-all") == hex_p + "-not-a-uuid-at-all"
    # Digits, then a dashed UUID with something after it: the digits stay, the UUID goes.
    for after in ("x", "-", " and more"):
        text = "0" * 24 + str(U) + after
        assert redactor.redact_text(text) == "0" * 24 + P + after


def test_a_structlog_form_that_returns_itself_is_cut_by_depth_not_recursion(
    redactor: Redactor,
) -> None:
    class Itself:
        def __structlog__(self) -> Any:
            return self

    assert str(redactor(None, "info", {"v": Itself()})["v"]) == TOO_DEEP


def test_a_key_deep_down_is_cut_by_the_same_depth(redactor: Redactor) -> None:
    out = redactor.redact_value(wrap(23, {(U,): 1}, "dict"))
    levels, inner = 0, out
    while "a" in inner:
        inner, levels = inner["a"], levels + 1
    assert (levels, inner) == (23, {TOO_DEEP: 1})


def test_the_pseudonym_cache_is_bounded() -> None:
    redactor = Redactor(KEY)
    for _ in range(4100):
        redactor.redact_text(uuid.uuid4().hex)
    info = redactor._uuid_pseudonym.cache_info()  # type: ignore[attr-defined]
    assert (info.maxsize, info.currsize) == (4096, 4096)


def _keyed(kind: str, text: str) -> str:
    return kind + hmac.new(KEY, text.encode(), hashlib.sha256).hexdigest()[:12]


@pytest.mark.parametrize("digits", [31, 32, 33])
def test_hex_digits_glued_before_a_dashed_uuid(redactor: Redactor, digits: int) -> None:
    """The dashed UUID is the identifier; what precedes it is a run of its own, kept when
    shorter than a UUID, a UUID's pseudonym at exactly 32, a ``hex:`` one beyond."""
    run = "a" * digits
    if digits < 32:
        before = run
    elif digits == 32:
        before = _keyed("uuid:", str(uuid.UUID(run)))
    else:
        before = _keyed("hex:", run)
    assert redactor.redact_text(f"id {run}{U} end") == f"id {before}{P} end"


def test_hex_digits_glued_after_a_dashed_uuid_get_a_second_pass(redactor: Redactor) -> None:
    """The pseudonym's 12 hex digits and the 20 that followed the UUID make a new 32-digit
    window: it is pseudonymised too (nothing UUID-shaped is left in clear)."""
    text = "0" * 24 + str(U) + "b" * 20 + " end"
    window = P.removeprefix("uuid:") + "b" * 20
    expected = "0" * 24 + "uuid:" + _keyed("uuid:", str(uuid.UUID(window))) + " end"
    assert redactor.redact_text(text) == expected


def test_text_with_a_lone_surrogate_is_still_redacted(redactor: Redactor) -> None:
    assert redactor.redact_text(f"\ud800 {U}") == f"\ud800 {P}"
    assert redactor(None, "info", {"event": f"\udfff {U.hex}"}) == {"event": f"\udfff {P}"}


U2 = uuid.UUID("e3e70682-c209-4cac-629f-6fbed82c07cd")
P2 = _keyed("uuid:", str(U2))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # After a split hex run, the scan goes on to the next UUID.
        ("0" * 24 + f"{U} and {U2}", "0" * 24 + f"{P} and {P2}"),
        # A urn: right after another match, and one at another offset than 9.
        (f"{U.hex}urn:uuid:{U2}", P + P2),
        (f"id urn:uuid:{U}", f"id {P}"),
        # Braces only when both are there, and never wrapping around the text's ends.
        (f"id {U}}}", f"id {P}}}"),
        (f"{U}}} {{", f"{P}}} {{"),
        (f"{{{U} }}", f"{{{P} }}"),
    ],
    ids=["after-split", "urn-adjacent", "urn-offset", "closing-only", "ends", "opening-only"],
)
def test_wrappers_and_neighbours(redactor: Redactor, text: str, expected: str) -> None:
    assert redactor.redact_text(text) == expected
