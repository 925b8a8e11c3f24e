"""Checks that a member's training can give a usable result: before training, and after it as a backstop.

A member that never took an optimiser step, or was never validated, has random weights or no score,
best checkpoint and out-of-fold predictions; exported, it would quietly spoil every ensemble it joins.
Whatever can be known before training (trainer limits, training rows against the batch size) is refused
before anything is written; :class:`ProgressGuard` and :func:`check_progress` catch the rest after
``fit`` (a trainer built by other code, DDP ranks with fewer rows each), and the member fails.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import Callback

from pipeline.core.errors import ConfigError, TrainError

__all__ = ["check_trainer_settings", "check_image_sizes", "check_split_sizes", "ProgressGuard", "check_progress"]


def _is_zero(value: Any) -> bool:
    return value is not None and not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0


def check_trainer_settings(settings: dict[str, Any]) -> None:
    """Refuse trainer settings under which no optimiser step or no validation would run.

    Raises:
        TrainError: naming the ``trainer.*`` key and what to set instead.
    """
    for key in ("max_epochs", "max_steps", "limit_train_batches"):
        if _is_zero(settings.get(key)):
            raise TrainError(
                f"trainer.{key}=0: no optimiser step would run, so the member would keep its initial weights. "
                f"Set trainer.{key} above 0 (or remove it)."
            )
    if _is_zero(settings.get("limit_val_batches")):
        raise TrainError(
            "trainer.limit_val_batches=0: validation would never run, so the member would have no validation "
            "score, best checkpoint or out-of-fold predictions. Set trainer.limit_val_batches above 0 (or remove it)."
        )
    every, epochs = settings.get("check_val_every_n_epoch"), settings.get("max_epochs")
    if isinstance(every, int) and isinstance(epochs, int) and epochs > 0 and every > epochs:
        raise TrainError(
            f"trainer.check_val_every_n_epoch={every} is larger than trainer.max_epochs={epochs}: validation would "
            "never run. Lower trainer.check_val_every_n_epoch or raise trainer.max_epochs."
        )


def check_image_sizes(image_size: Any, crop_size: Any) -> None:
    """Refuse a training crop larger than the images it is cut from (random crops of ``C`` from ``S×S``).

    Raises:
        ConfigError: naming ``data.image_size`` and ``data.crop_size`` and their values.
    """
    for key, value in (("data.image_size", image_size), ("data.crop_size", crop_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key}={value!r}: expected a positive whole number of pixels.")
    if crop_size > image_size:
        raise ConfigError(
            f"data.crop_size={crop_size} is larger than data.image_size={image_size}: the network sees crops of "
            f"crop_size cut from images resized to image_size. Set data.crop_size <= data.image_size "
            f"(e.g. data.crop_size={image_size}) or raise data.image_size."
        )


def check_split_sizes(n_train: int, n_val: int, batch_size: int, fold_name: str) -> None:
    """Refuse a split whose training loader would yield no batch (``drop_last=True``) or with no validation rows.

    Args:
        n_train: training rows of this member.
        n_val: validation rows of this member.
        batch_size: ``data.batch_size``.
        fold_name: ``fold 2 of 5`` or ``the holdout split``, for the message.

    Raises:
        ConfigError: ``data.batch_size`` is not a positive integer.
        TrainError: naming the counts and the setting to change.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"data.batch_size={batch_size!r} must be a positive integer.")
    if n_val == 0:
        raise TrainError(f"{fold_name} has no validation rows; check data.n_folds, data.fold and data.holdout_fraction.")
    if n_train < batch_size:
        raise TrainError(
            f"data.batch_size={batch_size} is larger than the {n_train} training rows of {fold_name}: the training "
            "loader drops an incomplete last batch (drop_last=True), so no optimiser step would run. Set "
            f"data.batch_size to at most {n_train}."
        )


class ProgressGuard(Callback):
    """Counts the validation batches ``fit`` really ran (sanity checks excluded), across resumes.

    The count is saved in every checkpoint, so a member resumed after its last epoch still knows
    that it was validated.
    """

    def __init__(self) -> None:
        self.val_batches = 0

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        if not trainer.sanity_checking:
            self.val_batches += 1

    def state_dict(self) -> dict[str, Any]:
        return {"val_batches": self.val_batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.val_batches = int(state_dict.get("val_batches", 0))


def _discard_checkpoints(member_dir: Path) -> None:
    """Checkpoints of a run that never trained (or never validated) must not be resumed by the next attempt."""
    shutil.rmtree(member_dir / "checkpoints", ignore_errors=True)
    for stale in member_dir.glob("hpc_ckpt_*.ckpt"):
        stale.unlink(missing_ok=True)


def check_progress(trainer: pl.Trainer, guard: ProgressGuard, best_score: Any, member_dir: Path) -> None:
    """After ``fit``: fail the member if no optimiser step or no validation ran; its checkpoints are discarded.

    Args:
        trainer: the trainer after ``fit``.
        guard: the run's :class:`ProgressGuard`.
        best_score: the checkpoint callback's best monitored value (restored on resume), or None.
        member_dir: the member folder.

    Raises:
        TrainError: saying which and what to change.
    """
    problem = None
    if trainer.global_step == 0:
        problem = (
            "Training ran no optimiser step (trainer.global_step == 0), so the member kept its initial weights. "
            "Each process needs at least one full batch: lower data.batch_size, or check trainer.limit_train_batches, "
            "trainer.max_steps and the number of devices."
        )
    elif guard.val_batches == 0 and best_score is None:
        problem = (
            "Validation never ran, so the member has no validation score, best checkpoint or out-of-fold "
            "predictions. Check trainer.limit_val_batches, trainer.check_val_every_n_epoch and the validation rows."
        )
    if problem:
        _discard_checkpoints(member_dir)
        raise TrainError(f"Member {member_dir.name} failed: {problem}")
