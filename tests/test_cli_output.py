"""What the console scripts print: one-line refusals, help that lists only the groups a command reads, quiet pipes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli.help import print_help_if_asked

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = shutil.which(name, path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert path, f"{name} is not installed next to {sys.executable}"
    return path


@pytest.mark.parametrize("command,flag", [("predict", "-m"), ("report", "--multirun")])
def test_predict_and_report_refuse_a_sweep_before_hydra_creates_anything(tmp_path: Path, command: str, flag: str) -> None:
    proc = subprocess.run([script(f"pipeline-{command}"), flag, "experiment=demo", "tta=none,hflip"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: pipeline-{command} does not take -m/--multirun: "), proc.stderr
    assert "Could not override" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # no multirun/, outputs/ or .hydra


READ = {
    "train": {"aug", "callbacks", "data", "experiment", "hparams_search", "launcher", "logger", "model", "optimizer",
              "scheduler", "teacher", "trainer"},
    "predict": {"data", "tta", "ensemble", "logger", "distribute", "experiment"},
    "report": {"experiment", "logger"},
}


@pytest.mark.parametrize("command", sorted(READ))
def test_help_lists_the_groups_the_command_reads_and_no_schema_base(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for rel in ("experiment/mine.yaml", "tta/base_mine.yaml", "base_extra/x.yaml"):  # a user's config folder
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text("# @package _global_\n")
    assert print_help_if_asked(f"pipeline-{command}", command, "…", ["--help", "--config-dir", str(tmp_path)])
    text = capsys.readouterr().out
    section = text.split("== Config groups (group=option) ==\n")[1].split("\n\n")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines())
    assert set(groups) == READ[command]
    assert "mine" in groups["experiment"].split(", ") and "base_" not in section


@pytest.mark.parametrize("command", ["pipeline-predict", "pipeline-train", "pipeline-export", "pipeline-demo-data"])
def test_a_closed_pipe_ends_help_quietly(command: str) -> None:
    """The reader is gone before the help is written (`pipeline-predict --help | head -1`, deterministically)."""
    proc = subprocess.Popen([script(command), "--help"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) in (0, 1)  # argparse itself ignores a failed write; the rest stop with 1
    assert err == "", err


def test_help_through_head_prints_its_first_line_and_no_traceback() -> None:
    proc = subprocess.run(f"'{script('pipeline-predict')}' --help | head -1", shell=True, capture_output=True, text=True,
                          timeout=120)
    assert proc.stdout.startswith("pipeline-predict: ") and proc.stdout.count("\n") == 1
    assert not re.search(r"Traceback|BrokenPipe", proc.stderr), proc.stderr


@pytest.mark.slow
def test_training_prints_no_third_party_noise_and_each_instantiation_once(tmp_path: Path) -> None:
    """A tiny real training through the console script, W&B on (offline) with W&B's own default verbosity."""
    from pipeline.data.demo import prepare_demo

    prepare_demo(tmp_path / "data" / "fashion-mnist-demo", n_train=300, n_test=20)
    env = {k: v for k, v in os.environ.items() if k not in ("WANDB_SILENT", "WANDB_CONSOLE", "WANDB_QUIET")}
    env.update(WANDB_MODE="offline", OMP_NUM_THREADS="1", PYTHONWARNINGS="")
    proc = subprocess.run([script("pipeline-train"), "model=lenet5", "trainer=cpu", "trainer.max_epochs=1",
                           "trainer.limit_train_batches=2", "trainer.limit_val_batches=2", "data.num_workers=0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "LeafSpec" not in out and "💡 Tip" not in out
    assert not [line for line in out.splitlines() if line.startswith("wandb:")], out
    made = [line.split(" - ", 1)[1] for line in out.splitlines() if " - Instantiating " in line]
    assert made and len(made) == len(set(made)), made
    assert {"Instantiating model <timm.create_model lenet5>", "Instantiating callback <ModelCheckpoint>"} <= set(made)
    assert "Member lenet5-s0-holdout completed" in out  # the pipeline's own lines still show
    (run,) = (tmp_path / "outputs" / "default" / "main" / "lenet5-s0-holdout" / "wandb").glob("offline-run-*")
    assert (run / f"run-{run.name.rsplit('-', 1)[1]}.wandb").stat().st_size > 0  # the run is still written
