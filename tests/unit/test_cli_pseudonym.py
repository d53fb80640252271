"""`consumergen pseudonym UUID`: what operators run to find a consumer's log lines."""

from __future__ import annotations

import hashlib
import hmac
import uuid

import pytest
from click.testing import CliRunner

from service.cli import cli

U = uuid.UUID("a1b2c3d4-e5f6-4789-8abc-def012345678")


def run(*args: str, key: str | None = "operator-key") -> tuple[int, str, str]:
    env = {"CONSUMERGEN_LOG_REDACTION_KEY": key}
    result = CliRunner().invoke(cli, ["pseudonym", *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    "form", [str(U), str(U).upper(), U.hex, "{" + str(U) + "}", "urn:uuid:" + str(U)]
)
def test_prints_the_pseudonym_under_the_configured_key(form: str) -> None:
    code, out, err = run(form)
    digest = hmac.new(b"operator-key", str(U).encode(), hashlib.sha256).hexdigest()
    assert (code, out, err) == (0, f"uuid:{digest[:12]}\n", "")


def test_bad_uuid_is_a_one_line_usage_error() -> None:
    code, out, err = run("not-a-uuid")
    assert code == 2 and out == ""
    assert err == "consumergen pseudonym: not a UUID: 'not-a-uuid'\n"


def test_without_a_key_there_is_no_pseudonym_to_print() -> None:
    code, out, err = run(str(U), key=None)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and "CONSUMERGEN_LOG_REDACTION_KEY is not set" in err
