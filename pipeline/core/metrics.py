"""Metrics with a known direction and the tasks they score, and a paired bootstrap for comparing two models.

Every metric takes targets and model outputs as :mod:`pipeline.core.task` holds them (multiclass/binary:
integer labels ``[N]`` and class probabilities ``[N, K]``) and returns a float. Metrics live in a plain
registry (:data:`METRICS`) of :class:`Metric` records, so the report and the ensemble selector can ask
whether bigger is better, and which tasks a metric scores (:func:`check_metric_task`), instead of hard-coding it.

Row-mean metrics (accuracy, log loss, top-k, MAP@k) carry a ``per_row`` function, so
:func:`paired_bootstrap` resamples a precomputed vector; ROC AUC and QWK carry a ``weighted`` form
(:mod:`pipeline.core.ranked`) scoring a batch of resamples from row counts; others fall back to a loop.
Resamples where a metric is undefined (NaN: AUC on rows of one class) are left out of the interval.
Competition metrics: ``roc_auc``, ``qwk`` (also of ordinal grade values), ``map@<k>`` (or ``map_at_<k>``),
``top<k>``, and a user's own through :func:`register_custom_metric` (``metric: {_target_: …, greater_is_better: …}``
in config). Regression/ordinal values: ``rmse``, ``mse``, ``mae``, ``r2``; multi-label: ``bce``,
``f<beta>_<samples|macro|micro>``, ``mean_auc``, ``mean_ap`` (:mod:`pipeline.core.target_metrics`).

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> score_all(np.array([0, 1, 1]), probs, names=["accuracy"])
{'accuracy': 0.6666666666666666}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from pipeline.core import target_metrics as tm
from pipeline.core.bootstrap import BootstrapResult, boot_diffs
from pipeline.core.errors import ConfigError
from pipeline.core.ranked import map_at_k_rows, qwk_weighted, roc_auc_weighted, true_class_rank
from pipeline.core.task import TASKS

__all__ = ["LOG_LOSS_EPS", "METRICS", "BootstrapResult", "Metric", "accuracy", "balanced_accuracy", "check_metric_task",
           "get_metric", "log_loss", "macro_f1", "map_at_k", "metric_names", "paired_bootstrap", "qwk",
           "register_custom_metric", "register_metric", "roc_auc", "score_all", "top_k_accuracy"]

LOG_LOSS_EPS = 1e-15
"""Kaggle's multiclass log-loss clips probabilities to ``[eps, 1 - eps]`` before renormalising rows."""

MetricFn = Callable[[np.ndarray, np.ndarray], float]
RowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
WeightedFn = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]

CLASS_TASKS = frozenset({"multiclass", "binary"})
VALUE_TASKS = frozenset(tm.VALUE_KINDS)


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
        tasks: The task kinds (:data:`pipeline.core.task.TASKS`) it scores.
    """

    name: str
    fn: MetricFn
    greater_is_better: bool
    per_row: RowFn | None = None
    weighted: WeightedFn | None = None
    tasks: frozenset[str] = CLASS_TASKS

    def __call__(self, labels: np.ndarray, probs: np.ndarray) -> float:
        """Score ``probs`` against ``labels``."""
        return self.fn(labels, probs)

    def check(self, labels: np.ndarray, probs: np.ndarray, task: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The inputs checked and converted for ``task`` (None: the kind this metric reads, from its tasks)."""
        if task is None:
            if self.tasks & CLASS_TASKS:  # qwk also reads one column of ordinal grade values
                one_column = np.ndim(probs) == 1 or np.ndim(probs) == 2 and np.shape(probs)[1] == 1
                task = "ordinal" if "ordinal" in self.tasks and one_column else "multiclass"
            else:
                task = "multilabel" if "multilabel" in self.tasks else "regression"
        return tm.check_targets(task, labels, probs)


METRICS: dict[str, Metric] = {}


def register_metric(
    name: str, greater_is_better: bool, per_row: RowFn | None = None, weighted: WeightedFn | None = None,
    tasks: frozenset[str] = CLASS_TASKS,
) -> Callable[[MetricFn], MetricFn]:
    """Decorator that adds ``fn`` to :data:`METRICS` under ``name``.

    Args:
        name: Registry key; must be new.
        greater_is_better: Direction of the metric.
        per_row: Optional per-row contributions whose mean is the metric.
        weighted: Optional batched form over row counts (see :class:`Metric`).
        tasks: The task kinds it scores.

    Returns:
        A decorator returning the function unchanged.
    """

    def decorator(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"metric {name!r} is already registered")
        METRICS[name] = Metric(name, fn, greater_is_better, per_row, weighted, tasks)
        return fn

    return decorator


_CUSTOM: set[str] = set()


def register_custom_metric(name: str, fn: MetricFn, greater_is_better: bool,
                           tasks: frozenset[str] = CLASS_TASKS) -> Metric:
    """Add (or replace) a user's metric ``fn(labels, probs) -> float`` under ``name`` (how a config's
    ``metric: {_target_: mypkg.fn, greater_is_better: true}`` reaches every stage); return it. It scores
    ``tasks`` (multiclass and binary by default), its inputs checked as :func:`check_targets` does for them.

    Raises:
        ValueError: ``name`` is a built-in metric's, ``fn`` is not callable or the direction not a bool.
    """
    patterned = any(p.fullmatch(name) for p in (_TOP_K_NAME, _MAP_K_NAME)) or tm.parse_fbeta(name) is not None
    if name in METRICS and name not in _CUSTOM or patterned:
        raise ValueError(f"metric name {name!r} is a built-in metric's; give the custom metric another name")
    if not callable(fn) or not isinstance(greater_is_better, bool):
        raise ValueError(f"a custom metric needs a callable and greater_is_better true/false; got {fn!r}, {greater_is_better!r}")

    def checked(labels: np.ndarray, probs: np.ndarray) -> float:
        labels, probs = metric.check(labels, probs)
        return float(fn(labels, probs))

    metric = Metric(name, checked, greater_is_better, tasks=frozenset(tasks))
    METRICS[name] = metric
    _CUSTOM.add(name)
    return METRICS[name]


_check_inputs = tm.check_classes  # multiclass/binary: int labels [N] in range, probs [N, K]


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


def _qwk_weighted(labels: np.ndarray, probs: np.ndarray, counts: np.ndarray) -> np.ndarray:
    if probs.shape[1] == 1:  # ordinal grade values: the nearest grade, as a class over the labels' range
        labels, probs = tm.grade_classes(labels, probs)
    return qwk_weighted(labels, probs, counts)


def qwk(labels: np.ndarray, probs: np.ndarray) -> float:
    """Quadratic weighted kappa of the top-1 class, classes ordinal (:func:`pipeline.core.ranked.qwk_weighted`).

    One column (or ``[N]``) of ordinal grade values is rounded to the nearest grade and clipped to the labels'
    range first (:func:`pipeline.core.target_metrics.grade_classes`).
    """
    labels, probs = METRICS["qwk"].check(labels, probs)
    return float(_qwk_weighted(labels, probs, np.ones((1, len(labels)), dtype=np.int64))[0])


METRICS["roc_auc"] = Metric("roc_auc", roc_auc, True, weighted=roc_auc_weighted)
METRICS["qwk"] = Metric("qwk", qwk, True, weighted=_qwk_weighted, tasks=CLASS_TASKS | {"ordinal"})


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
_PATTERNS = {"multiclass": "top<k>, map@<k>", "binary": "top<k>, map@<k>",
             "multilabel": "f<beta>_<samples|macro|micro>"}


def _fbeta_metric(beta: float, average: str) -> Metric:
    return Metric(f"f{beta:g}_{average}", *tm.fbeta_parts(beta, average), frozenset({"multilabel"}))


for _name, _fn, _gib, _rows, _weighted, _tasks in tm.target_metrics():
    METRICS[_name] = Metric(_name, _fn, _gib, _rows, _weighted, frozenset(_tasks))


def get_metric(name: str) -> Metric:
    """Look up a metric by name; ``top<k>`` and ``map@<k>`` (or ``map_at_<k>``) work for any ``k >= 1``, and
    ``f<beta>_<samples|macro|micro>`` (multi-label F-beta) for any ``beta > 0``.

    Raises:
        KeyError: The name is unknown; the message lists the accepted names.
    """
    if name in METRICS:
        return METRICS[name]
    for pattern, make in ((_TOP_K_NAME, _top_k_metric), (_MAP_K_NAME, _map_k_metric)):
        match = pattern.fullmatch(name)
        if match and int(match.group(1)) >= 1:
            return make(int(match.group(1)))
    if (fbeta := tm.parse_fbeta(name)) is not None:
        return _fbeta_metric(*fbeta)
    raise KeyError(f"unknown metric {name!r}; accepted: {sorted(METRICS)}, top<k> or map@<k> with k >= 1, "
                   "f<beta>_<samples|macro|micro> with beta > 0, "
                   "or a custom metric {_target_: module.function, greater_is_better: true|false}")


def metric_names(task: str) -> list[str]:
    """The registered metrics that score a ``task`` kind, in registration order."""
    return [name for name, m in METRICS.items() if task in m.tasks]


def check_metric_task(metric_name: str, task_kind: str) -> Metric:
    """The metric, when it scores ``task_kind``.

    Raises:
        ConfigError: The task is unknown, or the metric does not score it; names both and what is accepted.
        KeyError: The metric is unknown (from :func:`get_metric`).
    """
    if task_kind not in TASKS:
        raise ConfigError(f"unknown task {task_kind!r} for metric {metric_name!r}; accepted: {list(TASKS)}")
    metric = get_metric(metric_name)
    if task_kind not in metric.tasks:
        also = f" or {_PATTERNS[task_kind]}" if task_kind in _PATTERNS else ""
        raise ConfigError(f"metric {metric_name!r} does not score a {task_kind} task (it scores "
                          f"{sorted(metric.tasks)}); "
                          f"accepted for {task_kind}: {metric_names(task_kind)}{also}")
    return metric


def score_all(labels: np.ndarray, probs: np.ndarray, names: Sequence[str] | None = None,
              task: str | None = None) -> dict[str, float]:
    """Score ``probs`` with several metrics, in ``names`` order (by default every registered one that scores
    ``task``; None: a multiclass task). With ``task`` given, every name must score it and the inputs are checked
    as that task's; without, each metric checks them as the kind it reads."""
    names = list(names if names is not None else metric_names(task or "multiclass"))
    if task is not None:
        for name in names:
            check_metric_task(name, task)
        labels, probs = tm.check_targets(task, labels, probs)
    return {name: get_metric(name)(labels, probs) for name in names}


def paired_bootstrap(
    labels: np.ndarray,
    probs_a: np.ndarray,
    probs_b: np.ndarray,
    metric: str | Metric,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    task: str | None = None,
) -> BootstrapResult:
    """Percentile bootstrap interval for ``metric(a) - metric(b)``, resampling rows jointly.

    Pairing (the same resampled rows for both models) removes the between-image variance the two
    models share, so the interval is far tighter than comparing two separate intervals.

    Args:
        labels: The targets (integer labels ``[N]``; 0/1 ``[N, L]`` or values ``[N]``, see
            :mod:`pipeline.core.task`); rows are resampled.
        probs_a: Model A outputs (probabilities ``[N, K]``; ``[N, L]`` or ``[N, 1]``).
        probs_b: Model B outputs, the same shape.
        metric: Registered name or a :class:`Metric`. For loss-like metrics a negative
            difference means A is better.
        n_boot: Number of resamples.
        seed: Seed of the resampling; the result is deterministic given it.
        alpha: Two-sided miss rate; the interval covers ``1 - alpha``.
        task: The task kind whose checks the inputs get; None: the kind the metric reads.

    Returns:
        The full-data difference and the ``[alpha/2, 1 - alpha/2]`` percentiles.

    >>> y = np.array([0, 1, 1, 0])
    >>> p = np.eye(2)[[0, 1, 0, 0]]
    >>> paired_bootstrap(y, p, p, "accuracy", n_boot=10)
    BootstrapResult(diff=0.0, low=0.0, high=0.0, n_boot=10)
    """
    metric = get_metric(metric) if isinstance(metric, str) else metric
    if task is not None and task not in metric.tasks:
        check_metric_task(metric.name, task)
    labels, probs_a = metric.check(labels, probs_a, task)
    _, probs_b = metric.check(labels, probs_b, task)
    if probs_a.shape != probs_b.shape:
        raise ValueError(f"probs_a and probs_b differ in shape: {probs_a.shape} vs {probs_b.shape}")
    if n_boot < 1 or not 0 < alpha < 1:
        raise ValueError(f"need n_boot >= 1 and 0 < alpha < 1; got n_boot={n_boot}, alpha={alpha}")
    diff = metric.fn(labels, probs_a) - metric.fn(labels, probs_b)
    diffs = boot_diffs(metric, labels, probs_a, probs_b, n_boot, seed)
    diffs = diffs[np.isfinite(diffs)]  # resamples where the metric is undefined (AUC on rows of one class)
    if not len(diffs):
        raise ValueError(f"{metric.name} is undefined on every bootstrap resample of these {len(labels)} rows")
    low, high = np.quantile(diffs, [alpha / 2, 1 - alpha / 2])
    return BootstrapResult(diff=float(diff), low=float(low), high=float(high), n_boot=n_boot)
