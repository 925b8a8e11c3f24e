"""Area interpolation when shrinking: in the aug configs, the image cache and the member record; old members unchanged."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from PIL import Image

import pipeline
from pipeline.data.augment import center_crop, normalize_batch, resize_image, resize_settings, transform_from_dict
from pipeline.data.cache import open_cache
from pipeline.data.tables import ImageTable
from pipeline.member.folder import find_members
from pipeline.member.weights import build_model
from pipeline.predict.spec import PredictOptions
from tests.conftest import compose_train
from tests.helpers import train

AREA = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": "image"}
BILINEAR = {"interpolation": cv2.INTER_LINEAR, "area_for_downscale": None}


def texture(size: int, seed: int = 0, scale: int = 1) -> np.ndarray:
    """A high-frequency grey image (``size×size×1``): random black/white blocks of ``scale`` pixels."""
    cells = np.random.default_rng(seed).integers(0, 2, (size // scale, size // scale)) * 255
    return np.kron(cells, np.ones((scale, scale))).astype(np.uint8)[..., None]


def test_area_removes_the_aliasing_bilinear_shows_on_a_large_downscale() -> None:
    image = texture(1024)
    area, bilinear = resize_image(image, 128, AREA), resize_image(image, 128, BILINEAR)
    assert np.array_equal(area, cv2.resize(image, (128, 128), interpolation=cv2.INTER_AREA)[..., None])
    assert np.array_equal(bilinear, cv2.resize(image, (128, 128), interpolation=cv2.INTER_LINEAR)[..., None])
    # The texture is flat grey at 128 px: area averages each 8x8 block (std ≈ 255 / 2 / 8 ≈ 16); bilinear
    # samples 2x2 pixels of it, so the fine texture folds into large false contrast (aliasing).
    assert abs(float(area.mean()) - 127.5) < 2 and float(area.std()) < 20
    assert float(bilinear.std()) > 3 * float(area.std())
    # Growing an image (the demo's 28 px → 32 px) is left to bilinear: the demo's pixels do not change.
    small = np.random.default_rng(0).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    assert np.array_equal(resize_image(small, 32, AREA), resize_image(small, 32, BILINEAR))


@pytest.mark.parametrize("aug", ["none", "light", "strong"])
def test_every_aug_config_shrinks_with_area_and_records_it(aug: str) -> None:
    cfg = compose_train([f"aug={aug}", "data.image_size=128", "data.crop_size=112", "aug.mean=[0.5]", "aug.std=[0.5]",
                         "paths.root=/tmp"])
    aug_cfg = cfg.aug
    eval_tf = instantiate(aug_cfg.eval, _convert_="object")
    assert resize_settings(eval_tf) == AREA
    assert resize_settings(instantiate(aug_cfg.train, _convert_="object")) == AREA
    out = eval_tf(image=texture(1024))["image"]
    assert torch.equal(out, torch.from_numpy(resize_image(texture(1024), 128, AREA)).permute(2, 0, 1))
    bilinear = compose_train([f"aug={aug}", "aug.area_for_downscale=null", "paths.root=/tmp"]).aug
    assert resize_settings(instantiate(bilinear.eval, _convert_="object")) == BILINEAR


def test_a_serialised_pipeline_without_the_setting_resizes_bilinear() -> None:
    """An eval_transform.json written before area_for_downscale existed has no such key: bilinear, as then."""
    data = A.to_dict(A.Compose([A.Resize(32, 32, area_for_downscale="image")]))
    assert resize_settings(data) == AREA
    del data["transform"]["transforms"][0]["area_for_downscale"]
    assert resize_settings(data) == BILINEAR
    assert resize_settings(transform_from_dict(data)) == BILINEAR
    assert resize_settings(A.Compose([A.CenterCrop(4, 4)])) == BILINEAR  # no Resize: the default


def test_the_cache_resizes_as_the_pipeline_it_feeds(tmp_path: Path) -> None:
    folder = tmp_path / "img"
    folder.mkdir()
    paths = []
    for i in range(2):
        paths.append(folder / f"s{i}.png")
        Image.fromarray(texture(256, seed=i, scale=1 + i)[..., 0]).save(paths[-1])
    table = ImageTable([p.stem for p in paths], paths)
    area = open_cache(table, tmp_path / "cache", size=32, in_chans=1, resize=AREA)
    bilinear = open_cache(table, tmp_path / "cache", size=32, in_chans=1)
    assert area.key != bilinear.key  # one cache per interpolation, side by side
    for row, path in enumerate(paths):
        pixels = np.array(Image.open(path))[..., None]
        assert np.array_equal(area.read(row), resize_image(pixels, 32, AREA))
        assert np.array_equal(bilinear.read(row), resize_image(pixels, 32, BILINEAR))
    assert not np.array_equal(area.read(0), bilinear.read(0))


def _reference_probs(member_dir: Path, images: list[Path], interpolation: int) -> np.ndarray:
    """Independent of the predict code: cv2 resize, centre crop, normalise, the member's network, softmax."""
    (member,), _ = find_members(member_dir)
    m = member.manifest
    batch = np.stack([cv2.resize(np.array(Image.open(p)), (m.image_size, m.image_size), interpolation=interpolation)
                      for p in images])
    x = normalize_batch(center_crop(torch.from_numpy(batch)[:, None], m.crop_size), m.mean, m.std)
    with torch.no_grad():
        return torch.softmax(build_model(member)(x), dim=1).numpy()


def test_new_members_record_area_and_old_members_predict_as_before(
    train_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    cfg = train_cfg("model=lenet5", "trainer.limit_train_batches=2", "aug=none")
    train(cfg)
    new = Path(cfg.paths.output_dir)
    assert resize_settings(json.loads((new / "eval_transform.json").read_text())) == AREA
    # An old member: the same folder with the eval transform written before the setting existed.
    old = tmp_path / "old" / new.name
    shutil.copytree(new, old)
    data = json.loads((old / "eval_transform.json").read_text())
    del data["transform"]["transforms"][0]["area_for_downscale"]
    (old / "eval_transform.json").write_text(json.dumps(data))

    test = tmp_path / "photos"
    test.mkdir()
    images = []
    for i in range(4):  # 96 px photos with fine texture, shrunk to the member's 32 px
        pixels = texture(96, seed=i, scale=1 + i % 2) // (i % 2 + 1)
        images.append(test / f"p{i}.png")
        Image.fromarray(np.ascontiguousarray(pixels[..., 0])).save(images[-1])
    opts = PredictOptions(device="cpu", num_workers=0, prediction_cache_dir=str(tmp_path / "pcache"))
    got_new = pipeline.predict_images(new, test, policy="none", options=opts).probs
    got_old = pipeline.predict_images(old, test, policy="none", options=opts).probs
    np.testing.assert_allclose(got_new, _reference_probs(new, images, cv2.INTER_AREA), atol=1e-5)
    np.testing.assert_allclose(got_old, _reference_probs(old, images, cv2.INTER_LINEAR), atol=1e-5)
    assert not np.allclose(got_new, got_old, atol=1e-4)  # the record, not a default, decides
    # predict's image cache resizes each member's images by its own record: same probabilities as decoding
    cached = PredictOptions(device="cpu", num_workers=0, prediction_cache_dir=str(tmp_path / "pcache"),
                            image_cache_dir=str(tmp_path / "icache"))
    assert np.array_equal(pipeline.predict_images(new, test, policy="none", options=cached).probs, got_new)
    assert np.array_equal(pipeline.predict_images(old, test, policy="none", options=cached).probs, got_old)
    assert len(list((tmp_path / "icache").glob("*.npy"))) == 2  # one cache per interpolation
