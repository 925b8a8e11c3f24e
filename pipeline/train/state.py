"""What a member folder already holds, and what training does with it: skip, resume, start afresh or refuse.

- nothing, or only a failed data check (``error.txt``, ``train.log``): train from scratch;
- a completed member with the same config: skip it;
- an interrupted or failed member with the same config: resume from its newest complete checkpoint;
- a member with another config: refuse (:class:`MemberConflict`), unless ``overwrite`` is set or the
  member had failed (nothing usable is lost); then its files are removed and it trains from scratch.

A checkpoint to resume from must load with ``weights_only=True``; one holding pickled objects is
refused before anything is written.
"""

from __future__ import annotations

import logging
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json
from pipeline.member.manifest import MANIFEST, MemberManifest, read_manifest
from pipeline.member.weights import load_checkpoint

__all__ = ["MemberConflict", "MemberPlan", "plan_member", "resume_checkpoint", "MEMBER_FILES"]

log = logging.getLogger(__name__)

# Files and folders a training run writes into its member folder (Hydra's .hydra/, train.log and W&B's
# wandb/ are records of the runs themselves and stay).
MEMBER_FILES = (
    MANIFEST, "config.yaml", "classes.json", "folds.csv", "eval_transform.json", "val_predictions.csv",
    "metrics.json", "model.safetensors", "model.json", "runtime.json", "error.txt",
)
MEMBER_DIRS = ("checkpoints", "predictions", "csv_logs")


class MemberConflict(MemberError):
    """The member folder holds a member trained with another config; it is left untouched."""


@dataclass
class MemberPlan:
    """What to do with a member folder: ``skip`` (with the member's metrics), ``resume`` or ``train``."""

    action: str
    metrics: dict[str, Any] | None = None
    resume_from: Path | None = None


def resume_checkpoint(member_dir: Path) -> Path | None:
    """The newest complete checkpoint to resume from: ``checkpoints/last.ckpt`` or a SLURM requeue one.

    Lightning's SLURM handler saves ``hpc_ckpt_<n>.ckpt`` mid-epoch before it requeues the job, so it
    can be newer than ``last.ckpt`` (saved at epoch ends). A process killed while writing leaves a
    truncated file (not a zip archive): it is skipped rather than failing every later attempt.
    """
    candidates = [member_dir / "checkpoints" / "last.ckpt", *member_dir.glob("hpc_ckpt_*.ckpt")]
    usable = []
    for path in candidates:
        if not path.is_file():
            continue
        if zipfile.is_zipfile(path):
            usable.append(path)
        else:
            log.warning("Ignoring incomplete checkpoint %s (the run was probably killed while saving it).", path)
    return max(usable, key=lambda p: p.stat().st_mtime, default=None)


def clear_member(member_dir: Path) -> None:
    """Remove what an earlier training run wrote into ``member_dir`` (see :data:`MEMBER_FILES`)."""
    for name in MEMBER_FILES:
        (member_dir / name).unlink(missing_ok=True)
    for name in MEMBER_DIRS:
        shutil.rmtree(member_dir / name, ignore_errors=True)
    for stale in member_dir.glob("hpc_ckpt_*.ckpt"):
        stale.unlink(missing_ok=True)


def _manifest_or_none(member_dir: Path) -> MemberManifest | None:
    return read_manifest(member_dir) if (member_dir / MANIFEST).is_file() else None


def plan_member(member_dir: Path, digest: str, overwrite: bool, legacy: str | None = None) -> MemberPlan:
    """Decide what training does with ``member_dir`` (rules in the module docstring); removes nothing.

    ``legacy``: the hash an earlier version gave the same config (``model.weights`` by path, not contents);
    a member recorded under it is the same member.

    Raises:
        MemberConflict: another config's member is there and ``overwrite`` is off.
        MemberError: the checkpoint to resume from holds pickled objects, or is unreadable.
    """
    manifest = _manifest_or_none(member_dir)
    if manifest is None:  # nothing there, or a run that failed before it wrote its manifest (a data check)
        return MemberPlan("train")
    if legacy is not None and manifest.config_hash == legacy != digest:
        log.info("Member %s was recorded under its config's earlier hash (model.weights by path); same member.",
                 member_dir)
    elif manifest.config_hash != digest:
        if not overwrite and manifest.status != "failed":
            raise MemberConflict(
                f"Member folder {member_dir} holds a member trained with a different config (hash "
                f"{manifest.config_hash} != {digest}). Use another sweep_name, or overwrite=true to retrain it."
            )
        why = "overwrite=true" if overwrite else "it had failed"
        log.info("Retraining %s from scratch with this config (%s).", member_dir, why)
        return MemberPlan("train")
    if manifest.status == "completed" and (member_dir / "metrics.json").is_file():
        return MemberPlan("skip", metrics=read_json(member_dir / "metrics.json"))
    resume = resume_checkpoint(member_dir)
    if resume is None:
        return MemberPlan("train")
    # A crafted checkpoint must stop the member here, before anything is written: Lightning would
    # otherwise fail half-way with torch's advice to turn weights_only off.
    load_checkpoint(resume, mmap=True, fix=f"Delete {resume} to train this member from scratch, or use another "
                                           "sweep_name.")
    return MemberPlan("resume", resume_from=resume)
