"""Snapshot ensembles: one run with ``snapshots=k`` gives k first-class member folders that predict loads."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from pipeline.member.folder import find_members
from pipeline.member.predictions import read_predictions
from pipeline.member.weights import load_state_dict
from pipeline.predict.api import predict_images
from pipeline.predict.spec import PredictOptions
from pipeline.train.snapshots import snapshot_name
from tests.helpers import train

TINY = ("model=lenet5", "trainer.limit_train_batches=4", "optimizer.lr=0.01")


def test_snapshot_names_keep_the_fold_last() -> None:
    assert snapshot_name("resnet18-s0-f2", 1) == "resnet18-s0-snap1-f2"
    assert snapshot_name("lenet5-s1-holdout", 3) == "lenet5-s1-snap3-holdout"
    assert snapshot_name("mine", 2) == "mine-snap2"


@pytest.mark.slow
def test_snapshot_run_writes_k_loadable_members(
    train_cfg: Callable[..., DictConfig], tmp_path: Path, demo_slice: Path
) -> None:
    cfg = train_cfg("snapshots=2", "trainer.max_epochs=4", *TINY, member="lenet5-s0-holdout")
    train(cfg)
    sweep = tmp_path / "sweep"
    members, skipped = find_members(sweep)
    names = sorted(m.name for m in members)
    assert names == ["lenet5-s0-holdout", "lenet5-s0-snap1-holdout", "lenet5-s0-snap2-holdout"] and not skipped
    snaps = [m for m in members if "snap" in m.name]
    for i, member in enumerate(sorted(snaps, key=lambda m: m.name), 1):
        metrics = read_json(member.path / "metrics.json")
        assert (metrics["snapshot"], metrics["of"], metrics["epoch"]) == (i, 2, 2 * i - 1)  # each 2-epoch cycle's end
        assert member.manifest.model_group == f"lenet5-s0-snap{i}"
        assert (member.path / "model.safetensors").is_file()
    w1, w2 = (load_state_dict(m.checkpoint)["features.conv1.weight"] for m in sorted(snaps, key=lambda m: m.name))
    assert not torch.equal(w1, w2)
    # each member's saved validation predictions are what predict computes from its weights (none policy)
    data = DataSpec(root=str(demo_slice))
    table = read_train_table(data)
    options = PredictOptions(device="cpu", batch_size=64)
    for member in members:
        ids, saved, labels = read_predictions(member.path / "val_predictions.csv", member.manifest.classes)
        assert labels is not None and len(ids) == 120
        pos = {image_id: row for row, image_id in enumerate(table.ids)}
        pred = predict_images([member], table.subset(np.array([pos[i] for i in ids])), policy="none", options=options)
        np.testing.assert_allclose(pred.probs, saved, atol=1e-5)


def test_warm_restarts_replace_the_schedule(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg("snapshots=2", "trainer.max_epochs=4", "logger=csv", "trainer.log_every_n_steps=1", *TINY)
    train(cfg)
    import pandas as pd

    logged = pd.read_csv(Path(cfg.paths.output_dir) / "csv_logs" / "metrics.csv")
    lr = logged.dropna(subset=["lr-AdamW/head"])
    per_epoch = lr.groupby(lr["step"] // 4)["lr-AdamW/head"].first()  # 4 optimiser steps per epoch
    # cosine over 2 epochs per cycle, restarted: 0.01, 0.005, 0.01, 0.005
    np.testing.assert_allclose(per_epoch.to_numpy(), [0.01, 0.005, 0.01, 0.005], rtol=1e-6)


@pytest.mark.parametrize(("overrides", "message"), [
    (("snapshots=2", "trainer.max_epochs=3"), r"trainer.max_epochs to be a multiple of 2.*got trainer.max_epochs=3"),
    (("snapshots=1",), r"snapshots=1: give the number of snapshot members to keep, 2 or more"),
    (("snapshots=2", "trainer.max_epochs=2", "early_stopping_patience=1"), r"snapshots=2 with early stopping"),
])
def test_impossible_snapshot_settings_are_refused_before_training(
    train_cfg: Callable[..., DictConfig], tmp_path: Path, overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(train_cfg(*overrides))
    assert sorted(p.name for p in (tmp_path / "sweep").rglob("*")) == ["error.txt", "member"]
