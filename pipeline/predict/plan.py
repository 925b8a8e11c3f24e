"""What each member runs: its eval group, its TTA policies at its recorded crop, and its cache files.

A member is always predicted with the preprocessing it was trained with: its own ``eval_transform.json``
(which must resize to the ``image_size`` in its ``member.json``) and its own crop size. Members that share
an eval transform and input channels form one :class:`EvalGroup`; the loader decodes each image once and
resizes it once per group (:mod:`pipeline.predict.loader`), so members trained at 384 px and at 256 px
are ensembled in one run.

A TTA policy from config is a template: with ``crop_size`` null (the default) every member is cropped at
its recorded crop. An explicit ``tta.crop_size`` that contradicts a member's crop is an error naming the
member, unless ``tta.allow_crop_override`` lists it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.io import read_json, short_hash
from pipeline.data.augment import transform_from_dict
from pipeline.member.cache import CacheDirs, cache_dirs, cache_name, checkpoint_hash, find_cached
from pipeline.member.folder import Member
from pipeline.predict.spec import PredictOptions, crop_override_allowed
from pipeline.predict.tta import TTAPolicy

__all__ = ["EVAL_TRANSFORM", "EvalGroup", "MemberPlan", "policy_key", "eval_group", "member_policy", "settings_key",
           "plan_members"]

EVAL_TRANSFORM = "eval_transform.json"


def policy_key(policy: TTAPolicy) -> str:
    """File-name key of a policy: its name plus a hash of all its settings."""
    return f"{policy.name}.{short_hash(asdict(policy), 8)}"


@dataclass(frozen=True)
class EvalGroup:
    """Members fed the same pixels: one eval transform (serialised) and one number of input channels.

    Attributes:
        key: Short hash of the transform and the channels.
        transform: The albumentations pipeline as ``eval_transform.json`` holds it.
        in_chans: Input channels.
        image_size: Side S of the square the transform produces.
    """

    key: str
    transform: dict[str, Any]
    in_chans: int
    image_size: int


def eval_group(member: Member) -> EvalGroup:
    """The member's eval group, after checking that its eval transform produces its recorded image size.

    The transform is run once on a blank non-square image: it must return a ``uint8`` ``C×S×S`` tensor
    (geometric only; normalisation happens on the device) with S the manifest's ``image_size``.

    Raises:
        MemberError: Missing or unreadable ``eval_transform.json``, or one that contradicts ``member.json``.
    """
    m = member.manifest
    path = member.file(EVAL_TRANSFORM)
    if not path.is_file():
        raise MemberError(f"Member {member.name}: {path} is missing; it records how the member's images are resized.")
    try:
        data = read_json(path)
        out = transform_from_dict(data)(image=np.zeros((2 * m.image_size + 3, m.image_size + 5, m.in_chans), np.uint8))
    except Exception as err:  # a crafted or damaged file: whatever albumentations raises, name the file
        raise MemberError(f"Member {member.name}: cannot use {path}: {type(err).__name__}: {err}") from err
    image = out["image"]
    shape = tuple(image.shape) if isinstance(image, torch.Tensor) else tuple(np.asarray(image).transpose(2, 0, 1).shape)
    if shape[1:] != (m.image_size, m.image_size):
        raise MemberError(
            f"Member {member.name}: {path} resizes images to {shape[1]}x{shape[2]} but member.json records "
            f"image_size {m.image_size}; the member would be predicted at a size it was not trained at."
        )
    if shape[0] != m.in_chans or image.dtype not in (torch.uint8, np.uint8):
        raise MemberError(
            f"Member {member.name}: {path} must return uint8 {m.in_chans}-channel images (resizing only: "
            f"normalisation happens on the device); it returns {image.dtype} with {shape[0]} channels."
        )
    return EvalGroup(short_hash({"transform": data, "in_chans": m.in_chans}, 10), data, m.in_chans, m.image_size)


def member_policy(template: TTAPolicy, member: Member, allowed: Sequence[str]) -> TTAPolicy:
    """``template`` at the crop size ``member`` is predicted with.

    Raises:
        ConfigError: An explicit crop size that contradicts the member's recorded crop (and the member is not
            in ``tta.allow_crop_override``), or a crop larger than the member's image size.
    """
    m = member.manifest
    if template.crop_size is None:
        try:
            return template.at_crop(m.crop_size)
        except ValueError as err:
            raise ConfigError(f"Member {member.name} (crop size {m.crop_size}): {err}") from err
    if template.crop_size != m.crop_size and not crop_override_allowed(m.name, m.model_group, allowed):
        raise ConfigError(
            f"tta.crop_size={template.crop_size} (policy {template.name}) contradicts member {member.name}'s recorded "
            f"crop size {m.crop_size}. Leave tta.crop_size null to crop every member as it was trained, or list the "
            f"member in tta.allow_crop_override (e.g. tta.allow_crop_override=[{m.model_group or m.name}])."
        )
    if template.name != "multiscale" and template.crop_size > m.image_size:
        raise ConfigError(
            f"tta.crop_size={template.crop_size} is larger than member {member.name}'s image size {m.image_size}."
        )
    return template


def settings_key(group: EvalGroup, opts: PredictOptions, device: torch.device) -> str:
    """Hash of every setting besides policy and weights that changes a member's predicted numbers."""
    source = f"cache{opts.image_cache_size or group.image_size}" if opts.image_cache_dir else "decode"
    return short_hash({
        "group": group.key, "source": source, "reduce": opts.view_reduce, "device": device.type,
        "precision": opts.precision, "channels_last": opts.channels_last, "compile": opts.compile,
    }, 8)


@dataclass
class MemberPlan:
    """One member's run for one split.

    Attributes:
        member: The member.
        group: Its eval group.
        policies: Template policy key → the policy at this member's crop.
        dirs: Its prediction cache folders.
        files: Template policy key → its prediction file (cached, or where it will be written).
        todo: The keys whose files must be computed.
    """

    member: Member
    group: EvalGroup
    policies: dict[str, TTAPolicy]
    dirs: CacheDirs
    files: dict[str, Path]
    todo: list[str]


def plan_members(members: Sequence[Member], split: str, policies: Mapping[str, TTAPolicy], opts: PredictOptions,
                 device: torch.device, fallback_dir: Path | None,
                 ids: Callable[[Member], Collection[str]] | None = None) -> list[MemberPlan]:
    """Check every member against every policy, then look its predictions up in the cache.

    All checks (crop overrides, eval transforms) run for every member before any cache folder is touched.
    ``ids`` gives the ids a member's file must hold; a cached file that fails its checks is recomputed
    (:func:`pipeline.member.cache.cache_problem`).
    """
    resolved = [(m, eval_group(m), {k: member_policy(p, m, opts.allow_crop_override) for k, p in policies.items()})
                for m in members]
    plans = []
    for member, group, own in resolved:
        dirs = cache_dirs(member, opts.prediction_cache_dir, fallback_dir)
        settings, ckpt = settings_key(group, opts, device), checkpoint_hash(member)
        files, todo = {}, []
        for key, policy in own.items():
            name = cache_name(split, policy_key(policy), settings, ckpt)
            found = find_cached(member, dirs, name, None if ids is None else ids(member), "recomputing it")
            files[key] = found or dirs.write / name
            if found is None:
                todo.append(key)
        plans.append(MemberPlan(member, group, own, dirs, files, todo))
    return plans
