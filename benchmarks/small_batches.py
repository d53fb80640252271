"""``python -m benchmarks small-batches``: the daemon's CPU when its batches are small.

Issue 22: at 1,000 events/s offered one record per request the daemon spent 500-900 µs
of CPU per event (against about 110 at full speed), and a lone event about 3.5 ms: the
fixed costs of a batch and of a poll, paid for one or a few records.  This measures
exactly that, in three phases on one daemon (a fresh database and topics each run):

* **quiet**: no event for ``--quiet-seconds``: what the daemon burns doing nothing
  (fetch polls, heartbeats, probes), in ms of CPU per second;
* **lone**: ``--lone-events`` events one at a time, each sent with
  ``EventProducer.request`` and its outcome awaited before the next (the timeline's
  idle load): CPU per event, gross and net of the quiet rate over the phase's time;
* **rate**: ``--rate`` events/s offered one record per request (the timeline's
  ``per-request`` producer, reply headers on) for ``--seconds``: CPU per event.

CPU is the daemon's, every thread (``/proc/PID/task/*/schedstat``, ns).  ``--tree``
(repeatable) names source trees whose daemons are measured in turn on the same broker,
run after run (an A/B on a shared machine: the load moves between runs, so both trees
see the same minutes); the default is this tree.  ``--counts`` runs the daemons under
``benchmarks/loop_counts.py`` and reports, per event, the loop's iterations, callbacks,
tasks, timers and garbage collections (its wrappers cost CPU: counted runs are for the
counts only).  Each run ends with the database checked against the independent model.

Why this module is long: one run's three phases, the trees run in turn, the counting and
profiling hooks and the tables (medians and ranges, the per-batch fit, the counts) are
one measurement, read in one place; the daemon-side counting is apart
(``benchmarks/loop_counts.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.drivers import drive
from benchmarks.infra import REPO, Infra
from benchmarks.latency import daemon_settings
from benchmarks.measure import PARTITIONS, median, verify, write_json
from benchmarks.workload import Workload
from service.testing.daemon_process import DaemonProcess, sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument(
        "--tree",
        action="append",
        type=Path,
        default=None,
        help="a source tree whose daemon is measured (repeat for an A/B; default: this one)",
    )
    parser.add_argument("--runs", type=int, default=4, help="runs of every tree, interleaved")
    parser.add_argument("--quiet-seconds", type=float, default=5.0)
    parser.add_argument("--lone-events", type=int, default=100)
    parser.add_argument("--lone-gap", type=float, default=0.02, help="seconds between events")
    parser.add_argument("--rate", type=float, default=1_000.0)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--mode", choices=["per-request", "batching"], default="per-request")
    parser.add_argument("--consumers", type=int, default=2_000)
    parser.add_argument("--counts", action="store_true", help="count the loop's work instead")
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="with --counts: cProfile the loop thread in the lone and rate phases, into DIR",
    )
    parser.add_argument(
        "--set", action="append", default=[], metavar="SETTING=VALUE", help="a daemon setting"
    )
    parser.add_argument("--json", type=Path, default=None)


def say(text: str) -> None:
    print(text, flush=True)


def user_system(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of the whole process (``/proc/PID/stat``, ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_ns(pid: int) -> tuple[int, int]:
    """On-CPU ns of every live thread of ``pid``, and of its main thread (the loop's)."""
    total = main = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            ns = int((task / "schedstat").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue  # a thread that ended meanwhile
        total += ns
        if task.name == str(pid):
            main = ns
    return total, main


def tree_label(tree: Path) -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = "?"
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--", "service"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{tree.name}@{commit}{'+dirty' if dirty else ''}"


def _daemon(
    infra: Infra,
    tree: Path,
    name: str,
    counts: Path | None,
    profile: Path | None,
    **settings: Any,
) -> Any:
    daemon: DaemonProcess = infra.daemon(name, **settings)
    daemon.env["PYTHONPATH"] = str(tree)
    daemon.cwd = tree
    if counts is not None:
        daemon.python_args = [str(REPO / "benchmarks" / "loop_counts.py")]
        daemon.env["BENCHMARKS_LOOP_COUNTS"] = str(counts)
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            daemon.env["BENCHMARKS_PROFILE_PHASES"] = str(profile)
    return daemon.start()


def _read_counts(path: Path | None) -> dict[str, float]:
    if path is None or not path.exists():
        return {}
    time.sleep(0.45)  # the writer's period, twice: the phase's last work is in the file
    counts: dict[str, float] = json.loads(path.read_text())
    return counts


async def one_run(infra: Infra, tree: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    from service.config import load_settings
    from service.contract.replies import request_headers
    from service.producer import EventProducer
    from service.producer.replies import ReplyListener
    from service.store.migrate import upgrade

    url = await infra.fresh_database(args.db)
    await upgrade(url)
    topic = await infra.new_topic("small", PARTITIONS)
    replies_topic = await infra.new_topic("replies", 1)
    group = f"small-{uuid.uuid4().hex[:8]}"
    counts_file = infra.root / f"counts-{uuid.uuid4().hex[:8]}.json" if args.counts else None
    profile = None
    if args.counts and args.profile is not None:
        profile = args.profile / f"{tree.name}-{uuid.uuid4().hex[:6]}"
    daemon = _daemon(
        infra,
        tree,
        f"small-{tree.name}",
        counts_file,
        profile,
        database_url=url,
        topic=topic,
        dlq_topic=await infra.new_topic("dlq", 1),
        outcomes_topic=await infra.new_topic("outcomes", PARTITIONS),
        reply_topic=replies_topic,
        group_id=group,
        **daemon_settings(args.set),
    )
    workload = Workload(consumers=args.consumers, seed=seed)
    settings = load_settings(
        bootstrap_servers=infra.bootstrap, topic=topic, reply_topic=replies_topic
    )
    phases: dict[str, dict[str, float]] = {}

    Mark = tuple[float, tuple[int, int], dict[str, float], tuple[float, float], float]

    def batches() -> float:
        # (scraped outside the CPU marks: the daemon's HTTP thread serves it)
        return sample(daemon.metrics(), "consumergen_batch_size_count")

    def mark(profiled: bool = False, name: str = "") -> Mark:
        if name:  # (for a tool attached from outside: strace, perf)
            say(f"[phase] {name} begins, daemon pid {daemon.pid}")
        taken = batches()
        if profile is not None and profiled:
            daemon.kill(signal.SIGUSR1)
        counted = _read_counts(counts_file)
        return time.monotonic(), cpu_ns(daemon.pid), counted, user_system(daemon.pid), taken

    def phase(name: str, began: Mark, events: int) -> None:
        if profile is not None and name != "quiet":
            daemon.kill(signal.SIGUSR2)
        counted = _read_counts(counts_file)
        ended = (time.monotonic(), cpu_ns(daemon.pid), counted, user_system(daemon.pid))
        ended_batches = batches()
        seconds = ended[0] - began[0]
        cpu = (ended[1][0] - began[1][0]) / 1e9
        loop_cpu = (ended[1][1] - began[1][1]) / 1e9
        counted = {
            key: value - began[2].get(key, 0)
            for key, value in ended[2].items()
            if key != "written at"
        }
        phases[name] = {
            "seconds": seconds,
            "cpu": cpu,
            "loop_cpu": loop_cpu,
            "user": ended[3][0] - began[3][0],
            "system": ended[3][1] - began[3][1],
            "events": events,
            "batches": ended_batches - began[4],
        }
        phases[name] |= {f"count {key}": value for key, value in counted.items()}

    try:
        await daemon.wait_assigned()
        await asyncio.sleep(2)  # the group's first commits and metadata settle
        start = mark(name="quiet")
        await asyncio.sleep(args.quiet_seconds)
        phase("quiet", start, 0)

        async with EventProducer(settings) as producer:
            await producer.replies()
            start = mark(profiled=True, name="lone")
            for _ in range(args.lone_events):
                pending = await producer.request(workload.next())
                await pending.outcome(60)
                await asyncio.sleep(args.lone_gap)
            phase("lone", start, args.lone_events)

        listener = ReplyListener(settings, 0)
        await listener.start()
        replied = 0

        def headers(sequence: int) -> list[tuple[str, bytes]]:
            correlation = sequence.to_bytes(8, "big")

            def done(_: object) -> None:
                nonlocal replied
                replied += 1

            listener.expect(correlation).add_done_callback(done)
            return request_headers(replies_topic, 0, correlation)

        try:
            start = mark(profiled=True, name="rate")
            offered = await drive(
                args.mode,
                infra.bootstrap,
                topic,
                workload.records(),
                rate=args.rate,
                seconds=args.seconds,
                on_sent=lambda *_: None,
                headers=headers,
            )
            deadline = time.monotonic() + 120
            while replied < offered.events and time.monotonic() < deadline:
                daemon.check_alive()
                await asyncio.sleep(0.01)
            phase("rate", start, offered.events)
            phases["rate"]["achieved"] = offered.achieved
        finally:
            await listener.close()
        sent = args.lone_events + offered.events
        deadline = time.monotonic() + 60
        while await infra.committed_total(group, topic) < sent:
            if time.monotonic() > deadline:
                raise RuntimeError("the daemon did not commit every offset")
            await asyncio.sleep(0.1)
    finally:
        await daemon.terminate()
    verified = await verify(url, workload.belief)
    await infra.drop_database(url)
    quiet = phases["quiet"]
    quiet_rate = quiet["cpu"] / quiet["seconds"]
    lone, rate = phases["lone"], phases["rate"]
    return {
        "tree": tree_label(tree),
        "quiet_ms_per_s": quiet_rate * 1e3,
        "lone_us_per_event": lone["cpu"] / lone["events"] * 1e6,
        "lone_net_us_per_event": (lone["cpu"] - quiet_rate * lone["seconds"])
        / lone["events"]
        * 1e6,
        "lone_loop_us_per_event": lone["loop_cpu"] / lone["events"] * 1e6,
        "rate_us_per_event": rate["cpu"] / rate["events"] * 1e6,
        "rate_loop_us_per_event": rate["loop_cpu"] / rate["events"] * 1e6,
        "achieved": rate["achieved"],
        "rate_events_per_batch": rate["events"] / rate["batches"] if rate["batches"] else 0.0,
        "verified": verified,
        "load_average": os.getloadavg()[0],
        "phases": phases,
    }


COLUMNS = (
    ("quiet_ms_per_s", "quiet: ms CPU/s"),
    ("lone_us_per_event", "lone: µs/event"),
    ("lone_net_us_per_event", "lone, net of quiet: µs/event"),
    ("lone_loop_us_per_event", "lone, loop thread: µs/event"),
    ("rate_us_per_event", "rate: µs/event"),
    ("rate_loop_us_per_event", "rate, loop thread: µs/event"),
    ("achieved", "rate: achieved ev/s"),
    ("rate_events_per_batch", "rate: events/batch"),
)


def _cell(values: list[float], digits: int = 0) -> str:
    ordered = sorted(values)
    d = digits
    return f"{median(ordered):,.{d}f} ({ordered[0]:,.{d}f}-{ordered[-1]:,.{d}f})"


def table(runs: list[dict[str, Any]]) -> str:
    trees = list(dict.fromkeys(run["tree"] for run in runs))
    lines = [
        "| tree | runs | " + " | ".join(title for _, title in COLUMNS) + " | DB == model |",
        "|---|---:|" + "---|" * len(COLUMNS) + "---|",
    ]
    for tree in trees:
        mine = [run for run in runs if run["tree"] == tree]
        cells = " | ".join(
            _cell([run[key] for run in mine], 1 if key == "rate_events_per_batch" else 0)
            for key, _ in COLUMNS
        )
        ok = "yes" if all(run["verified"] for run in mine) else "**no**"
        lines.append(f"| {tree} | {len(mine)} | {cells} | {ok} |")
    return "\n".join(lines)


def per_batch_fit(runs: list[dict[str, Any]]) -> str:
    """The rate phase's CPU split into a cost per batch and a cost per event: a run's
    batch sizes follow the machine's load (a daemon that keeps up takes smaller
    batches), so its µs per event alone does not compare runs.  Least squares over a
    tree's runs of ``µs/event = per_event + per_batch / (events per batch)``."""
    lines = []
    for tree in dict.fromkeys(run["tree"] for run in runs):
        mine = [r for r in runs if r["tree"] == tree and r["rate_events_per_batch"] > 0]
        x = [1 / r["rate_events_per_batch"] for r in mine]
        y = [r["rate_us_per_event"] for r in mine]
        if len(mine) < 3 or len(set(x)) < 2:
            continue
        fit = statistics.linear_regression(x, y)
        lines.append(
            f"{tree}: rate phase ≈ {fit.intercept:,.0f} µs per event + {fit.slope:,.0f} µs "
            f"per batch (least squares over {len(mine)} runs, batches of "
            f"{min(r['rate_events_per_batch'] for r in mine):.1f}-"
            f"{max(r['rate_events_per_batch'] for r in mine):.1f} events)"
        )
    return "\n".join(lines)


def counts_table(runs: list[dict[str, Any]]) -> str:
    """Per event of the lone and rate phases, per second of the quiet one (medians)."""
    trees = list(dict.fromkeys(run["tree"] for run in runs))
    keys = sorted(
        {key for run in runs for phase in run["phases"].values() for key in phase}
        - {"seconds", "cpu", "loop_cpu", "user", "system", "events", "batches", "achieved"}
    )
    lines = [
        "| tree | count | quiet, per s | lone, per event | rate, per event |",
        "|---|---|---:|---:|---:|",
    ]

    def per(mine: list[dict[str, Any]], name: str, key: str, unit: str) -> float:
        return median([r["phases"][name].get(key, 0) / r["phases"][name][unit] for r in mine])

    for tree in trees:
        mine = [run for run in runs if run["tree"] == tree]
        for key in keys:
            quiet = per(mine, "quiet", key, "seconds")
            lone = per(mine, "lone", key, "events")
            rate = per(mine, "rate", key, "events")
            lines.append(f"| {tree} | {key[6:]} | {quiet:.1f} | {lone:.1f} | {rate:.2f} |")
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    trees = [tree.resolve() for tree in (args.tree or [REPO])]
    load_before = os.getloadavg()
    say(f"[small-batches] load average before: {load_before[0]:.2f} {load_before[1]:.2f}")
    infra = Infra().start(postgres=args.db == "postgres")
    runs: list[dict[str, Any]] = []
    try:
        for index in range(args.runs):
            # Alternate the order too, so neither tree always runs right after the other.
            for tree in trees if index % 2 == 0 else list(reversed(trees)):
                before = os.getloadavg()[0]
                result = await one_run(infra, tree, args, seed=5_000 + index)
                result["run"] = index
                result["load_before"] = before
                runs.append(result)
                say(
                    f"[{result['tree']} run {index}] quiet {result['quiet_ms_per_s']:.1f} ms/s, "
                    f"lone {result['lone_us_per_event']:,.0f} µs/event "
                    f"(net {result['lone_net_us_per_event']:,.0f}), "
                    f"rate {result['rate_us_per_event']:,.0f} µs/event at "
                    f"{result['achieved']:,.0f}/s ({result['rate_events_per_batch']:.1f}/batch), "
                    f"load {result['load_before']:.2f} before, {result['load_average']:.2f} after, "
                    f"model {'==' if result['verified'] else '!='} database"
                )
    finally:
        await infra.close_admin()
        infra.stop()
    load_after = os.getloadavg()
    say(f"[small-batches] load average after: {load_after[0]:.2f} {load_after[1]:.2f}")
    say(table(runs))
    say(per_batch_fit(runs))
    if args.counts:
        say(counts_table(runs))
    results = {"runs": runs, "load": [load_before[0], load_after[0]]}
    write_json(args.json, results)
    return results
