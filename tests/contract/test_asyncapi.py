"""schemas/asyncapi.yaml, parsed by the AsyncAPI project's own parser.

``@asyncapi/parser`` (npm, installed by scripts/bootstrap into .tools/node_modules) is
run by .tools/validate-asyncapi.mjs, which prints every diagnostic and a summary of what
it resolved.  A diagnostic of error severity fails; so does a document that disagrees
with the code: the topics' default names, the payloads' and dead-letter headers'
fields (they must be the JSON Schemas', resolved through the ``$ref``s) and the headers
``service.contract.records`` writes.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from service.config import Settings
from service.contract.records import CONTENT_TYPE_HEADER, ERROR_HEADERS, EVENT_CONTENT_TYPE

ROOT = Path(__file__).parents[2]
SCHEMAS = ROOT / "schemas"
VALIDATOR = ROOT / ".tools" / "validate-asyncapi.mjs"


def _validate(document: Path) -> tuple[int, list[dict[str, Any]], dict[str, Any] | None]:
    node = shutil.which("node")
    assert node, "node is not installed: run scripts/bootstrap"
    assert (ROOT / ".tools" / "node_modules" / "@asyncapi" / "parser").is_dir(), (
        "@asyncapi/parser is not installed: run scripts/bootstrap"
    )
    done = subprocess.run(
        [node, str(VALIDATOR), str(document)],
        cwd=VALIDATOR.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    assert lines, f"the validator printed nothing: {done.stderr}"
    summary = lines[-1] if lines[-1].get("summary") else None
    diagnostics = [line for line in lines if not line.get("summary")]
    return done.returncode, diagnostics, summary


def _schema_properties(name: str) -> list[str]:
    return list(json.loads((SCHEMAS / name).read_text())["properties"])


def test_the_document_parses_without_errors_and_agrees_with_the_contract() -> None:
    returncode, diagnostics, summary = _validate(SCHEMAS / "asyncapi.yaml")
    errors = [d for d in diagnostics if d["severity"] == "Error"]
    assert errors == [] and returncode == 0, errors
    assert summary is not None
    assert summary["asyncapi"].startswith("3.")
    defaults = Settings.model_fields
    assert summary["channels"] == [
        defaults["topic"].default,
        defaults["dlq_topic"].default,
        "consumer-events.outcomes",  # no default: the name compose.yaml and deploy/ use
    ]
    messages = summary["messages"]
    assert messages["ConsumerEvent"]["payload"] == _schema_properties(
        "consumer-event.v1.schema.json"
    )
    assert messages["Outcome"]["payload"] == _schema_properties("outcome.schema.json")
    dead_letter_headers = messages["DeadLetter"]["headers"]
    assert dead_letter_headers == _schema_properties("dead-letter.schema.json")
    assert set(ERROR_HEADERS) <= set(dead_letter_headers)
    assert messages["ConsumerEvent"]["headers"] == [CONTENT_TYPE_HEADER]


def test_keys_and_the_content_type_header_are_documented() -> None:
    document = yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())
    messages = document["components"]["messages"]
    event = messages["ConsumerEvent"]
    assert event["headers"]["properties"][CONTENT_TYPE_HEADER]["const"] == EVENT_CONTENT_TYPE
    assert "consumer_uuid" in event["bindings"]["kafka"]["key"]["description"]
    assert "event id" in messages["Outcome"]["bindings"]["kafka"]["key"]["description"]
    assert (
        "original record's key" in messages["DeadLetter"]["bindings"]["kafka"]["key"]["description"]
    )


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for value in node.values() for r in _refs(value)]
    if isinstance(node, list):
        return [r for value in node for r in _refs(value)]
    return []


def test_every_reference_is_local_so_nothing_is_fetched() -> None:
    documents = [yaml.safe_load((SCHEMAS / "asyncapi.yaml").read_text())]
    documents += [json.loads(p.read_text()) for p in SCHEMAS.glob("*.schema.json")]
    refs = [ref for document in documents for ref in _refs(document)]
    assert refs
    for ref in refs:
        assert "://" not in ref, ref
        target = ref.split("#", 1)[0]
        assert not target or (SCHEMAS / target).is_file(), ref


def test_a_broken_document_is_refused(tmp_path: Path) -> None:
    """The parser is really judging: a dangling channel reference is an error."""
    for schema in SCHEMAS.glob("*.json"):
        shutil.copy(schema, tmp_path / schema.name)
    text = (SCHEMAS / "asyncapi.yaml").read_text()
    broken = text.replace("$ref: '#/channels/deadLetters'", "$ref: '#/channels/nowhere'", 1)
    assert broken != text
    (tmp_path / "asyncapi.yaml").write_text(broken)
    returncode, diagnostics, _ = _validate(tmp_path / "asyncapi.yaml")
    assert returncode == 1
    assert any(d["severity"] == "Error" for d in diagnostics), diagnostics
