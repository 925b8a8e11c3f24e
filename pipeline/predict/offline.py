"""Inference-only mode (``mode=submit``): the out-of-fold predictions members already carry, without training images.

A Kaggle code competition runs offline and against a clock; the training images are usually not even
mounted. Ensemble weights are still fitted on out-of-fold (OOF) rows, read from what each member (or its
export, :mod:`pipeline.member.export`) already holds:

1. a cached OOF prediction file of exactly this computation (policy, crop, eval transform, settings);
2. else one of the same policy, crop and eval transform computed on another device or at another
   precision (for fitting weights that float-level difference does not matter; ``predict.json`` says so);
3. for policy ``none`` at the member's recorded crop, the ``val_predictions.csv`` training wrote (the best
   checkpoint's: never with ``checkpoint=last``).

A policy enters the run's OOF only when every member has it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from pipeline.core.io import read_json
from pipeline.member.cache import cache_dirs, cache_name, checkpoint_hash, find_cached, oof_files
from pipeline.member.folder import Member
from pipeline.predict.plan import eval_group, member_policy, policy_key, settings_key
from pipeline.predict.spec import PredictOptions
from pipeline.predict.tta import TTAPolicy

__all__ = ["VAL_PREDICTIONS", "cached_oof", "cached_oof_sets"]

log = logging.getLogger(__name__)

VAL_PREDICTIONS = "val_predictions.csv"


def cached_oof(member: Member, template: TTAPolicy, opts: PredictOptions, device: torch.device,
               fallback_dir: Path | None) -> tuple[Path, str] | None:
    """The member's OOF prediction file under ``template`` and where it came from (``cache``, ``cache-other-
    settings`` or ``val_predictions.csv``); None when the member has none."""
    policy = member_policy(template, member, opts.allow_crop_override)
    group = eval_group(member)
    dirs = cache_dirs(member, opts.prediction_cache_dir, fallback_dir)
    ckpt, pkey = checkpoint_hash(member), policy_key(policy)
    exact = find_cached(member, dirs, cache_name("val", pkey, settings_key(group, opts, device), ckpt))
    if exact is not None:
        return exact, "cache"
    for path in oof_files(member, dirs, ckpt):
        if not path.name.startswith(f"val-{pkey}-"):
            continue
        side = read_json(path.with_suffix(".json"))
        if side.get("eval_group") == group.key and side.get("view_reduce") == opts.view_reduce:
            return path, "cache-other-settings"
    val = member.file(VAL_PREDICTIONS)
    if opts.checkpoint == "best" and policy.name == "none" and policy.crop_size == member.manifest.crop_size \
            and val.is_file():  # training wrote it with the best checkpoint: never last's OOF rows
        return val, VAL_PREDICTIONS
    return None


OofSets = tuple[dict[str, dict[str, Path]], dict[str, dict[str, str]]]


def cached_oof_sets(members: Sequence[Member], templates: Mapping[str, TTAPolicy], opts: PredictOptions,
                    device: torch.device, fallback_dir: Path | None) -> OofSets:
    """For every policy every member has OOF predictions for: member → file, and member → source.

    Returns:
        ``(files, sources)``, both keyed by template policy key; policies some member lacks are left out
        (with a log line naming the members).
    """
    files: dict[str, dict[str, Path]] = {}
    sources: dict[str, dict[str, str]] = {}
    for key, template in templates.items():
        found = {m.name: cached_oof(m, template, opts, device, fallback_dir) for m in members}
        lacking = [name for name, hit in found.items() if hit is None]
        if lacking:
            log.info("No cached OOF predictions under policy %s for %s; the report leaves it out", key, lacking)
            continue
        files[key] = {name: hit[0] for name, hit in found.items() if hit is not None}
        sources[key] = {name: hit[1] for name, hit in found.items() if hit is not None}
    return files, sources
