"""The HTML report's charts, drawn by matplotlib as inline SVG (no fonts, no files, no network).

Text stays SVG text (``svg.fonttype: none``): the file stays small and the
browser draws it with the fonts it has. Figures are built with the object API
(no pyplot, no global figure state), so drawing is safe from any thread.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # never a GUI backend, whatever the environment says

from matplotlib.figure import Figure

INK = "#1f2933"
GRID = "#d9dee3"
COLORS = {"queued": "#9fb3c8", "sent": "#3e7cb1", "clicked": "#7a9e3d", "converted": "#e07a1f"}
HOLDOUT_COLOR = "#8a8f98"
STYLE = {
    "svg.fonttype": "none",
    "svg.hashsalt": "campaign-report",  # stable ids: the same data gives the same file
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"],
    "font.size": 9,
    "axes.edgecolor": GRID,
    "axes.labelcolor": INK,
    "xtick.color": INK,
    "ytick.color": INK,
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_PROLOGUE = re.compile(r"^.*?(?=<svg)", re.S)  # the XML declaration and DOCTYPE
_METADATA = re.compile(r"\s*<metadata>.*?</metadata>", re.S)  # RDF about the file: not needed


@dataclass(frozen=True)
class FunnelStage:
    label: str  # a step or run, e.g. "step 1"
    counts: dict[str, int]  # queued, sent, clicked, converted


@dataclass(frozen=True)
class LiftPoint:
    label: str
    lift: float  # in points (percent * 100)
    low: float
    high: float
    note: str = ""  # e.g. "13.3% vs 9.4%", written beside the line


def _svg(fig: Figure) -> str:
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    text = _METADATA.sub("", _PROLOGUE.sub("", out.getvalue(), count=1), count=1)
    # Scales with its box in the page instead of keeping a fixed size in points.
    return re.sub(
        r'<svg([^>]*?) width="[^"]*" height="[^"]*"', r'<svg\1 class="chart"', text, count=1
    )


def _figure(width: float, height: float) -> Figure:
    return Figure(figsize=(width, height), dpi=72)  # inside rc_context(STYLE): see callers


def funnel(
    stages: Sequence[FunnelStage], names: dict[str, str], fmt: Callable[[int], str] = str
) -> str:
    """Grouped horizontal bars per step or run: queued → sent → clicked → converted."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(6, 0.6 + 0.9 * max(1, len(stages)))
        ax = fig.subplots()
        order = ("queued", "sent", "clicked", "converted")
        height = 0.8 / len(order)
        top = max([max(s.counts.values(), default=0) for s in stages] + [1])
        for i, stage in enumerate(stages):
            for j, key in enumerate(order):
                y = i + (j - 1.5) * height
                value = stage.counts.get(key, 0)
                ax.barh(
                    y,
                    value,
                    height=height * 0.9,
                    color=COLORS[key],
                    label=names[key] if i == 0 else None,
                )
                ax.text(value + top * 0.01, y, fmt(value), va="center", fontsize=8, color=INK)
        ax.set_yticks(range(len(stages)), [s.label for s in stages])
        ax.invert_yaxis()
        ax.set_xlim(0, top * 1.15)
        ax.grid(axis="x", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        ax.legend(loc="lower right", frameon=False, fontsize=8, ncols=4, bbox_to_anchor=(1, 1.0))
        return _svg(fig)


def lift_chart(points: Sequence[LiftPoint], axis_label: str) -> str:
    """Lift in points with its 95% interval drawn as a bar, one line per step or run."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(6, 0.6 + 0.9 * max(1, len(points)))
        ax = fig.subplots()
        for i, p in enumerate(points):
            color = COLORS["converted"] if p.low > 0 else HOLDOUT_COLOR
            ax.plot([p.low, p.high], [i, i], color=color, linewidth=3, solid_capstyle="butt")
            ax.plot([p.lift], [i], "o", color=INK, markersize=5)
            ax.text(
                p.high, i - 0.3, f" {p.lift:+.1f}  {p.note}", fontsize=8, color=INK, va="center"
            )
        ax.axvline(0, color=INK, linewidth=0.8)
        ax.set_yticks(range(len(points)), [p.label for p in points])
        ax.set_ylim(len(points) - 0.5, -0.8)
        low, high = min(p.low for p in points), max(p.high for p in points)
        ax.set_xlim(min(low, 0) - 1, max(high, 0) + (high - min(low, 0)) * 0.45 + 1)
        ax.set_xlabel(axis_label)
        ax.grid(axis="x", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        return _svg(fig)


def per_day(
    days: Sequence[str], sent: Sequence[int], converted: Sequence[int], names: dict[str, str]
) -> str:
    """Messages sent (bars, left axis) and conversions (line, right axis) per day."""
    with matplotlib.rc_context(STYLE):
        fig = _figure(11, 2.4)
        ax = fig.subplots()
        xs = range(len(days))
        ax.bar(xs, sent, color=COLORS["sent"], width=0.7, label=names["sent"])
        step = max(1, len(days) // 12)
        ax.set_xticks(list(xs)[::step], [d[5:] for d in days][::step])
        ax.set_ylabel(names["sent"], color=COLORS["sent"])
        ax.grid(axis="y", color=GRID, linewidth=0.6)
        ax.set_axisbelow(True)
        # Conversions are a few percent of the sends: their own scale, or the line lies flat.
        right = ax.twinx()
        right.plot(xs, converted, color=COLORS["converted"], marker="o", markersize=3)
        right.set_ylim(0, max([*converted, 1]) * 1.15)
        right.set_ylabel(names["converted"], color=COLORS["converted"])
        right.spines["right"].set_visible(True)
        return _svg(fig)
