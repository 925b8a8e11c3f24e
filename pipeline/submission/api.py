"""The Python API of the submission: a :class:`~pipeline.predict.api.Prediction` → the competition's file.

>>> write_submission_file(pred, "submission.csv", sample="data/comp/sample_submission.csv")  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.core.io import read_csv_as_text
from pipeline.predict.api import Prediction
from pipeline.predict.thresholds import Decision
from pipeline.submission.build import build_submission, write_submission
from pipeline.submission.format import format_from_config
from pipeline.submission.target_build import write_task_submission
from pipeline.submission.target_format import target_format

__all__ = ["write_submission_file"]


def write_submission_file(
    prediction: Prediction, path: str | Path, sample: str | Path | None = None, kind: str | None = None,
    id_column: str = "id", label_column: str = "label", k: int | None = None, label_as: str | None = None,
    decision: dict[str, Any] | None = None,
) -> Path:
    """Write ``prediction`` as a validated submission, atomically.

    Args:
        prediction: Ids, probabilities and classes.
        path: The file to write.
        sample: ``sample_submission.csv``: the format and row order come from it, and its ids must be the
            prediction's ids (``kind="topk"`` keeps a label sample's header).
        kind: ``label`` (top-1 class name), ``probabilities`` (one column per class), ``label+probabilities``
            (both; the default without a sample) or ``topk`` (the ``k`` best class names, space-separated).
        id_column: Without a sample, the id column's name.
        label_column: Without a sample, the label column's name.
        k: For ``kind="topk"``: classes per row, 1 to the number of classes.
        label_as: ``name`` (default) or ``index``.
        decision: Thresholds or cut points fitted on OOF rows (``predict.json``'s or ``ensemble.json``'s
            ``decision``) for a multi-label or ordinal prediction; None: 0.5 per label, grades rounded.

    A prediction of another task than one class per image (``prediction.task``) is written in that task's
    format (:func:`pipeline.submission.target_format.target_format`): tags, label columns, a value, a grade.

    >>> write_submission_file(pred, "submission.csv", kind="topk", k=3)  # doctest: +SKIP
    """
    if prediction.task is not None:
        return _write_task_file(prediction, Path(path), sample, kind, id_column, label_column, label_as, decision)
    fmt = format_from_config(kind, None if sample is not None else id_column, None if sample is not None else label_column,
                             label_as, prediction.classes, sample_csv=sample, k=k)
    sample_ids = None if sample is None else read_csv_as_text(sample)[fmt.id_column].tolist()
    frame = build_submission(prediction.ids, prediction.probs, prediction.classes, fmt, sample_ids)
    return write_submission(frame, path, fmt, sample_ids or prediction.ids, prediction.classes)


def _write_task_file(prediction: Prediction, path: Path, sample: str | Path | None, kind: str | None, id_column: str,
                     label_column: str, label_as: str | None, decision: dict[str, Any] | None) -> Path:
    task = prediction.task
    assert task is not None
    fmt = target_format(task, sample, kind=kind, id_column=None if sample is not None else id_column,
                        label_column=None if sample is not None else label_column, label_as=label_as)
    sample_ids = None if sample is None else read_csv_as_text(sample)[fmt.id_column].tolist()
    keys = ("kind", "values", "metric", "low")
    record: dict[str, Any] | None = {k: decision[k] for k in keys if k in decision} if decision else None
    decided = None if record is None else Decision.from_dict(record).apply(prediction.probs)
    return write_task_submission(prediction.ids, prediction.probs, decided, task, fmt, sample_ids, path)
