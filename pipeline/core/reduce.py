"""Reductions over probabilities: the one home of mean, geometric mean, logit mean and max (and of the temperature
that softens or sharpens them).

:func:`reduce_probs` is the one function that owns every reduction (TTA views and ensemble
members alike). It works on probabilities, not logits, so it serves fresh softmax outputs and
prediction files saved to disk in the same way.

Weights, wherever they appear, are validated by one helper: they must be finite, non-negative,
not all zero, one per member, and are normalised to sum to one.

>>> p = torch.tensor([[[0.8, 0.2]], [[0.4, 0.6]]])  # [members=2, N=1, K=2]
>>> reduce_probs(p, dim=0)
tensor([[0.6000, 0.4000]])
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["REDUCTIONS", "apply_temperature", "check_weights", "from_space", "merge_members", "reduce_probs",
           "stack_members", "to_space"]

REDUCTIONS = ("prob_mean", "logit_mean", "geo_mean", "max", "median")
"""Accepted ``method`` values (``tta.reduce``, ``ensemble.method``)."""

WeightsLike = Tensor | np.ndarray | Sequence[float]


def _to_space(method: str, probs: Tensor, eps: float) -> Tensor:
    """Map probabilities into the space where ``method`` takes its weighted arithmetic mean."""
    if method == "geo_mean":
        return probs.clamp_min(eps).log()
    if method == "logit_mean":
        clamped = probs.clamp(eps, 1.0 - eps)
        return clamped.log() - (-clamped).log1p()
    return probs


def _from_space(method: str, values: Tensor) -> Tensor:
    if method == "geo_mean":
        return values.exp()
    if method == "logit_mean":
        return values.sigmoid()
    return values


def to_space(method: str, probs: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    """NumPy twin of the reduction spaces: where ``method`` takes its weighted mean (``max``: as is).

    Keeps ``probs``' dtype, so float32 fitting code (Caruana selection, weight optimisation) stays float32.
    """
    if method == "geo_mean":
        return np.log(np.maximum(probs, eps))
    if method == "logit_mean":
        clamped = np.clip(probs, eps, 1.0 - eps)
        return np.log(clamped) - np.log1p(-clamped)
    return probs


def from_space(method: str, values: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_space` (rows not yet renormalised)."""
    if method == "geo_mean":
        return np.exp(values)
    if method == "logit_mean":
        return 1.0 / (1.0 + np.exp(-values))
    return values


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log(p) / T)`` row by row, in float32: T > 1 softens, T < 1 sharpens, T = 1 is the identity.

    The temperature merge calibrates models with it (:mod:`pipeline.predict.merge`); a distilled student's targets
    are its teacher's probabilities softened with it (:mod:`pipeline.train.teacher`).
    """
    logits = np.log(np.maximum(np.asarray(probs, dtype=np.float32), 1e-7)) / np.float32(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def check_weights(weights: WeightsLike, n: int, what: str) -> np.ndarray:
    """Validate ``weights`` (one per member) and return them as float64 summing to one."""
    values = np.asarray(
        weights.detach().cpu().numpy() if isinstance(weights, Tensor) else weights, dtype=np.float64
    ).reshape(-1)
    if len(values) != n:
        raise ValueError(f"{what}: expected {n} weights (one per member), got {len(values)}")
    if not np.isfinite(values).all() or (values < 0).any():
        raise ValueError(f"{what}: weights must be finite and non-negative; got {values.tolist()}")
    if values.sum() == 0:
        raise ValueError(f"{what}: weights are all zero; at least one member needs a positive weight")
    return values / values.sum()


def reduce_probs(
    probs: Tensor,
    dim: int,
    method: str = "prob_mean",
    weights: WeightsLike | None = None,
    eps: float = 1e-7,
    normalize: bool = True,
) -> Tensor:
    """Reduce class probabilities over ``dim`` (views or members); the class axis is the last one.

    * ``prob_mean``: weighted arithmetic mean.
    * ``geo_mean``: ``exp`` of the weighted mean of ``log(max(p, eps))``.
    * ``logit_mean``: ``sigmoid`` of the weighted mean of ``log(p / (1 - p))``, p clamped to
      ``[eps, 1 - eps]``.
    * ``max``: elementwise maximum. The size of a weight cannot mean anything for a maximum, so
      weights only select: members with weight zero are left out, all others count the same.
    * ``median``: elementwise median (an even count: the mean of the middle two), robust to one odd view;
      weights only select, as for ``max``.

    Every result is renormalised so each row sums to one, unless ``normalize`` is off: the outputs are then
    independent probabilities (multi-label) or values (regression), averaged as they are.

    Args:
        probs: Probabilities ``[..., K]``; each slice along ``dim`` is one view or member.
        dim: Axis to reduce; must not be the class axis.
        method: One of :data:`REDUCTIONS`.
        weights: One non-negative weight per entry along ``dim``; normalised to sum to one.
        eps: Floor for the logs; 1e-7 keeps ``1 - eps`` below one even in float32.

    Returns:
        ``probs`` without ``dim``, in ``probs``' float dtype (at least float32).

    Raises:
        ValueError: Unknown method, ``dim`` is the class axis, or bad weights.
    """
    if method not in REDUCTIONS:
        raise ValueError(f"Unknown reduction {method!r}; accepted: {list(REDUCTIONS)}")
    if not -probs.ndim <= dim < probs.ndim - 1 or dim == -1:
        raise ValueError(
            f"reduce_probs: dim {dim} must be a non-class axis of shape {tuple(probs.shape)} "
            "(the last axis holds the classes)"
        )
    dim %= probs.ndim
    n = probs.shape[dim]
    w_np = np.full(n, 1.0 / n) if weights is None else check_weights(weights, n, f"weights for dim {dim}")
    # float64 so that summing many logs or logits near the eps floor loses nothing.
    work = probs.to(torch.float64)
    shape = [1] * probs.ndim
    shape[dim] = n
    w = torch.as_tensor(w_np, dtype=torch.float64, device=probs.device).view(shape)
    if method == "max":
        out = work.masked_fill(w == 0, -torch.inf).amax(dim)
    elif method == "median":
        out = work.index_select(dim, torch.as_tensor(np.flatnonzero(w_np > 0), device=probs.device)).quantile(0.5, dim=dim)
    else:
        out = _from_space(method, (_to_space(method, work, eps) * w).sum(dim))
    if normalize:
        out = out / out.sum(-1, keepdim=True)
    return out.to(torch.promote_types(probs.dtype, torch.float32))


def stack_members(member_probs: Sequence[Tensor | np.ndarray]) -> Tensor:
    if len(member_probs) == 0:
        raise ValueError("No ensemble members given")
    # Copy numpy input: arrays read from files can be read-only, which torch does not support.
    tensors = [p if isinstance(p, Tensor) else torch.tensor(np.asarray(p)) for p in member_probs]
    for i, t in enumerate(tensors):
        if t.shape != tensors[0].shape:
            raise ValueError(
                f"Member {i} has predictions of shape {tuple(t.shape)}, member 0 {tuple(tensors[0].shape)}; "
                "all members must predict the same rows and classes"
            )
    return torch.stack(tensors)


def merge_members(
    member_probs: Sequence[Tensor | np.ndarray],
    weights: WeightsLike | None = None,
    method: str = "prob_mean",
    normalize: bool = True,
) -> Tensor:
    """Merge the ``[N, K]`` probabilities of several members into one ``[N, K]``.

    Args:
        member_probs: One array or tensor per member, all the same shape.
        weights: One weight per member (see :func:`reduce_probs`); None means equal.
        method: One of :data:`REDUCTIONS`.

    Returns:
        Merged probabilities ``[N, K]``.
    """
    return reduce_probs(stack_members(member_probs), dim=0, method=method, weights=weights, normalize=normalize)
