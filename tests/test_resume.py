"""Resuming a killed member from its checkpoint, and bit-identical reruns of the same config and seed."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig

from pipeline.member.manifest import read_manifest
from pipeline.train.state import resume_checkpoint as _resume_checkpoint
from tests.helpers import train
from tests.test_sweep import PIPELINE_TRAIN, TINY, failure_message, run_train


def _saved_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved at, or None while it is missing or being written."""
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:
        return None


@pytest.mark.slow
def test_killed_member_resumes_from_its_last_checkpoint(demo_slice: Path, tmp_path: Path) -> None:
    args = [*TINY, "trainer.max_epochs=5", "trainer.limit_train_batches=5", "logger=csv", f"data.root={demo_slice}",
            f"hydra.run.dir={tmp_path / 'member'}"]
    member, last = tmp_path / "member", tmp_path / "member" / "checkpoints" / "last.ckpt"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0"}
    proc = subprocess.Popen([PIPELINE_TRAIN, *args], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while (_saved_epoch(last) or 0) < 1:
            assert proc.poll() is None and time.monotonic() < deadline, "training ended before saving epoch 1"
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # no chance to clean up, as with a node failure or OOM kill
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    saved = _saved_epoch(last)
    assert saved is not None and 1 <= saved < 4
    assert read_manifest(member).status == "running"

    again = run_train(args, tmp_path)
    assert again.returncode == 0, failure_message(again)
    assert f"Resuming lenet5-s0-holdout from {last}" in again.stdout + again.stderr
    assert read_manifest(member).status == "completed" and (member / "val_predictions.csv").is_file()
    # The CSV logger starts a fresh file: had training restarted, it would hold epoch 0.
    logged = pd.read_csv(member / "csv_logs" / "metrics.csv")
    assert logged["epoch"].dropna().min() == saved + 1 and logged["epoch"].max() == 4
    assert int(torch.load(last, map_location="cpu", weights_only=True)["global_step"]) == 5 * 5


def test_resume_skips_a_truncated_checkpoint_and_prefers_the_newest(tmp_path: Path) -> None:
    (tmp_path / "checkpoints").mkdir()
    last = tmp_path / "checkpoints" / "last.ckpt"
    torch.save({"epoch": 1}, last)
    assert _resume_checkpoint(tmp_path) == last
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # Lightning's SLURM requeue checkpoint, saved mid-epoch
    torch.save({"epoch": 2}, hpc)
    os.utime(hpc, (time.time() + 5, time.time() + 5))
    assert _resume_checkpoint(tmp_path) == hpc
    hpc.write_bytes(hpc.read_bytes()[:100])  # killed while writing it
    assert _resume_checkpoint(tmp_path) == last
    last.write_bytes(b"")
    assert _resume_checkpoint(tmp_path) is None


def test_same_config_and_seed_give_identical_val_predictions(train_cfg: Callable[..., DictConfig]) -> None:
    """On CPU (trainer=cpu: deterministic), including the augmentation's own random generators."""
    folders = []
    for name in ("first", "second"):
        cfg = train_cfg("model=lenet5", "trainer.limit_train_batches=4", member=name)
        train(cfg)
        folders.append(Path(cfg.paths.output_dir))
    first, second = ((f / "val_predictions.csv").read_bytes() for f in folders)
    assert first == second
