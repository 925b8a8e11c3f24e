"""Folds: which training rows validate which member, checked, fixed once per sweep and saved as ``folds.csv``.

Three rules make folds (:func:`fold_rule`): stratified (K-fold, or a holdout), stratified *group* folds
when ``data.group_col`` names a column of groups (scikit-learn's StratifiedGroupKFold: no group in two
folds; a holdout takes one of ``round(1 / holdout_fraction)`` group folds), and the user's own folds
when ``data.fold_col`` names a column of integers ``0..K-1``. ``folds.csv`` holds ``id,label,fold`` (``label``:
the class, or for other tasks the stratum a row was split on: see :func:`fold_strata`), then
``group`` when there is a group column, and ``rule``, the rule that made them; a sweep that asks for
another rule than its saved file's is refused instead of silently reusing the old folds.

The task (``ImageTable.task``) says what is stratified: classes; multi-label rows by iterative
stratification (``iterstrat``'s MultilabelStratifiedKFold / ShuffleSplit; with groups, StratifiedGroupKFold
on each row's rarest label); regression targets by quantile bins; ordinal targets by grade.

The split is checked before anything is written: the fold index must exist, stratified K-fold needs
``data.n_folds`` rows of every class and a holdout two, and the holdout's validation and training parts
must each hold every class. The error names the classes (not their indices) and their counts; for other
tasks the labels (positive rows), grades or target bins.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError
from pipeline.core.io import atomic_path, read_csv_as_text
from pipeline.core.task import Task, strata
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_split_columns

__all__ = [
    "make_folds", "load_or_create_folds", "split_indices", "check_fold_index", "check_split", "resolve_folds", "save_folds",
    "fold_rule", "straddling_groups", "fold_strata",
]

log = logging.getLogger(__name__)


def check_fold_index(fold: int, n_folds: int) -> None:
    """Refuse a ``data.n_folds`` below 0 or a ``data.fold`` the split does not have."""
    if n_folds < 0:
        raise DataError(f"data.n_folds={n_folds} is not valid: use 0 (a holdout split) or K >= 2 (K-fold).")
    n_valid = max(n_folds, 1)
    if not 0 <= fold < n_valid:
        raise DataError(f"data.fold={fold} is out of range: accepted 0..{n_valid - 1} for data.n_folds={n_folds}.")


_NOUN = {"multiclass": "class", "binary": "class", "multilabel": "label", "regression": "target bin",
         "ordinal": "grade"}
"""What one stratum of a task is called in the count checks' messages."""


def _kind(task: Task | None) -> str:
    return "multiclass" if task is None else task.kind


def _n_bins(n: int, n_folds: int, holdout_fraction: float) -> int:
    """Regression: quantile bins that can each give every fold (or both sides of a holdout) a row."""
    if n_folds >= 2:
        return max(1, min(10, n // n_folds))
    n_val = math.ceil(holdout_fraction * n) if 0 < holdout_fraction < 1 else 1
    return max(1, min(10, n_val, n - n_val))


def fold_strata(task: Task | None, labels: np.ndarray, n_folds: int = 0, holdout_fraction: float = 0.2) -> np.ndarray:
    """The integer a row is stratified on (``folds.csv``'s ``label``): its class, its rarest positive label,
    its target's quantile bin, or its grade; ``labels`` themselves for a multiclass task or none."""
    kind = _kind(task)
    if kind in ("multiclass", "binary"):
        return np.asarray(labels)
    if kind == "ordinal":
        return np.rint(np.asarray(labels)).astype(np.int64)
    return strata(kind, np.asarray(labels), bins=_n_bins(len(labels), n_folds, holdout_fraction))


def _counts(labels: np.ndarray, classes: Sequence[str] | None, task: Task | None = None, n_folds: int = 0,
            holdout_fraction: float = 0.2) -> dict[str, int]:
    """Rows per stratum, by name: per class, positive rows per label, rows per grade or per target bin."""
    kind = _kind(task)
    if kind == "multilabel":
        return {str(c): int(k) for c, k in zip(classes or range(labels.shape[1]), labels.astype(bool).sum(axis=0))}
    if kind == "regression":
        bins = fold_strata(task, labels, n_folds, holdout_fraction)
        return {f"values {labels[bins == b].min():g} to {labels[bins == b].max():g}": int((bins == b).sum())
                for b in np.unique(bins)}
    values, counts = np.unique(fold_strata(task, labels), return_counts=True)
    name = (lambda v: classes[int(v)]) if classes and kind != "ordinal" else (
        (lambda v: f"grade {v}") if kind == "ordinal" else (lambda v: str(v)))
    return {name(v): int(c) for v, c in zip(values, counts)}


def _listed(counts: dict[str, int], noun: str = "class") -> str:
    shown = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))
    text = ", ".join(f"{name!r} ({n} row{'s' if n != 1 else ''})" for name, n in shown[:8])
    return text + (f", ... ({len(shown)} {_plural(noun)})" if len(shown) > 8 else "")


def _plural(noun: str) -> str:
    return noun + ("es" if noun.endswith("s") else "s")


def _some(noun: str) -> str:
    return noun + ("(es)" if noun.endswith("s") else "(s)")


def _check_holdout(counts: dict[str, int], n: int, holdout_fraction: float, n_folds: int, source: str,
                   noun: str = "class") -> None:
    if not 0.0 < holdout_fraction < 1.0:
        raise DataError(f"data.holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
    few = {c: k for c, k in counts.items() if k < 2}
    if few:
        single = "a single row" if set(few.values()) == {1} else "fewer than 2 rows"
        raise DataError(
            f"A stratified holdout (data.n_folds={n_folds}) needs at least 2 rows of every {noun} (one to train on, "
            f"one to validate), and {source} has {single} of {len(few)} {_some(noun)}: {_listed(few, noun)}. Add "
            f"images of these {_plural(noun)} or drop them from the data."
        )
    if noun == "label":  # a multi-label row carries several labels: no room to check per row
        return
    k = len(counts)
    n_val = math.ceil(holdout_fraction * n)  # scikit-learn's rule for a float test_size
    if n_val < k or n - n_val < k:
        low, high = math.ceil(k / n * 1000) / 1000, math.floor((n - k) / n * 1000) / 1000
        raise DataError(
            f"data.holdout_fraction={holdout_fraction} puts {n_val} of {n} rows of {source} into validation and "
            f"{n - n_val} into training; a stratified holdout needs at least one row of each of the {k} classes on "
            f"each side. Choose data.holdout_fraction between {low} and {high}."
        )


def check_split(labels: np.ndarray, n_folds: int, holdout_fraction: float, classes: Sequence[str] | None = None,
                source: str = "the training data", task: Task | None = None) -> None:
    """The class counts a member's stratified split needs; the error names the classes, counts and what to change.

    Stratified K-fold needs ``n_folds`` rows of every class (scikit-learn only warns, and a fold then
    validates without that class); a holdout needs two rows of every class and room for each class on
    both sides. Other tasks count their strata (``task``): positive rows per label, rows per grade, rows
    per quantile bin of a regression target.

    Raises:
        DataError: naming the classes by name (``classes``), labels, grades or bins, with their counts.
    """
    if n_folds < 0:
        raise DataError(f"data.n_folds={n_folds} is not valid: use 0 (a holdout split) or K >= 2 (K-fold).")
    counts, noun = _counts(np.asarray(labels), classes, task, n_folds, holdout_fraction), _NOUN[_kind(task)]
    if n_folds < 2:
        _check_holdout(counts, len(labels), holdout_fraction, n_folds, source, noun)
        return
    few = {c: k for c, k in counts.items() if k < n_folds}
    if few:
        smallest = min(few.values())
        lower = f"lower data.n_folds to at most {smallest}, " if smallest >= 2 else ""
        raise DataError(
            f"data.n_folds={n_folds}: stratified {n_folds}-fold needs at least {n_folds} rows of every {noun}, "
            f"and {source} has fewer of {len(few)} {_some(noun)}: {_listed(few, noun)}. To fix it, {lower}add "
            f"images of these {_plural(noun)}, or drop them from the data."
        )


def make_folds(ids: Sequence[str], labels: np.ndarray, n_folds: int, seed: int, holdout_fraction: float,
               classes: Sequence[str] | None = None, source: str = "the training data",
               groups: Sequence[str] | None = None, task: Task | None = None) -> pd.DataFrame:
    """Assign every training row a fold; a member with ``data.fold=f`` validates on ``fold == f``.

    ``n_folds >= 2`` gives stratified K-fold; ``n_folds`` of 0 or 1 gives a stratified holdout where
    validation rows have fold 0 and training-only rows fold -1. With ``groups`` the folds are stratified
    group folds (a ``group`` column is added): no group is split between folds. The ``task`` says what
    is stratified: classes; multi-label rows by iterative stratification (``iterstrat``; with groups, by
    each row's rarest label); regression targets by quantile bins; ordinal grades by grade. The ``label``
    column holds what a row was stratified on (:func:`fold_strata`).

    Args:
        ids: row ids.
        labels: the targets, as ``task`` holds them (integer labels when it is None: one class per row).
        n_folds: K, or 0/1 for a holdout.
        seed: the split's seed (``data.split_seed``).
        holdout_fraction: the validation share of a holdout.
        classes: class (label) names, so errors name classes instead of indices.
        source: what the rows are (the training CSV), for errors.
        groups: one group per row (``data.group_col``), or None.
        task: the targets' task; None is multiclass.

    Raises:
        DataError: a holdout with a class of one row, or a fraction that cannot hold every class (a
            member's split is checked more strictly first, see :func:`check_split`); fewer groups than folds.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    if n_folds < 0:
        raise DataError(f"data.n_folds={n_folds} is not valid: use 0 (a holdout split) or K >= 2 (K-fold).")
    labels = np.asarray(labels)
    if n_folds < 2:  # scikit-learn would refuse these splits too, naming class indices
        _check_holdout(_counts(labels, classes, task, n_folds, holdout_fraction), len(labels), holdout_fraction,
                       n_folds, source, _NOUN[_kind(task)])
    stratum = fold_strata(task, labels, n_folds, holdout_fraction)
    fold = np.full(len(ids), -1, dtype=np.int64)
    idx = np.arange(len(ids))
    if groups is not None:
        fold = _group_folds(stratum, list(groups), n_folds, seed, holdout_fraction, source)
        return pd.DataFrame({"id": list(ids), "label": stratum, "fold": fold, "group": list(groups)})
    if _kind(task) == "multilabel":
        fold = _multilabel_folds(labels, n_folds, seed, holdout_fraction)
    elif n_folds >= 2:
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for f, (_, val_idx) in enumerate(skf.split(idx, stratum)):
            fold[val_idx] = f
    else:
        _, val_idx = train_test_split(idx, test_size=holdout_fraction, random_state=seed, stratify=stratum)
        fold[val_idx] = 0
    return pd.DataFrame({"id": list(ids), "label": stratum, "fold": fold})


def _multilabel_folds(y: np.ndarray, n_folds: int, seed: int, holdout_fraction: float) -> np.ndarray:
    """Iterative stratification of ``[N, L]`` 0/1 rows: K folds, or a holdout (fold 0 validates, -1 trains)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold, MultilabelStratifiedShuffleSplit

    fold = np.full(len(y), -1, dtype=np.int64)
    idx = np.arange(len(y))
    if n_folds >= 2:
        for f, (_, val_idx) in enumerate(MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True,
                                                                   random_state=seed).split(idx, y)):
            fold[val_idx] = f
    else:
        split = MultilabelStratifiedShuffleSplit(n_splits=1, test_size=holdout_fraction, random_state=seed)
        _, val_idx = next(split.split(idx, y))
        fold[val_idx] = 0
    return fold


def _group_folds(labels: np.ndarray, groups: list[str], n_folds: int, seed: int, holdout_fraction: float,
                 source: str) -> np.ndarray:
    """StratifiedGroupKFold folds; a holdout is fold 0 of ``round(1 / holdout_fraction)`` group folds."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_splits = n_folds if n_folds >= 2 else max(2, round(1 / holdout_fraction))
    n_groups = len(set(groups))
    if n_groups < n_splits:
        what = (f"data.n_folds={n_folds}" if n_folds >= 2 else
                f"a group holdout (data.holdout_fraction={holdout_fraction}: {n_splits} group folds, one validates)")
        raise DataError(f"{source} has {n_groups} group(s) in data.group_col, fewer than the {n_splits} folds of "
                        f"{what}; every fold needs a group of its own. Lower data.n_folds (or raise "
                        "data.holdout_fraction), or use a finer group column.")
    fold = np.full(len(groups), -1, dtype=np.int64)
    splits = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed).split(labels, labels, groups)
    for f, (_, val_idx) in enumerate(splits):
        fold[val_idx] = f
        if n_folds < 2:
            break
    if n_folds < 2 and (lost := set(labels.tolist()) - set(labels[fold == -1].tolist())):
        log.warning("The group holdout of %s leaves class(es) %s out of training (all their groups validate).",
                    source, sorted(lost))
    return fold


def fold_rule(spec: DataSpec, task: Task | None = None) -> str:
    """The rule that makes a spec's folds, as written in ``folds.csv``'s ``rule`` column.

    A task other than multiclass or binary (which stratify on classes alike) is named at the end: its
    folds are stratified on other strata.
    """
    if spec.fold_col:
        return f"fold_col col={spec.fold_col} k={spec.n_folds}"
    split = f"k={spec.n_folds}" if spec.n_folds >= 2 else f"holdout fraction={spec.holdout_fraction}"
    kind = "stratified_group" if spec.group_col else "stratified"
    on = f" task={_kind(task)}" if _kind(task) not in ("multiclass", "binary") else ""
    return f"{kind} {split}" + (f" group={spec.group_col}" if spec.group_col else "") + f" seed={spec.split_seed}" + on


def straddling_groups(folds: pd.DataFrame) -> dict[str, list[int]]:
    """Groups whose rows lie in more than one fold (training-only rows count as fold -1): group → folds."""
    if "group" not in folds.columns:
        return {}
    per_group = folds.groupby(folds["group"].astype(str))["fold"].unique()
    return {str(g): sorted(int(f) for f in fs) for g, fs in per_group.items() if len(fs) > 1}


def _user_folds(table: ImageTable, spec: DataSpec, columns: pd.DataFrame, source: str) -> np.ndarray:
    """The fold column's values for the table's rows, checked: folds 0..K-1 without gaps, K = data.n_folds."""
    values = columns["fold"].to_numpy()
    k = int(values.max()) + 1
    missing = sorted(set(range(k)) - set(values.tolist()))
    if missing or k < 2:
        found = sorted(set(values.tolist()))
        raise DataError(f"{source}: the fold column '{spec.fold_col}' (data.fold_col) holds folds {found}; folds must "
                        f"be 0..K-1 with K >= 2 and every fold present" + (f", and fold(s) {missing} are missing." if
                                                                            missing else "."))
    if spec.n_folds != k:
        raise DataError(f"{source}: the fold column '{spec.fold_col}' (data.fold_col) holds {k} folds (0..{k - 1}), "
                        f"but data.n_folds={spec.n_folds}. Set data.n_folds={k} (and data.fold to 0..{k - 1}).")
    return columns.loc[table.ids, "fold"].to_numpy()


def _check_training_classes(folds: pd.DataFrame, spec: DataSpec, classes: Sequence[str], source: str) -> None:
    """Your own folds must leave every class in the member's training rows: else it could never predict that class."""
    in_fold = folds["fold"].to_numpy() == spec.fold
    labels = folds["label"].to_numpy()
    lost = sorted(set(labels[in_fold].tolist()) - set(labels[~in_fold].tolist()))
    if lost:
        named = ", ".join(f"{classes[c]!r} ({int((labels == c).sum())} rows)" for c in lost[:5])
        raise DataError(
            f"{source}: fold {spec.fold} of the fold column '{spec.fold_col}' (data.fold_col) holds every row of "
            f"{len(lost)} class(es): {named}. Its member would train without them and never predict them (validation "
            "accuracy 0 on those rows). Spread each class over at least two folds in that column, or drop its rows."
        )


def _wanted_folds(table: ImageTable, spec: DataSpec, source: str) -> pd.DataFrame:
    """The folds ``spec`` asks for, on the table's rows, with their ``rule`` column."""
    assert table.labels is not None
    columns = read_split_columns(spec) if spec.group_col or spec.fold_col else None
    groups = None if columns is None or "group" not in columns else columns.loc[table.ids, "group"].tolist()
    if spec.fold_col and columns is not None:
        folds = pd.DataFrame({"id": table.ids, "label": fold_strata(table.task, table.labels, spec.n_folds),
                              "fold": _user_folds(table, spec, columns, source)})
        if table.task is None or table.task.softmax:  # classes; other tasks have strata, not classes
            _check_training_classes(folds, spec, table.classes, source)
        if groups is not None:
            folds["group"] = groups
            if straddle := straddling_groups(folds):
                log.warning("%d group(s) of data.group_col lie in more than one of your folds (data.fold_col), e.g. "
                            "%r in folds %s: validation scores will be optimistic.", len(straddle),
                            *next(iter(straddle.items())))
    else:
        check_split(table.labels, spec.n_folds, spec.holdout_fraction, table.classes, source, table.task)
        folds = make_folds(table.ids, table.labels, spec.n_folds, spec.split_seed, spec.holdout_fraction,
                           table.classes, source, groups, table.task)
    folds["rule"] = fold_rule(spec, table.task)
    return folds


_COLUMNS = (["id", "label", "fold"], ["id", "label", "fold", "rule"], ["id", "label", "fold", "group", "rule"])


def _read_saved(path: Path) -> pd.DataFrame:
    saved = read_csv_as_text(path, what="Saved folds file")
    if list(saved.columns) not in _COLUMNS:
        raise DataError(f"{path} is not a folds file: columns {list(saved.columns)}, expected one of {list(_COLUMNS)}.")
    try:
        return saved.astype({"label": np.int64, "fold": np.int64})
    except ValueError as err:
        raise DataError(f"{path} is not a folds file: its label or fold column is not all integers ({err}).") from err


def resolve_folds(path: Path, table: ImageTable, spec: DataSpec) -> tuple[pd.DataFrame, bool]:
    """The sweep's folds: the saved ones, or new ones (not yet written); and whether they are new.

    Raises:
        DataError: the split does not fit the data (see :func:`make_folds`), or a saved fold file does
            not describe this training table or fold scheme.
    """
    if table.labels is None:
        raise DataError("Folds need a labelled training table.")
    check_fold_index(spec.fold, spec.n_folds)
    source = str(spec.root_path / (spec.train_csv if spec.layout == "csv" else spec.train_dir))
    wanted = _wanted_folds(table, spec, source)
    if not path.exists():
        return wanted, True
    saved = _read_saved(path)
    # A file without a rule column predates group and fold columns: it was made by the stratified rule.
    saved_rule = str(saved["rule"].iat[0]) if "rule" in saved.columns else "stratified (an older folds.csv)"
    same_rule = saved_rule == wanted["rule"].iat[0] or ("rule" not in saved.columns and not spec.group_col
                                                        and not spec.fold_col and "task=" not in wanted["rule"].iat[0])
    same = saved["id"].tolist() == wanted["id"].tolist() and saved["fold"].tolist() == wanted["fold"].tolist()
    if not (same_rule and same):
        why = (f"the file's folds were made by rule '{saved_rule}', this run's by '{wanted['rule'].iat[0]}'"
               if not same_rule else "the data changed" if "rule" in saved.columns else
               "its folds differ (an older folds.csv, without a rule: the data, data.n_folds or data.split_seed changed)")
        raise DataError(
            f"{path} holds folds for different data or a different fold scheme "
            f"(data.n_folds={spec.n_folds}, data.split_seed={spec.split_seed}, data.group_col={spec.group_col!r}, "
            f"data.fold_col={spec.fold_col!r}): {why}. "
            "Use a new sweep_name, or delete the file if the data really changed."
        )
    return saved, False


def save_folds(path: Path, folds: pd.DataFrame) -> None:
    """Write ``folds.csv`` atomically."""
    with atomic_path(path) as tmp:
        folds.to_csv(tmp, index=False)


def load_or_create_folds(path: Path, table: ImageTable, spec: DataSpec) -> pd.DataFrame:
    """Read the sweep's saved folds, or create and save them, so every member sees the same split.

    Raises:
        DataError: see :func:`resolve_folds`.
    """
    folds, new = resolve_folds(path, table, spec)
    if new:
        save_folds(path, folds)
    return folds


def split_indices(folds: pd.DataFrame, fold: int, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices of one member."""
    check_fold_index(fold, n_folds)
    is_val = folds["fold"].to_numpy() == fold
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
