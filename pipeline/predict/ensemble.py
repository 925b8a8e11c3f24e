"""Ensembling: members grouped into models, model-level OOF and test files, and the weights that merge them.

K-fold members of one config form one *model*: its OOF predictions are the folds' concatenated
validation rows, its test prediction the mean of its folds. Models are merged with equal, given or
Caruana-fitted weights; weights are fitted on OOF rows only, never on the test rows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import get_metric, log_loss
from pipeline.core.reduce import REDUCTIONS, check_weights, merge_members, reduce_probs, stack_members
from pipeline.member.folder import Member
from pipeline.member.predictions import PROB_PREFIX, PredictionWriter, read_predictions
from pipeline.predict.spec import EnsembleSpec

__all__ = [
    "WEIGHT_KINDS",
    "caruana_select",
    "resolve_weights",
    "group_models",
    "merge_files",
    "model_oof",
    "fit_weights",
    "check_ensemble",
]

WEIGHT_KINDS = ("equal", "given", "caruana")
"""Accepted ``ensemble.weights`` values; ``fitted`` is accepted as another name for ``caruana``."""

MetricFn = Callable[[np.ndarray, np.ndarray], float]


def _score(stack: Tensor, counts: np.ndarray, labels: np.ndarray, method: str, metric: MetricFn) -> float:
    # Only selected members enter the reduction: cost grows with the selection, not the library.
    idx = np.flatnonzero(counts)
    merged = reduce_probs(stack[torch.as_tensor(idx)], dim=0, method=method, weights=counts[idx])
    return float(metric(labels, merged.cpu().numpy()))


def caruana_select(
    member_probs: Sequence[np.ndarray],
    labels: np.ndarray,
    n_rounds: int = 50,
    metric: MetricFn | None = None,
    method: str = "prob_mean",
    init_best: int = 1,
    greater_is_better: bool | None = None,
) -> np.ndarray:
    """Caruana et al. (2004) greedy forward ensemble selection with replacement.

    Starts from the ``init_best`` best single members, then each round adds the member (repeats
    allowed) whose addition gives the best score of the merged prediction; ties go to the lowest
    index. As in AutoGluon, the selection is cut back to the earliest round with the best score,
    so a round that only made things worse leaves no trace. Fit on OOF/holdout predictions only.

    Args:
        member_probs: One ``[N, K]`` probability array per member.
        labels: ``[N]`` integer labels.
        n_rounds: Greedy additions after the ``init_best`` starting members.
        metric: ``metric(labels, probs) -> float``; default Kaggle multiclass log loss.
        method: Reduction used to merge the selection, one of :data:`REDUCTIONS`.
        init_best: Number of best single members to start from (0 to ``len(member_probs)``).
        greater_is_better: Direction of ``metric``; None reads ``metric.greater_is_better``
            (as on :class:`pipeline.core.metrics.Metric`) and otherwise assumes lower is better.

    Returns:
        ``[M]`` float64 weights: selection counts over total selections (zero for unused members).

    >>> good, bad = np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])
    >>> caruana_select([bad, good], np.array([0, 1]), n_rounds=5).tolist()
    [0.0, 1.0]
    """
    stack = stack_members(member_probs).to(torch.float64)
    n_members = len(stack)
    if not 0 <= init_best <= n_members or n_rounds < 0 or init_best + n_rounds == 0:
        raise ValueError(
            f"caruana_select needs 0 <= init_best <= {n_members} members and at least one selection; "
            f"got init_best={init_best}, n_rounds={n_rounds}"
        )
    metric = metric or log_loss
    if greater_is_better is None:
        greater_is_better = bool(getattr(metric, "greater_is_better", False))
    sign = -1.0 if greater_is_better else 1.0

    def loss(counts: np.ndarray) -> float:
        return sign * _score(stack, counts, labels, method, metric)

    eye = np.eye(n_members)
    singles = [loss(eye[m]) for m in range(n_members)]
    counts = eye[np.argsort(singles, kind="stable")[:init_best]].sum(axis=0)
    best_counts = counts.copy()
    best_loss = loss(counts) if init_best else np.inf
    for _ in range(n_rounds):
        trials = [loss(counts + eye[m]) for m in range(n_members)]
        counts = counts + eye[int(np.argmin(trials))]  # argmin returns the first, lowest index, minimum
        if min(trials) < best_loss:
            best_counts, best_loss = counts.copy(), min(trials)
    return best_counts / best_counts.sum()


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
    if kind in ("caruana", "fitted"):
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


def _iter_chunks(paths: Sequence[Path], classes: Sequence[str], chunk_rows: int) -> Iterator[tuple[list[str], list[np.ndarray]]]:
    """Walk several same-order prediction files side by side, ``chunk_rows`` at a time."""
    readers = [pd.read_csv(p, dtype={"id": str}, chunksize=chunk_rows) for p in paths]
    cols = [PROB_PREFIX + c for c in classes]
    for frames in zip(*readers):
        ids = frames[0]["id"].tolist()
        for p, f in zip(paths, frames):
            if f["id"].tolist() != ids:
                raise ValueError(f"{p}: rows are not in the same order as {paths[0]}")
        yield ids, [f[cols].to_numpy(np.float64) for f in frames]


def merge_files(paths: Sequence[Path], out: Path, classes: Sequence[str], weights: Sequence[float] | None,
                method: str, chunk_rows: int = 50_000) -> Path:
    """Merge same-order prediction files chunk by chunk (memory bounded by the chunk)."""
    with PredictionWriter(out, classes) as writer:
        for ids, probs in _iter_chunks(paths, classes, chunk_rows):
            writer.write(ids, merge_members(probs, weights=weights, method=method).numpy())
    return out


def model_oof(member_files: dict[str, Path], classes: Sequence[str], order: Sequence[str] | None) -> pd.DataFrame:
    """A model's out-of-fold predictions: its members' validation rows, concatenated, in ``order`` (None: by id)."""
    frames = []
    for path in member_files.values():
        ids, probs, labels = read_predictions(path, classes)
        if labels is None:
            raise ValueError(f"{path} has no 'label' column; out-of-fold predictions need labels.")
        frame = pd.DataFrame(probs, columns=[PROB_PREFIX + c for c in classes])
        frame.insert(0, "id", ids)
        frame.insert(1, "label", labels)
        frames.append(frame)
    oof = pd.concat(frames)
    if oof["id"].duplicated().any():
        raise ValueError(f"Members {list(member_files)} overlap in their validation rows; they are not folds of one model.")
    if order is None:
        return oof.sort_values("id", kind="stable").reset_index(drop=True)
    rank = {i: r for r, i in enumerate(order)}
    return oof.assign(_r=oof["id"].map(rank)).sort_values("_r").drop(columns="_r").reset_index(drop=True)


def fit_weights(oofs: dict[str, pd.DataFrame], opts: EnsembleSpec, metric: str) -> np.ndarray:
    """Ensemble weights over models from their OOF predictions (equal, given, or Caruana)."""
    names = list(oofs)
    fitted = None
    if opts.weights in ("caruana", "fitted"):
        ids = [set(f["id"]) for f in oofs.values()]
        if any(s != ids[0] for s in ids):
            raise ValueError(f"Models {names} have OOF predictions on different rows; Caruana weights need the same rows.")
        probs = [f.filter(like=PROB_PREFIX).to_numpy() for f in oofs.values()]
        fitted = caruana_select(probs, oofs[names[0]]["label"].to_numpy(), n_rounds=opts.caruana_rounds,
                                metric=get_metric(opts.fit_metric or metric), method=opts.method)
    return resolve_weights(opts.weights, len(names), opts.given_weights, fitted)


def check_ensemble(opts: EnsembleSpec, models: Sequence[str], metric: str) -> None:
    """Validate the ``ensemble`` settings and the metric against the models, before any prediction is made.

    Raises:
        ConfigError: Unknown method, weights kind or metric; given weights of the wrong number or sign;
            Caruana rounds below one. The message names the key and the accepted values.
    """
    for key, name in (("metric", metric), ("ensemble.fit_metric", opts.fit_metric or metric)):
        try:
            get_metric(name)
        except KeyError as err:
            raise ConfigError(f"{key}: {err.args[0]}") from err
    if opts.method not in REDUCTIONS:
        raise ConfigError(f"ensemble.method={opts.method!r} is not one of {list(REDUCTIONS)}")
    if opts.weights not in (*WEIGHT_KINDS, "fitted"):
        raise ConfigError(f"ensemble.weights={opts.weights!r} is not one of {list(WEIGHT_KINDS)} (or 'fitted')")
    if opts.weights in ("caruana", "fitted") and (not isinstance(opts.caruana_rounds, int) or opts.caruana_rounds < 1):
        raise ConfigError(f"ensemble.caruana_rounds must be a positive integer; got {opts.caruana_rounds!r}")
    if opts.weights == "given":
        try:
            resolve_weights("given", len(models), opts.given_weights)
        except ValueError as err:
            raise ConfigError(f"{err} (the models, in order: {list(models)})") from err
