"""The predict stage: members → OOF and test predictions under every policy → model files → fitted weights.

Then members are grouped into *models* (one config across its folds): a model's validation
predictions are its members' concatenated out-of-fold rows, and its test prediction is the mean of its
fold members. Models are merged into the ensemble with equal, given or Caruana-fitted weights; the
weights are fitted on OOF rows only, never on the test rows.

Outputs, in ``<sweep>/predict/``::

    ensemble_test.csv     the ensemble's test probabilities (submission policy)
    oof/<model>__<policy>.csv, test/<model>__<policy>.csv   model-level predictions
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

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json, safe_name, short_hash, write_json
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_in_sample_order, read_train_table
from pipeline.member.folder import Member
from pipeline.member.predictions import PROB_PREFIX, write_predictions
from pipeline.predict.ensemble import fit_weights, group_models, merge_files, model_oof
from pipeline.predict.runner import policy_key, predict_members
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import TTAPolicy, views_per_image

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
        folds = pd.read_csv(m.path / "folds.csv", dtype={"id": str})
        val_ids = folds.loc[folds["fold"] == m.manifest.fold, "id"]
        missing = [i for i in val_ids if i not in pos]
        if missing:
            raise MemberError(f"{m.path}/folds.csv lists ids not in the training data, e.g. {missing[:3]}.")
        rows[m.name] = np.array(sorted(pos[i] for i in val_ids))
    return rows


def predict(
    members: Sequence[Member], skipped: dict[str, str], spec: DataSpec, policies: Sequence[TTAPolicy],
    submit_policy: TTAPolicy, out_dir: Path, opts: PredictOptions, ens: EnsembleSpec, metric: str = "accuracy",
) -> PredictResult:
    """Predict OOF and test rows under every policy, write model-level files, fit weights, merge the ensemble.

    Writes ``oof/``, ``test/``, ``ensemble_test.csv`` (the submission policy) and ``predict.json`` into
    ``out_dir``; :func:`pipeline.submission.stage.submit` then writes the submission file from them.
    """
    classes = members[0].manifest.classes
    all_policies = {policy_key(p): p for p in [*policies, submit_policy]}
    submit_key = policy_key(submit_policy)
    models = group_models(members)
    log.info("Predicting %d member(s) in %d model(s) under %s", len(members), len(models), list(all_policies))

    # 1. validation (OOF) rows of every member, every policy, for weights and the report
    train = read_train_table(DataSpec(**{**asdict(spec), "classes": classes}))
    val_files = predict_members(members, train, "val", all_policies, opts, _validation_rows(members, train))
    # 2. the test set, once, for every member and policy
    test, sample_ids = read_test_in_sample_order(spec, classes)
    test_tag = "test-" + short_hash("\n".join(map(str, test.paths)), 10)
    test_files = predict_members(members, test, test_tag, all_policies, opts)

    out_dir.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {
        "members": {m.name: str(m.path) for m in members}, "skipped": skipped,
        "models": {g: [m.name for m in ms] for g, ms in models.items()},
        "policies": {k: {**asdict(p), "views": views_per_image(p)} for k, p in all_policies.items()},
        "submission_policy": submit_key, "ensemble": asdict(ens), "metric": metric, "weights": {}, "timings": {},
        "classes": classes, "n_test": len(test), "options": asdict(opts),
    }
    for key in all_policies:
        oofs = {}
        for g, ms in models.items():
            name = f"{safe_name(g)}__{key}"
            oof = model_oof({m.name: val_files[(m.name, key)] for m in ms}, classes, train.ids)
            oof_path = out_dir / "oof" / f"{name}.csv"
            oof_probs = oof.filter(like=PROB_PREFIX).to_numpy()
            write_predictions(oof_path, oof["id"].tolist(), oof_probs, classes, oof["label"].tolist())
            merge_files([test_files[(m.name, key)] for m in ms], out_dir / "test" / f"{name}.csv", classes, None, ens.method)
            oofs[g] = oof
            timing = [read_json(test_files[(m.name, key)].with_suffix(".json")) for m in ms]
            summary["timings"].setdefault(g, {})[key] = {
                "seconds_per_1000": sum(t["seconds_per_1000"] for t in timing),
                "forward_passes_per_image": sum(t["views"] for t in timing),
            }
        summary["weights"][key] = dict(zip(models, fit_weights(oofs, ens, metric).tolist()))

    weights = list(summary["weights"][submit_key].values())
    ens_path = merge_files([out_dir / "test" / f"{safe_name(g)}__{submit_key}.csv" for g in models],
                           out_dir / "ensemble_test.csv", classes, weights, ens.method)
    write_json(out_dir / "predict.json", summary)
    return PredictResult(summary, ens_path, classes, test, sample_ids)
