"""Hand a daemon process's output to the suite's UUID leak guard (tests/log_guard.py).

Test-only: the guard is a pytest plugin of this suite, so this stays out of
service.testing (which must not need pytest)."""

from __future__ import annotations

from service.testing.daemon_process import DaemonProcess


def scan_daemon_logs(daemon: DaemonProcess) -> None:
    """Everything every run of ``daemon`` printed goes through the leak guard."""
    from log_guard import scan_external

    scan_external(daemon.all_logs(), f"{daemon.name} process output")
