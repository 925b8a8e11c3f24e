"""``predict.json``: one typed record of a predict run, built in one place and written once.

The predict stage (:func:`pipeline.predict.stage.predict`) fills what it measured and fitted; the
submission stage (:func:`pipeline.submission.stage.submit`) adds the submission, its metric reason,
the leaderboard line and what the command line knows (the W&B run, a user metric's ``_target_``), and
writes the file once. Readers (the report, export) load it through :meth:`PredictRecord.read`, which
checks that the keys every reader needs are there; keys added later have defaults, so an older
``predict.json`` still loads.
"""

from __future__ import annotations

from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json, write_json

__all__ = ["PREDICT_JSON", "PredictRecord"]

PREDICT_JSON = "predict.json"


@dataclass
class PredictRecord:
    """Everything ``pipeline-predict`` decided and measured (the keys of ``predict.json``).

    Attributes:
        mode: ``full`` or ``submit``.
        members: Member name → folder.
        skipped: Folder → why it was skipped.
        models: Model → its fold members.
        policies: Policy file key → its settings (``views`` included), every policy with OOF rows.
        policy_names: Policy file key → its readable name (what logs and the report show).
        submission_policy: The submission's policy key (``auto``: each model under its own choice).
        submission_policy_spec: That policy's settings (None for ``auto``).
        test_policies: Policy keys the test set was predicted under.
        ensemble: The ensemble settings (``EnsembleSpec`` as a dict).
        metric: The competition metric.
        metric_reason: Why that metric.
        weights: Policy key → model → weight (the submission's under ``submission_policy``).
        rule: The merge rule that was submitted (:data:`pipeline.predict.fitting.RULES` name); None in records
            written before it was recorded (readers derive it from ``ensemble``).
        cross_fitted: The submitted rule's cross-fitted OOF score ``{metric, score, parts, seed, policy}``,
            recomputed by the report with the same function and split; None when nothing was fitted.
        tta_choice: ``tta=auto``'s record per model, or None.
        ensemble_choice: ``ensemble=auto``'s record, or None.
        submitted: ``{models: model → policy key, combine: the fitted merge's info}``.
        weights_fitted_on: Submission policy → the policy whose OOF rows fitted its merge.
        oof_source: Policy → member → where its OOF predictions came from.
        timings: Model → policy → seconds per 1,000 images, the device they were measured on, forward passes
            per image.
        budget: The time budget's plan (:mod:`pipeline.predict.budget`), None without a budget:
            ``{setting, limit_seconds, n_test, configured: {plan, cost_seconds, fits}, plan (model → policy
            name), keys, cost_seconds, submitted_cost_seconds, reason, left_out, estimated, estimated_from,
            costs (model → policy → {seconds, source}), frontier, ...}``.
        classes: Class names, in probability-column order.
        n_test: Test images.
        policy_notes: Why a configured policy is missing from the keys.
        member_detail: Each member's sizes and eval group.
        options: The run options.
        prediction_cache: Member → cache folders read.
        distributed: Where each task ran (distributed runs only).
        submission: The submission file written.
        leaderboard: The score of the submission file on the hidden solution (the demo), or None.
        metric_target: A user metric's ``{_target_, greater_is_better}`` so the report can import it again.
        wandb: ``{run_id, dir, project, entity, mode, group, tags}`` of the predict run (the report run joins its
            group and tags), or None.
        task: The members' task (:class:`pipeline.core.task.Task` as a dict); None: one class per image.
        decision: Thresholds or cut points fitted on the OOF rows, with their in-sample and cross-fitted scores
            (:func:`pipeline.submission.task_stage.decide`), or None.
        checkpoint: Which checkpoint file predicted every member, OOF rows and test alike: ``best`` (the one
            the member's monitor chose, :data:`~pipeline.member.folder.CHECKPOINTS`) or ``last``.
    """

    members: dict[str, str]
    models: dict[str, list[str]]
    policies: dict[str, dict[str, Any]]
    submission_policy: str
    ensemble: dict[str, Any]
    metric: str
    weights: dict[str, dict[str, float]]
    classes: list[str]
    mode: str = "full"
    skipped: dict[str, str] = field(default_factory=dict)
    policy_names: dict[str, str] = field(default_factory=dict)
    submission_policy_spec: dict[str, Any] | None = None
    test_policies: list[str] = field(default_factory=list)
    rule: str | None = None
    cross_fitted: dict[str, Any] | None = None
    tta_choice: dict[str, Any] | None = None
    ensemble_choice: dict[str, Any] | None = None
    submitted: dict[str, Any] = field(default_factory=dict)
    weights_fitted_on: dict[str, str | None] = field(default_factory=dict)
    oof_source: dict[str, Any] = field(default_factory=dict)
    timings: dict[str, Any] = field(default_factory=dict)
    budget: dict[str, Any] | None = None
    n_test: int | None = None
    policy_notes: list[str] = field(default_factory=list)
    member_detail: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    prediction_cache: dict[str, list[str]] = field(default_factory=dict)
    distributed: dict[str, Any] | None = None
    metric_reason: str | None = None
    submission: str | None = None
    leaderboard: dict[str, Any] | None = None
    metric_target: dict[str, Any] | None = None
    wandb: dict[str, Any] | None = None
    task: dict[str, Any] | None = None
    decision: dict[str, Any] | None = None
    checkpoint: str = "best"
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The record as ``predict.json`` holds it (``extra`` keys at the top level)."""
        out = asdict(self)
        return {**{k: v for k, v in out.items() if k != "extra"}, **out["extra"]}

    def write(self, folder: Path) -> Path:
        """Write ``<folder>/predict.json`` atomically; returns the path."""
        path = Path(folder) / PREDICT_JSON
        write_json(path, self.as_dict())
        return path

    @classmethod
    def read(cls, folder: str | Path) -> PredictRecord:
        """Load ``<folder>/predict.json``.

        Raises:
            FileNotFoundError: No predict.json in the folder.
            MemberError: A malformed record (missing keys), naming the file and the keys.
        """
        path = Path(folder) / PREDICT_JSON
        if not path.is_file():
            raise FileNotFoundError(f"No predict.json in {Path(folder)}: run pipeline-predict first, or set predict_dir=...")
        data = read_json(path)
        if not isinstance(data, dict):
            raise MemberError(f"{path} is not a JSON object; was it written by pipeline-predict?")
        names = [f.name for f in fields(cls) if f.name != "extra"]
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [k for k in required if k not in data]
        if missing:
            raise MemberError(f"{path} lacks the keys {missing}; was it written by this version of pipeline-predict? "
                              "Re-run pipeline-predict for this folder.")
        known = {k: v for k, v in data.items() if k in names}
        return cls(**known, extra={k: v for k, v in data.items() if k not in names})
