"""The predict stage's settings as plain dataclasses: the ``tta`` and ``ensemble`` groups, and the run options.

The ``tta`` and ``ensemble`` YAMLs start with ``defaults: [base_<group>, _self_]``, so Hydra checks their
keys against :class:`TTASpec` and :class:`EnsembleSpec` (registered by :func:`pipeline.cli.config.register`):
a typo such as ``tta.flipp`` fails at composition time, not deep inside prediction. Values (an unknown
policy name, say) are checked by the library when they reach it (:func:`pipeline.predict.tta.create_policy`,
:func:`pipeline.predict.ensemble.resolve_weights`). Nothing here imports torch.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pipeline.core.errors import ConfigError

__all__ = ["COMBINES", "ENSEMBLE_CANDIDATES", "MODES", "TTASpec", "EnsembleSpec", "PredictOptions", "BudgetSpec",
           "check_budget", "check_margin", "crop_override_allowed"]

COMBINES = ("weighted", "rank", "stack", "auto")
"""Accepted ``ensemble.combine`` values (see :mod:`pipeline.predict.merge`)."""

ENSEMBLE_CANDIDATES = ("mean", "caruana", "bagged", "optimize", "stack", "rank", "temperature")
"""Accepted ``ensemble.candidates`` of ``combine: auto`` (see :mod:`pipeline.predict.choose`)."""

MODES = ("full", "submit")
"""``mode`` values: ``full`` reads the training images for OOF predictions under every policy; ``submit``
(inference only, offline) needs only the members and the test images and fits weights on cached OOF."""


@dataclass
class TTASpec:
    """The ``tta`` group: a :class:`pipeline.predict.tta.TTAPolicy` plus how its views are run and merged.

    Attributes:
        name: Policy name: none, hflip, vflip, rot90, d4, five_crop, ten_crop, multiscale, or ``auto`` (a policy
            per model, chosen from ``candidates`` on the OOF rows).
        crop_size: C. Null (the default): every member is cropped at its own recorded crop size. A number is
            an override: a member whose recorded crop differs is an error unless it is listed in
            ``allow_crop_override``.
        allow_crop_override: Members allowed to be cropped at ``crop_size`` although they were trained at
            another crop (e.g. FixRes-style testing at a larger crop): member names, model names (the
            member name without its fold part) or shell patterns such as ``"resnet*"`` or ``"*"``.
        flip: Mirror axis for ten_crop: horizontal, vertical or none (hflip is always horizontal, vflip vertical).
        reduce: Reduction over views, one of ``pipeline.core.reduce.REDUCTIONS``.
        chunk_size: Most views per forward pass; null runs a whole batch's views at once.
        scales: multiscale: shorter-side sizes, each at least ``crop_size``: integers are pixels, floats are
            relative to each member's image size (``[1.0, 1.15, 1.3]``), so one list fits members of any size.
        squares: multiscale: 1 or 3 squares along the longer side.
        crops: multiscale: subset of tl, tr, bl, br, center, full.
        flips: multiscale: subset of none, horizontal, vertical.
        candidates: auto: the policies tried per model, each ``{name: ..., <policy field>: ...}``.
        max_passes: auto: most forward passes per image a model's chosen policy may cost (null: no budget).
        margin: auto: a policy replaces ``none`` only when it beats it beyond noise: the lower ``margin``
            quantile of the paired bootstrap of its log-loss gain on the OOF rows is above zero, and it is
            better on the metric. null: the best OOF score wins, however small the gain.
    """

    name: str = "ten_crop"
    crop_size: int | None = None
    allow_crop_override: list[str] = field(default_factory=list)
    flip: str = "horizontal"
    reduce: str = "prob_mean"
    chunk_size: int | None = None
    scales: list[Any] = field(default_factory=list)  # int | float (OmegaConf has no unions of primitives)
    squares: int = 1
    crops: list[str] = field(default_factory=lambda: ["center"])
    flips: list[str] = field(default_factory=lambda: ["none"])
    candidates: list[dict[str, Any]] = field(default_factory=list)
    max_passes: int | None = None
    margin: float | None = 0.05

    def policy_fields(self) -> dict[str, Any]:
        """The fields that define the policy's views (what :func:`~pipeline.predict.tta.create_policy` takes)."""
        return {"flip": self.flip, "scales": list(self.scales), "squares": self.squares, "crops": list(self.crops),
                "flips": list(self.flips)}


@dataclass
class EnsembleSpec:
    """The ``ensemble`` group: how member predictions are merged.

    Attributes:
        method: Reduction over members, one of ``pipeline.core.reduce.REDUCTIONS``.
        weights: equal, given (``given_weights``), caruana (fitted on OOF/holdout predictions) or optimize
            (simplex weights minimising the log loss of the merge, scipy).
        given_weights: One non-negative number per member, for ``weights: given``.
        caruana_rounds: Greedy rounds of Caruana selection, for ``weights: caruana``.
        fit_metric: Metric the Caruana weights are fitted for (any registered name). Log loss by default:
            greedy selection stalls on a step metric such as accuracy even when that is the competition
            metric. None: the competition metric (``metric``).
        combine: How models are combined: ``weighted`` (``method`` with ``weights``), ``rank`` (per-class rank
            averaging with ``weights``), ``stack`` (logistic regression on OOF log-probabilities) or ``auto``
            (the best of ``candidates`` by a cross-fitted score, the best single model without TTA included).
        bags: caruana: bagged selection (Caruana et al. 2004), one selection per bag on a random subset of models.
        bag_fraction: caruana: the share of models each bag draws (at least one).
        seed: Seed of the bags, of the stacking folds and of the cross-fitting parts.
        temperature: Fit one temperature per model on its OOF rows (log loss) and apply it before merging.
        stack_c: stack: inverse L2 strength of the logistic regression.
        candidates: auto: the methods compared (mean, caruana, optimize, stack, rank); the best single model
            without TTA is always compared too.
        cross_fit_parts: Parts of the OOF rows each fit is scored out of sample on (the one split of
            :mod:`pipeline.predict.fitting`, seeded by ``seed``).
        margin: auto: a method (or the best single model's TTA) replaces the best single model without TTA only
            when its cross-fitted predictions beat it beyond noise: the lower ``margin`` quantile of the paired
            bootstrap of the log-loss gain is above zero, and it is better on the metric. null: the best
            cross-fitted score wins, however small the gain.
    """

    method: str = "prob_mean"
    weights: str = "equal"
    given_weights: list[float] | None = None
    caruana_rounds: int = 50
    fit_metric: str | None = "log_loss"
    combine: str = "weighted"
    bags: int = 1
    bag_fraction: float = 0.5
    seed: int = 0
    temperature: bool = False
    stack_c: float = 1.0
    candidates: list[str] = field(default_factory=lambda: ["mean", "caruana", "optimize", "stack", "rank"])
    cross_fit_parts: int = 5
    margin: float | None = 0.05


@dataclass
class PredictOptions:
    """How to run the models (the top-level keys of ``conf/predict.yaml``).

    Attributes:
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``, ``cuda:<index>`` or ``mps``.
        precision: ``32``, ``bf16`` or ``fp16`` (autocast); checked on the device before anything runs.
        channels_last: Run the networks in channels-last memory format.
        compile: ``torch.compile`` each network.
        batch_size: Images decoded per batch; every member and view uses the same batch.
        num_workers: DataLoader worker processes (decoding and resizing).
        chunk_size: Most views per forward pass (bounds memory).
        member_chunk_size: Per member or model override of ``chunk_size``.
        view_reduce: Reduction over TTA views (``tta.reduce``).
        mode: ``full`` or ``submit`` (see :data:`MODES`).
        test_all_policies: Also predict the test set under every report policy (they are always predicted on
            the OOF rows, which is what the report scores); off: the test set costs the submission policy only.
        prediction_cache_dir: Where per-member prediction files are cached (``<dir>/<member>/``); null: each
            member's ``predictions/`` folder when writable, else ``<predict_dir>/prediction_cache/``.
        allow_crop_override: ``tta.allow_crop_override`` (see :class:`TTASpec`).
        image_cache_dir: The resized-image cache for prediction (``data.cache_dir`` of the predict config);
            the cache a member recorded at training time is never used.
        image_cache_size: Side of those cached images (``data.cache_size``); null: each member's image size.
        checkpoint: Which weights predict every member, OOF rows and test alike: ``best`` (the file
            ``member.json`` names, chosen by the monitor on the OOF rows themselves) or ``last``
            (``checkpoints/last.ckpt``, the end of training; see :func:`pipeline.member.folder.at_checkpoint`).
    """

    device: str = "auto"
    precision: str = "32"
    channels_last: bool = True
    compile: bool = False
    batch_size: int = 256
    num_workers: int = 2
    chunk_size: int | None = 512
    member_chunk_size: dict[str, int] = field(default_factory=dict)
    view_reduce: str = "prob_mean"
    mode: str = "full"
    test_all_policies: bool = False
    prediction_cache_dir: str | None = None
    allow_crop_override: list[str] = field(default_factory=list)
    image_cache_dir: str | None = None
    image_cache_size: int | None = None
    checkpoint: str = "best"

    def torch_device(self) -> Any:
        """The ``torch.device`` to run on (``auto``: CUDA when available, else the CPU)."""
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


@dataclass
class BudgetSpec:
    """The ``budget`` keys of ``conf/predict.yaml``: inference within a time limit (:mod:`pipeline.predict.budget`).

    Attributes:
        seconds: Seconds the whole test set may take on the device at hand (model compute). null: no budget.
        per_1000: Or seconds per 1,000 test images. At most one of the two is set.
        probe_images: Test images a quick timing runs on, for a model and policy whose recorded timing is
            missing or was measured on another device (0: no timing; such costs stay estimates).
    """

    seconds: float | None = None
    per_1000: float | None = None
    probe_images: int = 32

    @property
    def active(self) -> bool:
        """Whether a budget is set."""
        return self.seconds is not None or self.per_1000 is not None

    def limit(self, n_images: int) -> float:
        """The budget in seconds for ``n_images`` test images."""
        return float(self.seconds) if self.seconds is not None else float(self.per_1000 or 0) * n_images / 1000.0

    def setting(self) -> str:
        """The key and value as the user wrote them (``budget.seconds=60``), for messages."""
        return f"budget.seconds={self.seconds}" if self.seconds is not None else f"budget.per_1000={self.per_1000}"


def check_budget(seconds: Any, per_1000: Any, probe_images: Any = 32, task: Any = None) -> None:
    """Refuse a budget that is not a positive finite number of seconds, or both keys set, naming the key; and a
    budget for members of a task other than class probabilities (``task``: its plans merge class probabilities)."""
    if task is not None and not task.softmax and (seconds is not None or per_1000 is not None):
        raise ConfigError(f"budget.seconds / budget.per_1000: a time budget plans merges of class probabilities, and "
                          f"these members are a {task.kind} task; set budget.seconds=null and budget.per_1000=null.")
    for key, value in (("budget.seconds", seconds), ("budget.per_1000", per_1000)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise ConfigError(f"{key}={value!r}: a time budget must be a positive number of seconds, e.g. {key}=600 "
                              "(or null: no budget).")
    if seconds is not None and per_1000 is not None:
        raise ConfigError(f"budget.seconds={seconds} and budget.per_1000={per_1000} are both set; set one of them "
                          "(the whole test set, or seconds per 1,000 images).")
    if isinstance(probe_images, bool) or not isinstance(probe_images, int) or probe_images < 0:
        raise ConfigError(f"budget.probe_images={probe_images!r}: accepted: an integer ≥ 0 (0: no quick timing).")


def check_margin(key: str, value: Any) -> None:
    """Refuse a margin setting that is neither null nor a one-sided miss rate in (0, 0.5), naming ``key``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 0.5):
        raise ConfigError(f"{key} must be null (the best score wins) or a one-sided miss rate in (0, 0.5), e.g. 0.05; "
                          f"got {value!r}")


def crop_override_allowed(name: str, model: str, patterns: Sequence[str]) -> bool:
    """Whether a member (its ``name`` or ``model`` name) matches ``tta.allow_crop_override``."""
    return any(fnmatch.fnmatchcase(name, p) or (model and fnmatch.fnmatchcase(model, p)) for p in patterns)
