"""Tables of images: competition folders → ids, image paths and labels, in a fixed order, checked.

One module reads every layout the pipeline supports, so training, prediction and the report all see
the same ids, paths and labels:

- ``layout: csv`` — a CSV (id column, label column, and either a path column or ``<dir>/<id><ext>``);
- ``layout: imagefolder`` — one sub-folder per class;
- the test set — an unlabelled folder, a test CSV, or the ids of ``sample_submission.csv``.

Everything is checked here, before any stage writes a file: labels are stripped of surrounding
whitespace and must not be empty or a missing-value word (``nan``, ``None``, ``null``); ids must be
unique and non-empty; and every image path must stay inside ``data.root`` (``..``, absolute paths and
symlinks that lead elsewhere are refused unless ``data.allow_outside_root`` is set).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.core.errors import DataError, duplicates, examples
from pipeline.core.io import read_csv_as_text
from pipeline.core.task import Task
from pipeline.data.ids import IMAGE_EXTENSIONS, check_sample_ids, strip_image_ext
from pipeline.data.spec import PIL_MAX_IMAGE_PIXELS, DataSpec
from pipeline.data.targets import (
    MISSING_LABELS,
    check_target_keys,
    class_labels,
    clean_label,
    complete_task,
    is_missing,
    line_ids,
    read_targets,
    resolve_classes,
    resolve_task,
)

__all__ = [
    "IMAGE_EXTENSIONS", "ImageTable", "read_train_table", "read_test_table", "read_test_in_sample_order",
    "check_sample_ids", "clean_label", "MISSING_LABELS", "read_split_columns",
]

log = logging.getLogger(__name__)

@dataclass
class ImageTable:
    """Ids, image paths and (for training data) targets, in a fixed order.

    ``labels`` holds the targets as :class:`pipeline.core.task.Task` says (class indices; ``[N, L]`` 0/1
    for multi-label; values for regression and ordinal); ``classes`` the task's output columns.
    ``task`` is None where no task was resolved (test tables, and tables read before tasks existed: one
    label per image). ``max_pixels`` is how large an image of this table may be (``data.max_image_pixels``);
    every decoder of the table's images honours it.
    """

    ids: list[str]
    paths: list[Path]
    labels: np.ndarray | None = None
    classes: list[str] = field(default_factory=list)
    max_pixels: int | None = PIL_MAX_IMAGE_PIXELS
    task: Task | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, keep: np.ndarray) -> ImageTable:
        """Rows where ``keep`` (boolean mask or index array) selects them."""
        idx = np.flatnonzero(keep) if keep.dtype == bool else keep
        labels = None if self.labels is None else self.labels[idx]
        return ImageTable([self.ids[i] for i in idx], [self.paths[i] for i in idx], labels, self.classes,
                          self.max_pixels, self.task)


def _require_dir(path: Path, key: str) -> None:
    if not path.is_dir():
        raise DataError(f"Data folder {path} does not exist (config key {key}).")


def _read_csv(path: Path, key: str, required: Sequence[str], what: str) -> pd.DataFrame:
    """A table through the project's one CSV rule, with the required columns."""
    df = read_csv_as_text(path, key=key, require_rows=True, what=what)
    for col in required:
        if col not in df.columns:
            spaced = [c for c in df.columns if c.strip() == col]
            hint = f" Column {spaced[0]!r} has surrounding spaces; rename it in the file." if spaced else ""
            raise DataError(
                f"{path}: no column '{col}'. Columns found: {list(df.columns)}. "
                f"Set data.id_col / data.label_col / data.path_col to the right names.{hint}"
            )
    return df


def _check_ids(df: pd.DataFrame, path: Path, id_col: str) -> list[str]:
    ids = df[id_col].tolist()
    empty = [i for i, v in enumerate(ids) if not str(v).strip()]
    if empty:
        lines = ", ".join(f"line {p + 2}" for p in empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise DataError(f"{path}: {len(empty)} row(s) with an empty id in column '{id_col}': {lines}.")
    if dupes := duplicates(ids):
        raise DataError(f"{path}: {len(dupes)} duplicate id(s) in column '{id_col}', e.g. {examples(dupes)}.")
    return ids


def _outside_root(paths: Sequence[Path], spec: DataSpec) -> list[tuple[int, Path]]:
    """Positions and resolved targets of the paths that lead outside ``data.root`` (symlinks followed)."""
    if spec.allow_outside_root:
        return []
    root = spec.root_path.resolve()
    found = []
    for i, path in enumerate(paths):
        real = path.resolve()
        if not real.is_relative_to(root):
            found.append((i, real))
    return found


def _refuse_outside(outside: list[tuple[int, Path]], paths: Sequence[Path], ids: Sequence[str], source: Path,
                    spec: DataSpec, what: str) -> None:
    if not outside:
        return
    shown = "; ".join(f"id {ids[i]!r}: {paths[i]} → {real}" for i, real in outside[:3])
    raise DataError(
        f"{source}: {len(outside)} {what} lead outside data.root ({spec.root_path.resolve()}), e.g. {shown}. "
        "Image paths ('..', absolute paths, symlinks) must stay inside the data folder; set "
        "data.allow_outside_root=true if these images really live elsewhere."
    )


def _paths_from_df(df: pd.DataFrame, image_dir: Path, spec: DataSpec, csv_path: Path) -> list[Path]:
    ids = df[spec.id_col].tolist()
    if spec.path_col:
        raw = [str(p).strip() for p in df[spec.path_col]]
        empty = [i for i, p in enumerate(raw) if not p]
        if empty:
            raise DataError(
                f"{csv_path}: {len(empty)} row(s) with an empty path in column '{spec.path_col}': "
                f"{line_ids(df, empty, spec.id_col)}."
            )
        paths = [Path(p) if Path(p).is_absolute() else image_dir / p for p in raw]
        what = f"path(s) in column '{spec.path_col}'"
    else:
        paths = [image_dir / f"{i}{spec.ext}" for i in ids]
        what = f"image path(s) made from column '{spec.id_col}' (<dir>/<id>{spec.ext})"
    _refuse_outside(_outside_root(paths, spec), paths, ids, csv_path, spec, what)
    missing = [p for p in paths if not p.is_file()]
    if missing:
        shown = ", ".join(str(p) for p in missing[:5])
        raise DataError(
            f"{csv_path}: {len(missing)} listed image(s) missing on disk, first: {shown}. "
            f"Check data.{'path_col' if spec.path_col else 'ext'} and data.train_dir/test_dir"
            f"{_ext_hint(ids, spec)}."
        )
    return paths


def _ext_hint(ids: Sequence[str], spec: DataSpec) -> str:
    """When the ids already end in an image extension, the file is <id> itself: ``data.ext`` must be empty."""
    if spec.path_col or not spec.ext:
        return ""
    _, with_ext = strip_image_ext([str(i) for i in ids])
    if not with_ext:
        return ""
    return (
        f". The ids in column '{spec.id_col}' keep their file extension (e.g. {with_ext[0]!r}), so "
        f"<id>{spec.ext} names no file: set data.ext='' (the id is the file name), or give the file names in a "
        "column with data.path_col"
    )


def _imagefolder_table(spec: DataSpec, root: Path) -> ImageTable:
    image_root = root / spec.train_dir
    _require_dir(image_root, "data.train_dir")
    rows = [
        (p.relative_to(image_root).with_suffix("").as_posix(), p, p.parent.name)
        for p in sorted(image_root.glob("*/*"))
        if p.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not rows:
        raise DataError(f"No images with extensions {IMAGE_EXTENSIONS} in class sub-folders of {image_root}.")
    ids, paths, folders = (list(x) for x in zip(*rows))
    if bad := sorted({f for f in folders if is_missing(clean_label(f))}):
        raise DataError(
            f"{image_root}: class folder(s) {bad} have an empty or missing-value name ({sorted(MISSING_LABELS)}); "
            "rename them to their class."
        )
    _refuse_outside(_outside_root(paths, spec), paths, ids, image_root, spec, "image(s)")
    task = resolve_task(spec, None, None, image_root)
    classes, labels = resolve_classes([clean_label(f) for f in folders], spec, image_root)
    return ImageTable(ids, paths, labels, classes, spec.max_image_pixels, complete_task(task, labels, classes, spec,
                                                                                       image_root))


def read_train_table(spec: DataSpec) -> ImageTable:
    """Read and check the labelled training images of a competition (CSV or ImageFolder layout), and their task.

    The task is ``data.task`` or inferred (:mod:`pipeline.data.targets`); ``labels`` and ``classes`` hold
    the targets and output columns as the task says.

    Raises:
        DataError: naming the file, column, rows or key: a missing folder or file, an unreadable CSV,
            missing columns, empty or duplicate ids, empty or missing-value labels, labels outside
            ``data.classes``, a contradicting ``data.num_classes``, paths outside ``data.root``, or
            listed images missing on disk; targets the task cannot hold (see
            :func:`pipeline.data.targets.read_targets`) or task keys that contradict each other or the data.
    """
    root = spec.root_path
    _require_dir(root, "data.root")
    check_target_keys(spec)
    if spec.layout == "imagefolder":
        return _imagefolder_table(spec, root)
    if spec.layout != "csv":
        raise DataError(f"Unknown data.layout '{spec.layout}'. Accepted: csv, imagefolder.")
    csv_path = root / spec.train_csv
    label_cols = list(spec.label_cols) if spec.label_cols and spec.tag_sep is None else [spec.label_col]
    required = [spec.id_col, *label_cols] + ([spec.path_col] if spec.path_col else [])
    df = _read_csv(csv_path, "data.train_csv", required, "Training CSV")
    ids = _check_ids(df, csv_path, spec.id_col)
    task = resolve_task(spec, df, _sample_frame(spec), csv_path)
    image_dir = root / spec.train_dir
    if task.kind not in ("multiclass", "binary"):
        targets, columns = read_targets(task, df, spec, csv_path)
    else:  # one label per image, checked in the order it always was: labels, paths, classes
        labels = class_labels(df, spec, csv_path)
    if not spec.path_col:
        _require_dir(image_dir, "data.train_dir")
    paths = _paths_from_df(df, image_dir, spec, csv_path)
    if task.kind in ("multiclass", "binary"):
        columns, targets = resolve_classes(labels, spec, csv_path)
    task = complete_task(task, targets, columns, spec, csv_path)
    return ImageTable(ids, paths, targets, list(columns), spec.max_image_pixels, task)


def _sample_frame(spec: DataSpec) -> pd.DataFrame | None:
    """The sample submission, when ``data.task=auto`` may need it and it can be read (else None: not consulted)."""
    if spec.task != "auto" or not spec.sample_submission:
        return None
    path = spec.root_path / spec.sample_submission
    try:
        return read_csv_as_text(path, what="Sample submission") if path.is_file() else None
    except DataError as err:  # the submission stage refuses it in its own words
        log.debug("Task inference ignores the sample submission: %s", err)
        return None


def read_split_columns(spec: DataSpec) -> pd.DataFrame:
    """``data.group_col`` / ``data.fold_col`` of the training CSV, indexed by id (columns ``group``, ``fold``).

    Raises:
        DataError: the layout is not csv; a column is missing (naming the file, the column and the columns
            found); empty group values or fold values that are not non-negative integers (naming the rows).
    """
    if spec.layout != "csv":
        raise DataError(f"data.group_col / data.fold_col need data.layout=csv (a train.csv); got '{spec.layout}'.")
    path = spec.root_path / spec.train_csv
    wanted = {"group": spec.group_col, "fold": spec.fold_col}
    df = _read_csv(path, "data.train_csv", [spec.id_col], "Training CSV")
    out = pd.DataFrame(index=pd.Index(df[spec.id_col], name="id"))
    for name, col in wanted.items():
        if col is None:
            continue
        if col not in df.columns:
            raise DataError(f"{path}: no column '{col}' (data.{name}_col). Columns found: {list(df.columns)}.")
        values = [str(v).strip() for v in df[col]]
        bad = [i for i, v in enumerate(values) if (is_missing(v) if name == "group" else not v.isdigit())]
        if bad:
            what = "an empty group" if name == "group" else "a fold that is not a non-negative integer"
            shown = sorted({repr(values[i]) for i in bad})[:5]
            raise DataError(f"{path}: {len(bad)} row(s) have {what} ({', '.join(shown)}) in column '{col}' "
                            f"(data.{name}_col): {line_ids(df, bad, spec.id_col)}.")
        out[name] = np.array(values) if name == "group" else np.array(values, dtype=np.int64)
    return out


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
        df = _read_csv(csv_path, "data.test_csv", [spec.id_col] + ([spec.path_col] if spec.path_col else []),
                       "Test CSV")
        ids = _check_ids(df, csv_path, spec.id_col)
        return ImageTable(ids, _paths_from_df(df, image_dir, spec, csv_path), None, list(classes), spec.max_image_pixels)
    _require_dir(image_dir, "data.test_dir")
    paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not paths:
        raise DataError(f"Test folder {image_dir} contains no images with extensions {IMAGE_EXTENSIONS}.")
    ids = [p.stem for p in paths]
    if dupes := duplicates(ids):
        same = [p.name for p in paths if p.stem == dupes[0]]
        raise DataError(
            f"Test folder {image_dir}: {len(dupes)} id(s) belong to several files (the id is the file name "
            f"without its extension), e.g. {same}. Keep one file per id."
        )
    _refuse_outside(_outside_root(paths, spec), paths, ids, image_dir, spec, "image(s)")
    return ImageTable(ids, paths, None, list(classes), spec.max_image_pixels)


def read_test_in_sample_order(spec: DataSpec, classes: Sequence[str]) -> tuple[ImageTable, list[str] | None]:
    """The test images, in the sample submission's order when there is one (and the sample's ids)."""
    table = read_test_table(spec, classes)
    if not spec.sample_submission:
        return table, None
    sample_path = spec.root_path / spec.sample_submission
    sample = read_csv_as_text(sample_path, key="data.sample_submission", require_rows=True, what="Sample submission")
    sample_ids = sample.iloc[:, 0].tolist() if spec.id_col not in sample.columns else sample[spec.id_col].tolist()
    check_sample_ids(sample_ids, table.ids, sample_path, test_csv=spec.test_csv, sample_setting=spec.sample_submission)
    pos = {i: r for r, i in enumerate(table.ids)}
    return table.subset(np.array([pos[i] for i in sample_ids])), sample_ids
