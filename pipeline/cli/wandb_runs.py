"""What ``pipeline-predict`` sends to its W&B run beyond its config: lineage, per-model OOF scores, a confusion matrix.

- Tags (:func:`predict_tags`): ``logger.tags``, the experiment, the members' models and the task.
- Lineage: each member's model artifact, as training logged it (``runtime.json``'s ``wandb_artifacts``), is
  declared an input of the run; the members of the model with the best OOF score alias their version ``best``.
  A member trained without W&B (``logger=csv``/``none``) is skipped with one log line.
- Scores: the table ``oof/models`` and the summary values ``oof/<model>/<metric>`` and ``oof/<model>/log_loss``
  (every model under the policy it was submitted with), and ``oof/ensemble/<metric>`` of what was submitted.
- The submitted ensemble's OOF confusion matrix ``oof/confusion_matrix`` (one label per image: multiclass, binary).
- The submission file as the artifact ``submission``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.io import read_json
from pipeline.core.metrics import get_metric
from pipeline.core.tracking import is_disabled, use_files_artifact
from pipeline.member.folder import find_members
from pipeline.member.manifest import MemberManifest, read_manifest
from pipeline.report.load import PredictRun, load_predict_run
from pipeline.report.score import submitted_oof, submitted_policies
from pipeline.train.sweep import ARTIFACTS_KEY, RUNTIME

__all__ = ["BEST", "predict_tags", "log_predict_run"]

log = logging.getLogger(__name__)

BEST = "best"
"""The alias the predict run gives the model artifacts of the model with the best OOF score."""


def _task_kind(manifest: MemberManifest) -> str:
    task = getattr(manifest, "task", None)  # a member recorded before tasks existed predicts one label per image
    kind = task.get("kind") if isinstance(task, dict) else getattr(task, "kind", None)
    return str(kind or "multiclass")


def predict_tags(members_spec: Any, experiment: str) -> list[str]:
    """The predict run's tags after ``logger.tags``: the experiment, the members' models and their task kinds."""
    members, _ = find_members(members_spec)
    return [experiment, *dict.fromkeys(m.manifest.model_name for m in members),
            *dict.fromkeys(_task_kind(m.manifest) for m in members)]


def log_predict_run(run: Any, summary: dict[str, Any], out_dir: Path) -> None:
    """Log everything the module docstring lists into the predict run (nothing when W&B is disabled)."""
    if is_disabled(run):
        return
    import wandb

    run.config.update({"members": list(summary["members"]), "policy": summary["submission_policy"],
                       "weights": summary["weights"][summary["submission_policy"]]}, allow_val_change=True)
    if summary["leaderboard"]:
        run.summary["leaderboard/" + summary["leaderboard"]["metric"]] = summary["leaderboard"]["score"]
    pr = _oof_run(out_dir)
    one_label = {_task_kind(read_manifest(Path(f))) for f in summary["members"].values()} <= {"multiclass", "binary"}
    best = _log_scores(run, pr, summary["metric"], one_label) if pr is not None else None
    _use_member_artifacts(run, summary["members"], set(pr.models.get(best, [])) if pr is not None and best else set())
    artifact = wandb.Artifact("submission", type="submission")
    artifact.add_file(summary["submission"])
    run.log_artifact(artifact)


def _oof_run(out_dir: Path) -> PredictRun | None:
    try:
        return load_predict_run(out_dir)
    except (FileNotFoundError, ValueError) as err:  # mode=submit: the OOF files may not all be there
        log.info("No OOF scores in the W&B run: %s", err)
        return None


def _log_scores(run: Any, pr: PredictRun, metric_name: str, one_label: bool) -> str | None:
    """Per-model OOF scores (table and summary), the submission's score and confusion matrix; the best model.

    Log loss and the confusion matrix only where each image has one label (multiclass, binary).
    """
    import wandb

    metric = get_metric(metric_name)
    rows, scores = [], {}
    for model, key in submitted_policies(pr).items():
        if (model, key) not in pr.oof:
            continue
        probs = pr.oof[(model, key)]
        scores[model] = metric(pr.labels, probs)
        loss = get_metric("log_loss")(pr.labels, probs) if one_label else None
        run.summary.update({f"oof/{model}/{metric.name}": scores[model],
                            **({f"oof/{model}/log_loss": loss} if loss is not None else {})})
        rows.append([model, len(pr.models[model]), pr.policy_names.get(key, key), scores[model], loss])
    logged: dict[str, Any] = {"oof/models": wandb.Table(
        columns=["model", "members", "policy", metric.name, "log_loss"], data=rows)}
    final = submitted_oof(pr, metric)
    if final is not None:
        run.summary[f"oof/ensemble/{metric.name}"] = metric(pr.labels, final)
        if one_label:
            logged["oof/confusion_matrix"] = wandb.plot.confusion_matrix(
                y_true=pr.labels.tolist(), preds=np.asarray(final).argmax(1).tolist(), class_names=pr.classes,
                title=f"Submitted ensemble, {len(pr.labels)} OOF rows")
    run.log(logged)
    if not scores:
        return None
    pick = max if metric.greater_is_better else min
    return pick(scores, key=lambda m: scores[m])


def _use_member_artifacts(run: Any, members: dict[str, str], best: set[str]) -> None:
    """Declare each member's model artifact an input of ``run``; members in ``best`` alias it ``best``."""
    for name, folder in members.items():
        path = Path(folder) / RUNTIME
        logged = (read_json(path) if path.is_file() else {}).get(ARTIFACTS_KEY, {}).get("model")
        if not logged:
            log.info("Member %s logged no W&B model artifact (trained with logger=csv or none); "
                     "it is not recorded as an input of the predict run.", name)
            continue
        problem = use_files_artifact(run, logged, Path(folder), [BEST] if name in best else [])
        if problem:
            log.info("Member %s: %s; its artifact is not recorded as an input of the predict run.", name, problem)
