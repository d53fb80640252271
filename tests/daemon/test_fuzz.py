"""Issue 11's fuzz suite: 1,000+ hostile records, generated from valid events by a seeded
generator, mixed with valid events, through one real daemon, on both databases.

Asserted: 0 crashes (the daemon's task runs, no fatal error), 0 stalled partitions (the
group's committed offset reaches every partition's end), exactly one outcome record per
record (by source partition/offset), every dead letter's origin is an ``invalid``
outcome and every ``invalid`` outcome has its dead letter, every hostile record has the
outcome its mutation implies, the canaries at the end of every partition are applied,
and the database equals an independent model fed with the valid events only.

Every mutation is chosen so that its verdict is certain without the service's code:
a byte flip is kept only when the result is no longer UTF-8 JSON, a header-only change
keeps a valid event valid, and so on.  A failure reproduces from the seed in the test id.
"""

from __future__ import annotations

import json
import random
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka.errors import GroupCoordinatorNotAvailableError

from service.testing.daemon import Topics, assert_matches_model, daemon_settings, running_daemon
from service.testing.database import consumer_state, inbox
from service.testing.kafka_io import committed_offsets, end_offsets, read_all
from service.testing.model import Model, event_doc
from service.testing.polling import poll
from tests.support.hostile import (
    Raw,
    RawName,
    alive,
    daemon_task,
    header_map,
    partition_of,
    produce_records,
    record_size,
    uuid_on,
)

pytestmark = [pytest.mark.kafka, pytest.mark.fuzz]

SEED = 20261202
PARTITIONS = 4
CONSUMERS_PER_PARTITION = 8
VALID_EVENTS = 500
HOSTILE_RECORDS = 1100
#: Small enough that too_large values stay cheap to send; the near-1 MiB values that
#: are not JSON exercise the dead letters that must be cut to fit the DLQ topic.
MAX_EVENT_BYTES = 65_536

#: The broker's default max.message.bytes (a whole record batch) and a batch's header.
TOPIC_LIMIT = 1_048_588
BATCH_OVERHEAD = 61
NOT_JSON = frozenset({"not_json", "not_utf8"})
ODD_TEXT = [
    "\u200fright-to-left\u200e",
    "emoji \U0001f600\U0001f9ea",
    "combining e\u0301\u0308",
    "zero\u200bwidth",
    "\u202eoverride",
    "tab\tinside",
    "ünïcödé",
    "\ufeffbom-inside",
    "line\u2028separator",
]
HEADER_NAMES = [
    "",
    "content-type",
    "error.reason",
    "error.class",
    "origin.offset",
    "attempts",
    "ünï",
    "\U0001f600",
    "a" * 300,
    " spaced name ",
    "nul\x00inside",
]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _doc(rng: random.Random, consumer: str, **fields: Any) -> dict[str, Any]:
    """``event_doc`` with its random parts drawn from ``rng``: the seed decides all."""
    doc = event_doc(consumer, **fields)
    doc["event_id"] = _uuid(rng)
    doc["occurred_at"] = f"2026-12-02T{rng.randrange(24):02d}:{rng.randrange(60):02d}:00Z"
    return doc


def _header_value(rng: random.Random) -> bytes | None:
    return rng.choice(
        [
            None,
            b"",
            b"\xff\xfe\x00binary",
            "ünïcödé".encode(),
            b"invalid",
            b"x" * rng.randint(1, 2000),
            bytes(rng.getrandbits(8) for _ in range(rng.randint(1, 64))),
        ]
    )


def _headers(rng: random.Random) -> list[tuple[str, bytes | None]]:
    return [(rng.choice(HEADER_NAMES), _header_value(rng)) for _ in range(rng.randint(0, 4))]


def _dumps(doc: dict[str, Any], rng: random.Random) -> bytes:
    return json.dumps(doc, ensure_ascii=rng.random() < 0.5).encode()


def _with_raw(doc: dict[str, Any], **raw_fields: str) -> bytes:
    text = json.dumps(doc)
    return (text[:-1] + "".join(f', "{k}": {v}' for k, v in raw_fields.items()) + "}").encode()


def _valid_stream(rng: random.Random, consumers: list[str]) -> list[Raw]:
    """Valid events (creates, updates with right and stale preconditions, deletes,
    re-creates, duplicates, reused ids), odd but valid text, headers of every kind.
    A model of its own only steers the generator (towards plausible preconditions);
    the test's model decides the expected outcomes."""
    steer = Model()
    stream: list[Raw] = []
    sent: dict[str, list[dict[str, Any]]] = {c: [] for c in consumers}
    for _ in range(VALID_EVENTS):
        consumer = rng.choice(consumers)
        current = steer.consumers.get(consumer)
        live = current is not None and not current.deleted
        generation = current.generation if current is not None else 0
        upserts = [d for d in sent[consumer] if d["type"] == "consumer.upsert"]
        roll = rng.random()
        if sent[consumer] and roll < 0.06:
            doc = dict(rng.choice(sent[consumer]))  # exact duplicate
        elif upserts and roll < 0.10:
            doc = dict(rng.choice(upserts), project_id=rng.choice(ODD_TEXT))  # reused id
        elif sent[consumer] and roll < 0.12:  # same id, other nanoseconds
            doc = dict(rng.choice(sent[consumer]))
            doc["occurred_at"] = f"2026-12-02T03:04:05.{rng.randrange(10**9):09d}Z"
        elif not live:
            doc = _doc(
                rng,
                consumer,
                expected=None if rng.random() < 0.8 else rng.randint(0, 3),
                project=rng.choice([*ODD_TEXT, "p1", "p2"]),
                user=rng.choice([*ODD_TEXT, "u1"]),
                consumer_type=rng.choice([None, "VM", "JOB_2"]),
            )
        elif roll < 0.25:
            doc = _doc(rng, consumer, delete=True, expected=generation)
        elif roll < 0.45:
            doc = _doc(rng, consumer, project=rng.choice(ODD_TEXT))
        else:
            expected = rng.choice([generation, generation, rng.randint(0, 9), None])
            doc = _doc(rng, consumer, expected=expected, user=rng.choice([*ODD_TEXT, "u2"]))
        if "producer" not in doc and rng.random() < 0.3:
            doc["producer"] = rng.choice(ODD_TEXT)
        if rng.random() < 0.2 and doc not in sent[consumer]:
            doc["occurred_at"] = f"2026-12-02T03:04:05.{rng.randrange(10**9):09d}Z"
        steer.apply(doc)
        sent[consumer].append(doc)
        stream.append(
            Raw(
                partition_of(consumer.encode(), PARTITIONS),
                consumer.encode(),
                _dumps(doc, rng),
                _headers(rng),
                doc=doc,
                kind="valid",
            )
        )
    return stream


# -- mutations: (base valid record, rng) -> hostile record with its certain verdict -------
Mutation = Callable[[Raw, random.Random], Raw]


def _invalid(base: Raw, kind: str, reasons: frozenset[str] | set[str], **changes: Any) -> Raw:
    return Raw(
        partition=changes.get("partition", base.partition),
        key=changes.get("key", base.key),
        value=changes.get("value", base.value),
        headers=changes.get("headers", []),
        expect="invalid:" + "|".join(sorted(reasons)),
        kind=kind,
    )


def _is_json(value: bytes) -> bool:
    try:
        json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def truncation(base: Raw, rng: random.Random) -> Raw:
    assert base.value is not None
    cut = base.value[: rng.randrange(0, len(base.value))]
    return _invalid(base, "truncation", NOT_JSON, value=cut, headers=_headers(rng))


def byte_flip(base: Raw, rng: random.Random) -> Raw:
    assert base.value is not None
    value = bytearray(base.value)
    for _ in range(200):
        value = bytearray(base.value)
        for _ in range(rng.randint(1, 3)):
            position = rng.randrange(len(value))
            if rng.random() < 0.5:
                value[position] ^= 1 << rng.randrange(8)
            else:
                value[position] = rng.randrange(256)
        if not _is_json(bytes(value)):
            break
    else:
        value[0] = 0xFF
    return _invalid(base, "byte_flip", NOT_JSON, value=bytes(value), headers=_headers(rng))


def huge_number(base: Raw, rng: random.Random) -> Raw:
    assert base.doc is not None
    doc = dict(base.doc)
    digits = "9" * rng.randint(4301, 6000)
    where = rng.choice(["expected_generation", "unknown", "schema_version", "project_id", "deep"])
    if where == "deep":
        doc["x_nested"] = {"a": [1, 2, {"b": 0}]}
        value = json.dumps(doc).replace('"b": 0', f'"b": -{digits}').encode()
    else:
        doc.pop(where, None)
        name = "x_huge" if where == "unknown" else where
        value = _with_raw(doc, **{name: digits})
    reasons = {"unsupported_version" if where == "schema_version" else "schema_violation"}
    return _invalid(base, f"huge_number_{where}", reasons, value=value)


def odd_number(base: Raw, rng: random.Random) -> Raw:
    assert base.doc is not None
    doc = dict(base.doc)
    doc.pop("expected_generation", None)
    raw, reasons = rng.choice(
        [
            ("9007199254740992", {"schema_violation"}),  # 2**53: over the contract's maximum
            ("1e400", {"schema_violation"}),
            ("-1", {"schema_violation"}),
            ("1.5", {"schema_violation"}),
            ("NaN", {"not_json"}),
            ("Infinity", {"not_json"}),
            ("true", {"schema_violation"}),
            ('"3"', {"schema_violation"}),
        ]
    )
    return _invalid(base, "odd_number", reasons, value=_with_raw(doc, expected_generation=raw))


def odd_unicode(base: Raw, rng: random.Random) -> Raw:
    assert base.doc is not None
    doc = dict(base.doc)
    doc.pop("project_id", None)
    if doc["type"] == "consumer.delete":
        doc["type"] = "consumer.upsert"
        doc.pop("expected_generation", None)
    field = rng.choice(["project_id", "user_id", "producer"])
    doc.pop(field, None)
    choice = rng.randrange(7)
    if choice == 0:  # a lone surrogate, escaped: valid JSON, not a Unicode string
        value, reasons = _with_raw(doc, **{field: r'"a\ud800b"'}), {"schema_violation"}
    elif choice == 1:  # NUL, escaped
        value, reasons = _with_raw(doc, **{field: r'"a\u0000b"'}), {"schema_violation"}
    elif choice == 2:  # a raw control character inside a string
        value, reasons = _with_raw(doc, **{field: '"a\x00b"'}), {"not_json"}
    elif choice == 3:  # a lone surrogate encoded as UTF-8 bytes
        value = _with_raw(doc, **{field: '"a"'}).replace(b'"a"', b'"a\xed\xa0\x80"')
        reasons = {"not_utf8"}
    elif choice == 4:  # an overlong encoding
        value = _with_raw(doc, **{field: '"a"'}).replace(b'"a"', b'"a\xc0\xaf"')
        reasons = {"not_utf8"}
    elif choice == 5:  # a byte-order mark before the document
        value, reasons = b"\xef\xbb\xbf" + json.dumps(base.doc).encode(), {"not_json"}
    else:  # an RTL mark and an emoji in the event type
        doc["type"] = "consumer.upsert\u200f\U0001f600"
        value, reasons = json.dumps(doc, ensure_ascii=False).encode(), {"schema_violation"}
    return _invalid(base, "odd_unicode", reasons, value=value, headers=_headers(rng))


def wrong_key(base: Raw, rng: random.Random) -> Raw:
    assert base.key is not None
    key = rng.choice(
        [
            None,
            b"",
            _uuid(rng).encode(),
            base.key.upper(),
            b"{" + base.key + b"}",
            b"urn:uuid:" + base.key,
            base.key + b"\n",
            base.key.replace(b"-", b""),
            b"\xff\xfe" + base.key,
            base.key * 2000,
        ]
    )
    return _invalid(base, "wrong_key", {"key_mismatch"}, key=key, headers=_headers(rng))


def non_utf8_header_name(base: Raw, rng: random.Random) -> Raw:
    name = rng.choice([b"\xff", b"\xc3(", b"ok-\xfe\xfe", b"\xed\xa0\x80", b"\x80" * 40])
    headers = [*_headers(rng), (RawName(name), _header_value(rng))]
    rng.shuffle(headers)
    return _invalid(base, "non_utf8_header_name", {"undecodable"}, key=base.key, headers=headers)


def not_an_object(base: Raw, rng: random.Random) -> Raw:
    value, reasons = rng.choice(
        [
            (b"[]", {"schema_violation"}),
            (b'"text"', {"schema_violation"}),
            (b"17", {"schema_violation"}),
            (b"null", {"schema_violation"}),
            (b"", {"not_json"}),
            (b"   \n", {"not_json"}),
            (None, {"not_json"}),
            (b"[" * 20_000 + b"]" * 20_000, {"not_json", "schema_violation"}),
            (b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", {"not_json", "schema_violation"}),
        ]
    )
    return _invalid(base, "not_an_object", reasons, value=value)


def duplicate_field(base: Raw, rng: random.Random) -> Raw:
    assert base.doc is not None
    text = json.dumps(base.doc)
    value = (text[:-1] + f', "event_id": "{_uuid(rng)}"}}').encode()
    return _invalid(base, "duplicate_field", {"not_json"}, value=value)


def too_large(base: Raw, rng: random.Random) -> Raw:
    assert base.doc is not None
    doc = dict(base.doc, producer="x" * rng.randint(MAX_EVENT_BYTES, 4 * MAX_EVENT_BYTES))
    return _invalid(base, "too_large", {"too_large"}, value=json.dumps(doc).encode())


def oversized_dead_letter(base: Raw, rng: random.Random) -> Raw:
    """Fits the events topic (just), but its dead letter does not unless cut."""
    assert base.key is not None
    headers: list[tuple[str, bytes | None]] = [("big", b"h" * 4000), ("bigger", b"H" * 3000)]
    room = TOPIC_LIMIT - BATCH_OVERHEAD - record_size(base.key, b"", headers)
    value = b"<" + b"z" * (room - rng.randint(10, 60))
    return _invalid(
        base, "oversized_dead_letter", {"too_large"}, value=value, key=base.key, headers=headers
    )


MUTATIONS: list[tuple[Mutation, int]] = [
    (truncation, 16),
    (byte_flip, 22),
    (huge_number, 12),
    (odd_number, 8),
    (odd_unicode, 12),
    (wrong_key, 12),
    (non_utf8_header_name, 6),
    (not_an_object, 4),
    (duplicate_field, 4),
    (too_large, 2),
]


def origins_key(headers: dict[str, str]) -> tuple[int, int]:
    return int(headers["origin.partition"]), int(headers["origin.offset"])


def _records(rng: random.Random) -> tuple[list[Raw], list[str]]:
    consumers = [
        uuid_on(p, PARTITIONS, rng)
        for p in range(PARTITIONS)
        for _ in range(CONSUMERS_PER_PARTITION)
    ]
    valid = _valid_stream(rng, consumers)
    functions = [m for m, _ in MUTATIONS]
    weights = [w for _, w in MUTATIONS]
    hostile = [
        rng.choices(functions, weights)[0](rng.choice(valid), rng)
        for _ in range(HOSTILE_RECORDS - 4)
    ]
    hostile += [oversized_dead_letter(rng.choice(valid), rng) for _ in range(4)]
    # Mix: hostile records at random places, valid ones keep their order.
    mixed: list[Raw] = list(valid)
    for record in hostile:
        mixed.insert(rng.randrange(len(mixed) + 1), record)
    canaries = []
    for partition in range(PARTITIONS):
        consumer = uuid_on(partition, PARTITIONS, rng)
        doc = _doc(rng, consumer, expected=None, project="canary", user="canary")
        canaries.append(
            Raw(partition, consumer.encode(), json.dumps(doc).encode(), doc=doc, kind="canary")
        )
    return mixed + canaries, [c.decode() for c in (r.key for r in canaries) if c]


@pytest.mark.timeout(240)
@pytest.mark.parametrize("seed", [SEED], ids=[f"seed={SEED}"])
async def test_fuzz_hostile_records_through_one_daemon(
    seed: int, kafka_bootstrap: str, database_url: str, topics: Topics
) -> None:
    began = time.monotonic()
    rng = random.Random(seed)
    records, canaries = _records(rng)
    model = Model()
    expected_valid: dict[int, str] = {}
    for index, record in enumerate(records):
        if record.doc is not None:
            expected_valid[index] = model.apply(record.doc)
    hostile_count = sum(1 for r in records if r.doc is None)
    assert hostile_count >= 1000

    await produce_records(kafka_bootstrap, topics.events, records, raw_names_via_kcat=True)
    by_coordinates = {(r.partition, r.offset): (i, r) for i, r in enumerate(records)}
    assert len(by_coordinates) == len(records)
    ends = await end_offsets(kafka_bootstrap, topics.events)
    assert sum(ends.values()) == len(records)

    settings = daemon_settings(
        kafka_bootstrap, database_url, topics, max_event_bytes=MAX_EVENT_BYTES
    )
    async with running_daemon(settings) as daemon:
        task = daemon_task(daemon)

        async def caught_up() -> bool:
            assert alive(daemon, task), f"the daemon stopped: {daemon.fatal_error!r} (seed {seed})"
            try:
                done = await committed_offsets(kafka_bootstrap, topics.group, topics.events)
            except GroupCoordinatorNotAvailableError:  # the group is not there yet
                return False
            return all(done.get(p, 0) >= end for p, end in ends.items())

        try:
            await poll(
                caught_up, 120, f"committed offsets reach {ends} (a stalled partition)", 0.25
            )
        finally:
            crashed = not alive(daemon, task)
            print(f"\n[fuzz seed={seed}] crashes={int(crashed)} fatal={daemon.fatal_error!r}")
        assert daemon.readiness.verdict()[0], daemon.readiness.verdict()[1]
        outcome_records = await read_all(kafka_bootstrap, topics.outcomes)
        letters = await read_all(kafka_bootstrap, topics.dlq)
        assert alive(daemon, task), f"the daemon stopped: {daemon.fatal_error!r}"

    # Exactly one outcome per record.
    outcomes: dict[tuple[int, int], list[dict[str, Any]]] = {}
    for item in outcome_records:
        doc = json.loads(item.value)
        assert doc["source"]["topic"] == topics.events
        outcomes.setdefault((doc["source"]["partition"], doc["source"]["offset"]), []).append(doc)
    missing = sorted(set(by_coordinates) - set(outcomes))
    extra = sorted(set(outcomes) - set(by_coordinates))
    doubled = sorted(c for c, found in outcomes.items() if len(found) > 1)
    assert not missing, f"{len(missing)} records without an outcome, e.g. {missing[:5]}"
    assert not extra and not doubled, f"outcomes for unknown {extra[:5]} / doubled {doubled[:5]}"

    # Each record's outcome is the one its construction implies.
    wrong: list[str] = []
    by_reason: Counter[str] = Counter()
    for coordinates, (index, record) in by_coordinates.items():
        got = outcomes[coordinates][0]
        label = got["outcome"] + (f":{got['reason']}" if got["reason"] else "")
        by_reason[label] += 1
        if record.doc is not None:
            want = expected_valid[index]
            ok = got["outcome"] == "duplicate" if want == "duplicate" else label == want
        else:
            allowed = record.expect.removeprefix("invalid:").split("|")
            ok = got["outcome"] == "invalid" and got["reason"] in allowed
            want = record.expect
        if not ok:
            wrong.append(f"{record.kind or 'valid'} at {coordinates}: want {want}, got {label}")
    # Dead letters: one per invalid outcome (no crash here, so no at-least-once repeat),
    # each pointing back at its origin.
    invalid_at = {
        c for c, found in outcomes.items() if found[0]["outcome"] in ("invalid", "failed")
    }
    origins: Counter[tuple[int, int]] = Counter()
    cut = 0
    for letter in letters:
        headers = header_map(letter.headers)
        assert headers["origin.topic"] == topics.events
        origins[(int(headers["origin.partition"]), int(headers["origin.offset"]))] += 1
        origin = by_coordinates.get(origins_key(headers))
        if origin is None:
            continue
        record = origin[1]
        if "origin.truncated" in headers:
            cut += 1
            parts = headers["origin.truncated"].split(",")
            if "value" in parts:
                assert record.value is not None and letter.value is not None
                assert record.value.startswith(letter.value), "a cut value is not a prefix"
                assert int(headers["origin.value_bytes"]) == len(record.value)
        elif record.kind != "non_utf8_header_name":
            assert (letter.key, letter.value) == (record.key, record.value), record.kind
        if record.kind == "oversized_dead_letter":
            assert "origin.truncated" in headers, "a dead letter over the limit was not cut"
    state = await consumer_state(database_url)
    recorded = await inbox(database_url)
    print(
        f"\n[fuzz seed={seed}] {len(records)} records ({hostile_count} hostile, "
        f"{len(records) - hostile_count} valid incl. {len(canaries)} canaries), "
        f"{sum(len(v) for v in outcomes.values())} outcomes, {len(letters)} dead letters "
        f"({cut} cut), crashes={int(crashed)}, stalled partitions=0, "
        f"{time.monotonic() - began:.1f}s; non-UTF-8 header names written by "
        f"{'kcat' if shutil.which('kcat') else 'aiokafka (raw builder)'}\n"
        f"[fuzz seed={seed}] outcomes by reason: "
        + ", ".join(f"{k}={v}" for k, v in sorted(by_reason.items()))
    )
    assert not wrong, f"{len(wrong)} records with the wrong outcome, e.g. {wrong[:8]}"
    assert set(origins) == invalid_at, (
        f"dead letters without an invalid outcome: {sorted(set(origins) - invalid_at)[:5]}, "
        f"invalid outcomes without a dead letter: {sorted(invalid_at - set(origins))[:5]}"
    )
    assert all(n == 1 for n in origins.values()), "a record dead-lettered twice"
    for consumer in canaries:
        assert state.get(consumer) == (1, False, "canary", "canary", None), "canary not applied"
    assert_matches_model(state, recorded, model)


def test_the_seed_decides_every_record() -> None:
    """A failure reproduces from the seed alone: two generations are byte-identical."""

    def fingerprint() -> list[tuple[Any, ...]]:
        records, _ = _records(random.Random(SEED))
        return [(r.partition, r.key, r.value, r.headers, r.expect) for r in records]

    first = fingerprint()
    assert first == fingerprint()
    assert sum(1 for *_, expect in first if expect != "valid") >= 1000
