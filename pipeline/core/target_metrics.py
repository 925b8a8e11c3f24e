"""Metrics of the targets beyond one class per image: values (regression, ordinal) and multi-label tags.

The input checks of every task live here too (:func:`check_targets`); the registry, with names and directions,
is :mod:`pipeline.core.metrics`, which registers these functions. Shapes follow :mod:`pipeline.core.task`:

- values: labels ``[N]`` float, preds ``[N, 1]`` (or ``[N]``) in target units: ``rmse``, ``mse``, ``mae``,
  ``r2``; ordinal grades also ``qwk`` (preds rounded to the nearest grade, see :func:`grade_classes`).
- multi-label: labels ``[N, L]`` 0/1, preds ``[N, L]`` independent probabilities, decided at
  :data:`DECIDE_AT` (``pred >= 0.5``; a 0/1 matrix of decisions scores the same): ``bce``, F-beta with the
  ``samples``/``macro``/``micro`` averages, ``mean_auc``, ``mean_ap`` (those two in :mod:`pipeline.core.ranked`).

F-beta follows ``sklearn.metrics.fbeta_score(..., zero_division=0)``: a row (samples) or label column (macro)
with no true and no decided positive scores 0 and still counts in the mean; micro pools every cell.

>>> y = np.array([[1, 0], [0, 1]])
>>> fbeta(y, np.array([[0.9, 0.2], [0.6, 0.7]]), beta=1.0, average="samples")
0.8333333333333333
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np

from pipeline.core.ranked import mean_ap_weighted, mean_auc_weighted

__all__ = ["DECIDE_AT", "FBETA_AVERAGES", "VALUE_KINDS", "bce", "check_classes", "check_targets", "fbeta",
           "fbeta_from_counts", "fbeta_parts", "fbeta_rows", "fbeta_weighted", "grade_classes", "mae", "mean_ap",
           "mean_auc", "mse", "parse_fbeta", "r2", "r2_weighted", "rmse", "rmse_weighted", "target_metrics"]

DECIDE_AT = 0.5
"""A multi-label probability decides its label at ``pred >= DECIDE_AT`` unless thresholds were fitted."""

FBETA_AVERAGES = ("samples", "macro", "micro")
_FBETA_NAME = re.compile(r"f(\d+(?:\.\d+)?)_(samples|macro|micro)")
VALUE_KINDS = ("regression", "ordinal")
_BCE_EPS = 1e-15


def check_classes(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multiclass/binary: labels as int64 ``[N]`` and probs as float64 ``[N, K]``, or raise naming the problem."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.ndim != 2:
        raise ValueError(f"expected labels [N] and probs [N, K]; got {labels.shape} and {probs.shape}")
    _same_rows(labels, probs)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype} (regression, ordinal and "
                         "multilabel targets are scored with task=)")
    n_classes = probs.shape[1]
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(
            f"labels must lie in [0, {n_classes - 1}]; got {labels[bad][:5].tolist()} "
            f"at rows {np.flatnonzero(bad)[:5].tolist()}"
        )
    return labels.astype(np.int64, copy=False), probs


def _same_rows(labels: np.ndarray, preds: np.ndarray) -> None:
    if len(labels) != len(preds) or len(labels) == 0:
        raise ValueError(f"labels and preds need the same non-zero N; got {len(labels)} and {len(preds)}")


def _numeric(name: str, values: np.ndarray) -> np.ndarray:
    if not (np.issubdtype(values.dtype, np.number) or values.dtype == bool):
        raise ValueError(f"{name} must be numbers; got dtype {values.dtype}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = np.flatnonzero(bad.reshape(len(values), -1).any(axis=1))
        raise ValueError(f"{name} must be finite; got NaN or inf at rows {rows[:5].tolist()}")
    return values


def check_values(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Regression/ordinal: labels as float64 ``[N]`` and preds as float64 ``[N, 1]`` (``[N]`` accepted)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if preds.ndim == 1:
        preds = preds[:, None]
    if labels.ndim != 1 or preds.ndim != 2 or preds.shape[1] != 1:
        raise ValueError(f"expected value labels [N] and preds [N, 1] or [N]; got {labels.shape} and {preds.shape}")
    _same_rows(labels, preds)
    return _numeric("labels", labels), _numeric("preds", preds)


def check_multilabel(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Multi-label: labels as float64 0/1 ``[N, L]`` and preds as float64 ``[N, L]`` probabilities in [0, 1]."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    if labels.ndim != 2 or labels.shape != preds.shape:
        raise ValueError(f"expected multilabel labels [N, L] and preds of the same shape; got {labels.shape} and "
                         f"{preds.shape}")
    _same_rows(labels, preds)
    labels, preds = _numeric("labels", labels), _numeric("preds", preds)
    for name, values, bad in (("labels", labels, (labels != 0) & (labels != 1)),
                              ("preds", preds, (preds < 0) | (preds > 1))):
        if bad.any():
            rows, cols = np.nonzero(bad)
            accepted = "0 or 1" if name == "labels" else "probabilities in [0, 1]"
            raise ValueError(f"multilabel {name} must be {accepted}; got {values[rows[:5], cols[:5]].tolist()} "
                             f"at (row, column) {list(zip(rows[:5].tolist(), cols[:5].tolist()))}")
    return labels, preds


def check_targets(kind: str, labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The checks of a task kind (see :mod:`pipeline.core.task`): the arrays converted, or a ValueError."""
    if kind in ("multiclass", "binary"):
        labels, preds = check_classes(labels, preds)
        if kind == "binary" and preds.shape[1] != 2:
            raise ValueError(f"a binary task's probs have 2 columns; got {preds.shape[1]}")
        return labels, preds
    if kind == "multilabel":
        return check_multilabel(labels, preds)
    if kind in VALUE_KINDS:
        return check_values(labels, preds)
    raise ValueError(f"unknown task {kind!r}; accepted: multiclass, binary, multilabel, regression, ordinal")


# --- values: regression and ordinal -------------------------------------------------------------------------


def squared_error_rows(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Per-row squared error; its mean is the MSE."""
    return (labels - preds[:, 0]) ** 2


def abs_error_rows(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Per-row absolute error; its mean is the MAE."""
    return np.abs(labels - preds[:, 0])


def rmse_weighted(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Root mean squared error with row ``i`` counted ``counts[b, i]`` times."""
    return np.sqrt(counts @ squared_error_rows(labels, preds) / counts.sum(axis=1))


def r2_weighted(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Coefficient of determination with row counts; constant labels: 1.0 if predicted exactly, else 0.0 (sklearn)."""
    n = counts.sum(axis=1)
    centred = labels - labels.mean()
    spread = counts @ centred**2
    total = spread - (counts @ centred) ** 2 / n
    residual = counts @ squared_error_rows(labels, preds)
    constant = total <= 1e-12 * np.maximum(spread, np.finfo(float).tiny)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(constant, np.where(residual == 0, 1.0, 0.0), 1.0 - residual / total)


def _one(weighted: np.ndarray) -> float:
    return float(weighted[0])


def mse(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean squared error (``sklearn.metrics.mean_squared_error``)."""
    return float(squared_error_rows(*check_values(labels, preds)).mean())


def mae(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean absolute error (``sklearn.metrics.mean_absolute_error``)."""
    return float(abs_error_rows(*check_values(labels, preds)).mean())


def rmse(labels: np.ndarray, preds: np.ndarray) -> float:
    """Root mean squared error (``sklearn.metrics.root_mean_squared_error``)."""
    labels, preds = check_values(labels, preds)
    return _one(rmse_weighted(labels, preds, np.ones((1, len(labels)), dtype=np.int64)))


def r2(labels: np.ndarray, preds: np.ndarray) -> float:
    """R² (``sklearn.metrics.r2_score``, constant labels scored 1.0 when predicted exactly, else 0.0)."""
    labels, preds = check_values(labels, preds)
    return _one(r2_weighted(labels, preds, np.ones((1, len(labels)), dtype=np.int64)))


def grade_classes(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ordinal grades as classes, for QWK: label indices ``[N]`` and one-hot grades ``[N, K]`` over the labels' range.

    Each value goes to the nearest integer grade, halves down (``ceil(v - 0.5)``: a value exactly between two
    grades gets the lower one, as the cut points of midpoints do) and is clipped to ``[min(labels), max(labels)]``.
    Raises ValueError when a label is no integer grade.
    """
    off = labels != np.round(labels)
    if off.any():
        raise ValueError(f"qwk needs integer grades as labels; got {labels[off][:5].tolist()} at rows "
                         f"{np.flatnonzero(off)[:5].tolist()}")
    low, high = int(labels.min()), int(labels.max())
    grade = np.clip(np.ceil(preds[:, 0] - 0.5), low, high).astype(np.int64) - low
    return labels.astype(np.int64) - low, np.eye(high - low + 1)[grade]


# --- multi-label ----------------------------------------------------------------------------------------------


def bce_rows(labels: np.ndarray, preds: np.ndarray) -> np.ndarray:
    """Per-row mean over labels of the binary log loss, probabilities clipped to ``[1e-15, 1 - 1e-15]``."""
    p = np.clip(preds, _BCE_EPS, 1 - _BCE_EPS)
    return -(labels * np.log(p) + (1 - labels) * np.log1p(-p)).mean(axis=1)


def bce(labels: np.ndarray, preds: np.ndarray) -> float:
    """Mean binary log loss over labels and rows (each label's ``sklearn.metrics.log_loss``, averaged)."""
    return float(bce_rows(*check_multilabel(labels, preds)).mean())


def fbeta_from_counts(tp: Any, n_true: Any, n_pred: Any, beta: float) -> np.ndarray:
    """F-beta from true positives, true and decided counts: ``(1 + b²) tp / (b² n_true + n_pred)``, 0 where 0/0."""
    b2 = beta * beta
    denominator = b2 * n_true + n_pred
    return np.where(denominator > 0, (1 + b2) * tp / np.where(denominator > 0, denominator, 1), 0.0)


def _decide(labels: np.ndarray, preds: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    truth = labels > 0.5
    decided = preds >= DECIDE_AT
    return (truth & decided).astype(np.float64), truth.astype(np.float64), decided.astype(np.float64)


def fbeta_rows(labels: np.ndarray, preds: np.ndarray, beta: float) -> np.ndarray:
    """Per-row F-beta of the decided labels (0 for a row with no true and no decided label); mean: ``samples``."""
    tp, truth, decided = _decide(labels, preds)
    return fbeta_from_counts(tp.sum(axis=1), truth.sum(axis=1), decided.sum(axis=1), beta)


def fbeta_weighted(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray, beta: float,
                   average: str) -> np.ndarray:
    """F-beta with row ``i`` counted ``counts[b, i]`` times, under the ``samples``, ``macro`` or ``micro`` average."""
    if average == "samples":
        return counts @ fbeta_rows(labels, preds, beta) / counts.sum(axis=1)
    tp, truth, decided = (counts @ m for m in _decide(labels, preds))  # [B, L] each
    if average == "macro":
        return fbeta_from_counts(tp, truth, decided, beta).mean(axis=1)
    if average == "micro":
        return fbeta_from_counts(tp.sum(axis=1), truth.sum(axis=1), decided.sum(axis=1), beta)
    raise ValueError(f"unknown F-beta average {average!r}; accepted: {list(FBETA_AVERAGES)}")


def fbeta(labels: np.ndarray, preds: np.ndarray, beta: float, average: str) -> float:
    """F-beta of probabilities decided at 0.5 (``sklearn.metrics.fbeta_score(..., zero_division=0)``)."""
    if not beta > 0:
        raise ValueError(f"F-beta needs beta > 0; got {beta}")
    labels, preds = check_multilabel(labels, preds)
    return _one(fbeta_weighted(labels, preds, np.ones((1, len(labels)), dtype=np.int64), beta, average))


def parse_fbeta(name: str) -> tuple[float, str] | None:
    """``(beta, average)`` of a multi-label F-beta name ``f<beta>_<samples|macro|micro>`` (beta > 0), else None.

    >>> parse_fbeta("f2_samples"), parse_fbeta("f0.5_macro"), parse_fbeta("f1_weighted")
    ((2.0, 'samples'), (0.5, 'macro'), None)
    """
    match = _FBETA_NAME.fullmatch(name)
    return (float(match.group(1)), match.group(2)) if match and float(match.group(1)) > 0 else None


def fbeta_parts(beta: float, average: str) -> tuple[Callable[..., float], bool, Any, Any]:
    """A named F-beta's ``(fn, greater_is_better, per_row, weighted)``, as :class:`~pipeline.core.metrics.Metric`
    takes them."""
    if average not in FBETA_AVERAGES:
        raise ValueError(f"unknown F-beta average {average!r}; accepted: {list(FBETA_AVERAGES)}")
    per_row = partial(fbeta_rows, beta=beta) if average == "samples" else None
    return (partial(fbeta, beta=beta, average=average), True, per_row,
            partial(fbeta_weighted, beta=beta, average=average))


def _column_metric(name: str, weighted: Callable[..., np.ndarray], needs: str) -> Callable[..., float]:
    """A multi-label column average as a plain metric, which raises where no column is scorable."""

    def score(labels: np.ndarray, preds: np.ndarray) -> float:
        labels, preds = check_multilabel(labels, preds)
        value = _one(weighted(labels, preds, np.ones((1, len(labels)), dtype=np.int64)))
        if np.isnan(value):
            raise ValueError(f"{name} is undefined on these {len(labels)} rows: no label column has {needs}")
        return value

    score.__doc__ = weighted.__doc__
    return score


mean_auc = _column_metric("mean_auc", mean_auc_weighted, "both positive and negative rows")
mean_ap = _column_metric("mean_ap", mean_ap_weighted, "a positive row")


def target_metrics() -> list[tuple[str, Callable[..., float], bool, Any, Any, tuple[str, ...]]]:
    """The metrics this module adds to the registry: ``(name, fn, greater_is_better, per_row, weighted, tasks)``."""
    multilabel = ("multilabel",)
    table: list[tuple[str, Callable[..., float], bool, Any, Any, tuple[str, ...]]] = [
        ("mse", mse, False, squared_error_rows, None, VALUE_KINDS),
        ("mae", mae, False, abs_error_rows, None, VALUE_KINDS),
        ("rmse", rmse, False, None, rmse_weighted, VALUE_KINDS),
        ("r2", r2, True, None, r2_weighted, VALUE_KINDS),
        ("bce", bce, False, bce_rows, None, multilabel),
    ]
    for beta, average in ((1.0, "samples"), (2.0, "samples"), (1.0, "macro"), (1.0, "micro")):
        table.append((f"f{beta:g}_{average}", *fbeta_parts(beta, average), multilabel))
    table += [("mean_auc", mean_auc, True, None, mean_auc_weighted, multilabel),
              ("mean_ap", mean_ap, True, None, mean_ap_weighted, multilabel)]
    return table
