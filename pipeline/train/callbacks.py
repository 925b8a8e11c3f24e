"""A member's Lightning callbacks: the configured ones (``callbacks/`` group) checked against the member folder.

The command line instantiates ``callbacks/`` (each node has a ``_target_``) and passes the objects in
``TrainSpec.callbacks``; a spec without callbacks gets the defaults below. Either way the list must hold
the member folder's checkpoint callback (``checkpoints/best.ckpt`` by the monitor, ``last.ckpt``), and
the library adds what the spec itself asks for: the progress guard, early stopping
(``early_stopping_patience``), the backbone freeze (``model.freeze_backbone_epochs``) and the snapshot
checkpoints (``snapshots``).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ProgressBar,
    RichProgressBar,
)

from pipeline.core.errors import ConfigError
from pipeline.models.finetune import BackboneFreeze
from pipeline.train.checks import ProgressGuard
from pipeline.train.snapshots import SNAPSHOT_DIR, SnapshotCheckpoint, check_snapshots
from pipeline.train.spec import TrainSpec

__all__ = ["member_callbacks", "default_callbacks", "contract_checkpoint", "CHECKPOINT_KEY", "LastCheckpoint"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "callbacks.model_checkpoint"
"""Where the checkpoint callback lives in the config, for messages."""


class LastCheckpoint(Callback):
    """Rewrites ``checkpoints/last.ckpt`` at the end of every training epoch (atomically), so it is the last epoch.

    Lightning 2.6's ``ModelCheckpoint(save_last=True, save_top_k=1)`` writes ``last.ckpt`` only in an epoch that
    also writes ``best.ckpt``: ``last.ckpt`` was then a copy of the best epoch, so a resumed member restarted
    from its best epoch and ``checkpoint=last`` predicted the best weights. Saved after validation and the other
    callbacks (their states included), as Lightning's own end-of-epoch ``save_last`` is.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        trainer.save_checkpoint(tmp, weights_only=False)  # every rank calls it; rank 0 writes (False: no INFO line)
        if trainer.is_global_zero:
            os.replace(tmp, self.path)


def default_callbacks(spec: TrainSpec) -> list[Callback]:
    """The callbacks of a spec without ``callbacks``: best-by-monitor + last checkpoint, and a progress bar."""
    return [
        ModelCheckpoint(
            dirpath=Path(spec.member_dir) / "checkpoints", filename="best", monitor=spec.monitor,
            mode=spec.monitor_mode, save_last=True, save_top_k=1, auto_insert_metric_name=False,
            enable_version_counter=False,
        ),
        RichProgressBar(),
    ]


def contract_checkpoint(callbacks: list[Any], member_dir: Path) -> ModelCheckpoint:
    """The checkpoint callback that writes the member folder's ``checkpoints/best.ckpt`` and ``last.ckpt``.

    Raises:
        ConfigError: none of ``callbacks`` writes them (removed, or another folder, name or ``save_top_k``).
    """
    expected = (Path(member_dir) / "checkpoints").resolve()
    found = [c for c in callbacks if isinstance(c, ModelCheckpoint)]
    for cb in found:
        if cb.dirpath is not None and Path(cb.dirpath).resolve() == expected and cb.filename == "best":
            if not cb.save_last or cb.save_top_k != 1:
                raise ConfigError(
                    f"{CHECKPOINT_KEY}: save_last={cb.save_last!r}, save_top_k={cb.save_top_k!r}; the member folder "
                    "needs save_last=true (checkpoints/last.ckpt, to resume) and save_top_k=1 (one best.ckpt)."
                )
            return cb
    seen = [f"dirpath={c.dirpath} filename={c.filename}" for c in found] or ["none"]
    raise ConfigError(
        f"{CHECKPOINT_KEY}: no ModelCheckpoint writes {expected}/best.ckpt (found: {'; '.join(seen)}). The member "
        "folder's best and last checkpoints are what inference and resume read: keep callbacks.model_checkpoint "
        "(in callbacks/default) with dirpath=${paths.output_dir}/checkpoints and filename=best."
    )


def member_callbacks(spec: TrainSpec, has_logger: bool) -> list[Callback]:
    """Every callback of the member's trainer: the configured (or default) ones, checked, plus the spec's own.

    Args:
        spec: The member; ``spec.callbacks`` None means :func:`default_callbacks`.
        has_logger: Whether the trainer gets a logger (a learning-rate monitor needs one).
    """
    configured = default_callbacks(spec) if spec.callbacks is None else list(spec.callbacks)
    for cb in configured:
        if not isinstance(cb, Callback):
            raise ConfigError(f"callbacks: {cb!r} is not a Lightning Callback (give each callbacks/ node a _target_).")
    contract_checkpoint(configured, Path(spec.member_dir))
    callbacks: list[Callback] = [ProgressGuard(), LastCheckpoint(Path(spec.member_dir) / "checkpoints" / "last.ckpt")]
    for cb in configured:
        if isinstance(cb, ProgressBar) and not spec.trainer_settings.get("enable_progress_bar", True):
            continue  # Lightning refuses a progress bar callback with enable_progress_bar=False
        if isinstance(cb, LearningRateMonitor) and not has_logger:
            log.info("No logger (logger=none): the learning-rate monitor is left out.")
            continue
        callbacks.append(cb)
    if spec.early_stopping_patience is not None and not any(isinstance(c, EarlyStopping) for c in callbacks):
        callbacks.append(EarlyStopping(monitor=spec.monitor, mode=spec.monitor_mode, patience=int(spec.early_stopping_patience)))
    if spec.snapshots:
        every = check_snapshots(spec.snapshots, spec.trainer_settings.get("max_epochs"),
                                any(isinstance(c, EarlyStopping) for c in callbacks))
        callbacks.append(SnapshotCheckpoint(Path(spec.member_dir) / "checkpoints" / SNAPSHOT_DIR, every))
    if spec.model.freeze_backbone_epochs:
        callbacks.append(BackboneFreeze(unfreeze_at_epoch=int(spec.model.freeze_backbone_epochs)))
    for cb in callbacks:
        log.info("Instantiating callback <%s>", type(cb).__name__)
    return callbacks
