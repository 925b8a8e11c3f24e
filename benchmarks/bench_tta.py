"""Benchmark 1: 10-crop TTA — ours vs torchvision's TenCrop-in-Dataset vs ttach vs model-only.

Same images (Fashion-MNIST PNGs stored at S=32 px), same model (timm, random init, eval mode), same
batch size and DataLoader workers. Every contender returns the mean over the 10 views of the softmax:

* **ours**: predict's path — a DataLoader of decoded ``uint8`` S×S images (``ImageDataset`` + the eval
  transform), normalised on the device, then ``predict_with_tta`` with the ``ten_crop`` policy.
* **torchvision**: the documented recipe — ``transforms.TenCrop`` per image inside the Dataset on
  the CPU, stacked to ``[B, 10, C, H, W]``, one forward on ``view(-1, C, H, W)``, then
  ``.view(B, 10, -1).mean(1)`` of the softmax.
* **ttach**: ``ClassificationTTAWrapper(model, aliases.ten_crop_transform(c, c), merge_mode="mean")``
  on normalised S×S batches. ttach averages whatever the model returns — logits for a classifier —
  so the model is wrapped with a softmax to average probabilities like the others. It runs one
  forward pass per view (10 passes of B images).
* **model-only**: the views of every image, already cropped, normalised and held in memory; only the
  forward passes, softmax and mean are timed. This is the floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import albumentations as A
import torch
import ttach
from albumentations.pytorch import ToTensorV2
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from benchmarks.common import (
    cli,
    interleaved,
    log_progress,
    make_competition,
    paired_ratio,
    profile_top,
    target,
    timing_table,
    wins,
)
from pipeline.data.augment import normalize_batch, resolve_normalization
from pipeline.data.dataset import ImageDataset
from pipeline.data.tables import ImageTable
from pipeline.models.factory import create_model, model_data_config
from pipeline.predict.tta import create_policy, make_views, predict_with_tta

__all__ = ["run", "main", "TenCropDataset", "PlainDataset"]

NAME = "tta"


class TenCropDataset(Dataset):
    """torchvision's documented pattern: 10 crops per image on the CPU, stacked ``[10, C, c, c]``."""

    def __init__(self, paths: list[Path], crop: int, mode: str, mean: list[float], std: list[float]) -> None:
        self.paths, self.mode = paths, mode
        self.tencrop = T.TenCrop(crop)
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.paths[i]) as img:
            crops = self.tencrop(img.convert(self.mode))
        return torch.stack([self.to_tensor(c) for c in crops])


class PlainDataset(Dataset):
    """A ttach user's Dataset: the decoded S×S image as a normalised float tensor."""

    def __init__(self, paths: list[Path], mode: str, mean: list[float], std: list[float]) -> None:
        self.paths, self.mode = paths, mode
        self.to_tensor = T.Compose([T.ToTensor(), T.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        with Image.open(self.paths[i]) as img:
            return self.to_tensor(img.convert(self.mode))


def _ours(table: ImageTable, model: nn.Module, p: dict[str, Any], chunk: int | None,
          stats: dict[str, float]) -> Callable[[], Tensor]:
    """predict's path: uint8 S×S batches from ``ImageDataset`` → normalise → ``predict_with_tta``."""
    policy = create_policy("ten_crop", crop_size=p["crop_size"])
    eval_tf = A.Compose([A.Resize(p["image_size"], p["image_size"]), ToTensorV2()])

    @torch.inference_mode()
    def ours() -> Tensor:
        out, wait, t = [], 0.0, time.perf_counter()
        loader = DataLoader(ImageDataset(table, eval_tf, p["in_chans"]), batch_size=p["batch_size"],
                            num_workers=p["workers"], shuffle=False)
        for batch in loader:
            wait += time.perf_counter() - t
            x = normalize_batch(batch["image"], p["mean"], p["std"])
            out.append(predict_with_tta(model, x, policy, chunk_size=chunk))
            t = time.perf_counter()
        stats["data_wait_s"] = wait
        return torch.cat(out)

    return ours


def _model_only(table: ImageTable, model: nn.Module, p: dict[str, Any], chunk: int | None) -> Callable[[], Tensor]:
    """Forward passes on views cropped and normalised beforehand, ``chunk`` views per pass."""
    policy = create_policy("ten_crop", crop_size=p["crop_size"])
    eval_tf = A.Compose([A.Resize(p["image_size"], p["image_size"]), ToTensorV2()])
    decoded = torch.stack([ImageDataset(table, eval_tf, p["in_chans"])[i]["image"] for i in range(len(table))])
    held = [make_views(normalize_batch(x, p["mean"], p["std"]), policy) for x in decoded.split(p["batch_size"])]

    @torch.inference_mode()
    def model_only() -> Tensor:
        out = []
        for views in held:
            probs = torch.cat([model(c) for c in views.split(chunk or len(views))]).softmax(-1)
            out.append(probs.view(-1, 10, probs.shape[-1]).mean(1))
        return torch.cat(out)

    return model_only


def contenders(
    table: ImageTable, model: nn.Module, p: dict[str, Any], stats: dict[str, float]
) -> dict[str, Callable[[], Tensor]]:
    """Every way to get 10-crop probabilities for ``table``; ``stats`` collects ours' data wait."""
    crop, mode = p["crop_size"], "L" if p["in_chans"] == 1 else "RGB"
    loader = dict(batch_size=p["batch_size"], num_workers=p["workers"], shuffle=False)
    probs_model = nn.Sequential(model, nn.Softmax(dim=-1)).eval()
    tta_model = ttach.ClassificationTTAWrapper(probs_model, ttach.aliases.ten_crop_transform(crop, crop), merge_mode="mean")

    @torch.inference_mode()
    def torchvision_tencrop() -> Tensor:
        out = []
        for crops in DataLoader(TenCropDataset(table.paths, crop, mode, p["mean"], p["std"]), **loader):
            b, n, c, h, w = crops.size()
            out.append(model(crops.view(-1, c, h, w)).softmax(-1).view(b, n, -1).mean(1))
        return torch.cat(out)

    @torch.inference_mode()
    def ttach_tencrop() -> Tensor:
        return torch.cat([tta_model(x) for x in DataLoader(PlainDataset(table.paths, mode, p["mean"], p["std"]), **loader)])

    chunk = p["chunk_size"]
    return {
        "ours": _ours(table, model, p, None, stats), f"ours_chunk{chunk}": _ours(table, model, p, chunk, {}),
        "torchvision": torchvision_tencrop, "ttach": ttach_tencrop,
        "model_only": _model_only(table, model, p, None), f"model_only_chunk{chunk}": _model_only(table, model, p, chunk),
    }


def params(large: bool) -> dict[str, Any]:
    """2,000 images with MobileNetV3-Small-0.5 by default; ``--large``: 10,000 images with ResNet-10-T."""
    return {"n_images": 10_000 if large else 2_000, "image_size": 32, "crop_size": 28, "in_chans": 1,
            "model": "resnet10t" if large else "mobilenetv3_small_050", "batch_size": 256, "chunk_size": 512,
            "workers": 2, "views": 10}


def _table(comp: Path, n: int | None = None) -> ImageTable:
    paths = sorted((comp / "test").glob("*.png"))[:n]
    return ImageTable([q.stem for q in paths], paths)


def _targets(times: dict[str, list[float]], chunk: int) -> list[dict[str, Any]]:
    rows = []
    for ours, floor in (("ours", "model_only"), (f"ours_chunk{chunk}", f"model_only_chunk{chunk}")):
        r = paired_ratio(times, ours, floor)
        rows.append(target(f"{ours} ÷ {floor}", "≤ 1.10×", r, r <= 1.10))
        for peer in ("torchvision", "ttach"):
            r = paired_ratio(times, ours, peer)
            rows.append(target(f"{ours} ÷ {peer}", "≤ 1.00×", r, r <= 1.0, f"{ours} faster in {wins(times, ours, peer)}"))
    return rows


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the contenders, check they agree, and build the result."""
    p = params(large)
    comp = make_competition(workdir / f"fmnist-test{p['n_images']}", n_train=0, n_test=p["n_images"], size=p["image_size"])
    table = _table(comp)
    torch.manual_seed(0)
    model = create_model(p["model"], num_classes=10, in_chans=p["in_chans"]).eval()
    p["mean"], p["std"] = resolve_normalization(model_data_config(model), p["in_chans"])
    stats: dict[str, float] = {}
    runs = contenders(table, model, p, stats)
    log_progress(NAME, f"{len(runs)} contenders × {repeats} repeats on {len(table)} images")
    times, last = interleaved(runs, repeats, warmup=contenders(_table(comp, 2 * p["batch_size"]), model, p, {}))
    agree = {k: float((v - last["model_only"]).abs().max()) for k, v in last.items()}
    n, targets = len(table), _targets(times, p["chunk_size"])
    title = (f"{n:,} images × 10 crops, {p['model']} ({p['in_chans']} ch, {p['image_size']}→{p['crop_size']} px), "
             f"batch {p['batch_size']} images ({10 * p['batch_size']} views), {p['workers']} loader workers")
    result: dict[str, Any] = {
        "title": "10-crop TTA: ours vs torchvision TenCrop-in-Dataset vs ttach vs model-only",
        "what": __doc__, "params": {k: v for k, v in p.items() if k not in ("mean", "std")},
        "tables": [
            timing_table(title, times, "model_only", items=n),
            {"title": "Agreement: max |p − p(model-only)| over all images and classes", "columns": ["contender", "max abs diff"],
             "rows": [[k, f"{v:.2e}"] for k, v in agree.items()]},
        ],
        "targets": targets,
        "notes": [f"ours spent {stats.get('data_wait_s', 0):.2f} s of its last run waiting for the DataLoader.",
                  f"All contenders agree within {max(agree.values()):.1e} (float32 rounding): same crops, same mean.",
                  f"`_chunk{p['chunk_size']}`: at most {p['chunk_size']} views per forward pass (predict's `tta.chunk_size`); "
                  "without it ours and torchvision run all 10 × batch views in one pass, ttach runs one pass per view."],
    }
    if not all(t["met"] for t in targets):
        result["profile"] = profile_top(runs["ours"])
    return result


def main() -> None:
    """CLI: ``python -m benchmarks.bench_tta [--large]``."""
    cli(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
