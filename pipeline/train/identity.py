"""A member's identity: the hash of what defines its result, with a weights file counted by its contents.

A completed member folder is "the same member" for a rerun only when this hash matches: so a rerun with
another config is refused instead of silently reusing the folder, and a sweep copied to another machine,
its ``model.weights`` file in another folder, still resumes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.core.io import short_hash
from pipeline.train.averaging import describe_averaging
from pipeline.train.recipe import aug_identity, recipe_identity, teacher_identity
from pipeline.train.spec import TrainSpec
from pipeline.train.state import MemberConflict

__all__ = ["MEMBER_KEYS", "WEIGHTS_SHA", "check_weights_source", "member_hash", "with_weights_hash"]

# The config keys that define a member's result; a completed member with another hash is not "the same".
MEMBER_KEYS = ("model", "aug", "optimizer", "scheduler", "seed", "label_smoothing", "data_split", "max_epochs")
_SPLIT_KEYS = ("n_folds", "fold", "split_seed", "holdout_fraction", "image_size", "crop_size", "in_chans")


WEIGHTS_SHA = "weights_sha256"
"""config.yaml's ``model`` key recording the SHA-256 of the ``model.weights`` file the member started from."""


def with_weights_hash(config: dict[str, Any]) -> dict[str, Any]:
    """The config with ``model.weights_sha256`` added when ``model.weights`` names a file (read once, here)."""
    model = config.get("model")
    if not isinstance(model, dict) or not model.get("weights"):
        return config
    return {**config, "model": {**model, WEIGHTS_SHA: short_hash(Path(str(model["weights"])).expanduser(), 64)}}


def check_weights_source(member_dir: Path, config: dict[str, Any]) -> None:
    """A member started from one weights file cannot resume from, or count as done with, other contents.

    Raises:
        MemberConflict: naming the ``model.weights`` file and the member folder.
    """
    model, saved = config.get("model") or {}, member_dir / "config.yaml"
    if not model.get(WEIGHTS_SHA) or not saved.is_file() or (member_dir / "error.txt").is_file():
        return
    try:
        before = (yaml.safe_load(saved.read_text()) or {}).get("model") or {}
    except (OSError, yaml.YAMLError):
        return  # plan_member judges the folder by its manifest
    if isinstance(before, dict) and before.get(WEIGHTS_SHA) not in (None, model[WEIGHTS_SHA]):
        raise MemberConflict(
            f"Member folder {member_dir} was trained from a weights file with other contents than "
            f"model.weights={model['weights']} (SHA-256 {str(before[WEIGHTS_SHA])[:12]}… != {model[WEIGHTS_SHA][:12]}…). "
            "Point model.weights at the file the sweep was trained from, or use another sweep_name."
        )


def member_hash(spec: TrainSpec, config: dict[str, Any]) -> str:
    """Short hash of what defines a member's result (:data:`MEMBER_KEYS`).

    A ``model.weights`` file counts by its contents (``model.weights_sha256``), not by where it lies, so a
    sweep copied to another machine with its weights elsewhere resumes.
    """
    model = config.get("model")
    if isinstance(model, dict) and model.get(WEIGHTS_SHA):
        model = {**{k: v for k, v in model.items() if k not in ("weights", WEIGHTS_SHA)}, "weights": model[WEIGHTS_SHA]}
    view = {
        "model": model, "aug": aug_identity(config.get("aug")), "optimizer": config.get("optimizer"),
        "scheduler": config.get("scheduler"), "seed": spec.seed, "label_smoothing": spec.label_smoothing,
        "data_split": {**{k: getattr(spec.data, k) for k in _SPLIT_KEYS},  # group/fold columns only when set: old
                       **{k: v for k in ("group_col", "fold_col") if (v := getattr(spec.data, k))}},  # hashes stay
        "max_epochs": spec.trainer_settings.get("max_epochs"),
    }
    record = {k: view[k] for k in MEMBER_KEYS}
    # Added only when used, so the hash of every member trained without them stays what it was.
    averaging = [d for c in spec.callbacks or [] if (d := describe_averaging(c)) is not None]
    if averaging:
        record["averaging"] = averaging
    if spec.snapshots:
        record["snapshots"] = int(spec.snapshots)
    record.update(recipe_identity(spec))  # loss, Mixup/CutMix, accumulation: only when not the default
    if spec.teacher is not None:  # the teacher's settings and its predict folder's contents
        record["teacher"] = teacher_identity(spec.teacher)
    return short_hash(record, 16)
