"""Sweeps through the real CLI: summary and exit status with failing members, K-fold OOF, Ray, submitit, W&B."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import pytest

from pipeline.core.io import read_json
from pipeline.member.manifest import MANIFEST, MemberManifest, read_manifest, write_manifest
from pipeline.member.predictions import read_predictions
from pipeline.train.sweep import RUNTIME, SUMMARY_CSV, SUMMARY_JSON, scan_sweep, write_summary
from tests.wandb_records import logged

PIPELINE_TRAIN = str(Path(sys.executable).with_name("pipeline-train"))
# A tiny member: lenet5, 4 training batches of 32 images, one epoch, on the CPU.
TINY = [
    "model=lenet5", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=4", "data.batch_size=32",
    "data.num_workers=0", "trainer.enable_progress_bar=false", "logger=none",
]
# Sweep cases that differ in more than one key (Hydra sweeps are cartesian products), as config files.
CASES = {
    "ok": "seed: 0\n",
    "diverge": "seed: 1\noptimizer:\n  lr: 1.0e30\n",  # the loss is NaN by the second step
    "badname": "seed: 2\nmodel:\n  name: resnet181\n",  # not a timm model: fails before training
}


def run_train(args: Sequence[str], cwd: Path, timeout: float = 300, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``pipeline-train`` as a user would, in ``cwd``; stdout and stderr are returned as text."""
    full_env = {**os.environ, "HYDRA_FULL_ERROR": "0", "RAY_USAGE_STATS_ENABLED": "0", **env}
    return subprocess.run(
        [PIPELINE_TRAIN, *args], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False
    )


def case_configs(root: Path, names: Sequence[str]) -> str:
    """Write the named cases as ``case/<name>.yaml`` under ``root``; return the ``hydra.searchpath`` override."""
    (root / "case").mkdir(parents=True, exist_ok=True)
    for name in names:
        (root / "case" / f"{name}.yaml").write_text("# @package _global_\n" + CASES[name])
    return f"hydra.searchpath=[file://{root}]"


def failure_message(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-4000:]}"


def summary_rows(sweep: Path) -> dict[str, dict[str, object]]:
    rows = json.loads((sweep / SUMMARY_JSON).read_text())["members"]
    return {r["member"]: r for r in rows}


@pytest.mark.slow
def test_failing_members_are_recorded_the_others_finish_and_the_sweep_exits_nonzero(
    demo_slice: Path, tmp_path: Path
) -> None:
    sweep = tmp_path / "sweep"
    args = [*TINY, f"data.root={demo_slice}", "+case=ok,diverge,badname", case_configs(tmp_path / "conf", list(CASES)),
            f"hydra.sweep.dir={sweep}"]
    proc = run_train(["-m", *args], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert "2 of 3 members failed" in proc.stderr

    rows = summary_rows(sweep)
    assert {k: r["status"] for k, r in rows.items()} == {
        "lenet5-s0-holdout": "completed", "lenet5-s1-holdout": "failed", "resnet181-s2-holdout": "failed",
    }
    assert str(rows["lenet5-s1-holdout"]["error"]).startswith("NonFiniteLossError: Non-finite training loss")
    assert str(rows["resnet181-s2-holdout"]["error"]).startswith("ConfigError: Unknown timm model 'resnet181'")
    assert pd.read_csv(sweep / SUMMARY_CSV).set_index("member")["status"].to_dict() == {
        k: r["status"] for k, r in rows.items()
    }
    for name in rows:  # the table names every member and its status
        assert name in proc.stdout
    good = sweep / "lenet5-s0-holdout"
    assert read_manifest(good).status == "completed"
    ids, probs, _ = read_predictions(good / "val_predictions.csv")
    assert len(ids) == 120 and probs.shape == (120, 10)  # holdout: 20% of 600
    assert "Traceback" in (sweep / "lenet5-s1-holdout" / "error.txt").read_text()

    # The same command again: the completed member is skipped, the failed ones are retried and fail again.
    before = (good / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    again = run_train(["-m", *args], tmp_path)
    assert again.returncode == 1, failure_message(again)
    assert "already completed; skipping it" in again.stdout + again.stderr
    assert (good / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before


def _member(folder: Path, status: str) -> None:
    folder.mkdir(parents=True)
    write_manifest(folder, MemberManifest(
        name=folder.name, model_name="lenet5", num_classes=2, in_chans=1, classes=["a", "b"], image_size=32,
        crop_size=28, mean=[0.5], std=[0.5], n_folds=0, fold=0, seed=0, split_seed=42, config_hash="x", status=status,
    ))


def test_summary_is_built_from_member_folders(tmp_path: Path) -> None:
    _member(tmp_path / "a-s0-holdout", "completed")
    (tmp_path / "a-s0-holdout" / "metrics.json").write_text('{"val_acc": 0.5, "val_log_loss": 0.7, "epochs": 3}')
    _member(tmp_path / "b-s0-holdout", "running")
    (tmp_path / "c-s0-holdout").mkdir()  # failed before it wrote a manifest (bad config)
    (tmp_path / "c-s0-holdout" / "error.txt").write_text("\nValueError: bad\nmore\n")
    (tmp_path / "predict").mkdir()  # not a member
    (tmp_path / ".submitit").mkdir()
    old = tmp_path / "a-s0-holdout" / MANIFEST
    os.utime(old, (old.stat().st_atime, 1_000_000))
    rows = scan_sweep(tmp_path, since=2_000_000)
    assert [(r.member, r.status, r.error, r.current) for r in rows] == [
        ("a-s0-holdout", "completed", "", False), ("b-s0-holdout", "running", "", True),
        ("c-s0-holdout", "failed", "ValueError: bad", True),
    ]
    assert rows[0].val_acc == 0.5 and rows[0].epochs == 3
    csv_path, json_path = write_summary(tmp_path, rows)
    assert read_json(json_path)["counts"] == {"completed": 1, "failed": 1, "running": 1}
    assert pd.read_csv(csv_path)["member"].tolist() == ["a-s0-holdout", "b-s0-holdout", "c-s0-holdout"]
    assert not list(tmp_path.glob(".summary*.tmp"))  # written through a temporary file, then renamed


@pytest.mark.slow
def test_ray_kfold_sweep_one_fake_gpu_per_member_oof_and_wandb(demo_slice: Path, tmp_path: Path) -> None:
    """3 folds on a Ray that believes it has 2 GPUs: each member sees one, never one in use; OOF covers train."""
    proc = run_train([
        "-m", "launcher=ray", *TINY, "logger=wandb", f"data.root={demo_slice}", "data.n_folds=3", "data.fold=0,1,2",
        "trainer.accelerator=cpu",  # the fake GPU ids are only seen in CUDA_VISIBLE_DEVICES
        "hydra.launcher.ray.init.address=local",  # a fresh Ray, even if one was `ray start`ed on this machine
        "hydra.launcher.ray.init.num_gpus=2", "hydra.launcher.ray.init.num_cpus=2",
        "hydra.launcher.ray.remote.num_gpus=1", "hydra.launcher.ray.remote.num_cpus=1", "sweep_name=ray",
    ], tmp_path, timeout=400, PIPELINE_OUTPUTS="outputs")  # relative: resolved against this directory
    assert proc.returncode == 0, failure_message(proc)
    sweep = tmp_path / "outputs" / "default" / "ray"
    members = [sweep / f"lenet5-s0-f{k}" for k in range(3)]
    assert all(read_manifest(m).status == "completed" for m in members)

    runs = [read_json(m / RUNTIME) for m in members]
    for run in runs:
        assert run["cuda_visible_devices"] in ("0", "1")  # exactly one device id
        assert run["ray_resources"] == {"GPU": 1.0, "CPU": 1.0} and run["torch_threads"] == 1
    for a, b in itertools.combinations(runs, 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:  # ran at the same time
            assert a["cuda_visible_devices"] != b["cuda_visible_devices"], (a, b)

    folds = pd.read_csv(sweep / "folds.csv", dtype={"id": str})
    seen: list[str] = []
    for k, member in enumerate(members):
        ids, _, labels = read_predictions(member / "val_predictions.csv")
        assert ids == folds.loc[folds["fold"] == k, "id"].tolist()  # the member's own fold, in table order
        seen += ids
    assert sorted(seen) == sorted(folds["id"]) and len(seen) == len(set(seen)) == 600  # every row exactly once

    for member in members:  # one offline W&B run per member, in its own folder, grouped by sweep
        (run_dir,) = (member / "wandb").glob("offline-run-*")
        rec = logged(run_dir)
        assert rec["group"] == "default/ray" and rec["job_type"] == "train" and "val/acc" in rec["history"]
    assert summary_rows(sweep).keys() == {m.name for m in members}


@pytest.mark.slow
def test_submitit_local_launcher_runs_a_member(demo_slice: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_train(["-m", "launcher=submitit_local", *TINY, f"data.root={demo_slice}", f"hydra.sweep.dir={sweep}"],
                     tmp_path)
    assert proc.returncode == 0, failure_message(proc)
    member = sweep / "lenet5-s0-holdout"
    assert read_manifest(member).status == "completed" and (member / "val_predictions.csv").is_file()
    assert list((sweep / ".submitit").glob("*/*_result.pkl"))  # it really went through submitit
    assert summary_rows(sweep)["lenet5-s0-holdout"]["status"] == "completed"
