"""The daemon as a real OS process (``python -m service run``), for kill -9 and SIGTERM tests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from service.embedded._process import free_port


@dataclass
class DaemonProcess:
    env: dict[str, str]
    log_dir: Path
    name: str = "daemon"
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    runs: int = 0
    logs: list[Path] = field(default_factory=list)

    def start(self) -> DaemonProcess:
        self.health_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
        env.update(self.env)
        env["CONSUMERGEN_HEALTH_PORT"] = str(self.health_port)
        env.setdefault("CONSUMERGEN_LOG_FORMAT", "json")
        self.runs += 1
        log = self.log_dir / f"{self.name}-{self.runs}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "service", "run"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    def readiness(self) -> dict[str, object] | None:
        """The /readyz body, or None while the endpoint does not answer."""
        url = f"http://127.0.0.1:{self.health_port}/readyz"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            return dict(json.loads(error.read()))
        except OSError:
            return None

    def get(self, path: str) -> tuple[int, str] | None:
        """(status, body) of GET ``path`` on the health port; None while nothing answers."""
        url = f"http://127.0.0.1:{self.health_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return int(response.status), response.read().decode()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode()
        except OSError:
            return None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """/metrics parsed by prometheus-client's own parser:
        (sample name, sorted labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        answer = self.get("/metrics")
        assert answer is not None and answer[0] == 200, f"/metrics answered {answer}"
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(answer[1])
            for sample in family.samples
        }

    def log_events(self, current_run_only: bool = False) -> list[dict[str, object]]:
        """Every JSON log line of every run, or of the current run only (non-JSON lines
        are skipped)."""
        if current_run_only:
            text = self.logs[-1].read_text(errors="replace") if self.logs else ""
        else:
            text = self.all_logs()
        events = []
        for line in text.splitlines():
            if line.startswith("{"):
                try:
                    events.append(dict(json.loads(line)))
                except ValueError:
                    continue
        return events

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, within: float = 60) -> None:
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.process.returncode}:\n{self.tail()}"
                )
            body = self.readiness()
            if body and body.get("ready"):
                return
            time.sleep(0.1)
        raise AssertionError(f"daemon not ready after {within}s: {self.readiness()}\n{self.tail()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, within: float) -> int:
        assert self.process is not None
        return self.process.wait(within)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 30) -> str:
        if not self.logs:
            return ""
        return "\n".join(self.logs[-1].read_text(errors="replace").splitlines()[-lines:])

    def all_logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def scan_logs(self) -> None:
        """Hand everything the process printed to the suite's UUID leak guard."""
        from log_guard import scan_external

        scan_external(self.all_logs(), f"{self.name} process output")
