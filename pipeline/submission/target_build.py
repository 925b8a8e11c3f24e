"""The binary, multi-label, regression and ordinal submission files: build, validate, write atomically.

:func:`write_task_submission` turns a task's outputs (``[N, K]``: softmax probabilities, independent
sigmoid probabilities, or one value column) and its decided outputs (multi-label 0/1 decisions from
fitted thresholds, ordinal grades from fitted cut points; None where there is no decision) into the
file :mod:`pipeline.submission.target_format` describes. Like
:func:`~pipeline.submission.build.write_submission_from_predictions`, it checks the arrays and ids
before it opens anything, writes ``chunk_rows`` rows at a time to a temporary file, reads the file back
and validates it, and only then renames it into place; any problem leaves nothing new at ``path``.

What each kind writes (``%.6g`` for floats, as the multiclass files):

- ``probability``: P(positive class), the output column of the task's second class (of the first where the
  sample's column is named after it);
- ``label``: the class with the highest decided (or, without decisions, output) value, ties to the
  negative class; its name, or 0/1 with ``label_as: index``;
- ``tags`` / ``tag_ids``: the labels decided 1, space-separated, in the task's label order (without
  decisions: outputs ≥ :data:`DEFAULT_THRESHOLD`). A row with no label is written as an empty cell
  (``id,``), which Kaggle reads as an empty tag list;
- ``label_columns``: 0/1 decisions, or the probabilities (``probabilities`` formats);
- ``value``: the output, clipped to the task's ``[low, high]`` where the task has a range;
- ``grade``: the decided grade (or, without decisions, the output rounded half up), clipped to the range.

>>> task = Task("multilabel", ("clear", "haze", "road"))
>>> fmt = TargetFormat(task, "id", "tags", ["id", "tags"])
>>> frame = build_target_submission(["a", "b"], np.array([[0.9, 0.1, 0.7], [0.2, 0.1, 0.3]]), None, fmt)
>>> print(frame.to_csv(index=False), end="")
id,tags
a,clear road
b,
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.io import atomic_path, read_csv_as_text
from pipeline.core.task import Task
from pipeline.submission.build import (
    CHUNK_CELLS,
    FLOAT_FORMAT,
    _check_unique,
    _header_problem,
    _id_problems,
    _label_problems,
    _raise_problems,
    _reorder_to_sample,
    _row_examples,
    build_submission,
    write_submission,
)
from pipeline.submission.format import SubmissionError, SubmissionFormat
from pipeline.submission.target_format import TargetFormat

__all__ = ["DEFAULT_THRESHOLD", "build_target_submission", "validate_target_submission", "write_target_submission",
           "write_task_submission"]

log = logging.getLogger(__name__)

DEFAULT_THRESHOLD = 0.5
"""Multi-label decisions when no decided outputs are given (a threshold-free metric): a label is on at ≥ 0.5."""

_INT = re.compile(r"[+-]?\d+")


def _bad_rows(mask: np.ndarray, ids: Sequence[str], values: np.ndarray) -> str:
    return _row_examples(mask, ids, [list(np.round(v, 6)) for v in values])


def _check_arrays(ids: list[str], outputs: np.ndarray, decided: np.ndarray | None,
                  task: Task) -> tuple[np.ndarray, np.ndarray | None]:
    """Shapes, finite outputs, and decisions that are what the task's decision step gives (0/1, integer grades)."""
    width = task.n_outputs
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.shape != (len(ids), width):
        raise SubmissionError(f"outputs have shape {outputs.shape}; expected ({len(ids)} ids, {width} outputs of "
                              f"the {task.kind} task {list(task.columns)})")
    if (bad := ~np.isfinite(outputs).all(axis=1)).any():
        raise SubmissionError(f"outputs are NaN or infinite in {_bad_rows(bad, ids, outputs)}")
    if decided is None:
        return outputs, None
    decided = np.asarray(decided, dtype=np.float64)
    if decided.shape != outputs.shape:
        raise SubmissionError(f"decided outputs have shape {decided.shape}; expected the outputs' {outputs.shape}")
    if task.kind in ("binary", "multilabel"):
        bad, accepted = ~np.isin(decided, (0.0, 1.0)).all(axis=1), "0/1 decisions"
    elif task.kind == "ordinal":
        bad, accepted = ~(np.isfinite(decided) & (decided == np.round(decided))).all(axis=1), "integer grades"
    else:
        return outputs, decided
    if bad.any():
        raise SubmissionError(f"decided outputs are not {accepted} in {_bad_rows(bad, ids, decided)}")
    return outputs, decided


def _clip(values: np.ndarray, task: Task) -> np.ndarray:
    low = -np.inf if task.low is None else task.low
    high = np.inf if task.high is None else task.high
    return np.clip(values, low, high)


def _grade_range(task: Task) -> tuple[float, float]:
    """The ordinal task's lowest and highest integer grade (unbounded where the task has no range)."""
    return (-np.inf if task.low is None else round(task.low)), (np.inf if task.high is None else round(task.high))


def _joined(chosen: np.ndarray, names: np.ndarray) -> list[str]:
    return [" ".join(names[row]) for row in chosen]


def _value_cells(fmt: TargetFormat, outputs: np.ndarray, decided: np.ndarray | None) -> dict[str, Any]:
    """The value columns of ``fmt`` for these rows."""
    task, col = fmt.task, fmt.value_columns[0]
    if fmt.kind == "probability":
        return {col: outputs[:, fmt.positive]}
    if fmt.kind == "label":
        top = (outputs if decided is None else decided).argmax(axis=1)
        return {col: top if fmt.label_as == "index" else np.asarray(task.columns, dtype=object)[top]}
    if fmt.kind == "value":
        return {col: _clip(outputs[:, 0], task)}
    if fmt.kind == "grade":
        grades = np.floor(outputs[:, 0] + 0.5) if decided is None else decided[:, 0]
        return {col: np.clip(grades, *_grade_range(task)).astype(np.int64)}
    chosen = outputs >= DEFAULT_THRESHOLD if decided is None else decided > 0.5
    if fmt.kind == "tags":
        return {col: _joined(chosen, np.asarray(task.columns, dtype=object))}
    if fmt.kind == "tag_ids":
        return {col: _joined(chosen, np.arange(len(task.columns)).astype(str).astype(object))}
    cells = outputs if fmt.probabilities else chosen.astype(np.int64)
    index = {c: i for i, c in enumerate(task.columns)}
    return {c: cells[:, index[name]] for c, name in zip(fmt.value_columns, fmt.label_columns or [])}


def build_target_submission(ids: Sequence[str], outputs: np.ndarray, decided: np.ndarray | None, fmt: TargetFormat,
                            sample_ids: Sequence[str] | None = None) -> pd.DataFrame:
    """The submission table of a binary, multi-label, regression or ordinal task, in the sample's row order.

    Raises:
        SubmissionError: Shapes disagree, outputs are not finite, decisions are not 0/1 (integer grades for
            an ordinal task), ids repeat, or ids differ from ``sample_ids``.
    """
    ids = [str(i) for i in ids]
    outputs, decided = _check_arrays(ids, outputs, decided, fmt.task)
    _check_unique(ids)
    if sample_ids is not None:
        order = pd.Index(ids).get_indexer([str(i) for i in sample_ids])
        ids, outputs = _reorder_to_sample(ids, outputs, [str(i) for i in sample_ids])
        decided = None if decided is None else decided[order]
    return pd.DataFrame({fmt.id_column: ids, **_value_cells(fmt, outputs, decided)})[fmt.header]


def _problem(col: str, mask: np.ndarray, what: str, ids: Sequence[str], raw: list[Any], offset: int,
             accepted: str) -> list[str]:
    if not mask.any():
        return []
    return [f"column {col!r} has {what} in {_row_examples(mask, ids, raw, offset)}; accepted: {accepted}"]


def _number_problems(df: pd.DataFrame, cols: Sequence[str], ids: Sequence[str], offset: int,
                     unit: bool) -> list[str]:
    """Non-numeric or infinite cells, and (``unit``) numbers outside [0, 1]."""
    accepted = "probabilities in [0, 1]" if unit else "finite numbers"
    problems = []
    for col in cols:
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        raw = df[col].tolist()
        problems += _problem(col, np.isnan(v), "NaN, empty or non-numeric values", ids, raw, offset, accepted)
        problems += _problem(col, np.isinf(v), "infinite values", ids, raw, offset, accepted)
        if unit:
            out = np.isfinite(v) & ((v < 0) | (v > 1))
            problems += _problem(col, out, "out-of-range values", ids, raw, offset, accepted)
    return problems


def _token_problems(df: pd.DataFrame, fmt: TargetFormat, ids: Sequence[str], offset: int) -> list[str]:
    """Tags (or label indices) that are not the task's, repeated, or not separated by single spaces."""
    col, labels = fmt.value_column, list(fmt.task.columns)
    names = set(labels) if fmt.kind == "tags" else {str(i) for i in range(len(labels))}

    def ok(cell: str) -> bool:
        tokens = cell.split(" ") if cell else []
        return len(set(tokens)) == len(tokens) and all(t in names for t in tokens)

    raw = df[col].tolist()
    bad = np.array([not ok(str(c)) for c in raw], dtype=bool)
    what = f"tags {labels[:5]}{' ...' if len(labels) > 5 else ''}" if fmt.kind == "tags" else (
        f"label indices 0..{len(labels) - 1}")
    return _problem(col, bad, f"invalid {fmt.kind}", ids, raw, offset,
                    f"distinct {what} separated by single spaces (an empty cell: no label)")


def _grade_problems(df: pd.DataFrame, fmt: TargetFormat, ids: Sequence[str], offset: int) -> list[str]:
    col, task = fmt.value_column, fmt.task
    text = df[col].astype(str)
    raw = df[col].tolist()
    is_int = text.str.fullmatch(_INT.pattern).to_numpy(dtype=bool)
    grades = pd.to_numeric(text.where(is_int), errors="coerce").to_numpy(dtype=np.float64)
    low, high = _grade_range(task)
    accepted = "integer grades" + ("" if task.low is None or task.high is None else f" {low}..{high}")
    out = is_int & ((grades < low) | (grades > high))
    return (_problem(col, ~is_int, "values that are not integers", ids, raw, offset, accepted)
            + _problem(col, out, "grades out of range", ids, raw, offset, accepted))


def _target_value_problems(df: pd.DataFrame, fmt: TargetFormat, offset: int = 0) -> list[str]:
    """Every value problem of ``df`` (built, or read back as text), whose first row is row ``offset``."""
    ids = df[fmt.id_column].astype(str).tolist()
    if fmt.kind == "probability" or (fmt.kind == "label_columns" and fmt.probabilities):
        return _number_problems(df, fmt.value_columns, ids, offset, unit=True)
    if fmt.kind == "value":
        return _number_problems(df, fmt.value_columns, ids, offset, unit=False)
    if fmt.kind == "grade":
        return _grade_problems(df, fmt, ids, offset)
    if fmt.kind in ("tags", "tag_ids"):
        return _token_problems(df, fmt, ids, offset)
    if fmt.kind == "label":
        label_as: Any = fmt.label_as
        label = SubmissionFormat(fmt.id_column, "label", fmt.value_column, label_as, None, fmt.header)
        return _label_problems(df[fmt.value_column], label, fmt.task.columns, ids, offset)
    problems = []
    for col in fmt.value_columns:
        bad = ~df[col].astype(str).isin(["0", "1"]).to_numpy()
        problems += _problem(col, bad, "values that are not 0/1", ids, df[col].tolist(), offset, "0 or 1")
    return problems


def validate_target_submission(df: pd.DataFrame, fmt: TargetFormat, expected_ids: Sequence[str]) -> None:
    """Check a binary, multi-label, regression or ordinal submission as :func:`validate_submission` does.

    Checks: the header equals ``fmt.header``; the ids are the test set's, once each; and per kind:
    probabilities finite and in [0, 1]; binary labels class names or 0/1; tags among the task's tags (label
    indices in ``[0, L)``), distinct, single spaces (an empty cell is no tag); label columns 0/1; values
    finite; grades integers within the task's range.

    Raises:
        SubmissionError: Listing every problem found (a wrong header stops the checks early).
    """
    if (problem := _header_problem([str(c) for c in df.columns], fmt.header)) is not None:
        raise SubmissionError(problem)
    _raise_problems(_id_problems(df[fmt.id_column], expected_ids) + _target_value_problems(df, fmt))


def _file_problems(path: Path, fmt: TargetFormat, expected_ids: Sequence[str], chunk_rows: int) -> list[str]:
    ids: list[str] = []
    problems: list[str] = []
    for df in read_csv_as_text(path, what="Submission", chunk_rows=chunk_rows):
        if not ids and (problem := _header_problem([str(c) for c in df.columns], fmt.header)):
            return [problem]
        problems += _target_value_problems(df, fmt, len(ids))
        ids += df[fmt.id_column].tolist()
    return _id_problems(pd.Series(ids, name=fmt.id_column, dtype=object), expected_ids) + problems


def write_target_submission(
    ids: Sequence[str], outputs: np.ndarray, decided: np.ndarray | None, fmt: TargetFormat, path: str | Path,
    expected_ids: Sequence[str] | None = None, sample_ids: Sequence[str] | None = None,
    chunk_rows: int | None = None, float_format: str = FLOAT_FORMAT,
) -> Path:
    """Build, validate and write a binary, multi-label, regression or ordinal submission, atomically.

    Rows follow ``sample_ids`` when given; ``expected_ids`` (default: the sample's ids, else ``ids``) are the
    test set's. The arrays and ids are checked before anything is written; then ``chunk_rows`` rows at a
    time (None: :data:`~pipeline.submission.build.CHUNK_CELLS` ÷ outputs) are built, validated and written
    to a temporary file, which is read back and validated again before it is renamed onto ``path``. A row
    with no tag is written as an empty cell.

    Raises:
        SubmissionError: The arrays, ids or values are invalid, or the file as written is; nothing is
            left at ``path`` (a previous file stays).
    """
    chunk_rows = max(1, CHUNK_CELLS // max(1, fmt.task.n_outputs)) if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows}")
    ids = [str(i) for i in ids]
    outputs, decided = _check_arrays(ids, outputs, decided, fmt.task)
    _check_unique(ids)
    out_ids = ids if sample_ids is None else [str(i) for i in sample_ids]
    expected = out_ids if expected_ids is None else [str(i) for i in expected_ids]
    if sample_ids is not None:
        order = pd.Index(ids).get_indexer(out_ids)
        ids, outputs = _reorder_to_sample(ids, outputs, out_ids)
        decided = None if decided is None else decided[order]
    _raise_problems(_id_problems(pd.Series(out_ids, name=fmt.id_column, dtype=object), expected))
    path = Path(path)
    with atomic_path(path) as tmp:
        problems: list[str] = []
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            for start in range(0, max(1, len(ids)), chunk_rows):
                rows = slice(start, start + chunk_rows)
                frame = build_target_submission(ids[rows], outputs[rows], None if decided is None else decided[rows],
                                                 fmt)
                problems += _target_value_problems(frame, fmt, start)
                frame.to_csv(handle, index=False, header=start == 0, float_format=float_format)
        _raise_problems(problems)
        if problems := _file_problems(tmp, fmt, expected, chunk_rows):
            err = SubmissionError(f"submission has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
            raise SubmissionError(f"{path}: invalid once written with {float_format!r}: {err}")
    log.info("Wrote submission %s (%d rows, %s %s)", path, len(ids), fmt.task.kind, fmt.kind)
    return path


def write_task_submission(
    ids: Sequence[str], outputs: np.ndarray, decided: np.ndarray | None, task: Task,
    fmt: SubmissionFormat | TargetFormat, sample_ids: Sequence[str] | None, path: str | Path,
    expected_ids: Sequence[str] | None = None,
) -> Path:
    """Write any task's submission, validated, atomically: the one entry for the predict stage.

    >>> write_task_submission(ids, outputs, decided, task, fmt, sample_ids, "submission.csv")  # doctest: +SKIP

    Args:
        ids: Test ids, one per row of ``outputs``.
        outputs: ``[N, K]``: the task's model outputs (:mod:`pipeline.core.task`).
        decided: ``[N, K]`` hard outputs of the decision step (multi-label 0/1, ordinal grades) or None;
            used by the ``label``, ``tags``, ``tag_ids``, ``label_columns`` (decisions) and ``grade`` kinds.
        task: The members' task; it must be the one ``fmt`` was made for.
        fmt: From :func:`~pipeline.submission.target_format.target_format` (or, for multiclass and binary
            class-probability files, a :class:`~pipeline.submission.format.SubmissionFormat`, written by
            today's :func:`~pipeline.submission.build.write_submission`).
        sample_ids: The sample's ids: the rows' order; also the expected ids unless ``expected_ids`` is given.
            None: the rows stay in ``ids`` order.
        path: The file to write.
        expected_ids: The test set's ids (default: ``sample_ids``, else ``ids``).

    Returns:
        ``path``.

    Raises:
        SubmissionError: ``fmt`` was made for another task, or the arrays, ids or values are invalid (see
            :func:`write_target_submission`); nothing new is left at ``path``.
    """
    expected = expected_ids if expected_ids is not None else (sample_ids if sample_ids is not None else ids)
    if isinstance(fmt, SubmissionFormat):
        if task.kind not in ("multiclass", "binary"):
            raise SubmissionError(f"the {task.kind} task cannot be written as the class format {fmt.kind!r}")
        frame = build_submission(ids, outputs, task.columns, fmt, sample_ids)
        return write_submission(frame, path, fmt, expected, task.columns)
    if not task.same_targets(fmt.task):
        raise SubmissionError(f"the submission format was made for {fmt.task.to_dict()}, not for the members' task "
                              f"{task.to_dict()}")
    return write_target_submission(ids, outputs, decided, fmt, path, expected, sample_ids)
