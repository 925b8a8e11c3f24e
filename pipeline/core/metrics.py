"""Classification metrics with a known direction, and a paired bootstrap for comparing two models.

Every metric takes integer labels ``[N]`` and class probabilities ``[N, K]`` and returns a float.
Metrics live in a plain registry (:data:`METRICS`) of :class:`Metric` records, so the report and the
ensemble selector can ask whether bigger is better instead of hard-coding it.

Row-mean metrics (accuracy, log loss, top-k, MAP@k) carry a ``per_row`` function, so
:func:`paired_bootstrap` resamples a precomputed vector; ROC AUC and QWK carry a ``weighted`` form
(:mod:`pipeline.core.ranked`) scoring a batch of resamples from row counts; others fall back to a loop.
Resamples where a metric is undefined (NaN: AUC on rows of one class) are left out of the interval.
Competition metrics: ``roc_auc``, ``qwk``, ``map@<k>`` (or ``map_at_<k>``), ``top<k>``, and a user's own
through :func:`register_custom_metric` (``metric: {_target_: …, greater_is_better: …}`` in config).

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> score_all(np.array([0, 1, 1]), probs, names=["accuracy"])
{'accuracy': 0.6666666666666666}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline.core.ranked import map_at_k_rows, qwk_weighted, roc_auc_weighted, true_class_rank

__all__ = [
    "LOG_LOSS_EPS",
    "METRICS",
    "BootstrapResult",
    "Metric",
    "accuracy",
    "balanced_accuracy",
    "get_metric",
    "map_at_k",
    "log_loss",
    "macro_f1",
    "paired_bootstrap",
    "qwk",
    "register_custom_metric",
    "register_metric",
    "roc_auc",
    "score_all",
    "top_k_accuracy",
]

LOG_LOSS_EPS = 1e-15
"""Kaggle's multiclass log-loss clips probabilities to ``[eps, 1 - eps]`` before renormalising rows."""

MetricFn = Callable[[np.ndarray, np.ndarray], float]
RowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
WeightedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

# Bound on the number of resampled indices held in memory at once (about 16 MB of int64).
_BOOT_CHUNK_ELEMS = 2_000_000


@dataclass(frozen=True)
class Metric:
    """A registered metric.

    Attributes:
        name: Registry key, e.g. ``"log_loss"``.
        fn: ``fn(labels, probs) -> float``.
        greater_is_better: Direction, for model selection and for reading bootstrap differences.
        per_row: Optional ``per_row(labels, probs) -> [N]`` whose mean equals ``fn``; lets the
            bootstrap resample a vector instead of recomputing the metric.
        weighted: Optional ``weighted(labels, probs, counts[B, N]) -> [B]``, the metric with row ``i``
            counted ``counts[b, i]`` times; lets the bootstrap score a batch of resamples at once.
    """

    name: str
    fn: MetricFn
    greater_is_better: bool
    per_row: RowFn | None = None
    weighted: WeightedFn | None = None

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """Score ``probs`` against ``labels``."""
        return self.fn(labels, probs)


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of :func:`paired_bootstrap`.

    Attributes:
        diff: ``metric(a) - metric(b)`` on the full data.
        low: Lower percentile bound of the difference.
        high: Upper percentile bound of the difference.
        n_boot: Number of resamples.
    """

    diff: float
    low: float
    high: float
    n_boot: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero (read the sign with the metric's direction)."""
        return self.low > 0 or self.high < 0


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, greater_is_better: bool, per_row: RowFn | None = None, weighted: WeightedFn | None = None
) -> Callable[[MetricFn], MetricFn]:
    """Decorator that adds ``fn`` to :data:`METRICS` under ``name``.

    Args:
        name: Registry key; must be new.
        greater_is_better: Direction of the metric.
        per_row: Optional per-row contributions whose mean is the metric.
        weighted: Optional batched form over row counts (see :class:`Metric`).

    Returns:
        A decorator returning the function unchanged.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, greater_is_better, per_row, weighted)
        return fn

    return decorator


_CUSTOM: set[str] = set()


def register_custom_metric(name: str, fn: MetricFn, greater_is_better: bool) -> Metric:
    """Add (or replace) a user's metric ``fn(labels, probs) -> float`` under ``name`` (how a config's
    ``metric: {_target_: mypkg.fn, greater_is_better: true}`` reaches every stage); return it.

    Raises:
        ValueError: ``name`` is a built-in metric's, ``fn`` is not callable or the direction not a bool.
    """
    if name in METRICS and name not in _CUSTOM or _TOP_K_NAME.fullmatch(name) or _MAP_K_NAME.fullmatch(name):
        raise ValueError(f"metric name {name!r} is a built-in metric's; give the custom metric another name")
    if not callable(fn) or not isinstance(greater_is_better, bool):
        raise ValueError(f"a custom metric needs a callable and greater_is_better true/false; got {fn!r}, {greater_is_better!r}")

    def checked(labels: np.ndarray, probs: np.ndarray) -> float:
        labels, probs = _check_inputs(labels, probs)
        return float(fn(labels, probs))

    METRICS[name] = Metric(name, checked, greater_is_better)
    _CUSTOM.add(name)
    return METRICS[name]


def _check_inputs(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return labels as int64 ``[N]`` and probs as float64 ``[N, K]``, or raise naming the problem."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    if labels.ndim != 1 or probs.ndim != 2:
        raise ValueError(f"expected labels [N] and probs [N, K]; got {labels.shape} and {probs.shape}")
    if len(labels) != len(probs) or len(labels) == 0:
        raise ValueError(f"labels and probs need the same non-zero N; got {len(labels)} and {len(probs)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices; got dtype {labels.dtype}")
    n_classes = probs.shape[1]
    bad = (labels < 0) | (labels >= n_classes)
    if bad.any():
        raise ValueError(
            f"labels must lie in [0, {n_classes - 1}]; got {labels[bad][:5].tolist()} "
            f"at rows {np.flatnonzero(bad)[:5].tolist()}"
        )
    return labels.astype(np.int64, copy=False), probs


def _correct_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    # np.argmax takes the first maximum, so ties go to the lower class index everywhere below too.
    return (probs.argmax(axis=1) == labels).astype(np.float64)


def _nll_rows(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    clipped /= clipped.sum(axis=1, keepdims=True)
    return -np.log(clipped[np.arange(len(labels)), labels])


def _top_k_rows(labels: np.ndarray, probs: np.ndarray, k: int) -> np.ndarray:
    # Ties go to the lower class index, so top1 agrees exactly with accuracy's argmax tie rule.
    return (true_class_rank(labels, probs) < min(k, probs.shape[1])).astype(np.float64)


@register_metric("accuracy", greater_is_better=True, per_row=_correct_rows)
def accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Top-1 accuracy; ties in ``probs`` go to the lower class index (``np.argmax``)."""
    labels, probs = _check_inputs(labels, probs)
    return float(_correct_rows(labels, probs).mean())


@register_metric("log_loss", greater_is_better=False, per_row=_nll_rows)
def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Kaggle multiclass log loss: clip to ``[1e-15, 1 - 1e-15]``, renormalise rows, mean NLL.

    Unlike ``sklearn.metrics.log_loss`` (which, since 1.5, clips to the dtype's machine epsilon and
    does not renormalise), this follows the Kaggle rule, so a zero on the true class costs
    ``-log(1e-15 / row_sum)`` (about 34.5) rather than ``-log(2.2e-16)`` (about 36.0). On rows already
    inside the clip range and summing to one the two agree.
    """
    labels, probs = _check_inputs(labels, probs)
    return float(_nll_rows(labels, probs).mean())


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Fraction of rows whose true class is among the ``k`` highest probabilities.

    ``k`` is clipped to the number of classes, so ``top5`` on a 3-class task is 1.0. Ties are
    broken towards the lower class index, as in :func:`accuracy`.
    """
    if k < 1:
        raise ValueError(f"top-k needs k >= 1; got {k}")
    labels, probs = _check_inputs(labels, probs)
    return float(_top_k_rows(labels, probs, k).mean())


def _confusion_counts(labels: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-class true positives, predicted counts and true counts."""
    n_classes = probs.shape[1]
    pred = probs.argmax(axis=1)
    tp = np.bincount(labels[pred == labels], minlength=n_classes)
    return tp, np.bincount(pred, minlength=n_classes), np.bincount(labels, minlength=n_classes)


@register_metric("macro_f1", greater_is_better=True)
def macro_f1(labels: np.ndarray, probs: np.ndarray) -> float:
    """Unweighted mean F1 over the classes that occur in the labels or the predictions.

    This matches ``sklearn.metrics.f1_score(average="macro")`` with its default ``labels=None``:
    a class that is neither present nor predicted is left out rather than scored as 0.
    """
    labels, probs = _check_inputs(labels, probs)
    tp, n_pred, n_true = _confusion_counts(labels, probs)
    seen = (n_pred + n_true) > 0
    return float(np.mean(2 * tp[seen] / (n_pred[seen] + n_true[seen])))


@register_metric("balanced_accuracy", greater_is_better=True)
def balanced_accuracy(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean per-class recall over the classes present in ``labels`` (as sklearn's)."""
    labels, probs = _check_inputs(labels, probs)
    tp, _, n_true = _confusion_counts(labels, probs)
    present = n_true > 0
    return float(np.mean(tp[present] / n_true[present]))


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC, one-vs-rest, macro; binary: class 1's (:func:`pipeline.core.ranked.roc_auc_weighted`)."""
    labels, probs = _check_inputs(labels, probs)
    return float(roc_auc_weighted(labels, probs, np.ones((1, len(labels)), dtype=np.int64))[0])


def qwk(labels: np.ndarray, probs: np.ndarray) -> float:
    """Quadratic weighted kappa of the top-1 class, classes ordinal (:func:`pipeline.core.ranked.qwk_weighted`)."""
    labels, probs = _check_inputs(labels, probs)
    return float(qwk_weighted(labels, probs, np.ones((1, len(labels)), dtype=np.int64))[0])


METRICS["roc_auc"] = Metric("roc_auc", roc_auc, True, weighted=roc_auc_weighted)
METRICS["qwk"] = Metric("qwk", qwk, True, weighted=qwk_weighted)


def map_at_k(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """MAP@k with one true label per row: the mean of ``1 / rank`` of the true class if it is among the
    ``k`` most probable classes (rank 1 = first), else 0. Ties go to the lower class index."""
    if k < 1:
        raise ValueError(f"MAP@k needs k >= 1; got {k}")
    labels, probs = _check_inputs(labels, probs)
    return float(map_at_k_rows(labels, probs, k).mean())


def _map_k_metric(k: int) -> Metric:
    return Metric(f"map@{k}", partial(map_at_k, k=k), True, partial(map_at_k_rows, k=k))


METRICS["map@3"] = _map_k_metric(3)


def _top_k_metric(k: int) -> Metric:
    name = f"top{k}"
    return Metric(name, partial(top_k_accuracy, k=k), True, partial(_top_k_rows, k=k))


for _k in (2, 3, 5):
    METRICS[f"top{_k}"] = _top_k_metric(_k)

_TOP_K_NAME = re.compile(r"top(\d+)")
_MAP_K_NAME = re.compile(r"map(?:@|_at_)(\d+)")


def get_metric(name: str) -> Metric:
    """Look up a metric by name; ``top<k>`` and ``map@<k>`` (or ``map_at_<k>``) work for any ``k >= 1``.

    Raises:
        KeyError: The name is unknown; the message lists the accepted names.
    """
    if name in METRICS:
        return METRICS[name]
    for pattern, make in ((_TOP_K_NAME, _top_k_metric), (_MAP_K_NAME, _map_k_metric)):
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) >= 1:
            return make(int(match.group(1)))
    raise KeyError(f"unknown metric {name!r}; accepted: {sorted(METRICS)}, top<k> or map@<k> with k >= 1, "
                   "or a custom metric {_target_: module.function, greater_is_better: true|false}")


def score_all(labels: np.ndarray, probs: np.ndarray, names: Sequence[str] | None = None) -> dict[str, float]:
    """Score ``probs`` with several metrics (all registered ones by default), in ``names`` order."""
    labels, probs = _check_inputs(labels, probs)
    return {name: get_metric(name)(labels, probs) for name in (names if names is not None else METRICS)}


def _resample_chunks(rng: np.random.Generator, n_rows: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield ``[chunk, n_rows]`` row-index arrays, ``n_boot`` rows in total, bounded in memory."""
    per_chunk = max(1, _BOOT_CHUNK_ELEMS // n_rows)
    for start in range(0, n_boot, per_chunk):
        yield rng.integers(0, n_rows, size=(min(per_chunk, n_boot - start), n_rows))


def _boot_diffs(
    metric: Metric, labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Metric differences over ``n_boot`` paired resamples (same rows for both models)."""
    rng = np.random.default_rng(seed)
    chunks = _resample_chunks(rng, len(labels), n_boot)
    if metric.per_row is not None:
        row_diff = metric.per_row(labels, probs_a) - metric.per_row(labels, probs_b)
        return np.concatenate([row_diff[idx].mean(axis=1) for idx in chunks])
    if metric.weighted is not None:
        n = len(labels)
        out = []
        for idx in chunks:  # row counts of each resample: the same resamples as the other paths
            counts = np.bincount((idx + n * np.arange(len(idx))[:, None]).ravel(), minlength=idx.size)
            counts = counts.reshape(len(idx), n)
            out.append(metric.weighted(labels, probs_a, counts) - metric.weighted(labels, probs_b, counts))
        return np.concatenate(out)
    return np.array(
        [
            metric.fn(labels[idx], probs_a[idx]) - metric.fn(labels[idx], probs_b[idx])
            for chunk in chunks
            for idx in chunk
        ]
    )


def paired_bootstrap(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str | Metric,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> BootstrapResult:
    """Percentile bootstrap interval for ``metric(a) - metric(b)``, resampling rows jointly.

    Pairing (the same resampled rows for both models) removes the between-image variance the two
    models share, so the interval is far tighter than comparing two separate intervals.

    Args:
        labels: Integer labels ``[N]``.
        probs_a: Model A probabilities ``[N, K]``.
        probs_b: Model B probabilities ``[N, K]``.
        metric: Registered name or a :class:`Metric`. For loss-like metrics a negative
            difference means A is better.
        n_boot: Number of resamples.
        seed: Seed of the resampling; the result is deterministic given it.
        alpha: Two-sided miss rate; the interval covers ``1 - alpha``.

    Returns:
        The full-data difference and the ``[alpha/2, 1 - alpha/2]`` percentiles.

    >>> y = np.array([0, 1, 1, 0])
    >>> p = np.eye(2)[[0, 1, 0, 0]]
    >>> paired_bootstrap(y, p, p, "accuracy", n_boot=10)
    BootstrapResult(diff=0.0, low=0.0, high=0.0, n_boot=10)
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    labels, probs_a = _check_inputs(labels, probs_a)
    _, probs_b = _check_inputs(labels, probs_b)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probs_a and probs_b differ in shape: {probs_a.shape} vs {probs_b.shape}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1; got n_boot={n_boot}, alpha={alpha}")
    diff = metric.fn(labels, probs_a) - metric.fn(labels, probs_b)
    diffs = _boot_diffs(metric, labels, probs_a, probs_b, n_boot, seed)
    diffs = diffs[np.isfinite(diffs)]  # resamples where the metric is undefined (AUC on rows of one class)
    if not len(diffs):
        raise ValueError(f"{metric.name} is undefined on every bootstrap resample of these {len(labels)} rows")
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(diff=float(diff), low=float(low), high=float(high), n_boot=n_boot)
