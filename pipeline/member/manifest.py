"""The member folder: the only contract between training and inference.

Layout (``outputs/<experiment>/<sweep>/<model>-s<seed>-<fold>/``)::

    member.json            manifest: model, classes, sizes, normalisation, data, fold, status, checkpoint, recipe
    config.yaml            the resolved config, for people (nothing after training reads it)
    classes.json           the class list, in output order
    folds.csv              id,label,fold for every training row (the sweep's shared folds)
    eval_transform.json    the albumentations eval pipeline (resize to S), serialised
    checkpoints/best.ckpt  best checkpoint by the monitor; loads with weights_only=True
    checkpoints/last.ckpt  for resuming
    val_predictions.csv    id,label,p:<class>… for this member's validation (OOF) rows, policy "none"
    metrics.json           best monitor value, epochs, wall time
    model.safetensors      exported weights (+ model.json), loadable with timm alone
    predictions/           predict-stage cache: <split>-<policy>-<settings>-<checkpoint hash>.csv (+ .json)
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
from pipeline.core.io import atomic_path, read_json, safe_name, write_json

__all__ = [
    "MANIFEST", "STATUSES", "MemberManifest", "Recipe", "write_manifest", "read_manifest", "member_status", "mark_failed",
    "check_member_name",
]

log = logging.getLogger(__name__)

MANIFEST = "member.json"
STATUSES = ("running", "completed", "failed")


@dataclass
class Recipe:
    """How a member was trained beyond its model and data, so a report can say which recipe each member used.

    Members written before this record existed have none (``MemberManifest.recipe`` is None).
    """

    loss: str = "cross_entropy"
    label_smoothing: float = 0.0
    mixup: dict[str, Any] | None = None  # {mixup, cutmix, mixup_prob, mixup_switch_prob, mixup_mode}; None: off
    scheduler: str | None = None  # the LR scheduler's class; None: a constant rate
    scheduler_interval: str = "epoch"  # when it steps: "epoch" or "step" (every optimiser step)
    warmup: dict[str, Any] | None = None  # {"epochs": e} or {"steps": s}; None: no warmup
    precision: str = "32-true"  # as resolved for the Trainer (never "auto-mixed")
    accumulate_grad_batches: int = 1
    averaging: list[dict[str, Any]] = field(default_factory=list)  # EMA / SWA callbacks and their settings
    snapshots: int = 0
    teacher: dict[str, Any] | None = None  # pseudo-labels or distillation: {kind, source, digest, settings}; None: none


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
    recipe: Recipe | None = None  # loss, Mixup/CutMix, schedule, precision, accumulation, averaging; None: older member
    task: dict[str, Any] | None = None  # pipeline.core.task.Task as a dict; None: one class per image (multiclass)
    output: dict[str, Any] | None = None  # pipeline.models.heads.OutputHead as a dict; None: softmax over classes


def write_manifest(folder: Path, manifest: MemberManifest) -> None:
    """Write ``member.json`` atomically."""
    if manifest.status not in STATUSES:
        raise ValueError(f"status '{manifest.status}' is not one of {STATUSES}")
    write_json(folder / MANIFEST, asdict(manifest))


def read_manifest(folder: Path) -> MemberManifest:
    """Read ``member.json``; the error names the folder and the missing, unknown or mistyped keys."""
    path = folder / MANIFEST
    if not path.is_file():
        raise MemberError(f"{folder} is not a member folder: no {MANIFEST}.")
    try:
        data = read_json(path)
    except ValueError as err:
        raise MemberError(str(err)) from err
    if not isinstance(data, dict):
        raise MemberError(f"{path}: expected a JSON object, found {type(data).__name__}.")
    known = set(MemberManifest.__dataclass_fields__)
    try:
        manifest = MemberManifest(**{k: v for k, v in data.items() if k in known})
        if isinstance(manifest.recipe, dict):  # keys a newer version adds are left out, as for the manifest
            manifest.recipe = Recipe(**{k: v for k, v in manifest.recipe.items() if k in Recipe.__dataclass_fields__})
    except TypeError as err:
        raise MemberError(f"{path}: {err}") from err
    _check_fields(manifest, path)
    return manifest


_INT_FIELDS = ("num_classes", "in_chans", "image_size", "crop_size", "n_folds", "fold", "seed", "split_seed")
_STR_FIELDS = ("name", "model_name", "status", "checkpoint", "model_group", "config_hash", "sweep")


def _check_fields(m: MemberManifest, path: Path) -> None:
    """Types and the few relations inference relies on; member folders may come from anywhere."""
    wrong = [k for k in _INT_FIELDS if not isinstance(getattr(m, k), int) or isinstance(getattr(m, k), bool)]
    wrong += [k for k in _STR_FIELDS if not isinstance(getattr(m, k), str)]
    wrong += [k for k in ("model_kwargs", "data") if not isinstance(getattr(m, k), dict)]
    if m.recipe is not None and not isinstance(m.recipe, Recipe):
        wrong.append("recipe")
    if not isinstance(m.classes, list) or not all(isinstance(c, str) for c in m.classes):
        wrong.append("classes")
    for key in ("mean", "std"):
        values = getattr(m, key)
        if not isinstance(values, list) or not all(isinstance(v, (int, float)) for v in values):
            wrong.append(key)
    if wrong:
        raise MemberError(f"{path}: keys {wrong} have the wrong type.")
    problems = []
    if len(m.classes) != m.num_classes or len(set(m.classes)) != len(m.classes):
        problems.append(f"classes must be {m.num_classes} distinct names (num_classes), got {len(m.classes)}")
    if not 1 <= m.crop_size <= m.image_size:
        problems.append(f"crop_size {m.crop_size} must be between 1 and image_size {m.image_size}")
    if len(m.mean) != m.in_chans or len(m.std) != m.in_chans or any(s <= 0 for s in m.std):
        problems.append(f"mean and std need in_chans={m.in_chans} values (std > 0); got {m.mean}, {m.std}")
    if m.status not in STATUSES:
        problems.append(f"status {m.status!r} is not one of {list(STATUSES)}")
    if problems:
        raise MemberError(f"{path}: " + "; ".join(problems) + ".")


def check_member_name(name: str, where: Path | str) -> None:
    """The member-name rule: a name becomes a folder and file names, so it must be one safe path component.

    Accepted: letters, digits, ``.``, ``_`` and ``-`` (what :func:`pipeline.core.io.safe_name` keeps), not
    starting with ``.``, at most 200 characters. ``"../../x"`` or ``".."`` in a member.json would otherwise
    let an export or a prediction cache write outside the folders the user named.

    Raises:
        MemberError: Naming ``where`` (the manifest) and the name.
    """
    if not name or name != safe_name(name) or name.startswith(".") or len(name) > 200:
        raise MemberError(
            f"{where}: member name {name!r} is not a safe folder name; accepted: letters, digits, '.', '_' and "
            "'-', not starting with '.', at most 200 characters."
        )


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
