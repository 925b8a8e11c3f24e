"""Benchmark 2: ensemble inference, 3 members × 10 crops — decode once vs a loop over members.

Three real member folders (LeNet-5, seeds 0–2, made by ``pipeline.train.fit.train_member`` in a few steps) predict
the same test images with the ``ten_crop`` policy:

* **ours**: ``pipeline.predict.runner.predict_members`` with all three members: each batch is decoded once
  and fed to every member (it also writes each member's prediction CSV, as predict does).
* **loop**: what a user without it writes — the same call once per member, so the images are read
  and decoded three times.
* **model-only**: the three models on views already cropped, normalised and held in memory: the
  forward passes, softmax and mean only. The floor.
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import (
    cli,
    interleaved,
    log_progress,
    make_competition,
    paired_ratio,
    profile_top,
    target,
    timing_table,
    train_member,
    wins,
)
from pipeline.core.io import read_json
from pipeline.data.augment import normalize_batch, transform_from_dict
from pipeline.data.dataset import ImageDataset
from pipeline.data.tables import ImageTable
from pipeline.member.folder import Member, find_members
from pipeline.predict.runner import load_member_model, predict_members
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import TTAPolicy, create_policy, make_views

__all__ = ["run", "main", "ensemble_members"]

NAME = "ensemble"


def ensemble_members(workdir: Path, model: str = "lenet5", seeds: tuple[int, ...] = (0, 1, 2)) -> list[Member]:
    """Real members trained for a few steps on a 1,000-image competition (reused between runs)."""
    comp = make_competition(workdir / "fmnist-train1000", n_train=1000, n_test=0)
    folders = [train_member(workdir / "sweep", comp, model, f"seed={s}") for s in seeds]
    members, _ = find_members([str(f) for f in folders])
    return members


def _held_views(members: list[Member], table: ImageTable, policy: TTAPolicy, batch: int) -> dict[str, list[torch.Tensor]]:
    """Each member's normalised views of every image, per batch, in memory."""
    first = members[0]
    transform = transform_from_dict(read_json(first.path / "eval_transform.json"))
    images = torch.stack([ImageDataset(table, transform, first.manifest.in_chans)[i]["image"] for i in range(len(table))])
    return {m.name: [make_views(normalize_batch(x, m.manifest.mean, m.manifest.std), policy) for x in images.split(batch)]
            for m in members}


def contenders(members: list[Member], table: ImageTable, opts: PredictOptions) -> dict[str, Callable[[], Any]]:
    """ours / loop / model-only for ``table``; every predict call gets a fresh split tag (no cache hits)."""
    policy = create_policy("ten_crop", crop_size=members[0].manifest.crop_size)
    policies = {"ten_crop": policy}
    tags = (f"bench{i}" for i in itertools.count())
    models = {m.name: load_member_model(m, opts) for m in members}
    held = _held_views(members, table, policy, opts.batch_size)

    def ours() -> None:
        predict_members(members, table, next(tags), policies, opts)

    def loop() -> None:
        for m in members:
            predict_members([m], table, next(tags), policies, opts)

    @torch.inference_mode()
    def model_only() -> None:
        for name, views in held.items():
            for v in views:
                probs = models[name](v).softmax(-1)
                probs.view(-1, 10, probs.shape[-1]).mean(1)

    return {"ours": ours, "loop": loop, "model_only": model_only}


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the contenders and build the result."""
    n = 10_000 if large else 2_000
    members = ensemble_members(workdir)
    comp = make_competition(workdir / f"fmnist-test{n}", n_train=0, n_test=n)
    paths = sorted((comp / "test").glob("*.png"))
    table = ImageTable([q.stem for q in paths], paths)
    opts = PredictOptions(device="cpu", batch_size=256, num_workers=2)

    def clean() -> None:
        for m in members:
            shutil.rmtree(m.path / "predictions", ignore_errors=True)

    clean()
    runs = contenders(members, table, opts)
    small = ImageTable(table.ids[:256], table.paths[:256])
    log_progress(NAME, f"3 contenders × {repeats} repeats, {len(members)} members × 10 crops × {n} images")
    times, _ = interleaved(runs, repeats, warmup=contenders(members, small, opts), between=clean)
    r_model, r_loop = paired_ratio(times, "ours", "model_only"), paired_ratio(times, "ours", "loop")
    targets = [
        target("ours ÷ model-only", "≤ 1.10×", r_model, r_model <= 1.10),
        target("ours ÷ loop over members", "< 1.00×", r_loop, r_loop < 1.0, f"ours faster in {wins(times, 'ours', 'loop')}"),
    ]
    result: dict[str, Any] = {
        "title": "Ensemble inference: 3 members × 10 crops, decode once vs a loop over members",
        "what": __doc__,
        "params": {"n_images": n, "members": [m.name for m in members], "views": 10, "batch_size": opts.batch_size,
                   "workers": opts.num_workers},
        "tables": [timing_table(f"{n:,} images, 3 × LeNet-5 members × 10 crops (30 forward passes per image), batch "
                                f"{opts.batch_size}, {opts.num_workers} loader workers", times, "model_only", items=n)],
        "targets": targets,
        "notes": ["ours and loop include loading the members' weights and writing their prediction CSVs; model-only "
                  "does neither."],
    }
    if not all(t["met"] for t in targets):
        result["profile"] = profile_top(runs["ours"])
        clean()
    return result


def main() -> None:
    """CLI: ``python -m benchmarks.bench_ensemble [--large]``."""
    cli(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
