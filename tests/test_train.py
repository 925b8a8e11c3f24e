"""Real Lightning training on a slice of the demo competition, the member folder, W&B, bad input."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from pipeline.core.errors import DataError
from pipeline.core.io import read_json
from pipeline.member.folder import find_members
from pipeline.member.manifest import read_manifest
from pipeline.member.predictions import read_predictions
from pipeline.member.weights import load_state_dict
from pipeline.train.module import ClassifierModule
from tests.helpers import train
from tests.wandb_records import logged


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Path:
    """One real 1-epoch member with the W&B offline logger."""
    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("run")
    cfg = compose_train([
        "trainer=cpu", "logger=wandb", "model=resnet10t", f"data.root={demo_slice}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "data.num_workers=0", "data.batch_size=32", f"paths.root={root}",
        "experiment_name=t", "sweep_name=s",
    ])
    from omegaconf import open_dict

    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "t" / "s" / cfg.member_name)
    train(cfg)
    return Path(cfg.paths.output_dir)


def test_member_folder_contract(trained: Path) -> None:
    for name in ["member.json", "config.yaml", "classes.json", "folds.csv", "eval_transform.json",
                 "checkpoints/best.ckpt", "checkpoints/last.ckpt", "val_predictions.csv", "metrics.json"]:
        assert (trained / name).is_file(), name
    manifest = read_manifest(trained)
    assert manifest.status == "completed" and manifest.name == "resnet10t-s0-holdout"
    assert manifest.model_group == "resnet10t-s0" and manifest.sweep == "t/s"
    metrics = read_json(trained / "metrics.json")
    assert metrics["epochs"] >= 1 and metrics["wall_time_s"] > 0 and 0.0 <= metrics["val_acc"] <= 1.0
    assert (trained.parent / "folds.csv").read_text() == (trained / "folds.csv").read_text()
    members, skipped = find_members(trained.parent)
    assert [m.name for m in members] == [manifest.name] and not skipped


def test_checkpoint_reloads_weights_only_and_reproduces_val_predictions(trained: Path) -> None:
    ckpt = torch.load(trained / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert "state_dict" in ckpt
    m = read_manifest(trained)
    module = ClassifierModule(m.model_name, m.num_classes, m.in_chans, m.crop_size, m.mean, m.std)
    module.model.load_state_dict(load_state_dict(trained / "checkpoints" / "best.ckpt"))
    module.eval()
    ids, saved, labels = read_predictions(trained / "val_predictions.csv", m.classes)
    assert len(ids) == 120 and labels is not None  # 20% holdout of 600
    from pipeline.data.augment import transform_from_dict
    from pipeline.data.dataset import ImageDataset
    from pipeline.data.spec import DataSpec
    from pipeline.data.tables import read_train_table

    cfg_root = json.loads(json.dumps(read_json(trained / "member.json")))
    assert cfg_root["classes"] == m.classes
    from omegaconf import OmegaConf

    data = OmegaConf.load(trained / "config.yaml").data
    table = read_train_table(DataSpec(root=data.root, classes=m.classes))
    pos = {i: r for r, i in enumerate(table.ids)}
    sub = table.subset(np.array([pos[i] for i in ids]))
    ds = ImageDataset(sub, transform_from_dict(read_json(trained / "eval_transform.json")), m.in_chans)
    batch = torch.stack([ds[i]["image"] for i in range(len(ds))])
    with torch.inference_mode():
        probs = module.eval_logits(batch).softmax(-1).numpy()
    np.testing.assert_allclose(probs, saved, atol=1e-5)
    np.testing.assert_array_equal(labels, sub.labels)


def test_wandb_offline_run_dir_has_logged_metrics(trained: Path) -> None:
    runs = list((trained / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    rec = logged(runs[0])
    assert {"val/log_loss", "val/acc", "train/acc"} <= rec["history"]
    assert rec["summary"]["best/val_acc"] == pytest.approx(read_json(trained / "metrics.json")["val_acc"])
    assert {"model", "data", "optimizer"} <= rec["config"]
    assert rec["group"] == "t/s" and rec["job_type"] == "train"


def test_rerun_skips_completed_member(trained: Path, demo_slice: Path) -> None:
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(trained / "config.yaml")
    before = (trained / "checkpoints" / "best.ckpt").stat().st_mtime_ns
    metrics = train(cfg)
    assert metrics == read_json(trained / "metrics.json")
    assert (trained / "checkpoints" / "best.ckpt").stat().st_mtime_ns == before
    cfg.optimizer.lr = 0.5  # same member name, different config: refused, not silently skipped
    with pytest.raises(ValueError, match="different config"):
        train(cfg)


def test_unknown_model_suggests_close_names(train_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"resnet181.*resnet18"):
        train(train_cfg("model.name=resnet181"))
    assert not (tmp_path / "sweep" / "member" / "checkpoints").exists()


def test_num_classes_contradicting_data_fails_before_training(train_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.num_classes=7 contradicts the data"):
        train(train_cfg("data.num_classes=7"))
    # recorded as a failed member, and nothing else written (no folds.csv in the sweep folder either)
    assert sorted(p.name for p in (tmp_path / "sweep").rglob("*")) == ["error.txt", "member"]


def test_missing_data_folder_fails_before_training(train_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere does not exist \(config key data.root\)"):
        train(train_cfg(f"data.root={tmp_path / 'nowhere'}"))


def test_fine_tune_from_local_weights_with_frozen_backbone(train_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """Save a timm model's weights, fine-tune from the file with the backbone frozen: backbone kept, head trained."""
    import timm
    from safetensors.torch import save_file

    source = timm.create_model("resnet10t", num_classes=7, in_chans=1)
    save_file(source.state_dict(), str(tmp_path / "resnet10t.safetensors"))
    cfg = train_cfg(f"model.weights={tmp_path / 'resnet10t.safetensors'}", "model.freeze_backbone_epochs=1",
                    "trainer.limit_train_batches=3")
    train(cfg)
    trained = load_state_dict(Path(cfg.paths.output_dir) / "checkpoints" / "best.ckpt")
    src = source.state_dict()
    backbone = [k for k in src if not k.startswith("fc.")]
    for key in backbone:
        torch.testing.assert_close(trained[key], src[key], msg=key)
    assert trained["fc.weight"].shape == (10, 512)  # head adapted to the demo's 10 classes, then trained
