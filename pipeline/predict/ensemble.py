"""Ensembling: members grouped into models, model-level OOF and test files, and the weights that merge them.

K-fold members of one config form one *model*: its OOF predictions are the folds' concatenated
validation rows, its test prediction the mean of its folds. Models are merged with equal, given or
Caruana-fitted weights; every fit on OOF rows goes through :mod:`pipeline.predict.fitting`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.io import read_csv_as_text
from pipeline.core.metrics import get_metric
from pipeline.core.reduce import REDUCTIONS, check_weights, from_space, merge_members, to_space
from pipeline.core.task import Task
from pipeline.member.folder import Member
from pipeline.member.predictions import PROB_PREFIX, TARGET_PREFIX, VALUE_PREFIX, PredictionWriter, read_predictions
from pipeline.predict.spec import COMBINES, ENSEMBLE_CANDIDATES, EnsembleSpec, check_margin

__all__ = [
    "WEIGHT_KINDS",
    "caruana_bagged",
    "caruana_select",
    "resolve_weights",
    "group_models",
    "merge_files",
    "model_oof",
    "check_ensemble",
]

WEIGHT_KINDS = ("equal", "given", "caruana", "optimize")

SOFTMAX_ONLY = ("rank", "temperature")
"""Merges (``ensemble.combine`` values and ``ensemble=auto`` candidates) made for class probabilities only: not yet
for multi-label, regression or ordinal outputs."""
"""Accepted ``ensemble.weights`` values; ``fitted`` is accepted as another name for ``caruana``."""

MetricFn = Callable[[np.ndarray, np.ndarray], float]


_CHUNK_ELEMS = 4_000_000
"""Most probabilities scored at once (16 MB of float32): selection memory does not grow with N × K beyond it."""


class _Selection:
    """The running merge of a selection, in the space where ``method`` averages, in float32.

    Adding a member to the selection and scoring it costs one pass over ``[N, K]``; nothing holds a
    float64 (or a members × rows × classes) copy. Scoring walks the rows in chunks when the metric is a
    mean over rows (``per_row``), so the only full-size buffers are the members' own arrays and the sum.
    """

    def __init__(self, member_probs: Sequence[np.ndarray], labels: np.ndarray, method: str, metric: MetricFn,
                 sign: float, normalize: bool = True) -> None:
        if method not in REDUCTIONS:
            raise ValueError(f"Unknown reduction {method!r}; accepted: {list(REDUCTIONS)}")
        shape = np.shape(member_probs[0])
        for i, p in enumerate(member_probs):
            if np.shape(p) != shape:
                raise ValueError(f"Member {i} has predictions of shape {np.shape(p)}, member 0 {shape}; "
                                 "all members must predict the same rows and classes")
        self.method, self.metric, self.sign, self.labels = method, metric, sign, np.asarray(labels)
        self.normalize = normalize
        self.space = [to_space(method, np.asarray(p, dtype=np.float32)) for p in member_probs]
        self.total = np.zeros(shape, np.float32) if method != "max" else np.full(shape, -np.inf, np.float32)
        self.count = 0
        self.per_row = getattr(metric, "per_row", None)
        self.step = max(1, _CHUNK_ELEMS // max(1, shape[1]))

    def _merged(self, rows: slice, extra: int | None) -> np.ndarray:
        total, count = self.total[rows], self.count
        if extra is not None:
            add = self.space[extra][rows]
            total = np.maximum(total, add) if self.method == "max" else total + add
            count += 1
        merged = from_space(self.method, total if self.method == "max" else total / max(count, 1))
        return merged / merged.sum(axis=1, keepdims=True) if self.normalize else merged

    def loss(self, extra: int | None = None) -> float:
        """Signed score (lower is better) of the selection plus member ``extra``."""
        n = len(self.labels)
        if self.per_row is None:
            return self.sign * float(self.metric(self.labels, self._merged(slice(0, n), extra)))
        total = 0.0
        for start in range(0, n, self.step):
            rows = slice(start, start + self.step)
            total += float(self.per_row(self.labels[rows], self._merged(rows, extra).astype(np.float64)).sum())
        return self.sign * total / n

    def add(self, member: int) -> None:
        """Put member ``member`` into the selection (once more)."""
        if self.method == "max":
            np.maximum(self.total, self.space[member], out=self.total)
        else:
            self.total += self.space[member]
        self.count += 1


def caruana_select(
    member_probs: Sequence[np.ndarray],
    labels: np.ndarray,
    n_rounds: int = 50,
    metric: MetricFn | None = None,
    method: str = "prob_mean",
    init_best: int = 1,
    greater_is_better: bool | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """Caruana et al. (2004) greedy forward ensemble selection with replacement.

    Starts from the ``init_best`` best single members, then each round adds the member (repeats
    allowed) whose addition gives the best score of the merged prediction; ties go to the lowest
    index. As in AutoGluon, the selection is cut back to the earliest round with the best score,
    so a round that only made things worse leaves no trace. Fit on OOF/holdout predictions only.
    Works in float32 with a running sum and chunked scoring (memory flat in rows and classes).

    Args:
        member_probs: One ``[N, K]`` probability array per member.
        labels: ``[N]`` integer labels.
        n_rounds: Greedy additions after the ``init_best`` starting members.
        metric: ``metric(labels, probs) -> float``; default Kaggle multiclass log loss.
        method: Reduction used to merge the selection, one of :data:`REDUCTIONS`.
        init_best: Number of best single members to start from (0 to ``len(member_probs)``).
        greater_is_better: Direction of ``metric``; None reads ``metric.greater_is_better``
            (as on :class:`pipeline.core.metrics.Metric`) and otherwise assumes lower is better.
        normalize: Renormalise merged rows to sum to one (softmax outputs; off for multi-label and values).

    Returns:
        ``[M]`` float64 weights: selection counts over total selections (zero for unused members).

    >>> good, bad = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    >>> caruana_select([bad, good], np.array([0, 1]), n_rounds=5).tolist()
    [0.0, 1.0]
    """
    n_members = len(member_probs)
    if n_members == 0:
        raise ValueError("No ensemble members given")
    if not 0 <= init_best <= n_members or n_rounds < 0 or init_best + n_rounds == 0:
        raise ValueError(
            f"caruana_select needs 0 <= init_best <= {n_members} members and at least one selection; "
            f"got init_best={init_best}, n_rounds={n_rounds}"
        )
    metric = metric or get_metric("log_loss")  # the registered Metric: its per_row lets scoring go by chunks
    if greater_is_better is None:
        greater_is_better = bool(getattr(metric, "greater_is_better", False))
    sel = _Selection(member_probs, labels, method, metric, -1.0 if greater_is_better else 1.0, normalize)
    singles = [sel.loss(m) for m in range(n_members)]
    counts = np.zeros(n_members)
    for m in np.argsort(singles, kind="stable")[:init_best]:
        sel.add(int(m))
        counts[m] += 1
    best_counts, best_loss = counts.copy(), (sel.loss() if init_best else np.inf)
    for _ in range(n_rounds):
        trials = [sel.loss(m) for m in range(n_members)]
        pick = int(np.argmin(trials))  # argmin returns the first, lowest index, minimum
        sel.add(pick)
        counts[pick] += 1
        if trials[pick] < best_loss:
            best_counts, best_loss = counts.copy(), trials[pick]
    return best_counts / best_counts.sum()


def caruana_bagged(
    member_probs: Sequence[np.ndarray], labels: np.ndarray, bags: int, bag_fraction: float, seed: int,
    n_rounds: int = 50, metric: MetricFn | None = None, method: str = "prob_mean", normalize: bool = True,
) -> np.ndarray:
    """Bagged ensemble selection (Caruana et al. 2004): the mean of the weights of ``bags`` selections.

    Each bag runs :func:`caruana_select` on a random subset of ``bag_fraction`` of the members (at least
    one), drawn with ``numpy.random.default_rng(seed)``: the same seed gives the same weights. One bag is
    plain selection over every member.

    >>> good, bad = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    >>> caruana_bagged([bad, good], np.array([0, 1]), bags=4, bag_fraction=1.0, seed=0).tolist()
    [0.0, 1.0]
    """
    if not isinstance(bags, int) or bags < 1 or not 0 < bag_fraction <= 1:
        raise ValueError(f"ensemble.bags must be a positive integer and ensemble.bag_fraction in (0, 1]; "
                         f"got bags={bags!r}, bag_fraction={bag_fraction!r}")
    n_members = len(member_probs)
    if bags == 1:
        return caruana_select(member_probs, labels, n_rounds, metric=metric, method=method, normalize=normalize)
    rng = np.random.default_rng(seed)
    size = max(1, int(round(bag_fraction * n_members)))
    total = np.zeros(n_members)
    for _ in range(bags):
        subset = np.sort(rng.choice(n_members, size=size, replace=False))
        total[subset] += caruana_select([member_probs[i] for i in subset], labels, n_rounds, metric=metric,
                                        method=method, normalize=normalize)
    return total / total.sum()


def resolve_weights(
    kind: str,
    n_members: int,
    given: Sequence[float] | None = None,
    fitted: np.ndarray | None = None,
) -> np.ndarray:
    """Turn ``ensemble.weights`` into one normalised weight per member.

    Args:
        kind: ``equal``, ``given`` (``ensemble.given_weights``) or ``caruana``/``fitted`` (the
            output of :func:`caruana_select`).
        n_members: Number of members being merged.
        given: The configured weights, for ``given``.
        fitted: The fitted weights, for ``caruana``.

    Returns:
        ``[n_members]`` float64 weights summing to one.

    Raises:
        ValueError: Unknown kind, missing weights, or weights of the wrong length or sign.
    """
    if n_members < 1:
        raise ValueError(f"resolve_weights needs at least one member; got {n_members}")
    if kind == "equal":
        return np.full(n_members, 1.0 / n_members)
    if kind == "given":
        if given is None:
            raise ValueError("ensemble.weights=given needs ensemble.given_weights (one number per member)")
        return check_weights(given, n_members, f"ensemble.given_weights for {n_members} members")
    if kind in ("caruana", "fitted", "optimize"):
        if fitted is None:
            raise ValueError(
                "ensemble.weights=caruana needs fitted weights: run caruana_select on OOF/holdout predictions"
            )
        return check_weights(fitted, n_members, f"fitted ensemble weights for {n_members} members")
    raise ValueError(f"Unknown ensemble.weights {kind!r}; accepted: {list(WEIGHT_KINDS)} (or 'fitted')")


def group_models(members: Sequence[Member]) -> dict[str, list[Member]]:
    """Group members into models: the same config across its folds."""
    groups: dict[str, list[Member]] = {}
    for m in members:
        groups.setdefault(m.manifest.model_group or m.name, []).append(m)
    return groups


def _iter_chunks(paths: Sequence[Path], classes: Sequence[str], chunk_rows: int | None,
                 prefix: str = PROB_PREFIX) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Walk several same-order prediction files side by side, ``chunk_rows`` at a time (None: whole files)."""
    # Ids as text, as everywhere ("NA", "null" and "007" stay ids): the one CSV-reading rule of core/io.
    readers: list[Iterable[pd.DataFrame]] = [
        read_csv_as_text(p, what="Prediction file", numeric_prefix=prefix, chunk_rows=chunk_rows)
        if chunk_rows else [read_csv_as_text(p, what="Prediction file", numeric_prefix=prefix)]
        for p in paths]
    cols = [prefix + c for c in classes]
    for frames in zip(*readers):
        ids = frames[0]["id"].tolist()
        for p, f in zip(paths, frames):
            if f["id"].tolist() != ids:
                raise ValueError(f"{p}: rows are not in the same order as {paths[0]}")
        yield ids, [f[cols].to_numpy(np.float64) for f in frames]


def merge_files(paths: Sequence[Path], out: Path, classes: Sequence[str], weights: Sequence[float] | None,
                method: str, chunk_rows: int | None = 50_000,
                combine: Callable[[list[np.ndarray]], np.ndarray] | None = None, task: Task | None = None) -> Path:
    """Merge same-order prediction files chunk by chunk (memory bounded by the chunk).

    ``combine`` (a fitted :class:`pipeline.predict.merge.Combiner`'s ``apply``) replaces the weighted
    ``method`` reduction; ``chunk_rows=None`` reads whole files (rank averaging ranks over all rows). ``task``
    (None: class probabilities) says whether rows are renormalised and which columns the files hold.
    """
    softmax = task is None or task.softmax
    prefix = VALUE_PREFIX if task is not None and task.is_value else PROB_PREFIX
    with PredictionWriter(out, classes, values=prefix == VALUE_PREFIX) as writer:
        for ids, probs in _iter_chunks(paths, classes, chunk_rows, prefix):
            merged = combine(probs) if combine is not None else merge_members(
                probs, weights=weights, method=method, normalize=softmax).numpy()
            writer.write(ids, merged)
    return out


def model_oof(member_files: dict[str, Path], classes: Sequence[str], order: Sequence[str] | None,
              task: Task | None = None) -> pd.DataFrame:
    """A model's out-of-fold predictions: its members' validation rows, concatenated, in ``order`` (None: by id).

    Columns: ``id``, the targets (``label``; ``y:<column>`` for other tasks than one class per image), the outputs.
    """
    frames = []
    prefix = VALUE_PREFIX if task is not None and task.is_value else PROB_PREFIX
    for path in member_files.values():
        ids, probs, labels = read_predictions(path, classes)
        if labels is None:
            raise ValueError(f"{path} has no 'label' column; out-of-fold predictions need labels.")
        frame = pd.DataFrame(probs, columns=[prefix + c for c in classes])
        frame.insert(0, "id", ids)
        if task is None or task.softmax:
            frame.insert(1, "label", labels)
        else:
            y = np.asarray(labels, dtype=np.float64).reshape(len(ids), -1)
            for j, c in enumerate(task.columns):
                frame.insert(1 + j, TARGET_PREFIX + c, y[:, j])
        frames.append(frame)
    oof = pd.concat(frames)
    if oof["id"].duplicated().any():
        raise MemberError(f"Members {list(member_files)} overlap in their validation rows; they are not folds of one model.")
    if order is None:
        return oof.sort_values("id", kind="stable").reset_index(drop=True)
    rank = {i: r for r, i in enumerate(order)}
    return oof.assign(_r=oof["id"].map(rank)).sort_values("_r").drop(columns="_r").reset_index(drop=True)


def check_ensemble(opts: EnsembleSpec, models: Sequence[str], metric: str, task: Task | None = None) -> None:
    """Validate the ``ensemble`` settings and the metric against the models, before any prediction is made.

    Raises:
        ConfigError: Unknown method, weights kind or metric; given weights of the wrong number or sign;
            Caruana rounds below one; a merge made for class probabilities on another task's outputs
            (:data:`SOFTMAX_ONLY`, or ``ensemble.method`` other than ``prob_mean``). The message names the key
            and the accepted values.
    """
    if task is not None and not task.softmax:
        _check_task_merge(opts, task)
    for key, name in (("metric", metric), ("ensemble.fit_metric", opts.fit_metric or metric)):
        try:
            get_metric(name)
        except KeyError as err:
            raise ConfigError(f"{key}: {err.args[0]}") from err
    if opts.combine == "rank" and metric == "log_loss":
        raise ConfigError("ensemble.combine=rank cannot serve metric=log_loss: rank averaging orders rows, its output "
                          "is not a calibrated probability; use ensemble=caruana|optimize|stack|mean, or a rank metric "
                          "such as roc_auc")
    if opts.method not in REDUCTIONS or opts.method == "median":
        members_ok = [r for r in REDUCTIONS if r != "median"]
        raise ConfigError(f"ensemble.method={opts.method!r} is not one of {members_ok} (median merges TTA views only: "
                          "tta.reduce=median)")
    if opts.weights not in (*WEIGHT_KINDS, "fitted"):
        raise ConfigError(f"ensemble.weights={opts.weights!r} is not one of {list(WEIGHT_KINDS)} (or 'fitted')")
    if opts.weights in ("caruana", "fitted") and (not isinstance(opts.caruana_rounds, int) or opts.caruana_rounds < 1):
        raise ConfigError(f"ensemble.caruana_rounds must be a positive integer; got {opts.caruana_rounds!r}")
    _check_merge(opts, len(models))
    if opts.weights == "given":
        try:
            resolve_weights("given", len(models), opts.given_weights)
        except ValueError as err:
            raise ConfigError(f"{err} (the models, in order: {list(models)})") from err


def _check_merge(opts: EnsembleSpec, n_models: int) -> None:
    """The settings of :mod:`pipeline.predict.merge` and of ``combine: auto``."""
    if opts.combine not in COMBINES:
        raise ConfigError(f"ensemble.combine={opts.combine!r} is not one of {list(COMBINES)}")
    if not isinstance(opts.bags, int) or opts.bags < 1 or not 0 < float(opts.bag_fraction) <= 1:
        raise ConfigError(f"ensemble.bags must be a positive integer and ensemble.bag_fraction in (0, 1]; "
                          f"got bags={opts.bags!r}, bag_fraction={opts.bag_fraction!r}")
    if opts.weights == "optimize" and opts.method == "max":
        raise ConfigError("ensemble.weights=optimize cannot weight ensemble.method=max (its weights only select); "
                          "use prob_mean, logit_mean or geo_mean")
    if not isinstance(opts.cross_fit_parts, int) or opts.cross_fit_parts < 2:
        raise ConfigError(f"ensemble.cross_fit_parts must be an integer of at least 2; got {opts.cross_fit_parts!r}")
    if not float(opts.stack_c) > 0:
        raise ConfigError(f"ensemble.stack_c must be positive; got {opts.stack_c!r}")
    check_margin("ensemble.margin", opts.margin)
    unknown = [c for c in opts.candidates if c not in ENSEMBLE_CANDIDATES]
    if opts.combine == "auto" and unknown:
        raise ConfigError(f"ensemble.candidates {unknown} are unknown; accepted: {list(ENSEMBLE_CANDIDATES)}")


def _check_task_merge(opts: EnsembleSpec, task: Task) -> None:
    """Multi-label, regression and ordinal outputs merge as weighted means only (for now)."""
    what = f"this is a {task.kind} task ({task.reason or 'data.task'})"
    if opts.combine in SOFTMAX_ONLY:
        raise ConfigError(f"ensemble.combine={opts.combine} merges class probabilities; {what}. Accepted for "
                          f"{task.kind}: ensemble=mean|caruana|optimize|stack|weighted|auto.")
    if opts.temperature:
        raise ConfigError(f"ensemble.temperature=true rescales class probabilities; {what}. Set it to false.")
    if opts.method != "prob_mean":
        raise ConfigError(f"ensemble.method={opts.method} is a reduction of class probabilities; {what}. Accepted "
                          f"for {task.kind}: prob_mean (a weighted mean of the outputs).")
