"""Unusable TLS files are configuration errors that name the setting, caught before any
connection: every verb exits 2 with one line (no broker is needed to see it)."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.config import ConfigError, load_settings
from service.kafka.clients import client_options, ssl_context
from tests.support.certs import CertificateSet, make_certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertificateSet:
    return make_certificates(tmp_path_factory.mktemp("certs"))


def test_the_context_verifies_the_broker_and_its_host_name(certs: CertificateSet) -> None:
    settings = load_settings(security_protocol="SSL", ssl_cafile=certs.ca)
    context = client_options(settings)["ssl_context"]
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert context.minimum_version >= ssl.TLSVersion.TLSv1_2


def test_an_encrypted_client_key_opens_with_its_password(certs: CertificateSet) -> None:
    settings = load_settings(
        security_protocol="SSL",
        ssl_cafile=certs.ca,
        ssl_certfile=certs.client_encrypted.cert,
        ssl_keyfile=certs.client_encrypted.key,
        ssl_keyfile_password=certs.client_key_password,
    )
    assert isinstance(ssl_context(settings), ssl.SSLContext)


def _bad(certs: CertificateSet, case: str, tmp_path: Path) -> tuple[dict[str, object], str]:
    not_pem = tmp_path / "not-a-certificate.pem"
    not_pem.write_text("hello\n")
    cases: dict[str, tuple[dict[str, object], str]] = {
        "missing ca": ({"ssl_cafile": tmp_path / "nope.crt"}, "CONSUMERGEN_SSL_CAFILE="),
        "ca not pem": ({"ssl_cafile": not_pem}, "CONSUMERGEN_SSL_CAFILE="),
        "wrong key password": (
            {
                "ssl_cafile": certs.ca,
                "ssl_certfile": certs.client_encrypted.cert,
                "ssl_keyfile": certs.client_encrypted.key,
                "ssl_keyfile_password": "not-the-key-pw-0815",
            },
            "CONSUMERGEN_SSL_CERTFILE=",
        ),
        "key of another certificate": (
            {
                "ssl_cafile": certs.ca,
                "ssl_certfile": certs.client.cert,
                "ssl_keyfile": certs.broker.key,
            },
            "the certificate and key cannot be used",
        ),
        "key without certificate": (
            {"ssl_cafile": certs.ca, "ssl_keyfile": certs.client.key},
            "CONSUMERGEN_SSL_KEYFILE is set without CONSUMERGEN_SSL_CERTFILE",
        ),
    }
    return cases[case]


CASES = [
    "missing ca",
    "ca not pem",
    "wrong key password",
    "key of another certificate",
    "key without certificate",
]


@pytest.mark.parametrize("case", CASES)
def test_an_unusable_file_names_the_setting(
    case: str, certs: CertificateSet, tmp_path: Path
) -> None:
    fields, expected = _bad(certs, case, tmp_path)
    settings = load_settings(security_protocol="SSL", **fields)
    with pytest.raises(ConfigError) as caught:
        ssl_context(settings)
    message = str(caught.value)
    assert expected in message, message
    assert "not-the-key-pw-0815" not in message and "-----BEGIN" not in message


@pytest.mark.parametrize("verb", [["topics", "create"], ["produce", "--file", "-"], ["run"]])
def test_every_verb_exits_2_with_one_line(
    verb: list[str], certs: CertificateSet, tmp_path: Path
) -> None:
    fields, expected = _bad(certs, "wrong key password", tmp_path)
    env = {f"CONSUMERGEN_{name.upper()}": str(value) for name, value in fields.items()}
    env |= {"CONSUMERGEN_SECURITY_PROTOCOL": "SSL", "CONSUMERGEN_BOOTSTRAP_SERVERS": "127.0.0.1:1"}
    result = CliRunner().invoke(cli, verb, env=env, input="")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 3 and any(expected in line for line in lines), result.stderr
    assert "not-the-key-pw-0815" not in result.output
