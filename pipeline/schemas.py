"""Structured-config schemas for our own settings, registered in Hydra's ConfigStore.

Each YAML in a group starts with ``defaults: [base_<group>, _self_]``, so Hydra checks its keys
against the dataclass here: a typo such as ``tta.flipp`` fails at composition time, not deep inside
prediction. Values (e.g. an unknown policy name) are checked by the library when the plain values
reach it (:func:`pipeline.tta.create_policy`, :func:`pipeline.ensemble.resolve_weights`).

The TTA and ensemble schemas come first; other schemas may be appended below
:func:`register_configs`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

__all__ = ["EnsembleConfig", "TTAConfig", "register_configs"]


@dataclass
class TTAConfig:
    """The ``tta`` group: a :class:`pipeline.tta.TTAPolicy` plus how its views are run and merged.

    Attributes:
        name: Policy name: none, hflip, five_crop, ten_crop or multiscale.
        crop_size: C; the YAMLs use ``${data.crop_size}``.
        flip: Mirror axis for hflip/ten_crop: horizontal, vertical or none.
        reduce: Reduction over views, one of ``pipeline.ensemble.REDUCTIONS``.
        chunk_size: Most views per forward pass; null runs a whole batch's views at once.
        scales: multiscale: shorter-side sizes, each at least ``crop_size``.
        squares: multiscale: 1 or 3 squares along the longer side.
        crops: multiscale: subset of tl, tr, bl, br, center, full.
        flips: multiscale: subset of none, horizontal, vertical.
    """

    name: str = "ten_crop"
    crop_size: int = MISSING
    flip: str = "horizontal"
    reduce: str = "prob_mean"
    chunk_size: int | None = None
    scales: list[int] = field(default_factory=list)
    squares: int = 1
    crops: list[str] = field(default_factory=lambda: ["center"])
    flips: list[str] = field(default_factory=lambda: ["none"])


@dataclass
class EnsembleConfig:
    """The ``ensemble`` group: how member predictions are merged.

    Attributes:
        method: Reduction over members, one of ``pipeline.ensemble.REDUCTIONS``.
        weights: equal, given (``given_weights``) or caruana (fitted on OOF/holdout predictions).
        given_weights: One non-negative number per member, for ``weights: given``.
        caruana_rounds: Greedy rounds of Caruana selection, for ``weights: caruana``.
        fit_metric: Metric the Caruana weights are fitted for. Log loss by default: greedy selection
            stalls on a step metric such as accuracy even when that is the competition metric.
    """

    method: str = "prob_mean"
    weights: str = "equal"
    given_weights: list[float] | None = None
    caruana_rounds: int = 50
    fit_metric: str = "log_loss"


def register_configs() -> None:
    """Store the schemas as ``tta/base_tta`` and ``ensemble/base_ensemble`` (safe to call twice)."""
    cs = ConfigStore.instance()
    cs.store(group="tta", name="base_tta", node=TTAConfig)
    cs.store(group="ensemble", name="base_ensemble", node=EnsembleConfig)
