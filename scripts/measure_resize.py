"""Measure what area interpolation (``aug.area_for_downscale=image``) changes against bilinear (``null``).

Two measurements, one command:

1. **The demo.** Its images are 28 px, resized up to 32 px. Area interpolation only applies when an image
   shrinks, so every demo image must come out of the eval ``Resize`` bit-identical either way; the script
   counts the images that differ (expected: 0, hence identical training and scores).
2. **Large synthetic photos.** ``--size`` px RGB images (default 512) whose class is a coarse pattern
   (stripes at one of four orientations, a period of 1/8 of the image: visible at the training size) under
   fine, high-contrast 1-px grain with random phase (fur, film grain, sensor noise). Members are trained at
   ``--image-size`` (default 64 px, an 8× shrink) with both interpolations and the same seeds, folds and
   everything else, through the real training code (``pipeline.train.train_member`` via the packaged
   configs); the script prints validation accuracy and log loss per member and their means.

Usage (2 CPU cores: about 5 minutes with the defaults)::

    python scripts/measure_resize.py --out /tmp/measure_resize [--seeds 0 1] [--epochs 8]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

CLASSES = ("horizontal", "diagonal", "vertical", "antidiagonal")


def write_photos(root: Path, per_class: int, size: int, seed: int = 0) -> Path:
    """``train.csv`` + ``train/<id>.png``: coarse oriented stripes of contrast ±20 under ±90 1-px grain."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    period = size / 8
    rows = []
    for c, label in enumerate(CLASSES):
        angle = np.pi * c / 4
        for k in range(per_class):
            phase = rng.uniform(0, 2 * np.pi)
            signal = 20 * np.sin(2 * np.pi * (xx * np.sin(angle) + yy * np.cos(angle)) / period + phase)
            grain = rng.choice([-90.0, 90.0], (size, size, 1))
            tint = rng.uniform(90, 160, 3)
            pixels = np.clip(tint + signal[..., None] + grain + rng.normal(0, 8, (size, size, 3)), 0, 255)
            image_id = f"{label}{k:04d}"
            Image.fromarray(pixels.astype(np.uint8)).save(root / "train" / f"{image_id}.png")
            rows.append((image_id, label))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    return root


def demo_unchanged(n: int) -> tuple[int, int]:
    """(images checked, images whose eval Resize output differs between area and bilinear) on the demo subset."""
    from pipeline.data.augment import resize_image
    from pipeline.data.demo import SUBSET_FILE

    subset = np.load(SUBSET_FILE)
    images = np.concatenate([subset["train_images"], subset["test_images"]])[:n]
    differ = sum(
        not np.array_equal(resize_image(im[..., None], 32, {"area_for_downscale": "image"}),
                           resize_image(im[..., None], 32, {"area_for_downscale": None}))
        for im in images
    )
    return len(images), differ


def train_one(root: Path, out: Path, area: bool, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """One member through the packaged configs, as ``pipeline-train`` builds it."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from pipeline.cli import CONF_DIR
    from pipeline.cli.config import register
    from pipeline.cli.train import train_spec
    from pipeline.train.fit import train_member

    register()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[
            "data=csv", f"data.root={root}", "data.ext=.png", "data.test_dir=null", "data.sample_submission=null",
            f"data.image_size={args.image_size}", f"data.crop_size={args.image_size * 7 // 8}", "data.n_folds=0",
            "data.holdout_fraction=0.3", "data.num_workers=2", "data.batch_size=32", f"model={args.model}",
            "trainer=cpu", f"trainer.max_epochs={args.epochs}", "trainer.enable_progress_bar=false", "logger=none",
            f"seed={seed}", f"aug.area_for_downscale={'image' if area else 'null'}", f"paths.root={out}",
        ])
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.paths.output_dir = str(out / f"{'area' if area else 'bilinear'}-s{seed}")
    return train_member(train_spec(cfg))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/measure_resize"))
    parser.add_argument("--per-class", type=int, default=120)
    parser.add_argument("--size", type=int, default=512, help="side of the written photos")
    parser.add_argument("--image-size", type=int, default=64, help="data.image_size the members train at")
    parser.add_argument("--model", default="resnet10t")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--demo-images", type=int, default=12000)
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    checked, differ = demo_unchanged(args.demo_images)
    print(f"demo: {differ} of {checked} images differ between area and bilinear resizing (28 px -> 32 px)")

    root = args.out / "photos"
    if not (root / "train.csv").is_file():
        write_photos(root, args.per_class, args.size)
    rows = []
    for seed in args.seeds:
        for area in (False, True):
            start = time.perf_counter()
            m = train_one(root, args.out / "members", area, seed, args)
            rows.append({"interpolation": "area" if area else "bilinear", "seed": seed, "val_acc": m["val_acc"],
                         "val_log_loss": m["val_log_loss"], "n_val": m["n_val"],
                         "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(rows[-1]))
    df = pd.DataFrame(rows)
    print(df.to_string(index=False))
    print(df.groupby("interpolation")[["val_acc", "val_log_loss"]].mean().to_string())
    summary = {"demo": {"checked": checked, "differ": differ}, "args": {k: str(v) for k, v in vars(args).items()},
               "members": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
