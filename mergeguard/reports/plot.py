"""The model's scores against its parents' and its base's, per benchmark: a matplotlib bar chart as an
inline SVG (text kept as text, no date stamp, so the same data gives the same file)."""

from __future__ import annotations

import io
import re
from typing import Any

COLORS = {"model": "#1565c0", "parent": "#90a4ae", "base": "#455a64"}


def scores_svg(series: list[Any], suite: str | None = None) -> str:
    """An `<svg>` element: a group of bars per benchmark, one bar per model (db scores in percent)."""
    import matplotlib
    from matplotlib.figure import Figure

    benchmarks = sorted({b for s in series for b in s.scores})
    width = max(4.2, 2.4 + 0.45 * len(benchmarks) * len(series))
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "mergeguard", "font.size": 9}):
        figure = Figure(figsize=(min(width, 9.0), 2.3), layout="constrained")
        axes = figure.add_subplot()
        step = 0.8 / max(len(series), 1)
        shades = iter(["#90a4ae", "#b0bec5", "#78909c", "#cfd8dc", "#607d8b"])
        for index, entry in enumerate(series):
            color = (
                COLORS["model"]
                if entry.role == "model"
                else (COLORS["base"] if entry.role == "base" else next(shades, COLORS["parent"]))
            )
            xs = [
                i + (index - (len(series) - 1) / 2) * step
                for i, b in enumerate(benchmarks)
                if b in entry.scores
            ]
            ys = [entry.scores[b] for b in benchmarks if b in entry.scores]
            bars = axes.bar(xs, ys, step * 0.92, label=f"{entry.model} ({entry.role})", color=color)
            axes.bar_label(bars, fmt="%.1f", fontsize=7, padding=1)
        axes.set_xticks(range(len(benchmarks)), benchmarks)
        label = "normalized score (v2), %" if suite == "v2" else "score, %"
        axes.set_ylabel(label)
        top = max([v for s in series for v in s.scores.values()] + [1.0])
        axes.set_ylim(0, min(100.0, top * 1.25 + 2))
        axes.spines[["top", "right"]].set_visible(False)
        axes.legend(fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        buffer = io.StringIO()
        figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": "mergeguard"})
    text = buffer.getvalue()
    text = text[text.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG goes inside HTML
    return re.sub(r"<svg ", '<svg class="scores" role="img" aria-label="scores" ', text, count=1)
