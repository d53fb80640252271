"""The command line lists every verb and fails cleanly on bad verbs and configuration."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from service.cli import cli


def test_help_lists_the_verbs() -> None:
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for verb in ("produce", "run", "replay", "verify", "show", "db", "pseudonym", "topics"):
        assert f"  {verb}" in result.output


def test_console_script_runs() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service", "--version"], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0
    assert "consumergen" in done.stdout


def test_unknown_verb_is_a_usage_error() -> None:
    result = CliRunner().invoke(cli, ["frobnicate"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_bad_configuration_is_one_line_and_exit_2(monkeypatch) -> None:
    monkeypatch.setenv("CONSUMERGEN_TOPIC_PARTITIONS", "-1")
    done = subprocess.run(
        [sys.executable, "-m", "service", "topics", "create"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert "CONSUMERGEN_TOPIC_PARTITIONS" in done.stderr
