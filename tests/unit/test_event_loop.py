"""``CONSUMERGEN_EVENT_LOOP``: the daemon runs on the loop it names, and asking for uvloop
without it installed is a one-line error naming the setting (exit 2), never a silent
fallback to the other loop."""

from __future__ import annotations

import asyncio
import sys

import pytest
from click.testing import CliRunner

from service.cli import cli
from service.config import ConfigError, load_settings
from service.event_loop import run


async def _loop_class() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_default_is_the_standard_loop() -> None:
    assert run(load_settings(), _loop_class()).startswith("asyncio")


def test_uvloop_is_the_loop_it_runs_on() -> None:
    assert run(load_settings(event_loop="uvloop"), _loop_class()).startswith("uvloop")


def test_uvloop_missing_names_the_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now fails
    main = _loop_class()
    with pytest.raises(ConfigError, match="CONSUMERGEN_EVENT_LOOP"):
        run(load_settings(event_loop="uvloop"), main)
    assert main.cr_frame is None  # closed, not left un-awaited


def test_run_without_uvloop_is_one_line_and_exit_2(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    monkeypatch.setenv("CONSUMERGEN_EVENT_LOOP", "uvloop")
    monkeypatch.setenv("CONSUMERGEN_LOG_REDACTION_KEY", "test")  # no warning line either
    result = CliRunner().invoke(cli, ["run"])
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "CONSUMERGEN_EVENT_LOOP" in lines[0], result.output


def test_uvloop_missing_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator reads this one line and nothing else: it names the setting, what it
    # needs, and the command that installs it.
    monkeypatch.setitem(sys.modules, "uvloop", None)
    main = _loop_class()
    with pytest.raises(ConfigError) as caught:
        run(load_settings(event_loop="uvloop"), main)
    assert str(caught.value) == (
        "CONSUMERGEN_EVENT_LOOP=uvloop needs uvloop: install the 'fast' extra "
        "(pip install 'consumer-generation-service[fast]')"
    )
