"""The whole-suite guard itself: a leak must fail a pytest run, a clean run must pass.

Each case runs a tiny pytest in a subprocess with only the guard as plugin (in-process
it would share the outer guard's state and fail the outer session on purpose).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
# A made-up UUID: the inner run is meant to show it.
FAKE = "00000000-1111-4222-8333-444444444444"


def run_inner(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["log_guard"]\n')
    (tmp_path / "test_inner.py").write_text(body)
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_clean_run_passes_and_reports_pseudonyms(tmp_path: Path) -> None:
    result = run_inner(
        tmp_path,
        "import logging, structlog\n"
        "def test_logs():\n"
        f"    structlog.stdlib.get_logger('a').info('applied', consumer='{FAKE}')\n"
        f"    logging.getLogger('aiokafka').warning('member %s', '{FAKE}')\n",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "log guard: scanned 3 log records (2 from tests), 3 with pseudonyms (2 from tests), "
        "and 2 lines of captured sections and external output; 0 leak(s)"
    ) in result.stdout


def test_leak_through_a_raw_handler_fails_the_test_and_the_run(tmp_path: Path) -> None:
    result = run_inner(
        tmp_path,
        "import logging\n"
        "def test_rogue_handler():\n"
        "    rogue = logging.getLogger('rogue')\n"
        "    rogue.addHandler(logging.StreamHandler())\n"
        f"    rogue.warning('consumer %s', '{FAKE}')\n"
        "def test_innocent():\n"
        "    pass\n",
    )
    assert result.returncode == 1
    assert "1 failed, 1 passed" in result.stdout
    assert "unredacted log handler (removed): StreamHandler on logger 'rogue'" in result.stdout
    assert "clear UUID(s) in log output" in result.stdout
    assert "consumer <CLEAR-UUID>" in result.stdout


def test_leak_fed_from_a_subprocess_fails_the_run(tmp_path: Path) -> None:
    result = run_inner(
        tmp_path,
        "from log_guard import scan_external\n"
        "def test_cli_output():\n"
        f"    scan_external('starting consumer {FAKE.replace('-', '')}', 'cli stderr')\n",
    )
    assert result.returncode == 1
    assert "LEAK during test_inner.py::test_cli_output from cli stderr: " in result.stdout
    assert "starting consumer <CLEAR-UUID>" in result.stdout
