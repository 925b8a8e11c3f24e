"""The submission stage for tasks other than one class per image: format, decisions, the file, its leaderboard.

:func:`pipeline.submission.stage.submit` hands binary, multi-label, regression and ordinal members here:

- the format comes from the sample submission and the members' task
  (:func:`~pipeline.submission.target_format.target_format`), before any prediction is made;
- thresholds (multi-label F-beta) or cut points (ordinal QWK) are fitted on the submitted merge's OOF rows
  only (:mod:`pipeline.predict.thresholds`); their honest score is cross-fitted on the one split
  (:func:`pipeline.predict.fitting.split`), and both scores go to ``predict.json``'s ``decision``;
- the leaderboard line scores the written file, read back, against the solution's targets.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_csv_as_text
from pipeline.core.metrics import check_metric_task, get_metric
from pipeline.core.task import Task
from pipeline.data.spec import DataSpec
from pipeline.member.predictions import read_predictions
from pipeline.predict.fitting import split
from pipeline.predict.spec import EnsembleSpec
from pipeline.predict.stage import PredictResult
from pipeline.predict.thresholds import Decision, cross_fit_decision, fit_decision
from pipeline.submission.format import SubmissionError, SubmissionFormat
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.target_build import write_task_submission
from pipeline.submission.target_format import TargetFormat, target_format

__all__ = ["check_task_metric", "decide", "task_format", "task_solution_score", "write_task"]

log = logging.getLogger(__name__)


def task_format(spec: DataSpec, opts: SubmissionOptions, task: Task) -> TargetFormat | SubmissionFormat:
    """The submission format of a task other than multiclass (see :func:`target_format`)."""
    sample = spec.root_path / spec.sample_submission if spec.sample_submission else None
    if sample is not None and not sample.is_file():
        raise FileNotFoundError(f"Sample submission {sample} does not exist (config key data.sample_submission).")
    return target_format(task, sample, kind=opts.kind, id_column=opts.id_column or (None if sample else spec.id_col),
                         label_column=opts.label_column, label_as=opts.label_as,
                         label_values=getattr(opts, "label_values", None), k=opts.k)


def check_task_metric(metric: str | None, task: Task) -> tuple[str, str]:
    """The metric (``metric`` None: the task's usual one) and why; refused when it can't score the task."""
    chosen, reason = (metric, "set by the metric setting") if metric else (
        task.default_metric, f"the usual metric of a {task.kind} task")
    try:
        check_metric_task(chosen, task.kind)
    except (ValueError, KeyError) as err:
        raise ConfigError(f"metric: {err.args[0]}") from err
    return chosen, reason


def decide(result: PredictResult, metric: str, ens: EnsembleSpec) -> tuple[Decision | None, dict[str, Any] | None]:
    """The decision fitted on the submitted merge's OOF rows, and its record with the in-sample and the
    cross-fitted (honest) OOF scores; (None, None) when the metric scores outputs as they are."""
    task, oof = result.task, result.oof_merged
    if task is None or oof is None:
        return None, None
    labels, merged = oof
    decision = fit_decision(task, labels, merged, metric)
    if decision is None:
        return None, None
    m = get_metric(metric)
    part = split(labels, ens.cross_fit_parts, ens.seed)
    honest = cross_fit_decision(task, labels, merged, metric, part)
    record = {**decision.to_dict(), "rows": int(len(labels)),
              "oof_score_fitted_on_itself": float(m(labels, decision.apply(merged))),
              "oof_score_cross_fitted": float(m(labels, honest)), "parts": ens.cross_fit_parts, "seed": ens.seed,
              "undecided_oof_score": float(m(labels, merged))}
    log.info("%s fitted on %d OOF rows for %s: cross-fitted %s %.4f (fitted on itself %.4f; without %.4f)",
             decision.kind, len(labels), metric, metric, record["oof_score_cross_fitted"],
             record["oof_score_fitted_on_itself"], record["undecided_oof_score"])
    return decision, record


def write_task(result: PredictResult, fmt: TargetFormat | SubmissionFormat, decision: Decision | None,
               path: Path) -> Path:
    """The submission file from ``ensemble_test.csv``, decided by ``decision``, validated, written atomically."""
    assert result.task is not None
    ids, outputs, _ = read_predictions(result.ensemble_path, result.classes)
    decided = None if decision is None else decision.apply(outputs)
    expected = result.sample_ids or result.test.ids
    return write_task_submission(ids, outputs, decided, result.task, fmt, result.sample_ids, path, expected)


def _solution_targets(path: Path, spec: DataSpec, task: Task, ids: list[str]) -> np.ndarray:
    """The solution file's targets of ``ids`` in the task's shape; the error names the file, column and rows."""
    sol = read_csv_as_text(path)
    if spec.id_col not in sol.columns:
        raise SubmissionError(f"{path}: no id column {spec.id_col!r} (data.id_col); columns: {list(sol.columns)}")
    sol = sol.set_index(spec.id_col)
    missing = [i for i in ids if i not in sol.index]
    if missing:
        raise SubmissionError(f"{path}: no row for {len(missing)} submitted id(s), e.g. {missing[:3]}")
    if task.kind == "multilabel" and spec.label_cols:
        return sol.loc[ids, list(spec.label_cols)].astype(float).to_numpy()
    cells = sol.loc[ids, spec.label_col].astype(str).str.strip()
    if task.kind == "multilabel":
        index = {c: j for j, c in enumerate(task.columns)}
        out = np.zeros((len(ids), len(task.columns)))
        for r, cell in enumerate(cells):
            for tag in cell.split(spec.tag_sep) if spec.tag_sep else cell.split():
                if tag not in index:
                    raise SubmissionError(f"{path}: tag {tag!r} in column {spec.label_col!r} is not one of the "
                                          f"members' labels {list(task.columns)[:10]}")
                out[r, index[tag]] = 1.0
        return out
    if task.kind == "binary":
        index = {c: j for j, c in enumerate(task.columns)}
        unknown = sorted(set(cells) - set(index))
        if unknown:
            raise SubmissionError(f"{path}: labels {unknown[:5]} in column {spec.label_col!r} are not the classes "
                                  f"{list(task.columns)}")
        return np.array([index[c] for c in cells])
    values = pd.to_numeric(cells, errors="coerce").to_numpy(np.float64)
    if not np.isfinite(values).all():
        raise SubmissionError(f"{path}: column {spec.label_col!r} holds non-numeric targets")
    return values


def _read_back(path: Path, fmt: TargetFormat | SubmissionFormat, task: Task) -> tuple[list[str], np.ndarray]:
    """The written file as the metric scores it: probabilities, 0/1 per label, values or grades."""
    df = read_csv_as_text(path)
    if isinstance(fmt, SubmissionFormat):  # a binary task written as class probabilities
        cols = fmt.prob_value_columns
        return df[fmt.id_column].tolist(), df[cols].astype(float).to_numpy()
    ids, col = df[fmt.id_column].tolist(), fmt.value_columns
    if fmt.kind in ("value", "grade"):
        return ids, df[col[0]].astype(float).to_numpy()[:, None]
    if fmt.kind == "probability":
        p = df[col[0]].astype(float).to_numpy()
        p1 = p if fmt.positive == 1 else 1 - p
        return ids, np.stack([1 - p1, p1], axis=1)
    if fmt.kind == "label":
        names = df[col[0]].tolist()
        index = {c: j for j, c in enumerate(task.columns)}
        hot = np.array([int(n) if fmt.label_as == "index" else index[n] for n in names])
        return ids, np.eye(2)[hot]
    if fmt.kind == "label_columns":
        assert fmt.label_columns is not None
        order = [fmt.value_columns[fmt.label_columns.index(c)] for c in task.columns]
        return ids, df[order].astype(float).to_numpy()
    out = np.zeros((len(df), len(task.columns)))
    index = {c: j for j, c in enumerate(task.columns)}
    for r, cell in enumerate(df[col[0]].tolist()):
        for token in cell.split():
            out[r, int(token) if fmt.kind == "tag_ids" else index[token]] = 1.0
    return ids, out


def task_solution_score(spec: DataSpec, submission: Path, fmt: TargetFormat | SubmissionFormat, task: Task,
                        metric: str) -> dict[str, Any] | None:
    """Leaderboard score of the written submission, read back, against the solution file (the demos' hidden targets)."""
    if not spec.solution or not (spec.root_path / spec.solution).is_file():
        return None
    ids, scored = _read_back(submission, fmt, task)
    labels = _solution_targets(spec.root_path / spec.solution, spec, task, ids)
    return {"metric": metric, "score": float(get_metric(metric)(labels, scored)), "rows": len(ids),
            "file": str(submission), "note": "leaderboard score of the submission file on the hidden solution, not "
            "validation"}
