"""``BenchReport.plot_svg``: histograms of revert and retry latency, drawn by matplotlib (``ckflow[plot]``).

It uses matplotlib's object API (``matplotlib.figure.Figure``, saved as SVG), not ``pyplot``: no global figure
manager, no backend switch, nothing left behind in the process but matplotlib's own imports.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["PLOT_EXTRA", "Histogram", "plot_histograms", "require_matplotlib"]

#: what to install for plots
PLOT_EXTRA = "pip install 'ckflow[plot]'"


class Histogram(NamedTuple):
    """One panel: a title, the values (ms), a colour, and the marks to draw as vertical lines (name, ms)."""

    title: str
    values: list[float]
    colour: str
    marks: list[tuple[str, float]]


def require_matplotlib() -> Any:
    """``matplotlib.figure``, or an ImportError that says which extra brings it."""
    try:
        import matplotlib.figure
    except ImportError as exc:
        raise ImportError(f"Plotting a bench needs matplotlib, which is not installed; run `{PLOT_EXTRA}`.") from exc
    return matplotlib.figure


def plot_histograms(title: str, panels: list[Histogram], path: str | Path) -> None:
    """The panels side by side, as histograms in ms with their marks, written to ``path`` as SVG."""
    figure = require_matplotlib().Figure(figsize=(5 * len(panels), 4), layout="constrained")
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    for ax, panel in zip(axes, panels, strict=True):
        ax.set_title(panel.title)
        ax.set_xlabel("ms")
        ax.set_ylabel("regions")
        if not panel.values:
            ax.text(0.5, 0.5, "none measured", ha="center", va="center", transform=ax.transAxes)
            continue
        ax.hist(panel.values, bins=min(40, max(5, len(panel.values) // 2)), color=panel.colour, alpha=0.8)
        for (name, value), style in zip(panel.marks, ("--", ":", "-."), strict=False):
            ax.axvline(value, color="black", linestyle=style, linewidth=1, label=f"{name} {value:.3f} ms")
        ax.legend()
    figure.suptitle(title)
    figure.savefig(path, format="svg", metadata={"Date": None})  # the same report draws the same file
