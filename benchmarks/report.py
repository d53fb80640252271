"""docs/benchmarks.md (one section per benchmark, each replaced by its latest run) and charts."""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parents[1] / "docs"
MARKDOWN = DOCS / "benchmarks.md"

_HEADER = """# Benchmarks

Produced by `python -m benchmarks …` (see the README).  Every figure in a section comes
from one run of that section's command, on the machine it names: the limits (raw Kafka
consume, raw database writes) and the service are measured side by side in the same run,
against a Kafka broker and a PostgreSQL cluster the benchmark starts for itself, so the
ratios mean something even where the absolute numbers do not.

**Noise.**  The machine these were taken on has 2 cores shared by the broker (a JVM),
PostgreSQL, the daemon, the benchmark's own producer/poller and, at the time, other
engineers' test suites.  Absolute numbers move by tens of percent between runs; each
figure is the median of the repeats stated.  Re-run on an idle machine before quoting.
"""


def machine_table(machine: dict[str, str]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in machine.items())
    return "| | |\n|---|---|\n" + rows


def update_section(name: str, body: str) -> None:
    """Replace (or append) the section between ``<!-- name:start -->`` and ``:end``."""
    DOCS.mkdir(exist_ok=True)
    text = MARKDOWN.read_text() if MARKDOWN.exists() else _HEADER
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    MARKDOWN.write_text(text)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def bar_chart(
    path: Path,
    title: str,
    groups: list[str],
    series: dict[str, list[float]],
    ylabel: str,
    log: bool = False,
    second: tuple[str, list[str], dict[str, list[float]], str] | None = None,
) -> None:
    """Grouped bars (one group per database); an optional second panel."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if second else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)

    def draw(ax: object, title_: str, groups_: list[str], series_: dict[str, list[float]],
             ylabel_: str, log_: bool) -> None:  # fmt: skip
        width = 0.8 / max(1, len(series_))
        for i, (label, values) in enumerate(series_.items()):
            xs = [g + i * width - 0.4 + width / 2 for g in range(len(groups_))]
            bars = ax.bar(xs, values, width, label=label)  # type: ignore[attr-defined]
            ax.bar_label(bars, labels=[f"{v:,.0f}" for v in values], fontsize=7, rotation=90,  # type: ignore[attr-defined]
                         padding=2)  # fmt: skip
        ax.set_xticks(range(len(groups_)), groups_)  # type: ignore[attr-defined]
        ax.set_ylabel(ylabel_)  # type: ignore[attr-defined]
        ax.set_title(title_)  # type: ignore[attr-defined]
        if log_:
            ax.set_yscale("log")  # type: ignore[attr-defined]
        ax.margins(y=0.25)  # type: ignore[attr-defined]
        ax.legend(fontsize=8)  # type: ignore[attr-defined]

    draw(axes[0][0], title, groups, series, ylabel, log)
    if second:
        draw(axes[0][1], second[0], second[1], second[2], second[3], False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def line_chart(
    path: Path,
    title: str,
    series: dict[str, list[tuple[float, float]]],
    xlabel: str,
    ylabel: str,
    second: tuple[str, dict[str, list[tuple[float, float]]], str] | None = None,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if second else 1
    fig, axes = plt.subplots(1, panels, figsize=(7 * panels, 4.5), squeeze=False)
    for ax, (title_, series_, ylabel_) in zip(
        axes[0], [(title, series, ylabel), *([second] if second else [])], strict=True
    ):
        for label, points in series_.items():
            ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", label=label)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel_)
        ax.set_title(title_)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
