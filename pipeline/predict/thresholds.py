"""Decisions fitted on out-of-fold rows: per-label thresholds (multi-label F-beta) and cut points (ordinal QWK).

A metric that scores decisions rather than probabilities or values rewards deciding well, and the best rule is
rarely the default one (probability 0.5, the nearest grade). :func:`fit_decision` fits a :class:`Decision` on
OOF rows for such a metric and task:

- multi-label F-beta (``f<beta>_<samples|macro|micro>``): one threshold per label, chosen from a grid
  (0.05..0.95 by 0.01, plus the label's observed quantiles) by coordinate ascent of the chosen average; the
  ``samples`` and ``micro`` averages couple the labels, so the sweep repeats (up to :data:`SWEEPS` times);
  ``macro`` settles in one sweep (each label on its own);
- ordinal QWK: cut points between grades ("OptimizedRounder", Kaggle APTOS 2019): Nelder-Mead from the
  midpoints between grades, kept sorted; a value gets ``low`` plus the number of cut points below it.

Every other metric (AUC, average precision, log loss/BCE, RMSE, ...) and task needs no decision: None.
A decision fitted on the rows it then scores flatters them; :func:`cross_fit_decision` gives the honest
decided OOF output (each part decided by the fit on the other parts), the caller giving the parts (the one
split is :func:`pipeline.predict.fitting.split`).

>>> from pipeline.core.task import Task
>>> task = Task("multilabel", ("a", "b"))
>>> y = np.array([[1, 0], [1, 1], [0, 0], [1, 0]])
>>> p = np.array([[0.3, 0.1], [0.3, 0.9], [0.1, 0.2], [0.3, 0.1]])
>>> fit_decision(task, y, p, "f2_samples").values
[0.3, 0.5]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy.optimize import minimize

from pipeline.core.metrics import METRICS, check_metric_task
from pipeline.core.target_metrics import DECIDE_AT, check_targets, fbeta_from_counts, parse_fbeta
from pipeline.core.task import Task

__all__ = ["DECISIONS", "GRID", "SWEEPS", "Decision", "cross_fit_decision", "decision_kind", "fit_decision"]

DECISIONS = ("thresholds", "cutpoints")
GRID = np.round(np.arange(5, 96) / 100, 2)
"""The thresholds every label tries (0.05..0.95 by 0.01), besides its own observed quantiles."""
SWEEPS = 3
_QUANTILES = np.linspace(0.01, 0.99, 99)
_TIE = 1e-12
_STEP = 0.25  # the first simplex moves each cut point by a quarter grade: QWK is flat under smaller steps


@dataclass(frozen=True)
class Decision:
    """A fitted rule from model outputs to decisions.

    Attributes:
        kind: ``thresholds`` (multi-label: one per label, in label order) or ``cutpoints`` (ordinal, sorted).
        values: The thresholds or cut points.
        metric: The metric it was fitted for.
        low: Cut points: the lowest grade (a value below every cut point gets it).
    """

    kind: str
    values: list[float]
    metric: str
    low: float = 0.0

    def __post_init__(self) -> None:
        values = [float(v) for v in self.values]
        if self.kind not in DECISIONS:
            raise ValueError(f"unknown decision kind {self.kind!r}; accepted: {list(DECISIONS)}")
        if not values or not np.all(np.isfinite(values)):
            raise ValueError(f"a decision needs finite values; got {self.values!r}")
        if self.kind == "cutpoints" and values != sorted(values):
            raise ValueError(f"cut points must be sorted; got {values}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "low", float(self.low))

    def apply(self, preds: np.ndarray) -> np.ndarray:
        """Decide: thresholds give a 0/1 float matrix ``[N, L]`` (``pred >= threshold``); cut points give grade
        values ``[N, 1]`` (``low`` plus the number of cut points strictly below the value)."""
        preds = np.asarray(preds, dtype=np.float64)
        if self.kind == "thresholds":
            if preds.ndim != 2 or preds.shape[1] != len(self.values):
                n = len(self.values)
                raise ValueError(f"{n} thresholds decide preds [N, {n}]; got {preds.shape}")
            return (preds >= np.asarray(self.values)[None, :]).astype(np.float64)
        if preds.ndim == 2 and preds.shape[1] == 1:
            preds = preds[:, 0]
        if preds.ndim != 1:
            raise ValueError(f"cut points decide ordinal values [N, 1] or [N]; got {preds.shape}")
        return (self.low + np.searchsorted(self.values, preds, side="left"))[:, None].astype(np.float64)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``predict.json``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Decision:
        """The record read back; raises ValueError naming a missing or unknown key."""
        keys = {"kind", "values", "metric", "low"}
        if not isinstance(data, dict) or not {"kind", "values", "metric"} <= set(data) or set(data) - keys:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"a decision record has keys kind, values, metric and optionally low; got {got}")
        return cls(**data)


def decision_kind(task_kind: str, metric: str) -> str | None:
    """The decision a metric needs on a task: ``thresholds``, ``cutpoints``, or None (it scores outputs as they are)."""
    if task_kind == "multilabel" and parse_fbeta(metric) is not None:
        return "thresholds"
    if task_kind == "ordinal" and metric == "qwk":
        return "cutpoints"
    return None


def fit_decision(task: Task, labels: np.ndarray, preds: np.ndarray, metric: str) -> Decision | None:
    """Fit the decision ``metric`` needs on ``task`` on these (out-of-fold) rows; None when it needs none.

    Raises:
        ConfigError: ``metric`` does not score ``task`` (KeyError: an unknown metric).
        ValueError: The labels or preds are not the task's shapes (see :mod:`pipeline.core.task`).
    """
    check_metric_task(metric, task.kind)
    labels, preds = check_targets(task.kind, labels, preds)
    kind = decision_kind(task.kind, metric)
    fbeta = parse_fbeta(metric) if kind == "thresholds" else None
    if fbeta is not None:
        return Decision("thresholds", _fit_thresholds(labels, preds, *fbeta).tolist(), metric)
    if kind == "cutpoints":
        low, cuts = _fit_cutpoints(task, labels, preds)
        return Decision(kind, cuts.tolist(), metric, low)
    return None


def cross_fit_decision(task: Task, labels: np.ndarray, preds: np.ndarray, metric: str, part: np.ndarray) -> np.ndarray:
    """The honest decided OOF output: the rows of each part decided by the decision fitted on the other parts.

    Without a decision to fit (:func:`decision_kind` None) the checked preds come back as they are (values as
    ``[N, 1]``). Returns multi-label 0/1 decisions ``[N, L]`` or ordinal grades ``[N, 1]``, as floats.

    Args:
        task: What is predicted.
        labels: The OOF targets (the task's shape).
        preds: The OOF outputs (the task's shape).
        metric: The metric the decisions are fitted for.
        part: ``[N]`` integer part of each row (at least 2 parts).
    """
    check_metric_task(metric, task.kind)
    labels, preds = check_targets(task.kind, labels, preds)
    part = np.asarray(part)
    if part.shape != (len(labels),) or not np.issubdtype(part.dtype, np.integer):
        raise ValueError(f"part must be one integer per row, shape ({len(labels)},); got {part.dtype} {part.shape}")
    parts = np.unique(part)
    if len(parts) < 2:
        raise ValueError(f"cross-fitting needs at least 2 parts; got {parts.tolist()}")
    if decision_kind(task.kind, metric) is None:
        return preds.copy()
    out = np.empty((len(labels), preds.shape[1] if task.kind == "multilabel" else 1))
    for k in parts:
        held = part == k
        decision = fit_decision(task, labels[~held], preds[~held], metric)
        assert decision is not None  # decision_kind said this metric needs one
        out[held] = decision.apply(preds[held])
    return out


def _candidates(column: np.ndarray) -> np.ndarray:
    """The grid plus the column's observed quantiles (observed values, so ``>=`` can take in exactly those rows)."""
    return np.unique(np.r_[GRID, np.quantile(column, _QUANTILES, method="lower")])


def _fit_thresholds(labels: np.ndarray, preds: np.ndarray, beta: float, average: str) -> np.ndarray:
    """Per-label thresholds by coordinate ascent of the F-beta ``average`` from 0.5; a tie keeps the nearest value."""
    truth = labels > 0.5
    thresholds = np.full(truth.shape[1], DECIDE_AT)
    decided = preds >= thresholds
    for _ in range(SWEEPS):
        changed = False
        for j in range(truth.shape[1]):
            grid = _candidates(preds[:, j])
            scores = _label_scores(truth, decided, preds[:, j], j, grid, beta, average)
            best = np.flatnonzero(scores >= scores.max() - _TIE)
            new = grid[best[np.argmin(np.abs(grid[best] - thresholds[j]))]]
            if new != thresholds[j]:
                thresholds[j], changed = new, True
                decided[:, j] = preds[:, j] >= new
        if not changed:
            break
    return thresholds


def _above(column: np.ndarray, grid: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each value of ``grid``, the sum of ``weights`` over the rows decided at it (``column >= value``)."""
    order = np.argsort(column, kind="stable")
    prefix = np.r_[0.0, np.cumsum(weights[order])]
    return prefix[-1] - prefix[np.searchsorted(column[order], grid, side="left")]


def _label_scores(truth: np.ndarray, decided: np.ndarray, column: np.ndarray, j: int, grid: np.ndarray, beta: float,
                  average: str) -> np.ndarray:
    """The F-beta ``average`` for label ``j`` decided at each value of ``grid``, the other labels as ``decided``.

    Each row's contribution moves by a fixed amount when label j is decided, so one sort scores every candidate.
    """
    y = truth[:, j].astype(np.float64)
    hit, own = _above(column, grid, y), _above(column, grid, np.ones_like(y))
    if average == "macro":  # the other labels' F is the same for every candidate: label j's own F ranks them
        return fbeta_from_counts(hit, y.sum(), own, beta)
    others = np.delete(np.arange(truth.shape[1]), j)
    rest_hit = (truth[:, others] & decided[:, others]).sum(axis=1)
    rest_pred = decided[:, others].sum(axis=1)
    if average == "micro":
        return fbeta_from_counts(rest_hit.sum() + hit, truth.sum(), rest_pred.sum() + own, beta)
    n_true = truth.sum(axis=1)
    without = fbeta_from_counts(rest_hit, n_true, rest_pred, beta)  # samples: each row's F with j undecided...
    gain = fbeta_from_counts(rest_hit + y, n_true, rest_pred + 1, beta) - without  # ...and what deciding j adds
    return (without.sum() + _above(column, grid, gain)) / len(truth)


def _fit_cutpoints(task: Task, labels: np.ndarray, preds: np.ndarray) -> tuple[float, np.ndarray]:
    """The lowest grade and the cut points that maximise QWK: Nelder-Mead from the midpoints between grades."""
    if task.low is not None and task.high is not None:
        grades = task.grades
    else:
        grades = np.arange(int(np.floor(labels.min())), int(np.ceil(labels.max())) + 1)
    if len(np.unique(labels)) < 2 or len(grades) < 2:
        raise ValueError(f"cut points need labels of at least 2 grades; got {np.unique(labels)[:5].tolist()}")
    values, qwk = preds[:, 0], METRICS["qwk"]

    def loss(cuts: np.ndarray) -> float:
        decided = grades[0] + np.searchsorted(np.sort(cuts), values, side="left")
        return -qwk(labels, decided.astype(np.float64))

    start = grades[:-1] + 0.5
    simplex = np.vstack([start, start + _STEP * np.eye(len(start))])
    found = minimize(loss, start, method="Nelder-Mead",
                     options={"initial_simplex": simplex, "xatol": 1e-4, "fatol": 1e-12, "maxiter": 400 * len(start)})
    best = found.x if found.fun <= loss(start) else start
    return float(grades[0]), np.sort(best)
