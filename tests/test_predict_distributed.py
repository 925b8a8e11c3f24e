"""Distributed predict: one task per member on Ray (fake GPUs) or submitit, the same submission byte for byte."""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.data.spec import DataSpec
from pipeline.predict.distributed import DistributeSpec, distribute_spec
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members


def _submit(members: Path, data: Path, out: Path, dist: DistributeSpec | None, mode: str = "full") -> dict[str, Any]:
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=64, prediction_cache_dir=str(out / "cache"), mode=mode)
    return submit(str(members), DataSpec(root=str(data)), [create_policy("none")], create_policy("ten_crop"), out / "predict",
                  opts, EnsembleSpec(weights="caruana"), SubmissionOptions(), "accuracy", dist=dist)


def _check_same_run(single: Path, other: Path, summary: dict[str, Any], splits: tuple[str, ...] = ("test", "val"),
                    ) -> list[dict[str, Any]]:
    """Byte-identical submission and ensemble; every cache file written by a task, none by the driver."""
    for name in ("submission.csv", "ensemble_test.csv"):
        assert (other / "predict" / name).read_bytes() == (single / "predict" / name).read_bytes(), name
    tasks = read_json(other / "predict" / "predict.json")["distributed"]["tasks"]
    assert sorted((t["member"], t["split"].split("-")[0]) for t in tasks) == sorted(
        itertools.product(summary["members"], splits))  # one task per member and split
    assert all(t["pid"] != os.getpid() for t in tasks)
    written = {p.name for p in (other / "cache").rglob("*.csv")}
    assert written == {Path(f).name for t in tasks for f in t["files"].values()}
    assert written == {p.name for p in (single / "cache").rglob("*.csv")}  # the same computations, by name
    return tasks


def test_distribute_settings_are_checked() -> None:
    assert distribute_spec(None).backend == "none"
    with pytest.raises(ConfigError, match=r"distribute.backend='dask'; accepted: \['none', 'ray', 'slurm', 'submitit_local'\]"):
        distribute_spec({"backend": "dask"})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['gpus'\]"):
        distribute_spec({"backend": "ray", "gpus": 1})
    with pytest.raises(ConfigError, match="cluster's own resources"):
        distribute_spec({"backend": "ray", "address": "auto", "num_gpus": 2})


@pytest.mark.slow
def test_ray_one_fake_gpu_per_member_task_and_a_byte_identical_submission(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    members = copy_members(mixed_sweep, tmp_path / "members")
    single = _submit(members, demo_slice, tmp_path / "single", None)
    dist = DistributeSpec(backend="ray", address="local", num_gpus=2, num_cpus=2, gpus_per_task=1, cpus_per_task=1)
    _submit(members, demo_slice, tmp_path / "ray", dist)
    assert not ray.is_initialized()  # the Ray it started is shut down
    tasks = _check_same_run(tmp_path / "single", tmp_path / "ray", single)
    for t in tasks:
        assert t["cuda_visible_devices"] in ("0", "1") and t["ray_resources"] == {"GPU": 1.0, "CPU": 1.0}
        assert t["torch_threads"] == 1
    for a, b in itertools.combinations(tasks, 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:  # ran at the same time: different devices
            assert a["cuda_visible_devices"] != b["cuda_visible_devices"], (a, b)


@pytest.mark.slow
def test_submitit_local_runs_the_slurm_path_with_a_byte_identical_submission(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path
) -> None:
    """Inference-only mode (test images only, weights from the members' saved OOF rows): one round of tasks."""
    members = copy_members(mixed_sweep, tmp_path / "members")
    single = _submit(members, demo_slice, tmp_path / "single", None, "submit")
    _submit(members, demo_slice, tmp_path / "local", DistributeSpec(backend="submitit_local", timeout_min=10), "submit")
    tasks = _check_same_run(tmp_path / "single", tmp_path / "local", single, ("test",))
    assert len({t["pid"] for t in tasks}) == len(tasks)  # a process per task
    assert list((tmp_path / "local" / "predict" / ".submitit").iterdir())  # submitit's job folders
