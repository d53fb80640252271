"""The ``consumergen`` console script's entry point names the program ``consumergen``
whatever its path, and every verb reads its settings the same way: ``--config`` (a file
of CONSUMERGEN_* lines) is read, and TLS files that cannot be read are a usage error
naming the setting before anything connects, under SSL and SASL_SSL alike (exit 2)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import service.cli as cli_package
from service.cli import cli

UUID = "0b7e4a52-9c1d-4f3e-8a26-5d9b1c7e3f80"


def test_the_entry_point_calls_itself_consumergen(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/some-wrapper", "--help"])
    with pytest.raises(SystemExit) as stopped:
        cli_package.main()
    assert stopped.value.code == 0
    assert capsys.readouterr().out.startswith("Usage: consumergen [OPTIONS] COMMAND [ARGS]...")


def test_the_config_file_is_read_by_the_verb(tmp_path: Path) -> None:
    missing = tmp_path / "from-the-file.db"
    config = tmp_path / "consumergen.env"
    config.write_text(f"CONSUMERGEN_DATABASE_URL=sqlite+aiosqlite:///{missing}\n")
    result = CliRunner().invoke(cli, ["--config", str(config), "show", UUID], env={})
    assert result.exit_code == 2, result.output
    assert "from-the-file.db" in result.stderr.splitlines()[-1]
    assert not missing.exists()


@pytest.mark.parametrize("protocol", ["SSL", "SASL_SSL"])
def test_an_unreadable_tls_file_is_named_before_connecting(tmp_path: Path, protocol: str) -> None:
    env = {
        "CONSUMERGEN_SECURITY_PROTOCOL": protocol,
        "CONSUMERGEN_SSL_CAFILE": str(tmp_path / "no-ca.pem"),
        "CONSUMERGEN_SASL_MECHANISM": "PLAIN",
        "CONSUMERGEN_SASL_USERNAME": "u",
        "CONSUMERGEN_SASL_PASSWORD": "p",
    }
    if protocol == "SSL":
        env = {k: v for k, v in env.items() if "SASL" not in k}
    result = CliRunner().invoke(cli, ["produce", "--consumer-uuid", UUID], env=env)
    assert result.exit_code == 2, result.output
    assert result.stderr.splitlines()[-1] == (
        f"Error: CONSUMERGEN_SSL_CAFILE={tmp_path / 'no-ca.pem'}: no such file"
    )
