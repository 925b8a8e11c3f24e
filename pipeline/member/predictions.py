"""Prediction files: ``id[,label],<one probability column per class>`` CSVs, streamed to disk.

Every stage that saves probabilities (training's validation predictions, predict's per-member and
ensemble predictions) writes this one format through :class:`PredictionWriter`, which appends chunk by
chunk into a temporary file and renames it into place only when complete.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import numpy as np
import pandas as pd

from pipeline.core.io import AtomicFile

__all__ = ["PredictionWriter", "write_predictions", "read_predictions", "PROB_PREFIX"]

PROB_PREFIX = "p:"


class PredictionWriter:
    """Stream ``(ids, probs[, labels])`` chunks into a prediction CSV; atomic on success.

    >>> with PredictionWriter(path, classes) as w:  # doctest: +SKIP
    ...     w.write(["a", "b"], probs)
    """

    def __init__(self, path: str | Path, classes: Sequence[str], with_labels: bool = False) -> None:
        self.path = Path(path)
        self.classes = list(classes)
        self.with_labels = with_labels
        self.rows = 0
        self._file = AtomicFile(self.path)
        self._fh = open(self._file.tmp, "w", newline="")
        header = ["id"] + (["label"] if with_labels else []) + [PROB_PREFIX + c for c in self.classes]
        csv.writer(self._fh).writerow(header)

    def write(self, ids: Sequence[str], probs: np.ndarray, labels: Sequence[int] | np.ndarray | None = None) -> None:
        """Append one chunk of rows."""
        probs = np.asarray(probs, dtype=np.float64)
        if probs.shape != (len(ids), len(self.classes)):
            raise ValueError(f"{self.path}: probs shape {probs.shape} != ({len(ids)}, {len(self.classes)})")
        frame = pd.DataFrame(probs, columns=[PROB_PREFIX + c for c in self.classes])
        frame.insert(0, "id", list(ids))
        if self.with_labels:
            if labels is None:
                raise ValueError(f"{self.path}: this prediction file needs labels")
            frame.insert(1, "label", np.asarray(labels, dtype=np.int64))
        frame.to_csv(self._fh, header=False, index=False, float_format="%.8g")
        self.rows += len(ids)

    def close(self) -> Path:
        """Finish the file and move it into place."""
        self._fh.close()
        return self._file.commit()

    def abort(self) -> None:
        """Drop the partial file."""
        self._fh.close()
        self._file.abort()

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
) -> Path:
    """Write a whole prediction file at once (atomically)."""
    with PredictionWriter(path, classes, with_labels=labels is not None) as writer:
        writer.write(ids, probs, labels)
    return writer.path


def read_predictions(path: str | Path, classes: Sequence[str] | None = None) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    """Read a prediction file: ids, probabilities ``[N,K]`` and labels (or None).

    Args:
        path: the CSV.
        classes: expected class order; the file's columns are reordered to it, and a file whose
            classes differ is refused.
    """
    path = Path(path)
    df = pd.read_csv(path, dtype={"id": str})
    file_classes = [c[len(PROB_PREFIX):] for c in df.columns if c.startswith(PROB_PREFIX)]
    if classes is not None and sorted(file_classes) != sorted(classes):
        raise ValueError(f"{path}: classes {file_classes} differ from the expected {list(classes)}")
    order = list(classes) if classes is not None else file_classes
    probs = df[[PROB_PREFIX + c for c in order]].to_numpy(dtype=np.float64)
    labels = df["label"].to_numpy(dtype=np.int64) if "label" in df.columns else None
    return df["id"].tolist(), probs, labels
