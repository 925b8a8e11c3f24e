"""The competition submission file: infer its format, build it, validate it, and write it atomically.

Kaggle checks a submission against ``sample_submission.csv``: the header must match exactly, and rows
are matched by id. So the format is read from the sample (:func:`infer_format`) or, where there is
no sample, taken from config (:func:`format_from_config`). The submission keeps the sample's row
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
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
import pandas as pd

from pipeline.utils import atomic_path, safe_name

__all__ = [
    "FLOAT_FORMAT",
    "PROB_TOL",
    "SubmissionError",
    "SubmissionFormat",
    "build_submission",
    "check_sample_ids",
    "format_from_config",
    "infer_format",
    "read_csv_as_text",
    "validate_submission",
    "write_submission",
]

log = logging.getLogger(__name__)

Kind = Literal["label", "probabilities"]
LabelAs = Literal["name", "index"]
KINDS: tuple[str, ...] = ("label", "probabilities")
LABEL_AS: tuple[str, ...] = ("name", "index")

PROB_TOL = 1e-4
"""Largest accepted ``|row sum - 1|`` for probability submissions."""

FLOAT_FORMAT = "%.6g"
"""Six significant digits: the rounding error is relative, so a row's sum moves by at most 5e-7."""

_N_EXAMPLES = 5
_INDEX_PATTERN = re.compile(r"\d+")


class SubmissionError(ValueError):
    """A submission Kaggle would reject; the message names the column, rows and accepted values."""


@dataclass
class SubmissionFormat:
    """What the submission file looks like.

    Attributes:
        id_column: Name of the id column.
        kind: ``"label"`` (one top-1 column) or ``"probabilities"`` (one column per class).
        label_column: The label column's name when ``kind == "label"``, else ``None``.
        label_as: Write labels as class ``"name"`` or as class ``"index"``.
        prob_columns: For probabilities, the class name behind each non-id column, in header order.
        header: The exact header to write, e.g. the sample's.
    """

    id_column: str
    kind: Kind
    label_column: str | None
    label_as: LabelAs
    prob_columns: list[str] | None
    header: list[str]

    def __post_init__(self) -> None:
        # Catch hand-built formats that build_submission could not honour, before any work is done.
        if self.kind not in KINDS or self.label_as not in LABEL_AS:
            raise ValueError(f"kind must be one of {KINDS} and label_as one of {LABEL_AS}; got {self}")
        if self.id_column not in self.header:
            raise ValueError(f"id column {self.id_column!r} is not in the header {self.header}")
        if self.kind == "label" and (self.label_column is None or self.value_columns != [self.label_column]):
            raise ValueError(f"a label format needs header [id, label_column]; got {self}")
        if self.kind == "probabilities" and (
            self.prob_columns is None or len(self.prob_columns) != len(self.value_columns)
        ):
            raise ValueError(f"a probabilities format needs one class per non-id column; got {self}")

    @property
    def value_columns(self) -> list[str]:
        """The header without the id column."""
        return [c for c in self.header if c != self.id_column]


def _examples(items: Sequence[Any]) -> str:
    """The first few items, for error messages that stay short on 100k-row files."""
    shown = ", ".join(repr(i) for i in items[:_N_EXAMPLES])
    return f"[{shown}{', ...' if len(items) > _N_EXAMPLES else ''}]"


def read_csv_as_text(path: str | Path) -> pd.DataFrame:
    """Read a CSV with every cell as text, so ids keep leading zeros and ``"NA"`` stays a string.

    Raises:
        ValueError: The file is empty; the message names it.
    """
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{path}: file is empty, expected a CSV with a header row") from err


def _column_key(name: str) -> str:
    return safe_name(name).casefold()


def _match_class_columns(columns: Sequence[str], classes: Sequence[str]) -> list[str] | None:
    """Map each column to its class name, or ``None`` unless the columns are exactly the classes.

    Rule: a column matches a class with exactly its name; failing that, a column matches the one
    class that reduces to the same key under ``safe_name`` + casefold (so ``"sugar_beet"`` matches
    ``"Sugar beet"``). A key shared by several unmatched classes is ambiguous and matches nothing.
    Every class must be matched exactly once.
    """
    if len(columns) != len(classes):
        return None
    unmatched = [c for c in classes if c not in columns]
    mapped = []
    for col in columns:
        if col in classes:
            mapped.append(col)
            continue
        candidates = [c for c in unmatched if _column_key(c) == _column_key(col)]
        if len(candidates) != 1:
            return None
        mapped.append(candidates[0])
    return mapped if sorted(mapped) == sorted(classes) else None


def _infer_label_as(values: pd.Series, classes: Sequence[str], sample_csv: Path) -> LabelAs:
    """``"index"`` when every sample value is an integer in ``[0, K)``, else ``"name"``."""
    text = values.astype(str).str.strip()
    is_int = text.str.fullmatch(_INDEX_PATTERN.pattern)
    if len(text) == 0 or not is_int.all() or not text.astype(int).between(0, len(classes) - 1).all():
        return "name"
    # Sample labels are often one placeholder value; warn when it reads as both a name and an index.
    if text.isin(classes).all() and any(classes[int(v)] != v for v in text.unique()):
        log.warning(
            "%s: label values %s are both class indices and class names; assuming indices, "
            "set label_as in config to choose",
            sample_csv,
            _examples(list(text.unique())),
        )
    return "index"


def infer_format(
    sample_csv: str | Path,
    classes: Sequence[str],
    id_column: str | None = None,
    label_as: LabelAs | None = None,
) -> SubmissionFormat:
    """Read the submission format from ``sample_submission.csv``.

    Args:
        sample_csv: The competition's sample submission.
        classes: Class names in model-output order.
        id_column: The id column; defaults to the sample's first column.
        label_as: Overrides the inferred label encoding (from config).

    Returns:
        A probabilities format if the non-id columns are exactly the classes, in any order; else a
        label format if there is one non-id column. A column names a class if it equals the class
        name, or else if both reduce to the same ``safe_name(...).casefold()`` key (``"sugar_beet"``
        for ``"Sugar beet"``); a key shared by several classes matches none of them.

    Raises:
        ValueError: The columns fit neither form; the message names the file and the columns.
    """
    sample_csv = Path(sample_csv)
    sample = read_csv_as_text(sample_csv)
    header = [str(c) for c in sample.columns]
    id_col = header[0] if id_column is None else id_column
    if id_col not in header:
        raise ValueError(f"{sample_csv}: id column {id_col!r} not found; columns are {header}")
    rest = [c for c in header if c != id_col]
    mapped = _match_class_columns(rest, classes)
    if mapped is not None:
        fmt = SubmissionFormat(id_col, "probabilities", None, "name", mapped, header)
    elif len(rest) == 1:
        encoding = label_as or _infer_label_as(sample[rest[0]], classes, sample_csv)
        fmt = SubmissionFormat(id_col, "label", rest[0], encoding, None, header)
    else:
        class_keys = {_column_key(c) for c in classes}
        unknown = [c for c in rest if c not in classes and _column_key(c) not in class_keys]
        raise ValueError(
            f"{sample_csv}: cannot infer the submission format from columns {header} (id column "
            f"{id_col!r}); columns matching no class: {unknown}. Accepted: the id column plus one "
            f"label column, or the id column plus one column per class {_examples(list(classes))}"
        )
    log.info("Submission format from %s: %s", sample_csv, fmt)
    return fmt


def format_from_config(
    kind: str | None,
    id_column: str | None,
    label_column: str | None,
    label_as: str | None,
    classes: Sequence[str],
    *,
    sample_csv: str | Path | None = None,
) -> SubmissionFormat:
    """Build the format from config settings, with an optional sample for the unset ones.

    With a sample, the format is inferred from it (``id_column`` and ``label_as`` from config
    override the inference). If config also sets ``kind`` or ``label_column`` and they disagree
    with the sample, config wins: the header is built from config and a warning says it will no
    longer match the sample's, which Kaggle checks.

    Without a sample, ``kind`` and ``id_column`` are required; probability columns are the class
    names in class order, and ``label_as`` defaults to ``"name"``.

    Raises:
        ValueError: A required setting is missing or not one of the accepted values.
    """
    if kind is not None and kind not in KINDS:
        raise ValueError(f"submission kind {kind!r} is not one of {KINDS}")
    if label_as is not None and label_as not in LABEL_AS:
        raise ValueError(f"submission label_as {label_as!r} is not one of {LABEL_AS}")
    encoding = cast("LabelAs | None", label_as)
    if sample_csv is not None:
        inferred = infer_format(sample_csv, classes, id_column, encoding)
        same_kind = kind is None or kind == inferred.kind
        if same_kind and (label_column is None or label_column == inferred.label_column):
            return inferred
        id_column = id_column or inferred.id_column
    if kind is None or id_column is None or (kind == "label" and label_column is None):
        raise ValueError(
            "to build the submission format from config, set kind (one of "
            f"{KINDS}), id_column, and label_column for kind 'label'; got kind={kind!r}, "
            f"id_column={id_column!r}, label_column={label_column!r}"
        )
    if kind == "label":
        fmt = SubmissionFormat(
            id_column, "label", label_column, encoding or "name", None, [id_column, cast(str, label_column)]
        )
    else:
        fmt = SubmissionFormat(id_column, "probabilities", None, "name", list(classes), [id_column, *classes])
    if sample_csv is not None:
        log.warning(
            "Config overrides %s: writing header %s, which differs from the sample's", sample_csv, fmt.header
        )
    log.info("Submission format from config: %s", fmt)
    return fmt


def _id_differences(expected: Sequence[str], got: Sequence[str]) -> tuple[list[str], list[str]]:
    """Ids in ``expected`` but not ``got`` and ids in ``got`` but not ``expected``, in input order."""
    expected_set, got_set = set(expected), set(got)
    return [i for i in expected if i not in got_set], [i for i in got if i not in expected_set]


def _duplicates(ids: Sequence[str]) -> list[str]:
    series = pd.Series(ids, dtype=object)
    return list(series[series.duplicated()].unique())


def _reorder_to_sample(ids: list[str], probs: np.ndarray, sample: list[str]) -> tuple[list[str], np.ndarray]:
    """Rows of ``probs`` in the sample's id order; the two id lists must hold the same ids."""
    missing, extra = _id_differences(sample, ids)
    if missing or extra or len(sample) != len(ids):
        raise SubmissionError(
            f"predicted ids differ from the sample's: {len(missing)} sample ids have no prediction, "
            f"e.g. {_examples(missing)}; {len(extra)} predictions are not in the sample, "
            f"e.g. {_examples(extra)}"
        )
    return sample, probs[pd.Index(ids).get_indexer(sample)]


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
    if dupes := _duplicates(ids):
        raise SubmissionError(f"{len(dupes)} prediction ids occur more than once, e.g. {_examples(dupes)}")
    if sample_ids is not None:
        ids, probs = _reorder_to_sample(ids, probs, [str(i) for i in sample_ids])
    columns: dict[str, Any] = {fmt.id_column: ids}
    if fmt.kind == "probabilities":
        unknown = [c for c in fmt.prob_columns or [] if c not in classes]
        if unknown:
            raise SubmissionError(f"format columns {unknown} are not classes; accepted: {list(classes)}")
        for col, name in zip(fmt.value_columns, fmt.prob_columns or []):
            columns[col] = probs[:, list(classes).index(name)]
    else:
        top = probs.argmax(axis=1)
        columns[cast(str, fmt.label_column)] = (
            top if fmt.label_as == "index" else np.asarray(classes, dtype=object)[top]
        )
    return pd.DataFrame(columns)[fmt.header]


def _row_examples(mask: np.ndarray, ids: Sequence[str], values: Sequence[Any]) -> str:
    """``"3 rows, e.g. row 0 (id 'a'): 1.5; ..."`` for the rows selected by ``mask`` (0-based)."""
    rows = np.flatnonzero(mask)
    shown = "; ".join(f"row {r} (id {ids[r]!r}): {values[r]!r}" for r in rows[:_N_EXAMPLES])
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
    if dupes := _duplicates(ids):
        problems.append(f"{len(dupes)} duplicate ids in column {col!r}, e.g. {_examples(dupes)}")
    missing, extra = _id_differences(expected, ids)
    if missing:
        problems.append(f"{len(missing)} test ids are missing from column {col!r}, e.g. {_examples(missing)}")
    if extra:
        problems.append(
            f"{len(extra)} ids in column {col!r} are not in the test set, e.g. {_examples(extra)}"
        )
    return problems


def _probability_problems(df: pd.DataFrame, fmt: SubmissionFormat, ids: Sequence[str]) -> list[str]:
    """Non-numeric, NaN, infinite or out-of-range values, and rows not summing to one."""
    cols = fmt.value_columns
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
                    f"column {col!r} has {what} values in {_row_examples(mask, ids, raw)}; "
                    "accepted: probabilities in [0, 1]"
                )
    sums = values.sum(axis=1)
    off = np.isfinite(sums) & (np.abs(sums - 1) > PROB_TOL)
    if off.any():
        problems.append(
            f"probabilities do not sum to 1 (tolerance {PROB_TOL:g}) in "
            f"{_row_examples(off, ids, sums.tolist())}"
        )
    return problems


def _label_problems(
    labels: pd.Series, fmt: SubmissionFormat, classes: Sequence[str], ids: Sequence[str]
) -> list[str]:
    """Empty labels, and labels that are not class names (or not indices in ``[0, K)``)."""
    col, raw = str(labels.name), labels.tolist()
    text = labels.astype(str)
    empty = (labels.isna() | (text == "")).to_numpy()
    if fmt.label_as == "name":
        valid = text.isin(list(classes)).to_numpy()
        accepted = f"class names {_examples(list(classes))}"
    else:
        digits = text.str.fullmatch(_INDEX_PATTERN.pattern).fillna(False).to_numpy(dtype=bool)
        as_int = pd.to_numeric(text.where(digits), errors="coerce").to_numpy()
        valid = digits & (np.nan_to_num(as_int, nan=-1) < len(classes))
        accepted = f"integer class indices 0..{len(classes) - 1}"
    problems = []
    if empty.any():
        problems.append(f"column {col!r} has NaN or empty labels in {_row_examples(empty, ids, raw)}")
    invalid = ~valid & ~empty
    if invalid.any():
        problems.append(
            f"column {col!r} has invalid labels in {_row_examples(invalid, ids, raw)}; accepted: {accepted}"
        )
    return problems


def validate_submission(
    df: pd.DataFrame, fmt: SubmissionFormat, expected_ids: Sequence[str], classes: Sequence[str]
) -> None:
    """Check everything Kaggle checks, and a little more, before the file is written.

    Checks: the header equals ``fmt.header`` (order too); the row count and the id set equal the
    test set's, with no duplicates; probabilities are finite, in ``[0, 1]`` and sum to 1 within
    :data:`PROB_TOL`; labels are valid class names or indices. Rows are reported 0-based, with id.

    Raises:
        SubmissionError: Listing every problem found (a wrong header stops the checks early).
    """
    problem = _header_problem([str(c) for c in df.columns], fmt.header)
    if problem is not None:
        raise SubmissionError(problem)
    ids = df[fmt.id_column].astype(str).tolist()
    problems = _id_problems(df[fmt.id_column], expected_ids)
    if fmt.kind == "probabilities":
        problems += _probability_problems(df, fmt, ids)
    else:
        problems += _label_problems(df[cast(str, fmt.label_column)], fmt, classes, ids)
    if problems:
        raise SubmissionError(f"submission has {len(problems)} problem(s):\n  - " + "\n  - ".join(problems))


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
    out = df.copy()
    if fmt.kind == "probabilities":
        # Rows may be off by up to PROB_TOL; dividing first keeps rounding the only error left.
        values = out[fmt.value_columns].apply(pd.to_numeric).to_numpy(dtype=np.float64)
        out[fmt.value_columns] = values / values.sum(axis=1, keepdims=True)
    path = Path(path)
    with atomic_path(path) as tmp:
        out.to_csv(tmp, index=False, float_format=float_format)
        try:
            validate_submission(read_csv_as_text(tmp), fmt, expected_ids, classes)
        except SubmissionError as err:
            raise SubmissionError(f"{path}: invalid once written with {float_format!r}: {err}") from err
    log.info("Wrote submission %s (%d rows, %s)", path, len(out), fmt.kind)
    return path


def check_sample_ids(sample_ids: Sequence[str], test_ids: Sequence[str], sample_path: str | Path) -> None:
    """Check that the sample submission lists exactly the test images.

    Raises:
        SubmissionError: Naming ``sample_path``, with counts and examples of ids only in the sample
            and only in the test folder, and of duplicated sample ids.
    """
    sample = [str(i) for i in sample_ids]
    test = [str(i) for i in test_ids]
    problems = []
    if dupes := _duplicates(sample):
        problems.append(f"{len(dupes)} ids occur more than once in the sample, e.g. {_examples(dupes)}")
    only_test, only_sample = _id_differences(test, sample)
    if only_sample:
        problems.append(f"{len(only_sample)} ids only in the sample, e.g. {_examples(only_sample)}")
    if only_test:
        problems.append(f"{len(only_test)} ids only in the test folder, e.g. {_examples(only_test)}")
    if not problems:
        return
    hint = ""
    if {os.path.splitext(i)[0] for i in sample} == {os.path.splitext(i)[0] for i in test}:
        hint = "; they match once file extensions are removed, so strip the extension from the ids"
    raise SubmissionError(
        f"{sample_path}: the {len(sample)} sample submission ids do not match the {len(test)} test "
        f"images: {'; '.join(problems)}{hint}"
    )
