"""Export an ensemble: every completed member, self-contained and timm-loadable, into one folder for offline use.

Layout of ``pipeline-export MEMBERS --out DIR``::

    DIR/ensemble.json               members, models, classes; with --predict-dir also the fitted weights
                                    per policy, the submission policy and the ensemble settings
    DIR/<member>/member.json        the manifest; ``checkpoint`` is ``model.safetensors`` (relative)
    DIR/<member>/model.safetensors  the weights (tensors only: nothing to unpickle)
    DIR/<member>/config.json        timm's config: ``timm.create_model("local-dir:DIR/<member>", pretrained=True)``
    DIR/<member>/model.json         the same for ``pretrained_cfg_overlay`` users (file relative to the folder)
    DIR/<member>/eval_transform.json, classes.json, folds.csv, metrics.json, config.yaml
    DIR/<member>/val_predictions.csv             OOF predictions (policy none), for inference-only weight fits
    DIR/<member>/predictions/val-*.csv (+.json)  cached OOF predictions under other TTA policies

Every path a reader of the export uses is relative to the folder holding the file, so the export works
wherever it is copied (a Kaggle data set is mounted read-only under ``/kaggle/input``). The training
machine's data root and image cache are dropped from ``member.json``. Each member is written to a
temporary folder and renamed into place, and member names pass the safe-name rule, so nothing is
written outside ``DIR``.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import tempfile
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json, short_hash, write_json
from pipeline.member.cache import PREDICTIONS, CacheDirs, checkpoint_hash, oof_files, rekey
from pipeline.member.folder import Member, find_members
from pipeline.member.manifest import MANIFEST
from pipeline.member.weights import META, WEIGHTS, build_model, model_meta

__all__ = ["ENSEMBLE", "TIMM_CONFIG", "export_ensemble", "read_ensemble"]

log = logging.getLogger(__name__)

ENSEMBLE = "ensemble.json"
TIMM_CONFIG = "config.json"

# Everything inference needs besides the weights; checkpoints, logs and W&B runs stay behind.
_CARRIED = ("classes.json", "eval_transform.json", "folds.csv", "val_predictions.csv", "metrics.json", "config.yaml")
# member.json's data keys that are paths on the training machine (meaningless, and untrusted, elsewhere).
_MACHINE_KEYS = ("root", "cache_dir")
# What export takes from a predict folder's predict.json.
_FROM_PREDICT = ("submission_policy", "policies", "weights", "ensemble", "metric")


def _target(out: Path, member: Member) -> Path:
    """``out/<member name>``, refused when it would leave ``out`` or overwrite something that is not an export."""
    dst = out / member.name
    if dst.resolve().parent != out.resolve():
        raise MemberError(f"Refusing to export member {member.name!r} ({member.path}) to {dst}: outside --out {out}.")
    if dst.resolve() == member.path.resolve():
        raise MemberError(f"Refusing to export member {member.name} onto itself ({member.path}); choose another --out.")
    if dst.exists() and not (dst / MANIFEST).is_file() and (not dst.is_dir() or any(dst.iterdir())):
        raise MemberError(f"Refusing to replace {dst}: it exists and is not an exported member folder.")
    return dst


def _predict_record(predict_dir: Path, members: list[Member]) -> tuple[dict[str, Any], dict[str, list[Path]]]:
    """The fitted weights and settings of a predict folder made with exactly these members, and its cache folders."""
    path = predict_dir / "predict.json"
    if not path.is_file():
        raise FileNotFoundError(f"--predict-dir {predict_dir}: no predict.json (run pipeline-predict first).")
    info = read_json(path)
    missing = [k for k in (*_FROM_PREDICT, "members") if k not in info]
    if missing:
        raise ValueError(f"{path} lacks the keys {missing}; was it written by pipeline-predict?")
    names = sorted(m.name for m in members)
    if sorted(info["members"]) != names:
        raise MemberError(
            f"{path} was made with members {sorted(info['members'])}, not the exported {names}; its weights "
            "would merge other models. Export the same members, or predict again."
        )
    if info.get("checkpoint", "best") != "best":  # the export ships best's weights: last's fitted merge would not fit
        raise MemberError(
            f"{path} was made with checkpoint={info['checkpoint']}, but an export carries each member's best weights "
            "(member.json's checkpoint); its merge was fitted on other predictions. Predict with checkpoint=best "
            "before exporting with --predict-dir, or export without it."
        )
    caches = {m: [Path(p) for p in dirs] for m, dirs in (info.get("prediction_cache") or {}).items()}
    record = {k: info[k] for k in _FROM_PREDICT}
    record["submission_policy_spec"] = info.get("submission_policy_spec")
    record["budget"] = info.get("budget")  # the cross-fitted plans the kit's --time-budget chooses among
    record["view_reduce"] = (info.get("options") or {}).get("view_reduce", "prob_mean")
    if info.get("decision"):  # thresholds or cut points fitted on OOF rows: the kit decides test rows with them
        record["decision"] = info["decision"]
    return record, caches


def _portable(member: Member) -> dict[str, Any]:
    """The manifest, as exported: weights in ``model.safetensors``, no paths of the training machine."""
    m = member.manifest
    return asdict(replace(m, checkpoint=WEIGHTS, data={k: v for k, v in m.data.items() if k not in _MACHINE_KEYS}))


def _data_config(member: Member) -> dict[str, Any]:
    """timm's data config of the member: what ``timm.data.create_transform`` needs to feed it."""
    m = member.manifest
    return {"input_size": (m.in_chans, m.crop_size, m.crop_size), "crop_pct": m.crop_size / m.image_size,
            "mean": tuple(m.mean), "std": tuple(m.std), "interpolation": "bilinear", "crop_mode": "center"}


def _write_member(member: Member, folder: Path, cache_read: list[Path]) -> None:
    """Fill ``folder`` with the member's portable files."""
    from timm.models import save_for_hf

    m = member.manifest
    save_for_hf(build_model(member), str(folder), model_config={"label_names": list(m.classes)},
                safe_serialization=True, data_config=_data_config(member))
    write_json(folder / META, model_meta(member))
    for name in _CARRIED:
        src = member.file(name)
        if src.is_file():
            shutil.copyfile(src, folder / name)
    write_json(folder / MANIFEST, _portable(member))
    old, new = checkpoint_hash(member), short_hash(folder / WEIGHTS, 12)
    own = member.path / PREDICTIONS
    for src in oof_files(member, CacheDirs((own, *cache_read), own), old):
        (folder / PREDICTIONS).mkdir(exist_ok=True)
        for file in (src, src.with_suffix(".json")):
            shutil.copyfile(file, folder / PREDICTIONS / rekey(file.name, new))


def _export_member(member: Member, dst: Path, cache_read: list[Path]) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=f".{member.name}.", suffix=".tmp", dir=dst.parent))
    try:
        _write_member(member, tmp, cache_read)
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("Exported member %s → %s", member.name, dst)
    return dst


def export_ensemble(members_spec: str | Path | list[str] | list[Path], out_dir: str | Path,
                    predict_dir: str | Path | None = None) -> list[Path]:
    """Export every completed member into ``out_dir/<member>`` and write ``out_dir/ensemble.json``.

    Args:
        members_spec: A sweep folder, a glob, or a list of member folders.
        out_dir: The export folder (created).
        predict_dir: A predict folder made with the same members: its fitted weights, submission policy and
            ensemble settings go into ``ensemble.json``, and its cached OOF predictions into the members.

    Returns:
        The exported member folders.

    Raises:
        MemberError: A member would be written outside ``out_dir`` or onto an existing non-export folder, or
            ``predict_dir`` was made with other members or with ``checkpoint=last``.
    """
    members, skipped = find_members(members_spec)
    out = Path(out_dir)
    record, caches = _predict_record(Path(predict_dir), members) if predict_dir is not None else ({}, {})
    targets = {m.name: _target(out, m) for m in members}  # every check before the first write
    out.mkdir(parents=True, exist_ok=True)
    exported = [_export_member(m, targets[m.name], caches.get(m.name, [])) for m in members]
    models: dict[str, list[str]] = {}
    for m in members:
        models.setdefault(m.manifest.model_group or m.name, []).append(m.name)
    write_json(out / ENSEMBLE, {
        "format": 1, "members": [m.name for m in members], "models": models, "classes": members[0].manifest.classes,
        "skipped": {Path(k).name: v for k, v in skipped.items()}, **record,
        "manifests": {m.name: _portable(m) for m in members},
    })
    return exported


def read_ensemble(folder: str | Path) -> dict[str, Any]:
    """``ensemble.json`` of an export, checked against the member folders beside it.

    Raises:
        FileNotFoundError: No ``ensemble.json`` (not an export folder).
        MemberError: It is not valid JSON, holds NaN or Infinity, has a weight that is negative or not a
            number, or lists members whose folders are missing; the message names the file.
    """
    path = Path(folder) / ENSEMBLE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not an export: no {ENSEMBLE} (make one with pipeline-export).")
    fix = "Export the members again (pipeline-export ... --predict-dir ...) or restore the file."

    def refuse(constant: str) -> Any:
        raise MemberError(f"{path} holds {constant}, which is no weight or setting. {fix}")

    try:
        info: dict[str, Any] = json.loads(path.read_text(), parse_constant=refuse)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise MemberError(f"{path} is not valid JSON ({err}). {fix}") from err
    for policy, weights in (info.get("weights") or {}).items():
        bad = {m: w for m, w in (weights or {}).items()
               if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < math.inf}
        if bad:
            raise MemberError(f"{path}: weights of policy {policy} {bad} are not non-negative numbers. {fix}")
    missing = [n for n in info.get("members", []) if not (Path(folder) / n / MANIFEST).is_file()]
    if missing:
        raise MemberError(f"{path} lists members {missing} that have no folder beside it.")
    return info
