"""Callbacks from the ``callbacks/`` group: the checkpoint contract, the learning-rate monitor, EMA and SWA."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from omegaconf import DictConfig
from pytorch_lightning.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint

from pipeline.cli.train import train_spec
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.member.folder import find_members
from pipeline.member.weights import WEIGHTS, build_model, load_state_dict
from pipeline.train.callbacks import member_callbacks
from tests.helpers import train

KEY = "features.conv1.weight"  # LeNet-5's first convolution
FINAL = "callbacks.model_checkpoint.monitor=null"  # best.ckpt = the last epoch (SWA's classic final average)
TINY = ("model=lenet5", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")


def test_default_group_instantiates_checkpoint_lr_monitor_and_progress_bar(train_cfg: Callable[..., DictConfig]) -> None:
    spec = train_spec(train_cfg("logger=csv", "trainer.enable_progress_bar=true", "early_stopping_patience=2"))
    names = [type(c).__name__ for c in member_callbacks(spec, has_logger=True)]
    assert names == ["ProgressGuard", "LastCheckpoint", "ModelCheckpoint", "LearningRateMonitor", "RichProgressBar",
                     "EarlyStopping"]
    ckpt = next(c for c in spec.callbacks or [] if isinstance(c, ModelCheckpoint))
    assert Path(str(ckpt.dirpath)) == Path(spec.member_dir) / "checkpoints" and ckpt.monitor == "val/log_loss"
    # without a logger or a progress bar Lightning would refuse them: they are left out
    kept = member_callbacks(train_spec(train_cfg()), has_logger=False)
    assert not any(isinstance(c, LearningRateMonitor) for c in kept)
    assert [type(c).__name__ for c in kept] == ["ProgressGuard", "LastCheckpoint", "ModelCheckpoint"]


def test_extra_and_disabled_callbacks(train_cfg: Callable[..., DictConfig]) -> None:
    spec = train_spec(train_cfg("callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=5",
                                "~callbacks.lr_monitor"))
    stops = [c for c in spec.callbacks or [] if isinstance(c, EarlyStopping)]
    assert len(stops) == 1 and stops[0].patience == 5
    assert not any(isinstance(c, LearningRateMonitor) for c in spec.callbacks or [])
    with pytest.raises(ConfigError, match="callbacks.bogus has no _target_"):
        train_spec(train_cfg("+callbacks.bogus.patience=3"))


@pytest.mark.parametrize(("override", "message"), [
    ("~callbacks.model_checkpoint", r"no ModelCheckpoint writes .*checkpoints/best.ckpt \(found: none\)"),
    ("callbacks.model_checkpoint.dirpath=/tmp/elsewhere", r"found: dirpath=/tmp/elsewhere filename=best"),
    ("callbacks.model_checkpoint.save_last=false", r"save_last=False.*needs save_last=true"),
])
def test_checkpoint_contract_is_refused_before_anything_is_written(
    train_cfg: Callable[..., DictConfig], tmp_path: Path, override: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(train_cfg(override))
    # recorded as a failed member, nothing else written (no folds, no checkpoints)
    assert sorted(p.name for p in (tmp_path / "sweep").rglob("*")) == ["error.txt", "member"]


def test_learning_rate_is_logged(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg("logger=csv", "trainer.log_every_n_steps=1", *TINY)
    train(cfg)
    logged = pd.read_csv(Path(cfg.paths.output_dir) / "csv_logs" / "metrics.csv")
    lr = logged["lr-AdamW/head"].dropna()  # one column per parameter group
    assert len(lr) == 4 and lr.iloc[0] == pytest.approx(float(cfg.optimizer.lr))


@pytest.fixture(scope="module")
def plain_last(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> dict[str, torch.Tensor]:
    """The last weights of the run the averaged runs are compared with (same seed, data and steps)."""
    from omegaconf import open_dict

    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("plain")
    cfg = compose_train(["trainer=cpu", "logger=none", f"data.root={demo_slice}", "trainer.max_epochs=3",
                         "trainer.enable_progress_bar=false", "data.num_workers=0", "data.batch_size=32",
                         f"paths.root={root}", FINAL, *TINY])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "sweep" / "member")
    train(cfg)
    return load_state_dict(root / "sweep" / "member" / "checkpoints" / "best.ckpt")


@pytest.mark.parametrize(("averaging", "updates"), [
    (("callbacks=[default,ema]", "callbacks.ema.decay=0.5"), 12),  # every optimiser step: 3 epochs × 4 batches
    (("callbacks=[default,swa]", "callbacks.swa.start_epoch=1"), 2),  # end of epochs 1 and 2
])
def test_averaged_member_is_saved_validated_and_loadable(
    train_cfg: Callable[..., DictConfig], plain_last: dict[str, torch.Tensor], averaging: tuple[str, str], updates: int
) -> None:
    cfg = train_cfg("trainer.max_epochs=3", FINAL, *TINY, *averaging)
    train(cfg)
    member_dir = Path(cfg.paths.output_dir)
    best = torch.load(member_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    assert int(best["averaging_state"]["n_averaged"]) == updates
    assert read_json(member_dir / "metrics.json")["averaged_over"] == updates
    # the checkpoint's weights are the average; the raw weights of the same step travel beside them
    averaged = load_state_dict(member_dir / "checkpoints" / "best.ckpt")
    raw = {k.removeprefix("model."): v for k, v in best["current_model_state"].items() if k.startswith("model.")}
    torch.testing.assert_close(raw[KEY], plain_last[KEY])  # same run underneath: averaging only reads the weights
    assert not torch.equal(averaged[KEY], plain_last[KEY])
    members, _ = find_members(member_dir.parent)
    model = build_model(members[0])  # what predict loads: the exported, averaged weights
    torch.testing.assert_close(model.state_dict()[KEY], averaged[KEY])
    assert (member_dir / WEIGHTS).is_file()


def test_averaging_changes_the_member_hash(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg(*TINY)
    train(cfg)
    with pytest.raises(ValueError, match="different config"):  # not silently skipped as "already completed"
        train(train_cfg(*TINY, "callbacks=[default,ema]"))


def test_swa_start_beyond_the_run_is_refused(train_cfg: Callable[..., DictConfig]) -> None:
    with pytest.raises(ConfigError, match=r"callbacks.swa.start_epoch=5: the average would never be updated"):
        train(train_cfg(*TINY, "callbacks=[default,swa]", "callbacks.swa.start_epoch=5"))


def test_last_checkpoint_is_the_last_epoch_not_a_copy_of_the_best(train_cfg: Callable[..., DictConfig],
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    """Lightning 2.6 writes last.ckpt only with a new best.ckpt; the member folder's last.ckpt is the last epoch."""
    cfg = train_cfg(*TINY, "trainer.max_epochs=3", "monitor_mode=max")  # the worst log loss: the first epoch
    with caplog.at_level("INFO"):
        train(cfg)
    assert not [r for r in caplog.records if "weights_only" in r.getMessage()]  # no line per epoch
    folder = Path(cfg.paths.output_dir) / "checkpoints"
    best, last = (torch.load(folder / f"{n}.ckpt", map_location="cpu", weights_only=True) for n in ("best", "last"))
    assert last["epoch"] == 2 and best["epoch"] < last["epoch"]
    assert not torch.equal(best["state_dict"][f"model.{KEY}"], last["state_dict"][f"model.{KEY}"])
    assert not list(folder.glob(".*.tmp"))


def test_averaged_batchnorm_statistics_are_recomputed_for_the_averaged_weights(
    train_cfg: Callable[..., DictConfig]
) -> None:
    """best.ckpt's BatchNorm statistics are those of the averaged weights on the training rows, not an average of
    the raw model's running statistics (which cost the resnets 0.13–0.25 accuracy on short runs)."""
    from pipeline.train.averaging import recompute_batchnorm
    from pipeline.train.module import ClassifierModule

    cfg = train_cfg("model=resnet10t", "trainer.max_epochs=2", "trainer.limit_train_batches=4",
                    "trainer.limit_val_batches=2", "callbacks=[default,ema]", "callbacks.ema.decay=0.5")
    train(cfg)
    member_dir = Path(cfg.paths.output_dir)
    best = torch.load(member_dir / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    module = ClassifierModule(**{k: v for k, v in best["hyper_parameters"].items()})
    module.load_state_dict(best["state_dict"])
    saved = {k: v.clone() for k, v in module.state_dict().items() if k.endswith("running_mean")}
    from pipeline.cli.train import train_spec
    from pipeline.data.folds import resolve_folds
    from pipeline.data.tables import read_train_table
    from pipeline.train.datamodule import MemberDataModule

    spec = train_spec(cfg)
    table = read_train_table(spec.data)
    folds, _ = resolve_folds(member_dir.parent / "folds.csv", table, spec.data)
    dm = MemberDataModule(spec.data, table, folds, spec.transforms, module.mean, module.std, spec.seed)
    dm.setup("fit")
    assert recompute_batchnorm(module, dm.batchnorm_loader()) > 0
    again = {k: v for k, v in module.state_dict().items() if k.endswith("running_mean")}
    for key, value in saved.items():
        torch.testing.assert_close(value, again[key], rtol=1e-4, atol=1e-5)
    averaged_raw = best["current_model_state"]  # the raw model's own running statistics differ from them
    assert any(not torch.allclose(averaged_raw[k], saved[k], atol=1e-4) for k in saved)
