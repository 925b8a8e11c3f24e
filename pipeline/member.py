"""The member folder: the only contract between training and inference.

Layout (``outputs/<experiment>/<sweep>/<model>-s<seed>-<fold>/``)::

    member.json            manifest: model, classes, sizes, normalisation, fold, status, checkpoint
    config.yaml            the resolved Hydra config
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

import glob
import hashlib
import pickle
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.utils import read_json, write_json

__all__ = [
    "MANIFEST",
    "MemberManifest",
    "Member",
    "MemberError",
    "write_manifest",
    "read_manifest",
    "member_status",
    "find_members",
    "load_state_dict",
    "file_hash",
]

MANIFEST = "member.json"
STATUSES = ("running", "completed", "failed")


class MemberError(ValueError):
    """A member folder that cannot be used; the message names the folder and the missing piece."""


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


@dataclass
class Member:
    """A completed member folder on disk."""

    path: Path
    manifest: MemberManifest

    @property
    def name(self) -> str:
        return self.manifest.name

    @property
    def checkpoint(self) -> Path:
        return self.path / self.manifest.checkpoint


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


def _expand(spec: str | Path | Sequence[str | Path]) -> tuple[list[Path], list[str]]:
    """Candidate member folders for a sweep folder, a glob, or an explicit list; plus where we looked."""
    items = [spec] if isinstance(spec, (str, Path)) else list(spec)
    folders: list[Path] = []
    looked: list[str] = []
    for item in items:
        text = str(item)
        looked.append(text)
        if glob.has_magic(text):  # a glob names folders; files it also matches (folds.csv…) are not members
            matches = [Path(p) for p in sorted(glob.glob(text)) if Path(p).is_dir()]
        else:
            matches = [Path(text)]
        for path in matches:
            if (path / MANIFEST).is_file() or not path.is_dir():
                folders.append(path)
            else:  # a sweep folder: its member sub-folders
                folders.extend(sorted(p for p in path.iterdir() if (p / MANIFEST).is_file()))
    return folders, looked


def find_members(spec: str | Path | Sequence[str | Path]) -> tuple[list[Member], dict[str, str]]:
    """Completed members for ``spec``, and the skipped folders with the reason each was skipped.

    Raises:
        MemberError: when no completed member is found (the message says where it looked), or when
            the members' class lists differ (it names the members of each class list).
    """
    folders, looked = _expand(spec)
    members: list[Member] = []
    skipped: dict[str, str] = {}
    for folder in folders:
        if not folder.exists():
            skipped[str(folder)] = "does not exist"
            continue
        try:
            manifest = read_manifest(folder)
        except MemberError as err:
            skipped[str(folder)] = str(err)
            continue
        if manifest.status != "completed":
            skipped[str(folder)] = f"status {manifest.status}"
            continue
        member = Member(folder, manifest)
        if not member.checkpoint.is_file():
            raise MemberError(f"Member {folder} has no checkpoint: expected {member.checkpoint}.")
        members.append(member)
    if not members:
        detail = "".join(f"\n  {k}: {v}" for k, v in skipped.items())
        raise MemberError(f"No completed members found. Looked in: {', '.join(looked)}.{detail}")
    by_classes: dict[tuple[str, ...], list[str]] = {}
    for m in members:
        by_classes.setdefault(tuple(m.manifest.classes), []).append(m.name)
    if len(by_classes) > 1:
        groups = "; ".join(f"{list(k)} ← {v}" for k, v in by_classes.items())
        raise MemberError(f"Members have different class lists and cannot be ensembled: {groups}")
    return members, skipped


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a checkpoint's model weights with ``weights_only=True`` and strip Lightning's ``model.`` prefix.

    Raises:
        MemberError: for a missing file, or one that holds arbitrary pickled objects (refused, never run).
    """
    if not path.is_file():
        raise MemberError(f"Checkpoint {path} does not exist.")
    if path.suffix == ".safetensors":  # exported members: tensors only, nothing to unpickle
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise MemberError(
            f"Refusing to load {path}: it contains pickled objects that are not plain tensors or containers, "
            f"and loading it could run arbitrary code. Only weights_only checkpoints are accepted. ({err})"
        ) from err
    state = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise MemberError(f"{path} holds no state_dict.")
    return {k.removeprefix("model."): v for k, v in state.items() if isinstance(v, torch.Tensor)}


def file_hash(path: Path, length: int = 12) -> str:
    """Short SHA-256 of a file's bytes (cache key for predictions)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]
