"""Results model, goal checks, the Markdown report and its chart."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

_METRICS = {
    "upload": ": upload",
    "download": ": download",
    "cpu_us": ": server CPU per request (lower is better)",
    "gib_per_cpu_s": ": GiB relayed per proxy CPU-second",
    "instructions": ": server instructions per exchange (callgrind; lower is better)",
}


@dataclass(frozen=True)
class Goal:
    """``ours / baseline >= threshold`` (``> `` if ``strict``, ``<=`` if ``lower``); for delta rows
    ``ours - baseline <= threshold``."""

    threshold: float
    strict: bool = False
    lower: bool = False  # lower is better: a cost such as instructions per request


@dataclass
class Row:
    """One comparison: our variant against a baseline, per-round samples of one metric."""

    section: str
    ours_name: str
    base_name: str
    metric: str  # "value", "upload", "download", "cpu_us"
    unit: str
    ours: list[float] = field(default_factory=list)
    base: list[float] = field(default_factory=list)
    goal: Goal | None = None
    delta: bool = False  # compare by difference, lower is better (memory)
    chart: bool = True
    note: str = ""

    @property
    def label(self) -> str:
        """``ours vs baseline``, with the metric when a variant reports several."""
        return f"{self.ours_name} vs {self.base_name}{_METRICS.get(self.metric, '')}"

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours)

    @property
    def base_median(self) -> float:
        return statistics.median(self.base)

    @property
    def ratio(self) -> float:
        return self.ours_median / self.base_median

    @property
    def extra(self) -> float:
        return self.ours_median - self.base_median

    @property
    def passed(self) -> bool | None:
        """Whether the goal is met (``None`` without a goal)."""
        if self.goal is None:
            return None
        if self.delta:
            return self.extra <= self.goal.threshold
        if self.goal.lower:
            return self.ratio <= self.goal.threshold
        return self.ratio > self.goal.threshold if self.goal.strict else self.ratio >= self.goal.threshold

    def verdict(self) -> str:
        """``ok``, ``MISSED by ...`` or ``report``."""
        if self.passed is None:
            return "report"
        if self.passed:
            return "ok"
        assert self.goal is not None
        if self.delta:
            return f"MISSED by {self.extra - self.goal.threshold:.2f} {self.unit}"
        return f"MISSED by {abs(self.goal.threshold - self.ratio):.3f}"

    def goal_text(self) -> str:
        """Human-readable goal, ``—`` without one."""
        if self.goal is None:
            return "—"
        if self.delta:
            return f"≤ +{self.goal.threshold:g} {self.unit}"
        return f"{'≤' if self.goal.lower else '>' if self.goal.strict else '≥'} {self.goal.threshold:g}"


def fmt(value: float) -> str:
    """A number for the tables: thousands separators, 2 decimals below 100."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.2f}"


def table(rows: Sequence[Row]) -> str:
    """The results as a Markdown table: medians, ratio (or difference), goal, verdict."""
    lines = [
        "| Comparison | Unit | Ours (median) | Baseline (median) | Ratio | Goal | Result |",
        "|---|---|---:|---:|---:|---|---|",
    ]
    section = ""
    for row in rows:
        if row.section != section:
            section = row.section
            lines.append(f"| **{section}** | | | | | | |")
        compared = f"{row.extra:+.2f}" if row.delta else f"{row.ratio:.3f}"
        label = f"{row.label} ({row.note})" if row.note else row.label
        lines.append(
            f"| {label} | {row.unit} | {fmt(row.ours_median)} | {fmt(row.base_median)} | "
            f"{compared} | {row.goal_text()} | {row.verdict()} |"
        )
    return "\n".join(lines)


def samples(rows: Sequence[Row]) -> str:
    """Every round's samples, for the record."""
    lines = ["| Comparison | Ours, per round | Baseline, per round |", "|---|---|---|"]
    for row in rows:
        ours = ", ".join(fmt(v) for v in row.ours)
        base = ", ".join(fmt(v) for v in row.base)
        lines.append(f"| {row.section}: {row.label} | {ours} | {base} |")
    return "\n".join(lines)


def chart(rows: Sequence[Row], path: Path, title: str) -> None:
    """Draw ratios (left) and memory per connection (right) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratio_rows = [r for r in rows if r.chart and not r.delta]
    memory_rows = [r for r in rows if r.chart and r.delta]
    height = 0.9 + 0.32 * max(len(ratio_rows), 4)
    fig, (left, right) = plt.subplots(
        1, 2, figsize=(13, height), gridspec_kw={"width_ratios": [3, 1.2]}, layout="constrained"
    )
    colors = {True: "#2e7d32", False: "#c62828", None: "#78909c"}
    labels = [f"{r.section.split('.')[0]}. {r.label}" for r in ratio_rows]
    ys = range(len(ratio_rows))[::-1]
    left.barh(list(ys), [r.ratio for r in ratio_rows], color=[colors[r.passed] for r in ratio_rows])
    for y, row in zip(ys, ratio_rows, strict=True):
        left.text(
            max(row.ratio, row.goal.threshold if row.goal else 0), y, f" {row.ratio:.2f}", va="center", fontsize=8
        )
        if row.goal:
            left.plot([row.goal.threshold] * 2, [y - 0.4, y + 0.4], color="black", linewidth=1.5)
    left.axvline(1.0, color="grey", linewidth=0.8, linestyle="--")
    left.set_xlim(0, max([r.ratio for r in ratio_rows] + [1.0]) * 1.12)
    left.set_yticks(list(ys), labels, fontsize=8)
    left.set_xlabel("ours / baseline (higher is better; black tick = goal)")
    left.set_title(title, fontsize=10)
    bars: dict[str, tuple[float, str]] = {}  # one bar per variant: median, colour
    for row in memory_rows:
        bars.setdefault(row.base_name, (row.base_median, colors[None]))
        if row.passed is not None or row.ours_name not in bars:
            bars[row.ours_name] = (row.ours_median, colors[row.passed] if row.passed is not None else "#5c6bc0")
    ys = range(len(bars))[::-1]
    right.barh(list(ys), [v for v, _ in bars.values()], color=[c for _, c in bars.values()])
    for y, (value, _) in zip(ys, bars.values(), strict=True):
        right.text(value, y, f" {value:.1f}", va="center", fontsize=8)
    right.set_yticks(list(ys), list(bars), fontsize=8)
    right.set_xlim(0, max([v for v, _ in bars.values()] + [1.0]) * 1.2)
    right.set_xlabel("KiB RSS per idle connection\n(lower is better)")
    right.set_title("4. Memory", fontsize=10)
    fig.savefig(path, dpi=110)
    plt.close(fig)
