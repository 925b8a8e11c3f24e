"""The model factory: every conf/model entry trains at its minimum size, local weights, clear errors."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from safetensors.torch import save_file

from pipeline.cli import CONF_DIR
from pipeline.cli.config import register
from pipeline.core.errors import ConfigError
from pipeline.models.factory import (
    WEIGHT_SUFFIXES,
    check_input_size,
    create_model,
    min_input_size,
    model_data_config,
    sized_kwargs,
    suggest_model_names,
)
from pipeline.models.spec import ModelSpec

CONF_MODELS = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
# Tens of millions of parameters (or inception's depth): seconds each on two busy cores.
HEAVY = {"alexnet", "vgg11", "vgg16", "resnet152", "inception_v3", "convnext_tiny"}
StateDict = dict[str, torch.Tensor]


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail loudly if anything tries to fetch weights from the internet."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access attempted: {args}")

    for fn in ("load_state_dict_from_url", "load_state_dict_from_hf", "download_cached_file"):
        monkeypatch.setattr(f"timm.models._builder.{fn}", refuse)


@pytest.fixture(scope="module")
def model_cfgs() -> Iterator[dict[str, ModelSpec]]:
    """Every ``conf/model`` entry, composed through Hydra and validated by the schema."""
    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfgs = {n: OmegaConf.to_object(compose(overrides=[f"+model={n}"]).model) for n in CONF_MODELS}
    GlobalHydra.instance().clear()
    yield cfgs  # type: ignore[misc]


def _cases() -> list[Any]:
    """Each entry with 1 and 3 input channels; the heavy ones with the project's grey input only."""
    cases = []
    for name in CONF_MODELS:
        heavy = name in HEAVY
        marks = [pytest.mark.slow] if heavy else []
        cases += [pytest.param(name, c, marks=marks, id=f"{name}-{c}ch") for c in ((1,) if heavy else (1, 3))]
    return cases


def test_conf_has_the_required_entries() -> None:
    required = {"lenet5", "alexnet", "nin", "vgg11", "vgg16", "resnet18", "resnet34", "resnet50", "resnet152",
                "inception_v3", "resnet10t", "mobilenetv3_small_050", "convnext_tiny", "efficientnet_b0"}  # fmt: skip
    assert required <= set(CONF_MODELS)


@pytest.mark.parametrize(("name", "in_chans"), _cases())
def test_conf_model_trains_at_its_min_size(
    name: str, in_chans: int, model_cfgs: dict[str, ModelSpec]
) -> None:
    cfg = model_cfgs[name]
    assert isinstance(cfg, ModelSpec) and cfg.weights is None and not cfg.pretrained
    size = cfg.min_input_size
    assert min_input_size(cfg.name) in (None, size), "conf/model and MIN_INPUT_SIZE disagree"
    torch.manual_seed(0)
    model = create_model(cfg.name, num_classes=3, in_chans=in_chans, **cfg.kwargs).train()
    logits = model(torch.randn(2, in_chans, size, size))
    assert logits.shape == (2, 3)
    F.cross_entropy(logits, torch.tensor([0, 2])).backward()
    assert [n for n, p in model.named_parameters() if p.grad is None] == []
    check_input_size(model, in_chans=in_chans, size=size)
    if size > 1:  # the minimum is tight
        with pytest.raises(ValueError, match="too small"):
            check_input_size(model, in_chans=in_chans, size=size - 1)


def test_schema_rejects_typos_and_wrong_types(tmp_path: Path) -> None:
    register()
    (tmp_path / "model").mkdir()
    header = "defaults: [base_model, _self_]\nname: resnet18\n"
    (tmp_path / "model" / "good.yaml").write_text(header)
    (tmp_path / "model" / "typo.yaml").write_text(header + "nmae: resnet34\n")
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(tmp_path), version_base="1.3"):
            good = compose(overrides=["+model=good", "model.head_lr=0.1"]).model
            assert good.head_lr == 0.1 and good.min_input_size == ModelSpec.min_input_size
            with pytest.raises(Exception, match="Key 'nmae' not in 'ModelSpec'"):
                compose(overrides=["+model=typo"])
            with pytest.raises(Exception, match="head_lr"):
                compose(overrides=["+model=good", "model.head_lr=fast"])
            with pytest.raises(Exception, match="nmae"):
                compose(overrides=["+model=good", "model.nmae=resnet34"])
    finally:
        GlobalHydra.instance().clear()


def test_too_small_input_names_the_minimum() -> None:
    with pytest.raises(ValueError, match=r"32×32 is too small for 'inception_v3'.*at least 75×75"):
        check_input_size("inception_v3", in_chans=3, size=32)


def test_check_input_size_leaves_the_model_as_it_was() -> None:
    model: Any = create_model("resnet10t", num_classes=3, in_chans=1).train()
    model.layer1.eval()  # e.g. a frozen part: its mode must survive the check
    before = {k: v.clone() for k, v in model.state_dict().items()}
    check_input_size(model, in_chans=1, size=8)
    assert model.training and not model.layer1.training and model.layer2.training
    # A training-mode forward would have moved running_var and num_batches_tracked.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="in_chans=1"):
        check_input_size(model, in_chans=3, size=8)


def test_unknown_name_suggests_the_intended_one() -> None:
    with pytest.raises(ValueError, match=r"Unknown timm model 'resnet181'\. Closest: resnet18\b"):
        create_model("resnet181", num_classes=10)
    assert "inception_v3" in suggest_model_names("inceptionv3")
    assert any(m.startswith("mobilenetv3_small") for m in suggest_model_names("mobilenetv3_small"))


@pytest.fixture(scope="module")
def resnet10t_source() -> StateDict:
    """A 7-class RGB resnet10t's weights: a head and a stem that both differ from the requests."""
    torch.manual_seed(0)
    return timm.create_model("resnet10t", num_classes=7).state_dict()


@pytest.fixture
def source(resnet10t_source: StateDict) -> StateDict:
    return resnet10t_source


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_round_trip(suffix: str, resnet10t_source: StateDict, tmp_path: Path) -> None:
    path = tmp_path / f"resnet10t{suffix}"
    if suffix == ".safetensors":
        save_file(resnet10t_source, str(path))
    else:
        torch.save(resnet10t_source, path)
    model: Any = create_model("resnet10t", num_classes=10, in_chans=1, weights=path)
    loaded = model.state_dict()
    # timm's rule for 3 → 1 channel: sum the filter over its input channels.
    assert torch.allclose(loaded["conv1.0.weight"], resnet10t_source["conv1.0.weight"].sum(1, keepdim=True))
    assert loaded["fc.weight"].shape == (10, 512) and loaded["fc.bias"].shape == (10,)
    backbone = [k for k in resnet10t_source if not k.startswith(("fc.", "conv1.0."))]
    assert backbone and all(torch.equal(loaded[k], resnet10t_source[k]) for k in backbone)
    assert model.pretrained_cfg["file"] == str(path) and "state_dict" not in model.pretrained_cfg


def test_head_is_kept_when_the_file_has_the_requested_classes(source: StateDict, tmp_path: Path) -> None:
    path = tmp_path / "member.safetensors"
    save_file(source, str(path))
    model = create_model("resnet10t", num_classes=7, in_chans=3, weights=path)
    assert torch.equal(model.state_dict()["fc.weight"], source["fc.weight"])


def test_lightning_checkpoint_and_wrappers(resnet10t_source: StateDict, tmp_path: Path) -> None:
    ckpt = tmp_path / "last.ckpt"
    module_state = {f"model.{k}": v for k, v in resnet10t_source.items()}
    module_state["criterion.weight"] = torch.ones(7)  # a loss buffer beside the network
    torch.save({
        "epoch": 3, "pytorch-lightning_version": "2.6.0", "state_dict": module_state,
        "hyper_parameters": {"lr": 0.1, "name": "resnet10t"},
    }, ckpt)  # fmt: skip
    wrapped = tmp_path / "wrapped.bin"
    torch.save({"model": resnet10t_source, "epoch": 3}, wrapped)
    for path in (ckpt, wrapped):
        model = create_model("resnet10t", num_classes=7, in_chans=3, weights=path)
        loaded = model.state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in resnet10t_source.items())


def test_wrong_architecture_lists_mismatched_keys(resnet10t_source: StateDict, tmp_path: Path) -> None:
    path = tmp_path / "resnet10t.safetensors"
    save_file(resnet10t_source, str(path))
    with pytest.raises(ValueError) as info:
        create_model("resnet18", num_classes=10, in_chans=3, weights=path)
    message = str(info.value)
    assert str(path) in message and "'resnet18'" in message
    assert "64 missing from the file: conv1.weight" in message
    assert "28 unexpected in the file: conv1.0.weight" in message
    assert "more)" in message  # long lists are cut, with a count


def test_keys_renamed_but_head_dropped_still_fails(resnet10t_source: StateDict, tmp_path: Path) -> None:
    # timm loads non-strictly when it drops a head; a file with foreign key names must not
    # silently leave a random backbone.
    path = tmp_path / "renamed.pth"
    torch.save({f"backbone.{k}": v for k, v in resnet10t_source.items()}, path)
    with pytest.raises(ValueError, match=r"\d+ missing from the file"):
        create_model("resnet10t", num_classes=10, in_chans=3, weights=path)


def test_missing_and_unsupported_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match=str(missing)) as info:
        create_model("resnet10t", num_classes=10, weights=missing)
    assert all(s in str(info.value) for s in WEIGHT_SUFFIXES)
    odd = tmp_path / "weights.h5"
    odd.write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"suffix '\.h5'"):
        create_model("resnet10t", num_classes=10, weights=odd)
    not_a_state_dict = tmp_path / "x.pth"
    torch.save({"weights": 3}, not_a_state_dict)
    with pytest.raises(ValueError, match="state dict of tensors"):
        create_model("resnet10t", num_classes=10, weights=not_a_state_dict)


class Payload:
    """Stands in for arbitrary pickled code, which ``weights_only=True`` must refuse to load."""


def test_pickled_objects_are_refused(resnet10t_source: StateDict, tmp_path: Path) -> None:
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": resnet10t_source, "payload": Payload()}, path)
    with pytest.raises(ValueError, match=r"Refusing to load .*unsafe\.pth: it references .*Payload") as info:
        create_model("resnet10t", num_classes=10, weights=path)
    assert "weights_only=False" not in str(info.value)  # torch's own advice is not repeated


def test_model_data_config_follows_the_model_channels() -> None:
    lenet = create_model("lenet5", num_classes=10, in_chans=1)
    assert model_data_config(lenet)["input_size"] == (1, 32, 32)
    grey = model_data_config(create_model("resnet10t", num_classes=10, in_chans=1))
    rgb = model_data_config(create_model("resnet10t", num_classes=10, in_chans=3))
    assert grey["input_size"][0] == 1 and len(grey["mean"]) == len(grey["std"]) == 1
    assert grey["mean"][0] == pytest.approx(sum(rgb["mean"]) / 3)


# ----------------------------------------------------------------------------- fixed-input-size models (ViT)


def test_fixed_size_models_are_built_for_the_crop_and_others_are_left_alone() -> None:
    assert sized_kwargs("vit_tiny_patch16_224", 32) == {"img_size": 32}
    assert sized_kwargs("vit_tiny_patch16_224", 224) == {}  # its own size
    assert sized_kwargs("vit_tiny_patch16_224", 32, {"img_size": 48}) == {"img_size": 48}  # explicit wins
    assert sized_kwargs("resnet10t", 32, {"drop_rate": 0.1}) == {"drop_rate": 0.1}
    assert sized_kwargs("lenet5", 28) == {}


def test_a_vit_trains_at_32_px_and_predicts(train_cfg: Any, tmp_path: Path, demo_slice: Path) -> None:
    """Random init, no network: one tiny step at a 32 px crop, then a 2-view prediction of the test images."""
    from pipeline.member.manifest import read_manifest
    from pipeline.predict import PredictOptions, predict_images
    from tests.helpers import train

    cfg = train_cfg("model.name=vit_tiny_patch16_224", "data.image_size=36", "data.crop_size=32",
                    "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", member="vit")
    metrics = train(cfg)
    assert metrics["val_log_loss"] > 0
    member = tmp_path / "sweep" / "vit"
    assert read_manifest(member).model_kwargs == {"img_size": 32}
    pred = predict_images(tmp_path / "sweep", demo_slice / "test", policy="hflip",
                          options=PredictOptions(device="cpu", num_workers=0, batch_size=16))
    assert pred.probs.shape == (60, 10) and torch.allclose(torch.from_numpy(pred.probs).sum(1).double(),
                                                           torch.ones(60, dtype=torch.float64), atol=1e-5)


def test_a_size_a_vit_cannot_take_is_one_line_naming_model_and_size() -> None:
    with pytest.raises(ConfigError) as small:  # smaller than one 16 px patch
        check_input_size("vit_tiny_patch16_224", in_chans=1, size=8, **sized_kwargs("vit_tiny_patch16_224", 8))
    assert "'vit_tiny_patch16_224'" in str(small.value) and "8×8" in str(small.value) and "\n" not in str(small.value)
    with pytest.raises(ConfigError) as fixed:  # built for 224 on purpose, fed 32: timm's AssertionError, explained
        check_input_size("vit_tiny_patch16_224", in_chans=1, size=32, img_size=224)
    text = str(fixed.value)
    assert "'vit_tiny_patch16_224' cannot take 32×32" in text and "model.kwargs.img_size" in text and "\n" not in text
