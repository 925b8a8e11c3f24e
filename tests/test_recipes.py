"""Training recipes from config: Mixup/CutMix with soft targets, warmup + cosine per step, precision, accumulation,
the recipe record in member.json, and the bad settings refused before training."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from pipeline.cli.train import train_spec
from pipeline.core.errors import ConfigError
from pipeline.data.folds import resolve_folds
from pipeline.data.tables import read_train_table
from pipeline.member.manifest import MANIFEST, Recipe, read_manifest
from pipeline.train.datamodule import MemberDataModule
from pipeline.train.identity import member_hash
from pipeline.train.module import ClassifierModule
from pipeline.train.recipe import check_ema_horizon, resolve_precision
from pipeline.train.schedules import WarmupCosine, warmup_cosine_factor
from pipeline.train.spec import TrainSpec
from tests.conftest import compose_train
from tests.helpers import train

TINY = ("model=lenet5", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2")
SOFT = ("loss=soft_target_cross_entropy",)


def _module_and_batch(spec: TrainSpec, tmp_path: Path) -> tuple[ClassifierModule, dict[str, torch.Tensor]]:
    """The spec's LeNet-5 module and the first real training batch of its fold (augmented, as training sees it)."""
    table = read_train_table(spec.data)
    folds, _ = resolve_folds(tmp_path / "folds.csv", table, spec.data)
    mean, std = [0.5], [0.25]
    module = ClassifierModule(spec.model.name, len(table.classes), spec.data.in_chans, spec.data.crop_size, mean, std,
                              label_smoothing=spec.label_smoothing, loss=spec.loss,
                              mixup=None if spec.mixup is None else asdict(spec.mixup))
    dm = MemberDataModule(spec.data, table, folds, spec.transforms, mean, std, seed=0)
    dm.setup("fit")
    return module, next(iter(dm.train_dataloader()))


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")  # training_step called without a Trainer
def test_mixup_targets_sum_to_one_and_the_soft_loss_trains_on_them(
    train_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    torch.manual_seed(0)
    spec = train_spec(train_cfg(*TINY, *SOFT, "aug.mixup=0.8", "aug.cutmix=1.0", "label_smoothing=0.1"))
    module, batch = _module_and_batch(spec, tmp_path)
    labels = batch["target"].clone()
    seen: list[torch.Tensor] = []
    loss_fn = module.criterion
    module.criterion = lambda logits, targets: (seen.append(targets), loss_fn(logits, targets))[1]  # records, same loss
    # λ differs from call to call; Mixup mixes in place, so each call gets its own copy of the images
    losses = [module.training_step({**batch, "image": batch["image"].clone()}, 0) for _ in range(4)]
    k = module.hparams["num_classes"]
    for targets in seen:
        assert targets.shape == (len(labels), k) and targets.dtype.is_floating_point
        assert torch.allclose(targets.sum(1), torch.ones(len(labels)))
        assert float(targets.min()) == pytest.approx(0.1 / k)  # label smoothing went through Mixup's targets
    assert any(bool(((t > 0.1 / k + 1e-6).sum(1) >= 2).any()) for t in seen)  # images really mixed: two classes
    assert torch.equal(batch["target"], labels)  # the hard labels stay for accuracy
    assert all(torch.isfinite(loss) and loss > 0 for loss in losses)
    losses[0].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


def test_default_loss_is_the_hard_label_cross_entropy_of_before(train_cfg: Callable[..., DictConfig],
                                                               tmp_path: Path) -> None:
    spec = train_spec(train_cfg(*TINY, "label_smoothing=0.1"))
    module, batch = _module_and_batch(spec, tmp_path)
    assert module.mixup is None
    logits = torch.randn(len(batch["target"]), module.hparams["num_classes"])
    expected = F.cross_entropy(logits, batch["target"], label_smoothing=0.1)
    assert torch.equal(module.criterion(logits, batch["target"]), expected)
    # the soft-target loss on hard labels (no mixing) is the same loss, through smoothed one-hot targets
    soft = ClassifierModule("lenet5", module.hparams["num_classes"], 1, 28, [0.5], [0.25], label_smoothing=0.1,
                            loss="soft_target_cross_entropy")
    assert soft.mixup is None
    assert float(soft.criterion(logits, batch["target"])) == pytest.approx(float(expected), rel=1e-5)


@pytest.mark.parametrize("accumulate", [1, 2])
def test_learning_rate_rises_linearly_during_warmup_then_follows_cosine(
    train_cfg: Callable[..., DictConfig], accumulate: int
) -> None:
    # 2 epochs × 4 batches = 8 batches: T = 8 / accumulate optimiser steps, warmup_epochs=1 → W = T / 2 warmup steps
    cfg = train_cfg(*TINY, "logger=csv", "trainer.log_every_n_steps=1", "trainer.max_epochs=2",
                    "scheduler=warmup_cosine", "scheduler.warmup_epochs=1", f"trainer.accumulate_grad_batches={accumulate}")
    train(cfg)
    logged = pd.read_csv(Path(cfg.paths.output_dir) / "csv_logs" / "metrics.csv")
    rows = logged.dropna(subset=["train/lr"])
    per_step = rows.groupby("step")["train/lr"]
    assert (per_step.nunique() == 1).all()  # the batches of one optimiser step share its rate
    lr = per_step.first().to_numpy()
    base, total = float(cfg.optimizer.lr), 8 // accumulate
    warmup = total // 2
    assert list(per_step.first().index) == list(range(total))
    assert lr[:warmup] == pytest.approx([base * (s + 1) / warmup for s in range(warmup)])  # linear rise to the base rate
    assert lr[warmup:] == pytest.approx([base * 0.5 * (1 + math.cos(math.pi * s / warmup)) for s in range(warmup)])
    assert all(a < b for a, b in zip(lr[:warmup], lr[1:warmup], strict=False))
    assert all(a > b for a, b in zip(lr[warmup:], lr[warmup + 1:], strict=False))
    # the Lightning LR monitor sees the same rates
    monitor = logged.dropna(subset=["lr-AdamW/head"]).groupby("step")["lr-AdamW/head"].first()
    assert monitor.to_numpy() == pytest.approx(lr)
    # a resume restores the schedule: its state is in last.ckpt, which loads with weights_only=True as resuming does
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["lr_schedulers"][0]["last_epoch"] == total and ckpt["lr_schedulers"][0]["warmup_steps"] == warmup


def test_warmup_factor_and_schedule_check_the_exact_run_length() -> None:
    assert [warmup_cosine_factor(s, warmup=2, total=4) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 0.5])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match=r"scheduler.warmup_epochs=1 gives 5 warmup steps, not fewer than the run's 5"):
        WarmupCosine(optimizer, total_steps=5, steps_per_epoch=5, warmup_epochs=1)
    assert WarmupCosine(optimizer, total_steps=10, steps_per_epoch=5, warmup_epochs=0.4).warmup_steps == 2


def test_recipe_is_recorded_in_member_json(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg(*TINY, *SOFT, "aug.mixup=0.4", "aug.cutmix=1.0", "aug.mixup_mode=elem", "label_smoothing=0.1",
                    "trainer.max_epochs=2", "scheduler=warmup_cosine", "scheduler.warmup_steps=1",
                    "trainer.accumulate_grad_batches=2", "trainer.precision=auto-mixed", "callbacks=[default,ema]",
                    "callbacks.ema.decay=0.4")
    metrics = train(cfg)
    assert math.isfinite(metrics["val_log_loss"])
    recipe = read_manifest(Path(cfg.paths.output_dir)).recipe
    assert recipe == Recipe(
        loss="soft_target_cross_entropy", label_smoothing=0.1,
        mixup={"mixup": 0.4, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "elem"},
        scheduler="pipeline.train.schedules.WarmupCosine", scheduler_interval="step", warmup={"steps": 1},
        precision="32-true",  # auto-mixed on the CPU
        accumulate_grad_batches=2, averaging=[{"ema": {"decay": 0.4, "every": 1, "from_step": None, "batchnorm": "recomputed"}}],
        snapshots=0,
    )


def test_default_recipe_record_and_manifests_without_one(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg(*TINY)
    train(cfg)
    folder = Path(cfg.paths.output_dir)
    recipe = read_manifest(folder).recipe
    assert recipe == Recipe(scheduler="torch.optim.lr_scheduler.CosineAnnealingLR")
    data = json.loads((folder / MANIFEST).read_text())
    del data["recipe"]  # a member.json written before the record existed
    (folder / MANIFEST).write_text(json.dumps(data))
    old = read_manifest(folder)
    assert old.recipe is None and old.status == "completed"


def test_config_hash_changes_only_with_a_recipe(train_cfg: Callable[..., DictConfig]) -> None:
    def digest(*overrides: str) -> str:
        spec = train_spec(train_cfg(*overrides))
        return member_hash(spec, spec.config or {})

    default = digest()
    assert digest("aug.mixup_prob=0.5", "aug.mixup_mode=pair") == default  # mixing off: nothing changes
    changed = [digest(*SOFT), digest(*SOFT, "aug.mixup=0.8"), digest("trainer.accumulate_grad_batches=2")]
    assert len({default, *changed}) == 4


@pytest.mark.parametrize(("overrides", "message"), [
    (("aug.mixup=0.8", "loss=cross_entropy"), r"aug.mixup=0.8 makes soft targets, which loss=cross_entropy cannot take .*"
                         r"soft_target_cross_entropy"),
    (("aug.cutmix=1.0", "loss=cross_entropy"), r"aug.cutmix=1.0 makes soft targets, which loss=cross_entropy cannot take"),
    ((*SOFT, "aug.mixup=-0.2"), r"aug.mixup=-0.2: accepted: an alpha ≥ 0"),
    ((*SOFT, "aug.cutmix=-1.0"), r"aug.cutmix=-1.0: accepted: an alpha ≥ 0"),
    ((*SOFT, "aug.mixup=0.8", "aug.mixup_prob=1.5"), r"aug.mixup_prob=1.5: accepted: a probability in \[0, 1\]"),
    ((*SOFT, "aug.mixup=0.8", "aug.mixup_switch_prob=-0.1"), r"aug.mixup_switch_prob=-0.1: accepted: a probability"),
    ((*SOFT, "aug.mixup=0.8", "aug.mixup_mode=row"), r"aug.mixup_mode='row': accepted: batch, pair, elem"),
    ((*SOFT, "aug.mixup=0.8", "data.batch_size=31"), r"data.batch_size=31 is odd"),
    (("loss=focal",), r"loss='focal' is not a training loss; accepted: auto, cross_entropy, soft_target_cross_entropy, bce"),
    (("label_smoothing=1.0",), r"label_smoothing=1.0: accepted: a number in \[0, 1\)"),
    (("trainer.accumulate_grad_batches=0",), r"trainer.accumulate_grad_batches=0: accepted: an integer ≥ 1"),
    (("scheduler=warmup_cosine", "scheduler.warmup_epochs=1"),  # trainer.max_epochs=1
     r"scheduler.warmup_epochs=1 is not shorter than the run \(trainer.max_epochs=1\).*< 1"),
    (("scheduler=warmup_cosine", "scheduler.warmup_epochs=-0.5", "trainer.max_epochs=2"),
     r"scheduler.warmup_epochs=-0.5: accepted: a number ≥ 0"),
    (("scheduler=warmup_cosine", "scheduler.warmup_steps=8", "trainer.max_epochs=2"),  # 2 × 4 batches
     r"scheduler.warmup_steps=8 gives 8 warmup steps, not fewer than the run's 8 optimiser steps"),
    (("scheduler=warmup_cosine", "scheduler.warmup_steps=4", "trainer.max_epochs=2", "trainer.accumulate_grad_batches=2"),
     r"scheduler.warmup_steps=4 gives 4 warmup steps, not fewer than the run's 4 optimiser steps"),
])
def test_bad_recipes_are_refused_before_anything_is_written(
    train_cfg: Callable[..., DictConfig], tmp_path: Path, overrides: tuple[str, ...], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        train(train_cfg(*TINY, *overrides))
    # the member is recorded as failed, nothing else written (no folds, checkpoints or manifest); the run-length
    # check comes after the images are verified, whose record the sweep keeps (verified-<hash>.json)
    assert [p.name for p in (tmp_path / "sweep" / "member").iterdir()] == ["error.txt"]
    assert not (tmp_path / "sweep" / "folds.csv").exists()


def test_precision_auto_mixed_is_resolved_by_the_device() -> None:
    assert resolve_precision("auto-mixed", "cpu") == "32-true"
    if not torch.cuda.is_available():  # this machine: the real branch
        assert resolve_precision("auto-mixed", "auto") == "32-true"
    # the GPU branch, with the capability a GPU would report
    assert resolve_precision("auto-mixed", "gpu", cuda=True, bf16=True) == "bf16-mixed"  # A100, H100
    assert resolve_precision("auto-mixed", "auto", cuda=True, bf16=False) == "16-mixed"  # T4, P100
    assert resolve_precision("auto-mixed", "cpu", cuda=True, bf16=True) == "32-true"
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed" and resolve_precision(None) == "32-true"


@pytest.mark.parametrize(("trainer", "expected"), [
    ("default", {"precision": "32-true", "accumulate_grad_batches": 1}),
    ("cpu", {"precision": "32-true", "accumulate_grad_batches": 1}),
    ("gpu", {"precision": "auto-mixed", "accelerator": "gpu"}),
    ("fp16", {"precision": "16-mixed", "accelerator": "gpu", "benchmark": True}),
])
def test_trainer_presets(trainer: str, expected: dict[str, Any]) -> None:
    settings = compose_train([f"trainer={trainer}", "trainer.accumulate_grad_batches=1"]).trainer
    assert {k: settings[k] for k in expected} == expected


def test_an_ema_longer_than_the_run_is_refused_before_training(train_cfg: Callable[..., DictConfig]) -> None:
    cfg = train_cfg(*TINY, "callbacks=[default,ema]")  # decay 0.999 over a handful of steps
    with pytest.raises(ConfigError, match=r"callbacks.ema.decay=0.999 averages over about 1000 updates .* Accepted for "
                                          r"this run: decay ≤ 0\.\d+"):
        train(cfg)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()
    check_ema_horizon(0.95, 1, 0, 80)  # 0.95^80 = 0.017: fits
    with pytest.raises(ConfigError, match="an EMA that starts within the run"):
        check_ema_horizon(0.9, 1, 100, 80)
