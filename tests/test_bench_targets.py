"""The targets benchmark (benchmarks/bench_targets.py): hidden targets read in each task's shape, the relative
error reduction of a loss, and a replay that reproduces the pipeline's own leaderboard score."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.bench_targets import _rer, score_run, solution_targets, train_and_predict
from pipeline.core.task import Task
from pipeline.data.task_demos import TAGS, TASK_DEMOS, write_task_demo


@pytest.mark.parametrize("kind", list(TASK_DEMOS))
def test_solution_targets_come_in_the_task_shape_in_the_asked_order(tmp_path: Path, kind: str) -> None:
    comp = write_task_demo(kind, tmp_path / kind, n_train=10, n_test=12, seed=1)
    demo = TASK_DEMOS[kind]
    sol = pd.read_csv(comp / "solution.csv", dtype=str)
    ids = sol[demo.id_col].tolist()[::-1]  # not the file's order
    cells = sol.set_index(demo.id_col)[demo.target_col].loc[ids]
    columns = {"multilabel": TAGS, "binary": ["0", "1"]}.get(kind, ["target"])
    got = solution_targets(comp, Task(kind, tuple(columns)), ids)
    if kind == "multilabel":
        assert got.shape == (12, len(TAGS))
        assert [" ".join(t for t, on in zip(TAGS, row) if on) for row in got] == [
            " ".join(sorted(c.split(), key=TAGS.index)) for c in cells]
    elif kind == "binary":
        assert got.tolist() == cells.astype(int).tolist()
    else:
        np.testing.assert_allclose(got, cells.astype(float).to_numpy())


def test_rer_of_a_loss_is_one_minus_the_ratio_and_of_a_score_the_share_of_its_error() -> None:
    rmse = _rer(-0.5, -0.7, -0.1, 2.0, greater_is_better=False)  # RMSE 2.0 → 1.5
    assert rmse == pytest.approx({"rer": 0.25, "low": 0.05, "high": 0.35})
    assert _rer(0.02, 0.01, 0.03, 0.9, greater_is_better=True) == pytest.approx({"rer": 0.2, "low": 0.1, "high": 0.3})
    assert _rer(0.0, 0.0, 0.0, 1.0, greater_is_better=True) is None  # no error left to reduce


@pytest.mark.slow
def test_the_replayed_submission_scores_what_the_pipeline_leaderboard_printed(tmp_path: Path) -> None:
    # ordinal: QWK with cut points fitted on the OOF rows, under the experiment's five_crop policy
    args = argparse.Namespace(workdir=tmp_path, n_train=120, n_test=40, epochs=1, patience=4, models="lenet5,lenet5",
                              batch_size=32)
    comp, folder, trained = train_and_predict("ordinal", 0, args)
    assert [t["member"] for t in trained] == ["lenet5-s0-holdout", "lenet5-s1-holdout"]
    run = score_run(folder, comp, n_boot=50, seed=0)
    assert run["decision"] == "cutpoints" and run["submitted_policy"] == "five_crop"
    assert run["replayed_submission"] == pytest.approx(run["leaderboard"], abs=1e-9)
    rows = {r["row"]: r for r in run["rows"]}
    assert list(rows) == ["best single, no TTA", "best single, TTA", "mean, no TTA", "mean, TTA", "caruana, no TTA",
                          "caruana, TTA", "optimize, no TTA", "optimize, TTA", "ensemble=auto, TTA"]
    assert rows["best single, no TTA"]["diff"] == 0.0 and run["n_test"] == 40
