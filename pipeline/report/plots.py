"""The report's plots: score against inference cost, the confusion matrix, the most confidently wrong images."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from pipeline.core.io import atomic_path
from pipeline.data.decode import load_rgb
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from pipeline.member.manifest import read_manifest
from pipeline.report.load import PredictRun
from pipeline.report.score import KINDS

__all__ = ["MOST_WRONG", "plot_score_vs_cost", "plot_confusion", "plot_most_wrong"]

log = logging.getLogger(__name__)

MOST_WRONG = 16


def _save(fig: Figure, path: Path) -> Path:
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return path


def plot_score_vs_cost(df: pd.DataFrame, metric: str, path: Path) -> Path:
    """Metric against seconds per 1,000 images (forward passes without timings); every point named."""
    timed = bool(np.isfinite(df["sec_per_1000_images"]).all() and (df["sec_per_1000_images"] > 0).all())
    x = df["sec_per_1000_images"] if timed else df["forward_passes_per_image"].astype(float)
    fig = Figure(figsize=(8, 5.5))
    ax = fig.add_subplot()
    marks = [("o", "tab:blue"), ("s", "tab:orange"), ("D", "tab:green"), ("^", "tab:purple")]
    styles = dict(zip(KINDS, marks))
    for kind, group in df.groupby("kind", sort=False):
        marker, color = styles.get(str(kind), ("o", "grey"))
        ax.scatter(x[group.index], group[metric], marker=marker, color=color, label=str(kind), s=40, zorder=3)
    base = df["row"] == df.attrs.get("baseline")
    if base.any():
        ax.scatter(x[base], df.loc[base, metric], s=160, facecolors="none", edgecolors="black",
                   label="baseline")
    for i, r in df.iterrows():
        ax.annotate(("★ " if r["best"] else "") + r["row"], (x[i], r[metric]), xytext=(4, 3),
                    textcoords="offset points", fontsize=7)
    if x.max() / max(x.min(), 1e-12) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("seconds per 1,000 test images" if timed else "forward passes per image")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs inference cost")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


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
    return _save(fig, path)


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
    return _save(fig, path)
