"""The submission's format for binary, multi-label, regression and ordinal tasks, from the sample or from config.

Multiclass formats stay in :mod:`pipeline.submission.format`; this module reads the other tasks' formats
the same way (:func:`target_format`): from ``sample_submission.csv``'s columns and values when
``submission.kind`` is not set, else from config. Kinds per task (``submission.kind``):

==========  ================  =================================================================================
task        kind              file
==========  ================  =================================================================================
binary      ``probability``   ``id,<col>``: P(positive), the second class's output (SIIM-ISIC ``image_name,target``)
binary      ``label``         ``id,<col>``: the class, as its name or as 0/1 (``label_as``)
multilabel  ``tags``          ``id,<col>``: the chosen tag names, space-separated (Planet ``image_name,tags``)
multilabel  ``tag_ids``       ``id,<col>``: the chosen label indices, space-separated (Protein Atlas ``Id,Predicted``)
multilabel  ``label_columns`` ``id,<label 1>,<label 2>…``: 0/1 decisions, or probabilities (``label_values``)
regression  ``value``         ``id,<col>``: the value, clipped to the task's range (``Id,Pawpularity``)
ordinal     ``grade``         ``id,<col>``: the integer grade (APTOS ``id_code,diagnosis``)
==========  ================  =================================================================================

A binary sample with one column per class is today's multiclass ``probabilities`` format (a binary task's
outputs are a softmax over its 2 classes), and so are ``submission.kind`` ``probabilities`` and
``label+probabilities``: those return a :class:`~pipeline.submission.format.SubmissionFormat`.

Inference from the sample's value columns: columns that are exactly the task's labels (matched as
:func:`~pipeline.submission.format.infer_format` matches class columns) → ``label_columns``; one column:
non-integer numbers in [0, 1] → ``probability`` (binary) or probabilities in label columns; integers →
``grade``, label indices (``tag_ids``) or, for binary, 0/1 — read as ``probability``, since the binary
image competitions that ship a 0/1 sample (SIIM-ISIC, Histopathologic Cancer Detection) score AUC; text →
``tags`` or, for binary, class names. A sample that contradicts the task raises :class:`SubmissionError`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import examples
from pipeline.core.io import read_csv_as_text
from pipeline.core.task import Task
from pipeline.submission.format import (
    SubmissionError,
    SubmissionFormat,
    _column_key,
    _infer_label_as,
    _match_class_columns,
    format_from_config,
    infer_format,
)

__all__ = ["TARGET_KINDS", "DEFAULT_KIND", "LABEL_VALUES", "TargetFormat", "target_format"]

log = logging.getLogger(__name__)

TARGET_KINDS: dict[str, tuple[str, ...]] = {
    "binary": ("probability", "label", "probabilities", "label+probabilities"),
    "multilabel": ("tags", "tag_ids", "label_columns"),
    "regression": ("value",),
    "ordinal": ("grade",),
}
"""``submission.kind`` per task (binary ``probabilities`` and ``label+probabilities``: the multiclass formats)."""

DEFAULT_KIND = {"binary": "probability", "multilabel": "tags", "regression": "value", "ordinal": "grade"}
"""The kind written when there is no sample submission and ``submission.kind`` is not set."""

LABEL_VALUES = ("decisions", "probabilities")
"""``submission.label_values``: what ``label_columns`` cells hold (0/1 decisions, or the probabilities)."""

_SINGLE = ("probability", "label", "tags", "tag_ids", "value", "grade")
_DEFAULT_COLUMN = {"probability": "target", "label": "label", "tags": "tags", "tag_ids": "tags"}
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class TargetFormat:
    """What a binary, multi-label, regression or ordinal submission file looks like.

    Attributes:
        task: The task it writes (its columns, tag list and range are what the file is checked against).
        id_column: Name of the id column.
        kind: One of the task's :data:`TARGET_KINDS` (not the multiclass ones).
        header: The exact header to write, e.g. the sample's.
        label_columns: ``label_columns``: the label behind each value column, in header order.
        label_as: Binary ``label``: write the class ``"name"`` or its ``"index"`` (0/1).
        probabilities: ``label_columns``: write each label's probability instead of its 0/1 decision.
        positive: Binary ``probability``: the class whose probability is written, by index: 1 (the positive
            class), or 0 where the sample's column is named after the first class.
        reason: Why this format (what the sample showed, or config); logged.
    """

    task: Task
    id_column: str
    kind: str
    header: list[str]
    label_columns: list[str] | None = None
    label_as: str = "name"
    probabilities: bool = False
    positive: int = 1
    reason: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        # Catch hand-built formats that the writer could not honour, before any work is done.
        if self.kind not in _own_kinds(self.task):
            raise ValueError(f"kind {self.kind!r} is not among the {self.task.kind} formats; accepted: "
                             f"{_own_kinds(self.task)}")
        if self.id_column not in self.header or len(set(self.header)) != len(self.header):
            raise ValueError(f"the header {self.header} must hold the id column {self.id_column!r} and no repeats")
        if self.kind in _SINGLE and len(self.value_columns) != 1:
            raise ValueError(f"a {self.kind} format has one value column; got header {self.header}")
        if self.kind == "label_columns" and (
            self.label_columns is None or len(self.label_columns) != len(self.value_columns)
            or sorted(self.label_columns) != sorted(self.task.columns)
        ):
            raise ValueError(f"a label_columns format needs one column per label {list(self.task.columns)}; got {self}")
        if self.positive not in (0, 1):
            raise ValueError(f"positive must be the index 0 or 1 of a binary class; got {self.positive!r}")
        if self.label_as not in ("name", "index"):
            raise ValueError(f"label_as must be 'name' or 'index'; got {self.label_as!r}")

    @property
    def value_columns(self) -> list[str]:
        """The header without the id column."""
        return [c for c in self.header if c != self.id_column]

    @property
    def value_column(self) -> str:
        """The one value column of every kind but ``label_columns``."""
        return self.value_columns[0]


def _own_kinds(task: Task) -> list[str]:
    return [k for k in TARGET_KINDS.get(task.kind, ()) if k not in ("probabilities", "label+probabilities")]


def _needs(task: Task) -> str:
    """What a task's submission must look like, for the error messages."""
    if task.kind == "binary":
        return (f"needs the id column plus one column, P({task.columns[1]!r}) (probability) or the class (label), "
                f"or one probability column per class {list(task.columns)}")
    if task.kind == "multilabel":
        return ("needs the id column plus one text column of space-separated tags (tags) or label indices (tag_ids), "
                f"or one column per label {examples(list(task.columns))} (label_columns)")
    if task.kind == "regression":
        return f"needs the id column plus one numeric column for {task.columns[0]!r} (value)"
    grades = f" {task.grades[0]}..{task.grades[-1]}" if task.low is not None and task.high is not None else ""
    return f"needs the id column plus one column of integer grades{grades} (grade)"


def _contradiction(sample_csv: Path, header: list[str], task: Task, problem: str) -> SubmissionError:
    return SubmissionError(f"{sample_csv}: {problem}; the sample's columns are {header}, and the {task.kind} task "
                           f"{_needs(task)}. Fix data.sample_submission or data.task, or set submission.kind")


def _cells(values: pd.Series) -> list[str]:
    """The sample column's non-empty cells, stripped."""
    return [c for c in (str(v).strip() for v in values) if c]


def _numbers(cells: Sequence[str]) -> np.ndarray | None:
    """The cells as floats, or None unless every cell is a number."""
    if not all(_NUMBER.fullmatch(c) for c in cells):
        return None
    return np.array([float(c) for c in cells], dtype=np.float64)


def _first(cells: Sequence[str], ok: Any) -> str:
    """The first cell that fails ``ok``, for the error messages."""
    return next((c for c in cells if not ok(c)), cells[0] if cells else "")


def _label_values(values: pd.Series | None, label_values: str | None) -> bool:
    """``label_columns`` cells: probabilities when config says so or when the sample holds non-integer numbers."""
    if label_values is not None:
        return label_values == "probabilities"
    nums = _numbers(_cells(values)) if values is not None else None
    return nums is not None and bool((nums != np.round(nums)).any())


def _infer_binary(path: Path, sample: pd.DataFrame, header: list[str], id_col: str, task: Task,
                  label_as: str | None) -> TargetFormat | SubmissionFormat:
    rest = [c for c in header if c != id_col]
    if _match_class_columns(rest, task.columns) is not None:
        return infer_format(path, task.columns, id_col, label_as)  # type: ignore[arg-type]
    if len(rest) != 1:
        raise _contradiction(path, header, task, f"{len(rest)} value columns {rest} are not the classes")
    cells = _cells(sample[rest[0]])
    nums = _numbers(cells)
    if nums is None:  # text: class names (or placeholders)
        encoding = label_as or _infer_label_as(sample[rest[0]], list(task.columns), path)
        return TargetFormat(task, id_col, "label", header, label_as=encoding, reason="the sample holds class names")
    if not ((nums >= 0) & (nums <= 1)).all():
        bad = _first(cells, lambda c: 0 <= float(c) <= 1)
        raise _contradiction(path, header, task, f"column {rest[0]!r} holds numbers outside [0, 1] (e.g. {bad!r}), "
                                                 "neither probabilities nor 0/1 labels")
    why = ("the sample holds 0/1 values, read as P(positive) (binary image competitions score AUC; "
           "submission.kind=label writes 0/1)" if (nums == np.round(nums)).all() else
           "the sample holds probabilities in [0, 1]")
    # A column named after the first class asks for that class's probability (rare, but then 1 - P is wrong).
    first = _column_key(rest[0]) == _column_key(task.columns[0]) != _column_key(task.columns[1])
    return TargetFormat(task, id_col, "probability", header, positive=0 if first else 1, reason=why)


def _infer_multilabel(path: Path, sample: pd.DataFrame, header: list[str], id_col: str, task: Task,
                      label_values: str | None) -> TargetFormat:
    rest = [c for c in header if c != id_col]
    labels = list(task.columns)
    mapped = _match_class_columns(rest, labels)
    if mapped is not None:
        cells = pd.concat([sample[c] for c in rest]) if len(sample) else None
        return TargetFormat(task, id_col, "label_columns", header, label_columns=mapped,
                            probabilities=_label_values(cells, label_values), reason="one sample column per label")
    keys = {_column_key(c) for c in labels}
    named = [c for c in rest if c in labels or _column_key(c) in keys]
    if named or len(rest) != 1:
        rest_keys = {_column_key(c) for c in rest}
        missing = [c for c in labels if c not in rest and _column_key(c) not in rest_keys]
        unknown = [c for c in rest if c not in named]
        problem = f"labels {examples(missing)} have no column (columns matching no label: {unknown})"
        raise _contradiction(path, header, task, problem if named else f"{len(rest)} value columns {rest}")
    cells = _cells(sample[rest[0]])
    tokens = [t for c in cells for t in c.split()]
    nums = _numbers(tokens)
    if nums is not None and (nums != np.round(nums)).any():
        bad = _first(cells, lambda c: all(float(t) == round(float(t)) for t in c.split()))
        raise _contradiction(path, header, task, f"column {rest[0]!r} holds non-integer numbers (e.g. {bad!r}), "
                                                 "not tags or label indices")
    if not tokens or nums is None or not ((nums >= 0) & (nums < len(labels))).all():
        _check_spaceless(task, "tags")
        return TargetFormat(task, id_col, "tags", header, reason="the sample holds text: tag names")
    if all(t in labels for t in tokens) and any(labels[int(float(t))] != t for t in tokens):
        raise SubmissionError(
            f"{path}: the values {examples(sorted(set(tokens)))} of column {rest[0]!r} are both tag names and label "
            "indices; the submission cannot tell which to write. Set submission.kind=tags (tag names) or "
            "submission.kind=tag_ids (0-based label indices)"
        )
    return TargetFormat(task, id_col, "tag_ids", header, reason="the sample holds integers: label indices")


def _infer_value(path: Path, sample: pd.DataFrame, header: list[str], id_col: str, task: Task) -> TargetFormat:
    rest = [c for c in header if c != id_col]
    if len(rest) != 1:
        raise _contradiction(path, header, task, f"{len(rest)} value columns {rest}")
    cells = _cells(sample[rest[0]])
    nums = _numbers(cells)
    if nums is None:
        spaced = [c for c in cells if re.search(r"\s", c)]
        what = "space-separated text (a tags column)" if spaced else "text, not numbers"
        bad = spaced[0] if spaced else _first(cells, lambda c: _NUMBER.fullmatch(c))
        raise _contradiction(path, header, task, f"column {rest[0]!r} holds {what}, e.g. {bad!r}")
    if task.kind == "ordinal" and (nums != np.round(nums)).any():
        bad = _first(cells, lambda c: float(c) == round(float(c)))
        raise _contradiction(path, header, task, f"column {rest[0]!r} holds non-integer values (e.g. {bad!r}), not "
                                                 "integer grades (declare data.task=regression for continuous targets)")
    kind = "grade" if task.kind == "ordinal" else "value"
    return TargetFormat(task, id_col, kind, header, reason=f"the sample has one numeric column {rest[0]!r}")


def _check_spaceless(task: Task, kind: str) -> None:
    if kind == "tags" and (spaced := [c for c in task.columns if re.search(r"\s", c)]):
        raise SubmissionError(f"kind tags separates tag names by spaces, but tags {examples(spaced)} contain spaces; "
                              "set submission.kind=tag_ids (label indices) or label_columns")


def _read_sample(path: Path, id_column: str | None) -> tuple[pd.DataFrame, list[str], str]:
    sample = read_csv_as_text(path, what="Sample submission")
    header = [str(c) for c in sample.columns]
    id_col = header[0] if id_column is None else id_column
    if id_col not in header:
        raise SubmissionError(f"{path}: id column {id_col!r} not found; columns are {header}")
    return sample, header, id_col


def _infer(path: Path, task: Task, id_column: str | None, label_as: str | None,
           label_values: str | None) -> TargetFormat | SubmissionFormat:
    sample, header, id_col = _read_sample(path, id_column)
    if len(header) < 2:
        raise _contradiction(path, header, task, "there is no value column")
    if task.kind == "binary":
        return _infer_binary(path, sample, header, id_col, task, label_as)
    if task.kind == "multilabel":
        return _infer_multilabel(path, sample, header, id_col, task, label_values)
    return _infer_value(path, sample, header, id_col, task)


def _check_settings(task: Task, kind: str | None, label_as: str | None, label_values: str | None,
                    k: int | None) -> None:
    """The config values alone: a kind this task can write, and accepted encodings."""
    if task.kind not in TARGET_KINDS:
        raise SubmissionError(f"the {task.kind} task's submission format comes from pipeline.submission.format "
                              "(submission_format), not target_format")
    if kind is not None and kind not in TARGET_KINDS[task.kind]:
        raise SubmissionError(f"submission.kind {kind!r} does not fit the {task.kind} task; accepted for "
                              f"{task.kind}: {list(TARGET_KINDS[task.kind])}")
    if label_as is not None and label_as not in ("name", "index"):
        raise SubmissionError(f"submission.label_as {label_as!r} is not one of ('name', 'index')")
    if label_values is not None and label_values not in LABEL_VALUES:
        raise SubmissionError(f"submission.label_values {label_values!r} is not one of {LABEL_VALUES}")
    if k is not None:
        raise SubmissionError(f"submission.k={k!r} applies to kind topk, a multiclass format; the {task.kind} task "
                              f"writes {list(TARGET_KINDS[task.kind])}")
    if kind is not None:
        _check_spaceless(task, kind)


def _from_settings(task: Task, kind: str, id_column: str, label_column: str | None, label_as: str | None,
                   label_values: str | None) -> TargetFormat:
    if kind == "label_columns":
        if id_column in task.columns:
            raise SubmissionError(f"label {id_column!r} has the name of the id column; set submission.id_column")
        return TargetFormat(task, id_column, kind, [id_column, *task.columns], list(task.columns),
                            probabilities=label_values == "probabilities", reason="config")
    column = label_column or _DEFAULT_COLUMN.get(kind) or task.columns[0]
    if column == id_column:
        raise SubmissionError(f"the value column {column!r} has the name of the id column; set submission.label_column")
    return TargetFormat(task, id_column, kind, [id_column, column], label_as=label_as or "name", reason="config")


def _fit_sample(path: Path, task: Task, kind: str, id_column: str | None, label_column: str | None,
                label_as: str | None, label_values: str | None) -> TargetFormat | None:
    """The sample's header written as the configured ``kind``, or None when its columns do not fit that kind."""
    sample, header, id_col = _read_sample(path, id_column)
    rest = [c for c in header if c != id_col]
    if kind == "label_columns":
        mapped = _match_class_columns(rest, task.columns)
        if mapped is None:
            return None
        cells = pd.concat([sample[c] for c in rest]) if len(sample) else None
        return TargetFormat(task, id_col, kind, header, mapped, probabilities=_label_values(cells, label_values),
                            reason="config, with the sample's header")
    if len(rest) != 1 or label_column not in (None, rest[0]):
        return None
    if kind == "label" and label_as is None:
        label_as = _infer_label_as(sample[rest[0]], list(task.columns), path)
    return TargetFormat(task, id_col, kind, header, label_as=label_as or "name",
                        reason="config, with the sample's header")


def target_format(
    task: Task,
    sample_csv: str | Path | None = None,
    *,
    kind: str | None = None,
    id_column: str | None = None,
    label_column: str | None = None,
    label_as: str | None = None,
    label_values: str | None = None,
    k: int | None = None,
) -> TargetFormat | SubmissionFormat:
    """The submission format of a binary, multi-label, regression or ordinal task (``submission.*`` settings).

    With a sample and no ``kind``, the format is inferred from the sample's columns and values (module
    docstring). With a ``kind``, the sample's header is kept when its columns fit that kind; otherwise config
    wins and a warning says the header differs from the sample's (as for multiclass). Without a sample:
    ``kind`` defaults to :data:`DEFAULT_KIND`, ``id_column`` to ``id``, and the value column to
    ``label_column``, else ``target`` (probability), ``label``, ``tags`` or the task's target column.

    ``label_values`` (``decisions`` or ``probabilities``) says what ``label_columns`` cells hold; None: the
    sample's values (non-integer numbers: probabilities), else decisions. Give ``probabilities`` when the
    metric is threshold-free (AUC, AP, BCE). Binary ``probabilities`` / ``label+probabilities`` kinds, and a
    binary sample with one column per class, give the multiclass :class:`SubmissionFormat`.

    Raises:
        SubmissionError: A setting this task does not accept, or a sample that contradicts the task; the
            message names the sample file, its columns and what the task needs.
    """
    _check_settings(task, kind, label_as, label_values, k)
    path = None if sample_csv is None else Path(sample_csv)
    if kind in ("probabilities", "label+probabilities"):
        return format_from_config(kind, id_column, label_column, label_as, list(task.columns), sample_csv=path)
    if path is not None and kind is None:
        fmt = _infer(path, task, id_column, label_as, label_values)
        log.info("Submission format from %s: %s (%s)", path, fmt, getattr(fmt, "reason", ""))
        return fmt
    if path is not None and (fitted := _fit_sample(path, task, str(kind), id_column, label_column, label_as,
                                                   label_values)) is not None:
        log.info("Submission format from config and %s: %s", path, fitted)
        return fitted
    if path is not None:
        id_column = id_column or _read_sample(path, None)[2]
    fmt = _from_settings(task, kind or DEFAULT_KIND[task.kind], id_column or "id", label_column, label_as, label_values)
    if path is not None:
        log.warning("Config overrides %s: writing header %s, which differs from the sample's", path, fmt.header)
    log.info("Submission format from config: %s", fmt)
    return fmt
