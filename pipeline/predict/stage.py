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
    predict.json          the PredictRecord (written once, by the submission stage)
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
from pipeline.core.io import read_csv_as_text, safe_name, short_hash
from pipeline.core.metrics import get_metric
from pipeline.core.staging import staging_dir
from pipeline.core.task import Task
from pipeline.data.fingerprint import table_fingerprint
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_in_sample_order, read_train_table
from pipeline.member.cache import cache_dirs
from pipeline.member.folder import Member, at_checkpoint
from pipeline.member.predictions import file_layout, frame_labels, frame_outputs, write_predictions
from pipeline.predict.budget import plan_spec, price, timings, within_frames
from pipeline.predict.choose import METHODS_RULE, SINGLE, SINGLE_TTA, choose_ensemble, choose_tta, margin_of
from pipeline.predict.distributed import DistributeSpec, Runner, distributed, task_summary
from pipeline.predict.ensemble import check_ensemble, group_models, merge_files, model_oof, resolve_weights
from pipeline.predict.fitting import Rule, cross_fit, rule_name, submitted_rule
from pipeline.predict.merge import Combiner
from pipeline.predict.offline import cached_oof_sets
from pipeline.predict.options import check_member_chunk_sizes, check_options
from pipeline.predict.plan import eval_group, member_policy, policy_key, policy_names
from pipeline.predict.record import PredictRecord
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import BudgetSpec, EnsembleSpec, PredictOptions, check_budget, check_margin
from pipeline.predict.splits import check_same_oof_rows
from pipeline.predict.targets import check_task_options, members_task, task_or_none
from pipeline.predict.tta import TTAPolicy, canonical_policy, create_policy, views_per_image

__all__ = ["PredictResult", "predict"]

log = logging.getLogger(__name__)


@dataclass
class PredictResult:
    """What the predict stage leaves for the submission: its summary and the ensemble's test file.

    Attributes:
        record: What ``predict.json`` will hold (the submission stage completes and writes it).
        ensemble_path: ``ensemble_test.csv``, the ensemble's test probabilities under the submission policy.
        classes: Class names, in probability-column order.
        test: The test images, in the sample submission's order when there is one.
        sample_ids: The sample submission's ids, or None.
        stage: The staging folder holding ``oof/``, ``test/`` and ``ensemble_test.csv`` until the submission
            stage promotes them into the predict folder (:mod:`pipeline.core.staging`).
        task: What the members predict.
        oof_merged: Tasks other than class probabilities: the OOF targets and the submitted merge's OOF outputs
            (where thresholds and cut points are fitted); None otherwise.
    """

    record: PredictRecord
    ensemble_path: Path
    classes: list[str]
    test: ImageTable
    sample_ids: list[str] | None
    stage: Path
    task: Task | None = None
    oof_merged: tuple[np.ndarray, np.ndarray] | None = None


def _validation_rows(members: Sequence[Member], train: ImageTable) -> dict[str, np.ndarray]:
    """Each member's own validation rows (from its saved folds), as positions in the train table."""
    pos = {i: r for r, i in enumerate(train.ids)}
    rows = {}
    for m in members:
        folds = read_csv_as_text(m.file("folds.csv"), what="Member folds file")
        val_ids = folds.loc[folds["fold"] == str(m.manifest.fold), "id"]
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
    task = members_task(members)  # the members' own task and columns, not a new inference from the files
    train = read_train_table(DataSpec(**{**asdict(spec), "task": task.kind, "classes": None if task.is_value else classes}))
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
    if ens.weights in ("caruana", "fitted", "optimize") or ens.combine != "weighted" or ens.temperature:
        raise ConfigError(
            f"ensemble.weights={ens.weights} needs out-of-fold predictions (as do ensemble.combine=rank|stack|auto "
            "and ensemble.temperature), but no policy has cached OOF predictions for "
            "every member (mode=submit reads each member's val_predictions.csv and predictions/val-*.csv). Use "
            "mode=full with the training data, ensemble.weights=equal|given, or export the members with --predict-dir."
        )
    return None


def _write_oof(out_dir: Path, models: dict[str, list[Member]], oof: dict[str, dict[str, Path]], task: Task,
               order: list[str] | None) -> dict[str, dict[str, pd.DataFrame]]:
    """``oof/`` model-level files; returns the OOF frames per policy and model."""
    frames: dict[str, dict[str, pd.DataFrame]] = {}
    classes = list(task.columns)
    for key, per_member in oof.items():
        for g, ms in models.items():
            frame = model_oof({m.name: per_member[m.name] for m in ms}, classes, order, task)
            write_predictions(out_dir / "oof" / f"{safe_name(g)}__{key}.csv", frame["id"].tolist(),
                              frame_outputs(frame, np.float64), classes, frame_labels(frame), **file_layout(task))
            frames.setdefault(key, {})[g] = frame
    return frames


def _write_tests(out_dir: Path, models: dict[str, list[Member]], test: dict[tuple[str, str], Path],
                 test_keys: dict[str, list[str]], task: Task, ens: EnsembleSpec) -> None:
    """``test/`` model-level files: each model under its own keys (its folds averaged)."""
    for g, keys in test_keys.items():
        for key in keys:
            merge_files([test[(m.name, key)] for m in models[g]], out_dir / "test" / f"{safe_name(g)}__{key}.csv",
                        list(task.columns), None, ens.method, task=task_or_none(task))


def _oof_arrays(frames: dict[str, dict[str, pd.DataFrame]], model_keys: dict[str, str],
                ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The OOF labels and each model's probabilities under its key (same rows, same order, or an error)."""
    oofs = {g: frames[k][g] for g, k in model_keys.items()}
    ids = [f["id"].tolist() for f in oofs.values()]
    if any(i != ids[0] for i in ids):
        raise MemberError(f"Models {list(oofs)} have OOF predictions on different rows (were they trained on other "
                          "folds or another split?); fitted merges need the same rows.")
    labels = frame_labels(next(iter(oofs.values())))
    return labels, {g: frame_outputs(f) for g, f in oofs.items()}


def _fit_policies(frames: dict[str, dict[str, pd.DataFrame]], models: list[str], ens: EnsembleSpec,
                  metric: str, task: Task | None = None) -> dict[str, Combiner]:
    """The configured rule fitted once per policy on the models' OOF rows (its weights go to predict.json)."""
    rule = submitted_rule(ens, metric, task)
    normalize = task is None or task.softmax
    out = {}
    for key in frames:
        if ens.combine == "auto" or (ens.combine == "weighted" and not rule.fitted):
            w = resolve_weights(ens.weights if ens.weights in ("equal", "given") else "equal", len(models),
                                ens.given_weights)
            out[key] = Combiner("weighted", w, ens.method, info={"kind": "weighted", "weights": ens.weights},
                                normalize=normalize)
        else:
            labels, probs = _oof_arrays(frames, dict.fromkeys(models, key))
            out[key] = rule.fit(list(probs.values()), labels)
    return out


def _cross_fitted(rule: Rule, probs: dict[str, np.ndarray], labels: np.ndarray, ens: EnsembleSpec, metric: str,
                  key: str) -> dict[str, Any] | None:
    """The submitted rule's honest OOF score: :func:`~pipeline.predict.fitting.cross_fit` on the one split."""
    if not rule.scored_cross_fitted or len(labels) < 2 * ens.cross_fit_parts:
        return None
    crossed = cross_fit(rule, list(probs.values()), labels, ens.cross_fit_parts, ens.seed)
    return {"metric": metric, "score": float(get_metric(metric)(labels, crossed)), "parts": ens.cross_fit_parts,
            "seed": ens.seed, "policy": key, "rule": rule.name}


def _fit_merge(frames: dict[str, dict[str, pd.DataFrame]], model_keys: dict[str, str], ens: EnsembleSpec,
               metric: str, fitted: dict[str, Combiner], task: Task | None = None,
               ) -> tuple[Combiner, dict[str, str], dict[str, Any]]:
    """The submission's merge, the keys its test files need, and its record (rule, cross-fitted score, choice).

    A policy already fitted (``fitted``, every model under one key) is reused: each policy is fitted once.
    ``ensemble.combine=auto`` may fall back to the best single model (under ``none``, or under its tta=auto
    policy): the keys then name that model alone.
    """
    rule = submitted_rule(ens, metric, task)
    keys = set(model_keys.values())
    if ens.combine == "weighted" and not rule.fitted:  # nothing to fit (rank still merges by rank)
        fixed = resolve_weights(ens.weights, len(model_keys), ens.given_weights)
        combiner = Combiner("weighted", fixed, ens.method, info={"kind": "weighted", "weights": ens.weights},
                            normalize=task is None or task.softmax)
        return combiner, model_keys, {"rule": rule.name, "cross_fitted": None, "choice": None}
    labels, probs = _oof_arrays(frames, model_keys)
    if ens.combine != "auto":
        one = next(iter(keys)) if len(keys) == 1 else None
        combiner = fitted[one] if one in fitted else rule.fit(list(probs.values()), labels)
        key = next(iter(keys)) if len(keys) == 1 else "auto"
        return combiner, model_keys, {"rule": rule.name, "cross_fitted": _cross_fitted(rule, probs, labels, ens, metric,
                                                                                       key), "choice": None}
    none_key = next((k for k in frames if k.startswith("none.")), None)
    if none_key is None:
        raise ConfigError("ensemble.combine=auto compares every method with the best single model without TTA, which "
                          "needs OOF predictions under policy none; no member has them (mode=submit without cached OOF)")
    singles = {g: frame_outputs(frames[none_key][g]) for g in model_keys}
    combiner, record = choose_ensemble(probs, labels, singles, ens, metric, margin_of(ens.margin, ens.seed), task)
    chosen = record["chosen"]
    out = {"rule": METHODS_RULE[chosen], "choice": record,
           "cross_fitted": {"metric": metric, "score": record["scores"].get(chosen), "parts": ens.cross_fit_parts,
                            "seed": ens.seed, "rule": METHODS_RULE[chosen],
                            "policy": none_key if chosen == SINGLE else ("auto" if len(keys) > 1 else next(iter(keys)))}
           if chosen in record["scores"] else None}
    if chosen in (SINGLE, SINGLE_TTA):
        best = record["models"][0]
        key = none_key if chosen == SINGLE else model_keys[best]
        index = list(singles).index(best)
        single = Combiner("single", np.ones(1), combiner.method, None if combiner.temperatures is None else
                          combiner.temperatures[[index]], None, combiner.info, normalize=combiner.normalize)
        return single, {best: key}, out
    return combiner, model_keys, out


def _policy_notes(policies: Sequence[TTAPolicy]) -> list[str]:
    """Why a configured policy is missing from the keys: ten_crop without a flip is five_crop's views."""
    return [f"{p.name} with flip none makes five_crop's views: predicted and reported once, as five_crop"
            for p in policies if canonical_policy(p) is not p]


def predict(
    members: Sequence[Member], skipped: dict[str, str], spec: DataSpec, policies: Sequence[TTAPolicy],
    submit_policy: TTAPolicy, out_dir: Path, opts: PredictOptions, ens: EnsembleSpec, metric: str = "accuracy",
    candidates: Sequence[TTAPolicy] = (), max_passes: int | None = None,
    dist: DistributeSpec | None = None, tta_margin: float | None = 0.05, budget: BudgetSpec | None = None,
) -> PredictResult:
    """OOF rows under every policy, the test set under the submission policy, model files, weights, the ensemble.

    Writes ``oof/``, ``test/`` and ``ensemble_test.csv`` (the submission policy) into a staging folder inside
    ``out_dir`` and returns the :class:`~pipeline.predict.record.PredictRecord`;
    :func:`pipeline.submission.stage.submit` then writes the submission file and ``predict.json`` (once) and
    swaps all of them into ``out_dir``, so a run that fails leaves the previous results whole.
    With ``candidates`` (``tta=auto``) each model's policy is chosen among them on its OOF rows
    (:func:`pipeline.predict.choose.choose_policies`, at most ``max_passes`` views, leaving ``none`` only for a
    policy that beats it by ``tta_margin``) and ``submit_policy`` is not used; ``ens.combine`` other than
    ``weighted`` fits the merge of :mod:`pipeline.predict.merge` (:mod:`pipeline.predict.fitting`). With
    ``dist`` (:mod:`pipeline.predict.distributed`) the members' predictions run as one task per member.
    With ``budget`` (:mod:`pipeline.predict.budget`) the submission keeps within a time limit on the test set.

    Raises:
        ConfigError: A run option, ensemble setting, metric or crop override is invalid (before any work).
        MemberError: A member's eval transform contradicts its manifest, or its files are unusable.
    """
    out_dir = Path(out_dir)
    members = at_checkpoint(members, opts.checkpoint)  # checkpoint=last: every member's last.ckpt, or an error
    task = members_task(members)
    classes = list(task.columns)
    check_options(opts)
    check_task_options(task, opts)
    check_member_chunk_sizes(opts, members)  # a misspelt member name would be ignored
    models = group_models(members)
    check_ensemble(ens, list(models), metric, task_or_none(task))
    check_same_oof_rows(models, ens, metric)  # members of other splits, before any prediction
    check_margin("tta.margin", tta_margin)
    budget = budget if budget is not None and budget.active else None
    if budget is not None:
        check_budget(budget.seconds, budget.per_1000, budget.probe_images, task)
    need_none = opts.mode == "submit" or ens.combine == "auto"
    extra = [create_policy("none")] if need_none and not any(p.name == "none" for p in policies) else []
    auto = [canonical_policy(p) for p in candidates]
    if auto and max_passes is not None and min(map(views_per_image, auto)) > max_passes:
        raise ConfigError(f"tta.max_passes={max_passes}: no candidate policy fits; the cheapest costs "
                          f"{min(map(views_per_image, auto))} passes per image")
    submit_policy = canonical_policy(submit_policy)
    templates = {policy_key(p): p for p in map(canonical_policy, [*policies, *extra, *auto, submit_policy])}
    submit_key = policy_key(submit_policy)
    names = policy_names({k: asdict(p) for k, p in templates.items()})  # what logs and the report show
    detail = _check_members(members, templates, opts)
    test, sample_ids = read_test_in_sample_order(spec, classes)
    log.info("Predicting %d member(s) in %d model(s), mode=%s, policies %s", len(members), len(models), opts.mode,
             ", ".join(names.values()))

    with distributed(dist, out_dir) as (run, tasks):  # one task per member on Ray or SLURM, else in process
        oof, sources, order = _oof(members, spec, classes, templates, opts, out_dir, run)
        # A budget below the cheapest plan fails here, before the staging folder exists.
        priced = None if budget is None else price(budget, models, templates, oof, test, opts, run, names)
        stage = staging_dir(out_dir)  # results go aside; the submission stage swaps them in when all succeeded
        frames = _write_oof(stage, models, oof, task, order)
        tta_choice, model_keys = None, dict.fromkeys(models, submit_key)
        if auto:
            tta_choice = choose_tta(frames, templates, [k for k in map(policy_key, auto) if k in frames],
                                     list(models), metric, margin_of(tta_margin, ens.seed), max_passes,
                                     task_or_none(task))
            model_keys = {g: c["key"] for g, c in tta_choice.items()}
            chosen = set(model_keys.values())
            submit_key = chosen.pop() if len(chosen) == 1 else "auto"
            names["auto"] = "tta=auto (each model its own policy)"
        fit_key = _fit_key(submit_key, list(oof), templates, ens) if submit_key != "auto" else submit_key
        fitted = _fit_policies(frames, list(models), ens, metric, task_or_none(task))  # each policy fitted once
        weights = {k: dict(zip(models, c.weights.tolist())) for k, c in fitted.items()}
        combiner: Combiner | None = None
        fit_record: dict[str, Any] = {"rule": rule_name(ens), "cross_fitted": None, "choice": None}
        if fit_key is None:
            equal = resolve_weights(ens.weights, len(models), ens.given_weights)
            weights[submit_key] = dict(zip(models, equal.tolist()))
        else:
            if fit_key != submit_key:
                log.warning("No OOF predictions under the submission policy %s; its weights are fitted on "
                            "policy %s.", names.get(submit_key, submit_key), names.get(fit_key, fit_key))
            fit_keys = {g: fit_key if k == submit_key else k for g, k in model_keys.items()}
            combiner, used, fit_record = _fit_merge(frames, fit_keys, ens, metric, fitted, task_or_none(task))
            if used is not fit_keys:  # ensemble=auto chose the best single model (one view, or its own policy)
                model_keys, submit_key = used, next(iter(used.values()))
                fit_key = submit_key
            weights[submit_key] = dict.fromkeys(models, 0.0) | dict(zip(model_keys, combiner.weights.tolist()))

        budget_record = None
        if priced is not None:
            plan, budget_record = within_frames(priced, frames, model_keys, weights[submit_key], combiner, ens, metric,
                                                 names)
            if plan is not None:  # the configured submission does not fit: the chosen plan, its merge fitted on it
                ens_plan = plan_spec(ens, plan, list(models))
                combiner, model_keys, fit_record = _fit_merge(frames, plan, ens_plan, metric, {})
                keys = set(model_keys.values())
                submit_key = fit_key = keys.pop() if len(keys) == 1 else "auto"
                names.setdefault("auto", "each model its own policy (budget plan)")
                weights[submit_key] = dict.fromkeys(models, 0.0) | dict(zip(model_keys, combiner.weights.tolist()))

        # A model the fitted weights give 0 costs nothing: its test rows are never predicted (a plain weighted
        # merge skips it; stacking, ranks and temperatures take every model as an input).
        plain = combiner is None or (combiner.kind == "weighted" and combiner.temperatures is None)
        counted = {g: k for g, k in model_keys.items() if not plain or weights[submit_key].get(g, 0.0) > 0}
        if budget_record is not None and priced is not None:
            budget_record["submitted_cost_seconds"] = sum(priced["costs"][g][k] for g, k in counted.items())
        test_keys = ({g: list(templates) for g in models} if opts.test_all_policies
                     else {g: [k] for g, k in counted.items()})
        test_tag = "test-" + short_hash(table_fingerprint(test, out_dir), 10)
        test_files: dict[tuple[str, str], Path] = {}
        for key in dict.fromkeys(k for keys in test_keys.values() for k in keys):
            todo = [m for g, keys in test_keys.items() if key in keys for m in models[g]]
            test_files |= run(todo, test, test_tag, {key: templates[key]}, opts, fallback_dir=out_dir)
    _write_tests(stage, models, test_files, test_keys, task, ens)
    if plain:
        paths = [stage / "test" / f"{safe_name(g)}__{k}.csv" for g, k in counted.items()]
        ens_path = merge_files(paths, stage / "ensemble_test.csv", classes, [weights[submit_key][g] for g in counted],
                               ens.method, task=task_or_none(task))
    else:
        assert combiner is not None  # a merge without a fitted combiner is plain
        paths = [stage / "test" / f"{safe_name(g)}__{k}.csv" for g, k in model_keys.items()]
        ens_path = merge_files(paths, stage / "ensemble_test.csv", classes, None, ens.method,
                               50_000 if combiner.rowwise else None, combiner.apply, task_or_none(task))
    policy_set = {k: {**asdict(templates[k]), "views": views_per_image(templates[k])} for k in oof}
    record = PredictRecord(
        mode=opts.mode, members={m.name: str(m.path) for m in members}, skipped=skipped,
        models={g: [m.name for m in ms] for g, ms in models.items()}, policies=policy_set,
        policy_names=names, submission_policy=submit_key,
        submission_policy_spec=asdict(templates[submit_key]) if submit_key in templates else None,
        test_policies=list(dict.fromkeys(k for keys in test_keys.values() for k in keys)), ensemble=asdict(ens),
        metric=metric, weights=weights, rule=str(fit_record["rule"]), cross_fitted=fit_record["cross_fitted"],
        tta_choice=tta_choice, ensemble_choice=fit_record["choice"],
        submitted={"models": model_keys, "combine": None if combiner is None else combiner.info},
        weights_fitted_on={submit_key: fit_key}, oof_source=sources,
        timings=timings(models, templates, oof, test_files), budget=budget_record, classes=classes, n_test=len(test),
        policy_notes=_policy_notes([*policies, *candidates]), member_detail=detail, options=asdict(opts),
        prediction_cache={m.name: [str(d) for d in cache_dirs(m, opts.prediction_cache_dir, out_dir).read]
                          for m in members},
        distributed=task_summary(tasks, dist) if tasks else None, checkpoint=opts.checkpoint,
    )
    merged = None
    if not task.softmax and fit_key is not None:  # the merge's OOF outputs: where decisions are fitted
        labels, probs = _oof_arrays(frames, {g: fit_key if k == submit_key else k for g, k in model_keys.items()})
        merge = combiner or Combiner("weighted", np.array([weights[submit_key][g] for g in probs]), ens.method,
                                     normalize=False)
        merged = (labels, merge.apply(list(probs.values())))
    return PredictResult(record, ens_path, classes, test, sample_ids, stage, task, merged)
