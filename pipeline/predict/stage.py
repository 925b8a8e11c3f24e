"""The predict stage: members → OOF predictions (every policy) + test predictions (submission policy) → weights.

Members are grouped into *models* (one config across its folds): a model's validation predictions are
its members' concatenated out-of-fold rows, and its test prediction is the mean of its fold members.
Models are merged into the ensemble with equal, given or Caruana-fitted weights; the weights are fitted
on OOF rows only, never on the test rows.

Two modes (``mode``):

- ``full``: the training images are read and every member predicts its own validation rows under every
  policy (the report's rows, and their measured cost);
- ``submit`` (inference only, :mod:`pipeline.predict.offline`): only member folders (or an export) and the
  test images; weights are fitted on the OOF predictions the members already carry.

In both, the test set is predicted under the submission policy only (``test_all_policies=true`` adds the
report policies). Every setting is checked before the first prediction, so a bad one leaves nothing behind.

Outputs, in ``<sweep>/predict/``::

    ensemble_test.csv     the ensemble's test probabilities (submission policy)
    oof/<model>__<policy>.csv   model-level OOF predictions, every policy with OOF rows
    test/<model>__<policy>.csv  model-level test predictions, the submission policy (or every policy)
    predict.json          members, skipped folders, policies, weights, timings (+ submission, leaderboard)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.io import read_json, safe_name, short_hash, write_json
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_in_sample_order, read_train_table
from pipeline.member.cache import cache_dirs
from pipeline.member.folder import Member
from pipeline.member.predictions import PROB_PREFIX, write_predictions
from pipeline.predict.distributed import DistributeSpec, Runner, distributed, task_summary
from pipeline.predict.ensemble import check_ensemble, fit_weights, group_models, merge_files, model_oof, resolve_weights
from pipeline.predict.offline import cached_oof_sets
from pipeline.predict.options import check_options
from pipeline.predict.plan import eval_group, member_policy, policy_key
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import TTAPolicy, create_policy, views_per_image

__all__ = ["PredictResult", "predict"]

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """What the predict stage leaves for the submission: its summary and the ensemble's test file.

    Attributes:
        summary: ``predict.json`` as written.
        ensemble_path: ``ensemble_test.csv``, the ensemble's test probabilities under the submission policy.
        classes: Class names, in probability-column order.
        test: The test images, in the sample submission's order when there is one.
        sample_ids: The sample submission's ids, or None.
    """

    summary: dict[str, Any]
    ensemble_path: Path
    classes: list[str]
    test: ImageTable
    sample_ids: list[str] | None


def _validation_rows(members: Sequence[Member], train: ImageTable) -> dict[str, np.ndarray]:
    """Each member's own validation rows (from its saved folds), as positions in the train table."""
    pos = {i: r for r, i in enumerate(train.ids)}
    rows = {}
    for m in members:
        folds = pd.read_csv(m.file("folds.csv"), dtype={"id": str})
        val_ids = folds.loc[folds["fold"] == m.manifest.fold, "id"]
        missing = [i for i in val_ids if i not in pos]
        if missing:
            raise MemberError(f"{m.path}/folds.csv lists ids not in the training data, e.g. {missing[:3]}.")
        rows[m.name] = np.array(sorted(pos[i] for i in val_ids))
    return rows


def _check_members(members: Sequence[Member], templates: dict[str, TTAPolicy], opts: PredictOptions) -> dict[str, Any]:
    """Every member's eval transform and every policy's crop for it, before anything runs; their record."""
    detail = {}
    for m in members:
        group = eval_group(m)
        crops = {k: member_policy(p, m, opts.allow_crop_override).crop_size for k, p in templates.items()}
        detail[m.name] = {"image_size": m.manifest.image_size, "crop_size": m.manifest.crop_size,
                          "in_chans": m.manifest.in_chans, "eval_group": group.key, "policy_crops": crops}
    return detail


def _oof(members: Sequence[Member], spec: DataSpec, classes: list[str], templates: dict[str, TTAPolicy],
         opts: PredictOptions, out_dir: Path, run: Runner = predict_members,
         ) -> tuple[dict[str, dict[str, Path]], dict[str, Any], list[str] | None]:
    """Each policy's OOF prediction file per member, where each came from, and the row order.

    Sources: ``predicted`` (full mode: this run's computation, or the identical one cached), or those of
    :func:`pipeline.predict.offline.cached_oof` (inference-only mode).
    """
    if opts.mode == "submit":
        files, sources = cached_oof_sets(members, templates, opts, check_options(opts), out_dir)
        return files, sources, None
    train = read_train_table(DataSpec(**{**asdict(spec), "classes": classes}))
    val = run(members, train, "val", templates, opts, _validation_rows(members, train), out_dir)
    files = {k: {m.name: val[(m.name, k)] for m in members} for k in templates}
    return files, {k: dict.fromkeys(files[k], "predicted") for k in templates}, train.ids


def _fit_key(submit_key: str, oof_keys: Sequence[str], templates: dict[str, TTAPolicy], ens: EnsembleSpec) -> str | None:
    """The policy whose OOF rows fit the submission's weights: its own, else ``none`` (inference-only mode)."""
    if submit_key in oof_keys:
        return submit_key
    nones = [k for k in oof_keys if templates[k].name == "none"]
    if nones:
        return nones[0]
    if ens.weights in ("caruana", "fitted"):
        raise ConfigError(
            "ensemble.weights=caruana needs out-of-fold predictions, but no policy has cached OOF predictions for "
            "every member (mode=submit reads each member's val_predictions.csv and predictions/val-*.csv). Use "
            "mode=full with the training data, ensemble.weights=equal|given, or export the members with --predict-dir."
        )
    return None


def _sidecar(path: Path | None) -> dict[str, Any] | None:
    """A prediction file's timing sidecar (``val_predictions.csv`` from training has none)."""
    side = None if path is None else path.with_suffix(".json")
    return read_json(side) if side is not None and side.is_file() else None


def _timings(models: dict[str, list[Member]], templates: dict[str, TTAPolicy], oof: dict[str, dict[str, Path]],
             test: dict[tuple[str, str], Path]) -> dict[str, dict[str, Any]]:
    """Seconds per 1,000 images per model and policy, and forward passes per image.

    Seconds are measured on the OOF rows, where every policy runs; a policy without OOF timings (inference-
    only mode) uses the test run's, and one with neither has ``None`` (the report then compares passes).
    """
    out: dict[str, dict[str, Any]] = {}
    for g, ms in models.items():
        for key, policy in templates.items():
            measured, where = None, None
            for source, files in (("oof", {m.name: oof.get(key, {}).get(m.name) for m in ms}),
                                  ("test", {m.name: test.get((m.name, key)) for m in ms})):
                sides = [_sidecar(files[m.name]) for m in ms]
                if all(sides):
                    measured, where = sum(float(s["seconds_per_1000"]) for s in sides if s), source
                    break
            out.setdefault(g, {})[key] = {"seconds_per_1000": measured, "measured_on": where,
                                          "forward_passes_per_image": len(ms) * views_per_image(policy)}
    return out


def _write_models(out_dir: Path, models: dict[str, list[Member]], oof: dict[str, dict[str, Path]],
                  test: dict[tuple[str, str], Path], test_keys: Sequence[str], classes: list[str],
                  order: list[str] | None, ens: EnsembleSpec) -> dict[str, dict[str, pd.DataFrame]]:
    """``oof/`` and ``test/`` model-level files; returns the OOF frames per policy and model."""
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    for key, per_member in oof.items():
        for g, ms in models.items():
            frame = model_oof({m.name: per_member[m.name] for m in ms}, classes, order)
            write_predictions(out_dir / "oof" / f"{safe_name(g)}__{key}.csv", frame["id"].tolist(),
                              frame.filter(like=PROB_PREFIX).to_numpy(), classes, frame["label"].tolist())
            frames.setdefault(key, {})[g] = frame
    for key in test_keys:
        for g, ms in models.items():
            merge_files([test[(m.name, key)] for m in ms], out_dir / "test" / f"{safe_name(g)}__{key}.csv", classes,
                        None, ens.method)
    for sub, keys in (("oof", list(oof)), ("test", list(test_keys))):  # an earlier run's files would read as current
        written = {f"{safe_name(g)}__{k}.csv" for g in models for k in keys}
        for stale in (out_dir / sub).glob("*__*.csv"):
            if stale.name not in written:
                stale.unlink()
    return frames


def predict(
    members: Sequence[Member], skipped: dict[str, str], spec: DataSpec, policies: Sequence[TTAPolicy],
    submit_policy: TTAPolicy, out_dir: Path, opts: PredictOptions, ens: EnsembleSpec, metric: str = "accuracy",
    dist: DistributeSpec | None = None,
) -> PredictResult:
    """OOF rows under every policy, the test set under the submission policy, model files, weights, the ensemble.

    Writes ``oof/``, ``test/``, ``ensemble_test.csv`` (the submission policy) and ``predict.json`` into
    ``out_dir``; :func:`pipeline.submission.stage.submit` then writes the submission file from them. With
    ``dist`` (:mod:`pipeline.predict.distributed`) the members' predictions run as one task per member.

    Raises:
        ConfigError: A run option, ensemble setting, metric or crop override is invalid (before any work).
        MemberError: A member's eval transform contradicts its manifest, or its files are unusable.
    """
    out_dir = Path(out_dir)
    classes = list(members[0].manifest.classes)
    check_options(opts)
    models = group_models(members)
    check_ensemble(ens, list(models), metric)
    extra = [create_policy("none")] if opts.mode == "submit" and not any(p.name == "none" for p in policies) else []
    templates = {policy_key(p): p for p in [*policies, *extra, submit_policy]}
    submit_key = policy_key(submit_policy)
    detail = _check_members(members, templates, opts)
    test, sample_ids = read_test_in_sample_order(spec, classes)
    log.info("Predicting %d member(s) in %d model(s), mode=%s, policies %s", len(members), len(models), opts.mode,
             list(templates))

    with distributed(dist, out_dir) as (run, tasks):
        oof, sources, order = _oof(members, spec, classes, templates, opts, out_dir, run)
        fit_key = _fit_key(submit_key, list(oof), templates, ens)
        test_keys = list(templates) if opts.test_all_policies else [submit_key]
        test_tag = "test-" + short_hash("\n".join(map(str, test.paths)), 10)
        test_files = run(members, test, test_tag, {k: templates[k] for k in test_keys}, opts, fallback_dir=out_dir)

    out_dir.mkdir(parents=True, exist_ok=True)
    frames = _write_models(out_dir, models, oof, test_files, test_keys, classes, order, ens)
    weights = {k: dict(zip(models, fit_weights(f, ens, metric).tolist())) for k, f in frames.items()}
    if fit_key is None:
        weights[submit_key] = dict(zip(models, resolve_weights(ens.weights, len(models), ens.given_weights).tolist()))
    elif fit_key != submit_key:
        weights[submit_key] = weights[fit_key]
        log.warning("No OOF predictions under the submission policy %s; its weights are fitted on policy %s.",
                    submit_key, fit_key)
    ens_path = merge_files([out_dir / "test" / f"{safe_name(g)}__{submit_key}.csv" for g in models],
                           out_dir / "ensemble_test.csv", classes, list(weights[submit_key].values()), ens.method)
    summary: dict[str, Any] = {
        "mode": opts.mode, "members": {m.name: str(m.path) for m in members}, "skipped": skipped,
        "models": {g: [m.name for m in ms] for g, ms in models.items()},
        "policies": {k: {**asdict(templates[k]), "views": views_per_image(templates[k])} for k in oof},
        "submission_policy": submit_key, "submission_policy_spec": asdict(submit_policy),
        "test_policies": test_keys, "ensemble": asdict(ens), "metric": metric, "weights": weights,
        "weights_fitted_on": {submit_key: fit_key}, "oof_source": sources,
        "timings": _timings(models, templates, oof, test_files), "classes": classes, "n_test": len(test),
        "member_detail": detail, "options": asdict(opts),
        "prediction_cache": {m.name: [str(d) for d in cache_dirs(m, opts.prediction_cache_dir, out_dir).read]
                             for m in members},
    }
    if tasks:
        summary["distributed"] = task_summary(tasks, dist)
    write_json(out_dir / "predict.json", summary)
    return PredictResult(summary, ens_path, classes, test, sample_ids)
