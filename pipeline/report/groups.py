"""Leaky folds: groups (``data.group_col``) whose rows lie in more than one fold of a member's ``folds.csv``.

Rows of one patient, animal or source photo in both training and validation make out-of-fold scores
optimistic. Group folds never do this; a user's own fold column (``data.fold_col``) may, and the report
says so.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.io import read_csv_as_text, short_hash
from pipeline.data.folds import straddling_groups
from pipeline.report.load import PredictRun

__all__ = ["group_warnings"]


def group_warnings(pr: PredictRun) -> list[str]:
    """One warning per distinct member ``folds.csv`` whose ``group`` column has groups in several folds.

    Member folders that are gone, and fold files without a group column, are skipped.
    """
    warnings, seen = [], set()
    for path in pr.info["members"].values():
        file = Path(path) / "folds.csv"
        if not file.is_file() or (digest := short_hash(file, 16)) in seen:
            continue
        seen.add(digest)
        folds = read_csv_as_text(file, what="Member folds file")
        if "group" not in folds.columns or "fold" not in folds.columns:
            continue
        leaks = straddling_groups(folds.astype({"fold": int}))
        if leaks:
            group, in_folds = next(iter(leaks.items()))
            warnings.append(
                f"{len(leaks)} of {folds['group'].nunique()} groups in {file} lie in more than one fold (e.g. group "
                f"{group!r} in folds {in_folds}; fold -1 = training only): rows of one group trained and validated "
                "the same model, so the out-of-fold scores here are optimistic. Make the folds with data.group_col "
                "(without data.fold_col) to keep every group in one fold."
            )
    return warnings
