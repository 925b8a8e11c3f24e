"""The member folder: the only contract between training and inference.

Layout (``outputs/<experiment>/<sweep>/<model>-s<seed>-<fold>/``)::

    member.json            manifest: model, classes, sizes, normalisation, data, fold, status, checkpoint
    config.yaml            the resolved config, for people (nothing after training reads it)
    classes.json           the class list, in output order
    folds.csv              id,label,fold for every training row (the sweep's shared folds)
    eval_transform.json    the albumentations eval pipeline (resize to S), serialised
    checkpoints/best.ckpt  best checkpoint by the monitor; loads with weights_only=True
    checkpoints/last.ckpt  for resuming
    val_predictions.csv    id,label,p:<class>… for this member's validation (OOF) rows, policy "none"
    metrics.json           best monitor value, epochs, wall time
    model.safetensors      exported weights (+ model.json), loadable with timm alone
    predictions/           predict-stage cache: <split>-<policy>-<checkpoint hash>.csv
    error.txt              only for failed members: the exception and traceback
    wandb/                 the W&B run (offline unless configured)

``member.json`` carries ``status``: ``running`` while training, then ``completed`` or ``failed``.
A folder is a usable member only when its status is ``completed``.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.errors import MemberError
from pipeline.core.io import atomic_path, read_json, write_json

__all__ = ["MANIFEST", "STATUSES", "MemberManifest", "write_manifest", "read_manifest", "member_status", "mark_failed"]

log = logging.getLogger(__name__)

MANIFEST = "member.json"
STATUSES = ("running", "completed", "failed")


@dataclass
class MemberManifest:
    """What inference needs to rebuild and feed a member, without Hydra or Lightning."""

    name: str
    model_name: str
    num_classes: int
    in_chans: int
    classes: list[str]
    image_size: int
    crop_size: int
    mean: list[float]
    std: list[float]
    n_folds: int
    fold: int
    seed: int
    split_seed: int
    config_hash: str
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    checkpoint: str = "checkpoints/best.ckpt"
    sweep: str = ""
    model_group: str = ""  # the member's model across folds: name without the fold part
    data: dict[str, Any] = field(default_factory=dict)  # the data spec it was trained on (root, layout, cache…)


def write_manifest(folder: Path, manifest: MemberManifest) -> None:
    """Write ``member.json`` atomically."""
    if manifest.status not in STATUSES:
        raise ValueError(f"status '{manifest.status}' is not one of {STATUSES}")
    write_json(folder / MANIFEST, asdict(manifest))


def read_manifest(folder: Path) -> MemberManifest:
    """Read ``member.json``; the error names the folder and the missing or unknown keys."""
    path = folder / MANIFEST
    if not path.is_file():
        raise MemberError(f"{folder} is not a member folder: no {MANIFEST}.")
    data = read_json(path)
    known = set(MemberManifest.__dataclass_fields__)
    try:
        return MemberManifest(**{k: v for k, v in data.items() if k in known})
    except TypeError as err:
        raise MemberError(f"{path}: {err}") from err


def member_status(folder: Path) -> str:
    """``completed``, ``failed``, ``running`` (or interrupted), or ``missing``.

    A run that failed before it wrote its manifest (bad config or data) leaves only ``error.txt``.
    """
    try:
        return read_manifest(folder).status
    except MemberError:
        return "failed" if (folder / "error.txt").is_file() else "missing"


def mark_failed(member_dir: Path, err: BaseException) -> bool:
    """Mark a member failed, keeping the exception and traceback in ``error.txt``; return whether it worked.

    Best effort: the failure may be that the folder cannot be written at all, and the original error
    must not be hidden behind a second one, so a write that fails is only logged.
    """
    try:
        member_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(member_dir / "error.txt") as tmp:
            tmp.write_text(f"{type(err).__name__}: {err}\n\n{traceback.format_exc()}")
        if (member_dir / MANIFEST).is_file():
            manifest = read_manifest(member_dir)
            manifest.status = "failed"
            write_manifest(member_dir, manifest)
    except (OSError, ValueError) as second:  # OutputError is a ValueError
        log.warning("Could not record the failure in %s: %s", member_dir, second)
        return False
    return True
