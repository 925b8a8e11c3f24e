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
from typing import Any

from pipeline.core.tracking import LoggerSpec
from pipeline.data.spec import DataSpec
from pipeline.models.spec import ModelSpec

__all__ = ["TrainSpec", "TransformFactory"]

TransformFactory = Callable[[list[float], list[float]], tuple[Any, Any]]
"""``(mean, std) → (train pipeline, eval pipeline)``: albumentations pipelines built once the model's
normalisation is known. The eval pipeline resizes to S×S and returns ``uint8`` (see
:mod:`pipeline.data.augment`)."""


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
        label_smoothing: Cross-entropy label smoothing.
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
