"""The one owner of fitting merges on out-of-fold rows: rules, the seeded split, cross-fitting, honest margins.

Everything that fits something on OOF rows, or scores such a fit, goes through here: the predict stage
(the submission's merge and its recorded cross-fitted score), the automatic choices
(:mod:`pipeline.predict.choose`) and the report (:mod:`pipeline.report.score`), so a "cross-fitted"
score means one thing everywhere:

- a :class:`Rule` is a merge method with the ensemble settings it is fitted with (:data:`RULES` names
  them: ``mean``, ``caruana``, ``bagged``, ``optimize``, ``rank``, ``stack``, ``temperature``, ``given``,
  ``single``); :func:`submitted_rule` rebuilds the configured one from the ``ensemble`` settings that
  ``predict.json`` records;
- :func:`split` is the one stratified, seeded split of the OOF rows into parts;
- :func:`cross_fit` predicts each part with the rule fitted on the other parts: scoring the concatenation
  is honest, scoring a fit on its own rows flatters it;
- :func:`beats` says whether a candidate wins over a baseline by more than selection noise: the lower
  end of a one-sided paired-bootstrap interval of the gain must be above zero.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from pipeline.core.metrics import BootstrapResult, Metric, get_metric, paired_bootstrap
from pipeline.core.task import Task, strata
from pipeline.predict.merge import Combiner, fit_combiner
from pipeline.predict.spec import EnsembleSpec

__all__ = ["RULES", "Margin", "Rule", "beats", "cross_fit", "rule", "rule_name", "split", "split_strata",
           "submitted_rule"]

RULES: dict[str, dict[str, Any]] = {
    "mean": {"combine": "weighted", "weights": "equal", "temperature": False},
    "given": {"combine": "weighted", "weights": "given", "temperature": False},
    "caruana": {"combine": "weighted", "weights": "caruana", "bags": 1, "temperature": False},
    "bagged": {"combine": "weighted", "weights": "caruana", "temperature": False},
    "optimize": {"combine": "weighted", "weights": "optimize", "temperature": False},
    "rank": {"combine": "rank", "weights": "equal", "temperature": False},
    "stack": {"combine": "stack", "weights": "equal", "temperature": False},
    "temperature": {"combine": "weighted", "weights": "equal", "temperature": True},
    "single": {"combine": "single", "temperature": False},
}
"""Merge method → the ensemble settings that make it (the other settings come from the ``ensemble`` group)."""

BAGS = 20
"""Bags of the ``bagged`` rule when the ensemble settings ask for one bag (Caruana et al. 2004 use about 20)."""


@dataclass(frozen=True)
class Rule:
    """A merge method and everything it is fitted with.

    Attributes:
        name: A key of :data:`RULES` (``temperature`` may also be a suffix: ``caruana+temperature``).
        spec: The ensemble settings the method is fitted with.
        metric: The competition metric (``single`` picks by it; ``fit_metric`` None fits for it).
        task: What the outputs are (:class:`pipeline.core.task.Task`); None: class probabilities.
    """

    name: str
    spec: EnsembleSpec
    metric: str
    task: Task | None = None  # None: one class per image

    @property
    def fitted(self) -> bool:
        """Whether anything is fitted on OOF rows (equal or given weights without temperatures: nothing)."""
        s = self.spec
        return s.combine in ("stack", "single") or s.weights in ("caruana", "fitted", "optimize") or s.temperature

    @property
    def scored_cross_fitted(self) -> bool:
        """Whether its honest OOF score is cross-fitted: it fits something, or it ranks rows among a part (as
        the test rows are ranked among themselves)."""
        return self.fitted or self.spec.combine == "rank"

    def fit(self, probs: Sequence[np.ndarray], labels: np.ndarray) -> Combiner:
        """The merge fitted on these rows (``kind`` ``single`` for the best single model)."""
        kind = "single" if self.spec.combine == "single" else None
        return fit_combiner(probs, labels, self.spec, self.metric, kind, task=self.task)


def rule(name: str, spec: EnsembleSpec, metric: str, task: Task | None = None) -> Rule:
    """The rule ``name`` (a key of :data:`RULES`, optionally ``+temperature``) with the other settings of ``spec``."""
    base, _, suffix = name.partition("+")
    if base not in RULES or suffix not in ("", "temperature"):
        raise ValueError(f"Unknown merge method {name!r}; accepted: {list(RULES)} (optionally '+temperature')")
    settings = dict(RULES[base])
    if base == "bagged":
        settings["bags"] = spec.bags if spec.bags > 1 else BAGS
    if suffix:
        settings["temperature"] = True
    return Rule(name, replace(spec, **settings), metric, task)


def rule_name(spec: EnsembleSpec) -> str:
    """The :data:`RULES` name of the merge the ensemble settings configure (``+temperature`` when set)."""
    if spec.combine in ("rank", "stack", "single"):
        base = spec.combine
    elif spec.weights in ("caruana", "fitted"):
        base = "bagged" if spec.bags > 1 else "caruana"
    elif spec.weights in ("optimize", "given"):
        base = spec.weights
    else:
        base = "temperature" if spec.temperature else "mean"
    return base + ("+temperature" if spec.temperature and base != "temperature" else "")


def submitted_rule(spec: EnsembleSpec, metric: str, task: Task | None = None) -> Rule:
    """The configured merge as a :class:`Rule`, with exactly the settings it was fitted with."""
    return Rule(rule_name(spec), spec, metric, task)


def split_strata(labels: np.ndarray) -> np.ndarray:
    """The strata :func:`split` deals out, one per row: classes, or :func:`pipeline.core.task.strata` of
    multi-label rows (``[N, L]``) and of values that are not whole numbers (regression bins).

    >>> split_strata(np.array([[1, 0], [0, 1], [1, 1]])).tolist()
    [0, 1, 0]
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return strata("multilabel", labels)
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
        return strata("regression", labels)
    return labels


def split(labels: np.ndarray, parts: int, seed: int) -> np.ndarray:
    """A part index in ``[0, parts)`` per row: each stratum's rows shuffled (seeded) and dealt out in turn.

    Strata are the classes; for other targets those of :func:`pipeline.core.task.strata`, read off the
    labels: ``[N, L]`` rows are multi-label, values that are not whole numbers are binned (regression), and
    whole-number values (ordinal grades) are their own strata.

    The one split of OOF rows: the predict stage, the automatic choices, the report and its nested pick
    all cross-fit on it, so the same rule, parts and seed give the same score everywhere.

    >>> split(np.array([0, 0, 1, 1]), 2, seed=0).tolist().count(0)
    2
    """
    if not isinstance(parts, int) or not 2 <= parts:
        raise ValueError(f"cross-fitting needs an integer of at least 2 parts; got {parts!r}")
    labels = split_strata(labels)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), np.int64)
    offset = 0
    for c in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == c))
        out[rows] = (np.arange(len(rows)) + offset) % parts
        offset += len(rows)  # so small classes do not all start in part 0
    return out


def cross_fit(fit: Rule | Any, probs: Sequence[np.ndarray], labels: np.ndarray, parts: int, seed: int) -> np.ndarray:
    """Out-of-sample predictions of a fitting rule: each part merged by the rule fitted on the other parts.

    Args:
        fit: A :class:`Rule`, or any ``fit(probs, labels) -> Combiner`` callable.
        probs: One ``[N, K]`` array per model, rows aligned with ``labels``.
        labels: ``[N]`` integer labels.
        parts: Number of parts of :func:`split`.
        seed: Seed of :func:`split`.

    Returns:
        ``[N, K]`` float32 merged probabilities, rows in input order.
    """
    fitter = fit.fit if isinstance(fit, Rule) else fit
    labels = np.asarray(labels)
    arrays = [np.asarray(p, dtype=np.float32) for p in probs]
    part = split(labels, parts, seed)
    out = np.zeros(arrays[0].shape, np.float32)
    for k in range(parts):
        test, train = part == k, part != k
        if not test.any():
            continue
        # Rank averaging ranks the held-out part among itself, as it ranks the test rows among themselves.
        out[test] = fitter([p[train] for p in arrays], labels[train]).apply([p[test] for p in arrays])
    return out


@dataclass(frozen=True)
class Margin:
    """How much a costlier or more complex candidate must win by before an automatic choice takes it.

    Attributes:
        level: One-sided miss rate of the paired bootstrap: the candidate must beat the baseline with the
            lower ``level`` quantile of the gain above zero. None: the best score wins (no margin).
        score: What the bootstrap tests: ``log_loss`` (smooth; the candidate must also not be worse on the
            metric) or ``metric`` (the competition metric itself).
        n_boot: Bootstrap resamples.
        seed: Seed of the resampling.
    """

    level: float | None = 0.05
    score: str = "log_loss"
    n_boot: int = 1000
    seed: int = 0


def beats(labels: np.ndarray, candidate: np.ndarray, baseline: np.ndarray, metric: str | Metric,
          margin: Margin) -> tuple[bool, BootstrapResult | None]:
    """Whether ``candidate`` beats ``baseline`` on these rows by more than selection noise.

    With ``margin.level`` None: whether its score is strictly better. Otherwise the paired bootstrap's
    one-sided lower bound of the gain (in the metric's direction) must be above zero.

    >>> y = np.array([0, 1] * 50)
    >>> good, coin = np.eye(2)[y] * 0.8 + 0.1, np.full((100, 2), 0.5)
    >>> beats(y, good, coin, "log_loss", Margin())[0], beats(y, coin, good, "log_loss", Margin())[0]
    (True, False)
    """
    m = get_metric(metric) if isinstance(metric, str) else metric
    sign = 1.0 if m.greater_is_better else -1.0
    if margin.level is None:
        return bool(sign * (m(labels, candidate) - m(labels, baseline)) > 0), None
    boot = paired_bootstrap(labels, candidate, baseline, m, n_boot=margin.n_boot, seed=margin.seed,
                            alpha=2 * margin.level)
    low = boot.low if m.greater_is_better else -boot.high
    return bool(low > 0), boot
