"""Prediction files: ``id[,label],<one probability column per class>`` CSVs, streamed to disk.

Other tasks (:mod:`pipeline.core.task`) keep the layout: multi-label files hold one ``p:<label>``
probability per label (rows need not sum to one), regression and ordinal files one ``v:<target>`` value
column (finite, any range); their targets, when known, are ``y:<column>`` columns (0/1 per label, or the
value) instead of the integer ``label`` column of one class per image.

Every stage that saves probabilities (training's validation predictions, predict's per-member and
ensemble predictions) writes this one format through :class:`PredictionWriter`, which appends chunk by
chunk into a temporary file and renames it into place only when complete.
"""

from __future__ import annotations

import contextlib
import csv
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, NoReturn

import numpy as np
import pandas as pd

from pipeline.core.errors import MemberError, examples
from pipeline.core.io import DISK_FULL, AtomicFile, disk_full_error, read_csv_as_text
from pipeline.core.task import Task

__all__ = ["PredictionWriter", "write_predictions", "read_predictions", "check_probabilities", "PROB_PREFIX",
           "SUM_TOLERANCE", "VALUE_PREFIX", "TARGET_PREFIX", "output_columns", "frame_outputs", "frame_labels",
           "file_layout", "check_values"]

PROB_PREFIX = "p:"
VALUE_PREFIX = "v:"  # regression/ordinal outputs, in target units
TARGET_PREFIX = "y:"  # targets of tasks other than one class per image

SUM_TOLERANCE = 1e-3
"""How far a row of probabilities may sum from one (files hold 8 significant digits; bf16 runs round more)."""

RANGE_SLACK = 1e-6
"""How far outside [0, 1] a probability may lie (float rounding), before it is refused."""


class PredictionWriter:
    """Stream ``(ids, probs[, labels])`` chunks into a prediction CSV; atomic on success.

    >>> with PredictionWriter(path, classes) as w:  # doctest: +SKIP
    ...     w.write(["a", "b"], probs)
    """

    def __init__(self, path: str | Path, classes: Sequence[str], with_labels: bool = False, values: bool = False,
                 targets: Sequence[str] | None = None) -> None:
        """``values``: the outputs are values (``v:`` columns); ``targets``: the labels are targets written as
        ``y:<name>`` columns (multi-label, regression, ordinal) instead of one class index."""
        self.path = Path(path)
        self.classes = list(classes)
        self.with_labels = with_labels
        self.prefix = VALUE_PREFIX if values else PROB_PREFIX
        self.targets = None if targets is None else [TARGET_PREFIX + t for t in targets]
        self.rows = 0
        self._file = AtomicFile(self.path)
        try:
            self._fh = open(self._file.tmp, "w", newline="")
        except BaseException:
            self._file.abort()
            raise
        label_header = (self.targets or ["label"]) if with_labels else []
        header = ["id"] + label_header + [self.prefix + c for c in self.classes]
        try:
            csv.writer(self._fh).writerow(header)
        except OSError as err:
            self._fail(err)

    def write(self, ids: Sequence[str], probs: np.ndarray, labels: Sequence[int] | np.ndarray | None = None) -> None:
        """Append one chunk of rows."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(ids), len(self.classes)):
            raise ValueError(f"{self.path}: probs shape {probs.shape} != ({len(ids)}, {len(self.classes)})")
        frame = pd.DataFrame(probs, columns=[self.prefix + c for c in self.classes])
        frame.insert(0, "id", list(ids))
        if self.with_labels:
            if labels is None:
                raise ValueError(f"{self.path}: this prediction file needs labels")
            if self.targets is None:
                frame.insert(1, "label", np.asarray(labels, dtype=np.int64))
            else:
                y = np.asarray(labels, dtype=np.float64).reshape(len(ids), -1)
                for j, name in enumerate(self.targets):
                    frame.insert(1 + j, name, y[:, j])
        try:
            frame.to_csv(self._fh, header=False, index=False, float_format="%.8g")
        except OSError as err:
            self._fail(err)
        self.rows += len(ids)

    def close(self) -> Path:
        """Finish the file and move it into place (on failure, the temporary file is removed)."""
        try:
            self._fh.close()  # flushes the last rows: a full disk shows here
            return self._file.commit()
        except OSError as err:
            self._fail(err)

    def abort(self) -> None:
        """Drop the partial file; never raises (closing a file on a full disk fails again: it is removed anyway)."""
        try:
            with contextlib.suppress(OSError):
                self._fh.close()
        finally:
            self._file.abort()

    def _fail(self, err: OSError) -> NoReturn:
        """Remove the partial file and raise: one line naming the file for a full disk, ``err`` otherwise."""
        self.abort()
        if err.errno in DISK_FULL:
            raise disk_full_error(self.path, err) from err
        raise err

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_predictions(
    path: str | Path,
    ids: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    labels: Sequence[int] | np.ndarray | None = None,
    values: bool = False,
    targets: Sequence[str] | None = None,
) -> Path:
    """Write a whole prediction file at once (atomically); ``values``/``targets`` as :class:`PredictionWriter`."""
    with PredictionWriter(path, classes, with_labels=labels is not None, values=values, targets=targets) as writer:
        writer.write(ids, probs, labels)
    return writer.path


def _bad_rows(mask: np.ndarray, ids: Sequence[str], first_line: int = 2) -> str:
    rows = np.flatnonzero(mask)
    return (f"{len(rows)} row(s): file lines {examples([int(r) + first_line for r in rows])}, "
            f"ids {examples([ids[int(r)] for r in rows])}")


def check_probabilities(path: str | Path, ids: Sequence[str], probs: np.ndarray, columns: Sequence[str],
                        sums: bool = False, first_line: int = 2) -> None:
    """Refuse probabilities that are not finite numbers in [0, 1] (and, with ``sums``, rows not summing to one).

    ``first_line`` is the file line of ``probs``' first row (2 under the header; more for a later chunk).

    Raises:
        MemberError: naming the file, the column and the rows (file line numbers, header = line 1).
    """
    for j, column in enumerate(columns):
        values = probs[:, j]
        bad = ~np.isfinite(values) | (values < -RANGE_SLACK) | (values > 1.0 + RANGE_SLACK)
        if bad.any():
            raise MemberError(
                f"{path}: column {column!r} holds values that are not probabilities (NaN, infinite, or outside "
                f"[0, 1]) in {_bad_rows(bad, ids, first_line)}. Recompute the file (delete it) or fix those rows."
            )
    if sums and len(probs):
        off = np.abs(probs.sum(axis=1) - 1.0) > SUM_TOLERANCE
        if off.any():
            raise MemberError(
                f"{path}: the probabilities of {_bad_rows(off, ids, first_line)} do not sum to 1 (±{SUM_TOLERANCE})."
            )


def _labels(path: Path, df: pd.DataFrame) -> np.ndarray:
    """The ``label`` column (class indices) as integers; the error names the file and the rows."""
    values = pd.to_numeric(df["label"].str.strip(), errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values) | (values != np.round(values))
    if bad.any():
        raise MemberError(f"{path}: column 'label' must hold class indices (whole numbers); it does not in "
                          f"{_bad_rows(bad, df['id'].tolist())}.")
    return values.astype(np.int64)


def _header(path: Path) -> list[str]:
    """The file's column names (nothing when it can't be read: the full read then names the problem)."""
    try:
        with Path(path).open(newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def _targets(path: Path, df: pd.DataFrame, columns: list[str], squeeze: bool) -> np.ndarray:
    """The ``y:`` target columns as floats (``[N]`` for one value column); the error names the file and rows."""
    y = df[columns].apply(lambda c: pd.to_numeric(c.str.strip(), errors="coerce")).to_numpy(dtype=np.float64)
    bad = ~np.isfinite(y).all(axis=1)
    if bad.any():
        raise MemberError(f"{path}: the target column(s) {columns} hold values that are not finite numbers in "
                          f"{_bad_rows(bad, df['id'].tolist())}.")
    return y[:, 0] if squeeze else y


def read_predictions(path: str | Path, classes: Sequence[str] | None = None,
                     sums: bool = False) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read a prediction file: ids (as text: ``"NA"`` and ``"007"`` stay as they are), probabilities ``[N,K]``
    and labels (or None).

    Args:
        path: the CSV.
        classes: expected class order; the file's columns are reordered to it, and a file whose
            classes differ is refused.
        sums: also refuse rows whose probabilities do not sum to one.

    Raises:
        MemberError: a probability that is NaN, infinite or outside [0, 1], or text that is not a number
            (naming the file, the column and the rows).
        ValueError: the file's classes differ from ``classes``.
    """
    path = Path(path)
    prefix = VALUE_PREFIX if any(c.startswith(VALUE_PREFIX) for c in _header(path)) else PROB_PREFIX
    df = read_csv_as_text(path, what="Prediction file", numeric_prefix=prefix)
    if "id" not in df.columns:
        raise MemberError(f"{path}: no 'id' column; a prediction file is id[,label],p:<class>...")
    file_classes = [c[len(prefix):] for c in df.columns if c.startswith(prefix)]
    if classes is not None and sorted(file_classes) != sorted(classes):
        raise ValueError(f"{path}: classes {file_classes} differ from the expected {list(classes)}")
    order = list(classes) if classes is not None else file_classes
    columns = [prefix + c for c in order]
    ids = df["id"].tolist()
    probs = df[columns].to_numpy(dtype=np.float64)
    if prefix == VALUE_PREFIX:
        check_values(path, ids, probs, columns)
    else:
        check_probabilities(path, ids, probs, columns, sums)
    targets = [c for c in df.columns if c.startswith(TARGET_PREFIX)]
    labels = _labels(path, df) if "label" in df.columns else None
    if targets:
        labels = _targets(path, df, targets, squeeze=prefix == VALUE_PREFIX)
    return ids, probs, labels


def check_values(path: str | Path, ids: Sequence[str], values: np.ndarray, columns: Sequence[str],
                 first_line: int = 2) -> None:
    """Refuse predicted values (regression, ordinal) that are not finite numbers; naming the file, column, rows."""
    for j, column in enumerate(columns):
        bad = ~np.isfinite(values[:, j])
        if bad.any():
            raise MemberError(f"{path}: column {column!r} holds values that are not finite numbers in "
                              f"{_bad_rows(bad, ids, first_line)}. Recompute the file (delete it) or fix those rows.")


def output_columns(frame: pd.DataFrame) -> list[str]:
    """A prediction frame's output columns (``p:`` probabilities or ``v:`` values), in file order."""
    return [c for c in frame.columns if c.startswith(PROB_PREFIX) or c.startswith(VALUE_PREFIX)]


def frame_outputs(frame: pd.DataFrame, dtype: type = np.float32) -> np.ndarray:
    """A prediction frame's outputs ``[N, K]`` (probabilities, or values)."""
    return frame[output_columns(frame)].to_numpy(dtype)


def frame_labels(frame: pd.DataFrame) -> np.ndarray:
    """A prediction frame's targets: the ``label`` class indices, or the ``y:`` targets (``[N]`` for one value
    column, ``[N, L]`` for multi-label)."""
    if "label" in frame.columns:
        return frame["label"].to_numpy()
    targets = [c for c in frame.columns if c.startswith(TARGET_PREFIX)]
    y = frame[targets].to_numpy(np.float64)
    return y[:, 0] if any(c.startswith(VALUE_PREFIX) for c in frame.columns) else y


def file_layout(task: Task) -> dict[str, Any]:
    """The :class:`PredictionWriter` / :func:`write_predictions` keywords of a task's prediction files."""
    return {"values": task.is_value, "targets": None if task.softmax else list(task.columns)}
