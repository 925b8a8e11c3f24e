"""The Python API of the submission: a :class:`~pipeline.predict.api.Prediction` → the competition's file.

>>> write_submission_file(pred, "submission.csv", sample="data/comp/sample_submission.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from pipeline.predict.api import Prediction
from pipeline.submission.build import build_submission, write_submission
from pipeline.submission.format import format_from_config, infer_format

__all__ = ["write_submission_file"]


def write_submission_file(
    prediction: Prediction, path: str | Path, sample: str | Path | None = None, kind: str | None = None,
    id_column: str = "id", label_column: str = "label",
) -> Path:
    """Write ``prediction`` as a validated submission, atomically.

    Args:
        prediction: Ids, probabilities and classes.
        path: The file to write.
        sample: ``sample_submission.csv``: the format and row order come from it, and its ids must be the
            prediction's ids.
        kind: Without a sample, ``label`` (top-1 class name) or ``probabilities`` (one column per class).
        id_column: Without a sample, the id column's name.
        label_column: Without a sample, the label column's name (``kind="label"``).
    """
    if sample is not None:
        fmt = infer_format(sample, prediction.classes)
        from pipeline.core.io import read_csv_as_text

        sample_ids = read_csv_as_text(sample)[fmt.id_column].tolist()
    else:
        fmt = format_from_config(kind, id_column, label_column, None, prediction.classes)
        sample_ids = None
    frame = build_submission(prediction.ids, prediction.probs, prediction.classes, fmt, sample_ids)
    return write_submission(frame, path, fmt, sample_ids or prediction.ids, prediction.classes)
