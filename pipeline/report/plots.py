"""The report's plots: score against inference cost, the confusion matrix, the most confidently wrong images."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.io import atomic_path
from pipeline.data.decode import load_rgb
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from pipeline.member.manifest import read_manifest
from pipeline.report.diagnostics import place_labels
from pipeline.report.load import PredictRun
from pipeline.report.score import KINDS

__all__ = ["MOST_WRONG", "save_figure", "plot_score_vs_cost", "plot_confusion", "plot_most_wrong"]

log = logging.getLogger(__name__)

MOST_WRONG = 16


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` atomically (no timestamp in the metadata, so reruns give the same bytes)."""
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def plot_score_vs_cost(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """Metric against seconds per 1,000 images (forward passes without timings), with 95% CI error bars.

    The bars are each row's paired bootstrap interval of its difference to the baseline, drawn around
    its score. Every point is named, and the names are placed so that they never overlap
    (:func:`pipeline.report.diagnostics.place_labels`).
    """
    timed = bool(np.isfinite(df["sec_per_1000_images"]).all() and (df["sec_per_1000_images"] > 0).all())
    x = (df["sec_per_1000_images"] if timed else df["forward_passes_per_image"]).astype(float)
    fig = Figure(figsize=(9, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    marks = [("o", "tab:blue"), ("s", "tab:orange"), ("D", "tab:green"), ("^", "tab:purple")]
    styles = dict(zip(KINDS, marks))
    score = df[metric].astype(float)
    low = (df["diff_vs_best_single"] - df["ci_low"]).clip(lower=0)
    high = (df["ci_high"] - df["diff_vs_best_single"]).clip(lower=0)
    for kind, group in df.groupby("kind", sort=False):
        marker, color = styles.get(str(kind), ("o", "grey"))
        ax.errorbar(x[group.index], score[group.index], yerr=[low[group.index], high[group.index]], fmt=marker,
                    color=color, label=str(kind), markersize=6, capsize=3, elinewidth=1, zorder=3)
    base = df["row"] == df.attrs.get("baseline")
    if base.any():
        ax.scatter(x[base], score[base], s=160, facecolors="none", edgecolors="black", label="baseline")
    if x.max() / max(x.min(), 1e-12) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per 1,000 test images" if timed else "forward passes per image")
    ax.set_ylabel(f"{metric} (bars: 95% CI of the difference to the baseline)")
    ax.set_title(f"{metric} vs inference cost")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    _annotate(ax, fig, x.to_numpy(), score.to_numpy(),
              [("★ " if r["best"] else "") + str(r["row"]) for _, r in df.iterrows()])
    return save_figure(fig, path)


def _annotate(ax: Any, fig: Figure, x: np.ndarray, y: np.ndarray, texts: list[str], size: float = 7.0) -> None:
    """Name every point without overlaps: positions in pixels from place_labels, drawn as offsets in points."""
    ax.autoscale_view()
    anchors = ax.transData.transform(np.column_stack([x, y]))
    px = fig.dpi / 72.0
    height = 1.35 * size * px
    widths = [0.62 * size * px * len(t) for t in texts]
    spots = place_labels(anchors, widths, height)
    for (ax_, ay), (sx, sy), text, xi, yi in zip(anchors, spots, texts, x, y):
        dx, dy = (sx - ax_) / px, (sy - ay + height / 2) / px
        moved = abs(dy) > height / px
        ax.annotate(text, (xi, yi), xytext=(dx, dy), textcoords="offset points", fontsize=size, va="center",
                    arrowprops={"arrowstyle": "-", "color": "grey", "lw": 0.5} if moved else None)


def plot_confusion(
    labels: np.ndarray, probs: np.ndarray, classes: Sequence[str], title: str, path: Path
) -> Path:
    """Confusion matrix (rows: true class, colour: row share, text: counts)."""
    k = len(classes)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (labels, probs.argmax(axis=1)), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(5.0, 0.45 * k + 2)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    if k <= 25:  # beyond that the counts are unreadable; the colours still show the pattern
        for (i, j), c in np.ndenumerate(counts):
            color = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(c), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels=list(classes), fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return save_figure(fig, path)


def _image_paths(pr: PredictRun, ids: Sequence[str]) -> tuple[dict[str, Path] | None, str]:
    """Training image of each id, found through the data a member's ``member.json`` records; else None and why."""
    why = "predict.json lists no member folders"
    for folder in pr.info["members"].values():
        try:
            data = read_manifest(Path(folder)).data
            if not data:
                why = f"{folder}/member.json records no training data (a member from an older version)"
                continue
            table = read_train_table(DataSpec(**data))
        except (OSError, ValueError, TypeError, KeyError) as err:
            why = f"{folder}: {err}"
            continue
        paths = dict(zip(table.ids, table.paths))
        if all(i in paths for i in ids):
            return {i: paths[i] for i in ids}, ""
        why = f"{folder}/member.json: its training data lacks some OOF ids"
    return None, why


def plot_most_wrong(pr: PredictRun, probs: np.ndarray, path: Path, n: int = MOST_WRONG) -> Path | None:
    """Grid of the validation images the final ensemble got wrong with the highest confidence.

    Returns None (and removes a stale plot) when there are no wrong rows or the images are not found.
    """
    pred, conf = probs.argmax(axis=1), probs.max(axis=1)
    wrong = np.flatnonzero(pred != pr.labels)
    wrong = wrong[np.argsort(-conf[wrong], kind="stable")][:n]
    paths, why = _image_paths(pr, [pr.ids[i] for i in wrong]) if len(wrong) else (None, "")
    if paths is None:
        if len(wrong):
            log.warning("Skipping %s: training images not found through the member folders (%s).",
                        path.name, why)
        path.unlink(missing_ok=True)
        return None
    cols = min(4, len(wrong))
    rows = math.ceil(len(wrong) / cols)
    fig = Figure(figsize=(2.4 * cols, 2.7 * rows))
    for slot, i in enumerate(wrong):
        ax = fig.add_subplot(rows, cols, slot + 1)
        ax.imshow(load_rgb(paths[pr.ids[i]]))
        true, guess = pr.classes[pr.labels[i]], pr.classes[pred[i]]
        ax.set_title(f"{pr.ids[i]}\ntrue {true}\npred {guess} ({conf[i]:.2f})", fontsize=7)
        ax.axis("off")
    fig.suptitle("Most confidently wrong validation images (final ensemble)", fontsize=9)
    return save_figure(fig, path)
