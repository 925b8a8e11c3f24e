"""What a competition predicts per image: the task, its output columns and how targets are held.

One record, :class:`Task`, travels from the data stage (declared by ``data.task`` or inferred from
``train.csv`` and the sample submission) into every member folder (``member.json``'s ``task``), and from
there to prediction, ensembling, thresholds, the submission and the report. Every stage asks it, not the
data, what a row's target and a model's outputs are:

============  =========================  ==========================  ===================================
kind          targets (``labels``)       outputs per image           output columns (``columns``)
============  =========================  ==========================  ===================================
multiclass    ``[N]`` int class index    softmax over K classes      the class names
binary        ``[N]`` int 0/1            softmax over 2 classes      the 2 class names (negative first)
multilabel    ``[N, L]`` float 0/1       one sigmoid per label       the label (tag) names
regression    ``[N]`` float value        one value, target units     ``(target column,)``
ordinal       ``[N]`` float grade        one value, grade units      ``(target column,)``
============  =========================  ==========================  ===================================

Prediction files (OOF, test, ensemble) always hold one column per output column, so the code that moves
``classes`` around moves output columns for every task; the task says how to read them: whether rows are
probabilities that sum to 1, independent probabilities, or values.

Kept free of torch so the data and report stages can import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

__all__ = ["TASKS", "Task", "strata"]

TASKS = ("multiclass", "binary", "multilabel", "regression", "ordinal")
"""Every task kind; ``data.task`` also accepts ``auto`` (inferred from the files)."""

_SMOOTH = {"multiclass": "log_loss", "binary": "log_loss", "multilabel": "bce", "regression": "mse", "ordinal": "mse"}
_DEFAULT_METRIC = {"multiclass": "accuracy", "binary": "roc_auc", "multilabel": "f1_samples", "regression": "rmse",
                   "ordinal": "qwk"}


@dataclass(frozen=True)
class Task:
    """What is predicted per image.

    Attributes:
        kind: One of :data:`TASKS`.
        columns: The output columns, in model-output order (see the module table).
        low: Regression/ordinal: the lowest target (declared by ``data.target_range`` or seen in training).
        high: Regression/ordinal: the highest target.
        reason: Why this task (declared, or what the inference saw); logged and recorded in ``predict.json``.
    """

    kind: str = "multiclass"
    columns: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"Unknown task {self.kind!r}; accepted: {list(TASKS)} (or 'auto' in data.task)")
        object.__setattr__(self, "columns", tuple(str(c) for c in self.columns))
        if self.kind == "binary" and len(self.columns) != 2:
            raise ValueError(f"A binary task has 2 classes; got {list(self.columns)}")
        if self.kind in ("regression", "ordinal") and len(self.columns) != 1:
            raise ValueError(f"A {self.kind} task has one output column (the target); got {list(self.columns)}")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"The target range needs low < high; got [{self.low}, {self.high}]")

    @property
    def n_outputs(self) -> int:
        """The network's output width."""
        return 1 if self.is_value else len(self.columns)

    @property
    def is_value(self) -> bool:
        """Outputs are values in target units (regression, ordinal), not probabilities."""
        return self.kind in ("regression", "ordinal")

    @property
    def softmax(self) -> bool:
        """Outputs are one probability distribution per row (rows sum to 1)."""
        return self.kind in ("multiclass", "binary")

    @property
    def smooth_loss(self) -> str:
        """The smooth score used to fit weights and to test margins: log loss, mean per-label BCE, or MSE."""
        return _SMOOTH[self.kind]

    @property
    def default_metric(self) -> str:
        """The metric when neither ``metric`` nor the sample submission says: accuracy, AUC, sample F1, RMSE, QWK."""
        return _DEFAULT_METRIC[self.kind]

    @property
    def grades(self) -> np.ndarray:
        """Ordinal: the integer grades ``low..high``."""
        if self.kind != "ordinal" or self.low is None or self.high is None:
            raise ValueError("grades are defined for an ordinal task with a range")
        return np.arange(int(round(self.low)), int(round(self.high)) + 1)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form recorded in ``member.json`` and ``predict.json``."""
        out = asdict(self)
        out["columns"] = list(self.columns)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, classes: list[str] | None = None) -> Task:
        """The record read back; None (a member written before tasks existed) is multiclass over ``classes``."""
        if data is None:
            return cls("multiclass", tuple(classes or ()), reason="recorded before tasks existed: one label per image")
        known = {k: data[k] for k in ("kind", "columns", "low", "high", "reason") if k in data}
        return cls(**known)

    def same_targets(self, other: Task) -> bool:
        """Whether two members predict the same thing (kind, columns and range), so they can be merged."""
        return (self.kind, self.columns, self.low, self.high) == (other.kind, other.columns, other.low, other.high)


def strata(task: Task | str, labels: np.ndarray, bins: int = 10) -> np.ndarray:
    """One integer stratum per row, for stratified splits of any task's targets.

    Classes are their own strata; a multi-label row is stratified by its rarest positive label (rows
    without labels share one stratum); regression values by quantile bins; ordinal grades by grade.

    >>> strata("regression", np.array([0.1, 5.0, 0.2, 4.0]), bins=2).tolist()
    [0, 1, 0, 1]
    """
    kind = task.kind if isinstance(task, Task) else task
    labels = np.asarray(labels)
    if kind in ("multiclass", "binary"):
        return labels.astype(np.int64)
    if kind == "multilabel":
        y = labels.astype(bool)
        freq = y.sum(axis=0)
        rank = np.argsort(np.argsort(freq, kind="stable"), kind="stable")  # 0 = rarest label
        masked = np.where(y, rank[None, :], y.shape[1])
        return masked.min(axis=1).astype(np.int64)
    if kind == "ordinal":
        return np.unique(np.rint(labels).astype(np.int64), return_inverse=True)[1].astype(np.int64)
    values = labels.astype(np.float64)
    n_bins = max(1, min(bins, len(values) // 2))
    edges = np.unique(np.quantile(values, np.linspace(0, 1, n_bins + 1)[1:-1]))
    return np.searchsorted(edges, values, side="right").astype(np.int64)
