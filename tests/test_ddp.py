"""One member on two CPU processes (DDP, gloo), in a single run and inside a sweep."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.io import read_json
from pipeline.member.manifest import read_manifest
from pipeline.member.predictions import read_predictions
from pipeline.train.sweep import RUNTIME
from tests.test_sweep import TINY, case_configs, failure_message, run_train, summary_rows

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"]


def _holdout_ids(member: Path) -> list[str]:
    folds = pd.read_csv(member / "folds.csv", dtype={"id": str})
    return folds.loc[folds["fold"] == 0, "id"].tolist()


@pytest.mark.slow
def test_ddp_single_run_rank0_writes_one_complete_member(demo_slice: Path, tmp_path: Path) -> None:
    # resnet10t has BatchNorm: trainer=ddp asks for SyncBatchNorm, which torch only has on CUDA.
    proc = run_train([*TINY, *DDP, "model=resnet10t", "logger=wandb", f"data.root={demo_slice}", "sweep_name=ddp"],
                     tmp_path, PIPELINE_OUTPUTS=str(tmp_path / "out"))
    assert proc.returncode == 0, failure_message(proc)
    output = proc.stdout + proc.stderr
    assert "MEMBER: 1/2" in output and "MEMBER: 2/2" in output  # two processes joined the process group
    member = tmp_path / "out" / "default" / "ddp" / "resnet10t-s0-holdout"
    assert read_manifest(member).status == "completed" and not (member / "error.txt").exists()
    assert read_json(member / RUNTIME)["world_size"] == 2
    assert len(list((member / "wandb").glob("offline-run-*"))) == 1  # rank 1 started no W&B run
    assert [p.name for p in (tmp_path / "out" / "default" / "ddp").iterdir() if p.is_dir()] == [member.name]

    # Rank 0 predicts the whole validation set itself, not its DistributedSampler share: every row once, in order.
    ids, probs, labels = read_predictions(member / "val_predictions.csv")
    assert ids == _holdout_ids(member) and len(ids) == 120
    assert probs.sum(1) == pytest.approx(1.0, abs=1e-5)


@pytest.mark.slow
def test_ddp_members_inside_a_sweep_fail_and_finish_independently(demo_slice: Path, tmp_path: Path) -> None:
    """A diverging DDP member first, then a good one in the same process: Lightning relaunches each job's
    own rank 1 (not the sweep), into the job's folder, and the first job's DDP state does not leak."""
    sweep = tmp_path / "sweep"  # not the default run.dir, which Lightning would otherwise hand to rank 1
    proc = run_train([
        "-m", *TINY, *DDP, f"data.root={demo_slice}", "+case=diverge,ok",
        case_configs(tmp_path / "conf", ["diverge", "ok"]), f"hydra.sweep.dir={sweep}",
    ], tmp_path, PIPELINE_OUTPUTS=str(tmp_path / "default-outputs"))
    assert proc.returncode == 1, failure_message(proc)
    rows = summary_rows(sweep)
    assert {k: r["status"] for k, r in rows.items()} == {"lenet5-s1-holdout": "failed", "lenet5-s0-holdout": "completed"}
    assert str(rows["lenet5-s1-holdout"]["error"]).startswith("NonFiniteLossError")  # a FloatingPointError
    good = sweep / "lenet5-s0-holdout"
    assert read_json(good / RUNTIME)["world_size"] == 2
    assert read_predictions(good / "val_predictions.csv")[0] == _holdout_ids(good)
    assert not (tmp_path / "default-outputs").exists()  # no rank wrote to the default run.dir
