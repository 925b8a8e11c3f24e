"""Fine-tuning controls: head/backbone split, frozen backbone (weights and BN stats), lr groups."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, TensorDataset

from pipeline.models.factory import create_model
from pipeline.models.finetune import BackboneFreeze, build_param_groups, head_and_backbone_params, set_backbone_frozen


def small_resnet(in_chans: int = 1) -> Any:
    torch.manual_seed(0)
    return create_model("resnet10t", num_classes=3, in_chans=in_chans)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_head_and_backbone_partition_the_parameters() -> None:
    model = small_resnet()
    head, backbone = head_and_backbone_params(model)
    assert [id(p) for p in head] == [id(model.fc.weight), id(model.fc.bias)]
    assert {id(p) for p in head} | {id(p) for p in backbone} == {id(p) for p in model.parameters()}
    assert len(head) + len(backbone) == len(list(model.parameters()))
    with pytest.raises(TypeError, match="get_classifier"):
        head_and_backbone_params(nn.Linear(2, 2))


def test_frozen_backbone_step_changes_only_the_head() -> None:
    model = small_resnet().train()
    set_backbone_frozen(model, True)
    before = snapshot(model)
    optimizer = torch.optim.SGD(build_param_groups(model, lr=0.5), lr=0.5, momentum=0.9)
    x, y = torch.randn(4, 1, 16, 16), torch.tensor([0, 1, 2, 0])
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"fc.weight", "fc.bias"}  # BN running stats included in "unchanged"
    assert all(p.grad is None for p in head_and_backbone_params(model)[1])


def test_frozen_backbone_bn_is_in_eval_mode_and_keeps_its_stats() -> None:
    model = small_resnet().train()
    set_backbone_frozen(model, True)
    norms: list[Any] = [m for m in model.modules() if isinstance(m, _BatchNorm)]
    assert norms and not any(m.training for m in norms) and model.training
    stats = [m.running_mean.clone() for m in norms]
    with torch.no_grad():
        model(torch.randn(4, 1, 16, 16) * 5 + 3)
    assert all(torch.equal(m.running_mean, s) for m, s in zip(norms, stats))
    set_backbone_frozen(model, False)
    assert all(m.training for m in norms)
    assert all(p.requires_grad for p in model.parameters())


def test_head_and_backbone_learning_rates() -> None:
    model = small_resnet()
    groups = build_param_groups(model, lr=0.01, head_lr=0.1, weight_decay=0.05)
    by_name = {g["name"]: g for g in groups}
    assert {g["lr"] for n, g in by_name.items() if n.startswith("head")} == {0.1}
    assert {g["lr"] for n, g in by_name.items() if n.startswith("backbone")} == {0.01}
    assert by_name["head"]["params"] == [model.fc.weight]
    assert by_name["head_no_decay"]["params"] == [model.fc.bias]
    assert all(g["weight_decay"] == 0.0 for g in groups if g["name"].endswith("no_decay"))
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters())  # each parameter exactly once
    assert {g["lr"] for g in build_param_groups(model, lr=0.01)} == {0.01}


def test_groups_include_frozen_parameters() -> None:
    model = small_resnet()
    set_backbone_frozen(model, True)
    for kwargs in ({}, {"layer_decay": 0.7}):
        groups = build_param_groups(model, lr=0.01, **kwargs)
        assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    assert not model.conv1[0].weight.requires_grad  # building groups left the flags alone


def _lr_by_param(groups: list[dict[str, Any]]) -> dict[int, float]:
    return {id(p): g["lr"] for g in groups for p in g["params"]}


@pytest.mark.parametrize("name", ["resnet10t", "lenet5"])
def test_layer_decay_increases_toward_the_head(name: str) -> None:
    model: Any = create_model(name, num_classes=3, in_chans=1)
    groups = build_param_groups(model, lr=0.1, layer_decay=0.5)
    assert all("lr_scale" not in g for g in groups)  # timm schedulers would apply it a second time
    lr_of = _lr_by_param(groups)
    lrs = [lr_of[id(p)] for p in model.parameters()]  # parameters run from the stem to the head
    assert lrs == sorted(lrs) and lrs[0] < lrs[-1]
    assert lr_of[id(model.get_classifier().weight)] == pytest.approx(0.1)
    if name == "lenet5":  # five layers: conv1, conv2, fc1, fc2, fc
        assert sorted(set(lrs)) == pytest.approx([0.1 * 0.5**k for k in (4, 3, 2, 1, 0)])
    with_head = _lr_by_param(build_param_groups(model, lr=0.1, layer_decay=0.5, head_lr=1.0))
    assert with_head[id(model.get_classifier().weight)] == 1.0
    assert with_head[id(next(model.parameters()))] == lrs[0]


class Classifier(pl.LightningModule):
    """Minimal LightningModule with the project's convention: the timm model is ``self.model``."""

    def __init__(self) -> None:
        super().__init__()
        self.model: Any = small_resnet()
        self.bn_training_seen: list[tuple[int, bool]] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        norms = [m for m in self.model.modules() if isinstance(m, _BatchNorm)]
        self.bn_training_seen.append((self.current_epoch, any(m.training for m in norms)))
        return F.cross_entropy(self.model(batch[0]), batch[1])

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self.log("val_loss", F.cross_entropy(self.model(batch[0]), batch[1]))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(build_param_groups(self.model, lr=0.1, head_lr=0.5), lr=0.1)

    # Both hooks put every module in training mode, as older Lightning did at each epoch start
    # and after each validation pass; the callback must still keep the frozen BN in eval mode.
    def on_train_epoch_start(self) -> None:
        self.train()

    def on_validation_model_train(self) -> None:
        self.train()


class Snapshots(pl.Callback):
    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.states.append(snapshot(pl_module.model))


def test_backbone_freeze_callback_in_a_real_trainer(tmp_path: Any) -> None:
    data = TensorDataset(torch.randn(8, 1, 16, 16), torch.randint(0, 3, (8,)))
    module, snaps = Classifier(), Snapshots()
    initial = snapshot(module.model)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=2, limit_val_batches=1, val_check_interval=1,
        num_sanity_val_steps=0, callbacks=[BackboneFreeze(unfreeze_at_epoch=1), snaps], accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path,
    )  # fmt: skip
    trainer.fit(module, DataLoader(data, batch_size=4), DataLoader(data, batch_size=4))
    # Epoch 0 is frozen, including its second batch, which runs after a validation pass.
    assert module.bn_training_seen == [(0, False), (0, False), (1, True), (1, True)]
    epoch0, epoch1 = snaps.states
    backbone = [k for k in initial if not k.startswith("fc.")]
    assert all(torch.equal(epoch0[k], initial[k]) for k in backbone)
    assert not torch.equal(epoch0["fc.weight"], initial["fc.weight"])
    assert not torch.equal(epoch1["conv1.0.weight"], initial["conv1.0.weight"])
    assert not torch.equal(epoch1["conv1.1.running_mean"], initial["conv1.1.running_mean"])


def test_backbone_freeze_validation_and_no_op() -> None:
    with pytest.raises(ValueError, match="unfreeze_at_epoch"):
        BackboneFreeze(-1)
    trainer = SimpleNamespace(current_epoch=0)
    with pytest.raises(AttributeError, match="self.model"):
        BackboneFreeze(2).on_train_epoch_start(trainer, SimpleNamespace(net=small_resnet()))  # type: ignore[arg-type]
    model = small_resnet()
    model.conv1[0].weight.requires_grad_(False)  # the user's own choice, not the callback's
    BackboneFreeze(0).on_train_epoch_start(trainer, SimpleNamespace(model=model))  # type: ignore[arg-type]
    assert not model.conv1[0].weight.requires_grad and model.layer1[0].conv1.weight.requires_grad
