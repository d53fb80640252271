"""The daemon as a real OS process (``python -m service run``): for kill -9 and SIGTERM
tests, and for benchmarks that measure a daemon's throughput, RSS and CPU from outside.

One class serves both.  Each ``start()`` is a new run with its own JSON log file in
``log_dir`` (a test may kill and restart the same daemon); the health port is picked
afresh per run.  Signals are explicit: ``kill(sig)`` only sends, ``stop()`` ends the
process for sure (SIGKILL, reaped), ``terminate()`` is the graceful SIGTERM a benchmark
waits for.

A run dies with the process that started it (the kernel's parent-death signal, as the
embedded broker and PostgreSQL do): a killed test run or benchmark leaves no daemon
spinning against a broker that is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from service.embedded.process import die_with_parent, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class DaemonProcess:
    """``env``: the daemon's CONSUMERGEN_* settings (the caller's own CONSUMERGEN_* variables
    are dropped); ``python_args`` go before ``-m service run`` (a profiler, say); ``cwd``:
    the working folder of the process (the caller's when None)."""

    env: dict[str, str]
    log_dir: Path
    name: str = "daemon"
    python_args: list[str] = field(default_factory=list)
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    health_port: int = 0
    read_api_port: int = 0
    runs: int = 0
    started_at: float = 0.0
    logs: list[Path] = field(default_factory=list)

    # -- life cycle -------------------------------------------------------------------
    def start(self) -> DaemonProcess:
        self.health_port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("CONSUMERGEN_")}
        env.update(self.env)
        env["CONSUMERGEN_HEALTH_PORT"] = str(self.health_port)
        if "CONSUMERGEN_READ_API_PORT" not in env:  # several daemons per test: no clash
            self.read_api_port = free_port()
            env["CONSUMERGEN_READ_API_PORT"] = str(self.read_api_port)
        env.setdefault("CONSUMERGEN_LOG_FORMAT", "json")
        self.runs += 1
        log = self.log_dir / f"{self.name}-{self.runs}.log"
        self.logs.append(log)
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, *self.python_args, "-m", "service", "run"],
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=None if self.cwd is None else str(self.cwd),
                preexec_fn=die_with_parent(signal.SIGKILL),
            )
        self.started_at = time.time()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_alive(self) -> None:
        """Raise (with the log's tail) when the current run has exited."""
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(
                f"daemon {self.name} exited with {self.process.returncode}:\n{self.tail()}"
            )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` and return at once (``wait`` collects the exit code)."""
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, within: float) -> int:
        assert self.process is not None
        return self.process.wait(within)

    def stop(self) -> None:
        """SIGKILL the current run if it still runs, and reap it."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def terminate(self, within: float = 60) -> None:
        """SIGTERM (graceful) and wait; SIGKILL if it does not go within ``within`` s."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(self.process.wait, within)
        except subprocess.TimeoutExpired:
            self.stop()

    # -- health port ------------------------------------------------------------------
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

    def metrics(self) -> Samples:
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

    async def wait_assigned(self, within: float = 90) -> None:
        """Until /readyz reports at least one assigned partition."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            self.check_alive()
            body = await asyncio.to_thread(self.readiness)
            if body and int(str(body.get("assigned_partitions") or 0)) > 0:
                return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"daemon {self.name} got no partitions in {within}s:\n{self.tail()}")

    # -- logs -------------------------------------------------------------------------
    def log_events(self, current_run_only: bool = False) -> list[dict[str, object]]:
        """Every JSON log line of every run, or of the current run only (non-JSON lines
        are skipped)."""
        runs = self.logs[-1:] if current_run_only else self.logs
        text = "\n".join(_read(p) for p in runs)
        events = []
        for line in text.splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    events.append(dict(json.loads(line)))
        return events

    def assigned_at(self) -> float | None:
        """Wall-clock time of the first "partitions assigned" log line."""
        for event in self.log_events():
            if event.get("event") == "partitions assigned" and event.get("timestamp"):
                moment = datetime.fromisoformat(str(event["timestamp"]).replace("Z", "+00:00"))
                return moment.timestamp()
        return None

    def tail(self, lines: int = 30) -> str:
        if not self.logs:
            return ""
        return "\n".join(_read(self.logs[-1]).splitlines()[-lines:])

    def all_logs(self) -> str:
        return "\n".join(_read(p) for p in self.logs)

    # -- resources (Linux /proc) --------------------------------------------------------
    def rss_kib(self) -> int:
        return _status_field(self.pid, "VmRSS")

    def peak_rss_kib(self) -> int:
        return _status_field(self.pid, "VmHWM")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks


def sample(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent: a labelled counter appears on first use)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str) -> float:
    """Sum of a sample over all its label sets."""
    return sum(value for (sample_name, _), value in samples.items() if sample_name == name)


def _read(path: Path) -> str:
    """A log's text; empty when the run has not created it (or it was cleaned up)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _status_field(pid: int, name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    return 0
