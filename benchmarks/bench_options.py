"""Benchmark 5: inference options — fp32, channels_last, bf16 autocast, torch.compile (and chunking, threads).

Each option is applied exactly as predict applies it: the member is loaded by
``pipeline.predict.load_member_model`` with those ``PredictOptions`` (``channels_last`` converts the
model, ``compile`` wraps it in ``torch.compile``), and each batch goes through what ``_run_batch``
does: normalise on the device, ``channels_last`` input if asked, ``predict_with_tta`` (``ten_crop``)
under the precision's autocast. Batches are decoded beforehand and held in memory, so only the
model side is timed. Two workloads: the demo's 32→28 px, and 128→112 px, both ResNet-10-T members.

Extra rows, not options of ``conf/predict.yaml`` top level: ``tta.chunk_size=512`` (at most 512 views
per forward pass) and fp32 with 2 intra-op threads instead of the benchmark's 1. ``torch.compile``'s
one-off compilation time is reported separately; its rows time the compiled model afterwards.
"""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    bench_args,
    interleaved,
    log_progress,
    make_competition,
    median,
    paired_ratio,
    quiet,
    save_result,
    timing_table,
    train_member,
)
from pipeline.core.io import read_json
from pipeline.data.augment import normalize_batch, transform_from_dict
from pipeline.data.dataset import ImageDataset
from pipeline.data.tables import ImageTable
from pipeline.member.folder import Member, find_members
from pipeline.predict.options import autocast
from pipeline.predict.runner import load_member_model
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import create_policy, predict_with_tta

__all__ = ["run", "main", "OPTIONS"]

NAME = "options"
BASE = PredictOptions(device="cpu")
OPTIONS: dict[str, PredictOptions] = {
    "fp32": BASE,
    "channels_last": replace(BASE, channels_last=True),
    "bf16": replace(BASE, precision="bf16"),
    "compile": replace(BASE, compile=True),
    "bf16+channels_last": replace(BASE, precision="bf16", channels_last=True),
    "fp32, chunk_size=512": replace(BASE, chunk_size=512),
}


def _member(workdir: Path, size: int, crop: int) -> tuple[Member, Path]:
    """A ResNet-10-T member trained (one step) at ``size``→``crop`` px, and its competition folder."""
    comp = make_competition(workdir / "fmnist-train1000", n_train=1000, n_test=0)
    folder = train_member(workdir / f"sweep-{size}", comp, "resnet10t", f"data.image_size={size}", f"data.crop_size={crop}",
                          "trainer.limit_train_batches=1", "data.batch_size=32")
    (member,), _ = find_members(str(folder))
    return member, comp


def _batches(member: Member, comp: Path, n_images: int, batch: int) -> list[torch.Tensor]:
    """``n_images`` training images through the member's eval transform, as uint8 batches."""
    transform = transform_from_dict(read_json(member.path / "eval_transform.json"))
    files = sorted((comp / "train").glob("*.png"))[:n_images]
    ds = ImageDataset(ImageTable([f.stem for f in files], files), transform, member.manifest.in_chans)
    return list(torch.stack([ds[i]["image"] for i in range(len(ds))]).split(batch))


def _contender(member: Member, opts: PredictOptions, batches: list[torch.Tensor], threads: int | None = None
               ) -> tuple[Callable[[], torch.Tensor], float]:
    """A timed callable for ``opts`` and the seconds its first call took (compilation, for compile)."""
    model = load_member_model(member, opts)
    policy = create_policy("ten_crop", crop_size=member.manifest.crop_size)
    m = member.manifest

    @torch.inference_mode()
    def go() -> torch.Tensor:
        saved = torch.get_num_threads()
        torch.set_num_threads(threads or saved)
        try:
            out = []
            for images in batches:
                x = normalize_batch(images, m.mean, m.std)
                if opts.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                with autocast(x.device, opts.precision):
                    out.append(predict_with_tta(model, x, policy, chunk_size=opts.chunk_size).float())
            return torch.cat(out)
        finally:
            torch.set_num_threads(saved)

    start = time.perf_counter()
    go()
    return go, time.perf_counter() - start


def _workload(workdir: Path, size: int, crop: int, n_images: int, batch: int, repeats: int) -> dict[str, Any]:
    member, comp = _member(workdir, size, crop)
    batches = _batches(member, comp, n_images, batch)
    runs, first = {}, {}
    for name, opts in OPTIONS.items():
        runs[name], first[name] = _contender(member, opts, batches)
    runs["fp32, 2 threads"], first["fp32, 2 threads"] = _contender(member, BASE, batches, threads=2)
    log_progress(NAME, f"{size}→{crop} px: {len(runs)} contenders × {repeats} repeats")
    times, last = interleaved(runs, repeats, warmup={k: (lambda: None) for k in runs})
    diff = {k: float((v - last["fp32"]).abs().max()) for k, v in last.items()}
    table = timing_table(f"ResNet-10-T member, {size}→{crop} px, ten_crop, {n_images} images in batches of {batch} "
                         f"({10 * batch} views)", times, "fp32", items=n_images)
    table["columns"].append("max |p − p(fp32)|")
    for row, name in zip(table["rows"], times):
        row.append(f"{diff[name]:.1e}")
    speedups = {k: 1.0 / paired_ratio(times, k, "fp32") for k in times}
    saved = (median(times["fp32"]) - median(times["compile"])) / n_images  # seconds saved per image once compiled
    return {"table": table, "speedups": speedups, "compile_s": first["compile"] - median(times["compile"]),
            "break_even": int(first["compile"] / saved) if saved > 0 else None}


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Both workloads; the result includes which defaults the measurements support."""
    small = _workload(workdir, 32, 28, 512 if large else 256, 256, repeats)
    big = _workload(workdir, 128, 112, 64 if large else 32, 16, repeats)
    notes = [f"{label}: torch.compile took {w['compile_s']:.1f} s to compile (cold inductor cache), paid once per member "
             "and input shape (predict's last, smaller batch compiles again); it pays for itself after about "
             f"{w['break_even'] or '∞'} images per member." for label, w in (("32 px", small), ("128 px", big))]
    tables = [small["table"], big["table"]]
    verdict = {k: [round(small["speedups"][k], 3), round(big["speedups"][k], 3)] for k in small["speedups"]}
    return {
        "title": "Inference options on CPU: fp32, channels_last, bf16 autocast, torch.compile",
        "what": __doc__, "params": {"model": "resnet10t", "policy": "ten_crop", "large": large},
        "tables": tables, "targets": [], "notes": notes, "speedups_vs_fp32": verdict,
    }


def main() -> None:
    """CLI: ``python -m benchmarks.bench_options [--large]``; compiles with a cold inductor cache."""
    quiet()
    args = bench_args(__doc__.splitlines()[0])
    with tempfile.TemporaryDirectory(prefix="inductor-") as cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold  # first-time compile cost, not a cache hit from an earlier run
        save_result(NAME, run(args.large, args.repeats, args.workdir), args.json)


if __name__ == "__main__":
    main()
