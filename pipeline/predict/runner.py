"""The batched runner: every member × every TTA policy on one pass over the images, cached per member.

Data flows once: every image is decoded once per batch and resized once per eval group (members trained
at different resolutions form different groups, :mod:`pipeline.predict.plan`), moved to the device as
``uint8``, and each group's batch feeds its members under every policy. Per-member predictions stream to
the prediction cache (:mod:`pipeline.member.cache`), keyed by split, policy, settings and checkpoint, so
a re-run recomputes nothing.

Order of work, so that a failure leaves nothing behind: options are checked, then every member's
crop sizes and eval transform, then the cache is consulted; models are loaded next, and only then are
prediction files opened (as temporary files, renamed into place when complete).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.core.io import clean_stale_temps, write_json
from pipeline.core.progress import progress
from pipeline.data.augment import normalize_batch
from pipeline.data.tables import ImageTable
from pipeline.member.cache import CHECKSUM, file_checksum
from pipeline.member.folder import Member
from pipeline.member.predictions import PredictionWriter, file_layout
from pipeline.member.weights import build_model
from pipeline.models.heads import OutputHead
from pipeline.predict.loader import make_loader, open_group_caches
from pipeline.predict.options import PRECISIONS, autocast, check_options
from pipeline.predict.plan import MemberPlan, plan_members, policy_key
from pipeline.predict.spec import PredictOptions
from pipeline.predict.targets import member_head, member_task
from pipeline.predict.tta import TTAPolicy, predict_with_tta, views_per_image

__all__ = ["PRECISIONS", "policy_key", "load_member_model", "predict_members"]


def load_member_model(member: Member, opts: PredictOptions, device: torch.device | None = None) -> nn.Module:
    """Rebuild a member's network, load its weights (``weights_only``), and ready it for inference."""
    model = build_model(member).to(device if device is not None else check_options(opts))
    if opts.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if opts.compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


@dataclass
class _Job:
    """One member's predictions still to compute for one split: a writer per policy."""

    plan: MemberPlan
    model: nn.Module
    group: int  # position of the member's eval group in the loader's image list
    rows: np.ndarray | None  # positions in the loader's table this member predicts (None: all)
    writers: dict[str, PredictionWriter]
    seconds: dict[str, float]
    head: OutputHead | None = None  # None: softmax (class probabilities)


def _run_batch(job: _Job, images: torch.Tensor, index: np.ndarray, table: ImageTable, opts: PredictOptions,
               device: torch.device) -> None:
    keep = np.ones(len(index), dtype=bool) if job.rows is None else np.isin(index, job.rows)
    if not keep.any():
        return
    m = job.plan.member.manifest
    x = normalize_batch(images[torch.as_tensor(keep, device=images.device)], m.mean, m.std)
    if opts.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    ids = [table.ids[i] for i in index[keep]]
    labels = None if table.labels is None else table.labels[index[keep]]
    chunk = opts.member_chunk_size.get(m.name, opts.member_chunk_size.get(m.model_group, opts.chunk_size))
    for key, writer in job.writers.items():
        start = time.perf_counter()
        with autocast(device, opts.precision):
            probs = predict_with_tta(job.model, x, job.plan.policies[key], chunk_size=chunk, method=opts.view_reduce,
                                     head=job.head)
        if device.type == "cuda":
            torch.cuda.synchronize()
        job.seconds[key] += time.perf_counter() - start
        writer.write(ids, probs.float().cpu().numpy(), labels)


def _open_jobs(jobs: list[_Job], pending: list[MemberPlan], models: dict[str, nn.Module], group_of: dict[str, int],
               rows: Mapping[str, np.ndarray] | None, needed: np.ndarray | None, with_labels: bool) -> None:
    """Open each pending member's prediction writers (temporary files), appending to ``jobs`` as they open."""
    for plan in pending:
        name = plan.member.name
        own = None if rows is None or needed is None else np.flatnonzero(np.isin(needed, rows[name]))
        clean_stale_temps(plan.dirs.write)  # what a killed predict (SIGKILL) left in this cache folder
        task, head = member_task(plan.member), member_head(plan.member)
        writers = {k: PredictionWriter(plan.files[k], plan.member.manifest.classes, with_labels, **file_layout(task))
                   for k in plan.todo}
        jobs.append(_Job(plan, models[name], group_of[plan.group.key], own, writers, dict.fromkeys(writers, 0.0),
                         None if head.rows_sum_to_one else head))


def _stream(pending: list[MemberPlan], models: dict[str, nn.Module], table: ImageTable, split: str,
            rows: Mapping[str, np.ndarray] | None, opts: PredictOptions, device: torch.device) -> list[_Job]:
    """The one pass over the data: decode once, resize once per group, feed every member."""
    groups = list({p.group.key: p.group for p in pending}.values())
    group_of = {g.key: i for i, g in enumerate(groups)}
    needed = np.unique(np.concatenate([rows[p.member.name] for p in pending])) if rows is not None else None
    sub = table if needed is None else table.subset(needed)
    loader = make_loader(sub, groups, open_group_caches(table, groups, opts), opts, device)
    jobs: list[_Job] = []
    try:
        _open_jobs(jobs, pending, models, group_of, rows, needed, table.labels is not None)
        names = ", ".join(p.member.name for p in pending)
        todo = sorted({k for p in pending for k in p.todo})
        desc = f"Predicting {split} ({len(pending)} member(s): {names}; policies {', '.join(todo)})"
        with torch.inference_mode():
            for batch in progress(loader, len(sub), desc, unit="img", size=lambda b: len(b["index"])):
                index = batch["index"].numpy()
                images = [x.to(device, non_blocking=True) for x in batch["images"]]
                for job in jobs:
                    _run_batch(job, images[job.group], index, sub, opts, device)
    except BaseException:
        _abort(jobs)
        raise
    return jobs


def _abort(jobs: list[_Job]) -> None:
    """Remove every writer's temporary file (a no-op for one already renamed into place)."""
    for job in jobs:
        for writer in job.writers.values():
            writer.abort()


def _finish(job: _Job, opts: PredictOptions, device: torch.device) -> None:
    for key, writer in job.writers.items():
        path = writer.close()
        policy = job.plan.policies[key]
        n = max(writer.rows, 1)
        write_json(path.with_suffix(".json"), {
            "policy": asdict(policy), "views": views_per_image(policy), "rows": writer.rows,
            "seconds": job.seconds[key], "seconds_per_1000": 1000.0 * job.seconds[key] / n, "device": str(device),
            "precision": opts.precision, "view_reduce": opts.view_reduce, "eval_group": job.plan.group.key,
            "image_size": job.plan.group.image_size, "member": job.plan.member.name, CHECKSUM: file_checksum(path),
        })


def predict_members(
    members: Sequence[Member], table: ImageTable, split: str, policies: Mapping[str, TTAPolicy],
    opts: PredictOptions, rows: Mapping[str, np.ndarray] | None = None, fallback_dir: Path | None = None,
) -> dict[tuple[str, str], Path]:
    """Predict ``table`` with every member under every policy; return ``(member, policy key) → file``.

    Args:
        members: The members (any mix of eval transforms, image sizes and crop sizes).
        table: The images.
        split: Cache tag of the table (``val``, ``test-<hash>``).
        policies: Policy key → policy template (``crop_size`` None: each member's recorded crop).
        opts: Run options, checked first.
        rows: Member name → the table rows it predicts (its own validation fold); None: all rows.
        fallback_dir: Where the prediction cache goes for members whose folder is read-only (the predict
            folder); None: the system's temporary folder.

    The table is decoded once; members whose cache already holds a file are not run at all. Timings
    (model compute seconds per 1,000 images) are saved beside each new prediction file.
    """
    device = check_options(opts)  # before any cache is consulted
    def ids(member: Member) -> list[str]:
        own = None if rows is None else rows[member.name]
        return table.ids if own is None else [table.ids[i] for i in own]

    plans = plan_members(members, split, policies, opts, device, fallback_dir, ids)
    pending = [p for p in plans if p.todo]
    if pending:
        models = {p.member.name: load_member_model(p.member, opts, device) for p in pending}  # before any file opens
        jobs = _stream(pending, models, table, split, rows, opts, device)
        try:
            for job in jobs:
                _finish(job, opts, device)
        except BaseException:  # a full disk while closing one file: the others' temporary files go too
            _abort(jobs)
            raise
    return {(p.member.name, key): path for p in plans for key, path in p.files.items()}

