"""The competition submission file: build it, validate it, and write it atomically.

Kaggle checks a submission against ``sample_submission.csv``: the header must match exactly, and rows
are matched by id (:mod:`pipeline.submission.format` reads the format). The submission keeps the sample's row
and column order, and :func:`write_submission` refuses to leave behind anything that Kaggle would
reject: the file is validated, written to a temporary file, read back, validated again, and only
then renamed into place.

Ids are always handled as strings, so ids such as ``"00042"`` keep their leading zeros.

>>> fmt = SubmissionFormat("id", "label", "label", "name", None, ["id", "label"])
>>> build_submission(["b", "a"], np.array([[0.9, 0.1], [0.2, 0.8]]), ["cat", "dog"], fmt, ["a", "b"])
  id label
0  a   dog
1  b   cat
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd

from pipeline.core.errors import duplicates, examples, id_differences
from pipeline.core.io import atomic_path, read_csv_as_text
from pipeline.member.predictions import PROB_PREFIX, check_probabilities, read_predictions
from pipeline.submission.format import INDEX_PATTERN, SubmissionError, SubmissionFormat
from pipeline.submission.target_format import TargetFormat

__all__ = ["CHUNK_CELLS", "FLOAT_FORMAT", "PROB_TOL", "build_submission", "validate_submission", "write_submission",
           "write_submission_from_predictions"]

log = logging.getLogger(__name__)

PROB_TOL = 1e-4
"""Largest accepted ``|row sum - 1|`` for probability submissions."""

FLOAT_FORMAT = "%.6g"
"""Six significant digits: the rounding error is relative, so a row's sum moves by at most 5e-7."""

CHUNK_CELLS = 1_000_000
"""Cells (rows × classes) per chunk when a submission is streamed from a prediction file: memory stays flat
in both N and K (the read-back check holds a chunk as text, about 60 bytes a cell)."""

_N_EXAMPLES = 5


def _reorder_to_sample(ids: list[str], probs: np.ndarray, sample: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows of ``probs`` in the sample's id order; the two id lists must hold the same ids."""
    _check_same_ids(ids, sample)
    return sample, probs[pd.Index(ids).get_indexer(sample)]


def _check_same_ids(ids: list[str], sample: list[str]) -> None:
    missing, extra = id_differences(sample, ids)
    if missing or extra or len(sample) != len(ids):
        raise SubmissionError(
            f"predicted ids differ from the sample's: {len(missing)} sample ids have no prediction, "
            f"e.g. {examples(missing)}; {len(extra)} predictions are not in the sample, "
            f"e.g. {examples(extra)}"
        )


def _check_unique(ids: list[str]) -> None:
    if dupes := duplicates(ids):
        raise SubmissionError(f"{len(dupes)} prediction ids occur more than once, e.g. {examples(dupes)}")


def build_submission(
    ids: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    fmt: SubmissionFormat,
    sample_ids: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Turn predictions into the submission table, in the sample's row and column order.

    Args:
        ids: Test ids, one per row of ``probs``.
        probs: Class probabilities ``[N, K]`` in ``classes`` order.
        classes: Class names in model-output order.
        fmt: Target format.
        sample_ids: The sample's ids; rows are reindexed to this order when given.

    Returns:
        A frame whose columns are ``fmt.header``: top-1 labels (ties to the lower class index) or
        probability columns in the sample's order.

    Raises:
        SubmissionError: Shapes disagree, ids repeat, or ids differ from ``sample_ids``.
    """
    ids = [str(i) for i in ids]
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(ids), len(classes)):
        raise SubmissionError(
            f"probs has shape {probs.shape}; expected ({len(ids)} ids, {len(classes)} classes)"
        )
    _check_unique(ids)
    if sample_ids is not None:
        ids, probs = _reorder_to_sample(ids, probs, [str(i) for i in sample_ids])
    columns: dict[str, Any] = {fmt.id_column: ids}
    if fmt.has_probabilities:
        unknown = [c for c in fmt.prob_columns or [] if c not in classes]
        if unknown:
            raise SubmissionError(f"format columns {unknown} are not classes; accepted: {list(classes)}")
        for col, name in zip(fmt.prob_value_columns, fmt.prob_columns or []):
            columns[col] = probs[:, list(classes).index(name)]
    if fmt.kind == "topk":
        if fmt.k > len(classes):
            raise SubmissionError(f"submission.k={fmt.k} is larger than the number of classes ({len(classes)})")
        # Stable sort of the negated probabilities: best first, ties to the lower class index (as argmax).
        top = np.argsort(-probs, axis=1, kind="stable")[:, : fmt.k]
        names = top.astype(str) if fmt.label_as == "index" else np.asarray(classes, dtype=object)[top]
        columns[cast(str, fmt.label_column)] = [" ".join(row) for row in names]
    elif fmt.label_column is not None:
        top1 = probs.argmax(axis=1)
        columns[fmt.label_column] = top1 if fmt.label_as == "index" else np.asarray(classes, dtype=object)[top1]
    return pd.DataFrame(columns)[fmt.header]


def _row_examples(mask: np.ndarray, ids: Sequence[str], values: Sequence[Any], offset: int = 0) -> str:
    """``"3 rows, e.g. row 0 (id 'a'): 1.5; ..."`` for the rows selected by ``mask`` (0-based, plus ``offset``)."""
    rows = np.flatnonzero(mask)
    shown = "; ".join(f"row {r + offset} (id {ids[r]!r}): {values[r]!r}" for r in rows[:_N_EXAMPLES])
    return f"{len(rows)} rows, e.g. {shown}{'; ...' if len(rows) > _N_EXAMPLES else ''}"


def _header_problem(header: list[str], expected: list[str]) -> str | None:
    if header == expected:
        return None
    if sorted(header) == sorted(expected):
        return f"header columns are in the wrong order: got {header}, the sample has {expected}"
    missing = [c for c in expected if c not in header]
    extra = [c for c in header if c not in expected]
    return (
        f"header {header} does not equal the sample's {expected}: missing columns {missing}, "
        f"unexpected columns {extra}"
    )


def _id_problems(id_values: pd.Series, expected_ids: Sequence[str]) -> list[str]:
    """Row count, empty, duplicate, missing and extra ids."""
    col = str(id_values.name)
    ids = id_values.astype(str).tolist()
    expected = [str(i) for i in expected_ids]
    problems = []
    empty = (id_values.isna() | (id_values.astype(str) == "")).to_numpy()
    if empty.any():
        problems.append(f"id column {col!r} has empty ids in {_row_examples(empty, ids, ids)}")
    if len(ids) != len(expected):
        problems.append(f"row count is {len(ids)} but the test set has {len(expected)} ids")
    if dupes := duplicates(ids):
        problems.append(f"{len(dupes)} duplicate ids in column {col!r}, e.g. {examples(dupes)}")
    missing, extra = id_differences(expected, ids)
    if missing:
        problems.append(f"{len(missing)} test ids are missing from column {col!r}, e.g. {examples(missing)}")
    if extra:
        problems.append(
            f"{len(extra)} ids in column {col!r} are not in the test set, e.g. {examples(extra)}"
        )
    return problems


def _probability_problems(df: pd.DataFrame, fmt: SubmissionFormat, ids: Sequence[str], offset: int = 0) -> list[str]:
    """Non-numeric, NaN, infinite or out-of-range values, and rows not summing to one."""
    cols = fmt.prob_value_columns
    values = df[cols].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    problems = []
    for j, col in enumerate(cols):
        v, raw = values[:, j], df[col].tolist()
        checks = (
            (np.isnan(v), "NaN, empty or non-numeric"),
            (np.isinf(v), "infinite"),
            (np.isfinite(v) & ((v < 0) | (v > 1)), "out-of-range"),
        )
        for mask, what in checks:
            if mask.any():
                problems.append(
                    f"column {col!r} has {what} values in {_row_examples(mask, ids, raw, offset)}; "
                    "accepted: probabilities in [0, 1]"
                )
    sums = values.sum(axis=1)
    off = np.isfinite(sums) & (np.abs(sums - 1) > PROB_TOL)
    if off.any():
        problems.append(
            f"probabilities do not sum to 1 (tolerance {PROB_TOL:g}) in "
            f"{_row_examples(off, ids, sums.tolist(), offset)}"
        )
    return problems


def _is_index(text: pd.Series, n_classes: int) -> np.ndarray:
    """Which cells are integer class indices in ``[0, n_classes)``."""
    digits = text.str.fullmatch(INDEX_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
    as_int = pd.to_numeric(text.where(digits), errors="coerce").to_numpy()
    return digits & (np.nan_to_num(as_int, nan=-1) < n_classes)


def _topk_valid(text: pd.Series, fmt: SubmissionFormat, classes: Sequence[str]) -> np.ndarray:
    """Which top-k cells hold exactly ``k`` distinct valid labels separated by single spaces."""
    names = set(classes)

    def ok(cell: str) -> bool:
        tokens = cell.split(" ")
        if len(tokens) != fmt.k or len(set(tokens)) != fmt.k:
            return False
        if fmt.label_as == "index":
            return bool(_is_index(pd.Series(tokens), len(classes)).all())
        return all(t in names for t in tokens)

    return np.array([ok(c) for c in text], dtype=bool)


def _label_problems(
    labels: pd.Series, fmt: SubmissionFormat, classes: Sequence[str], ids: Sequence[str], offset: int = 0
) -> list[str]:
    """Empty labels, and labels that are not class names (or not indices in ``[0, K)``)."""
    col, raw = str(labels.name), labels.tolist()
    text = labels.astype(str)
    empty = (labels.isna() | (text == "")).to_numpy()
    if fmt.label_as == "name":
        valid = text.isin(list(classes)).to_numpy()
        accepted = f"class names {examples(list(classes))}"
    else:
        valid = _is_index(text, len(classes))
        accepted = f"integer class indices 0..{len(classes) - 1}"
    if fmt.kind == "topk":
        valid, accepted = _topk_valid(text, fmt, classes), f"{fmt.k} distinct {accepted} separated by spaces"
    problems = []
    if empty.any():
        problems.append(f"column {col!r} has NaN or empty labels in {_row_examples(empty, ids, raw, offset)}")
    invalid = ~valid & ~empty
    if invalid.any():
        problems.append(
            f"column {col!r} has invalid labels in {_row_examples(invalid, ids, raw, offset)}; accepted: {accepted}"
        )
    return problems


def validate_submission(
    df: pd.DataFrame, fmt: SubmissionFormat | TargetFormat, expected_ids: Sequence[str], classes: Sequence[str]
) -> None:
    """Check everything Kaggle checks, and a little more, before the file is written.

    Checks: the header equals ``fmt.header`` (order too); the row count and the id set equal the
    test set's, with no duplicates; probabilities are finite, in ``[0, 1]`` and sum to 1 within
    :data:`PROB_TOL`; labels are valid class names or indices. Rows are reported 0-based, with id.
    A binary, multi-label, regression or ordinal :class:`TargetFormat` is checked per kind against its
    own task (``classes`` unused) by :func:`~pipeline.submission.target_build.validate_target_submission`.

    Raises:
        SubmissionError: Listing every problem found (a wrong header stops the checks early).
    """
    if isinstance(fmt, TargetFormat):
        from pipeline.submission.target_build import validate_target_submission  # it builds on this module

        return validate_target_submission(df, fmt, expected_ids)
    problem = _header_problem([str(c) for c in df.columns], fmt.header)
    if problem is not None:
        raise SubmissionError(problem)
    problems = _id_problems(df[fmt.id_column], expected_ids) + _value_problems(df, fmt, classes)
    _raise_problems(problems)


def _value_problems(df: pd.DataFrame, fmt: SubmissionFormat, classes: Sequence[str], offset: int = 0) -> list[str]:
    """Probability and label problems of ``df``, whose first row is row ``offset`` of the submission."""
    ids = df[fmt.id_column].astype(str).tolist()
    problems = []
    if fmt.has_probabilities:
        problems += _probability_problems(df, fmt, ids, offset)
    if fmt.label_column is not None:
        problems += _label_problems(df[fmt.label_column], fmt, classes, ids, offset)
    return problems


def _raise_problems(problems: list[str]) -> None:
    if problems:
        raise SubmissionError(f"submission has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


def _renormalised(df: pd.DataFrame, fmt: SubmissionFormat) -> pd.DataFrame:
    """A copy whose probability rows sum to one: rows may be off by up to PROB_TOL; dividing first keeps
    rounding the only error left."""
    out = df.copy()
    if fmt.has_probabilities:
        cols = fmt.prob_value_columns
        values = out[cols].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        out[cols] = values / values.sum(axis=1, keepdims=True)
    return out


def write_submission(
    df: pd.DataFrame,
    path: str | Path,
    fmt: SubmissionFormat,
    expected_ids: Sequence[str],
    classes: Sequence[str],
    float_format: str = FLOAT_FORMAT,
) -> Path:
    """Validate ``df`` and write it to ``path`` atomically.

    Probability rows are renormalised before formatting, and the formatted file is read back and
    validated again before it replaces ``path``. Any error leaves no new file and no temporary file,
    and a previous file at ``path`` untouched.

    Returns:
        ``path``.

    Raises:
        SubmissionError: ``df``, or the file as formatted, is invalid.
    """
    validate_submission(df, fmt, expected_ids, classes)
    out = _renormalised(df, fmt)
    path = Path(path)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format=float_format)
        try:
            validate_submission(read_csv_as_text(tmp), fmt, expected_ids, classes)
        except SubmissionError as err:
            raise SubmissionError(f"{path}: invalid once written with {float_format!r}: {err}") from err
    log.info("Wrote submission %s (%d rows, %s)", path, len(out), fmt.kind)
    return path


def _prediction_chunks(
    pred_path: Path, classes: Sequence[str], chunk_rows: int, order: np.ndarray | None, check: bool
) -> Iterator[tuple[int, list[str], np.ndarray]]:
    """``(first row, ids, probabilities)`` of a prediction file, ``chunk_rows`` rows at a time, in ``order``.

    With ``check``, NaN or out-of-range probabilities are refused here (a label or top-k submission would
    otherwise hide them behind an argmax); a probabilities submission checks them as its own values.
    """
    columns = [PROB_PREFIX + c for c in classes]
    if order is not None:  # rows not in the sample's order (a hand-made file): reorder in memory, once
        log.info("%s is not in the sample's row order; reading it whole to reorder it.", pred_path)
        ids, probs, _ = read_predictions(pred_path, classes)
        for start in range(0, len(order), chunk_rows):
            rows = order[start:start + chunk_rows]
            yield start, [ids[i] for i in rows], probs[rows]
        return
    start = 0
    for df in read_csv_as_text(pred_path, what="Prediction file", numeric_prefix=PROB_PREFIX, chunk_rows=chunk_rows):
        if start == 0 and sorted(c for c in df.columns if c.startswith(PROB_PREFIX)) != sorted(columns):
            raise SubmissionError(f"{pred_path}: classes differ from the expected {list(classes)}")
        ids, probs = df["id"].tolist(), df[columns].to_numpy(dtype=np.float64)
        if check:
            check_probabilities(pred_path, ids, probs, columns, first_line=start + 2)
        yield start, ids, probs
        start += len(df)


def _file_problems(path: Path, fmt: SubmissionFormat, expected_ids: Sequence[str], classes: Sequence[str],
                   chunk_rows: int) -> list[str]:
    """Everything :func:`validate_submission` checks, on a written file read back ``chunk_rows`` rows at a time."""
    ids: list[str] = []
    problems: list[str] = []
    for df in read_csv_as_text(path, what="Submission", chunk_rows=chunk_rows):
        if not ids and (problem := _header_problem([str(c) for c in df.columns], fmt.header)):
            return [problem]
        problems += _value_problems(df, fmt, classes, len(ids))
        ids += df[fmt.id_column].tolist()
    return _id_problems(pd.Series(ids, name=fmt.id_column, dtype=object), expected_ids) + problems


def write_submission_from_predictions(
    pred_path: str | Path, path: str | Path, fmt: SubmissionFormat, classes: Sequence[str],
    expected_ids: Sequence[str], sample_ids: Sequence[str] | None = None, chunk_rows: int | None = None,
    float_format: str = FLOAT_FORMAT,
) -> Path:
    """:func:`build_submission` + :func:`write_submission` streamed from a prediction file, ``chunk_rows`` at a time.

    Memory holds the ids and one chunk of ``chunk_rows × K`` probabilities (None: :data:`CHUNK_CELLS` ÷ K
    rows), never the whole ``N × K`` array; the file is byte for byte what the two functions write from the
    whole array (every step is row-wise), and is validated the same way (before it is renamed into place,
    as written and read back).

    Raises:
        SubmissionError: Ids repeat or differ from the sample's, or the submission (as built or as
            written) is invalid; nothing is left at ``path``.
    """
    chunk_rows = max(1, CHUNK_CELLS // max(1, len(classes))) if chunk_rows is None else chunk_rows
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be a positive integer; got {chunk_rows}")
    pred_path, path = Path(pred_path), Path(path)
    ids = [str(i) for i in read_csv_as_text(pred_path, what="Prediction file")["id"]]
    _check_unique(ids)
    order, out_ids = None, ids
    if sample_ids is not None:
        out_ids = [str(i) for i in sample_ids]
        _check_same_ids(ids, out_ids)
        order = None if ids == out_ids else pd.Index(ids).get_indexer(out_ids)
    _raise_problems(_id_problems(pd.Series(out_ids, name=fmt.id_column, dtype=object), expected_ids))
    with atomic_path(path) as tmp:
        problems: list[str] = []
        with open(tmp, "w", encoding="utf-8", newline="") as handle:
            for start, chunk_ids, probs in _prediction_chunks(pred_path, classes, chunk_rows, order,
                                                                   fmt.kind != "probabilities"):
                frame = build_submission(chunk_ids, probs, classes, fmt)
                problems += _value_problems(frame, fmt, classes, start)
                _renormalised(frame, fmt).to_csv(handle, index=False, header=start == 0, float_format=float_format)
        _raise_problems(problems)
        if problems := _file_problems(tmp, fmt, expected_ids, classes, chunk_rows):
            err = SubmissionError(f"submission has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))
            raise SubmissionError(f"{path}: invalid once written with {float_format!r}: {err}")
    log.info("Wrote submission %s (%d rows, %s), %d rows at a time", path, len(out_ids), fmt.kind, chunk_rows)
    return path
