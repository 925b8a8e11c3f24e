"""Tests for pipeline.tta: torchvision equality, layout round trips, multiscale, errors, Hydra configs."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from torch import Tensor, nn

from pipeline.predict.tta import (
    TTAPolicy,
    canonical_policy,
    create_policy,
    list_policies,
    make_views,
    merge_views,
    predict_with_tta,
    views_per_image,
)

CONF = Path(__file__).resolve().parents[1] / "pipeline" / "conf"

# Extra fields per policy for the registry-wide tests; a newly registered policy needs no entry.
POLICY_KWARGS: dict[str, dict[str, Any]] = {
    "multiscale": {
        "scales": (28, 36),
        "squares": 3,
        "crops": ("tl", "center", "full"),
        "flips": ("none", "vertical"),
    },
}


def _policy(name: str, crop_size: int = 24) -> TTAPolicy:
    return create_policy(name, crop_size, **POLICY_KWARGS.get(name, {}))


def _batch(b: int, h: int, w: int, seed: int = 0) -> Tensor:
    return torch.randn(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------
# Exact equality with torchvision.


@pytest.mark.parametrize(
    ("height", "width", "crop", "flip"),
    [
        (32, 32, 28, "horizontal"),
        (29, 29, 28, "horizontal"),  # gap 1: centre offset rounds 0.5 -> 0
        (31, 31, 28, "vertical"),  # gap 3: 1.5 -> 2
        (33, 33, 28, "horizontal"),  # gap 5: 2.5 -> 2 (banker's rounding)
        (28, 28, 28, "horizontal"),  # crop == image
        (30, 37, 24, "horizontal"),  # non-square
        (37, 30, 23, "vertical"),
        (32, 35, 27, "none"),
    ],
)
def test_ten_crop_equals_torchvision(height: int, width: int, crop: int, flip: str) -> None:
    batch = _batch(3, height, width)
    policy = create_policy("ten_crop", crop, flip=flip)
    views = make_views(batch, policy).view(3, views_per_image(policy), 3, crop, crop)
    for b in range(3):
        if flip == "none":
            expected = TF.five_crop(batch[b], [crop, crop])
        else:
            expected = TF.ten_crop(batch[b], [crop, crop], vertical_flip=flip == "vertical")
        assert len(expected) == views.shape[1]
        for v, ref in enumerate(expected):
            assert torch.equal(views[b, v], ref), f"image {b}, view {v}"


@pytest.mark.parametrize(("height", "width", "crop"), [(32, 32, 28), (31, 34, 28), (33, 33, 30)])
def test_five_crop_and_none_equal_torchvision(height: int, width: int, crop: int) -> None:
    batch = _batch(2, height, width)
    five = make_views(batch, create_policy("five_crop", crop)).view(2, 5, 3, crop, crop)
    centre = make_views(batch, create_policy("none", crop))
    for b in range(2):
        for v, ref in enumerate(TF.five_crop(batch[b], [crop, crop])):
            assert torch.equal(five[b, v], ref)
        assert torch.equal(centre[b], TF.center_crop(batch[b], [crop, crop]))


def test_hflip_is_centre_crop_and_its_mirror() -> None:
    batch = _batch(2, 31, 31)
    views = make_views(batch, create_policy("hflip", 28)).view(2, 2, 3, 28, 28)
    centre = TF.center_crop(batch, [28, 28])
    assert torch.equal(views[:, 0], centre)
    assert torch.equal(views[:, 1], TF.hflip(centre))
    vertical = make_views(batch, create_policy("vflip", 28)).view(2, 2, 3, 28, 28)
    assert torch.equal(vertical[:, 0], centre)
    assert torch.equal(vertical[:, 1], TF.vflip(centre))


@pytest.mark.parametrize("flip", ["vertical", "none"])
def test_hflip_names_its_axis_honestly(flip: str) -> None:
    # hflip used to mirror along tta.flip; a vertical (or no) mirror now has its own name.
    with pytest.raises(ValueError, match="hflip always mirrors left-right.*tta=vflip.*tta=none"):
        create_policy("hflip", 28, flip=flip)


@pytest.mark.parametrize(("height", "width", "crop"), [(32, 32, 28), (31, 34, 27), (24, 24, 24)])
def test_rot90_and_d4_equal_torch_rot90_and_flips(height: int, width: int, crop: int) -> None:
    batch = _batch(3, height, width)
    rot = make_views(batch, create_policy("rot90", crop)).view(3, 4, 3, crop, crop)
    d4 = make_views(batch, create_policy("d4", crop)).view(3, 8, 3, crop, crop)
    for b in range(3):
        centre = TF.center_crop(batch[b], [crop, crop])
        rotations = [torch.rot90(centre, k, dims=(1, 2)) for k in range(4)]
        mirrored = [torch.rot90(TF.hflip(centre), k, dims=(1, 2)) for k in range(4)]
        for v, ref in enumerate(rotations):
            assert torch.equal(rot[b, v], ref), f"rot90 image {b}, view {v}"
        for v, ref in enumerate(rotations + mirrored):
            assert torch.equal(d4[b, v], ref), f"d4 image {b}, view {v}"
        # The 8 views are the whole dihedral group: all distinct on a generic image, and vflip is among them.
        assert len({tuple(view.flatten().tolist()) for view in d4[b]}) == 8
        assert any(torch.equal(view, TF.vflip(centre)) for view in d4[b])


def test_ten_crop_without_flip_is_five_crop_under_one_name() -> None:
    plain = create_policy("ten_crop", 28, flip="none")
    five = canonical_policy(plain)
    assert five == create_policy("five_crop", 28)
    batch = _batch(2, 32, 32)
    assert torch.equal(make_views(batch, plain), make_views(batch, five))
    flipped = create_policy("ten_crop", 28, flip="vertical")
    assert canonical_policy(flipped) is flipped


# ---------------------------------------------------------------------------------------------
# Every registered policy: shape, count, layout.


@pytest.mark.parametrize("name", list_policies())
def test_policy_shape_and_count(name: str) -> None:
    policy = _policy(name)
    views = make_views(_batch(3, 28, 32), policy)
    assert views.shape == (3 * views_per_image(policy), 3, 24, 24)


@pytest.mark.parametrize("name", list_policies())
def test_merge_views_inverts_image_major_layout(name: str) -> None:
    # Row b * V + v gets class b * V + v, so the merge of image b must spread over exactly its own V.
    n_views, n_images = views_per_image(_policy(name)), 3
    probs = torch.eye(n_images * n_views)
    merged = merge_views(probs, n_views)
    expected = torch.zeros(n_images, n_images * n_views)
    for b in range(n_images):
        expected[b, b * n_views : (b + 1) * n_views] = 1.0 / n_views
    torch.testing.assert_close(merged, expected)


class _ValueClassifier(nn.Module):
    """Predicts class round(mean pixel): identifies which image a view came from."""

    def __init__(self, n_classes: int) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.seen: list[int] = []

    def forward(self, x: Tensor) -> Tensor:
        self.seen.append(len(x))
        return 50.0 * F.one_hot(x.mean(dim=(1, 2, 3)).round().long(), self.n_classes).float()


@pytest.mark.parametrize("name", list_policies())
@pytest.mark.parametrize("chunk_size", [None, 4])
def test_views_of_each_image_merge_back_to_it(name: str, chunk_size: int | None) -> None:
    # Image b is constant b; every crop, flip and resize keeps that, so any mix-up of images shows.
    batch = torch.arange(5.0).view(5, 1, 1, 1).expand(5, 3, 28, 32).contiguous()
    model = _ValueClassifier(n_classes=5)
    probs = predict_with_tta(model, batch, _policy(name), chunk_size=chunk_size)
    torch.testing.assert_close(probs, torch.eye(5), atol=1e-6, rtol=0)
    if chunk_size is not None:
        assert max(model.seen) <= chunk_size


# ---------------------------------------------------------------------------------------------
# multiscale.


def test_multiscale_view_count() -> None:
    policy = create_policy(
        "multiscale",
        24,
        scales=[28, 32, 40],
        squares=3,
        crops=["tl", "tr", "bl", "br", "center", "full"],
        flips=["none", "horizontal"],
    )
    assert views_per_image(policy) == 3 * 3 * 6 * 2
    assert make_views(_batch(2, 32, 48), policy).shape == (2 * 108, 3, 24, 24)


def test_multiscale_full_crop_is_the_resized_square() -> None:
    batch = _batch(2, 32, 48)
    policy = create_policy("multiscale", 24, scales=[40], squares=3, crops=["full"], flips=["none"])
    views = make_views(batch, policy).view(2, 3, 3, 24, 24)
    resized = F.interpolate(batch, size=(40, 60), mode="bilinear", align_corners=False, antialias=False)
    for i, left in enumerate((0, 10, 20)):  # left, centre and right 40x40 squares of a 40x60 image
        square = resized[..., :, left : left + 40]
        expected = F.interpolate(square, size=(24, 24), mode="bilinear", align_corners=False, antialias=False)
        assert torch.equal(views[:, i], expected)


def test_multiscale_at_native_scale_matches_five_crop() -> None:
    batch = _batch(2, 31, 31)
    policy = create_policy("multiscale", 28, scales=[31], crops=["tl", "tr", "bl", "br", "center"])
    assert torch.equal(make_views(batch, policy), make_views(batch, create_policy("five_crop", 28)))


# ---------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("name", ["none", "hflip", "five_crop", "ten_crop"])
def test_crop_larger_than_image_names_sizes_and_key(name: str) -> None:
    with pytest.raises(ValueError, match=r"40.*tta\.crop_size.*32x32"):
        make_views(_batch(1, 32, 32), create_policy(name, 40))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "eleven_crop"}, r"tta\.name 'eleven_crop'.*ten_crop"),
        ({"name": "ten_crop", "flip": "diagonal"}, r"tta\.flip 'diagonal'.*horizontal.*vertical"),
        ({"name": "multiscale", "scales": [20, 32]}, r"tta\.scales \[20\].*tta\.crop_size 24"),
        ({"name": "multiscale", "scales": [32], "flips": ["sideways"]}, r"tta\.flips 'sideways'"),
        ({"name": "multiscale", "scales": [32], "crops": ["middle"]}, r"tta\.crops 'middle'.*full"),
        ({"name": "multiscale", "scales": [32], "squares": 2}, r"tta\.squares 2"),
        ({"name": "multiscale"}, r"tta\.scales must list"),
    ],
)
def test_bad_policy_values_are_named(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        create_policy(crop_size=24, **kwargs)


def test_unknown_policy_field_and_bad_chunk_size() -> None:
    with pytest.raises(TypeError, match="flipp"):
        create_policy("ten_crop", 24, flipp="none")
    with pytest.raises(ValueError, match="chunk_size"):
        predict_with_tta(nn.Identity(), _batch(1, 28, 28), create_policy("none", 24), chunk_size=0)


# ---------------------------------------------------------------------------------------------
# predict_with_tta on a real network.


def _tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)
    ).eval()


def test_predict_with_tta_chunking_does_not_change_result() -> None:
    net, batch, policy = _tiny_net(), _batch(4, 32, 32), create_policy("ten_crop", 28)
    whole = predict_with_tta(net, batch, policy)
    chunked = predict_with_tta(net, batch, policy, chunk_size=3)
    assert whole.shape == (4, 5)
    torch.testing.assert_close(chunked, whole, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(whole.sum(-1), torch.ones(4))


def test_predict_with_tta_none_policy_is_softmax_of_centre_crop() -> None:
    net, batch = _tiny_net(), _batch(4, 31, 31)
    with torch.no_grad():
        expected = net(TF.center_crop(batch, [28, 28])).softmax(-1)
    torch.testing.assert_close(predict_with_tta(net, batch, create_policy("none", 28)), expected)


# ---------------------------------------------------------------------------------------------
# Hydra configs.

EXPECTED_VIEWS = {"none": 1, "hflip": 2, "vflip": 2, "rot90": 4, "d4": 8, "five_crop": 5, "ten_crop": 10,
                  "multiscale": 48}


def test_every_tta_yaml_has_an_expectation() -> None:
    assert sorted(p.stem for p in (CONF / "tta").glob("*.yaml")) == sorted([*EXPECTED_VIEWS, "auto"])


def test_tta_auto_yaml_lists_every_flip_axis(conf_dir: Path) -> None:
    from pipeline.predict.choose import candidate_policies

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tta=auto", "tta.max_passes=5"])
    assert cfg.tta.name == "auto" and cfg.tta.max_passes == 5
    found = [(p.name, p.flip if p.name == "ten_crop" else None) for p in candidate_policies(cfg.tta.candidates, 28)]
    assert found == [("none", None), ("hflip", None), ("vflip", None), ("five_crop", None),
                     ("ten_crop", "horizontal"), ("ten_crop", "vertical")]


@pytest.mark.parametrize("name", sorted(EXPECTED_VIEWS))
def test_tta_yaml_composes_into_a_policy(conf_dir: Path, name: str) -> None:
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[f"tta={name}"])
    tta = OmegaConf.to_container(cfg.tta, resolve=True)
    assert isinstance(tta, dict)
    assert tta["crop_size"] is None and tta["allow_crop_override"] == []  # each member's own crop by default
    run_keys = ("reduce", "chunk_size", "allow_crop_override", "candidates", "max_passes", "margin")
    template = create_policy(**{str(k): v for k, v in tta.items() if k not in run_keys})
    with pytest.raises(ValueError, match="no crop size"):
        make_views(torch.zeros(2, 3, 32, 32), template)
    policy = template.at_crop(28)  # what prediction does for a member trained at crop 28
    assert policy.name == name
    assert views_per_image(policy) == EXPECTED_VIEWS[name]
    assert make_views(torch.zeros(2, 3, 32, 32), policy).shape == (2 * EXPECTED_VIEWS[name], 3, 28, 28)


def test_tta_key_typo_fails_at_composition(conf_dir: Path) -> None:
    (conf_dir / "tta" / "typo.yaml").write_text("defaults: [base_tta, _self_]\nname: none\nflipp: none\n")
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="flipp"):
            compose(config_name="config", overrides=["tta.flipp=none"])
        with pytest.raises(ConfigCompositionException, match="flipp"):
            compose(config_name="config", overrides=["tta=typo"])


def test_multiscale_scales_compose_as_pixels_and_relative_floats(conf_dir: Path) -> None:
    """Through the schema, 40 stays pixels and 1.0/1.25 stay floats: × the member's image size once resolved."""
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["tta=multiscale", "tta.scales=[1.0,1.25,40]"])
    scales = OmegaConf.to_container(cfg.tta.scales)
    assert scales == [1.0, 1.25, 40] and [type(s) for s in scales] == [float, float, int]  # type: ignore[union-attr]
    template = create_policy("multiscale", scales=scales, crops=["center"], flips=["none"])
    with pytest.raises(ValueError, match="relative scales"):
        make_views(torch.zeros(2, 3, 32, 32), dataclasses.replace(template, crop_size=28))  # crop set, scales not
    assert template.at_crop(28, 32).scales == (32, 40, 40) and template.at_crop(20, 24).scales == (24, 30, 40)
    with pytest.raises(ValueError, match="relative to the member's image size"):
        template.at_crop(28)
