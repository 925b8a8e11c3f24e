"""Benchmark 6: large images — epochs with and without the pre-resized image cache (``pipeline.cache``).

A synthetic competition of 1024×1024 JPEGs (smooth gradients plus noise, quality 90, about 0.5 MB
each, like photos) is trained at 128→112 px with MobileNetV3-Small-0.5. The loaders come from
``pipeline.train.datamodule.MemberDataModule`` with and without ``data.cache_dir``:

* **train epoch**: the second epoch of a two-epoch Lightning ``fit`` (training + validation, no
  progress bar, CSV logger): an epoch "after the first", with the Trainer and loader workers up;
* **loader epoch**: a second pass over the training and validation loaders without a model — the
  part of an epoch the cache changes (and what an epoch costs when a GPU makes the model nearly free);
* **cache build**: decoding and resizing every image into the memmap (what the first cached epoch
  pays on top), timed from an empty cache folder.
"""

from __future__ import annotations

import copy
import itertools
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pandas as pd
import pytorch_lightning as pl
from omegaconf import DictConfig
from PIL import Image
from pytorch_lightning.callbacks import Callback
from torch.utils.data import DataLoader

from benchmarks.bench_train import _reset_workers
from benchmarks.common import (
    Elapsed,
    cli,
    compose_train,
    interleaved,
    log_progress,
    member_loaders,
    paired_ratio,
    profile_top,
    target,
    timing_table,
)
from pipeline.cli.train import train_spec
from pipeline.core.tracking import LoggerSpec
from pipeline.data.augment import resize_settings
from pipeline.data.cache import cache_for_spec
from pipeline.data.dataset import ImageDataset
from pipeline.data.folds import load_or_create_folds
from pipeline.data.tables import read_train_table
from pipeline.train.fit import _build_module
from pipeline.train.loggers import create_lightning_logger
from pipeline.train.module import ClassifierModule
from pipeline.train.spec import TrainSpec

__all__ = ["run", "main", "make_large_jpegs"]

NAME = "cache"


def make_large_jpegs(root: Path, n: int, size: int = 1024, classes: int = 10) -> Path:
    """A CSV competition of ``n`` ``size``-px JPEGs (reused when complete)."""
    if (root / "train.csv").is_file():
        return root
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    labels = rng.integers(0, classes, n)
    for i in range(n):
        a, b, c = rng.uniform(0.5, 4.0, 3)
        base = np.stack([np.sin(a * xx * 6.28 + i), np.cos(b * yy * 6.28), np.sin(c * (xx + yy) * 3.14)], -1)
        pixels = np.clip(127.5 + 100 * base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / "train" / f"im{i:05d}.jpg", quality=90)
    pd.DataFrame({"id": [f"im{i:05d}" for i in range(n)], "label": labels}).to_csv(root / "train.csv", index=False)
    return root


class _EpochClock(Callback):
    """Wall time of each epoch: training batches, validation, checkpoint-free epoch end."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def _second_epoch(spec: TrainSpec, template: ClassifierModule, loaders: tuple[DataLoader, DataLoader, Any],
                  out: Path) -> Callable[[], Elapsed]:
    """``fit`` for two epochs; the second epoch's time (workers and Trainer already up, as in real training)."""

    def go() -> Elapsed:
        clock = _EpochClock()
        assert spec.trainer is not None
        trainer = spec.trainer(callbacks=[clock], default_root_dir=str(out), enable_checkpointing=False,
                               max_epochs=2, logger=create_lightning_logger(LoggerSpec(kind="csv"), out, None))
        trainer.fit(copy.deepcopy(template), loaders[0], loaders[1])
        return Elapsed(clock.seconds[1])

    return go


def _loader_epoch(loaders: tuple[DataLoader, DataLoader, Any]) -> Callable[[], Elapsed]:
    """A second pass over the training and validation loaders (persistent workers already up)."""

    def go() -> Elapsed:
        for _ in itertools.chain(loaders[0], loaders[1]):  # first epoch: starts the persistent workers
            pass
        start = time.perf_counter()
        for _ in itertools.chain(loaders[0], loaders[1]):
            pass
        seconds = time.perf_counter() - start
        _reset_workers(loaders[0], loaders[1])  # as Lightning does after fit
        return Elapsed(seconds)

    return go


def _setup(large: bool, workdir: Path) -> tuple[DictConfig, DictConfig, dict[str, Any]]:
    p: dict[str, Any] = {"n_images": 1_000 if large else 300, "source_px": 1024, "image_size": 128, "crop_size": 112,
                         "in_chans": 3, "model": "mobilenetv3_small_050", "batch_size": 32, "workers": 2}
    comp = make_large_jpegs(workdir / f"jpeg1024-{p['n_images']}", p["n_images"], p["source_px"])
    common = [f"model={p['model']}", "data=csv", f"data.root={comp}", "data.n_folds=0", f"data.image_size={p['image_size']}",
              f"data.crop_size={p['crop_size']}", f"data.in_chans={p['in_chans']}", f"data.batch_size={p['batch_size']}",
              f"data.num_workers={p['workers']}", "logger=csv", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
              "+trainer.enable_model_summary=false", f"paths.root={workdir / 'cache-bench'}"]
    plain = compose_train(common, output_dir=workdir / "cache-bench" / "member")
    cached = compose_train([*common, f"data.cache_dir={workdir / 'cache-bench' / 'image-cache'}"],
                           output_dir=workdir / "cache-bench" / "member")
    return plain, cached, p


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time epochs with and without the cache, and the cache build."""
    plain_cfg, cached_cfg, p = _setup(large, workdir)
    out = workdir / "cache-bench"
    plain_spec, cached_train = train_spec(plain_cfg), train_spec(cached_cfg)
    spec, cached_spec = plain_spec.data, cached_train.data
    table = read_train_table(spec)
    folds = load_or_create_folds(out / "folds.csv", table, spec)
    template = _build_module(plain_spec, len(table.classes))
    shutil.rmtree(cached_spec.cache_dir or "", ignore_errors=True)
    mean, std = template.mean, template.std
    plain = member_loaders(plain_spec, table, folds, mean, std)
    cached = member_loaders(cached_train, table, folds, mean, std)

    resize = resize_settings(cast(ImageDataset, cached[1].dataset).transform)  # as training builds it

    def build() -> None:
        shutil.rmtree(cached_spec.cache_dir or "", ignore_errors=True)
        cache_for_spec(table, cached_spec, resize)

    runs = {"train epoch, decode JPEGs": _second_epoch(plain_spec, template, plain, out / "fit"),
            "train epoch, cache": _second_epoch(cached_train, template, cached, out / "fit"),
            "loader epoch, decode JPEGs": _loader_epoch(plain), "loader epoch, cache": _loader_epoch(cached),
            "cache build": build}
    log_progress(NAME, f"{len(runs)} contenders × {repeats} repeats, {len(table)} JPEGs of {p['source_px']} px")
    times, _ = interleaved(runs, repeats)
    r_train = paired_ratio(times, "train epoch, decode JPEGs", "train epoch, cache")
    r_load = paired_ratio(times, "loader epoch, decode JPEGs", "loader epoch, cache")
    r_first = paired_ratio(times, "train epoch, decode JPEGs", "train epoch, cache") / (
        1 + paired_ratio(times, "cache build", "train epoch, cache"))
    targets = [target("training epoch after the first: no cache ÷ cache (speed-up)", "≥ 3.00×", r_train, r_train >= 3.0),
               target("loader epoch: no cache ÷ cache (speed-up)", "≥ 3.00×", r_load, r_load >= 3.0)]
    result: dict[str, Any] = {
        "title": "Large images: epochs with and without the pre-resized image cache",
        "what": __doc__, "params": p,
        "tables": [timing_table(f"{len(table)} JPEGs of {p['source_px']}×{p['source_px']} px → {p['image_size']}→"
                                f"{p['crop_size']} px, {p['model']}, batch {p['batch_size']}, {p['workers']} loader workers",
                                times, "train epoch, cache", items=len(table))],
        "targets": targets,
        "notes": [f"First epoch with the cache (build + epoch) vs an uncached epoch: {r_first:.2f}× the speed; every "
                  "later epoch, and predict on the same images, reads the memmap."],
    }
    if not targets[0]["met"]:
        result["profile"] = profile_top(runs["train epoch, cache"])
        result["profile_of"] = "train epoch, cache"
    return result


def main() -> None:
    """CLI: ``python -m benchmarks.bench_cache [--large]``."""
    cli(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
