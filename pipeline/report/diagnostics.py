"""The report's diagnostic plots: member correlation, per-class scores, reliability; and label placement.

Each plot has a data function (tested on its own: plain arrays in, plain arrays out) and a drawing
function that only draws what the data function returned.

- :func:`member_correlation`: the correlation, between models, of the OOF probability each gives the
  true class. Models that err on the same rows are near 1 and add little to an ensemble.
- :func:`per_class_recall`: the share of each class's rows predicted right (accuracy within a class).
- :func:`reliability_bins`: confidence (top probability) against accuracy in equal-width bins, and the
  expected calibration error (ECE, the count-weighted mean gap).
- :func:`place_labels`: greedy vertical offsets so that no two point labels overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.report.load import PredictRun

__all__ = [
    "member_correlation", "per_class_recall", "reliability_bins", "place_labels", "plot_correlation",
    "plot_per_class", "plot_reliability", "plot_diagnostics",
]


def member_correlation(pr: PredictRun, key: str) -> tuple[list[str], np.ndarray]:
    """Models and the ``[M, M]`` correlation of their OOF true-class probabilities under policy ``key``.

    The rows of the matrix are ``np.corrcoef`` of the per-model vectors ``p[i, label_i]``; a model whose
    vector is constant (correlation undefined) gets NaN off the diagonal. Under ``auto`` (``tta=auto`` gave
    each model its own policy) each model's own policy is read. Tasks other than class probabilities
    (multi-label, regression, ordinal) correlate the negated mean absolute error of each row instead, so that
    models erring on the same rows are near 1 there too.
    """
    models = list(pr.models)
    rows = np.arange(len(pr.labels))
    outputs = [pr.oof[(m, pr.model_key(m, key))] for m in models]
    if pr.task is None or pr.task.softmax:
        true = np.stack([p[rows, pr.labels] for p in outputs])
    else:
        target = np.asarray(pr.labels, dtype=float).reshape(len(rows), -1)
        true = np.stack([-np.abs(p.reshape(len(rows), -1) - target).mean(axis=1) for p in outputs])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.atleast_2d(np.corrcoef(true))
    return models, matrix


def per_class_recall(labels: np.ndarray, probs: np.ndarray, n_classes: int) -> np.ndarray:
    """``[K]`` share of each class's rows whose argmax is that class (NaN for a class with no rows)."""
    pred = probs.argmax(axis=1)
    hits = np.bincount(labels[pred == labels], minlength=n_classes).astype(float)
    counts = np.bincount(labels, minlength=n_classes).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, hits / np.maximum(counts, 1), np.nan)


def reliability_bins(labels: np.ndarray, probs: np.ndarray, n_bins: int = 10) -> dict[str, np.ndarray | float]:
    """Mean confidence, accuracy and row count per equal-width confidence bin, and the ECE.

    Returns:
        ``edges [n_bins+1]``, ``confidence``, ``accuracy`` and ``count`` ``[n_bins]`` (NaN for empty bins),
        and ``ece``: ``sum(count * |accuracy - confidence|) / N``.
    """
    conf, right = probs.max(axis=1), (probs.argmax(axis=1) == labels).astype(float)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, conf, n_bins) / count
        accuracy = np.bincount(which, right, n_bins) / count
    gaps = np.where(count > 0, np.abs(np.nan_to_num(accuracy) - np.nan_to_num(mean_conf)), 0.0)
    return {"edges": edges, "confidence": mean_conf, "accuracy": accuracy, "count": count,
            "ece": float((count * gaps).sum() / max(len(labels), 1))}


def place_labels(anchors: np.ndarray, widths: Sequence[float], height: float, gap: float = 7.0) -> np.ndarray:
    """Greedy label positions (lower-left corners, same units as ``anchors``) that never overlap.

    Each label starts just right of its point and, if it would overlap a label already placed, moves up
    or down (alternately, in steps of ``height``) to the nearest free slot. Points are placed in order
    of their x, then y, so the result does not depend on the input order's accidents.
    """
    anchors = np.asarray(anchors, dtype=float).reshape(-1, 2)
    out = np.zeros_like(anchors)
    boxes: list[tuple[float, float, float, float]] = []

    def free(x: float, y: float, w: float) -> bool:
        return all(x + w <= bx or bx + bw <= x or y + height <= by or by + height <= y for bx, by, bw, _ in boxes)

    for i in sorted(range(len(anchors)), key=lambda i: (anchors[i, 0], anchors[i, 1], i)):
        x, y0, w = anchors[i, 0] + gap, anchors[i, 1] - height / 2, float(widths[i])
        for step in range(4 * len(anchors) + 1):
            y = y0 + (step + 1) // 2 * height * (1 if step % 2 else -1)  # 0, +h, -h, +2h, -2h, …
            if free(x, y, w):
                break
        boxes.append((x, y, w, height))
        out[i] = (x, y)
    return out


def plot_correlation(models: list[str], matrix: np.ndarray, title: str) -> Figure:
    """Heatmap of :func:`member_correlation`, values written in the cells."""
    side = max(4.5, 0.6 * len(models) + 2.5)
    fig = Figure(figsize=(side, side))
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="viridis", vmin=-1, vmax=1)
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, "–" if not np.isfinite(v) else f"{v:.2f}", ha="center", va="center", fontsize=8,
                color="black" if np.isfinite(v) and v > 0.3 else "white")
    ax.set_xticks(range(len(models)), labels=models, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(models)), labels=models, fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title, fontsize=9)
    return fig


def plot_per_class(classes: Sequence[str], series: dict[str, np.ndarray], title: str) -> Figure:
    """Grouped bars of :func:`per_class_recall`, one group per class, one bar per named prediction."""
    k = len(classes)
    fig = Figure(figsize=(max(6.0, 0.5 * k * len(series) + 2), 4.5))
    ax = fig.add_subplot()
    width = 0.8 / max(len(series), 1)
    for s, (name, values) in enumerate(series.items()):
        ax.bar(np.arange(k) + (s - (len(series) - 1) / 2) * width, values, width, label=name)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right", fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("recall (accuracy on the class's rows)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(True, axis="y", alpha=0.3)
    return fig


def plot_reliability(series: dict[str, dict[str, np.ndarray | float]], title: str) -> Figure:
    """Reliability diagram: accuracy against mean confidence per bin, with the diagonal and each ECE."""
    fig = Figure(figsize=(5.5, 5.5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, bins in series.items():
        conf, acc = np.asarray(bins["confidence"]), np.asarray(bins["accuracy"])
        seen = np.isfinite(conf) & np.isfinite(acc)
        ax.plot(conf[seen], acc[seen], marker="o", label=f"{name} (ECE {float(bins['ece']):.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("mean confidence (top probability) in bin")
    ax.set_ylabel("accuracy in bin")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(True, alpha=0.3)
    return fig


def plot_diagnostics(pr: PredictRun, key: str, best: tuple[str, np.ndarray], final: tuple[str, np.ndarray],
                     out: Path) -> list[tuple[Figure, Path]]:
    """The three diagnostic figures and where each goes (the caller saves them)."""
    figs = []
    if len(pr.models) > 1:
        models, matrix = member_correlation(pr, key)
        figs.append((plot_correlation(models, matrix, f"correlation of OOF true-class probability "
                                      f"({pr.policy_names[key]}, {len(pr.labels)} rows)"), out / "member_correlation.png"))
    k = len(pr.classes)
    recall = {name: per_class_recall(pr.labels, probs, k) for name, probs in (best, final)}
    figs.append((plot_per_class(pr.classes, recall, "per-class recall on OOF rows"), out / "per_class.png"))
    bins = {name: reliability_bins(pr.labels, probs) for name, probs in (best, final)}
    figs.append((plot_reliability(bins, "reliability on OOF rows"), out / "reliability.png"))
    return figs
