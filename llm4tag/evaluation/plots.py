"""PNG plots of tagging evaluations: a reliability diagram and the accuracy-vs-coverage curve (figure 8).

matplotlib is imported inside the functions, so importing this module stays cheap. Figures are drawn on
an explicit Agg canvas (``FigureCanvasAgg``) without pyplot, so no global backend is switched and no
figure is left registered in a pyplot figure manager. Files are written atomically: the PNG goes to a
temporary file in the target folder and is moved over ``path`` with ``os.replace``; parent folders are
created.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from graph_store.durable import atomic_file

__all__ = ["accuracy_coverage_plot", "popularity_histogram", "reliability_diagram"]

_LINE_STYLES = {1: "-", 2: "--", 3: ":"}
_MARKERS = {1: "o", 2: "s", 3: "^"}


def _new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Write ``figure`` as a PNG to ``path`` atomically and return ``path`` as a Path."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as handle:
        figure.savefig(handle, format="png")
    return target


def _field(result: Any, name: str) -> Any:
    return result[name] if isinstance(result, Mapping) else getattr(result, name)


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(float(value))


def reliability_diagram(
    ece_result: Mapping[str, Any] | Any, path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Save a reliability diagram of an :func:`llm4tag.evaluation.tagging.expected_calibration_error` result.

    Top panel: accuracy per confidence bin (bars) against the diagonal (perfect calibration), with the
    mean confidence of each bin marked and the bin's count written over its bar. Bottom panel: the number
    of predicted tags per bin. The ECE and n are in the title. Returns ``path`` as a Path.
    """
    bins = list(_field(ece_result, "bins"))
    if not bins:
        raise ValueError("the calibration result has no bins")
    ece = _field(ece_result, "ece")
    n = _field(ece_result, "n")
    lows = [float(b["lo"]) for b in bins]
    widths = [float(b["hi"]) - float(b["lo"]) for b in bins]
    centers = [lo + w / 2 for lo, w in zip(lows, widths, strict=True)]
    counts = [int(b["count"]) for b in bins]
    used = [i for i, b in enumerate(bins) if b["count"] and _finite(b["accuracy"])]

    figure = _new_figure(6.0, 6.5)
    grid = figure.add_gridspec(2, 1, height_ratios=(3, 1), hspace=0.08)
    top = figure.add_subplot(grid[0])
    bottom = figure.add_subplot(grid[1], sharex=top)

    top.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfect calibration")
    top.bar(
        [lows[i] for i in used],
        [float(bins[i]["accuracy"]) for i in used],
        width=[widths[i] for i in used],
        align="edge",
        color="tab:blue",
        edgecolor="black",
        linewidth=0.6,
        alpha=0.8,
        label="accuracy",
    )
    top.scatter(
        [float(bins[i]["confidence"]) for i in used],
        [float(bins[i]["confidence"]) for i in used],
        marker="_",
        s=200,
        color="tab:red",
        zorder=3,
        label="mean confidence",
    )
    for i in used:
        top.annotate(
            str(counts[i]),
            (centers[i], float(bins[i]["accuracy"])),
            textcoords="offset points",
            xytext=(0, 2),
            ha="center",
            va="bottom",
            fontsize=7,
        )
    top.set_xlim(0, 1)
    top.set_ylim(0, 1.08)
    top.set_ylabel("accuracy")
    top.legend(loc="upper left", fontsize=8)
    top.tick_params(labelbottom=False)
    ece_text = f"{float(ece):.4f}" if _finite(ece) else "n/a"
    top.set_title(f"{title or 'Reliability diagram'} (ECE = {ece_text}, n = {n})")

    bottom.bar(lows, counts, width=widths, align="edge", color="tab:grey", edgecolor="black", linewidth=0.6)
    bottom.set_xlabel("confidence")
    bottom.set_ylabel("count")
    bottom.set_xlim(0, 1)
    return _save(figure, path)


def _series(curve: Sequence[Mapping[str, Any]], x_key: str, y_key: str) -> tuple[list, list, list]:
    """(x, y, threshold) of the curve points where both values are defined (``nan`` points are skipped)."""
    xs, ys, ts = [], [], []
    for point in curve:
        x, y = point.get(x_key), point.get(y_key)
        if _finite(x) and _finite(y):
            xs.append(float(x))
            ys.append(float(y))
            ts.append(point.get("threshold"))
    return xs, ys, ts


def _annotate_thresholds(axes: Any, xs: list, ys: list, ts: list, color: Any, count: int = 4) -> None:
    """Label about ``count`` points, evenly spread along the curve, with their threshold."""
    if not xs:
        return
    step = max(1, math.ceil(len(xs) / count))
    picked = list(range(0, len(xs), step))
    if picked[-1] != len(xs) - 1:
        picked.append(len(xs) - 1)
    for i in picked:
        if ts[i] is None:
            continue
        axes.annotate(
            f"t={float(ts[i]):g}",
            (xs[i], ys[i]),
            textcoords="offset points",
            xytext=(4, 4),
            fontsize=7,
            color=color,
        )


def accuracy_coverage_plot(
    curves: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | os.PathLike[str],
    task: str,
    title: str | None = None,
) -> Path:
    """Save the accuracy-vs-coverage plot of :func:`llm4tag.evaluation.tagging.threshold_curve` outputs.

    ``curves`` maps a method name to its curve. For ``task="multi"`` Acc@k is plotted against Coverage@k
    for k = 1, 2, 3 (one colour per method, one line style per k); for ``"single"`` precision against
    Coverage@1. A few points of each method are labelled with their threshold; undefined (``nan``) points
    are skipped. Returns ``path`` as a Path.
    """
    if task not in ("single", "multi"):
        raise ValueError(f"task must be 'single' or 'multi', got {task!r}")
    if not curves:
        raise ValueError("accuracy_coverage_plot needs at least one curve")
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    figure = _new_figure(7.0, 5.0)
    axes = figure.add_subplot(1, 1, 1)
    plotted = 0
    for index, (name, curve) in enumerate(curves.items()):
        color = palette(index % 10)
        if task == "multi":
            series = [(k, *_series(curve, f"coverage@{k}", f"acc@{k}")) for k in (1, 2, 3)]
        else:
            series = [(1, *_series(curve, "coverage@1", "precision"))]
        for k, xs, ys, ts in series:
            if not xs:
                continue
            label = f"{name} Acc@{k}" if task == "multi" else f"{name} precision"
            axes.plot(
                xs,
                ys,
                linestyle=_LINE_STYLES[k],
                marker=_MARKERS[k],
                markersize=4,
                color=color,
                label=label,
            )
            plotted += 1
            if k == 1:
                _annotate_thresholds(axes, xs, ys, ts, color)
    if task == "multi":
        axes.set_xlabel("Coverage@k")
        axes.set_ylabel("Acc@k")
    else:
        axes.set_xlabel("Coverage@1")
        axes.set_ylabel("precision")
    axes.set_title(title or "Accuracy vs. coverage over confidence thresholds")
    axes.grid(True, linewidth=0.4, alpha=0.5)
    if plotted:
        axes.legend(fontsize=8, loc="best")
    else:
        axes.text(0.5, 0.5, "no defined point", ha="center", va="center", transform=axes.transAxes)
    return _save(figure, path)


def popularity_histogram(
    histograms: Mapping[str, Mapping[str, int]], path: str | os.PathLike[str], title: str | None = None
) -> Path:
    """Save TagGPT's popularity plot (its figure 4): how many tags are used on 1, 2, 3-4, ... items.

    ``histograms`` maps a tagging system's name to its ``popularity_hist`` (bin label -> number of
    tags, see :func:`llm4tag.vocab.vocabulary_measures`); the systems' bars stand side by side, as
    shares of each system's tags so that vocabularies of different sizes compare.
    """
    if not histograms:
        raise ValueError("popularity_histogram needs at least one histogram")
    from matplotlib import colormaps

    bins = list(dict.fromkeys(label for hist in histograms.values() for label in hist))
    palette = colormaps["tab10"]
    figure = _new_figure(7.0, 4.5)
    axes = figure.add_subplot(1, 1, 1)
    width = 0.8 / len(histograms)
    for index, (name, hist) in enumerate(histograms.items()):
        total = sum(hist.values()) or 1
        xs = [i + (index - (len(histograms) - 1) / 2) * width for i in range(len(bins))]
        ys = [hist.get(label, 0) / total for label in bins]
        axes.bar(xs, ys, width=width, color=palette(index % 10), label=f"{name} ({total} tags)")
    axes.set_xticks(range(len(bins)))
    axes.set_xticklabels(bins)
    axes.set_xlabel("items a tag is used on")
    axes.set_ylabel("share of the tags")
    axes.set_title(title or "Tag popularity")
    axes.legend(fontsize=8)
    axes.grid(True, axis="y", linewidth=0.4, alpha=0.5)
    return _save(figure, path)
