"""The batched runner: every member × every TTA policy on one pass over the images, cached per member.

Data flows once: every image is decoded and resized once per batch, moved to the device as ``uint8``,
and that batch feeds every member and every TTA policy. Per-member predictions stream to the member's
``predictions/`` cache (keyed by split, policy and checkpoint hash), so a re-run recomputes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json, short_hash, write_json
from pipeline.data.augment import normalize_batch, transform_from_dict
from pipeline.data.cache import ImageCache, open_cache
from pipeline.data.dataset import ImageDataset
from pipeline.data.tables import ImageTable
from pipeline.member.folder import Member
from pipeline.member.predictions import PredictionWriter
from pipeline.member.weights import load_state_dict
from pipeline.models.factory import create_model
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import TTAPolicy, predict_with_tta, views_per_image

__all__ = ["PRECISIONS", "policy_key", "load_member_model", "predict_members"]

PRECISIONS = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def policy_key(policy: TTAPolicy) -> str:
    """File-name key of a policy: its name plus a hash of all its settings."""
    return f"{policy.name}.{short_hash(asdict(policy), 8)}"


def load_member_model(member: Member, opts: PredictOptions) -> nn.Module:
    """Rebuild a member's network, load its weights (``weights_only``), and ready it for inference."""
    m = member.manifest
    model = create_model(m.model_name, num_classes=m.num_classes, in_chans=m.in_chans, **m.model_kwargs)
    state = load_state_dict(member.checkpoint)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise MemberError(
            f"{member.checkpoint} does not fit model '{m.model_name}': missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    model.eval().to(opts.torch_device())
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opts.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


@dataclass
class _Job:
    """One member's predictions still to compute for one split: a writer per policy."""

    member: Member
    model: nn.Module
    rows: np.ndarray | None  # table rows this member predicts (None: all)
    writers: dict[str, PredictionWriter]
    seconds: dict[str, float]


def _cache_path(member: Member, split: str, key: str, reduce: str, ckpt_hash: str) -> Path:
    return member.path / "predictions" / f"{split}-{key}-{reduce}-{ckpt_hash}.csv"


def _autocast(device: torch.device, precision: str) -> Any:
    if precision not in PRECISIONS:
        raise ValueError(f"precision='{precision}' is not one of {list(PRECISIONS)}")
    dtype = PRECISIONS[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def _run_batch(job: _Job, images: torch.Tensor, batch: dict[str, Any], table: ImageTable,
               policies: dict[str, TTAPolicy], opts: PredictOptions) -> None:
    index = batch["index"].numpy()
    keep = np.ones(len(index), dtype=bool) if job.rows is None else np.isin(index, job.rows)
    if not keep.any():
        return
    m = job.member.manifest
    x = normalize_batch(images[torch.as_tensor(keep, device=images.device)], m.mean, m.std)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = [table.ids[i] for i in index[keep]]
    labels = None if table.labels is None else table.labels[index[keep]]
    chunk = opts.member_chunk_size.get(m.name, opts.member_chunk_size.get(m.model_group, opts.chunk_size))
    for key, writer in job.writers.items():
        start = time.perf_counter()
        with _autocast(x.device, opts.precision):
            probs = predict_with_tta(job.model, x, policies[key], chunk_size=chunk, method=opts.view_reduce)
        if x.device.type == "cuda":
            torch.cuda.synchronize()
        job.seconds[key] += time.perf_counter() - start
        writer.write(ids, probs.float().cpu().numpy(), labels)


def predict_members(
    members: Sequence[Member], table: ImageTable, split: str, policies: dict[str, TTAPolicy],
    opts: PredictOptions, rows: dict[str, np.ndarray] | None = None,
) -> dict[tuple[str, str], Path]:
    """Predict ``table`` with every member under every policy; return ``(member, policy key) → file``.

    The table is decoded once; members whose cache already holds a (split, policy, checkpoint) file
    are not run at all. ``rows`` limits a member to some table rows (its own validation fold).
    Timings (model compute seconds per 1,000 images) are saved beside each cache file.
    """
    out: dict[tuple[str, str], Path] = {}
    jobs: list[_Job] = []
    for member in members:
        todo = {}
        ckpt_hash = short_hash(member.checkpoint, 12)  # hashing a large checkpoint once, not once per policy
        for key in policies:
            path = _cache_path(member, split, key, opts.view_reduce, ckpt_hash)
            out[(member.name, key)] = path
            if not path.is_file():
                todo[key] = PredictionWriter(path, member.manifest.classes, with_labels=table.labels is not None)
        if todo:
            model = load_member_model(member, opts)
            jobs.append(_Job(member, model, None if rows is None else rows[member.name], todo, dict.fromkeys(todo, 0.0)))
    if not jobs:
        return out
    try:
        _stream(jobs, table, policies, opts)
    except BaseException:
        for job in jobs:
            for w in job.writers.values():
                w.abort()
        raise
    for job in jobs:
        for key, writer in job.writers.items():
            path = writer.close()
            n = max(writer.rows, 1)
            write_json(path.with_suffix(".json"), {
                "policy": asdict(policies[key]), "views": views_per_image(policies[key]), "rows": writer.rows,
                "seconds": job.seconds[key], "seconds_per_1000": 1000.0 * job.seconds[key] / n,
                "device": str(opts.torch_device()), "precision": opts.precision,
            })
    return out


def _member_cache(member: Member, table: ImageTable, workers: int) -> ImageCache | None:
    """The resized-image cache the member was trained with (``data.cache_dir`` in its manifest), or None."""
    data = member.manifest.data
    if not data.get("cache_dir"):
        return None
    size = int(data.get("cache_size") or member.manifest.image_size)
    return open_cache(table, str(data["cache_dir"]), size, member.manifest.in_chans, workers)


def _stream(jobs: list[_Job], table: ImageTable, policies: dict[str, TTAPolicy], opts: PredictOptions) -> None:
    """The one pass over the data: decode once, feed every job."""
    first = jobs[0].member
    eval_tf = read_json(first.path / "eval_transform.json")
    transform = transform_from_dict(eval_tf)
    for job in jobs[1:]:
        if read_json(job.member.path / "eval_transform.json") != eval_tf or \
                job.member.manifest.in_chans != first.manifest.in_chans:
            raise MemberError(
                f"Members {first.name} and {job.member.name} need different eval transforms or input channels; "
                "predict them in separate runs (members=...)."
            )
    needed = np.unique(np.concatenate([j.rows for j in jobs])) if all(j.rows is not None for j in jobs) else None
    sub = table if needed is None else table.subset(needed)
    cache = _member_cache(first, table, opts.num_workers)
    ds = ImageDataset(sub, transform, first.manifest.in_chans, cache)
    loader = DataLoader(ds, batch_size=opts.batch_size, num_workers=opts.num_workers, shuffle=False,
                        pin_memory=opts.torch_device().type == "cuda")
    device = opts.torch_device()
    for job in jobs:  # rows are positions in ``sub`` from here on
        if job.rows is not None and needed is not None:
            job.rows = np.flatnonzero(np.isin(needed, job.rows))
    with torch.inference_mode():
        for batch in loader:
            images = batch["image"].to(device, non_blocking=True)
            for job in jobs:
                _run_batch(job, images, batch, sub, policies, opts)
