"""Pydantic models of the three documents in ``schemas/``.

The JSON Schema files are the contract; these models restate them so that Python code
gets typed values and the exact same accept/reject decisions (tests/contract proves the
two agree on a shared corpus). Everything is strict: no type coercion beyond what JSON
Schema itself considers equal (``1.0`` *is* the integer 1 there, ``true`` is not).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    field_validator,
    model_validator,
)

from service.domain.outcomes import (
    DEAD_LETTER_REASONS,
    FAILED_REASONS,
    INVALID_REASONS,
    REASONS_BY_OUTCOME,
    REJECTED_REASONS,
    OutcomeKind,
    Reason,
)

#: Dashed hexadecimal UUID, any letter case (normalised to lower case after validation).
UUID_PATTERN: Final = (
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
#: Canonical form: what the service itself writes (outcome records, Kafka keys).
CANONICAL_UUID_PATTERN: Final = r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
#: RFC 3339 with a zone; years 1970-2999 so that no offset can push it out of range.
TIMESTAMP_PATTERN: Final = (
    r"^(19[7-9][0-9]|2[0-9]{3})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])[Tt]"
    r"([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?"
    r"([Zz]|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$"
)
#: No NUL (PostgreSQL text cannot hold it). Unpaired surrogates are refused by pydantic
#: itself (``string_unicode``), which is what the schema's ``\ud800-\udfff`` range says.
TEXT_PATTERN: Final = r"^[^\x00]*$"
CONSUMER_TYPE_PATTERN: Final = r"^[A-Z0-9_]+$"
#: Largest ``expected_generation``: 2**53 - 1, exact in every JSON implementation.
MAX_GENERATION: Final = 9_007_199_254_740_991

_TIMESTAMP_RE: Final = re.compile(TIMESTAMP_PATTERN)


class OutsizedNumber:
    """A JSON number too large for a Python value, as ``load_json`` hands it over.

    An integer with more digits than ``int()`` converts (4,300 by default: CPython's
    guard against quadratic conversion) or a number beyond the range of a float. No field
    of any contract document accepts one, so the schema refuses it at its JSON path
    instead of the parser crashing. ``repr`` never shows the digits (they may be huge).
    """

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text

    def __repr__(self) -> str:
        return f"<JSON number of {len(self.text)} characters>"


def _integral(value: Any) -> Any:
    """JSON Schema's integer: ``3.0`` is 3, ``true`` is not a number at all."""
    if isinstance(value, bool):
        raise ValueError("booleans are not integers")
    if isinstance(value, OutsizedNumber):
        raise ValueError("a number far too large for this field")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _timestamp(value: Any) -> Any:
    """Parse an RFC 3339 string (pattern first, then the calendar: no 30 February)."""
    if isinstance(value, datetime):  # built in Python, not decoded: must carry a zone
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("a timestamp needs a time zone")
        return value
    if not isinstance(value, str) or not _TIMESTAMP_RE.match(value):
        raise ValueError("should be an RFC 3339 timestamp with a time zone, years 1970-2999")
    try:
        return datetime.fromisoformat(value.upper())
    except ValueError:  # the message of fromisoformat may quote the value
        raise ValueError("not a calendar date (e.g. 30 February)") from None


def sub_microsecond_nanos(value: Any) -> int:
    """The nanoseconds (0-999) of an RFC 3339 timestamp beyond its microseconds, which
    ``datetime`` drops: ``.123456789`` -> 789, ``.1234567`` -> 700, ``.5`` -> 0."""
    if not isinstance(value, str):
        return 0
    match = _TIMESTAMP_RE.match(value)
    digits = match.group(5)[1:] if match and match.group(5) else ""
    return int(digits[6:9].ljust(3, "0")) if len(digits) > 6 else 0


def _lower(value: str) -> str:
    return value.lower()


def _rfc3339_text(value: str) -> str:
    """Check a timestamp kept as text (header values are strings)."""
    _timestamp(value)
    return value


def _absent_not_null(value: Any) -> Any:
    """Optional text fields may be left out, but ``null`` is not a string (as in the schema)."""
    if value is None:
        raise ValueError("leave the field out instead of sending null")
    return value


Uuid = Annotated[str, Field(pattern=UUID_PATTERN), AfterValidator(_lower)]
CanonicalUuid = Annotated[str, Field(pattern=CANONICAL_UUID_PATTERN)]
Name = Annotated[str, Field(min_length=1, max_length=255, pattern=TEXT_PATTERN)]
ConsumerType = Annotated[str, Field(min_length=1, max_length=255, pattern=CONSUMER_TYPE_PATTERN)]
Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]
Generation = Annotated[int, Field(ge=0, le=MAX_GENERATION), BeforeValidator(_integral)]
SchemaVersion = Annotated[Literal[1], BeforeValidator(_integral)]

_STRICT: Final = ConfigDict(strict=True, extra="forbid", frozen=True)


class _EventBase(BaseModel):
    model_config = _STRICT

    schema_version: SchemaVersion
    event_id: Uuid
    consumer_uuid: Uuid
    occurred_at: Timestamp
    #: ``None`` means JSON ``null`` *only* if the field is in ``model_fields_set``;
    #: absent (unconditional) is told apart by ``expected_generation_given``.
    expected_generation: Generation | None = None
    producer: Name | None = None

    @field_validator("producer", mode="before")
    @classmethod
    def _producer_not_null(cls, value: Any) -> Any:
        return _absent_not_null(value)

    @property
    def expected_generation_given(self) -> bool:
        return "expected_generation" in self.model_fields_set


class ConsumerUpsertV1(_EventBase):
    """``consumer.upsert``: create the consumer or change its owner/type."""

    type: Literal["consumer.upsert"]
    project_id: Name | None = None
    user_id: Name | None = None
    consumer_type: ConsumerType | None = None

    @field_validator("project_id", "user_id", "consumer_type", mode="before")
    @classmethod
    def _owner_not_null(cls, value: Any) -> Any:
        return _absent_not_null(value)


class ConsumerDeleteV1(_EventBase):
    """``consumer.delete``: leave a tombstone that keeps the generation. No owner fields."""

    type: Literal["consumer.delete"]


ConsumerEventV1 = Annotated[ConsumerUpsertV1 | ConsumerDeleteV1, Field(discriminator="type")]
#: Validates a parsed JSON document into one of the two event models.
EVENT_ADAPTER: Final[TypeAdapter[ConsumerUpsertV1 | ConsumerDeleteV1]] = TypeAdapter(
    ConsumerEventV1
)


def _one_of(allowed: frozenset[Reason], what: str) -> AfterValidator:
    """A string that is one of ``allowed`` (the domain's values: defined once, there)."""

    def check(value: str) -> str:
        if value not in allowed:
            raise ValueError(f"not a known {what}")
        return value

    return AfterValidator(check)


ALL_REASONS: Final = REJECTED_REASONS | INVALID_REASONS | FAILED_REASONS
OutcomeReason = Annotated[str, _one_of(ALL_REASONS, "reason")]
DeadLetterReasonValue = Annotated[str, _one_of(DEAD_LETTER_REASONS, "dead-letter reason")]


class SourcePosition(BaseModel):
    """Where an event was read: topic, partition, offset."""

    model_config = _STRICT

    topic: Annotated[str, Field(min_length=1)]
    partition: Annotated[int, Field(ge=0)]
    offset: Annotated[int, Field(ge=0)]


class ConsumerStateDocument(BaseModel):
    """``state_after`` of an outcome record (``service.contract.state``)."""

    model_config = _STRICT

    state: Literal["live", "deleted"]
    generation: Annotated[int, Field(ge=0)]
    project_id: Annotated[str, Field(min_length=1, max_length=255)]
    user_id: Annotated[str, Field(min_length=1, max_length=255)]
    consumer_type: Annotated[str, Field(min_length=1, max_length=255)] | None


class OutcomeRecord(BaseModel):
    """``schemas/outcome.schema.json``: the value of one outcomes-topic record."""

    model_config = _STRICT

    schema_version: SchemaVersion = 1
    event_id: CanonicalUuid | None
    consumer_uuid: CanonicalUuid | None
    outcome: OutcomeKind
    reason: OutcomeReason | None
    message: Annotated[str, Field(max_length=500)] | None = None
    generation_after: Annotated[int, Field(ge=0)] | None
    original_outcome: Literal["applied", "rejected", "invalid", "failed"] | None = None
    source: SourcePosition
    processed_at: Timestamp
    #: Additive: the consumer as the event left it (absent for invalid events, no row).
    state_after: ConsumerStateDocument | None = None

    @model_validator(mode="after")
    def _reason_fits_outcome(self) -> OutcomeRecord:
        if self.outcome is OutcomeKind.APPLIED:
            if self.reason is not None or self.generation_after is None:
                raise ValueError("applied needs reason null and a generation_after")
        elif (
            self.outcome in REASONS_BY_OUTCOME
            and self.reason not in REASONS_BY_OUTCOME[self.outcome]
        ):
            raise ValueError(f"this reason does not fit outcome {self.outcome.value}")
        if (self.outcome is OutcomeKind.DUPLICATE) != (self.original_outcome is not None):
            raise ValueError("original_outcome is required for duplicate and only there")
        return self

    def to_document(self) -> dict[str, Any]:
        """The JSON document (``original_outcome`` only when it is a duplicate)."""
        doc = self.model_dump(mode="json", exclude_none=False)
        if self.original_outcome is None:
            del doc["original_outcome"]
        if self.state_after is None:
            del doc["state_after"]
        return doc


_DECIMAL = r"^(0|[1-9][0-9]*)$"
#: ``error.exception``: a Python class name (``ValueError``, ``UnicodeDecodeError``...).
EXCEPTION_NAME_PATTERN: Final = r"^[A-Za-z_][A-Za-z0-9_]{0,99}$"


class DeadLetterHeaders(BaseModel):
    """``schemas/dead-letter.schema.json``: the error headers of a dead-letter record."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True, populate_by_name=True)

    error_class: Literal["invalid", "failed"] = Field(alias="error.class")
    error_reason: DeadLetterReasonValue = Field(alias="error.reason")
    error_message: Annotated[str, Field(max_length=500)] = Field(alias="error.message")
    error_path: Annotated[str, Field(pattern=r"^\$")] | None = Field(None, alias="error.path")
    error_exception: Annotated[str, Field(pattern=EXCEPTION_NAME_PATTERN)] | None = Field(
        None, alias="error.exception"
    )
    origin_topic: Annotated[str, Field(min_length=1)] = Field(alias="origin.topic")
    origin_partition: Annotated[str, Field(pattern=_DECIMAL)] = Field(alias="origin.partition")
    origin_offset: Annotated[str, Field(pattern=_DECIMAL)] = Field(alias="origin.offset")
    attempts: Annotated[str, Field(pattern=r"^[1-9][0-9]*$")]
    first_failed_at: Annotated[str, AfterValidator(_rfc3339_text)]
    failed_at: Annotated[str, AfterValidator(_rfc3339_text)]
    # A dead letter cut to fit the dead-letter topic (service/sinks/fit.py): which parts
    # of the original were cut, and the original sizes in bytes.
    origin_truncated: (
        Annotated[str, Field(pattern=r"^(value|key|headers)(,(value|key|headers))*$")] | None
    ) = Field(None, alias="origin.truncated")
    origin_value_bytes: Annotated[str, Field(pattern=_DECIMAL)] | None = Field(
        None, alias="origin.value_bytes"
    )
    origin_key_bytes: Annotated[str, Field(pattern=_DECIMAL)] | None = Field(
        None, alias="origin.key_bytes"
    )
    origin_headers_bytes: Annotated[str, Field(pattern=_DECIMAL)] | None = Field(
        None, alias="origin.headers_bytes"
    )

    @model_validator(mode="after")
    def _extra_are_strings(self) -> DeadLetterHeaders:
        for value in (self.model_extra or {}).values():
            if not isinstance(value, str):
                raise ValueError("every header value should be a string")
        return self
