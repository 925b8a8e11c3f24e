"""The submission's format: read from ``sample_submission.csv`` (:func:`infer_format`) or from config.

Kaggle checks a submission against ``sample_submission.csv``: the header must match exactly, and rows
are matched by id. So the format is read from the sample or, where there is no sample, taken from
config (:func:`format_from_config`).

Kinds (``submission.kind``):

- ``label``: ``id,label`` with the top-1 class name (or index, ``label_as: index``);
- ``probabilities``: ``id,<class 1>,<class 2>…``, one probability column per class;
- ``label+probabilities``: ``id,label,<class 1>…`` — both; the default when there is no sample;
- ``topk``: ``id,label`` with the ``submission.k`` most probable class names, best first, separated by
  spaces (MAP@k competitions).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, cast

import pandas as pd

from pipeline.core.errors import PipelineError, examples
from pipeline.core.io import read_csv_as_text, safe_name

__all__ = [
    "KINDS", "NO_SAMPLE_KIND", "LABEL_AS", "INDEX_PATTERN", "SubmissionError", "SubmissionFormat", "infer_format",
    "format_from_config",
]

log = logging.getLogger(__name__)

Kind = Literal["label", "probabilities", "label+probabilities", "topk"]
LabelAs = Literal["name", "index"]
KINDS: tuple[str, ...] = ("label", "probabilities", "label+probabilities", "topk")
NO_SAMPLE_KIND = "label+probabilities"
"""The kind written when there is no sample submission and ``submission.kind`` is not set."""
LABEL_AS: tuple[str, ...] = ("name", "index")

INDEX_PATTERN = re.compile(r"\d+")


class SubmissionError(PipelineError):
    """A submission Kaggle would reject; the message names the column, rows and accepted values."""


@dataclass
class SubmissionFormat:
    """What the submission file looks like.

    Attributes:
        id_column: Name of the id column.
        kind: One of :data:`KINDS`.
        label_column: The label column's name (``label``, ``label+probabilities``, ``topk``), else ``None``.
        label_as: Write labels as class ``"name"`` or as class ``"index"``.
        prob_columns: With probabilities, the class name behind each probability column, in header order.
        header: The exact header to write, e.g. the sample's.
        k: ``topk``: the number of classes per row.
    """

    id_column: str
    kind: Kind
    label_column: str | None
    label_as: LabelAs
    prob_columns: list[str] | None
    header: list[str]
    k: int = 1

    def __post_init__(self) -> None:
        # Catch hand-built formats that build_submission could not honour, before any work is done.
        if self.kind not in KINDS or self.label_as not in LABEL_AS:
            raise ValueError(f"kind must be one of {KINDS} and label_as one of {LABEL_AS}; got {self}")
        if self.id_column not in self.header or len(set(self.header)) != len(self.header):
            raise ValueError(f"the header {self.header} must hold the id column {self.id_column!r} and no repeats")
        has_label = self.kind != "probabilities"
        if has_label and (self.label_column is None or self.label_column not in self.value_columns):
            raise ValueError(f"a {self.kind} format needs its label column in the header; got {self}")
        if self.kind in ("label", "topk") and self.value_columns != [self.label_column]:
            raise ValueError(f"a {self.kind} format needs header [id, label_column]; got {self}")
        if self.has_probabilities and (
            self.prob_columns is None or len(self.prob_columns) != len(self.prob_value_columns)
        ):
            raise ValueError(f"a {self.kind} format needs one class per probability column; got {self}")
        if self.kind == "topk" and (not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"submission.k must be a positive integer for kind topk; got {self.k!r}")

    @property
    def value_columns(self) -> list[str]:
        """The header without the id column."""
        return [c for c in self.header if c != self.id_column]

    @property
    def has_probabilities(self) -> bool:
        return self.kind in ("probabilities", "label+probabilities")

    @property
    def prob_value_columns(self) -> list[str]:
        """The probability columns: the header without the id and label columns."""
        return [c for c in self.value_columns if c != self.label_column] if self.has_probabilities else []



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
    """``"index"`` when every sample value is an integer in ``[0, K)`` and no class name, else ``"name"``.

    Raises:
        SubmissionError: every value reads both as a class index and as a class name, and the two readings
            differ (labels ``"1".."10"`` with a sample ``"9"``): never guessed, ``submission.label_as`` settles it.
    """
    text = values.astype(str).str.strip()
    is_int = text.str.fullmatch(INDEX_PATTERN.pattern)
    if len(text) == 0 or not is_int.all() or not text.astype(int).between(0, len(classes) - 1).all():
        return "name"
    # Sample labels are often one placeholder value: one that reads as both a name and an index is ambiguous.
    if text.isin(classes).all() and any(classes[int(v)] != v for v in text.unique()):
        shown = text.unique()[:3]
        readings = ", ".join(f"{v!r} is class {v!r} by name but class {classes[int(v)]!r} by index" for v in shown)
        raise SubmissionError(
            f"{sample_csv}: the label values {examples(list(text.unique()))} are both class names and class "
            f"indices ({readings}); the submission cannot tell which to write. Set submission.label_as=name "
            "(write class names) or submission.label_as=index (write 0-based class indices)."
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
        raise SubmissionError(f"{sample_csv}: id column {id_col!r} not found; columns are {header}")
    rest = [c for c in header if c != id_col]
    mapped = _match_class_columns(rest, classes)
    if mapped is not None:
        fmt = SubmissionFormat(id_col, "probabilities", None, "name", mapped, header)
    elif len(rest) == 1 and not (len(classes) > 1 and _column_key(rest[0]) in {_column_key(c) for c in classes}):
        encoding = label_as or _infer_label_as(sample[rest[0]], classes, sample_csv)
        fmt = SubmissionFormat(id_col, "label", rest[0], encoding, None, header)
    else:
        class_keys = {_column_key(c) for c in classes}
        unknown = [c for c in rest if c not in classes and _column_key(c) not in class_keys]
        rest_keys = {_column_key(c) for c in rest}
        absent = [c for c in classes if c not in rest and _column_key(c) not in rest_keys]
        raise SubmissionError(
            f"{sample_csv}: cannot infer the submission format from columns {header} (id column "
            f"{id_col!r}); columns matching no class the members were trained on: {unknown}; classes "
            f"without a column: {examples(absent)}. Accepted: the id column plus one label column, or "
            f"the id column plus one column per class {examples(list(classes))}"
        )
    log.info("Submission format from %s: %s", sample_csv, fmt)
    return fmt


def _check_settings(kind: str | None, label_as: str | None, k: int | None, classes: Sequence[str]) -> None:
    """The config values alone: accepted kind and encoding, and a usable ``k`` for top-k."""
    if kind is not None and kind not in KINDS:
        raise SubmissionError(f"submission.kind {kind!r} is not one of {KINDS}")
    if label_as is not None and label_as not in LABEL_AS:
        raise SubmissionError(f"submission.label_as {label_as!r} is not one of {LABEL_AS}")
    if kind != "topk":
        return
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(classes):
        raise SubmissionError(
            f"submission.k={k!r}: kind topk needs k between 1 and the number of classes ({len(classes)})"
        )
    spaced = [c for c in classes if re.search(r"\s", c)]
    if spaced and label_as != "index":
        raise SubmissionError(
            f"kind topk separates class names by spaces, but classes {examples(spaced)} contain spaces; "
            "set submission.label_as=index"
        )


def _from_settings(kind: str, id_column: str, label_column: str, encoding: LabelAs, classes: Sequence[str],
                   k: int | None) -> SubmissionFormat:
    taken = {id_column, label_column} if kind == "label+probabilities" else {id_column}
    if kind in ("probabilities", "label+probabilities") and (clash := [c for c in classes if c in taken]):
        raise SubmissionError(
            f"classes {clash} have the name of the id or label column; set submission.id_column / label_column"
        )
    if kind == "probabilities":
        return SubmissionFormat(id_column, "probabilities", None, "name", list(classes), [id_column, *classes])
    if kind == "label+probabilities":
        return SubmissionFormat(id_column, "label+probabilities", label_column, encoding, list(classes),
                                [id_column, label_column, *classes])
    return SubmissionFormat(id_column, cast(Kind, kind), label_column, encoding, None, [id_column, label_column], k or 1)


def format_from_config(
    kind: str | None,
    id_column: str | None,
    label_column: str | None,
    label_as: str | None,
    classes: Sequence[str],
    *,
    sample_csv: str | Path | None = None,
    k: int | None = None,
) -> SubmissionFormat:
    """Build the format from config settings, with an optional sample for the unset ones.

    With a sample, the format is inferred from it (``id_column`` and ``label_as`` from config
    override the inference). ``kind: topk`` keeps a label sample's header. If config sets another
    ``kind`` or ``label_column`` that disagrees with the sample, config wins: the header is built from
    config and a warning says it will no longer match the sample's, which Kaggle checks.

    Without a sample, ``kind`` defaults to ``label+probabilities``, ``id_column`` to ``id`` and
    ``label_column`` to ``label``; probability columns are the class names in class order, and
    ``label_as`` defaults to ``"name"``.

    Raises:
        ValueError: A setting is not one of the accepted values, ``k`` does not fit the classes, or a class
            has the name of the id or label column.
    """
    _check_settings(kind, label_as, k, classes)
    encoding = cast("LabelAs | None", label_as)
    if sample_csv is not None:
        inferred = infer_format(sample_csv, classes, id_column, encoding)
        if kind == "topk" and inferred.kind == "label" and label_column in (None, inferred.label_column):
            return replace(inferred, kind="topk", k=cast(int, k))
        same_kind = kind is None or kind == inferred.kind
        if same_kind and (label_column is None or label_column == inferred.label_column):
            return inferred
        id_column = id_column or inferred.id_column
    fmt = _from_settings(kind or NO_SAMPLE_KIND, id_column or "id", label_column or "label", encoding or "name",
                         classes, k)
    if sample_csv is not None:
        log.warning(
            "Config overrides %s: writing header %s, which differs from the sample's", sample_csv, fmt.header
        )
    log.info("Submission format from config: %s", fmt)
    return fmt
