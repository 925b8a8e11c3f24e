"""What one member's training needs, as plain typed objects: :class:`TrainSpec`.

The command line builds a ``TrainSpec`` from the composed config (instantiated optimizer, scheduler,
augmentations and trainer); a notebook or a test builds one directly. Nothing here imports torch.

>>> spec = TrainSpec(member_dir=Path("outputs/mycomp/main/resnet18-s0-f0"),  # doctest: +SKIP
...                  data=DataSpec(root="data/mycomp", n_folds=5, fold=0), model=ModelSpec(name="resnet18"),
...                  transforms=my_transforms, optimizer=partial(torch.optim.AdamW, lr=1e-3))
>>> train_member(spec)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.core.tracking import LoggerSpec
from pipeline.data.spec import DataSpec
from pipeline.member.teacher import TeacherSpec
from pipeline.models.spec import ModelSpec

if TYPE_CHECKING:
    from pipeline.member.teacher import TeacherBuilder

__all__ = ["TrainSpec", "TransformFactory", "MixupSpec", "LOSS_NAMES"]

TransformFactory = Callable[[list[float], list[float]], tuple[Any, Any]]
"""``(mean, std) → (train pipeline, eval pipeline)``: albumentations pipelines built once the model's
normalisation is known. The eval pipeline resizes to S×S and returns ``uint8`` (see
:mod:`pipeline.data.augment`)."""


LOSS_NAMES = ("auto", "cross_entropy", "soft_target_cross_entropy", "bce", "mse", "huber", "bce_bounded")
"""The training losses ``loss`` accepts: ``auto`` picks the task's usual one (:func:`pipeline.models.heads.resolve_loss`);
``soft_target_cross_entropy`` takes the soft targets Mixup/CutMix make; ``bce`` trains multi-label members, and
``mse``, ``huber`` and ``bce_bounded`` regression (``mse`` and ``huber`` ordinal) members."""


@dataclass
class MixupSpec:
    """Mixup/CutMix (``timm.data.Mixup``), from the ``aug`` config's keys of the same names; off while both alphas are 0.

    Attributes:
        mixup: Mixup alpha (λ ~ Beta(α, α)); 0 turns Mixup off. timm's ImageNet recipe: 0.8.
        cutmix: CutMix alpha; 0 turns CutMix off. timm's recipe: 1.0.
        mixup_prob: Probability that a batch (or pair, or image: ``mixup_mode``) is mixed.
        mixup_switch_prob: With both on, the probability of CutMix instead of Mixup.
        mixup_mode: ``batch`` (one λ per batch), ``pair`` or ``elem``.
    """

    mixup: float = 0.0
    cutmix: float = 0.0
    mixup_prob: float = 1.0
    mixup_switch_prob: float = 0.5
    mixup_mode: str = "batch"

    @property
    def enabled(self) -> bool:
        """Whether any image is mixed (an alpha above 0 and a probability above 0)."""
        return (self.mixup > 0 or self.cutmix > 0) and self.mixup_prob > 0


@dataclass
class TrainSpec:
    """One member: where it lands, what it trains on, and how.

    Attributes:
        member_dir: The member folder to write (its parent is the sweep folder, holding ``folds.csv``).
        data: The competition's files, sizes and split.
        model: The network.
        transforms: Builds the train and eval pipelines from the resolved mean/std.
        optimizer: ``functools.partial`` of a torch optimizer, ``lr`` set; None is AdamW(lr=1e-3).
        scheduler: ``functools.partial`` of an LR scheduler, or None.
        trainer: ``functools.partial`` of ``pytorch_lightning.Trainer`` with its settings; the library adds
            callbacks, the logger and ``default_root_dir``. None is ``Trainer(max_epochs=10)``.
        logger: Experiment tracking (W&B offline by default in the configs; ``kind="none"`` here).
        seed: Seed of the weights, the augmentation and the data order.
        label_smoothing: Label smoothing of the training targets (through Mixup's ``label_smoothing`` when mixing).
        loss: The training loss, one of :data:`LOSS_NAMES`; validation always scores hard labels.
        mixup: Mixup/CutMix settings; None (or both alphas 0) trains on the batches as they are.
        monitor: Validation metric that picks the best checkpoint.
        monitor_mode: ``min`` or ``max``.
        early_stopping_patience: Epochs without improvement before stopping; None disables it.
        overwrite: Retrain a member whose folder holds a different config.
        aug_mean: Normalisation mean override; None takes the timm model's.
        aug_std: Normalisation std override.
        name: Member name; None uses the folder's name.
        sweep: ``<experiment>/<sweep>``, the W&B group.
        config: The resolved config as plain containers, saved as ``config.yaml`` and logged to W&B; its
            member-defining keys make the member's config hash. None records the specs themselves.
        relaunch: Context manager factory that makes this process's command line start one more rank of
            this member (DDP); the command line provides it.
        callbacks: Lightning callbacks (the command line instantiates the ``callbacks/`` group). They must
            include the member folder's ``ModelCheckpoint`` (``<member_dir>/checkpoints``, ``filename="best"``,
            ``save_last=True``); None gives that checkpoint and a progress bar.
        snapshots: Keep this many snapshot members from the run (0: none): the learning rate follows a
            cosine schedule with ``snapshots`` warm restarts, and each cycle's last weights become a sibling
            member folder ``<model>-s<seed>-snap<i>-<fold>`` (see :mod:`pipeline.train.snapshots`).
        teacher: Train from a finished ensemble (pseudo-labels or distillation, :mod:`pipeline.train.teacher`);
            None: from the labels alone.
        teacher_builder: Builds the teacher's targets (the command line passes
            :func:`pipeline.predict.teacher.build_teacher_targets`); needed with ``teacher``.
    """

    member_dir: Path
    data: DataSpec
    model: ModelSpec
    transforms: TransformFactory
    optimizer: Callable[..., Any] | None = None
    scheduler: Callable[..., Any] | None = None
    trainer: Callable[..., Any] | None = None
    logger: LoggerSpec = field(default_factory=lambda: LoggerSpec(kind="none"))
    seed: int = 0
    label_smoothing: float = 0.0
    loss: str = "auto"
    mixup: MixupSpec | None = None
    monitor: str = "val/log_loss"
    monitor_mode: str = "min"
    early_stopping_patience: int | None = None
    overwrite: bool = False
    aug_mean: list[float] | None = None
    aug_std: list[float] | None = None
    name: str | None = None
    sweep: str = ""
    config: dict[str, Any] | None = None
    relaunch: Callable[[Path], AbstractContextManager[None]] | None = None
    callbacks: list[Any] | None = None
    snapshots: int = 0
    teacher: TeacherSpec | None = None
    teacher_builder: TeacherBuilder | None = None

    def __post_init__(self) -> None:
        # A fixed-input-size model (ViT...) is built for the member's crop size; the manifest records it too.
        from pipeline.models.factory import sized_kwargs

        kwargs = sized_kwargs(self.model.name, int(self.data.crop_size), self.model.kwargs)
        if kwargs != (self.model.kwargs or {}):
            self.model = replace(self.model, kwargs=kwargs)

    @property
    def member_name(self) -> str:
        """The member's name: ``name``, or the folder's name."""
        return self.name or Path(self.member_dir).name

    @property
    def trainer_settings(self) -> dict[str, Any]:
        """The keyword arguments ``trainer`` was configured with."""
        return dict(getattr(self.trainer, "keywords", None) or {})
