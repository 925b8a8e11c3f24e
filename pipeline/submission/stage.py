"""The submission stage: members → the predict stage → the competition's file, validated, and its leaderboard score.

:func:`submit` is what ``pipeline-predict`` runs. The format is settled first, from the members' classes
and the sample submission, so a bad format stops the run before any prediction is made.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, duplicates, examples
from pipeline.core.io import read_csv_as_text
from pipeline.core.metrics import get_metric
from pipeline.core.staging import discard, promote
from pipeline.core.task import Task
from pipeline.data.spec import DataSpec
from pipeline.member.folder import find_members
from pipeline.predict.distributed import DistributeSpec
from pipeline.predict.spec import BudgetSpec, EnsembleSpec, PredictOptions
from pipeline.predict.stage import PredictResult, predict
from pipeline.predict.targets import members_task
from pipeline.predict.tta import TTAPolicy
from pipeline.submission.build import write_submission_from_predictions
from pipeline.submission.format import SubmissionError, SubmissionFormat, format_from_config, infer_format
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.task_stage import check_task_metric, decide, task_format, task_solution_score, write_task

__all__ = ["submission_format", "read_solution", "solution_score", "submit", "default_metric"]

log = logging.getLogger(__name__)


def submission_format(spec: DataSpec, opts: SubmissionOptions, classes: Sequence[str]) -> SubmissionFormat:
    """The submission's format: inferred from ``data.sample_submission`` unless ``submission.kind`` is set.

    Without a sample (a plain folder of test images) the default is ``label+probabilities``:
    ``id,label,<one probability column per class>``.

    Raises:
        SubmissionError: The sample's columns do not fit the members' classes, or a setting is invalid.
        FileNotFoundError: ``data.sample_submission`` names a file that does not exist.
    """
    sample = spec.root_path / spec.sample_submission if spec.sample_submission else None
    if sample is not None and not sample.is_file():
        raise FileNotFoundError(f"Sample submission {sample} does not exist (config key data.sample_submission).")
    if opts.kind is None and sample is not None:
        if opts.k is not None:
            raise SubmissionError(f"submission.k={opts.k} needs submission.kind=topk")
        return infer_format(sample, classes, id_column=opts.id_column, label_as=opts.label_as)  # type: ignore[arg-type]
    return format_from_config(opts.kind, opts.id_column or (None if sample else spec.id_col), opts.label_column,
                              opts.label_as, classes, sample_csv=sample, k=opts.k)


def default_metric(fmt: SubmissionFormat, sample: str | None) -> tuple[str, str]:
    """The metric to judge a submission by when ``metric`` is not set, and why (said in the report).

    One probability column per class and no label (how log-loss competitions ask): ``log_loss``;
    a space-separated top-k label: ``map@<k>``; otherwise (a label, or label + probabilities): ``accuracy``.
    """
    where = f"the sample submission ({sample})" if sample else "the submission format (submission.kind)"
    if fmt.kind == "probabilities":
        return "log_loss", f"log loss: {where} has one probability column per class"
    if fmt.kind == "topk":
        return f"map@{fmt.k}", f"MAP@{fmt.k}: {where} asks for the {fmt.k} most probable classes per row"
    return "accuracy", f"accuracy: {where} asks for a class label ({fmt.kind})"


def _submitted_probs(path: Path, fmt: SubmissionFormat, classes: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """The written submission read back as ``[N, K]`` scores: its probabilities, or one-hot labels (top-k: ranked)."""
    df = read_csv_as_text(path)
    ids = df[fmt.id_column].tolist()
    out = np.zeros((len(df), len(classes)))
    index = {c: i for i, c in enumerate(classes)}
    if fmt.has_probabilities and fmt.kind != "label+probabilities":
        for col, name in zip(fmt.prob_value_columns, fmt.prob_columns or []):
            out[:, index[name]] = df[col].astype(float).to_numpy()
        return ids, out / out.sum(axis=1, keepdims=True)
    cells = df[str(fmt.label_column)].tolist()
    for r, cell in enumerate(cells):
        for rank, token in enumerate(cell.split(" ") if fmt.kind == "topk" else [cell]):
            out[r, int(token) if fmt.label_as == "index" else index[token]] = 1.0 / (rank + 1)
    return ids, out / out.sum(axis=1, keepdims=True)


def read_solution(spec: DataSpec, classes: Sequence[str], fmt: SubmissionFormat | None = None) -> pd.Series | None:
    """The solution file's labels by id (the demo's hidden answers), checked before any prediction is made.

    None when ``data.solution`` is unset or names no file (no leaderboard score). With ``fmt`` and a sample
    submission, the solution must also hold every id of the sample (the submission's rows).

    Raises:
        DataError: naming the file and ``data.solution``: a missing column, an empty or repeated id, labels that
            are not classes of the members (with the rows, the labels and the accepted classes), or sample ids
            it lacks.
    """
    if not spec.solution or not (spec.root_path / spec.solution).is_file():
        return None
    path = spec.root_path / spec.solution
    where = f"{path} (config key data.solution)"
    skip = "or set data.solution=null to skip the leaderboard score"
    df = read_csv_as_text(path, key="data.solution", what="Solution file", require_rows=True)
    if missing := [c for c in (spec.id_col, spec.label_col) if c not in df.columns]:
        raise DataError(f"{where}: no column {missing}; found {list(df.columns)}. Set data.id_col and data.label_col, "
                        f"{skip}.")
    ids, labels = df[spec.id_col], df[spec.label_col]
    if repeated := duplicates([i for i in ids if i.strip()]):
        raise DataError(f"{where}: ids {examples(repeated)} occur more than once in column {spec.id_col!r}; fix them, "
                        f"{skip}.")
    for bad, what in ((ids.str.strip() == "", f"empty ids in column {spec.id_col!r}"),
                      (~labels.isin(list(classes)), f"labels that are not classes in column {spec.label_col!r}")):
        if bad.any():
            rows = np.flatnonzero(bad.to_numpy())
            raise DataError(
                f"{where}: {what} in {len(rows)} row(s): lines {examples([int(r) + 2 for r in rows])} (ids "
                f"{examples(ids.iloc[rows].tolist())}, labels {examples(sorted(set(labels.iloc[rows])))}); accepted: "
                f"{examples(list(classes), 10)}. Fix those rows, {skip}.")
    solution = pd.Series(labels.to_numpy(), index=ids.to_numpy())
    sample = spec.root_path / spec.sample_submission if spec.sample_submission else None
    if fmt is not None and sample is not None and sample.is_file():
        _check_covers(solution, read_csv_as_text(sample)[fmt.id_column].tolist(), where)
    return solution


def _check_covers(solution: pd.Series, ids: Sequence[str], where: str) -> None:
    if absent := [i for i in ids if i not in solution.index]:
        raise DataError(f"{where}: {len(absent)} submission id(s) have no row, e.g. {examples(absent)}; a solution "
                        "file holds every test id. Fix it, or set data.solution=null to skip the leaderboard score.")


def solution_score(spec: DataSpec, submission: Path, fmt: SubmissionFormat, classes: Sequence[str],
                   metric: str, solution: pd.Series | None = None) -> dict[str, Any] | None:
    """Leaderboard score of the submission file as written, against the competition's solution file (the demo).

    It scores the file that is submitted, read back: labels one-hot (top-k by rank), probabilities as given.
    ``solution``: the file as :func:`read_solution` read and checked it (None: read it now).

    Raises:
        DataError: the solution file is unusable (see :func:`read_solution`) or lacks ids of the submission.
    """
    sol = solution if solution is not None else read_solution(spec, classes)
    if sol is None:
        return None
    ids, probs = _submitted_probs(submission, fmt, classes)
    _check_covers(sol, ids, f"{spec.root_path / str(spec.solution)} (config key data.solution)")
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[sol[i]] for i in ids])
    return {"metric": metric, "score": float(get_metric(metric)(labels, probs)), "rows": len(ids),
            "file": str(submission), "note": "leaderboard score of the submission file on the hidden solution, not "
            "validation"}


def submit(
    members_spec: str | Sequence[str], spec: DataSpec, policies: Sequence[TTAPolicy], submit_policy: TTAPolicy,
    out_dir: Path, opts: PredictOptions, ens: EnsembleSpec, sub: SubmissionOptions, metric: str | None = None,
    candidates: Sequence[TTAPolicy] = (), max_passes: int | None = None, dist: DistributeSpec | None = None,
    tta_margin: float | None = 0.05, run_info: dict[str, Any] | None = None, budget: BudgetSpec | None = None,
) -> dict[str, Any]:
    """Run the whole inference stage and write the submission; return the summary written to ``predict.json``.

    ``metric`` None picks one from the submission format (:func:`default_metric`); ``ens.fit_metric`` None
    fits the weights for the metric. ``predict.json`` records both and ``metric_reason``. ``candidates`` and
    ``max_passes`` are ``tta=auto``'s (see :func:`pipeline.predict.stage.predict`). ``dist`` runs the members'
    predictions as one task per member on Ray or SLURM (:mod:`pipeline.predict.distributed`); None or
    ``backend: none`` runs them in this process. ``tta_margin`` is ``tta.margin``; ``run_info`` sets record
    fields only the command line knows (``wandb``, ``metric_target``). ``budget`` keeps the submission within a
    time limit (:mod:`pipeline.predict.budget`).

    >>> summary = submit("outputs/demo/demo", DataSpec(root="data/fashion-mnist-demo"), [],  # doctest: +SKIP
    ...                  create_policy("ten_crop"), Path("outputs/demo/demo/predict"), PredictOptions(),
    ...                  EnsembleSpec(weights="caruana"), SubmissionOptions())
    """
    members, skipped = find_members(members_spec)
    for folder, why in skipped.items():
        log.warning("Skipping %s: %s", folder, why)
    task = members_task(members)
    if task.kind != "multiclass":
        return _submit_task(members, skipped, task, spec, (policies, submit_policy, candidates, max_passes), out_dir,
                            opts, ens, sub, metric, dist, tta_margin, run_info, budget)
    classes = members[0].manifest.classes
    fmt = submission_format(spec, sub, classes)
    solution = read_solution(spec, classes, fmt)  # a bad solution file stops the run before any prediction
    metric, reason = (metric, "set by the metric setting") if metric else default_metric(fmt, spec.sample_submission)
    ens = replace(ens, fit_metric=ens.fit_metric or metric)
    log.info("Metric: %s (%s); ensemble weights fitted for %s.", metric, reason, ens.fit_metric)
    try:
        result = predict(members, skipped, spec, policies, submit_policy, out_dir, opts, ens, metric, candidates, max_passes,
                         dist, tta_margin, budget)
        record = result.record
        record.metric_reason = reason
        expected = result.sample_ids or result.test.ids
        # Streamed from the ensemble's file: memory holds one chunk of rows, never the N × K array.
        staged = write_submission_from_predictions(result.ensemble_path, result.stage / sub.filename, fmt, classes,
                                                   expected, result.sample_ids)
        # the demo's hidden answers
        return _land(result, out_dir, sub, solution_score(spec, staged, fmt, classes, metric, solution), run_info)
    except BaseException:
        discard(out_dir)  # the staged results of this failed run; the previous ones are untouched
        raise


def _land(result: PredictResult, out_dir: Path, sub: SubmissionOptions, leaderboard: dict[str, Any] | None,
          run_info: dict[str, Any] | None) -> dict[str, Any]:
    """Complete ``predict.json`` (submission, leaderboard, what only the command line knows), write it once, and
    swap the staged results in, ``predict.json`` last (a failed run leaves the previous ones whole)."""
    record = result.record
    record.submission = str(Path(out_dir) / sub.filename)
    record.leaderboard = leaderboard
    if record.leaderboard:
        record.leaderboard["file"] = record.submission
    for key, value in (run_info or {}).items():  # what only the command line knows (W&B run, a user metric)
        setattr(record, key, value)
    record.write(result.stage)  # predict.json, written once
    promote(result.stage, out_dir, ["oof", "test", "ensemble_test.csv", sub.filename, "predict.json"])
    return record.as_dict()


def _submit_task(members: Any, skipped: dict[str, str], task: Task, spec: DataSpec, tta: tuple[Any, ...],
                 out_dir: Path, opts: PredictOptions, ens: EnsembleSpec, sub: SubmissionOptions, metric: str | None,
                 dist: DistributeSpec | None, tta_margin: float | None, run_info: dict[str, Any] | None,
                 budget: BudgetSpec | None) -> dict[str, Any]:
    """:func:`submit` for binary, multi-label, regression and ordinal members (:mod:`pipeline.submission.task_stage`)."""
    policies, submit_policy, candidates, max_passes = tta
    fmt = task_format(spec, sub, task)
    metric, reason = check_task_metric(metric, task)
    log.info("Task: %s (%s). Metric: %s (%s).", task.kind, task.reason or "recorded by the members", metric, reason)
    try:
        result = predict(members, skipped, spec, policies, submit_policy, out_dir, opts, ens, metric, candidates,
                         max_passes, dist, tta_margin, budget)  # a budget is refused for these tasks, naming it
        record = result.record
        record.metric_reason = reason
        record.task = task.to_dict()
        decision, record.decision = decide(result, metric, ens)
        staged = write_task(result, fmt, decision, result.stage / sub.filename)
        return _land(result, out_dir, sub, task_solution_score(spec, staged, fmt, task, metric), run_info)
    except BaseException:
        discard(out_dir)
        raise
