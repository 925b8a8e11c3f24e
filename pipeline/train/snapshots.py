"""Snapshot ensembles (Huang et al. 2017, "Train 1, get M for free"): k members from one training run.

With ``snapshots=k`` the learning rate follows a cosine schedule with warm restarts
(``CosineAnnealingWarmRestarts``, ``max_epochs / k`` epochs per cycle, replacing the configured
scheduler), and the weights at the end of each cycle, where the learning rate is lowest, are kept.
Each snapshot becomes a first-class sibling member folder ``<model>-s<seed>-snap<i>-<fold>`` of the
run's own member: the same config, classes, folds and eval transform, the snapshot as
``checkpoints/best.ckpt``, its own validation (out-of-fold) predictions, ``model.safetensors``, and a
``metrics.json`` that says which snapshot it is (``{"snapshot": i, "of": k, "epoch": e, ...}``). K-fold
runs give ``<model>-s<seed>-snap<i>-f<k>`` folders, so the snapshots of all folds form one model each.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

from pipeline.core.errors import ConfigError, TrainError
from pipeline.core.io import atomic_path, short_hash, write_json
from pipeline.member.manifest import MemberManifest, read_manifest, write_manifest
from pipeline.member.predictions import write_predictions
from pipeline.member.weights import export_member

__all__ = ["SnapshotCheckpoint", "check_snapshots", "snapshot_scheduler", "snapshot_name", "snapshot_folders",
           "check_snapshot_folders", "write_snapshot_members", "SNAPSHOT_DIR"]

log = logging.getLogger(__name__)

M = TypeVar("M", bound=pl.LightningModule)

SNAPSHOT_DIR = "snapshots"
"""Folder under the run's ``checkpoints/`` holding ``snapshot-<i>.ckpt``."""

_COPIED = ("config.yaml", "classes.json", "folds.csv", "eval_transform.json")


def check_snapshots(k: int, max_epochs: Any, early_stopping: bool) -> int:
    """Epochs per cycle of a ``snapshots=k`` run; refuse settings under which k snapshots cannot be taken.

    Raises:
        ConfigError: naming ``snapshots`` and the setting that contradicts it.
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 2:
        raise ConfigError(f"snapshots={k!r}: give the number of snapshot members to keep, 2 or more (0: none).")
    if not isinstance(max_epochs, int) or max_epochs < k or max_epochs % k:
        raise ConfigError(
            f"snapshots={k} needs trainer.max_epochs to be a multiple of {k} (each cycle of the warm-restart "
            f"schedule has the same number of epochs); got trainer.max_epochs={max_epochs!r}."
        )
    if early_stopping:
        raise ConfigError(
            f"snapshots={k} with early stopping: a stopped run would keep fewer than {k} snapshots. "
            "Unset early_stopping_patience (and drop callbacks.early_stopping)."
        )
    return max_epochs // k


def snapshot_scheduler(epochs_per_cycle: int) -> Callable[..., Any]:
    """The warm-restart schedule of a snapshot run (stepped once per epoch, as every configured scheduler)."""
    return functools.partial(torch.optim.lr_scheduler.CosineAnnealingWarmRestarts, T_0=int(epochs_per_cycle))


def snapshot_name(name: str, i: int) -> str:
    """``resnet18-s0-f2`` → ``resnet18-s0-snap1-f2``: the fold stays last, so fold members still group."""
    group, sep, tag = name.rpartition("-")
    return f"{group}-snap{i}-{tag}" if sep else f"{name}-snap{i}"


def snapshot_folders(member_dir: Path, name: str, k: int) -> list[Path]:
    """The sibling folders of a run's k snapshot members."""
    return [Path(member_dir).parent / snapshot_name(name, i) for i in range(1, k + 1)]


def _digest(run_digest: str, i: int, k: int) -> str:
    return short_hash({"member": run_digest, "snapshot": i, "of": k}, 16)


def check_snapshot_folders(member_dir: Path, name: str, k: int, run_digest: str, overwrite: bool) -> None:
    """Before training: refuse to replace a sibling folder that holds a member of another config.

    Raises:
        ConfigError: naming the folder (set ``overwrite=true`` or pick another ``sweep_name``).
    """
    for i, folder in enumerate(snapshot_folders(member_dir, name, k), 1):
        if overwrite or not (folder / "member.json").is_file():
            continue
        try:
            held = read_manifest(folder).config_hash
        except Exception:  # an unreadable manifest is no member to protect
            continue
        if held != _digest(run_digest, i, k):
            raise ConfigError(
                f"{folder} holds a member of a different config; snapshot {i} of {name} would replace it. "
                "Pick another sweep_name, or set overwrite=true to retrain."
            )


class SnapshotCheckpoint(Callback):
    """Save the weights at the end of every cycle as ``checkpoints/snapshots/snapshot-<i>.ckpt`` (rank 0)."""

    def __init__(self, dirpath: Path, epochs_per_cycle: int) -> None:
        self.dirpath, self.every = Path(dirpath), int(epochs_per_cycle)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        if (epoch + 1) % self.every or not trainer.is_global_zero:
            return
        i = (epoch + 1) // self.every
        self.dirpath.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        with atomic_path(self.dirpath / f"snapshot-{i}.ckpt") as tmp:
            torch.save({"state_dict": state, "epoch": epoch, "snapshot": i}, tmp)
        log.info("Snapshot %d saved at the end of epoch %d", i, epoch)


def write_snapshot_members(
    member_dir: Path, manifest: MemberManifest, module: M, k: int, predict: Callable[[M], np.ndarray],
    val_ids: list[str], val_labels: np.ndarray,
) -> list[Path]:
    """Write the run's k snapshot member folders beside it (each complete, status ``completed`` last).

    Args:
        member_dir: The run's own member folder (its setup files are copied).
        manifest: The run's manifest (name, classes, sizes...); each snapshot gets its own name and hash.
        module: The run's module; each snapshot's weights are loaded into it in turn.
        k: Number of snapshots.
        predict: Validation probabilities of the module as it is (rows in ``val_ids`` order).
        val_ids: The validation ids.
        val_labels: Their label indices.

    Raises:
        TrainError: a snapshot checkpoint is missing (the run ended before the cycle did).
    """
    folders = snapshot_folders(member_dir, manifest.name, k)
    for i, folder in enumerate(folders, 1):
        source = member_dir / "checkpoints" / SNAPSHOT_DIR / f"snapshot-{i}.ckpt"
        if not source.is_file():
            raise TrainError(f"{source} is missing: the run ended before cycle {i} of {k} (snapshots={k}).")
        ckpt = torch.load(source, map_location="cpu", weights_only=True)
        if folder.exists():
            shutil.rmtree(folder)
        (folder / "checkpoints").mkdir(parents=True)
        for name in _COPIED:
            shutil.copyfile(member_dir / name, folder / name)
        shutil.copyfile(source, folder / "checkpoints" / "best.ckpt")
        snap = dataclasses.replace(manifest, name=folder.name, model_group=folder.name.rsplit("-", 1)[0],
                                   config_hash=_digest(manifest.config_hash, i, k), status="running")
        write_manifest(folder, snap)
        module.load_state_dict(ckpt["state_dict"])
        probs = predict(module)
        write_predictions(folder / "val_predictions.csv", val_ids, probs, manifest.classes, val_labels)
        rows = np.arange(len(probs))
        write_json(folder / "metrics.json", {
            "snapshot": i, "of": k, "epoch": int(ckpt["epoch"]), "epochs": int(ckpt["epoch"]) + 1, "run": manifest.name,
            "val_acc": float((probs.argmax(1) == val_labels).mean()),
            "val_log_loss": float(-np.log(np.clip(probs[rows, val_labels], 1e-15, 1)).mean()), "n_val": len(probs),
        })
        export_member(folder)
        snap.status = "completed"
        write_manifest(folder, snap)
        log.info("Snapshot member %d of %d completed → %s", i, k, folder)
    return folders
