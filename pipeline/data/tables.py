"""Tables of images: competition folders → ids, image paths and labels, in a fixed order.

One module reads every layout the pipeline supports, so training, prediction and the report all see
the same ids, paths and labels:

- ``layout: csv`` — a CSV (id column, label column, and either a path column or ``<dir>/<id><ext>``);
- ``layout: imagefolder`` — one sub-folder per class;
- the test set — an unlabelled folder, a test CSV, or the ids of ``sample_submission.csv``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, duplicates, examples, id_differences
from pipeline.core.io import read_csv_as_text
from pipeline.data.spec import DataSpec

__all__ = [
    "IMAGE_EXTENSIONS", "ImageTable", "read_train_table", "read_test_table", "read_test_in_sample_order",
    "check_sample_ids",
]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".gif")


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


def read_test_in_sample_order(spec: DataSpec, classes: Sequence[str]) -> tuple[ImageTable, list[str] | None]:
    """The test images, in the sample submission's order when there is one (and the sample's ids)."""
    table = read_test_table(spec, classes)
    if not spec.sample_submission:
        return table, None
    sample_path = spec.root_path / spec.sample_submission
    if not sample_path.is_file():
        raise FileNotFoundError(f"Sample submission {sample_path} does not exist (config key data.sample_submission).")
    sample = read_csv_as_text(sample_path)
    sample_ids = sample.iloc[:, 0].tolist() if spec.id_col not in sample.columns else sample[spec.id_col].tolist()
    check_sample_ids(sample_ids, table.ids, sample_path)
    pos = {i: r for r, i in enumerate(table.ids)}
    return table.subset(np.array([pos[i] for i in sample_ids])), sample_ids


def check_sample_ids(sample_ids: Sequence[str], test_ids: Sequence[str], sample_path: str | Path) -> None:
    """Check that the sample submission lists exactly the test images.

    Raises:
        DataError: Naming ``sample_path``, with counts and examples of ids only in the sample
            and only in the test folder, and of duplicated sample ids.
    """
    sample = [str(i) for i in sample_ids]
    test = [str(i) for i in test_ids]
    problems = []
    if dupes := duplicates(sample):
        problems.append(f"{len(dupes)} ids occur more than once in the sample, e.g. {examples(dupes)}")
    only_test, only_sample = id_differences(test, sample)
    if only_sample:
        problems.append(f"{len(only_sample)} ids only in the sample, e.g. {examples(only_sample)}")
    if only_test:
        problems.append(f"{len(only_test)} ids only in the test folder, e.g. {examples(only_test)}")
    if not problems:
        return
    hint = ""
    if {os.path.splitext(i)[0] for i in sample} == {os.path.splitext(i)[0] for i in test}:
        hint = "; they match once file extensions are removed, so strip the extension from the ids"
    raise DataError(
        f"{sample_path}: the {len(sample)} sample submission ids do not match the {len(test)} test "
        f"images: {'; '.join(problems)}{hint}"
    )
