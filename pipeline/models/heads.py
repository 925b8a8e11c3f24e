"""How a network's raw outputs become a task's outputs, and which losses train them.

A member records its :class:`OutputHead` in ``member.json`` (``output``), so inference turns logits into
exactly what training scored, with no Hydra or training code:

- ``softmax``: class probabilities (multiclass, binary): today's members, recorded as None;
- ``sigmoid``: one independent probability per label (multi-label);
- ``linear``: a value in target units, ``center + scale * z`` (regression, ordinal; the member's training
  targets are standardised with ``center`` and ``scale``, so every backbone starts at a sensible scale);
- ``bounded``: ``low + (high - low) * sigmoid(z)`` (regression with a declared range trained with BCE on the
  target scaled to [0, 1], the PetFinder Pawpularity recipe).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.core.task import Task

__all__ = ["ACTIVATIONS", "TASK_LOSSES", "OutputHead", "head_for", "resolve_loss", "task_loss"]

ACTIVATIONS = ("softmax", "sigmoid", "linear", "bounded")

TASK_LOSSES: dict[str, tuple[str, ...]] = {
    "multiclass": ("cross_entropy", "soft_target_cross_entropy"),
    "binary": ("cross_entropy", "soft_target_cross_entropy"),
    "multilabel": ("bce",),
    "regression": ("mse", "huber", "bce_bounded"),
    "ordinal": ("mse", "huber"),
}
"""The losses each task accepts; the first is what ``loss: auto`` picks."""


@dataclass(frozen=True)
class OutputHead:
    """Logits → outputs. See the module docstring for each activation."""

    activation: str = "softmax"
    center: float = 0.0
    scale: float = 1.0
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Unknown output activation {self.activation!r}; accepted: {list(ACTIVATIONS)}")
        if self.activation == "bounded" and (self.low is None or self.high is None or not self.low < self.high):
            raise ValueError(f"A bounded output needs low < high; got [{self.low}, {self.high}]")
        if not (np.isfinite(self.center) and np.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"A linear output needs a finite center and a positive scale; got {self.center}, {self.scale}")

    @property
    def rows_sum_to_one(self) -> bool:
        """Whether merged outputs are renormalised (softmax probabilities) or averaged as they are."""
        return self.activation == "softmax"

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs of ``logits`` (at least float32: half-precision logits lose small probabilities)."""
        z = logits.to(torch.promote_types(logits.dtype, torch.float32))
        if self.activation == "softmax":
            return z.softmax(-1)
        if self.activation == "sigmoid":
            return z.sigmoid()
        if self.activation == "linear":
            return self.center + self.scale * z
        assert self.low is not None and self.high is not None
        return self.low + (self.high - self.low) * z.sigmoid()

    def to_dict(self) -> dict[str, Any] | None:
        """The ``member.json`` record; None for softmax, as members before tasks existed."""
        return None if self.activation == "softmax" else asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> OutputHead:
        return cls() if data is None else cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def resolve_loss(loss: str, task: Task, mixing: bool = False) -> str:
    """The concrete loss for ``task``: ``auto`` picks the task's usual one (a soft-target loss for classes mixed by
    Mixup/CutMix); a loss the task can't take is refused.

    Raises:
        ConfigError: naming ``loss``, the task and the accepted losses.
    """
    accepted = TASK_LOSSES[task.kind]
    if loss == "auto":
        return accepted[1] if mixing and task.softmax else accepted[0]
    if loss not in accepted:
        raise ConfigError(f"loss={loss} cannot train a {task.kind} task ({task.reason or 'data.task'}); accepted for "
                          f"{task.kind}: auto, {', '.join(accepted)}.")
    if loss == "bce_bounded" and (task.low is None or task.high is None):
        raise ConfigError("loss=bce_bounded scales the target to [0, 1] and needs its range: set "
                          "data.target_range=[low,high].")
    return loss


def head_for(task: Task, loss: str, targets: np.ndarray | None) -> OutputHead:
    """The output head a member of ``task`` trained with ``loss`` gets; ``targets`` (its training rows' values)
    set a linear head's standardisation."""
    if task.softmax:
        return OutputHead("softmax")
    if task.kind == "multilabel":
        return OutputHead("sigmoid")
    if loss == "bce_bounded":
        return OutputHead("bounded", low=task.low, high=task.high)
    values = np.asarray(targets, dtype=np.float64) if targets is not None else np.zeros(1)
    scale = float(values.std()) if len(values) > 1 and values.std() > 0 else 1.0
    return OutputHead("linear", center=float(values.mean()), scale=scale)


def task_loss(loss: str, head: OutputHead) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """``fn(logits, targets)`` for the non-softmax losses; targets in target units (values, or 0/1 per label)."""
    if loss == "bce":
        return lambda logits, y: F.binary_cross_entropy_with_logits(logits.float(), y.float())
    if loss == "bce_bounded":
        assert head.low is not None and head.high is not None
        low, span = float(head.low), float(head.high - head.low)
        return lambda logits, y: F.binary_cross_entropy_with_logits(
            logits.float().squeeze(-1), ((y.float() - low) / span).clamp(0, 1))
    fn = F.mse_loss if loss == "mse" else F.smooth_l1_loss

    def standardised(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return fn(logits.float().squeeze(-1), (y.float() - head.center) / head.scale)

    return standardised
