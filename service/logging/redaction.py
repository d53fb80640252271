"""UUID redaction for log output: pure functions and the structlog processor, no I/O.

Every UUID that could reach a log line is replaced by a keyed pseudonym
``uuid:`` + the first 12 hex digits of HMAC-SHA256(key, canonical UUID), so operators
can still follow one consumer through the logs (same UUID, same pseudonym under one
key) without the logs disclosing the identifier itself. Anyone holding the key can
compute a pseudonym with any HMAC tool (``consumergen pseudonym`` does it for them).

What counts as a UUID in text (see ``docs/logging.md``):

* the dashed 8-4-4-4-12 form anywhere, in any letter case, optionally wrapped in
  braces ``{...}`` or prefixed by ``urn:uuid:`` (the wrapper is consumed too);
* a run of exactly 32 hex digits not touching other hex digits (``uuid.hex``);
* a run of *more* than 32 hex digits (a SHA-256 digest, or two ``uuid.hex`` glued
  together, or ``"consumed" + uuid.hex`` where the ``d`` extends the run): we cannot
  tell where a UUID would sit inside it, so the whole run becomes ``hex:`` + 12 hex of
  the keyed HMAC of the run. Digests stay correlatable under one key; nothing that
  contains a UUID survives. After redaction no 32-hex window is left anywhere, which
  is exactly what ``find_clear_uuid`` (the test-suite guard) checks.

Not detected: a UUID spelt as its 128-bit integer or as 16 raw bytes; code must not
log those forms.
"""

from __future__ import annotations

import functools
import hmac
import re
import uuid
from collections.abc import Callable, MutableMapping
from typing import Any, Final

#: Prefix of every UUID pseudonym.
PSEUDONYM_PREFIX: Final = "uuid:"
#: Prefix of the pseudonym of a hex run longer than a UUID (e.g. a digest).
HEX_PSEUDONYM_PREFIX: Final = "hex:"
#: Number of hex digits of the HMAC kept in a pseudonym (48 bits).
PSEUDONYM_DIGITS: Final = 12
#: Structures nested deeper than this are replaced, which also stops self-references.
MAX_DEPTH: Final = 24

_H = "[0-9A-Fa-f]"
_DASHED = rf"{_H}{{8}}-{_H}{{4}}-{_H}{{4}}-{_H}{{4}}-{_H}{{12}}"

# The core of every form. Scanning leftmost-first, a run of 32+ hex digits is always
# matched from its first digit and greedily to its last, so no look-around is needed;
# the ``urn:uuid:`` and ``{...}`` wrappers are checked around each match in Python,
# which keeps this pattern simple enough for the regex engine's fast first-character scan.
_UUID_RE: Final = re.compile(rf"(?P<dashed>{_DASHED})|(?P<run>{_H}{{32,}})")
_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")
_HEX_BYTES: Final = b"0123456789abcdefABCDEF"
_URN: Final = "urn:uuid:"
# What must never appear in rendered output: a dashed UUID or any 32-hex window.
CLEAR_UUID_RE: Final = re.compile(rf"{_DASHED}|{_H}{{32}}")
#: A pseudonym as it appears in output.
PSEUDONYM_RE: Final = re.compile(rf"{PSEUDONYM_PREFIX}[0-9a-f]{{{PSEUDONYM_DIGITS}}}")

_SHORTEST_MATCH: Final = 32
_DASHED_RE: Final = re.compile(_DASHED)


def _dashed_tail(text: str, match: re.Match[str]) -> int | None:
    """Where the run ``match`` ends, if its last 8 digits begin a dashed UUID; else None.

    Leftmost-first scanning takes ``0…0e3e70682`` as one run and would leave
    ``-c209-4cac-629f-6fbed82c07cd`` in clear after its pseudonym.
    """
    end = match.end()
    if match.group("run") is None or text[end : end + 1] != "-":
        return None
    return end if _DASHED_RE.fullmatch(text, end - 8, end + 28) else None


_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def find_clear_uuid(text: str) -> re.Match[str] | None:
    """The first UUID-shaped text left in clear in ``text``, if any (for checks and tests)."""
    return CLEAR_UUID_RE.search(text)


def canonical_uuid(value: str | uuid.UUID) -> str:
    """Lower-case dashed form of a UUID given in any form ``uuid.UUID`` accepts."""
    return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value.strip().lower()))


def _hmac12(key: bytes, message: str) -> str:
    return hmac.digest(key, message.encode(), "sha256").hex()[:PSEUDONYM_DIGITS]


def pseudonym(value: str | uuid.UUID, key: str | bytes) -> str:
    """``uuid:`` + first 12 hex of HMAC-SHA256(key, canonical UUID); ValueError if not a UUID.

    ``key`` is the configured setting (its UTF-8 bytes are the HMAC key), so the same
    pseudonym can be computed with any HMAC tool from the setting's text.
    """
    key_bytes = key.encode() if isinstance(key, str) else key
    return PSEUDONYM_PREFIX + _hmac12(key_bytes, canonical_uuid(value))


class _Text(str):
    """Already-rendered text (an object's repr): the console renderer shows it unquoted."""

    __slots__ = ()

    def __repr__(self) -> str:
        return str.__str__(self)


class Redactor:
    """structlog processor replacing every UUID in an event dict by its pseudonym.

    Must be the last processor before the renderer, after exceptions have been
    rendered to text, so nothing can add a UUID behind its back. It returns a new
    event dict (the caller's objects are never mutated) and never raises: a value
    that cannot be rendered becomes a placeholder instead of leaking.
    """

    __slots__ = ("_key", "_uuid_pseudonym")

    def __init__(self, key: bytes) -> None:
        self._key = key
        # A service logs the same few UUIDs over and over: skip the HMAC for them.
        self._uuid_pseudonym: Callable[[str], str] = functools.lru_cache(maxsize=4096)(
            self._compute_uuid_pseudonym
        )

    def _compute_uuid_pseudonym(self, hex32: str) -> str:
        canonical = f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"
        return PSEUDONYM_PREFIX + _hmac12(self._key, canonical)

    def _pseudonym_of(self, match: re.Match[str]) -> str:
        dashed = match.group("dashed")
        if dashed is not None:
            return self._uuid_pseudonym(dashed.replace("-", "").lower())
        return self._pseudonym_of_run(match.group("run"))

    def _pseudonym_of_run(self, run: str) -> str:
        run = run.lower()
        if len(run) == _SHORTEST_MATCH:
            return self._uuid_pseudonym(run)
        return HEX_PSEUDONYM_PREFIX + _hmac12(self._key, run)

    def redact_text(self, text: str) -> str:
        """``text`` with every UUID form (and every longer hex run) pseudonymised."""
        for _ in range(3):
            redacted, again = self._redact_once(text)
            if not again:
                return redacted
            text = redacted
        return CLEAR_UUID_RE.sub(PSEUDONYM_PREFIX + "redacted", text)

    def _redact_once(self, text: str) -> tuple[str, bool]:
        """One pass; ``again`` when a pseudonym now touches hex digits that followed a UUID.

        ("uuid:" + 12 hex + 20 hex that followed the UUID would be a new 32-hex run.)
        """
        if len(text) < _SHORTEST_MATCH:
            return text, False
        # Every form holds 32 hex digits: counting them (in C) skips the regex for prose,
        # where every a-f letter and digit would start a failed match attempt.
        raw = text.encode("utf-8", "surrogatepass")
        if len(raw) - len(raw.translate(None, _HEX_BYTES)) < _SHORTEST_MATCH:
            return text, False
        parts: list[str] = []
        done = 0
        again = False
        while (match := _UUID_RE.search(text, done)) is not None:
            start, end = match.span()
            tail = _dashed_tail(text, match)
            if tail is not None:
                # A hex run that ends in the first group of a dashed UUID ("0000…e3e70682-c209-…"):
                # the dashed UUID is the identifier; the digits before it are only what precedes it.
                if tail - start - 8 >= _SHORTEST_MATCH:
                    parts += (text[done:start], self._pseudonym_of_run(text[start : tail - 8]))
                else:
                    parts.append(text[done : tail - 8])
                dashed = text[tail - 8 : tail + 28]
                parts.append(self._uuid_pseudonym(dashed.replace("-", "").lower()))
                done = tail + 28
                again = again or text[done : done + 1] in _HEX_DIGITS
                continue
            if start - len(_URN) >= done and text[start - len(_URN) : start].lower() == _URN:
                start -= len(_URN)
            elif start > done and text[start - 1] == "{" and text[end : end + 1] == "}":
                start, end = start - 1, end + 1
            parts += (text[done:start], self._pseudonym_of(match))
            done = end
            again = again or text[end : end + 1] in _HEX_DIGITS
        if not parts:
            return text, False
        parts.append(text[done:])
        return "".join(parts), again

    def redact_uuid(self, value: uuid.UUID) -> str:
        """The pseudonym of a ``uuid.UUID`` object."""
        return self._uuid_pseudonym(value.hex)

    def redact_value(self, value: Any, depth: int = 0) -> Any:
        """A redacted copy of ``value``: containers rebuilt, other objects rendered to text."""
        kind = type(value)
        if kind is str:
            return self.redact_text(value)
        if kind in _PLAIN_TYPES:
            return value
        try:
            return self._redact_other(value, depth)
        except Exception:
            return self._placeholder(value)

    def _redact_other(self, value: Any, depth: int) -> Any:
        if isinstance(value, uuid.UUID):
            return self.redact_uuid(value)
        if depth >= MAX_DEPTH:
            return _Text("<nested too deep>")
        kind = type(value)
        nested = depth + 1
        if kind is dict:
            return self._redact_dict(value, nested)
        if kind is list or kind is set or kind is frozenset:
            return [self.redact_value(item, nested) for item in value]
        if kind is tuple:
            return tuple(self.redact_value(item, nested) for item in value)
        if isinstance(value, bytes | bytearray | memoryview):
            return _Text(self.redact_text(repr(bytes(value))))
        if isinstance(value, str):  # str subclasses, e.g. StrEnum members
            return self.redact_text(str.__str__(value))
        structlog_form = getattr(value, "__structlog__", None)
        if callable(structlog_form):
            return self.redact_value(structlog_form(), nested)
        return _Text(self.redact_text(repr(value)))

    def _redact_dict(self, mapping: MutableMapping[Any, Any], depth: int) -> dict[Any, Any]:
        """A redacted copy; the common cases (short str, numbers) are inlined for speed."""
        out: dict[Any, Any] = {}
        for key, value in mapping.items():
            if type(key) is not str or len(key) >= _SHORTEST_MATCH:
                key = self._redact_key(key, depth)
            kind = type(value)
            if kind is str:
                if len(value) >= _SHORTEST_MATCH:
                    value = self.redact_text(value)
            elif kind not in _PLAIN_TYPES:
                value = self.redact_value(value, depth)
            out[key] = value
        return out

    def _redact_key(self, key: Any, depth: int) -> Any:
        if type(key) is str:
            return self.redact_text(key)
        redacted = self.redact_value(key, depth)
        return redacted if type(redacted) in _PLAIN_TYPES else str(redacted)

    def _placeholder(self, value: Any) -> str:
        try:
            name = type(value).__qualname__
        except Exception:
            name = "object"
        return _Text(self.redact_text(f"<unrenderable {name}>"))

    def __call__(
        self, logger: object, method_name: str, event_dict: MutableMapping[str, Any]
    ) -> dict[str, Any]:
        """Processor entry point: a redacted copy of the whole event dict."""
        try:
            return self._redact_dict(event_dict, 0)
        except Exception as exc:  # a broken mapping: say so, show nothing of it
            return {"event": "log event could not be redacted", "error": type(exc).__name__}
