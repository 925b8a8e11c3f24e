"""The ``data`` config group's schema: where a competition's files are and how to read them.

Kept free of torch, numpy and pandas so the command lines can register it before parsing arguments.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["DataSpec", "PIL_MAX_IMAGE_PIXELS"]

PIL_MAX_IMAGE_PIXELS = 89_478_485
"""Pillow's own decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``), the default of ``data.max_image_pixels``."""


@dataclass
class DataSpec:
    """Where a competition's files are and how to read them (the ``data`` config group)."""

    root: str
    layout: str = "csv"
    train_csv: str = "train.csv"
    train_dir: str = "train"
    id_col: str = "id"
    label_col: str = "label"
    path_col: str | None = None
    ext: str = ".png"
    test_dir: str | None = "test"
    test_csv: str | None = None
    sample_submission: str | None = "sample_submission.csv"
    solution: str | None = None
    classes: list[str] | None = None
    # What is predicted per image (pipeline.core.task): auto | multiclass | binary | multilabel | regression | ordinal.
    # auto infers it from train.csv and the sample submission, and says why.
    task: str = "auto"
    label_cols: list[str] | None = None  # multilabel: one 0/1 column per label in train.csv (instead of label_col)
    tag_sep: str | None = None  # multilabel: label_col holds tags joined by this separator (" " for "haze primary")
    target_range: list[float] | None = None  # regression/ordinal: [low, high] of the target (grades low..high)
    num_classes: int | None = None
    image_size: int = 32
    crop_size: int = 28
    in_chans: int = 3
    n_folds: int = 0
    fold: int = 0
    holdout_fraction: float = 0.2
    split_seed: int = 42
    group_col: str | None = None  # train.csv column of groups (patient, source photo): a group never straddles folds
    fold_col: str | None = None  # train.csv column of the user's own folds 0..K-1 (data.n_folds must be K)
    batch_size: int = 64
    num_workers: int = 2
    check_images: bool = True
    skip_bad_images: bool = False
    max_image_pixels: int | None = PIL_MAX_IMAGE_PIXELS  # larger images are refused (decompression bombs); null: no limit
    allow_outside_root: bool = False  # image paths (path_col, ids, symlinks) may lead outside data.root
    cache_dir: str | None = None  # set: decode + resize once into a memmap here (pipeline.data.cache)
    cache_size: int | None = None  # side of the cached images; None: image_size

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()
