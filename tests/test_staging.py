"""Results swapped in only when all succeeded (``pipeline/core/staging.py``), and the predict stage that uses it."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from pipeline.core.errors import PipelineError
from pipeline.core.io import _HOST
from pipeline.core.staging import discard, promote, staging_dir
from pipeline.data.spec import DataSpec
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members


def _snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` (hidden ones too) → the SHA-256 of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_promote_replaces_folders_whole_and_files_atomically(tmp_path: Path) -> None:
    out = tmp_path / "predict"
    (out / "oof").mkdir(parents=True)
    (out / "oof" / "stale__none.csv").write_text("old")
    (out / "predict.json").write_text("old")
    stage = staging_dir(out)
    assert stage.parent == out and stage.name.startswith(".staging-") and not any(stage.iterdir())
    (stage / "oof").mkdir()
    (stage / "oof" / "m__none.csv").write_text("new")
    (stage / "predict.json").write_text("new")
    promote(stage, out, ["oof", "test", "predict.json"])  # "test" was not staged: left alone
    assert sorted(p.name for p in (out / "oof").iterdir()) == ["m__none.csv"]  # the stale file went with its folder
    assert (out / "predict.json").read_text() == "new" and not stage.exists()
    again = staging_dir(out)
    discard(out)
    assert not again.exists() and sorted(p.name for p in out.iterdir()) == ["oof", "predict.json"]


def test_a_staging_folder_of_a_dead_writer_is_removed_by_the_next_run(tmp_path: Path) -> None:
    out = tmp_path / "predict"
    stage = staging_dir(out)
    dead = stage.with_name(stage.name.rsplit("-", 1)[0] + "-999999999")  # no such process
    stage.rename(dead)
    (dead / "half.csv").write_text("half-written")
    fresh = staging_dir(out)
    assert not dead.exists() and fresh.is_dir()


def test_temporary_files_of_dead_writers_in_the_folder_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    """A run killed (or, before the fix, one whose disk filled up) left ``oof/.*.tmp``; the next run removes it."""
    out = tmp_path / "predict"
    (out / "oof").mkdir(parents=True)
    dead = out / "oof" / f".m__none.csv.{_HOST}.999999999.0a1b2c3d.tmp"  # no such process
    live = out / "oof" / f".m__hflip.csv.{_HOST}.{os.getpid()}.0a1b2c3d.tmp"  # this process: a concurrent writer
    for path in (dead, live):
        path.write_text("id,label\n")
    staging_dir(out)
    assert not dead.exists() and live.exists()


@pytest.mark.slow
def test_a_failed_predict_leaves_the_previous_results_whole(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path
) -> None:
    comp = tmp_path / "comp"
    shutil.copytree(demo_slice, comp)
    members = copy_members(mixed_sweep, tmp_path / "sw")
    out = tmp_path / "predict"
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)

    def run(policy: str) -> dict:
        spec = DataSpec(root=str(comp), in_chans=1, solution=None)
        return submit(str(members), spec, [create_policy("none")], create_policy(policy), out, opts,
                      EnsembleSpec(weights="caruana", caruana_rounds=5), SubmissionOptions(), "accuracy")

    run("hflip")
    results = {k: v for k, v in _snapshot(out).items() if k.split("/")[0] in
               ("oof", "test", "ensemble_test.csv", "submission.csv", "predict.json")}
    assert {"predict.json", "submission.csv", "ensemble_test.csv"} <= set(results)
    # Another policy (its OOF files would replace the hflip ones), and a test image that no longer decodes: the
    # OOF rows are predicted (and staged) first, then the test set fails.
    victim = sorted((comp / "test").iterdir())[0]
    victim.write_bytes(b"not an image")
    with pytest.raises(PipelineError, match=victim.name):
        run("vflip")
    after = _snapshot(out)
    assert {k: after.get(k) for k in results} == results  # every earlier result, byte for byte
    assert not [p for p in out.iterdir() if p.name.startswith(".staging-")]  # nothing half-written left beside them
