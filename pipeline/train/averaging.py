"""Weight averaging for a better member from the same run: :class:`EMA` and :class:`SWA` (Lightning's own).

Both are Lightning's ``WeightAveraging`` callbacks (``torch.optim.swa_utils.AveragedModel`` underneath),
with two guarantees the member folder needs: until the average has had its first update, validation
and checkpoints hold the model's own weights (never the untouched copy of the initial weights), and
once it has, they hold the average, so ``checkpoints/best.ckpt`` (what the member exports) is the
averaged model whenever its score was the averaged model's.

BatchNorm statistics are **recomputed** for the averaged weights before each validation: one forward
pass over the training rows as validation sees images, in train mode, with cumulative averages (what
``torch.optim.swa_utils.update_bn`` does). Validation, ``best.ckpt`` and the exported model hold those.
Averaging the running statistics along with the weights (``use_buffers=True`` alone) does not stand in
for it: on 80-step runs the resnets lost 0.13–0.25 accuracy that way, which the recomputation recovered
(``benchmarks/ema_bn_check.py``; RESULTS.md, recipes). A network without BatchNorm skips the pass.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import EMAWeightAveraging, WeightAveraging
from torch import nn

from pipeline.core.errors import ConfigError

__all__ = ["EMA", "SWA", "AVERAGED_KEY", "describe_averaging", "recompute_batchnorm"]

AVERAGED_KEY = "averaging_state"
"""Key Lightning adds to a checkpoint whose ``state_dict`` holds averaged weights."""


class _Gated:
    """Swap the average in (validation, checkpoints, end of training) only once it has been updated."""

    _average_model: Any

    def _has_average(self) -> bool:
        model = self._average_model
        return model is not None and int(model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._swapped = self._has_average()
        if self._swapped:
            super().on_validation_epoch_start(trainer, pl_module)  # type: ignore[misc]
            # the swap back at the epoch's end hands these statistics to the average (checkpoints, export)
            make_loader = getattr(getattr(trainer, "datamodule", None), "batchnorm_loader", None)
            loader = make_loader() if callable(make_loader) else None
            recompute_batchnorm(pl_module, loader)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if getattr(self, "_swapped", False):
            super().on_validation_epoch_end(trainer, pl_module)  # type: ignore[misc]
        self._swapped = False

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._has_average():
            super().on_save_checkpoint(trainer, pl_module, checkpoint)  # type: ignore[misc]

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._has_average():
            super().on_train_end(trainer, pl_module)  # type: ignore[misc]


class EMA(_Gated, EMAWeightAveraging):
    """Exponential moving average of the weights, updated after every ``update_every_n_steps`` optimiser steps.

    Args:
        decay: Weight of the old average at each update (0.999: an average over about the last 1,000 steps).
        update_every_n_steps: Steps between updates.
        update_starting_at_step: First step that updates the average (None: the first).
    """

    def __init__(self, decay: float = 0.999, update_every_n_steps: int = 1, update_starting_at_step: int | None = None) -> None:
        if not 0.0 < float(decay) < 1.0:
            raise ConfigError(f"callbacks.ema.decay={decay!r} must lie strictly between 0 and 1 (0.999 is usual).")
        super().__init__(decay=float(decay), update_every_n_steps=int(update_every_n_steps),
                         update_starting_at_step=update_starting_at_step)
        self.decay = float(decay)


class SWA(_Gated, WeightAveraging):
    """Stochastic weight averaging: the equal-weight mean of the weights at the end of each epoch from ``start_epoch``.

    Args:
        start_epoch: First epoch (0-based) whose weights join the average, or a fraction in (0, 1) of
            ``max_epochs`` (0.75: the last quarter of the run).
    """

    def __init__(self, start_epoch: float = 0.75) -> None:
        super().__init__()
        self.start_epoch = start_epoch
        self._first = 0

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Resolve ``start_epoch`` against ``max_epochs`` and refuse a start the run never reaches."""
        epochs = trainer.max_epochs
        start = self.start_epoch
        if isinstance(start, float) and 0.0 < start < 1.0:
            if epochs is None or epochs < 1:
                raise ConfigError(f"callbacks.swa.start_epoch={start} is a fraction of trainer.max_epochs, which is not set.")
            start = int(start * epochs)
        if not float(start).is_integer() or start < 0 or (epochs is not None and epochs > 0 and start >= epochs):
            raise ConfigError(
                f"callbacks.swa.start_epoch={self.start_epoch!r}: the average would never be updated with "
                f"trainer.max_epochs={epochs}. Use an epoch index below max_epochs or a fraction in (0, 1)."
            )
        self._first = int(start)
        super().setup(trainer, pl_module, stage)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        """Update once per epoch, at its end, from the first averaged epoch on."""
        return epoch_idx is not None and epoch_idx >= self._first


@torch.no_grad()
def recompute_batchnorm(module: pl.LightningModule, loader: Any) -> int:
    """Reset every BatchNorm layer's running statistics and recompute them over ``loader`` (train mode).

    The loader holds the training rows as validation sees images (``MemberDataModule.batchnorm_loader``:
    ``uint8`` S×S, cropped and normalised on the device by ``eval_logits``); each layer averages over all of
    them (``momentum=None``), as ``torch.optim.swa_utils.update_bn`` does. The random number generators are
    left as they were (a dropout layer in train mode draws), so the run underneath is the same run.

    Returns:
        The number of BatchNorm layers recomputed (0: none, nothing ran).
    """
    layers = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not layers or loader is None:
        return 0
    momenta = {layer: layer.momentum for layer in layers}
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
    was_training, device = module.training, next(module.parameters()).device
    forward = getattr(module, "eval_logits", module)
    module.train()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for batch in loader:
                forward(batch["image"].to(device))
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        module.train(was_training)
    return len(layers)


def describe_averaging(callback: Any) -> dict[str, Any] | None:
    """What of a weight-averaging callback changes the member's result (for the config hash); None for others."""
    if isinstance(callback, EMA):
        return {"ema": {"decay": callback.decay, "every": callback.update_every_n_steps,
                        "from_step": callback.update_starting_at_step, "batchnorm": "recomputed"}}
    if isinstance(callback, SWA):
        return {"swa": {"start_epoch": callback.start_epoch, "batchnorm": "recomputed"}}
    if isinstance(callback, WeightAveraging):  # another averaging callback: its class at least
        return {type(callback).__qualname__: {}}
    return None
