"""The data layer: competition folders → tables of images → folds → datasets and loaders.

One module reads every layout the pipeline supports, so training, prediction and the report all see
the same ids, paths, labels and folds:

- ``layout: csv`` — a CSV (id column, label column, and either a path column or ``<dir>/<id><ext>``);
- ``layout: imagefolder`` — one sub-folder per class;
- the test set — an unlabelled folder, a test CSV, or the ids of ``sample_submission.csv``.

Images always decode to RGB ``uint8`` (grayscale, RGBA, palette and 16-bit files included).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageFile
from torch.utils.data import Dataset

from pipeline.utils import atomic_path

if TYPE_CHECKING:  # pipeline.cache imports this module
    from pipeline.cache import ImageCache

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataSpec",
    "ImageTable",
    "DataError",
    "load_rgb",
    "load_image",
    "read_train_table",
    "read_test_table",
    "verify_images",
    "make_folds",
    "load_or_create_folds",
    "split_indices",
    "ImageDataset",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")
# A truncated JPEG must raise, not decode silently as grey: the user asked to hear about bad files.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class DataError(ValueError):
    """Bad competition data; the message names the file, column or key to fix."""


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
    num_classes: int | None = None
    image_size: int = 32
    crop_size: int = 28
    in_chans: int = 3
    n_folds: int = 0
    fold: int = 0
    holdout_fraction: float = 0.2
    split_seed: int = 42
    batch_size: int = 64
    num_workers: int = 2
    check_images: bool = True
    skip_bad_images: bool = False
    cache_dir: str | None = None  # set: decode + resize once into a memmap here (pipeline.cache)
    cache_size: int | None = None  # side of the cached images; None: image_size

    @property
    def root_path(self) -> Path:
        return Path(self.root).expanduser()


@dataclass
class ImageTable:
    """Ids, image paths and (for training data) integer labels, in a fixed order."""

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> ImageTable:
        """Rows where ``keep`` (boolean mask or index array) selects them."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        labels = None if self.labels is None else self.labels[idx]
        return ImageTable([self.ids[i] for i in idx], [self.paths[i] for i in idx], labels, self.classes)


# --------------------------------------------------------------------------- decoding


def load_rgb(path: str | Path) -> np.ndarray:
    """Decode any image file to an ``H×W×3`` RGB ``uint8`` array.

    16-bit and 32-bit images are scaled to 8 bits by their type's range rather than clipped, and
    transparent pixels are composited onto black (what ``convert('RGB')`` would do for RGBA).

    Raises:
        DataError: naming the file, if it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                arr = np.asarray(img)
                scale = 65535.0 if img.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
                gray = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[..., None], 3, axis=2)
            # Palette images go through RGBA so a transparent palette entry is handled like RGBA.
            rgba: Image.Image = img.convert("RGBA") if img.mode == "P" else img
            return np.array(rgba.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise DataError(f"Cannot decode image {path}: {err}") from err


def load_image(path: str | Path, in_chans: int = 3) -> np.ndarray:
    """:func:`load_rgb`, then ``H×W×1`` luminance when ``in_chans`` is 1 (what the datasets feed models)."""
    image = load_rgb(path)
    if in_chans == 1:
        return np.array(Image.fromarray(image).convert("L"))[..., None]
    return image


def verify_images(table: ImageTable, skip_bad: bool) -> ImageTable:
    """Decode every image once, before training, so a bad file fails fast (or is skipped).

    Args:
        table: rows to check.
        skip_bad: drop unreadable files with a warning and a count instead of raising.
    """
    bad: list[int] = []
    for i, path in enumerate(table.paths):
        try:
            load_rgb(path)
        except DataError as err:
            if not skip_bad:
                raise DataError(f"{err}. Set data.skip_bad_images=true to skip unreadable files.") from err
            bad.append(i)
            log.warning("Skipping unreadable image %s", path)
    if bad:
        log.warning("Skipped %d unreadable image(s) of %d", len(bad), len(table))
        keep = np.ones(len(table), dtype=bool)
        keep[bad] = False
        return table.subset(keep)
    return table


# --------------------------------------------------------------------------- tables


def _require_dir(path: Path, key: str) -> None:
    if not path.is_dir():
        raise DataError(f"Data folder {path} does not exist (config key {key}).")


def _read_csv(path: Path, key: str, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"CSV file {path} does not exist (config key {key}).")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    for col in required:
        if col not in df.columns:
            raise DataError(
                f"{path}: no column '{col}'. Columns found: {list(df.columns)}. "
                f"Set data.id_col / data.label_col / data.path_col to the right names."
            )
    return df


def _paths_from_df(df: pd.DataFrame, image_dir: Path, spec: DataSpec, csv_path: Path) -> list[Path]:
    if spec.path_col:
        paths = [Path(p) if Path(p).is_absolute() else image_dir / p for p in df[spec.path_col]]
    else:
        paths = [image_dir / f"{i}{spec.ext}" for i in df[spec.id_col]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise DataError(
            f"{csv_path}: {len(missing)} listed image(s) missing on disk, first: {shown}. "
            f"Check data.{'path_col' if spec.path_col else 'ext'} and data.train_dir/test_dir."
        )
    return paths


def _resolve_classes(raw: Sequence[str], spec: DataSpec, source: Path) -> tuple[list[str], np.ndarray]:
    """Map raw label strings to indices into an explicit class list."""
    found = sorted(set(raw), key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s))
    classes = list(spec.classes) if spec.classes else found
    if spec.num_classes is not None and spec.num_classes != len(classes):
        raise DataError(
            f"data.num_classes={spec.num_classes} contradicts the data: {source} has "
            f"{len(classes)} classes {classes[:10]}{'…' if len(classes) > 10 else ''}."
        )
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted(set(raw) - set(index))
    if unknown:
        raise DataError(f"{source}: labels {unknown[:5]} are not in data.classes {classes}.")
    return classes, np.array([index[r] for r in raw], dtype=np.int64)


def read_train_table(spec: DataSpec) -> ImageTable:
    """Read the labelled training images of a competition (CSV or ImageFolder layout)."""
    root = spec.root_path
    _require_dir(root, "data.root")
    if spec.layout == "imagefolder":
        image_root = root / spec.train_dir
        _require_dir(image_root, "data.train_dir")
        rows = [
            (p.relative_to(image_root).with_suffix("").as_posix(), p, p.parent.name)
            for p in sorted(image_root.glob("*/*"))
            if p.suffix.lower() in IMAGE_EXTENSIONS
        ]
        if not rows:
            raise DataError(f"No images with extensions {IMAGE_EXTENSIONS} in class sub-folders of {image_root}.")
        ids, paths, raw = (list(x) for x in zip(*rows))
        classes, labels = _resolve_classes(raw, spec, image_root)
        return ImageTable(ids, paths, labels, classes)
    if spec.layout != "csv":
        raise DataError(f"Unknown data.layout '{spec.layout}'. Accepted: csv, imagefolder.")
    csv_path = root / spec.train_csv
    required = [spec.id_col, spec.label_col] + ([spec.path_col] if spec.path_col else [])
    df = _read_csv(csv_path, "data.train_csv", required)
    dup = df[spec.id_col][df[spec.id_col].duplicated()]
    if len(dup):
        raise DataError(f"{csv_path}: duplicate ids in column '{spec.id_col}', first: {list(dup[:5])}.")
    image_dir = root / spec.train_dir
    if not spec.path_col:
        _require_dir(image_dir, "data.train_dir")
    paths = _paths_from_df(df, image_dir, spec, csv_path)
    classes, labels = _resolve_classes(list(df[spec.label_col]), spec, csv_path)
    return ImageTable(list(df[spec.id_col]), paths, labels, classes)


def read_test_table(spec: DataSpec, classes: Sequence[str] = ()) -> ImageTable:
    """Read the unlabelled test images: a test CSV, or every image in the test folder.

    When a test CSV is not given, ids are file stems sorted by name; the submission stage reorders
    them to the sample submission's order.
    """
    root = spec.root_path
    _require_dir(root, "data.root")
    if spec.test_dir is None and spec.test_csv is None:
        raise DataError("No test set configured: set data.test_dir or data.test_csv.")
    image_dir = root / (spec.test_dir or "")
    if spec.test_csv:
        csv_path = root / spec.test_csv
        df = _read_csv(csv_path, "data.test_csv", [spec.id_col] + ([spec.path_col] if spec.path_col else []))
        if df.empty:
            raise DataError(f"Test CSV {csv_path} has no rows.")
        return ImageTable(list(df[spec.id_col]), _paths_from_df(df, image_dir, spec, csv_path), None, list(classes))
    _require_dir(image_dir, "data.test_dir")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"Test folder {image_dir} contains no images with extensions {IMAGE_EXTENSIONS}.")
    return ImageTable([p.stem for p in paths], paths, None, list(classes))


# --------------------------------------------------------------------------- folds


def make_folds(ids: Sequence[str], labels: np.ndarray, n_folds: int, seed: int, holdout_fraction: float) -> pd.DataFrame:
    """Assign every training row a fold; a member with ``data.fold=f`` validates on ``fold == f``.

    ``n_folds >= 2`` gives stratified K-fold; ``n_folds`` of 0 or 1 gives a stratified holdout where
    validation rows have fold 0 and training-only rows fold -1.
    """
    from sklearn.model_selection import StratifiedKFold, train_test_split

    fold = np.full(len(ids), -1, dtype=np.int64)
    idx = np.arange(len(ids))
    if n_folds >= 2:
        skf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        for f, (_, val_idx) in enumerate(skf.split(idx, labels)):
            fold[val_idx] = f
    else:
        if not 0.0 < holdout_fraction < 1.0:
            raise DataError(f"data.holdout_fraction={holdout_fraction} must lie strictly between 0 and 1.")
        _, val_idx = train_test_split(idx, test_size=holdout_fraction, random_state=seed, stratify=labels)
        fold[val_idx] = 0
    return pd.DataFrame({"id": list(ids), "label": labels, "fold": fold})


def load_or_create_folds(path: Path, table: ImageTable, spec: DataSpec) -> pd.DataFrame:
    """Read the sweep's saved folds, or create and save them, so every member sees the same split.

    Raises:
        DataError: if a saved fold file does not describe this training table or fold scheme.
    """
    if table.labels is None:
        raise DataError("Folds need a labelled training table.")
    wanted = make_folds(table.ids, table.labels, spec.n_folds, spec.split_seed, spec.holdout_fraction)
    if path.exists():
        saved = pd.read_csv(path, dtype={"id": str})
        same = (
            list(saved.columns) == ["id", "label", "fold"]
            and saved["id"].tolist() == wanted["id"].tolist()
            and saved["fold"].tolist() == wanted["fold"].tolist()
        )
        if not same:
            raise DataError(
                f"{path} holds folds for different data or a different fold scheme "
                f"(data.n_folds={spec.n_folds}, data.split_seed={spec.split_seed}). "
                "Use a new sweep_name, or delete the file if the data really changed."
            )
        return saved
    with atomic_path(path) as tmp:
        wanted.to_csv(tmp, index=False)
    return wanted


def split_indices(folds: pd.DataFrame, fold: int, n_folds: int) -> tuple[np.ndarray, np.ndarray]:
    """Training and validation row indices of one member."""
    n_valid = max(n_folds, 1)
    if not 0 <= fold < n_valid:
        raise DataError(f"data.fold={fold} is out of range: accepted 0..{n_valid - 1} for data.n_folds={n_folds}.")
    is_val = folds["fold"].to_numpy() == fold
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


# --------------------------------------------------------------------------- dataset


class ImageDataset(Dataset):
    """Decode, transform and return ``{"image", "target", "index"}`` for one row of a table.

    ``index`` is the row's position in the table, carried through the batch so predictions made in
    any order (workers, DDP ranks) can be put back in table order. With a ``cache``
    (:mod:`pipeline.cache`), images are read pre-resized from it instead of being decoded.
    """

    def __init__(self, table: ImageTable, transform: Callable[..., Any] | None, in_chans: int = 3,
                 cache: ImageCache | None = None) -> None:
        self.table = table
        self.transform = transform
        self.in_chans = in_chans
        self.cache = cache
        self.cache_rows = None if cache is None else cache.rows(table.paths)
        if cache is not None and cache.in_chans != in_chans:
            raise ValueError(f"The image cache {cache.array_path} holds {cache.in_chans}-channel images, not {in_chans}")

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self.cache is None or self.cache_rows is None:
            image = load_image(self.table.paths[i], self.in_chans)
        else:
            image = self.cache.read(int(self.cache_rows[i]))
        if self.transform is not None:
            image = self.transform(image=image)["image"]
        tensor = image if isinstance(image, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(image).transpose(2, 0, 1))
        target = -1 if self.table.labels is None else int(self.table.labels[i])
        return {"image": tensor, "target": target, "index": i}
