"""The ``submission`` config node: the file name and, where the sample does not say it, the format."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SubmissionOptions"]


@dataclass
class SubmissionOptions:
    """The ``submission`` config node: format from the sample unless ``kind`` is set."""

    filename: str = "submission.csv"
    kind: str | None = None
    id_column: str | None = None
    label_column: str | None = None
    label_as: str | None = None
