"""Competition metrics that are not a mean over rows: ROC AUC, quadratic weighted kappa, multi-label mean AUC
and mean average precision; and MAP@k's rows.

Each comes as a *weighted, batched* function ``fn(labels, probs, counts[B, N]) -> [B]``: row ``i`` counts
``counts[b, i]`` times (a non-negative integer) in score ``b``. With one row of ones it is the plain metric; with the row counts
of bootstrap resamples it scores 1000 resamples from one sort, which is what lets
:func:`pipeline.core.metrics.paired_bootstrap` handle them without re-running the metric per resample.
The registry (names, directions) lives in :mod:`pipeline.core.metrics`.
"""

from __future__ import annotations

import numpy as np

__all__ = ["roc_auc_weighted", "qwk_weighted", "true_class_rank", "map_at_k_rows", "mean_auc_weighted",
           "mean_ap_weighted"]


def _auc_one(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of ``scores`` for the ``positive`` rows, per row of counts; NaN without both sides.

    Integer arithmetic throughout (exact): each positive row beats the negatives scored below its group of
    tied scores and half of those tied with it.
    """
    n = len(scores)
    order = np.argsort(scores, kind="stable")
    ordered = scores[order]
    is_pos = positive[order]
    w = counts[:, order]
    neg_cum = np.zeros((len(w), n + 1), dtype=np.int64)
    np.cumsum(np.where(is_pos, 0, w), axis=1, out=neg_cum[:, 1:])  # negatives up to each sorted position
    new = np.r_[True, ordered[1:] != ordered[:-1]]
    starts = np.flatnonzero(new)
    group = (np.cumsum(new) - 1)[is_pos]  # the tie group of each positive row
    below = neg_cum[:, starts[group]]
    tied = neg_cum[:, np.r_[starts[1:], n][group]] - below
    w_pos = w[:, is_pos].astype(np.int64)
    twice_wins = np.einsum("bn,bn->b", w_pos, 2 * below + tied)
    pairs = w_pos.sum(axis=1) * neg_cum[:, -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, twice_wins / (2.0 * pairs), np.nan)


def roc_auc_weighted(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """ROC AUC, one-vs-rest and macro-averaged; with two classes the AUC of class 1 (the positive class).

    A class absent from a (resampled) set of rows, or present in all of them, has no AUC and is left out of
    the mean; a set with no such class at all scores NaN. On rows where every class occurs this equals
    ``sklearn.metrics.roc_auc_score(labels, probs, multi_class="ovr", average="macro")``.
    """
    classes = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    per_class = np.stack([_auc_one(probs[:, c], labels == c, counts) for c in classes], axis=1)
    defined = ~np.isnan(per_class)
    total = np.where(defined, per_class, 0.0).sum(axis=1)
    count = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def qwk_weighted(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Quadratic weighted kappa of the top-1 class (ties to the lower index) against the labels.

    Classes are ordinal in their column order (the pipeline's class order: numeric names numerically, the
    others alphabetically), and the penalty of predicting ``j`` for ``i`` is ``(i - j)²`` over *all* K
    classes, present or not: ``sklearn.metrics.cohen_kappa_score(labels, pred, weights="quadratic",
    labels=range(K))``. NaN when the expected disagreement is zero (a single class everywhere).
    """
    k = probs.shape[1]
    cell = labels * k + probs.argmax(axis=1)
    penalty = ((np.arange(k)[:, None] - np.arange(k)[None, :]) ** 2).astype(np.float64)
    out = np.empty(len(counts))
    for b, w in enumerate(counts):
        observed = np.bincount(cell, weights=w, minlength=k * k).reshape(k, k)
        total = observed.sum()
        expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / total if total > 0 else observed
        denominator = (penalty * expected).sum()
        out[b] = 1.0 - (penalty * observed).sum() / denominator if denominator > 0 else np.nan
    return out


def true_class_rank(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """0-based rank of the true class in a stable descending sort (ties go to the lower class index)."""
    true_p = probs[np.arange(len(labels)), labels][:, None]
    lower_index = np.arange(probs.shape[1])[None, :] < labels[:, None]
    return (probs > true_p).sum(axis=1) + ((probs == true_p) & lower_index).sum(axis=1)


def map_at_k_rows(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    """Per-row average precision at ``k`` with one true label: ``1 / (rank + 1)`` if it is in the top k, else 0."""
    rank = true_class_rank(labels, probs)
    return np.where(rank < k, 1.0 / (rank + 1.0), 0.0)


def _column_mean(per_column: list[np.ndarray]) -> np.ndarray:
    """Mean over the columns that are defined (not NaN) in each resample; NaN where none is."""
    stacked = np.stack(per_column, axis=1)
    defined = ~np.isnan(stacked)
    count = defined.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, np.where(defined, stacked, 0.0).sum(axis=1) / count, np.nan)


def mean_auc_weighted(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Multi-label: ROC AUC of each label column (its 0/1 targets against its probabilities), macro-averaged.

    A column of one class (in the resample) has no AUC and is left out; no column with both: NaN. Where every
    column has both this is ``sklearn.metrics.roc_auc_score(labels, preds, average="macro")``.
    """
    positive = labels > 0.5
    return _column_mean([_auc_one(preds[:, j], positive[:, j], counts) for j in range(labels.shape[1])])


def _ap_one(scores: np.ndarray, positive: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Average precision ``sum_n (R_n - R_{n-1}) P_n`` over distinct scores, highest first; NaN without positives."""
    order = np.argsort(-scores, kind="stable")
    ordered = scores[order]
    is_pos = positive[order]
    w = counts[:, order]
    last = np.r_[ordered[1:] != ordered[:-1], True]  # the last row of each group of tied scores
    tp = np.cumsum(np.where(is_pos, w, 0), axis=1)[:, last]
    seen = np.cumsum(w, axis=1)[:, last]
    new_tp = np.diff(tp, axis=1, prepend=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(seen > 0, tp / np.maximum(seen, 1), 0.0)
        return np.where(tp[:, -1] > 0, (new_tp * precision).sum(axis=1) / tp[:, -1], np.nan)


def mean_ap_weighted(labels: np.ndarray, preds: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Multi-label: average precision of each label column, macro-averaged over the columns with a positive row.

    A column without positives (in the resample) has no average precision and is left out, where
    ``sklearn.metrics.average_precision_score(average="macro")`` warns and scores it; no such column: NaN.
    """
    positive = labels > 0.5
    return _column_mean([_ap_one(preds[:, j], positive[:, j], counts) for j in range(labels.shape[1])])
