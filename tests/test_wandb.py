"""What a member and a predict run send to W&B, read back from the offline run files; WANDB_MODE precedence."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig, open_dict
from PIL import Image

from pipeline.core.tracking import LoggerSpec, init_wandb
from pipeline.member.manifest import read_manifest
from pipeline.train.loggers import SAMPLES_KEY, sample_grid
from tests.conftest import compose_train
from tests.helpers import train
from tests.wandb_records import logged

# lenet5, 3 batches of 32 per epoch, 2 epochs (the cosine schedule lowers the rate after the first).
TINY = ["model=lenet5", "trainer=cpu", "trainer.max_epochs=2", "trainer.limit_train_batches=3", "data.batch_size=32",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "experiment_name=w", "sweep_name=s"]


def _member_cfg(root: Path, demo_slice: Path, *overrides: str) -> DictConfig:
    cfg = compose_train([*TINY, f"data.root={demo_slice}", f"paths.root={root}", *overrides])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "w" / "s" / cfg.member_name)
    return cfg


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Iterator[tuple[Path, dict]]:
    """One real 2-epoch member logged to an offline W&B run, and what that run recorded."""
    import wandb

    root = tmp_path_factory.mktemp("wandb")
    cfg = _member_cfg(root, demo_slice, "logger=wandb", "logger.mode=offline")
    train(cfg)
    wandb.teardown()  # finish() can return before the service has flushed the run file; teardown waits
    folder = Path(cfg.paths.output_dir)
    (run_dir,) = (folder / "wandb").glob("offline-run-*")
    yield folder, {**logged(run_dir), "dir": run_dir}


def test_learning_rate_is_logged_every_epoch(member: tuple[Path, dict]) -> None:
    _, rec = member
    rates = [row["train/lr"] for row in rec["rows"] if "train/lr" in row]
    assert len(rates) == 2  # one per epoch
    assert rates[0] == pytest.approx(0.002)  # optimizer.lr of conf/optimizer/adamw.yaml
    assert rates[1] < rates[0]  # cosine schedule


def test_one_grid_of_augmented_training_images_in_the_first_epoch(member: tuple[Path, dict]) -> None:
    folder, rec = member
    rows = [row for row in rec["rows"] if SAMPLES_KEY in row]
    assert len(rows) == 1 and rows[0]["trainer/global_step"] == 0
    media = rows[0][SAMPLES_KEY]
    (name,) = media["filenames"]
    grid = np.asarray(Image.open(rec["dir"] / "files" / name))
    crop = read_manifest(folder).crop_size
    # 32 images of C×C, 8 per row, 2 px padding: the batch the network trained on, not an eval batch
    assert grid.shape[:2] == (4 * (crop + 2) + 2, 8 * (crop + 2) + 2)
    assert grid.std() > 10  # real pictures, not a blank grid


def test_sample_grid_undoes_the_normalisation() -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (2, 1, 4, 4)).astype(np.float32)
    mean, std = [0.3], [0.2]
    normalised = (pixels / 255.0 - mean[0]) / std[0]
    import torch

    grid = sample_grid(torch.from_numpy(normalised), mean, std).numpy()
    assert grid.shape == (8, 14, 3) and grid.dtype == np.uint8
    np.testing.assert_array_equal(grid[2:6, 2:6, 0], pixels[0, 0])
    np.testing.assert_array_equal(grid[2:6, 8:12, 1], pixels[1, 0])


def test_weights_and_oof_predictions_are_artifacts(member: tuple[Path, dict]) -> None:
    folder, rec = member
    got = {a["name"]: (a["type"], a["files"]) for a in rec["artifacts"]}
    assert all(a["aliases"] == ["latest"] and not a["used"] for a in rec["artifacts"])
    assert got == {
        f"model-w-s-{folder.name}": ("model", ["model.json", "model.safetensors"]),
        f"oof-w-s-{folder.name}": ("predictions", ["val_predictions.csv"]),
    }


def test_predict_run_logs_the_submission_artifact(member: tuple[Path, dict], demo_slice: Path, tmp_path: Path) -> None:
    import wandb
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.predict import run

    folder, _ = member
    out = tmp_path / "predict"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[
            f"members=[{folder}]", f"predict_dir={out}", f"data.root={demo_slice}", f"paths.root={tmp_path}",
            "tta=none", "policies=[none]", "device=cpu", "num_workers=0", "logger=wandb", "logger.mode=offline",
        ])
    GlobalHydra.instance().clear()
    run(cfg)
    wandb.teardown()
    (run_dir,) = (out / "wandb").glob("offline-run-*")
    rec = logged(run_dir)
    assert rec["job_type"] == "predict"
    outputs = [(a["name"], a["type"], a["files"]) for a in rec["artifacts"] if not a["used"] and a["type"] != "run_table"]
    assert outputs == [("submission", "submission", ["submission.csv"])]


def test_wandb_mode_from_the_environment_beats_the_config_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    assert compose_train(["logger=wandb"]).logger.mode == "offline" and LoggerSpec().mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert compose_train(["logger=wandb"]).logger.mode == "disabled" and LoggerSpec().mode == "disabled"
    # an explicit setting beats the environment
    assert compose_train(["logger=wandb", "logger.mode=offline"]).logger.mode == "offline"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match=r"logger.mode='sometimes' is not one of: offline, online, disabled.*WANDB_MODE"):
        init_wandb(LoggerSpec(), Path("/nonexistent/never-written"), "m", "g", "train", {})


def test_wandb_mode_disabled_writes_no_run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, demo_slice: Path) -> None:
    monkeypatch.setenv("WANDB_MODE", "disabled")
    cfg = _member_cfg(tmp_path, demo_slice, "logger=wandb", "trainer.max_epochs=1", "trainer.limit_train_batches=2")
    assert cfg.logger.mode == "disabled"
    train(cfg)
    folder = Path(cfg.paths.output_dir)
    assert read_manifest(folder).status == "completed"
    assert not (folder / "wandb").exists()
