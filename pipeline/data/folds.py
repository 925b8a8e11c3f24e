"""Folds: which training rows validate which member, fixed once per sweep and saved as ``folds.csv``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable

__all__ = ["make_folds", "load_or_create_folds", "split_indices"]


def make_folds(ids: Sequence[str], labels: np.ndarray, n_folds: int, seed: int, holdout_fraction: float) -> pd.DataFrame:
    """Assign every training row a fold; a member with ``data.fold=f`` validates on ``fold == f``.

    ``n_folds >= 2`` gives stratified K-fold; ``n_folds`` of 0 or 1 gives a stratified holdout where
    validation rows have fold 0 and training-only rows fold -1.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    fold = np.full(len(ids), -1, dtype=np.int64)
    idx = np.arange(len(ids))
    if n_folds >= 2:
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for f, (_, val_idx) in enumerate(skf.split(idx, labels)):
            fold[val_idx] = f
    else:
        if not 0.0 < holdout_fraction < 1.0:
            raise DataError(f"data.holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
        _, val_idx = train_test_split(idx, test_size=holdout_fraction, random_state=seed, stratify=labels)
        fold[val_idx] = 0
    return pd.DataFrame({"id": list(ids), "label": labels, "fold": fold})


def load_or_create_folds(path: Path, table: ImageTable, spec: DataSpec) -> pd.DataFrame:
    """Read the sweep's saved folds, or create and save them, so every member sees the same split.

    Raises:
        DataError: if a saved fold file does not describe this training table or fold scheme.
    """
    if table.labels is None:
        raise DataError("Folds need a labelled training table.")
    wanted = make_folds(table.ids, table.labels, spec.n_folds, spec.split_seed, spec.holdout_fraction)
    if path.exists():
        saved = pd.read_csv(path, dtype={"id": str})
        same = (
            list(saved.columns) == ["id", "label", "fold"]
            and saved["id"].tolist() == wanted["id"].tolist()
            and saved["fold"].tolist() == wanted["fold"].tolist()
        )
        if not same:
            raise DataError(
                f"{path} holds folds for different data or a different fold scheme "
                f"(data.n_folds={spec.n_folds}, data.split_seed={spec.split_seed}). "
                "Use a new sweep_name, or delete the file if the data really changed."
            )
        return saved
    with atomic_path(path) as tmp:
        wanted.to_csv(tmp, index=False)
    return wanted


def split_indices(folds: pd.DataFrame, fold: int, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices of one member."""
    n_valid = max(n_folds, 1)
    if not 0 <= fold < n_valid:
        raise DataError(f"data.fold={fold} is out of range: accepted 0..{n_valid - 1} for data.n_folds={n_folds}.")
    is_val = folds["fold"].to_numpy() == fold
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
