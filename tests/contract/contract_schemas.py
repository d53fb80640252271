"""The ``schemas/`` files as validators, with the semantics other languages get.

Two details of the Python ``jsonschema`` package differ from the JSON Schema spec and
would make "the models agree with the schema" a statement about Python quirks:
- ``pattern`` uses Python's ``$``, which also matches before a final newline; the spec
  says ECMA-262, where ``$`` is the end of the string. We compile ``$`` as ``\\Z``.
- ``format`` is only an annotation in draft 2020-12; we turn assertions on (and
  ``rfc3339-validator`` must be installed for ``date-time``, which we check).
"""

from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
CORPUS = Path(__file__).resolve().parent / "corpus"
EVENT = "consumer-event.v1.schema.json"
DEAD_LETTER = "dead-letter.schema.json"
OUTCOME = "outcome.schema.json"

_UNESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    if validator.is_type(instance, "string") and not re.search(
        _UNESCAPED_DOLLAR.sub(r"\\Z", pattern), instance
    ):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(Draft202012Validator, {"pattern": _ecma_pattern})


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((SCHEMAS / name).read_text(encoding="utf-8")))


@cache
def _registry() -> Registry:
    resources = [
        (load(n)["$id"], Resource.from_contents(load(n))) for n in (EVENT, DEAD_LETTER, OUTCOME)
    ]
    return Registry().with_resources(resources)


@cache
def validator(name: str) -> Any:
    checker = Draft202012Validator.FORMAT_CHECKER
    assert "date-time" in checker.checkers, "install rfc3339-validator for date-time checks"
    return _Validator(load(name), registry=_registry(), format_checker=checker)


def schema_accepts(name: str, document: Any) -> bool:
    return bool(validator(name).is_valid(document))
