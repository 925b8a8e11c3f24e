"""The command lines with bad input, run as a user runs them: exit status, one clear message, files left.

A problem the user can fix prints one message (no traceback unless ``HYDRA_FULL_ERROR=1``) and exits 1;
an unexpected error keeps its traceback. Output folders that cannot be written and sweeps whose jobs
would share a member folder are refused before any folder is created.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig

from pipeline.cli import CONF_DIR
from pipeline.cli.sweep import member_folder_clashes
from pipeline.member.manifest import read_manifest
from tests.helpers import unprivileged, write_competition
from tests.test_sweep import PIPELINE_TRAIN, failure_message, summary_rows

TINY = [
    "model=lenet5", "trainer=cpu", "trainer.max_epochs=1", "logger=none", "trainer.enable_progress_bar=false",
    "data.num_workers=0", "data.batch_size=4", "data.image_size=32", "data.crop_size=28", "data.in_chans=1",
]
SUGGESTED = 'member_name="${safe:${model.name}}-lr${optimizer.lr}-s${seed}-${fold_tag:${data.n_folds},${data.fold}}"'


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_competition(tmp_path_factory.mktemp("tiny") / "comp")


def cli(args: Sequence[str], cwd: Path, full_error: bool = False, as_user: bool = False) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HYDRA_FULL_ERROR": "1" if full_error else "0"}
    cmd = [PIPELINE_TRAIN, *args]
    return subprocess.run(unprivileged(cmd) if as_user else cmd, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


@pytest.fixture
def read_only(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    yield folder
    folder.chmod(0o755)


@pytest.mark.slow
def test_a_problem_the_user_can_fix_is_one_message_and_full_error_shows_the_traceback(tmp_path: Path) -> None:
    args = [*TINY, f"data.root={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'member'}"]
    proc = cli(args, tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert f"Error: Data folder {tmp_path / 'nowhere'} does not exist (config key data.root)." in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    # the failed member: its folder holds the record of the run and error.txt, nothing of a member
    assert sorted(p.name for p in (tmp_path / "member").iterdir()) == [".hydra", "error.txt", "train.log"]
    full = cli(args, tmp_path, full_error=True)
    assert full.returncode == 1 and "Traceback" in full.stderr and "DataError: Data folder" in full.stderr


@pytest.mark.slow
def test_an_unexpected_error_keeps_its_traceback(tmp_path: Path, tiny: Path) -> None:
    proc = cli([*TINY, f"data.root={tiny}", "+model.kwargs.no_such_argument=1", f"hydra.run.dir={tmp_path / 'm'}"], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" in proc.stderr and "no_such_argument" in proc.stderr
    assert (tmp_path / "m" / "error.txt").read_text().startswith("TypeError:")  # still recorded as a failed member


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_read_only_output_root_is_named_with_its_setting_and_nothing_is_created(
    tmp_path: Path, tiny: Path, read_only: Path, mode: str
) -> None:
    args = [*TINY, f"data.root={tiny}", f"paths.output_root={read_only / 'outputs'}"]
    proc = cli(["-m", *args] if mode == "sweep" else args, tmp_path, as_user=True)
    assert proc.returncode == 1, failure_message(proc)
    folder = read_only / "outputs" / "default" / "main" / ("" if mode == "sweep" else "lenet5-s0-holdout")
    assert f"Error: Cannot write to the output folder {str(folder).rstrip('/')} (set by paths.output_root): its parent " \
           f"{read_only} is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr and list(read_only.iterdir()) == []


def test_read_only_member_folder_is_named(tmp_path: Path, tiny: Path, read_only: Path) -> None:
    proc = cli([*TINY, f"data.root={tiny}", f"hydra.run.dir={read_only}"], tmp_path, as_user=True)
    assert proc.returncode == 1, failure_message(proc)
    assert f"Error: Cannot write to the output folder {read_only} (set by paths.output_root): it is not writable" in proc.stderr
    assert list(read_only.iterdir()) == []


def test_read_only_predict_dir_is_named_before_anything_runs(tmp_path: Path, read_only: Path) -> None:
    predict = str(Path(PIPELINE_TRAIN).with_name("pipeline-predict"))
    proc = subprocess.run(unprivileged([predict, f"predict_dir={read_only / 'predict'}", "logger=none"]), cwd=tmp_path,
                          env={**os.environ, "HYDRA_FULL_ERROR": "0"}, capture_output=True, text=True, timeout=300,
                          check=False)
    assert proc.returncode == 1, failure_message(proc)
    assert f"Error: Cannot write to the output folder {read_only / 'predict'} (set by predict_dir): its parent {read_only} " \
           "is not writable" in proc.stderr
    assert "Traceback" not in proc.stderr and list(read_only.iterdir()) == []


def test_sweep_whose_jobs_share_a_member_folder_stops_before_any_folder_is_written(tmp_path: Path, tiny: Path) -> None:
    out = tmp_path / "outputs"
    proc = cli(["-m", *TINY, f"data.root={tiny}", "optimizer.lr=0.001,0.002", f"paths.output_root={out}"], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert "2 jobs of this sweep would write the same member folder" in proc.stderr
    assert "lenet5-s0-holdout <- optimizer.lr=0.001 | optimizer.lr=0.002" in proc.stderr
    assert f"'{SUGGESTED}'" in proc.stderr and "sweep_name=" in proc.stderr
    assert not out.exists()


def compose_sweep(overrides: list[str]) -> DictConfig:
    """The sweep's master config as ``pipeline-train -m`` composes it."""
    hydra = GlobalHydra.instance().hydra
    assert hydra is not None
    return hydra.compose_config("train", overrides, run_mode=RunMode.MULTIRUN, with_log_configuration=False)


def test_the_suggested_member_names_separate_the_jobs() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        assert member_folder_clashes(compose_sweep(["optimizer.lr=0.001,0.002"])) is not None
        assert member_folder_clashes(compose_sweep(["optimizer.lr=0.001,0.002", SUGGESTED])) is None
        groups = member_folder_clashes(compose_sweep(["aug=light,strong"]))
        assert groups is not None and "${hydra:runtime.choices.aug}" in groups
        fixed = SUGGESTED.replace("-lr${optimizer.lr}", "-${hydra:runtime.choices.aug}")
        assert member_folder_clashes(compose_sweep(["aug=light,strong", fixed])) is None
        assert "(identical overrides)" in str(member_folder_clashes(compose_sweep(["seed=3,3"])))
        # the usual sweeps name their members apart already
        assert member_folder_clashes(compose_sweep(["seed=0,1", "data.n_folds=3", "data.fold=0,1,2"])) is None
    GlobalHydra.instance().clear()


def test_a_misspelt_new_key_fails_at_composition_naming_it(tmp_path: Path) -> None:
    proc = cli(["data.max_image_pixel=5", "data.root=x"], tmp_path)
    assert proc.returncode == 1
    assert "max_image_pixel" in proc.stderr and "DataSpec" in proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_sweep_member_refused_before_training_is_recorded_and_the_other_member_trains(tmp_path: Path, tiny: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = cli(["-m", *TINY, f"data.root={tiny}", "data.batch_size=4,64", 'member_name="${model.name}-bs${data.batch_size}"',
                f"hydra.sweep.dir={sweep}"], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    output = proc.stdout + proc.stderr
    assert "Member lenet5-bs64 failed (recorded in" in output
    assert "data.batch_size=64 is larger than the 19 training rows" in output
    assert "Traceback" not in output  # one line for a problem the user can fix, even inside a sweep
    rows = summary_rows(sweep)
    assert {k: r["status"] for k, r in rows.items()} == {"lenet5-bs4": "completed", "lenet5-bs64": "failed"}
    assert read_manifest(sweep / "lenet5-bs4").status == "completed"
    assert sorted(p.name for p in (sweep / "lenet5-bs64").iterdir()) == [".hydra", "error.txt", "train.log"]
