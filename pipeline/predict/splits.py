"""The rows each model's out-of-fold predictions cover, compared before any prediction is made.

A fitted merge (Caruana, stacking, ranks, temperatures, ``ensemble.combine=auto``) fits on rows that every
model predicted out of fold. Members trained on different splits (another ``data.split_seed``, ``n_folds``
or ``fold_col``, or a model missing folds) cover different rows; their saved ``folds.csv`` says so before
an image is read, so the run stops at once instead of after every OOF prediction was computed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pipeline.core.errors import MemberError, examples
from pipeline.core.io import read_csv_as_text
from pipeline.member.folder import Member
from pipeline.predict.fitting import rule_name, submitted_rule
from pipeline.predict.spec import EnsembleSpec

__all__ = ["check_same_oof_rows", "validation_ids"]


def validation_ids(member: Member) -> tuple[set[str], str] | None:
    """The ids of a member's validation rows and the split's rule, from its ``folds.csv`` (None: it has none)."""
    path = member.file("folds.csv")
    if not path.is_file():
        return None
    folds = read_csv_as_text(path, what="Member folds file")
    if not {"id", "fold"} <= set(folds.columns):
        raise MemberError(f"{path}: expected the columns id and fold; found {list(folds.columns)}.")
    rule = folds["rule"].iloc[0] if "rule" in folds.columns and len(folds) else "?"
    return set(folds.loc[folds["fold"] == str(member.manifest.fold), "id"]), str(rule)


_ONE_SPLIT = "the same data.n_folds, data.split_seed and data.fold_col"


def _model_rows(model: str, members: Sequence[Member]) -> tuple[frozenset[str], list[str]] | None:
    """A model's OOF rows (its members' validation rows together) and how each member split; None if unknown.

    Raises:
        MemberError: two of its members validate on the same rows (folds of different splits, or one fold twice).
    """
    rows: dict[str, str] = {}
    splits: dict[str, str] = {}
    for m in members:
        found = validation_ids(m)
        if found is None:
            return None
        splits[m.name] = f"{m.name}: fold {m.manifest.fold}, {found[1]}"
        if shared := sorted(i for i in found[0] if i in rows):
            other = rows[shared[0]]
            raise MemberError(
                f"Members {other} and {m.name} of model {model} validate on {len(shared)} of the same rows (e.g. "
                f"{examples(shared, 3)}; {splits[other]}; {splits[m.name]}), so they are not distinct folds of one split "
                f"and their out-of-fold rows cannot be put together. Train every fold of a model with {_ONE_SPLIT}, or "
                "leave one of them out of members."
            )
        rows |= dict.fromkeys(found[0], m.name)
    return frozenset(rows), list(splits.values())


def check_same_oof_rows(models: Mapping[str, Sequence[Member]], ens: EnsembleSpec, metric: str) -> None:
    """Refuse fold members of one model that overlap, and, when the ensemble fits on OOF rows, models whose OOF
    rows differ (plain weighted merges average models of other splits).

    Members without a ``folds.csv`` are not compared here (the OOF files are compared once read).

    Raises:
        MemberError: one line naming the two members or models, the ids only one covers (or both), each member's
            split, and the settings that fix it.
    """
    known = {g: found for g, ms in models.items() if (found := _model_rows(g, ms)) is not None}
    if len(known) < 2 or (ens.combine == "weighted" and not submitted_rule(ens, metric).fitted):
        return
    (first, (base, base_splits)), *others = known.items()
    for name, (rows, splits) in others:
        if rows == base:
            continue
        only_first, only_other = sorted(base - rows), sorted(rows - base)
        raise MemberError(
            f"Models {first} and {name} were trained on different splits: their out-of-fold rows differ "
            f"({len(only_first)} validation ids only in {first}, e.g. {examples(only_first, 3)}; {len(only_other)} only "
            f"in {name}, e.g. {examples(only_other, 3)}; from folds.csv: {'; '.join([*base_splits, *splits])}). The "
            f"ensemble's merge ({rule_name(ens)}, ensemble.combine={ens.combine}) is fitted on rows every model "
            f"predicted. Predict members of one split ({_ONE_SPLIT}, every fold trained), or merge without fitting: "
            "ensemble.combine=weighted with ensemble.weights=equal or given."
        )
