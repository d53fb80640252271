"""The payload hash's bytes are the standard library's, byte for byte, however they are made.

Every inbox row stores the SHA-256 of ``json.dumps(sort_keys=True, separators=(",", ":"),
ensure_ascii=False)``; a redelivered event is a duplicate only if its hash is the same.
``canonical_json`` writes those bytes with orjson where orjson spells them identically
and with the standard library elsewhere: these properties hold it to that.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.domain.events import ConsumerEvent, EventType, _plain, canonical_json


def reference(doc: Any) -> bytes:
    """What the payload hash was computed over before orjson (and must stay)."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


#: Big integers, every float (NaN and infinities too: the standard library writes them),
#: any Unicode text including control characters, nested to any depth.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | st.text()
)
DOCUMENTS = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=15,
)
#: What orjson is trusted with: no floats, integers within 64 bits.
PLAIN = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**63), max_value=2**64 - 1) | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=6)
    ),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_canonical_json_is_the_standard_librarys_bytes(doc: Any) -> None:
    assert canonical_json(doc) == reference(doc)


@settings(max_examples=300, deadline=None)
@given(PLAIN)
def test_orjson_itself_spells_plain_documents_identically(doc: Any) -> None:
    """The fast path on its own (not the fallback) gives the same bytes."""
    assert _plain(doc)
    assert orjson.dumps(doc, option=orjson.OPT_SORT_KEYS) == reference(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"n": 1e16},  # "1e+16" in the standard library, "1e16" in orjson
        {"n": 0.1},
        {"n": 2**64},  # beyond orjson's integers
        {"n": -(2**63) - 1},
        {"n": 10**400},
        [EventType.UPSERT],  # a str subclass
        {1: "int key"},  # the standard library writes "1"
        ("a", "tuple"),
    ],
)
def test_what_orjson_would_spell_otherwise_goes_the_old_way(doc: Any) -> None:
    """Floats, subclasses, non-str keys and tuples are not plain; integers beyond 64
    bits are, and orjson refuses them, which sends them the old way too."""
    assert canonical_json(doc) == reference(doc)
    if isinstance(doc, dict) and isinstance(doc.get("n"), int):
        with pytest.raises(orjson.JSONEncodeError):
            orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    else:
        assert not _plain(doc)


def test_a_string_that_is_not_unicode_fails_as_it_always_did() -> None:
    with pytest.raises(UnicodeEncodeError):
        canonical_json({"project_id": "\ud800"})
    with pytest.raises(UnicodeEncodeError):
        reference({"project_id": "\ud800"})


def test_the_payload_hash_of_an_event_is_unchanged() -> None:
    event = ConsumerEvent(
        event_id="6f1c2b9e-3d4a-4c1e-9b7a-2e5f8d0c1a34",
        type=EventType.UPSERT,
        consumer_uuid="0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80",
        occurred_at=datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC),
        expected_generation=7,
        project_id="prøject ✓",
        user_id="user\u2028one",
        consumer_type="INSTANCE",
        producer="not hashed",
    )
    doc = event.to_document()
    del doc["producer"]
    assert event.payload_hash() == hashlib.sha256(reference(doc)).hexdigest()
    # Pinned: the value stored in inbox rows written before orjson.
    assert event.payload_hash() == PINNED


PINNED = "10651e05e15d80327ab6a887577ecad9118859ed96d9ba0b8999eb57990d7bc1"
