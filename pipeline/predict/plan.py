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

import logging
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
from pipeline.predict.tta import TTAPolicy, create_policy

log = logging.getLogger(__name__)

__all__ = ["EVAL_TRANSFORM", "EvalGroup", "MemberPlan", "policy_key", "policy_names", "recorded_policies", "eval_group",
           "member_policy", "settings_key", "plan_members"]

EVAL_TRANSFORM = "eval_transform.json"


def policy_key(policy: TTAPolicy) -> str:
    """File-name key of a policy: its name plus a hash of all its settings (files and caches only, never shown)."""
    return f"{policy.name}.{short_hash(asdict(policy), 8)}"


_SHOWN_FIELDS = ("flip", "crop_size", "scales", "squares", "crops", "flips")


def recorded_policies(policies: Mapping[str, Mapping[str, Any]]) -> dict[str, TTAPolicy]:
    """The policies a record holds (``predict.json`` or ``ensemble.json`` ``policies``: key → settings with
    ``views``), built again under the same keys."""
    return {k: create_policy(**{f: v for f, v in p.items() if f != "views"}) for k, p in policies.items()}


def policy_names(policies: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Readable name of each policy key: its name, plus the settings that tell apart policies sharing it.

    >>> policy_names({"a": {"name": "none"}, "b": {"name": "ten_crop", "flip": "horizontal"},
    ...               "c": {"name": "ten_crop", "flip": "vertical"}})
    {'a': 'none', 'b': 'ten_crop (flip horizontal)', 'c': 'ten_crop (flip vertical)'}
    """
    out = {}
    for key, p in policies.items():
        twins = [q for q in policies.values() if q["name"] == p["name"]]
        differ = [f for f in _SHOWN_FIELDS if len({str(q.get(f)) for q in twins}) > 1]
        shown = ", ".join(f"{f} {_plain(p.get(f))}" for f in differ)
        out[key] = f"{p['name']} ({shown})" if shown else str(p["name"])
    return out


def _plain(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


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
    if template.crop_size is not None and template.crop_size != m.crop_size and not crop_override_allowed(
            m.name, m.model_group, allowed):
        raise ConfigError(
            f"tta.crop_size={template.crop_size} (policy {template.name}) contradicts member {member.name}'s recorded "
            f"crop size {m.crop_size}. Leave tta.crop_size null to crop every member as it was trained, or list the "
            f"member in tta.allow_crop_override (e.g. tta.allow_crop_override=[{m.model_group or m.name}])."
        )
    if template.crop_size is not None and template.name != "multiscale" and template.crop_size > m.image_size:
        raise ConfigError(
            f"tta.crop_size={template.crop_size} is larger than member {member.name}'s image size {m.image_size}."
        )
    try:  # the member's crop unless one is given; relative multiscale scales in the member's pixels
        return template.at_crop(template.crop_size or m.crop_size, m.image_size)
    except ValueError as err:
        raise ConfigError(f"Member {member.name} (crop size {m.crop_size}): {err}") from err


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


_warned_shared: set[tuple[str, ...]] = set()  # once per process: plan_members runs once per split


def _warn_shared_weights(members: Sequence[Member], hashes: Mapping[str, str]) -> None:
    """Warn, naming them, about members whose weights files are byte-identical (one model counted twice)."""
    by_hash: dict[str, list[Member]] = {}
    for m in members:
        by_hash.setdefault(hashes[m.name], []).append(m)
    for same in by_hash.values():
        names = tuple(m.name for m in same)
        if len(same) > 1 and names not in _warned_shared:
            _warned_shared.add(names)
            log.warning("Members %s hold identical weights (%s): the ensemble counts one model %d times. Remove the "
                        "copies from `members`, or retrain them with another seed.", " and ".join(names),
                        ", ".join(str(m.checkpoint) for m in same), len(same))


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
    hashes = {m.name: checkpoint_hash(m) for m in members}
    _warn_shared_weights(members, hashes)
    for member, group, own in resolved:
        dirs = cache_dirs(member, opts.prediction_cache_dir, fallback_dir)
        settings, ckpt = settings_key(group, opts, device), hashes[member.name]
        files, todo = {}, []
        for key, policy in own.items():
            name = cache_name(split, policy_key(policy), settings, ckpt)
            found = find_cached(member, dirs, name, None if ids is None else ids(member), "recomputing it")
            files[key] = found or dirs.write / name
            if found is None:
                todo.append(key)
        plans.append(MemberPlan(member, group, own, dirs, files, todo))
    return plans
