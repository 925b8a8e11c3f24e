"""The ``submission`` config node: the file name and, where the sample does not say it, the format."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SubmissionOptions"]


@dataclass
class SubmissionOptions:
    """The ``submission`` config node: format from the sample unless ``kind`` is set.

    Attributes:
        filename: The submission file, in the predict folder.
        kind: ``label``, ``probabilities``, ``label+probabilities`` or ``topk``; binary: ``probability`` or
            ``label``; multi-label: ``tags``, ``tag_ids`` or ``label_columns``; regression ``value``; ordinal
            ``grade`` (:mod:`pipeline.submission.target_format`). Null: inferred from ``data.sample_submission``,
            or, without a sample, ``label+probabilities`` (binary ``probability``, multi-label ``tags``).
        id_column: The id column (default: the sample's first column, or ``data.id_col``).
        label_column: The label column without a sample (default ``label``).
        label_as: ``name`` or ``index``.
        k: ``topk``: how many classes per row (1 to the number of classes).
        label_values: ``label_columns``: ``decisions`` (0/1) or ``probabilities``; null: from the sample's
            values (non-integer numbers: probabilities), else decisions.
    """

    filename: str = "submission.csv"
    kind: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    label_as: str | None = None
    k: int | None = None
    label_values: str | None = None
