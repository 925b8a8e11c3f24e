"""The teacher's targets for a pseudo-labelled or distilled member, from a finished predict folder.

:func:`build_teacher_targets` is the builder :mod:`pipeline.train.teacher` is handed by the command line.
Every check runs before the new member writes anything:

- the source holds ``predict.json`` and the ensemble's test probabilities (``ensemble_test.csv``);
- it is the same competition: the same classes, and its test ids are the new member's test ids;
- **honest out-of-fold rows**: only the source's members whose validation rows are exactly the new
  member's validation rows teach it (a k-fold source teaches fold *k* with its fold-*k* members), so no
  target was made by a model that saw the labels the new member is scored on;
- the teacher is the submitted ensemble: ``ensemble_test.csv`` itself when every submitted member matches
  (any merge), else the matched members under their submitted policies and weights (a weighted mean;
  a stacked or rank merge cannot be recomputed from part of its members, and is refused);
- a threshold that selects no test image is refused.

Member folders are found in the source's sweep folder (the predict folder's parent), never at the paths
``predict.json`` records: a folder from elsewhere cannot point training outside the folders the user named.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.errors import ConfigError
from pipeline.core.io import short_hash
from pipeline.data.tables import read_test_table
from pipeline.member.folder import Member, find_members
from pipeline.member.predictions import read_predictions
from pipeline.member.teacher import TeacherRequest, TeacherSpec, TeacherTargets, select_test_rows
from pipeline.predict.ensemble import group_models
from pipeline.predict.plan import recorded_policies
from pipeline.predict.record import PredictRecord
from pipeline.predict.spec import PredictOptions
from pipeline.predict.timed import predict_plan

__all__ = ["ENSEMBLE_TEST", "build_teacher_targets", "source_digest"]

ENSEMBLE_TEST = "ensemble_test.csv"


def _source(spec: TeacherSpec) -> tuple[Path, PredictRecord]:
    folder = Path(str(spec.source)).expanduser()
    if not (folder / "predict.json").is_file():
        raise ConfigError(f"teacher.source={spec.source}: no predict.json there; accepted: the predict folder of a "
                          "finished pipeline-predict run (e.g. outputs/demo/demo/predict).")
    if not (folder / ENSEMBLE_TEST).is_file():
        raise ConfigError(f"teacher.source={spec.source} has no test probabilities ({ENSEMBLE_TEST}); run "
                          "pipeline-predict there to the end (a --dry-run or failed run leaves none).")
    return folder, PredictRecord.read(folder)


def source_digest(source: str | Path) -> str:
    """Content hash of a predict folder's ``predict.json`` and ``ensemble_test.csv`` (empty when absent)."""
    folder = Path(str(source)).expanduser()
    files = [folder / "predict.json", folder / ENSEMBLE_TEST]
    if not all(f.is_file() for f in files):
        return ""
    return short_hash([short_hash(f, 64) for f in files], 16)


def _check_competition(spec: TeacherSpec, pr: PredictRecord, classes: list[str]) -> None:
    if pr.task:
        raise ConfigError(f"teacher.source={spec.source} predicts a {pr.task.get('kind')} task; a teacher needs one "
                          "class per image.")
    if list(pr.classes) != list(classes):
        raise ConfigError(f"teacher.source={spec.source} predicts the classes {list(pr.classes)[:6]}…, but this "
                          f"member's data has {list(classes)[:6]}… (another competition?): the student's classes must "
                          "be the teacher's, in the same order.")


def _test_targets(spec: TeacherSpec, folder: Path, test_ids: list[str], classes: list[str]) -> np.ndarray:
    ids, probs, _ = read_predictions(folder / ENSEMBLE_TEST, classes)
    position = {str(i): n for n, i in enumerate(ids)}
    missing = [i for i in test_ids if i not in position]
    if missing or len(ids) != len(test_ids):
        raise ConfigError(
            f"teacher.source={spec.source}: its {ENSEMBLE_TEST} holds {len(ids)} test ids, this member's test set "
            f"{len(test_ids)}, {len(missing)} of them missing there (e.g. {missing[:3]}): a teacher must have "
            "predicted this competition's test images (data.root).")
    return probs[[position[i] for i in test_ids]]


def _matched(spec: TeacherSpec, folder: Path, pr: PredictRecord, val_ids: set[str]) -> list[Member]:
    """The source's members (found in its sweep folder) whose validation rows are the new member's."""
    found, _ = find_members(folder.parent)
    by_name = {m.name: m for m in found}
    absent = [name for name in pr.members if name not in by_name]
    if absent:
        raise ConfigError(f"teacher.source={spec.source}: members {absent[:3]} of its predict.json are not completed "
                          f"member folders in {folder.parent}, the predict folder's sweep folder; a teacher's members "
                          "must lie there.")
    matched = []
    for name in pr.members:
        member = by_name[name]
        ids, _, _ = read_predictions(member.path / "val_predictions.csv")
        if set(map(str, ids)) == val_ids:
            matched.append(member)
    if not matched:
        raise ConfigError(
            f"teacher.source={spec.source}: none of its {len(pr.members)} members was validated on this member's "
            f"{len(val_ids)} validation rows, so every target would come from a model that saw their labels. Train "
            "with the teacher's split (the same data.n_folds, data.fold, data.split_seed, data.holdout_fraction).")
    return matched


def _plain(pr: PredictRecord) -> bool:
    combine = (pr.submitted or {}).get("combine")
    return combine is None or (combine.get("kind") in ("weighted", "single") and not combine.get("temperatures"))


def _plan(pr: PredictRecord, matched: list[Member]) -> tuple[dict[str, list[Member]], dict[str, Any]]:
    weights = pr.weights.get(pr.submission_policy) or {}
    keys = (pr.submitted or {}).get("models") or {}
    models = {g: ms for g, ms in group_models(matched).items() if float(weights.get(g, 0.0)) > 0 and g in keys}
    if not models:
        raise ConfigError("the teacher's matched members all have weight 0 in its submitted ensemble; retrain the "
                          "teacher with the new member's split.")
    return models, {"keys": {g: keys[g] for g in models}, "weights": {g: float(weights[g]) for g in models}}


def build_teacher_targets(spec: TeacherSpec, req: TeacherRequest) -> TeacherTargets:
    """The targets of the new member's training rows (distill) and selected test images, checked.

    Raises:
        ConfigError: a missing or incomplete source, another competition's source, no member on the new
            member's split, a merge that cannot be recomputed, or a threshold that selects no image.
    """
    folder, pr = _source(spec)
    classes = list(req.table.classes)
    _check_competition(spec, pr, classes)
    test = read_test_table(req.data, classes)
    probs = _test_targets(spec, folder, list(test.ids), classes)
    val_ids = {str(req.table.ids[i]) for i in req.val_idx}
    matched = _matched(spec, folder, pr, val_ids)
    whole, plain = {m.name for m in matched} == set(pr.members), _plain(pr)
    if not plain and (not whole or spec.kind == "distill"):
        raise ConfigError(
            f"teacher.source={spec.source} submitted a {(pr.submitted or {}).get('combine', {}).get('kind')} merge, "
            "which cannot be applied to " + ("training rows" if whole else "part of its members") + "; predict the "
            "teacher with a weighted merge (ensemble=caruana, mean, optimize or weighted).")
    models, plan = _plan(pr, matched) if plain else ({}, {})
    policies = recorded_policies(pr.policies)
    options = PredictOptions(view_reduce=str((pr.options or {}).get("view_reduce", "prob_mean")),
                             checkpoint=str(pr.checkpoint or "best"))
    method = str((pr.ensemble or {}).get("method", "prob_mean"))
    if not whole:
        probs = predict_plan(models, test, plan, policies, options, method).probs
    keep = np.arange(0)
    if spec.kind == "pseudo" or spec.test_rows:
        keep = select_test_rows(probs, float(spec.threshold), f"{folder / ENSEMBLE_TEST}")
    train_probs = None
    if spec.kind == "distill":
        train_probs = predict_plan(models, req.table.subset(req.train_idx), plan, policies, options, method).probs
    record = {
        "source": str(folder.resolve()), "teacher_members": [m.name for m in matched],
        "test_targets": ENSEMBLE_TEST if whole else "the matched members under their submitted policies and weights",
        "plan": plan or None, "combine": (pr.submitted or {}).get("combine"),
        "test_selected": int(len(keep)), "test_total": len(test),
        "test_mean_top_probability": float(probs[keep].max(axis=1).mean()) if len(keep) else None,
    }
    return TeacherTargets(train_probs, test.subset(keep), probs[keep], record)

