"""Ways to merge models beyond a fixed weighted mean: optimised weights, rank averaging, stacking, temperatures.

A :class:`Combiner` is a fitted merge: :func:`fit_combiner` fits it on the models' OOF rows (never on test
rows) and :meth:`Combiner.apply` merges any aligned set of the same models' predictions. Everything works
on ``[N, K]`` float32 arrays, one per model; no members × rows × classes float64 copy is made.

- ``weighted``: ``ensemble.method`` (prob/logit/geo mean, max) with equal, given, Caruana (optionally
  bagged) or ``optimize`` weights (the simplex weights minimising the log loss of the merge, scipy);
- ``rank``: per-class rank averaging. Each model's scores for a class are replaced by their ranks over the
  rows, scaled to [0, 1], and averaged. Only the order means anything (AUC-type metrics): the rows are
  renormalised to sum to one so a probability submission stays valid, but they are **not calibrated
  probabilities** and their log loss is meaningless;
- ``stack``: a multinomial logistic regression (scikit-learn) on the models' OOF log-probabilities. Its
  honest OOF score comes from :func:`pipeline.predict.fitting.cross_fit`; the deployed meta-model is refitted on all rows;
- ``single``: one model alone (what ``ensemble=auto`` falls back to).

Temperature scaling (Guo et al. 2017; ``ensemble.temperature``) divides each model's log-probabilities by
a scalar fitted on its OOF rows (1-D minimisation of log loss) before any of these merges.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.core.metrics import get_metric, log_loss
from pipeline.core.reduce import apply_temperature, from_space, to_space
from pipeline.core.task import Task
from pipeline.predict.ensemble import caruana_bagged, resolve_weights
from pipeline.predict.spec import COMBINES, EnsembleSpec

__all__ = ["COMBINES", "SMOOTH_METRICS", "Combiner", "apply_temperature", "fit_combiner", "fit_temperature",
           "optimize_weights", "rank_average"]

SMOOTH_METRICS = ("log_loss",)
"""Metrics ``optimize`` can minimise directly; for any other it minimises log loss (and records that)."""

_EPS = 1e-7
_CHUNK_ELEMS = 4_000_000


def _f32(probs: Sequence[np.ndarray]) -> list[np.ndarray]:
    return [np.asarray(p, dtype=np.float32) for p in probs]


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the log loss of :func:`apply_temperature` on these (OOF) rows.

    >>> over = np.array([[0.99, 0.01], [0.99, 0.01], [0.01, 0.99], [0.99, 0.01]])  # 3 of 4 right, all sure
    >>> fit_temperature(over, np.array([0, 0, 1, 1])) > 1  # over-confident: softened
    True
    """
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda log_t: log_loss(labels, apply_temperature(probs, float(np.exp(log_t)))),
                          bounds=(-4.0, 4.0), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(res.x))


def _merge_rows(space: Sequence[np.ndarray], weights: np.ndarray, method: str, rows: slice,
                dtype: type = np.float32, normalize: bool = True) -> np.ndarray:
    # float64 only chunk by chunk (the optimiser's finite differences need it), never for all rows at once.
    if method == "max":
        merged = np.maximum.reduce([s[rows].astype(dtype) for s, w in zip(space, weights) if w > 0])
    else:
        merged = from_space(method, sum(dtype(w) * s[rows].astype(dtype) for s, w in zip(space, weights) if w > 0))
    return merged / merged.sum(axis=1, keepdims=True) if normalize else merged


def _weighted(probs: Sequence[np.ndarray], weights: np.ndarray, method: str, normalize: bool = True) -> np.ndarray:
    space = [to_space(method, p) for p in _f32(probs)]
    return _merge_rows(space, weights, method, slice(None), normalize=normalize)


def _smooth_weights(probs: Sequence[np.ndarray], labels: np.ndarray, method: str, task: Task) -> np.ndarray:
    """Weights on the simplex minimising the task's smooth loss (mean per-label BCE, or MSE) of the merge."""
    from scipy.optimize import minimize

    space, loss_fn = [to_space(method, p) for p in _f32(probs)], get_metric(task.smooth_loss)

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())  # merged in float64: in float32 the finite differences vanish and nothing moves
        return float(loss_fn(labels, _merge_rows(space, w / w.sum(), method, slice(None), np.float64, normalize=False)))

    res = minimize(loss, np.zeros(len(space)), method="L-BFGS-B")
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def optimize_weights(probs: Sequence[np.ndarray], labels: np.ndarray, method: str = "prob_mean") -> np.ndarray:
    """Weights on the simplex (softmax-parametrised) minimising the log loss of the ``method`` merge (L-BFGS-B).

    The loss is accumulated over row chunks, so memory stays at the models' own arrays.

    >>> good, bad = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    >>> bool(optimize_weights([bad, good], np.array([0, 1]))[1] > 0.95)
    True
    """
    from scipy.optimize import minimize

    if method == "max":
        raise ValueError("ensemble.weights=optimize cannot weight ensemble.method=max (its weights only select)")
    space = [to_space(method, p) for p in _f32(probs)]
    labels = np.asarray(labels)
    n, n_classes = len(labels), space[0].shape[1]
    step = max(1, _CHUNK_ELEMS // n_classes)

    def loss(z: np.ndarray) -> float:
        w = np.exp(z - z.max())
        w /= w.sum()
        total = 0.0
        for start in range(0, n, step):
            rows = slice(start, start + step)
            merged = _merge_rows(space, w, method, rows, np.float64)
            total -= float(np.log(np.maximum(merged[np.arange(len(merged)), labels[rows]], 1e-15)).sum())
        return total / n

    res = minimize(loss, np.zeros(len(space)), method="L-BFGS-B")
    w = np.exp(res.x - res.x.max())
    return w / w.sum()


def rank_average(probs: Sequence[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    """Per-class rank averaging: ranks over the rows scaled to [0, 1], weighted mean, rows renormalised.

    Not a calibrated probability (see the module docstring); ties share their average rank.

    >>> rank_average([np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])]).round(3).tolist()
    [[1.0, 0.0], [0.5, 0.5], [0.0, 1.0]]
    """
    from scipy.stats import rankdata

    arrays = _f32(probs)
    w = np.full(len(arrays), 1.0 / len(arrays)) if weights is None else np.asarray(weights, dtype=np.float64)
    n = len(arrays[0])
    total = np.zeros(arrays[0].shape, np.float32)
    for p, wm in zip(arrays, w):
        if wm > 0:
            ranks = (rankdata(p, method="average", axis=0) - 1) / max(n - 1, 1) if n > 1 else np.full(p.shape, 0.5)
            total += np.float32(wm) * ranks.astype(np.float32)
    sums = total.sum(axis=1, keepdims=True)
    n_classes: int = arrays[0].shape[1]
    return np.where(sums > 0, total / np.where(sums > 0, sums, 1), np.float32(1.0 / n_classes))


def _stack_features(probs: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.log(np.maximum(p, _EPS)) for p in _f32(probs)], axis=1)


def _fit_stack(probs: Sequence[np.ndarray], labels: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=c, max_iter=2000).fit(_stack_features(probs), labels)


def _stack_proba(meta: Any, probs: Sequence[np.ndarray], n_classes: int) -> np.ndarray:
    out = np.full((len(probs[0]), n_classes), _EPS, np.float32)
    out[:, meta.classes_] = meta.predict_proba(_stack_features(probs))  # classes absent from the fit keep eps
    return out / out.sum(axis=1, keepdims=True)


class TaskStack:
    """Stacking beyond class probabilities: per label, a logistic regression on the models' logits of that label
    (multi-label); for values, a ridge regression on the models' values (regression, ordinal). ``C`` is
    ``ensemble.stack_c`` (the ridge's ``alpha`` is ``1 / C``)."""

    def __init__(self, task: Task, c: float) -> None:
        self.task, self.c = task, c
        self.models: list[Any] = []

    def _features(self, probs: Sequence[np.ndarray], j: int) -> np.ndarray:
        columns = np.stack([p[:, j] for p in _f32(probs)], axis=1).astype(np.float64)
        if self.task.kind != "multilabel":
            return columns
        clipped = np.clip(columns, _EPS, 1 - _EPS)
        return np.log(clipped) - np.log1p(-clipped)

    def fit(self, probs: Sequence[np.ndarray], labels: np.ndarray) -> TaskStack:
        from sklearn.linear_model import LogisticRegression, Ridge

        y = np.asarray(labels, dtype=np.float64).reshape(len(labels), -1)
        for j in range(y.shape[1]):
            x = self._features(probs, j)
            if self.task.kind != "multilabel":
                self.models.append(Ridge(alpha=1.0 / self.c).fit(x, y[:, j]))
            elif len(np.unique(y[:, j])) < 2:  # a label that is always (never) on in these rows: its rate
                self.models.append(float(y[0, j]))
            else:
                self.models.append(LogisticRegression(C=self.c, max_iter=2000).fit(x, y[:, j]))
        return self

    def predict(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        out = np.zeros((len(probs[0]), len(self.models)), np.float32)
        for j, model in enumerate(self.models):
            if isinstance(model, float):
                out[:, j] = model
            elif self.task.kind == "multilabel":
                out[:, j] = model.predict_proba(self._features(probs, j))[:, 1]
            else:
                out[:, j] = model.predict(self._features(probs, j))
        return out


@dataclass
class Combiner:
    """A fitted merge of models (see the module docstring).

    Attributes:
        kind: ``weighted``, ``rank``, ``stack`` or ``single``.
        weights: One weight per model (``single``: one-hot; ``stack``: equal, every model is run and the
            meta-model decides how they count).
        method: The reduction of ``weighted``.
        temperatures: One temperature per model, applied first; None: none.
        meta: The fitted scikit-learn meta-model of ``stack``.
        info: What was fitted and why (recorded in ``predict.json``).
    """

    kind: str
    weights: np.ndarray
    method: str = "prob_mean"
    temperatures: np.ndarray | None = None
    meta: Any = None
    info: dict[str, Any] = field(default_factory=dict)
    normalize: bool = True  # rows are softmax probabilities; off for multi-label probabilities and values

    @property
    def rowwise(self) -> bool:
        """Whether each output row depends on its input row only (then test files merge chunk by chunk)."""
        return self.kind != "rank"

    def apply(self, probs: Sequence[np.ndarray]) -> np.ndarray:
        """Merge the models' aligned ``[N, K]`` predictions (in fitting order) into ``[N, K]`` float32."""
        arrays = _f32(probs)
        if self.temperatures is not None:
            arrays = [apply_temperature(p, t) for p, t in zip(arrays, self.temperatures)]
        if self.kind == "single":
            return arrays[int(np.argmax(self.weights))]
        if self.kind == "rank":
            return rank_average(arrays, self.weights)
        if self.kind == "stack":
            if isinstance(self.meta, TaskStack):
                return self.meta.predict(arrays)
            return _stack_proba(self.meta, arrays, arrays[0].shape[1])
        return _weighted(arrays, self.weights, self.method, self.normalize)


def _best_single(arrays: Sequence[np.ndarray], labels: np.ndarray, metric: str) -> np.ndarray:
    """One-hot weights of the best model by ``metric`` on these rows (ties: the first)."""
    m = get_metric(metric)
    scores = [m(labels, p) for p in arrays]
    return np.eye(len(arrays))[int(np.argmax(scores) if m.greater_is_better else np.argmin(scores))]


def fit_combiner(probs: Sequence[np.ndarray], labels: np.ndarray, spec: EnsembleSpec, metric: str,
                 kind: str | None = None, weights: str | None = None, task: Task | None = None) -> Combiner:
    """Fit a :class:`Combiner` on OOF rows: ``kind`` (default ``spec.combine``) with ``weights`` (default ``spec.weights``).

    ``kind="single"`` picks the best model by ``metric`` on these rows. ``task`` (None: one class per image)
    says whether merged rows are renormalised, and which smooth loss fits weights for tasks without a log loss
    over classes (:func:`pipeline.predict.ensemble.check_ensemble` refuses the merges they can't take).
    """
    if task is not None and not task.softmax:
        return _fit_task_combiner(probs, labels, spec, metric, kind, weights, task)
    kind, weights = kind or spec.combine, weights or spec.weights
    labels = np.asarray(labels)
    arrays = _f32(probs)
    temps = None
    if spec.temperature:
        temps = np.array([fit_temperature(p, labels) for p in arrays])
        arrays = [apply_temperature(p, t) for p, t in zip(arrays, temps)]
    info: dict[str, Any] = {"kind": kind}
    if temps is not None:
        info["temperatures"] = temps.tolist()
    if kind == "single":
        w = _best_single(arrays, labels, metric)
        return Combiner("single", w, spec.method, temps, None, info)
    if kind == "stack":
        meta = _fit_stack(arrays, labels, spec.stack_c)
        return Combiner("stack", np.full(len(arrays), 1.0 / len(arrays)), spec.method, temps, meta,
                        {**info, "meta_model": f"LogisticRegression(C={spec.stack_c})", "features": "log-probabilities"})
    fit_metric = spec.fit_metric or metric
    if weights in ("caruana", "fitted"):
        w = caruana_bagged(arrays, labels, spec.bags, spec.bag_fraction, spec.seed, spec.caruana_rounds,
                           metric=get_metric(fit_metric), method=spec.method)
        info.update(weights="caruana", fit_metric=fit_metric, bags=spec.bags, bag_fraction=spec.bag_fraction)
    elif weights == "optimize":
        w = optimize_weights(arrays, labels, spec.method)
        info.update(weights="optimize", fit_metric="log_loss")
        if metric not in SMOOTH_METRICS:
            info["note"] = f"{metric} is not smooth: the weights minimise log loss instead"
    else:
        w = resolve_weights(weights, len(arrays), spec.given_weights)
        info["weights"] = weights
    return Combiner(kind, np.asarray(w, dtype=np.float64), spec.method, temps, None, info)


def _fit_task_combiner(probs: Sequence[np.ndarray], labels: np.ndarray, spec: EnsembleSpec, metric: str,
                       kind: str | None, weights: str | None, task: Task) -> Combiner:
    """:func:`fit_combiner` for multi-label, regression and ordinal outputs: weighted means without renormalising.

    Caruana selects by the task's smooth loss (mean per-label BCE, MSE) unless ``ensemble.fit_metric`` names
    another metric than its default ``log_loss`` (a metric that needs fitted thresholds, such as F-beta or QWK,
    is coarse to select weights on); ``optimize`` minimises the smooth loss.
    """
    kind, weights = kind or spec.combine, weights or spec.weights
    arrays, labels = _f32(probs), np.asarray(labels)
    info: dict[str, Any] = {"kind": kind, "task": task.kind}
    if kind == "single":
        w = _best_single(arrays, labels, metric)
        return Combiner("single", w, spec.method, None, None, info, normalize=False)
    if kind == "stack":
        meta = TaskStack(task, spec.stack_c).fit(arrays, labels)
        model = "LogisticRegression per label on logits" if task.kind == "multilabel" else "Ridge on values"
        return Combiner("stack", np.full(len(arrays), 1.0 / len(arrays)), spec.method, None, meta,
                        {**info, "meta_model": f"{model} (C={spec.stack_c})"}, normalize=False)
    if weights in ("caruana", "fitted"):
        fit_metric = spec.fit_metric if spec.fit_metric not in (None, "log_loss") else task.smooth_loss
        w = caruana_bagged(arrays, labels, spec.bags, spec.bag_fraction, spec.seed, spec.caruana_rounds,
                           metric=get_metric(fit_metric), method=spec.method, normalize=False)
        info.update(weights="caruana", fit_metric=fit_metric, bags=spec.bags, bag_fraction=spec.bag_fraction)
    elif weights == "optimize":
        w = _smooth_weights(arrays, labels, spec.method, task)
        info.update(weights="optimize", fit_metric=task.smooth_loss)
    else:
        w = resolve_weights(weights, len(arrays), spec.given_weights)
        info["weights"] = weights
    return Combiner("weighted", np.asarray(w, dtype=np.float64), spec.method, None, None, info, normalize=False)

