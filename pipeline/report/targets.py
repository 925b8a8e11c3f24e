"""The report for tasks other than one class per image: decided rows, the task's metrics and plots.

- **Decided rows.** A metric that needs fitted thresholds or cut points (multi-label F-beta, ordinal QWK) scores
  each row after its decision is fitted **cross-fitted** on the one split (:func:`pipeline.predict.fitting.split`,
  :func:`pipeline.predict.thresholds.cross_fit_decision`): every row, single model or merge, gets the same
  honest treatment the submission got, so their differences are fair. The other metrics (BCE, AUC, AP) score
  the row's outputs as they are.
- **Plots that fit the task.** Regression: residuals against the target. Ordinal: the confusion matrix of
  grades. Multi-label: the score of each label, best single model against the submission.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.core.metrics import Metric, metric_names
from pipeline.core.task import Task
from pipeline.predict.fitting import split
from pipeline.predict.thresholds import cross_fit_decision, decision_kind

__all__ = ["decided", "needs_decision", "plot_task", "task_metric_names"]


def needs_decision(task: Task | None, metric: Metric) -> bool:
    """Whether rows are scored on cross-fitted decisions (thresholds, cut points) for ``metric``."""
    return task is not None and decision_kind(task.kind, metric.name) is not None


def decided(task: Task, labels: np.ndarray, outputs: np.ndarray, metric: Metric, parts: int, seed: int) -> np.ndarray:
    """A row's outputs decided by thresholds or cut points fitted on the other parts of the one split."""
    return cross_fit_decision(task, labels, outputs, metric.name, split(labels, parts, seed))


def task_metric_names(task: Task | None, metric: str) -> list[str]:
    """The report's metric columns: ``metric`` first, then every other metric of the task."""
    kind = "multiclass" if task is None else task.kind
    return [metric, *(name for name in metric_names(kind) if name != metric)]


def plot_task(task: Task, labels: np.ndarray, best: tuple[str, np.ndarray], final: tuple[str, np.ndarray],
              metric: Metric, path: Path) -> Path:
    """The task's plot of the best single model against the submission (see the module docstring)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.report.plots import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for ax, (title, out) in zip(axes, (best, final)):
        if task.kind == "regression":
            y, v = np.asarray(labels, float), np.asarray(out, float).reshape(len(labels), -1)[:, 0]
            ax.scatter(y, v - y, s=6, alpha=0.5)
            ax.axhline(0, color="black", lw=0.8)
            ax.set(xlabel="target", ylabel="prediction − target", title=_wrap(title))
        elif task.kind == "ordinal":
            grades = task.grades
            y = np.rint(labels).astype(int) - grades[0]
            g = np.clip(np.rint(np.asarray(out).reshape(len(labels), -1)[:, 0]).astype(int) - grades[0], 0,
                        len(grades) - 1)
            counts = np.zeros((len(grades), len(grades)), int)
            np.add.at(counts, (y, g), 1)
            ax.imshow(counts, cmap="Blues")
            ax.set(xticks=range(len(grades)), yticks=range(len(grades)), xticklabels=grades, yticklabels=grades,
                   xlabel="predicted grade", ylabel="true grade", title=_wrap(title))
        else:
            scores = _per_label(labels, np.asarray(out), metric)
            ax.barh(range(len(task.columns)), scores)
            ax.set(yticks=range(len(task.columns)), yticklabels=task.columns, xlim=(0, 1),
                   xlabel=f"{metric.name} per label", title=_wrap(title))
    return save_figure(fig, path)


def _per_label(labels: np.ndarray, outputs: np.ndarray, metric: Metric) -> Sequence[float]:
    """Each label's F1 of its decisions (0/1 outputs, or outputs at 0.5): what the decided metric adds up."""
    y, d = np.asarray(labels) > 0.5, outputs >= 0.5
    tp, fp, fn = (y & d).sum(0), (~y & d).sum(0), (y & ~d).sum(0)
    return [float(2 * t / (2 * t + a + b)) if 2 * t + a + b else 0.0 for t, a, b in zip(tp, fp, fn)]


def _wrap(text: str, width: int = 48) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"
