"""Test-time augmentation: turn a batch of S×S images into V crops per image, and merge them back.

Images arrive decoded, resized to S×S (any H×W works) and normalised, as one float tensor
``[B, C, H, W]`` on the device. Every policy builds its views with whole-batch slicing, flipping
and interpolation, never a Python loop over images, so the cost is a handful of kernel launches
however large the batch.

View layout (image-major): :func:`make_views` returns ``[B * V, C, c, c]`` where row ``b * V + v``
is view ``v`` of image ``b``. This is the layout of ``torch.stack(views, dim=1).flatten(0, 1)``, and
:func:`merge_views` undoes it with ``view(B, V, K)``, as in the torchvision ``ten_crop`` recipe.

Policies live in :data:`POLICIES`, a plain registry filled by :func:`register_policy`:

============  =====================================================  ==================================
name          views per image (in order)                              fields it reads
============  =====================================================  ==================================
none          centre crop                                             crop_size
hflip         centre crop, its horizontal mirror                      crop_size
vflip         centre crop, its vertical mirror                        crop_size
rot90         centre crop rotated by 0, 90, 180, 270 degrees          crop_size
d4            rot90's four views, then the same four of the           crop_size
              horizontally mirrored centre crop (the dihedral group)
five_crop     tl, tr, bl, br, centre                                  crop_size
ten_crop      five_crop, then five_crop of the image mirrored         crop_size, flip
              along ``flip`` (exactly ``torchvision`` ``ten_crop``)
multiscale    for scale, for square, for flip, for crop               crop_size, scales, squares, crops,
                                                                      flips
============  =====================================================  ==================================

Names are honest: ``hflip`` always mirrors left-right and ``vflip`` top-bottom. ``ten_crop`` with
``flip: none`` makes exactly ``five_crop``'s views; :func:`canonical_policy` maps it to ``five_crop`` so
that one set of views never appears twice under two names.

>>> policy = create_policy("ten_crop", crop_size=28)
>>> make_views(torch.zeros(4, 3, 32, 32), policy).shape
torch.Size([40, 3, 28, 28])
>>> views_per_image(policy)
10
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from pipeline.core.errors import ConfigError
from pipeline.core.reduce import reduce_probs
from pipeline.predict.crops import crop as _crop
from pipeline.predict.crops import flip as _flip
from pipeline.predict.crops import multiscale_views

__all__ = [
    "CROPS",
    "FLIPS",
    "POLICIES",
    "PolicySpec",
    "TTAPolicy",
    "canonical_policy",
    "create_policy",
    "list_policies",
    "make_views",
    "merge_views",
    "predict_with_tta",
    "register_policy",
    "views_per_image",
]

log = logging.getLogger(__name__)

FLIPS = ("horizontal", "vertical", "none")
"""Accepted values of ``flip`` and of the entries of ``flips``."""

CROPS = ("tl", "tr", "bl", "br", "center", "full")
"""Accepted entries of ``crops``; ``full`` is the whole square resized to ``crop_size``."""

_FIVE = ("tl", "tr", "bl", "br", "center")  # torchvision's five_crop order
_SQUARES = (1, 3)
_MAX_RELATIVE_SCALE = 8.0  # a float above this is pixels written as a float (32.0), not a relative scale


@dataclass(frozen=True)
class TTAPolicy:
    """A validated TTA policy; build it with :func:`create_policy`.

    Fields a policy does not read (see the module table) are ignored, so one flat config
    (``conf/tta/*.yaml``) can describe every policy.

    Attributes:
        name: Registered policy name (see :func:`list_policies`).
        crop_size: Side C of the square crops the network sees; None: each member's recorded crop
            (prediction resolves it per member with :meth:`at_crop`).
        flip: Mirror axis of ``ten_crop``: ``horizontal``, ``vertical`` or ``none`` (``hflip`` only accepts
            ``horizontal``: use ``vflip`` for vertical mirrors and ``none`` for a single view).
        scales: ``multiscale`` only: shorter-side sizes the batch is resized to, each >= ``crop_size``: an
            integer is pixels; a float is relative to the member's image size S (``1.0`` is S, ``1.25`` is
            1.25·S rounded), so one list serves members trained at different sizes (:meth:`at_crop`).
        squares: ``multiscale`` only: 1 (centre square) or 3 (both ends and centre of the longer side).
        crops: ``multiscale`` only: crops taken from each square, a subset of :data:`CROPS`.
        flips: ``multiscale`` only: mirrors applied to each square, a subset of :data:`FLIPS`.
    """

    name: str
    crop_size: int | None
    flip: str = "horizontal"
    scales: tuple[int | float, ...] = ()
    squares: int = 1
    crops: tuple[str, ...] = ("center",)
    flips: tuple[str, ...] = ("none",)

    def __post_init__(self) -> None:
        # Hydra hands over lists; frozen dataclasses need object.__setattr__ to store tuples.
        for key in ("scales", "crops", "flips"):
            object.__setattr__(self, key, tuple(getattr(self, key)))
        _check_choice("tta.name", self.name, tuple(POLICIES))
        _check_choice("tta.flip", self.flip, FLIPS)
        if self.crop_size is not None and (not isinstance(self.crop_size, int) or self.crop_size < 1):
            raise ConfigError(f"tta.crop_size must be a positive integer or null; got {self.crop_size!r}")
        if self.name == "hflip" and self.flip != "horizontal":
            raise ConfigError(
                f"tta.flip={self.flip!r} with policy hflip: hflip always mirrors left-right. Use tta=vflip for "
                "top-bottom mirrors, or tta=none for a single view (neither flip preserves labels for digits or text)"
            )
        if self.name == "multiscale":
            self._check_multiscale()

    def at_crop(self, crop_size: int, image_size: int | None = None) -> TTAPolicy:
        """This policy at ``crop_size``, relative multiscale scales turned into pixels of ``image_size``.

        Validated again: every scale must still be at least the crop.
        """
        relative = [s for s in self.scales if isinstance(s, float)]
        if relative and image_size is None:
            raise ValueError(f"tta.scales {relative} are relative to the member's image size, which was not given")
        scales = tuple(round(s * image_size) if isinstance(s, float) and image_size else s for s in self.scales)
        return replace(self, crop_size=crop_size, scales=scales)

    def _check_multiscale(self) -> None:
        for key, values, accepted in (("tta.crops", self.crops, CROPS), ("tta.flips", self.flips, FLIPS)):
            if not values:
                raise ConfigError(f"{key} must list at least one of {list(accepted)}")
            for value in values:
                _check_choice(key, value, accepted)
        _check_choice("tta.squares", self.squares, _SQUARES)
        if not self.scales:
            raise ConfigError("tta.scales must list at least one shorter-side size for the multiscale policy")
        wrong = [s for s in self.scales if isinstance(s, bool) or not isinstance(s, (int, float))
                 or s <= 0 or (isinstance(s, float) and s > _MAX_RELATIVE_SCALE)]
        if wrong:
            raise ConfigError(
                f"tta.scales {wrong}: each scale is a size in pixels (an integer such as 36) or a float in "
                f"(0, {_MAX_RELATIVE_SCALE}] times the member's image size (1.0 is the image size, 1.15 is 15% larger)"
            )
        small = [s for s in self.scales if isinstance(s, int) and self.crop_size is not None and s < self.crop_size]
        if small:
            raise ConfigError(
                f"tta.scales {small} are smaller than tta.crop_size {self.crop_size} (or the member's recorded "
                "crop when tta.crop_size is null); every scale must be at least the crop size"
            )


def _check_choice(key: str, value: Any, accepted: tuple[Any, ...]) -> None:
    if value not in accepted:
        raise ConfigError(f"Unknown {key} {value!r}; accepted values: {list(accepted)}")


ViewFn = Callable[[Tensor, TTAPolicy], list[Tensor]]
CountFn = Callable[[TTAPolicy], int]


@dataclass(frozen=True)
class PolicySpec:
    """Registry entry: how a policy makes its views and how many it makes.

    Attributes:
        views: ``views(batch, policy)`` returning V tensors ``[B, C, c, c]`` in view order.
        count: ``count(policy)``, the V that ``views`` returns, known without running it.
    """

    views: ViewFn
    count: CountFn


POLICIES: dict[str, PolicySpec] = {}


def register_policy(name: str, count: CountFn) -> Callable[[ViewFn], ViewFn]:
    """Decorator that adds a view function to :data:`POLICIES` under ``name``.

    Args:
        name: Registry key; must be new.
        count: Number of views per image for a given policy.

    Returns:
        A decorator returning the function unchanged.
    """

    def decorator(fn: ViewFn) -> ViewFn:
        if name in POLICIES:
            raise ValueError(f"TTA policy {name!r} is already registered")
        POLICIES[name] = PolicySpec(views=fn, count=count)
        return fn

    return decorator


def list_policies() -> list[str]:
    """Names of the registered policies, in registration order."""
    return list(POLICIES)


# ---------------------------------------------------------------------------------------------
# Helpers over the whole-batch primitives of pipeline.predict.crops.


def _side(policy: TTAPolicy) -> int:
    assert policy.crop_size is not None, "make_views checks the crop size first"
    return policy.crop_size


def _n_mirrors(axis: str) -> int:
    return 1 if axis == "none" else 2


# ---------------------------------------------------------------------------------------------
# Registered policies.


@register_policy("none", count=lambda p: 1)
def _none_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    return [_crop(batch, _side(policy), "center")]


def _mirror_pair(batch: Tensor, policy: TTAPolicy, axis: str) -> list[Tensor]:
    centre = _crop(batch, _side(policy), "center")
    # The mirror of the centre crop (not the centre crop of the mirror) so the pair is exactly
    # label-symmetric even when S - C is odd.
    return [centre, _flip(centre, axis)]


@register_policy("hflip", count=lambda p: 2)
def _hflip_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    return _mirror_pair(batch, policy, "horizontal")


@register_policy("vflip", count=lambda p: 2)
def _vflip_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    return _mirror_pair(batch, policy, "vertical")


@register_policy("rot90", count=lambda p: 4)
def _rot90_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    centre = _crop(batch, _side(policy), "center")
    return [torch.rot90(centre, k, dims=(-2, -1)) for k in range(4)]


@register_policy("d4", count=lambda p: 8)
def _d4_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    centre = _crop(batch, _side(policy), "center")
    return [torch.rot90(image, k, dims=(-2, -1)) for image in (centre, centre.flip(-1)) for k in range(4)]


@register_policy("multiscale", count=lambda p: len(p.scales) * p.squares * len(p.crops) * len(p.flips))
def _multiscale_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    scales = [int(s) for s in policy.scales]  # pixels: make_views refuses unresolved relative scales
    return multiscale_views(batch, scales, policy.squares, policy.crops, policy.flips, _side(policy))


@register_policy("five_crop", count=lambda p: len(_FIVE))
def _five_crop_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    return [_crop(batch, _side(policy), where) for where in _FIVE]


@register_policy("ten_crop", count=lambda p: len(_FIVE) * _n_mirrors(p.flip))
def _ten_crop_views(batch: Tensor, policy: TTAPolicy) -> list[Tensor]:
    views = _five_crop_views(batch, policy)
    if policy.flip != "none":
        # Crops of the mirrored image, as torchvision does, not mirrors of the crops: they differ
        # when S - C is odd, and we promise bitwise equality with torchvision.
        views += _five_crop_views(_flip(batch, policy.flip), policy)
    return views


# ---------------------------------------------------------------------------------------------
# Public API.


def create_policy(name: str, crop_size: int | None = None, **kwargs: Any) -> TTAPolicy:
    """Build and validate a TTA policy from flat values (e.g. the ``tta`` config minus run keys).

    Args:
        name: Registered policy name, see :func:`list_policies`.
        crop_size: Side C of the crops; None: each member's recorded crop size.
        **kwargs: Other :class:`TTAPolicy` fields (``flip``, ``scales``, ``squares``, ``crops``,
            ``flips``); lists are accepted.

    Returns:
        The frozen policy.

    Raises:
        ConfigError: Unknown policy name, flip or crop value, or scales smaller than ``crop_size`` (a ValueError).
        TypeError: A keyword that is not a policy field.

    >>> create_policy("multiscale", 24, scales=[32, 40], squares=3, crops=["center", "full"]).name
    'multiscale'
    """
    accepted = [f.name for f in fields(TTAPolicy)]
    unknown = sorted(set(kwargs) - set(accepted))
    if unknown:
        raise TypeError(f"Unknown TTA policy field(s) {unknown}; accepted: {accepted}")
    policy = TTAPolicy(name=name, crop_size=crop_size, **kwargs)
    log.info("Instantiating TTA policy <%s> (%d views per image)", name, views_per_image(policy))
    return policy


def canonical_policy(policy: TTAPolicy) -> TTAPolicy:
    """The policy under the name of its views: ``ten_crop`` with ``flip: none`` is ``five_crop``.

    Prediction keys policies by their canonical form, so the same views are never predicted and
    reported twice under two names.
    """
    if policy.name == "ten_crop" and policy.flip == "none":
        log.info("tta: ten_crop with flip none makes five_crop's 5 views; it is predicted and reported as five_crop")
        return TTAPolicy(name="five_crop", crop_size=policy.crop_size)
    return policy


def views_per_image(policy: TTAPolicy) -> int:
    """Number of views V (forward passes per image) that ``policy`` makes."""
    return POLICIES[policy.name].count(policy)


def make_views(batch: Tensor, policy: TTAPolicy) -> Tensor:
    """Make the views of every image in the batch, image-major.

    Args:
        batch: ``[B, C, H, W]`` float images, already resized and normalised.
        policy: The policy.

    Returns:
        ``[B * V, C, crop_size, crop_size]``; row ``b * V + v`` is view ``v`` of image ``b``.

    Raises:
        ValueError: The batch is not 4-D, or the crop is larger than the image.
    """
    if batch.ndim != 4:
        raise ValueError(f"make_views expects a [B, C, H, W] batch; got shape {tuple(batch.shape)}")
    if policy.crop_size is None or any(isinstance(s, float) for s in policy.scales):
        raise ValueError(f"TTA policy {policy.name!r} has no crop size or relative scales; resolve it for a member "
                         "with policy.at_crop(crop_size, image_size)")
    height, width = batch.shape[-2:]
    if policy.name != "multiscale" and policy.crop_size > min(height, width):
        raise ValueError(
            f"TTA crop size {policy.crop_size} (tta.crop_size, or the member's recorded crop when null) is larger "
            f"than the {height}x{width} image (the member's image size); lower the crop size"
        )
    views = POLICIES[policy.name].views(batch, policy)
    return torch.stack(views, dim=1).flatten(0, 1)


def merge_views(probs: Tensor, n_views: int, method: str = "prob_mean", normalize: bool = True) -> Tensor:
    """Merge per-view outputs ``[B * V, K]`` (image-major, :func:`make_views` order) into ``[B, K]`` with ``method``
    (one of :data:`pipeline.core.reduce.REDUCTIONS`); rows renormalised to sum to one when ``normalize`` is on
    (softmax outputs; off for multi-label probabilities and values)."""
    if probs.ndim != 2 or n_views < 1 or probs.shape[0] % n_views:
        raise ValueError(
            f"merge_views expects [B * V, K] probabilities with V = {n_views}; got shape {tuple(probs.shape)}"
        )
    return reduce_probs(probs.reshape(-1, n_views, probs.shape[1]), dim=1, method=method, normalize=normalize)


def predict_with_tta(
    model: nn.Module,
    batch: Tensor,
    policy: TTAPolicy,
    chunk_size: int | None = None,
    method: str = "prob_mean",
    head: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Class probabilities ``[B, K]`` of ``model`` on ``batch``, averaged over the policy's views.

    The model's train/eval mode is left to the caller. With ``chunk_size`` set, views are built for
    as many whole images as fit into ``chunk_size`` views (at least one image) and run through the
    model at most ``chunk_size`` at a time, so memory is bounded by the chunk, not by B * V.

    Args:
        model: Maps ``[N, C, c, c]`` to logits ``[N, K]``.
        batch: ``[B, C, H, W]`` normalised images.
        policy: The TTA policy.
        chunk_size: Most views per forward pass; None runs all B * V views at once.
        method: Reduction over views, one of :data:`pipeline.core.reduce.REDUCTIONS`.
        head: Logits → outputs (a member's :class:`pipeline.models.heads.OutputHead`); None: softmax. Outputs
            that are not softmax probabilities (multi-label, values) are merged without renormalising.

    Returns:
        ``[B, K]`` float32 (or wider) probabilities, or the head's outputs.
    """
    n_views = views_per_image(policy)
    if chunk_size is not None and chunk_size < 1:
        raise ConfigError(f"tta.chunk_size must be a positive integer or null; got {chunk_size}")
    step = chunk_size or max(1, n_views * len(batch))
    images_per_group = max(1, step // n_views)
    merged = []
    with torch.no_grad():
        for group in batch.split(images_per_group):
            views = make_views(group, policy)
            logits = torch.cat([model(chunk) for chunk in views.split(step)])
            # Softmax in float32 at least: half-precision logits lose the small probabilities
            # that geo_mean and logit_mean depend on.
            if head is None:
                probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
                merged.append(merge_views(probs, n_views, method))
            else:
                merged.append(merge_views(head(logits), n_views, method, getattr(head, "rows_sum_to_one", True)))
    return torch.cat(merged)
