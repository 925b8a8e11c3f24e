"""The classic networks: paper parameter counts, timm protocol, size limits, weight adaptation."""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

import pipeline.models.classic
from pipeline.models.classic import LENET_C3_TABLE, LeNetC3
from pipeline.models.factory import MIN_INPUT_SIZE

CLASSICS = ["lenet5", "alexnet", "nin"]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_lenet5_matches_paper_parameter_count() -> None:
    # LeCun et al. 1998: 60,000 trainable parameters at 32×32×1, 10 classes.
    model = timm.create_model("lenet5", num_classes=10, in_chans=1)
    assert abs(n_params(model) - 60_000) / 60_000 < 0.02
    # The dense-C3 variant is exactly 1516 → 2416 in C3, i.e. 900 more.
    dense = timm.create_model("lenet5", num_classes=10, in_chans=1, c3_table=False)
    assert n_params(dense) == n_params(model) + 900


def test_alexnet_matches_paper_parameter_count() -> None:
    with torch.device("meta"):  # 61M parameters: count without allocating or initialising them
        model = timm.create_model("alexnet", num_classes=1000, in_chans=3)
    assert abs(n_params(model) - 61_100_840) / 61_100_840 < 0.02  # torchvision's alexnet
    assert abs(n_params(model) - 60_000_000) / 60_000_000 < 0.02  # the paper's "60 million"


def test_lenet_c3_follows_the_connection_table() -> None:
    c3 = LeNetC3()
    x = torch.randn(1, 6, 5, 5, requires_grad=True)
    out = c3(x)
    assert out.shape == (1, 16, 1, 1)
    for j, inputs in enumerate(LENET_C3_TABLE):
        (grad,) = torch.autograd.grad(out[0, j].sum(), x, retain_graph=True)
        reached = {c for c in range(6) if grad[0, c].abs().sum() > 0}
        assert reached == set(inputs), f"C3 map {j}"


@pytest.mark.parametrize("name", CLASSICS)
@pytest.mark.parametrize("in_chans", [1, 3])
def test_forward_backward_at_min_size(name: str, in_chans: int) -> None:
    size = MIN_INPUT_SIZE[name]
    model = timm.create_model(name, num_classes=5, in_chans=in_chans).train()
    logits = model(torch.randn(2, in_chans, size, size))
    assert logits.shape == (2, 5)
    F.cross_entropy(logits, torch.tensor([0, 4])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    # The recorded minimum is tight: one pixel less breaks the forward pass.
    with pytest.raises(RuntimeError), torch.no_grad():
        model.eval()(torch.zeros(1, in_chans, size - 1, size - 1))


def test_lenet5_adapts_to_28px_with_the_same_weights() -> None:
    model = timm.create_model("lenet5", num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
        assert model(torch.zeros(3, 1, 64, 64)).shape == (3, 10)


@pytest.mark.parametrize(
    ("name", "input_size", "mean"),
    [("lenet5", (1, 32, 32), (0.5,)), ("alexnet", (3, 224, 224), None), ("nin", (3, 32, 32), None)],
)
def test_default_cfg_feeds_timm_data_config(name: str, input_size: tuple[int, ...], mean: Any) -> None:
    with torch.device("meta"):
        model: Any = timm.create_model(name)
    config = timm.data.resolve_model_data_config(model)
    assert config["input_size"] == input_size
    assert len(config["mean"]) == len(config["std"]) == input_size[0]
    if mean is not None:
        assert config["mean"] == mean
    assert model.pretrained_cfg["first_conv"] and model.pretrained_cfg["classifier"] == "fc"
    assert model.in_chans == input_size[0]


@pytest.mark.parametrize("name", ["lenet5", "nin"])
def test_classifier_protocol(name: str) -> None:
    model: Any = timm.create_model(name, num_classes=10, in_chans=1).eval()
    x = torch.randn(2, 1, 32, 32)
    head = model.get_classifier()
    assert head is model.fc and any(p is head.weight for p in model.parameters())
    features = model.forward_features(x)
    assert features.shape[1] == model.num_features
    assert model.forward_head(features, pre_logits=True).shape == (2, model.head_hidden_size)
    model.reset_classifier(4)
    assert model.num_classes == 4 and model(x).shape == (2, 4)
    model.reset_classifier(0)
    assert model(x).shape == (2, model.head_hidden_size)


def test_alexnet_lrn_option() -> None:
    plain = timm.create_model("alexnet", num_classes=3)
    with_lrn = timm.create_model("alexnet", num_classes=3, lrn=True).eval()
    lrns = [m for m in with_lrn.modules() if isinstance(m, nn.LocalResponseNorm)]
    assert len(lrns) == 2 and not any(isinstance(m, nn.LocalResponseNorm) for m in plain.modules())
    # LRN has no parameters, so checkpoints move between the two variants.
    assert plain.state_dict().keys() == with_lrn.state_dict().keys()
    with torch.no_grad():
        assert with_lrn(torch.randn(1, 3, 63, 63)).shape == (1, 3)


@pytest.mark.parametrize("name", ["lenet5", "nin"])
def test_timm_adapts_a_local_file_to_new_head_and_channels(name: str, tmp_path: Path) -> None:
    source = timm.create_model(name, num_classes=10, in_chans=1)
    path = tmp_path / f"{name}.safetensors"
    save_file(source.state_dict(), str(path))
    model: Any = timm.create_model(
        name, pretrained=True, pretrained_cfg_overlay={"file": str(path), "input_size": (1, 32, 32)},
        num_classes=4, in_chans=3,
    )  # fmt: skip
    stem = model.pretrained_cfg["first_conv"] + ".weight"
    saved, loaded = source.state_dict(), model.state_dict()
    # timm's rule for 1 → 3 channels: repeat the filter and scale by 1/3.
    assert torch.allclose(loaded[stem], saved[stem].repeat(1, 3, 1, 1) / 3)
    assert model.get_classifier().weight.shape[0] == 4
    for key in saved:
        if key != stem and not key.startswith("fc."):
            assert torch.equal(loaded[key], saved[key]), key


def test_reimport_is_quiet_and_keeps_models_registered() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(pipeline.models.classic)
        importlib.import_module("pipeline.models.classic")
    assert all(timm.is_model(name) for name in CLASSICS)
    assert type(timm.create_model("lenet5")).__name__ == "LeNet5"


def test_pretrained_without_file_fails_offline() -> None:
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("lenet5", pretrained=True)


def test_group_matcher_orders_layers_input_to_output() -> None:
    model: Any = timm.create_model("lenet5")
    layer_of = model.group_matcher()
    layers = [layer_of(name) for name, _ in model.named_parameters()]
    assert layers == sorted(layers)
    assert layers[0] == 0 and layer_of("fc.weight") == len(model.layer_prefixes) - 1
