"""Mixed-resolution ensembles in one predict run: one decode per image, each member at its recorded sizes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

import pipeline.predict.loader
from pipeline.core.errors import ConfigError
from pipeline.data.augment import normalize_batch, transform_from_dict
from pipeline.data.dataset import ImageDataset
from pipeline.data.decode import load_rgb
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_test_table, read_train_table
from pipeline.member.folder import Member, find_members
from pipeline.member.manifest import read_manifest, write_manifest
from pipeline.member.predictions import read_predictions
from pipeline.member.weights import build_model
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import create_policy
from tests.conftest import MIXED_SIZES, copy_members


def _opts(**kw: object) -> PredictOptions:
    return PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None, **kw)  # type: ignore[arg-type]


@pytest.fixture
def members(mixed_sweep: Path, tmp_path: Path) -> list[Member]:
    found, _ = find_members(copy_members(mixed_sweep, tmp_path / "sw"))
    assert {m.name: (m.manifest.image_size, m.manifest.crop_size) for m in found} == MIXED_SIZES
    return found


def _val_rows(members: list[Member], demo: Path) -> tuple[object, dict[str, np.ndarray]]:
    train = read_train_table(DataSpec(root=str(demo), in_chans=1))
    pos = {i: r for r, i in enumerate(train.ids)}
    ids = read_predictions(members[0].path / "val_predictions.csv")[0]
    return train, {m.name: np.array(sorted(pos[i] for i in ids)) for m in members}


def test_mixed_run_equals_each_member_predicted_alone(
    members: list[Member], demo_slice: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[str] = []

    def counting_load_rgb(path: str | Path, *args: object) -> np.ndarray:
        decoded.append(str(path))
        return load_rgb(path, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline.predict.loader, "load_rgb", counting_load_rgb)
    test = read_test_table(DataSpec(root=str(demo_slice)))
    train, rows = _val_rows(members, demo_slice)
    policies = {"ten": create_policy("ten_crop"), "none": create_policy("none")}
    mixed = predict_members(members, test, "test-mix", policies, _opts(prediction_cache_dir=str(tmp_path / "mixed")))
    assert sorted(decoded) == sorted(map(str, test.paths))  # each image decoded once for both resolutions
    mixed_val = predict_members(members, train, "val", policies, _opts(prediction_cache_dir=str(tmp_path / "mixed")),
                                rows)  # type: ignore[arg-type]
    for m in members:
        alone_opts = _opts(prediction_cache_dir=str(tmp_path / m.name))
        alone = predict_members([m], test, "test-mix", policies, alone_opts)
        alone_val = predict_members([m], train, "val", policies, alone_opts, rows)  # type: ignore[arg-type]
        for files, single in ((mixed, alone), (mixed_val, alone_val)):
            for key in policies:
                a, b = read_predictions(files[(m.name, key)]), read_predictions(single[(m.name, key)])
                assert a[0] == b[0]
                # Exactly equal: the same pixels in the same batches through the same deterministic CPU kernels.
                assert np.array_equal(a[1], b[1]), f"{m.name}/{key} differs between the mixed and the single run"
        side = json.loads(mixed[(m.name, "ten")].with_suffix(".json").read_text())
        assert (side["image_size"], side["policy"]["crop_size"]) == MIXED_SIZES[m.name]


def test_each_member_is_cropped_at_its_recorded_crop(members: list[Member], demo_slice: Path, tmp_path: Path) -> None:
    """The 24/20 member's ten-crop prediction is torchvision's ten_crop at 20 of its own 24×24 image."""
    member = next(m for m in members if m.manifest.image_size == 24)
    test = read_test_table(DataSpec(root=str(demo_slice)))
    files = predict_members(members, test, "test-crop", {"ten": create_policy("ten_crop")}, _opts())
    ids, cached, _ = read_predictions(files[(member.name, "ten")], member.manifest.classes)
    model = build_model(member)
    ds = ImageDataset(test, transform_from_dict(json.loads((member.path / "eval_transform.json").read_text())), 1)
    for row in (0, 9):
        x = normalize_batch(ds[row]["image"][None], member.manifest.mean, member.manifest.std)[0]
        assert x.shape[-1] == 24
        with torch.no_grad():
            expect = model(torch.stack(TF.ten_crop(x, [20, 20]))).softmax(-1).mean(0).numpy()
        np.testing.assert_allclose(cached[ids.index(test.ids[row])], expect, atol=1e-5)


def test_contradicting_crop_override_names_the_member_unless_allowed(
    members: list[Member], demo_slice: Path, tmp_path: Path
) -> None:
    test = read_test_table(DataSpec(root=str(demo_slice)))
    policy = {"ten": create_policy("ten_crop", crop_size=20)}  # the 24/20 member's crop, not the 32/28 one's
    with pytest.raises(ConfigError, match=r"tta.crop_size=20.*lenet5-s0-holdout's recorded crop size 28.*allow_crop_override"):
        predict_members(members, test, "test-ovr", policy, _opts())
    assert not [p for m in members for p in (m.path / "predictions").glob("test-ovr*")]
    allowed = predict_members(members, test, "test-ovr", policy, _opts(allow_crop_override=["lenet5-s0"]))
    native = predict_members(members, test, "test-ovr", {"ten": create_policy("ten_crop")}, _opts())
    s0 = next(m.name for m in members if m.manifest.crop_size == 28)
    assert json.loads(allowed[(s0, "ten")].with_suffix(".json").read_text())["policy"]["crop_size"] == 20
    assert allowed[(s0, "ten")] != native[(s0, "ten")]  # another computation, another cache file
    assert not np.array_equal(read_predictions(allowed[(s0, "ten")])[1], read_predictions(native[(s0, "ten")])[1])


def test_predict_image_cache_is_honoured_and_the_members_training_cache_ignored(
    members: list[Member], demo_slice: Path, tmp_path: Path
) -> None:
    recorded = tmp_path / "training-cache-from-member-json"
    for m in members:  # a member folder (from elsewhere) naming a cache folder
        manifest = read_manifest(m.path)
        manifest.data["cache_dir"] = str(recorded)
        write_manifest(m.path, manifest)
    found, _ = find_members([m.path for m in members])
    test = read_test_table(DataSpec(root=str(demo_slice)))
    policies = {"none": create_policy("none")}
    decoded = predict_members(found, test, "test-c", policies, _opts(prediction_cache_dir=str(tmp_path / "p1")))
    assert not recorded.exists()
    cached = predict_members(found, test, "test-c", policies,
                             _opts(prediction_cache_dir=str(tmp_path / "p2"), image_cache_dir=str(tmp_path / "img")))
    assert not recorded.exists()
    shapes = sorted(np.load(p, mmap_mode="r").shape for p in (tmp_path / "img").glob("*.npy"))
    assert shapes == [(60, 24, 24, 1), (60, 32, 32, 1)]  # one cache per resolution, at the member's image size
    for m in found:
        a, b = read_predictions(decoded[(m.name, "none")]), read_predictions(cached[(m.name, "none")])
        assert decoded[(m.name, "none")].name != cached[(m.name, "none")].name  # the image source is in the key
        np.testing.assert_array_equal(a[1], b[1])  # the cache holds exactly the resized pixels


def test_precision_is_part_of_the_cache_key(members: list[Member], demo_slice: Path) -> None:
    test = read_test_table(DataSpec(root=str(demo_slice)))
    policies = {"none": create_policy("none")}
    fp32 = predict_members(members[:1], test, "test-p", policies, _opts())
    bf16 = predict_members(members[:1], test, "test-p", policies, _opts(precision="bf16"))  # runs on CPU autocast
    key = (members[0].name, "none")
    assert fp32[key] != bf16[key] and fp32[key].is_file() and bf16[key].is_file()
    a, b = read_predictions(fp32[key])[1], read_predictions(bf16[key])[1]
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.05  # another computation, not a cache hit
    assert json.loads(bf16[key].with_suffix(".json").read_text())["precision"] == "bf16"


def test_relative_multiscale_scales_fit_each_member_and_equal_its_pixel_scales(
    members: list[Member], demo_slice: Path, tmp_path: Path
) -> None:
    """One list, [1.0, 1.25]: 32 and 40 px for the 32/28 member, 24 and 30 px for the 24/20 one, in one run."""
    from pipeline.predict.plan import member_policy

    fields = {"crops": ["center", "full"], "flips": ["none", "horizontal"]}
    relative = create_policy("multiscale", scales=[1.0, 1.25], **fields)
    resolved = {m.name: member_policy(relative, m, []) for m in members}
    assert {n: (p.scales, p.crop_size) for n, p in resolved.items()} == {
        "lenet5-s0-holdout": ((32, 40), 28), "lenet5-s1-holdout": ((24, 30), 20)}
    test = read_test_table(DataSpec(root=str(demo_slice)))
    mixed = predict_members(members, test, "test-ms", {"ms": relative}, _opts(prediction_cache_dir=str(tmp_path / "rel")))
    for m in members:
        pixels = create_policy("multiscale", scales=list(resolved[m.name].scales), **fields)
        alone = predict_members([m], test, "test-ms", {"ms": pixels}, _opts(prediction_cache_dir=str(tmp_path / m.name)))
        a, b = read_predictions(mixed[(m.name, "ms")]), read_predictions(alone[(m.name, "ms")])
        assert a[0] == b[0] and np.array_equal(a[1], b[1]), m.name


@pytest.mark.parametrize("scales,needle", [([0.5], r"\[16\] are smaller than tta.crop_size 28"),
                                           ([32.0], r"tta.scales \[32.0\]: each scale is a size in pixels")])
def test_relative_scales_that_do_not_fit_name_the_member_or_the_value(
    members: list[Member], scales: list[float], needle: str
) -> None:
    from pipeline.predict.plan import member_policy

    with pytest.raises((ConfigError, ValueError), match=needle):
        member_policy(create_policy("multiscale", scales=scales), members[0], [])
