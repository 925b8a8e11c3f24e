"""Folds you can trust: group folds (no group in two folds), the user's own fold column, and ``folds.csv``
recording the rule that made it, so a sweep never silently reuses folds made by another rule."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from omegaconf import DictConfig, open_dict

from pipeline.core.errors import DataError
from pipeline.data.folds import fold_rule, load_or_create_folds, split_indices, straddling_groups
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from pipeline.member.manifest import read_manifest
from tests.conftest import compose_train
from tests.helpers import files_under, train, write_competition
from tests.test_targets import write_table

N_GROUPS = 12


@pytest.fixture(scope="module")
def comp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 16 images; ``patient`` puts 4 consecutive rows of a class in one group (12 groups), ``kfold``
    holds the user's own 3 folds, which split every patient (row i → fold i % 3)."""
    root = write_competition(tmp_path_factory.mktemp("folds") / "comp", per_class=16)
    df = pd.read_csv(root / "train.csv", dtype=str)
    df["patient"] = [f"p{i // 4:02d}" for i in range(len(df))]
    df["kfold"] = [str(i % 3) for i in range(len(df))]
    df.to_csv(root / "train.csv", index=False)
    return root


def _folds(comp: Path, tmp_path: Path, **spec: object) -> tuple[pd.DataFrame, DataSpec]:
    s = DataSpec(root=str(comp), **spec)  # type: ignore[arg-type]
    return load_or_create_folds(tmp_path / "folds.csv", read_train_table(s), s), s


def test_group_kfold_keeps_every_group_in_one_fold_seeded(comp: Path, tmp_path: Path) -> None:
    folds, spec = _folds(comp, tmp_path, group_col="patient", n_folds=4)
    assert straddling_groups(folds) == {}
    assert folds.groupby("group")["fold"].nunique().max() == 1 and folds["group"].nunique() == N_GROUPS
    assert sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    assert set(pd.crosstab(folds["label"], folds["fold"]).to_numpy().ravel()) != {0}  # classes spread over folds
    saved = pd.read_csv(tmp_path / "folds.csv", dtype=str)
    assert list(saved.columns) == ["id", "label", "fold", "group", "rule"]
    assert set(saved["rule"]) == {"stratified_group k=4 group=patient seed=42"} == {fold_rule(spec)}
    again, _ = _folds(comp, tmp_path, group_col="patient", n_folds=4)  # the saved file is reused
    assert again["fold"].tolist() == folds["fold"].tolist()
    other_seed, _ = _folds(comp, tmp_path / "b", group_col="patient", n_folds=4, split_seed=7)
    same_seed, _ = _folds(comp, tmp_path / "c", group_col="patient", n_folds=4)
    assert same_seed["fold"].tolist() == folds["fold"].tolist()
    assert other_seed["fold"].tolist() != folds["fold"].tolist()
    plain, _ = _folds(comp, tmp_path / "d", n_folds=4)
    assert straddling_groups(plain.assign(group=folds["group"])) != {}  # plain stratified folds do split groups


def test_group_holdout_takes_one_of_round_one_over_fraction_group_folds(comp: Path, tmp_path: Path) -> None:
    folds, _ = _folds(comp, tmp_path, group_col="patient", n_folds=0, holdout_fraction=0.25)
    assert set(folds["fold"]) == {-1, 0} and straddling_groups(folds) == {}
    assert folds.loc[folds["fold"] == 0, "group"].nunique() == N_GROUPS // 4  # 1 of round(1 / 0.25) = 4 group folds
    train_idx, val_idx = split_indices(folds, 0, 0)
    assert len(train_idx) + len(val_idx) == len(folds) and len(val_idx) == 12


def test_fold_column_is_taken_as_is_and_leaky_groups_are_found(comp: Path, tmp_path: Path) -> None:
    folds, _ = _folds(comp, tmp_path, fold_col="kfold", group_col="patient", n_folds=3)
    assert folds["fold"].tolist() == [i % 3 for i in range(len(folds))]
    assert set(folds["rule"]) == {"fold_col col=kfold k=3"}
    leaks = straddling_groups(folds)
    assert len(leaks) == N_GROUPS and leaks["p00"] == [0, 1, 2]


def test_older_folds_file_without_rule_is_reused_by_the_same_rule_only(comp: Path, tmp_path: Path) -> None:
    spec = DataSpec(root=str(comp), n_folds=3)
    table = read_train_table(spec)
    new, _ = _folds(comp, tmp_path / "new", n_folds=3)
    new[["id", "label", "fold"]].to_csv(tmp_path / "folds.csv", index=False)  # as written before rules existed
    reused = load_or_create_folds(tmp_path / "folds.csv", table, spec)
    assert reused["fold"].tolist() == new["fold"].tolist() and "rule" not in reused.columns
    before = (tmp_path / "folds.csv").read_bytes()
    with pytest.raises(DataError, match=r"made by rule 'stratified \(an older folds\.csv\)', this run's by "
                                        r"'fold_col col=kfold k=3'\. Use a new sweep_name"):
        _folds(comp, tmp_path, fold_col="kfold", n_folds=3)
    with pytest.raises(DataError, match=r"its folds differ \(an older folds\.csv, without a rule: the data, "
                                        r"data\.n_folds or data\.split_seed changed\)"):
        _folds(comp, tmp_path, n_folds=4)
    assert (tmp_path / "folds.csv").read_bytes() == before


N_TASK_ROWS = 60


@pytest.fixture(scope="module")
def tasks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 rows: ``tags`` (4 tags, 'rare' on 6 rows), ``y`` (a skewed regression target), ``grade`` (ordinal
    0..4 on 20, 15, 12, 8 and 5 rows) and ``patient`` (15 groups of 4 consecutive rows)."""
    rng = np.random.default_rng(3)
    tags = []
    for k in range(N_TASK_ROWS):
        row = [t for t, p in (("sky", 0.7), ("water", 0.4), ("road", 0.2)) if rng.random() < p] or ["sky"]
        tags.append(" ".join(row + (["rare"] if k % 10 == 3 else [])))
    grades = [str(g) for g in rng.permutation(np.repeat(np.arange(5), [20, 15, 12, 8, 5]))]
    return write_table(tmp_path_factory.mktemp("tasks") / "comp", {
        "tags": tags, "y": [f"{v:.3f}" for v in rng.lognormal(0, 1, N_TASK_ROWS)], "grade": grades,
        "patient": [f"p{k // 4:02d}" for k in range(N_TASK_ROWS)]})


TASK_KEYS = {"multilabel": {"label_col": "tags", "tag_sep": " "}, "regression": {"label_col": "y"},
             "ordinal": {"label_col": "grade", "task": "ordinal"}}


def _strata_per_fold(folds: pd.DataFrame, table_labels: np.ndarray, kind: str) -> np.ndarray:
    """Rows per (fold, stratum): positive rows per label for multi-label, rows per grade or per quantile bin."""
    k = folds["fold"].to_numpy()
    if kind == "multilabel":
        return np.stack([table_labels[k == f].sum(axis=0) for f in sorted(set(k))])
    return pd.crosstab(k, folds["label"]).to_numpy()


@pytest.mark.parametrize("kind", list(TASK_KEYS))
def test_task_kfold_balances_its_targets_and_is_seeded(tasks: Path, tmp_path: Path, kind: str) -> None:
    folds, spec = _folds(tasks, tmp_path, n_folds=3, **TASK_KEYS[kind])
    table = read_train_table(spec)
    assert table.task is not None and table.task.kind == kind
    assert sorted(folds["fold"].value_counts().tolist()) == [20, 20, 20]
    per_fold = _strata_per_fold(folds, table.labels, kind)
    assert (per_fold.max(axis=0) - per_fold.min(axis=0)).max() <= 1  # every label, grade or bin spread evenly
    if kind == "regression":  # the bins are quantile bins of the target: each fold spans the whole range
        y = table.labels
        assert all(y[folds["fold"] == f].max() > np.quantile(y, 0.8) > np.quantile(y, 0.2) > y[folds["fold"] == f].min()
                   for f in range(3))
    assert set(folds["rule"]) == {f"stratified k=3 seed=42 task={kind}"} == {fold_rule(spec, table.task)}
    again, _ = _folds(tasks, tmp_path / "b", n_folds=3, **TASK_KEYS[kind])
    other, _ = _folds(tasks, tmp_path / "c", n_folds=3, split_seed=7, **TASK_KEYS[kind])
    assert again["fold"].tolist() == folds["fold"].tolist() != other["fold"].tolist()
    reused, _ = _folds(tasks, tmp_path, n_folds=3, **TASK_KEYS[kind])  # the saved file (strata as integers) is read
    assert reused["fold"].tolist() == folds["fold"].tolist()
    with pytest.raises(DataError, match=r"made by rule 'stratified k=3 seed=42 task="):
        _folds(tasks, tmp_path, n_folds=3, label_col="grade")  # the same file, read as multiclass grades


@pytest.mark.parametrize("kind", list(TASK_KEYS))
def test_task_holdout_keeps_every_target_on_both_sides(tasks: Path, tmp_path: Path, kind: str) -> None:
    folds, spec = _folds(tasks, tmp_path, n_folds=0, holdout_fraction=0.25, **TASK_KEYS[kind])
    table = read_train_table(spec)
    n_val = (folds["fold"] == 0).sum()  # iterative stratification sizes the holdout approximately
    assert (n_val == 15 if kind != "multilabel" else 13 <= n_val <= 17) and set(folds["fold"]) == {-1, 0}
    per_side = _strata_per_fold(folds, table.labels, kind)
    assert (per_side > 0).all()  # every label, grade and bin trains and validates


@pytest.mark.parametrize("kind", list(TASK_KEYS))
def test_task_group_folds_keep_groups_whole(tasks: Path, tmp_path: Path, kind: str) -> None:
    folds, _ = _folds(tasks, tmp_path, n_folds=3, group_col="patient", **TASK_KEYS[kind])
    assert straddling_groups(folds) == {} and sorted(folds["fold"].unique()) == [0, 1, 2]
    assert set(folds["rule"]) == {f"stratified_group k=3 group=patient seed=42 task={kind}"}


@pytest.mark.parametrize(("keys", "n_folds", "match"), [
    (TASK_KEYS["multilabel"], 7, r"data\.n_folds=7: stratified 7-fold needs at least 7 rows of every label, and .* has "
     r"fewer of 1 label\(s\): 'rare' \(6 rows\)\. To fix it, lower data\.n_folds to at most 6, add images of these "
     r"labels"),
    (TASK_KEYS["ordinal"], 6, r"needs at least 6 rows of every grade, and .* has fewer of 1 grade\(s\): 'grade 4' "
     r"\(5 rows\)\. To fix it, lower data\.n_folds to at most 5, add images of these grades"),
    ({**TASK_KEYS["ordinal"], "target_range": [0, 4]}, 0, None),
])
def test_task_count_checks_name_labels_and_grades(tasks: Path, tmp_path: Path, keys: dict[str, object],
                                                  n_folds: int, match: str | None) -> None:
    before = files_under(tasks)
    if match is None:  # a holdout: grade 4's 5 rows are enough
        assert len(_folds(tasks, tmp_path, n_folds=n_folds, **keys)[0]) == N_TASK_ROWS
        return
    with pytest.raises(DataError, match=match):
        _folds(tasks, tmp_path, n_folds=n_folds, **keys)
    assert not (tmp_path / "folds.csv").exists() and files_under(tasks) == before


@pytest.fixture
def make_cfg(tmp_path: Path, comp: Path) -> Callable[..., DictConfig]:
    def make(*overrides: str) -> DictConfig:
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=lenet5", f"data.root={comp}", "data.image_size=32",
            "data.crop_size=28", "data.in_chans=1", "data.batch_size=4", "data.num_workers=0", "trainer.max_epochs=1",
            "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", f"paths.root={tmp_path}", *overrides,
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "sweep" / cfg.member_name)
        return cfg

    return make


@pytest.mark.slow
def test_member_records_its_group_column_and_a_rule_change_is_refused(make_cfg: Callable[..., DictConfig],
                                                                        tmp_path: Path) -> None:
    cfg = make_cfg("data.group_col=patient", "data.n_folds=3", "data.fold=1")
    train(cfg)
    member = Path(cfg.paths.output_dir)
    data = read_manifest(member).data
    assert (data["group_col"], data["fold_col"]) == ("patient", None)
    assert (member / "folds.csv").read_text() == (tmp_path / "sweep" / "folds.csv").read_text()
    assert "stratified_group k=3 group=patient seed=42" in (member / "folds.csv").read_text()
    with pytest.raises(DataError, match=r"this run's by 'fold_col col=kfold k=3'"):
        train(make_cfg("data.fold_col=kfold", "data.n_folds=3", "data.fold=0"))
