"""Targets: which task a competition is (declared or inferred, with the reason) and its training targets, checked.

:func:`resolve_task` reads ``data.task`` (``auto`` infers it from ``train.csv`` and the sample submission);
:func:`read_targets` turns the training CSV's label column(s) into the targets the :class:`Task` describes
(class indices, ``[N, L]`` 0/1 rows, or values); :func:`complete_task` adds the output columns and the
target range. Inference (``data.task=auto``), first rule that fits:

1. ``data.label_cols`` or ``data.tag_sep`` set → multilabel; ``data.classes`` or ``data.num_classes`` → multiclass;
2. labels of several whitespace-separated tokens, where the sample submission's target column holds such tag
   lists too → multilabel;
3. numbers with fractions → regression;
4. two integer values, and probabilities (``0.5``) in the sample submission → binary;
5. integers with more than 20 distinct values, and the sample submission's target column holds a number with a
   fraction → regression (integer class ids stay classes: without that sign, they are multiclass as before);
6. anything else → multiclass (ordinal is never guessed: integers alone do not say it; declare it).

Every bad target is refused here, before any stage writes a file, naming the file, column and rows.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, duplicates
from pipeline.core.task import TASKS, Task
from pipeline.data.spec import DataSpec

__all__ = [
    "MISSING_LABELS", "MAX_INTEGER_CLASSES", "clean_label", "is_missing", "line_ids", "resolve_classes",
    "resolve_task", "read_targets", "complete_task", "check_target_keys", "class_labels",
]

MISSING_LABELS = frozenset({"", "nan", "none", "null"})
"""Label strings (stripped, lower-cased) that mean "no label": a spreadsheet's or pandas' missing value."""

MAX_INTEGER_CLASSES = 20
"""``data.task=auto``: integer labels with more distinct values than this, and a sample submission holding numbers
with fractions, are regression targets, not classes."""


def clean_label(value: Any) -> str:
    """A label as the pipeline compares it: text without surrounding whitespace (``"Dress "`` → ``"Dress"``)."""
    return value.strip() if isinstance(value, str) else ""


def is_missing(label: str) -> bool:
    return label.lower() in MISSING_LABELS


def line_ids(df: pd.DataFrame, positions: Sequence[int], id_col: str) -> str:
    """``line N (id X)`` for the first few rows, counting the header as line 1."""
    shown = [f"line {p + 2} (id {df[id_col].iat[p]!r})" for p in positions[:5]]
    return ", ".join(shown) + (", ..." if len(positions) > 5 else "")


def _class_order(name: str) -> tuple[bool, int, str]:
    """Numeric labels in numeric order ("2" before "10"), then the others alphabetically."""
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)


def _configured_classes(spec: DataSpec) -> list[str] | None:
    """``data.classes`` stripped; empty, missing-value or repeated entries are refused."""
    if not spec.classes:
        return None
    classes = [clean_label(c) if isinstance(c, str) else str(c).strip() for c in spec.classes]
    if bad := [c for c in classes if is_missing(c)]:
        raise DataError(f"data.classes has empty or missing-value entries {bad}: {list(spec.classes)}.")
    if dupes := duplicates(classes):
        raise DataError(f"data.classes lists {dupes} more than once (after stripping spaces): {list(spec.classes)}.")
    return classes


def _columns_from(found: set[str], spec: DataSpec, source: Path) -> list[str]:
    """``data.classes`` (every found label must be in it) or the found labels in class order; ``num_classes`` agrees."""
    classes = _configured_classes(spec) or sorted(found, key=_class_order)
    if spec.num_classes is not None and spec.num_classes != len(classes):
        raise DataError(
            f"data.num_classes={spec.num_classes} contradicts the data: {source} has "
            f"{len(classes)} classes {classes[:10]}{'…' if len(classes) > 10 else ''}."
        )
    if unknown := sorted(found - set(classes)):
        raise DataError(f"{source}: labels {unknown[:5]} are not in data.classes {classes}.")
    return classes


def resolve_classes(raw: Sequence[str], spec: DataSpec, source: Path) -> tuple[list[str], np.ndarray]:
    """Map (stripped) label strings to indices into an explicit class list."""
    classes = _columns_from(set(raw), spec, source)
    index = {c: i for i, c in enumerate(classes)}
    return classes, np.array([index[r] for r in raw], dtype=np.int64)


# -- the task ------------------------------------------------------------------------------------------------------


def check_target_keys(spec: DataSpec) -> None:
    """The task keys on their own: a known ``data.task``, not both multi-label layouts, a range with low < high."""
    if spec.task != "auto" and spec.task not in TASKS:
        raise DataError(f"data.task={spec.task!r}; accepted: auto, {', '.join(TASKS)}.")
    if spec.label_cols and spec.tag_sep is not None:
        raise DataError(f"data.label_cols={list(spec.label_cols)} and data.tag_sep={spec.tag_sep!r} are both set: a "
                        "multi-label CSV holds either one 0/1 column per label or one column of tags; set one of them.")
    if spec.tag_sep is not None and not spec.tag_sep:
        raise DataError("data.tag_sep='' cannot split tags; give the separator (' ' for 'haze primary'), or null.")
    if (rng := spec.target_range) is not None:
        if len(rng) != 2 or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in rng) or rng[0] >= rng[1]:
            raise DataError(f"data.target_range={list(rng)}; accepted: [low, high], two numbers with low < high.")


def _float(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return math.nan


def _numbers(values: Sequence[str]) -> np.ndarray | None:
    """The values as finite floats, or None when one is not a finite number."""
    out = np.array([_float(v) for v in values], dtype=np.float64)
    return out if len(out) and np.isfinite(out).all() else None


def _target_column(spec: DataSpec, sample: pd.DataFrame | None) -> str | None:
    """The sample submission's target column: ``data.label_col``, or its only column besides the id."""
    if sample is None:
        return None
    if spec.label_col in sample.columns:
        return spec.label_col
    others = [c for c in sample.columns[1:] if c != spec.id_col]
    return others[0] if len(others) == 1 else None


def _sample_holds_tags(sample: pd.DataFrame | None, col: str | None, tags: set[str]) -> bool:
    """Some value of the sample's target column is a list of two or more tags, all seen in training."""
    if sample is None or col is None:
        return False
    return any(len(t := str(v).split()) >= 2 and set(t) <= tags for v in sample[col])


def _sample_probabilities(sample: pd.DataFrame | None, col: str | None) -> str | None:
    """A value of the sample's target column written as a probability (``0.5``), when all are numbers in [0, 1]."""
    if sample is None or col is None:
        return None
    values = [clean_label(v) for v in sample[col]]
    numbers = _numbers(values)
    if numbers is None or not ((numbers >= 0) & (numbers <= 1)).all():
        return None
    return next((v for v in values if "." in v), None)


def _sample_value(sample: pd.DataFrame | None, col: str | None) -> str | None:
    """A value of the sample's target column that is a number with a fraction (``67.75``), when all are numbers."""
    if sample is None or col is None:
        return None
    values = [clean_label(v) for v in sample[col]]
    numbers = _numbers(values)
    return None if numbers is None else next((v for v, x in zip(values, numbers) if not float(x).is_integer()), None)


def _infer(spec: DataSpec, labels: list[str], sample: pd.DataFrame | None) -> tuple[str, str]:
    """``data.task=auto``: the task kind and why (see the module's rules)."""
    col = spec.label_col
    if spec.label_cols:
        return "multilabel", f"data.label_cols lists {len(spec.label_cols)} 0/1 label columns → multilabel"
    if spec.tag_sep is not None:
        return "multilabel", f"data.tag_sep={spec.tag_sep!r}: column '{col}' holds tags joined by it → multilabel"
    if spec.classes or spec.num_classes is not None:
        return "multiclass", "data.classes / data.num_classes name the classes → multiclass"
    target = _target_column(spec, sample)
    tags = {t for v in labels for t in v.split()}
    if any(len(v.split()) >= 2 for v in labels) and _sample_holds_tags(sample, target, tags):
        return "multilabel", (f"label column '{col}' holds space-separated tags ({len(tags)} distinct), and so does "
                              f"the sample submission's column '{target}' → multilabel")
    numbers = _numbers(labels)
    distinct = sorted(set(labels), key=_class_order)
    if numbers is not None and not all(float(x).is_integer() for x in numbers):
        example = next(v for v, x in zip(labels, numbers) if not float(x).is_integer())
        return "regression", f"label column '{col}' holds numbers with fractions (e.g. {example!r}) → regression"
    if numbers is not None and len(distinct) == 2 and (prob := _sample_probabilities(sample, target)):
        return "binary", (f"label column '{col}' holds 2 integer values {distinct} and the sample submission's column "
                          f"'{target}' holds probabilities (e.g. {prob!r}) → binary")
    if numbers is not None and len(set(numbers.tolist())) > MAX_INTEGER_CLASSES and (
            value := _sample_value(sample, target)):
        return "regression", (f"label column '{col}' holds {len(set(numbers.tolist()))} distinct integers and the "
                              f"sample submission's column '{target}' holds a number with a fraction ({value!r}) → "
                              "regression (declare data.task=multiclass for class ids, or data.task=ordinal for grades)")
    if numbers is not None:
        return "multiclass", (f"label column '{col}' holds {len(distinct)} integer values → multiclass (integers "
                              "alone do not say ordinal: declare data.task=ordinal for ordered grades)")
    return "multiclass", f"label column '{col}' holds {len(distinct)} class names → multiclass"


def resolve_task(spec: DataSpec, df: pd.DataFrame | None, sample: pd.DataFrame | None, source: Path) -> Task:
    """The task ``data.task`` declares, or (``auto``) the one the training labels and the sample submission show.

    The returned task's output columns are placeholders until :func:`complete_task` sets them from the targets.
    ``df`` is the training CSV as text (None for ``layout=imagefolder``: one class per sub-folder).

    Raises:
        DataError: an unknown task; ``data.label_cols`` with ``data.tag_sep``; a range with low >= high; a key
            the task does not use (``label_cols``/``tag_sep`` outside multilabel, ``target_range`` outside
            regression/ordinal); a task the image-folder layout cannot hold.
    """
    check_target_keys(spec)
    if spec.task != "auto":
        kind, reason = spec.task, f"declared by data.task={spec.task}"
    elif df is None:
        kind, reason = "multiclass", "layout imagefolder: one sub-folder per class → multiclass"
    else:
        labels = [] if spec.label_cols else [v for v in map(clean_label, df[spec.label_col]) if not is_missing(v)]
        kind, reason = _infer(spec, labels, sample) if labels or spec.label_cols else ("multiclass", "no labels")
    if df is None and kind not in ("multiclass", "binary"):
        raise DataError(f"{source}: data.task={kind}: data.layout=imagefolder holds one class per sub-folder "
                        "(multiclass or binary); give a train.csv (data.layout=csv) for other tasks.")
    if kind != "multilabel" and (spec.label_cols or spec.tag_sep is not None):
        key = "data.label_cols" if spec.label_cols else "data.tag_sep"
        raise DataError(f"{key} is set, but the task is {kind} ({reason}): {key} describes multi-label targets; "
                        "remove it or set data.task=multilabel.")
    if spec.target_range is not None and kind not in ("regression", "ordinal"):
        raise DataError(f"data.target_range={list(spec.target_range)} is set, but the task is {kind} ({reason}); the "
                        "range is for regression and ordinal targets: declare data.task=regression or ordinal, or "
                        "remove data.target_range.")
    columns = {"binary": ("negative", "positive"), "regression": (spec.label_col,), "ordinal": (spec.label_col,)}
    return Task(kind, columns.get(kind, ()), reason=reason)


# -- reading the targets ---------------------------------------------------------------------------------------------


def _bad_rows(df: pd.DataFrame, bad: list[int], col: str, spec: DataSpec, path: Path, what: str, fix: str) -> DataError:
    values = sorted({repr(str(df[col].iat[i])) for i in bad})
    return DataError(f"{path}: {len(bad)} row(s) have {what} ({', '.join(values[:5])}) in column '{col}': "
                     f"{line_ids(df, bad, spec.id_col)}. {fix}")


def _tag_lists(df: pd.DataFrame, spec: DataSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    sep = spec.tag_sep
    text = [clean_label(v) for v in df[spec.label_col]]
    lists = [[t.strip() for t in (v.split(sep) if sep else v.split())] for v in text]
    lists = [[t for t in tags if t and not is_missing(t)] for tags in lists]
    if empty := [i for i, tags in enumerate(lists) if not tags]:
        raise _bad_rows(df, empty, spec.label_col, spec, path, "an empty tag list",
                        "A row of tags needs at least one tag. For images without any label, give one 0/1 column per "
                        "label with data.label_cols (an all-zero row says 'no label'), or drop these rows.")
    columns = _columns_from({t for tags in lists for t in tags}, spec, path)
    index = {c: i for i, c in enumerate(columns)}
    y = np.zeros((len(lists), len(columns)), dtype=np.float32)
    for r, tags in enumerate(lists):
        y[r, [index[t] for t in tags]] = 1.0
    return y, columns


def _label_columns(df: pd.DataFrame, spec: DataSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    columns = [str(c) for c in spec.label_cols or ()]
    if dupes := duplicates(columns):
        raise DataError(f"data.label_cols lists {dupes} more than once: {columns}.")
    y = np.zeros((len(df), len(columns)), dtype=np.float32)
    for j, col in enumerate(columns):
        values = [clean_label(v) for v in df[col]]
        numbers = [_float(v) for v in values]
        if bad := [i for i, x in enumerate(numbers) if x not in (0.0, 1.0)]:
            raise _bad_rows(df, bad, col, spec, path, "a value other than 0/1",
                            "data.label_cols holds one 0/1 column per label: 1 where the image has the label.")
        y[:, j] = numbers
    return y, columns


def _values(task: Task, df: pd.DataFrame, spec: DataSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    col = spec.label_col
    text = [clean_label(v) for v in df[col]]
    numbers = np.array([_float(v) for v in text], dtype=np.float64)
    why = f"the task is {task.kind} ({task.reason})"
    if bad := np.flatnonzero(~np.isfinite(numbers)).tolist():
        raise _bad_rows(df, bad, col, spec, path, "a target that is not a number",
                        f"Every row needs a finite number: {why}. Fix or drop these rows, or set data.task.")
    if task.kind == "ordinal" and (bad := np.flatnonzero(numbers != np.round(numbers)).tolist()):
        raise _bad_rows(df, bad, col, spec, path, "a grade that is not an integer",
                        f"Ordinal targets are integer grades: {why}. Use data.task=regression for values.")
    if spec.target_range is not None:
        low, high = spec.target_range
        if bad := np.flatnonzero((numbers < low) | (numbers > high)).tolist():
            raise _bad_rows(df, bad, col, spec, path, f"a target outside data.target_range=[{low}, {high}]",
                            "Widen data.target_range, or fix or drop these rows.")
    return numbers.astype(np.float32), [col]


def read_targets(task: Task, df: pd.DataFrame, spec: DataSpec, path: Path) -> tuple[np.ndarray, list[str]]:
    """The training targets as ``task`` holds them, and the output columns (see :mod:`pipeline.core.task`).

    Multi-label rows come from ``data.tag_sep``-joined tags (columns: the sorted tags, or ``data.classes``)
    or from the 0/1 columns of ``data.label_cols``; regression and ordinal targets from the label column.

    Raises:
        DataError: naming the file, column and rows: an empty tag list, a ``label_cols`` value other than
            0/1, a target that is not a number (text, NaN), an ordinal grade that is not an integer, a target
            outside ``data.target_range``, a tag outside ``data.classes``, a binary task without 2 classes.
    """
    if task.kind == "multilabel":
        return _label_columns(df, spec, path) if spec.label_cols else _tag_lists(df, spec, path)
    if task.kind in ("regression", "ordinal"):
        return _values(task, df, spec, path)
    classes, indices = resolve_classes(class_labels(df, spec, path), spec, path)
    return indices, classes


def class_labels(df: pd.DataFrame, spec: DataSpec, path: Path) -> list[str]:
    """The label column, stripped; empty or missing-value labels are refused, naming their rows."""
    labels = [clean_label(v) for v in df[spec.label_col]]
    if missing := [i for i, v in enumerate(labels) if is_missing(v)]:
        raise _bad_rows(df, missing, spec.label_col, spec, path, "an empty or missing label",
                        "Every training image needs a class: fix or drop these rows.")
    return labels


def complete_task(task: Task, labels: np.ndarray, columns: Sequence[str], spec: DataSpec, source: Path) -> Task:
    """``task`` with its output columns and (regression, ordinal) its target range: declared or seen.

    Raises:
        DataError: a binary task whose data holds other than 2 classes; value targets all equal (no range).
    """
    if task.kind == "binary" and len(columns) != 2:
        raise DataError(f"The task is binary ({task.reason}), but {source} holds {len(columns)} classes "
                        f"{list(columns)[:10]}; a binary task has exactly 2: set data.task=multiclass (or auto).")
    if not task.is_value:
        return dataclasses.replace(task, columns=tuple(columns))
    if spec.target_range is not None:
        low, high = (float(v) for v in spec.target_range)
    else:
        low, high = float(np.min(labels)), float(np.max(labels))
    if task.kind == "ordinal" and not (low.is_integer() and high.is_integer()):
        raise DataError(f"data.target_range={list(spec.target_range or ())}: ordinal grades are integers, so the "
                        "range needs integer ends, e.g. [0, 4].")
    if not low < high:
        raise DataError(f"{source}: every row has the same {task.kind} target {low:g} in column '{columns[0]}'; "
                        "there is nothing to learn (set data.target_range if the file is right).")
    return dataclasses.replace(task, columns=tuple(columns), low=low, high=high)
