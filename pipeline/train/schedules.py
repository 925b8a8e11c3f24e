"""Learning-rate schedules stepped after every optimiser step: linear warmup, then cosine (:class:`WarmupCosine`).

The per-epoch schedulers of ``conf/scheduler`` (cosine, step) are plain torch classes that the module steps
once per epoch. A per-step schedule needs the run's length in optimiser steps, which only the Trainer knows
(epochs × batches ÷ accumulation, devices): it says so with a class attribute ``interval = "step"``, and the
module builds it with ``total_steps`` and ``steps_per_epoch`` and hands it to Lightning with
``{"interval": "step"}``.

>>> from functools import partial
>>> factory = partial(WarmupCosine, warmup_steps=2)
>>> schedule_interval(factory)
'step'
>>> [round(warmup_cosine_factor(s, warmup=2, total=6), 3) for s in range(6)]
[0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
"""

from __future__ import annotations

import math
from functools import partial
from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from pipeline.core.errors import ConfigError

__all__ = ["WarmupCosine", "warmup_cosine_factor", "schedule_interval", "warmup_steps_of", "check_warmup"]


def schedule_interval(factory: Any) -> str:
    """``step`` for a scheduler factory whose class says ``interval = "step"``, else ``epoch``."""
    target = getattr(factory, "func", factory)
    return "step" if getattr(target, "interval", "epoch") == "step" else "epoch"


def warmup_cosine_factor(step: int, warmup: int, total: int, min_lr_ratio: float = 0.0) -> float:
    """The multiple of the base rate at optimiser step ``step`` (0-based).

    Warmup rises linearly, ``(step + 1) / warmup``, so the first update is not wasted at a rate of 0 and
    the ``warmup``-th reaches the base rate; the cosine then falls from the base rate to ``min_lr_ratio``
    over the remaining ``total - warmup`` steps.
    """
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_steps_of(warmup_epochs: float | None, warmup_steps: int | None, steps_per_epoch: int) -> int:
    """Warmup in optimiser steps: ``warmup_steps`` when set, else ``warmup_epochs`` × steps per epoch (rounded)."""
    if warmup_steps is not None:
        return int(warmup_steps)
    return int(round(float(warmup_epochs or 0) * steps_per_epoch))


def check_warmup(warmup_epochs: Any, warmup_steps: Any, max_epochs: Any = None, total_steps: int | None = None,
                 steps_per_epoch: int | None = None) -> None:
    """Refuse a warmup that is negative or not shorter than the run.

    Called with the settings alone before training (``max_epochs`` known), then with the run's optimiser
    steps once they are known (before training too, and again by the schedule itself).

    Raises:
        ConfigError: naming ``scheduler.warmup_epochs`` or ``scheduler.warmup_steps`` and what is accepted.
    """
    if warmup_steps is not None:
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"scheduler.warmup_steps={warmup_steps!r}: accepted: an integer ≥ 0 (optimiser steps), "
                              "or null to use scheduler.warmup_epochs.")
    elif warmup_epochs is not None:
        if isinstance(warmup_epochs, bool) or not isinstance(warmup_epochs, (int, float)) or not warmup_epochs >= 0:
            raise ConfigError(f"scheduler.warmup_epochs={warmup_epochs!r}: accepted: a number ≥ 0 (epochs, may be "
                              "fractional).")
        if isinstance(max_epochs, int) and max_epochs > 0 and warmup_epochs >= max_epochs:
            raise ConfigError(
                f"scheduler.warmup_epochs={warmup_epochs} is not shorter than the run (trainer.max_epochs={max_epochs}): "
                f"the cosine part would never run. Accepted: 0 ≤ scheduler.warmup_epochs < {max_epochs}."
            )
    if total_steps is None:
        return
    warmup = warmup_steps_of(warmup_epochs, warmup_steps, steps_per_epoch or 0)
    if warmup >= total_steps:
        key = "scheduler.warmup_steps" if warmup_steps is not None else "scheduler.warmup_epochs"
        value = warmup_steps if warmup_steps is not None else warmup_epochs
        raise ConfigError(
            f"{key}={value} gives {warmup} warmup steps, not fewer than the run's {total_steps} optimiser steps "
            "(trainer.max_epochs × training batches per epoch ÷ trainer.accumulate_grad_batches): the cosine part would "
            f"never run. Accepted: fewer than {total_steps} warmup steps."
        )


class WarmupCosine(LambdaLR):
    """Linear warmup for ``warmup_epochs`` (or ``warmup_steps``), then cosine decay, stepped per optimiser step.

    Args:
        optimizer: The optimiser (each parameter group keeps its own base rate).
        total_steps: The run's optimiser steps (``trainer.estimated_stepping_batches``).
        steps_per_epoch: Optimiser steps per epoch, to turn ``warmup_epochs`` into steps.
        warmup_epochs: Warmup length in epochs (may be fractional).
        warmup_steps: Warmup length in optimiser steps; when set, it takes the place of ``warmup_epochs``.
        min_lr_ratio: The rate at the end of the run, as a fraction of the base rate.
    """

    interval = "step"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: int, steps_per_epoch: int,
                 warmup_epochs: float | None = 0.0, warmup_steps: int | None = None, min_lr_ratio: float = 0.0) -> None:
        check_warmup(warmup_epochs, warmup_steps, total_steps=int(total_steps), steps_per_epoch=int(steps_per_epoch))
        if not 0.0 <= float(min_lr_ratio) <= 1.0:
            raise ConfigError(f"scheduler.min_lr_ratio={min_lr_ratio!r}: accepted: a number in [0, 1].")
        self.total_steps = int(total_steps)
        self.warmup_steps = warmup_steps_of(warmup_epochs, warmup_steps, int(steps_per_epoch))
        factor = partial(warmup_cosine_factor, warmup=self.warmup_steps, total=self.total_steps,
                         min_lr_ratio=float(min_lr_ratio))
        super().__init__(optimizer, factor)
