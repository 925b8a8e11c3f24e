"""The member's data as a ``LightningDataModule``: :class:`MemberDataModule`.

``setup`` builds the train and validation datasets of one fold (or the holdout) from the checked table
and the sweep's folds; the loaders seed the augmentation exactly as a member always has (the pipeline's
own generator from ``seed``, and one distinct stream per loader worker), so a member trained through the
data module is byte-identical to one trained before it existed.
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import ConcatDataset, DataLoader

from pipeline.data.augment import resize_settings
from pipeline.data.cache import cache_for_spec
from pipeline.data.dataset import ImageDataset
from pipeline.data.folds import split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable
from pipeline.member.teacher import TeacherSpec, TeacherTargets
from pipeline.train.spec import TransformFactory
from pipeline.train.teacher import TeacherDataset

__all__ = ["MemberDataModule"]

log = logging.getLogger(__name__)


def _seed_augmentation(transform: Any, seed: int) -> None:
    """Seed an albumentations pipeline: 2.x draws from its own generators, seeded from OS entropy by default."""
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)


def _augmentation_worker_init(worker_id: int) -> None:
    """Lightning's per-worker seeding, plus a distinct augmentation stream per worker (copies would repeat it)."""
    pl_worker_init_function(worker_id)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        _seed_augmentation(getattr(info.dataset, "transform", None), torch.initial_seed() % 2**32)


class MemberDataModule(pl.LightningDataModule):
    """Train and validation loaders of one member: its fold's rows of the table, its augmentation, its seed.

    Args:
        data: The data spec (fold, batch size, workers, channels, optional image cache).
        table: The checked training table.
        folds: The sweep's folds (``resolve_folds``).
        transforms: ``(mean, std) → (train pipeline, eval pipeline)``.
        mean: The model's normalisation mean.
        std: The model's normalisation std.
        seed: Seed of the training augmentation stream.
        teacher: A teacher's settings and targets (:mod:`pipeline.train.teacher`): its test images join the
            training rows, every training row carries its soft target; validation is unchanged.

    >>> dm = MemberDataModule(data, table, folds, transforms, mean, std, seed=0)  # doctest: +SKIP
    >>> dm.setup("fit"); trainer.fit(module, datamodule=dm)  # doctest: +SKIP
    """

    def __init__(
        self, data: DataSpec, table: ImageTable, folds: Any, transforms: TransformFactory,
        mean: list[float], std: list[float], seed: int, teacher: tuple[TeacherSpec, TeacherTargets] | None = None,
    ) -> None:
        super().__init__()
        self.data, self.table, self.folds = data, table, folds
        self.transforms, self.mean, self.std, self.seed = transforms, mean, std, int(seed)
        self.teacher = teacher
        self.train_set: ImageDataset | TeacherDataset | None = None
        self.val_set: ImageDataset | None = None

    @property
    def val_table(self) -> ImageTable:
        """The validation rows (ids and labels in the order of ``val_predictions.csv``)."""
        return self._check(self.val_set).table

    def setup(self, stage: str | None = None) -> None:
        """Build both datasets once (idempotent: Lightning calls it again inside ``fit``)."""
        if self.train_set is not None:
            return
        train_idx, val_idx = split_indices(self.folds, self.data.fold, self.data.n_folds)
        train_tf, eval_tf = self.transforms(self.mean, self.std)
        log.info("Instantiating train/eval augmentation <%s>", type(train_tf).__name__)
        _seed_augmentation(train_tf, self.seed)
        # built once on the whole table, resized as the eval pipeline resizes; both splits read their rows from it
        cache = cache_for_spec(self.table, self.data, resize_settings(eval_tf))
        self.train_set = ImageDataset(self.table.subset(train_idx), train_tf, self.data.in_chans, cache)
        self.val_set = ImageDataset(self.table.subset(val_idx), eval_tf, self.data.in_chans, cache)
        if self.teacher is not None:  # test images decode as they come (the cache holds the training table only)
            spec, targets = self.teacher
            test = ImageDataset(targets.test_table, train_tf, self.data.in_chans) if len(targets.test_table) else None
            self.train_set = TeacherDataset(self.train_set, test, spec, targets, len(self.table.classes))

    def _loader_args(self) -> dict[str, Any]:
        workers = self.data.num_workers
        return dict(batch_size=self.data.batch_size, num_workers=workers, persistent_workers=workers > 0)

    def _check(self, dataset: Any) -> Any:
        if dataset is None:
            raise RuntimeError("MemberDataModule.setup() has not run yet.")
        return dataset

    def train_dataloader(self) -> DataLoader:
        """Shuffled, last partial batch dropped; each worker draws its own augmentation stream."""
        init = _augmentation_worker_init if self.data.num_workers > 0 else None
        return DataLoader(self._check(self.train_set), shuffle=True, drop_last=True, worker_init_fn=init,
                          **self._loader_args())

    def batchnorm_loader(self) -> DataLoader:
        """The training rows (a teacher's test images included) as validation sees them (eval pipeline, in order):
        what weight averaging recomputes BatchNorm statistics on (:func:`pipeline.train.averaging.recompute_batchnorm`)."""
        train, val = self._check(self.train_set), self._check(self.val_set)
        bases: list[Any] = [train.train, train.test] if isinstance(train, TeacherDataset) else [train]
        sets = [ImageDataset(b.table, val.transform, self.data.in_chans, b.cache) for b in bases if b is not None]
        return DataLoader(ConcatDataset(sets), shuffle=False, batch_size=self.data.batch_size,
                          num_workers=self.data.num_workers)

    def val_dataloader(self) -> DataLoader:
        """Every validation row in table order (the row index travels with each sample)."""
        return DataLoader(self._check(self.val_set), shuffle=False, **self._loader_args())
