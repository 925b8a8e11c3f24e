"""The pre-resized image cache: exact pixels, staleness, atomic builds, and real training/prediction on it."""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from albumentations.pytorch import ToTensorV2
from omegaconf import DictConfig
from PIL import Image

import pipeline.data.dataset
import pipeline.predict.loader
from pipeline.core.errors import DataError
from pipeline.data.cache import ImageCache, open_cache
from pipeline.data.dataset import ImageDataset
from pipeline.data.decode import load_rgb
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_train_table
from pipeline.member.folder import find_members
from pipeline.predict.runner import predict_members
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import create_policy
from tests.helpers import train


def _write_images(folder: Path, shapes: list[tuple[int, int]], seed: int = 0) -> ImageTable:
    """PNG and JPEG files of the given (height, width), RGB and grey, in one table."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(shapes):
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        img = Image.fromarray(pixels) if i % 3 else Image.fromarray(pixels[..., 0])  # every third is grey
        path = folder / f"im{i}.{'jpg' if i % 2 else 'png'}"
        img.save(path)
        paths.append(path)
    return ImageTable([p.stem for p in paths], paths)


def _reference(path: Path, size: int, in_chans: int) -> np.ndarray:
    """Independent reference: decode, convert, resize with OpenCV's bilinear (what A.Resize uses)."""
    rgb = load_rgb(path)
    image = np.array(Image.fromarray(rgb).convert("L"))[..., None] if in_chans == 1 else rgb
    out = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    return out.reshape(size, size, in_chans)


@pytest.mark.parametrize("in_chans", [1, 3])
def test_cached_images_equal_decoded_and_resized_files(tmp_path: Path, in_chans: int) -> None:
    table = _write_images(tmp_path / "img", [(40, 40), (64, 48), (24, 30), (24, 24), (100, 70)])
    cache = open_cache(table, tmp_path / "cache", size=24, in_chans=in_chans, workers=0)
    for row, path in zip(cache.rows(table.paths), table.paths):
        assert np.array_equal(cache.read(int(row)), _reference(path, 24, in_chans)), path
    # Subsets and any order look rows up by path; a path the cache does not hold is named.
    assert cache.rows(table.paths[::-1]).tolist() == [4, 3, 2, 1, 0]
    with pytest.raises(KeyError, match="not in the cache"):
        cache.rows([tmp_path / "elsewhere.png"])


def test_cached_dataset_is_bit_exact_with_the_uncached_one(tmp_path: Path) -> None:
    """With cache_size == image_size the pipelines' own Resize is the identity: same tensors."""
    table = _write_images(tmp_path / "img", [(64, 64), (80, 50), (33, 47)])
    eval_tf = A.Compose([A.Resize(32, 32), ToTensorV2()])
    cache = open_cache(table, tmp_path / "cache", size=32, in_chans=3)
    plain, cached = ImageDataset(table, eval_tf, 3), ImageDataset(table, eval_tf, 3, cache=cache)
    for i in range(len(table)):
        assert torch.equal(plain[i]["image"], cached[i]["image"])
        assert cached[i]["index"] == i
    with pytest.raises(ValueError, match="3-channel"):
        ImageDataset(table, eval_tf, 1, cache=cache)


def test_cache_is_reused_then_rebuilt_when_a_file_changes(tmp_path: Path) -> None:
    table = _write_images(tmp_path / "img", [(40, 40)] * 4)
    cache_dir = tmp_path / "cache"
    first = open_cache(table, cache_dir, size=16, in_chans=3)
    built_at = first.array_path.stat().st_mtime_ns
    again = open_cache(table, cache_dir, size=16, in_chans=3)
    assert again.key == first.key and again.array_path.stat().st_mtime_ns == built_at  # reused, not rebuilt

    changed = table.paths[2]
    Image.fromarray(np.full((40, 40, 3), 7, dtype=np.uint8)).save(changed)
    os.utime(changed, ns=(built_at + 10**9, built_at + 10**9))  # a new mtime even on coarse clocks
    rebuilt = open_cache(table, cache_dir, size=16, in_chans=3)
    assert rebuilt.key != first.key
    assert np.array_equal(rebuilt.read(2), _reference(changed, 16, 3))
    assert not first.array_path.exists()  # the stale pair is removed
    assert sorted(p.suffix for p in cache_dir.iterdir()) == [".json", ".npy"]


def test_failed_build_leaves_nothing_behind(tmp_path: Path) -> None:
    table = _write_images(tmp_path / "img", [(20, 20)] * 3)
    table.paths[1].write_bytes(b"not an image")
    with pytest.raises(DataError, match="Cannot decode"):
        open_cache(table, tmp_path / "cache", size=8, in_chans=3)
    assert list((tmp_path / "cache").iterdir()) == []


def test_cache_pickles_without_its_pixels(tmp_path: Path) -> None:
    table = _write_images(tmp_path / "img", [(64, 64)] * 6)
    cache = open_cache(table, tmp_path / "cache", size=64, in_chans=3)
    cache.read(0)  # opens the memmap in this process
    clone: ImageCache = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 64 * 64 * 3  # DataLoader workers get a path, not the array
    assert np.array_equal(clone.read(5), cache.read(5))


def test_training_and_prediction_read_the_cache(
    train_cfg: Callable[..., DictConfig], tmp_path: Path, demo_slice: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_decoding(*args: object, **kwargs: object) -> np.ndarray:
        raise AssertionError("a dataset decoded an image although it is cached")

    # The datasets must read the cache: decoding inside them fails (the cache builder has its own reference).
    monkeypatch.setattr(pipeline.data.dataset, "load_image", no_decoding)
    cache_dir = tmp_path / "image_cache"
    cfg = train_cfg(f"data.cache_dir={cache_dir}", "data.cache_size=32", "trainer.limit_train_batches=3")
    metrics = train(cfg)
    table = read_train_table(DataSpec(root=str(demo_slice), in_chans=1))
    assert metrics["n_val"] == 120 and 0.0 <= metrics["val_acc"] <= 1.0
    (npy,) = cache_dir.glob("*.npy")
    assert np.load(npy, mmap_mode="r").shape == (len(table), 32, 32, 1)

    # Prediction uses the image cache the predict run names (never the one member.json records): pointed at
    # training's cache folder, it reads the very cache training built, at the member's image size.
    monkeypatch.setattr(pipeline.predict.loader, "load_rgb", no_decoding)
    (member,), _ = find_members(Path(cfg.paths.output_dir))
    assert member.manifest.data["cache_dir"] == str(cache_dir)
    rows = {member.name: np.arange(0, len(table), 5)}
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=64, image_cache_dir=str(cache_dir))
    out = predict_members([member], table, "val-cache", {"none": create_policy("none")}, opts, rows)
    assert out[(member.name, "none")].is_file()
    assert list(cache_dir.glob("*.npy")) == [npy]  # reused, not rebuilt
