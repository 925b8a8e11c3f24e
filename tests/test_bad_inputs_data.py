"""Bad competition data, as a new user brings it: each case is refused with a message naming its cause.

Every case damages a private copy of a tiny real competition, runs the reader a stage would run, and
checks (a) the exception type, (b) a message that names the file, column, rows, key or value, and
(c) that nothing was written: reading and checking data never writes, and a failed split leaves no
``folds.csv``, a failed cache build no cache file.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import ConfigError, DataError, OutputError
from pipeline.data.cache import cache_for_spec
from pipeline.data.decode import verify_images
from pipeline.data.folds import load_or_create_folds, split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_test_in_sample_order, read_test_table, read_train_table
from tests.helpers import TINY_CLASSES, copy_competition, files_under, temp_files, write_competition


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 classes × 8 greyscale 32×32 training images, 6 test images, a sample submission."""
    return write_competition(tmp_path_factory.mktemp("tiny") / "comp")


# --- damage: small edits of a competition folder -------------------------------------------------------


def edit_train(fn: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        df = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
        fn(df).to_csv(root / "train.csv", index=False)
    return damage


def set_cells(column: str, rows: dict[int, str]) -> Callable[[Path], None]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        for row, value in rows.items():
            df.loc[row, column] = value
        return df
    return edit_train(fn)


def write_text(name: str, text: str | bytes) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            (root / name).write_bytes(text)
        else:
            (root / name).write_text(text)
    return damage


def remove(name: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


def outside_file(root: Path) -> Path:
    """An image beside the competition folder, outside data.root."""
    target = root.parent / "elsewhere.png"
    shutil.copy(root / "train" / "tr0000.png", target)
    return target


def path_column(value: Callable[[Path], str]) -> Callable[[Path], None]:
    """A ``file`` column (train/<id>.png) whose row 2 holds ``value(root)``."""
    def damage(root: Path) -> None:
        df = pd.read_csv(root / "train.csv", dtype=str)
        df["file"] = "train/" + df["id"] + ".png"
        df.loc[2, "file"] = value(root)
        df.to_csv(root / "train.csv", index=False)
    return damage


def symlink_outside(name: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        target = outside_file(root)
        (root / name).unlink(missing_ok=True)
        (root / name).symlink_to(target)
    return damage


def truncate(name: str) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        path = root / name
        path.write_bytes(path.read_bytes()[:40])
    return damage


def bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width``×``height`` pixels; only a few bytes on disk."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    data[16:20], data[20:24] = width.to_bytes(4, "big"), height.to_bytes(4, "big")
    data[29:33] = zlib.crc32(bytes(data[12:29])).to_bytes(4, "big")  # IHDR's CRC covers type + data
    return bytes(data)


def save_image(name: str, array: np.ndarray) -> Callable[[Path], None]:
    """Save ``array`` under ``name``; as TIFF data, since PNG cannot hold 32-bit integers (Pillow reads by content)."""
    def damage(root: Path) -> None:
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "TIFF")
        (root / name).write_bytes(buf.getvalue())
    return damage


def imagefolder(extra: Callable[[Path], None] | None = None) -> Callable[[Path], None]:
    """Re-arrange the training images as train_if/<class>/<id>.png, then apply ``extra``."""
    def damage(root: Path) -> None:
        df = pd.read_csv(root / "train.csv", dtype=str)
        for image_id, label in zip(df["id"], df["label"]):
            (root / "train_if" / label).mkdir(parents=True, exist_ok=True)
            shutil.copy(root / "train" / f"{image_id}.png", root / "train_if" / label)
        if extra:
            extra(root)
    return damage


def keep_rows(n_of_bag: int) -> Callable[[Path], None]:
    def fn(df: pd.DataFrame) -> pd.DataFrame:
        bag = df.index[df["label"] == "Bag"]
        return df.drop(bag[n_of_bag:])
    return edit_train(fn)


def both(*damages: Callable[[Path], None]) -> Callable[[Path], None]:
    def damage(root: Path) -> None:
        for d in damages:
            d(root)
    return damage


def saved_folds(n_folds: int) -> Callable[[Path], None]:
    """A sweep folder whose folds.csv was made with ``n_folds`` (an earlier command)."""
    def damage(root: Path) -> None:
        spec = DataSpec(root=str(root), n_folds=n_folds)
        (root.parent / "sweep").mkdir(exist_ok=True)
        load_or_create_folds(root.parent / "sweep" / "folds.csv", read_train_table(spec), spec)
    return damage


def column(name: str, value: Callable[[int], str]) -> Callable[[Path], None]:
    """A new train.csv column ``name`` whose row ``i`` holds ``value(i)``."""
    return edit_train(lambda df: df.assign(**{name: [value(i) for i in range(len(df))]}))


def saved_folds_then(n_folds: int, extra: Callable[[Path], None]) -> Callable[[Path], None]:
    return both(saved_folds(n_folds), extra)


def ids_csv(ids: list[str]) -> Callable[[Path], None]:
    return write_text("test.csv", "id\n" + "".join(f"{i}\n" for i in ids))


# --- readers: what a stage runs on the damaged folder ----------------------------------------------------


def run_verify(spec: DataSpec, tmp: Path) -> Any:
    return verify_images(read_train_table(spec), spec.skip_bad_images)


def run_folds(spec: DataSpec, tmp: Path) -> Any:
    folds = load_or_create_folds(tmp / "sweep" / "folds.csv", read_train_table(spec), spec)
    return split_indices(folds, spec.fold, spec.n_folds)


def run_cache(spec: DataSpec, tmp: Path) -> Any:
    table = read_train_table(spec)
    return cache_for_spec(table, DataSpec(**{**spec.__dict__, "cache_dir": str(tmp / "cache")}))


READERS: dict[str, Callable[[DataSpec, Path], Any]] = {
    "train": lambda spec, tmp: read_train_table(spec),
    "verify": run_verify,
    "folds": run_folds,
    "test": lambda spec, tmp: read_test_table(spec),
    "sample": lambda spec, tmp: read_test_in_sample_order(spec, list(TINY_CLASSES)),
    "cache": run_cache,
}


@dataclass
class Case:
    name: str
    match: str
    damage: Callable[[Path], None] | None = None
    spec: dict[str, Any] = field(default_factory=dict)
    reader: str = "train"
    error: type[Exception] = DataError


MISSING = [pytest.param(v, id=f"label={v!r}") for v in ("", "nan", "NaN", "None", "null", "   ")]

CASES = [
    # folders, files and columns
    Case("missing_root", r"nope does not exist \(config key data\.root\)", spec={"root": "{root}/nope"}),
    Case("missing_train_csv", r"Training CSV .*train\.csv does not exist \(config key data\.train_csv\)", remove("train.csv")),
    Case("missing_train_dir", r"Data folder .*train does not exist \(config key data\.train_dir\)", remove("train")),
    Case("wrong_id_column", r"train\.csv: no column 'image_id'\. Columns found: \['id', 'label'\]", spec={"id_col": "image_id"}),
    Case("wrong_label_column", r"no column 'target'.*Set data\.id_col / data\.label_col", spec={"label_col": "target"}),
    Case("header_with_spaces", r"no column 'label'.*Column ' label' has surrounding spaces",
         write_text("train.csv", "id, label\ntr0000,Dress\n")),
    Case("unknown_layout", r"Unknown data\.layout 'folders'\. Accepted: csv, imagefolder", spec={"layout": "folders"}),
    # the CSV itself
    Case("empty_csv", r"train\.csv \(config key data\.train_csv\): the file is empty; expected a CSV with a header row",
         write_text("train.csv", "")),
    Case("header_only_csv", r"train\.csv \(config key data\.train_csv\): has a header \(\['id', 'label'\]\) but no rows",
         write_text("train.csv", "id,label\n")),
    Case("latin1_csv", r"train\.csv .*not UTF-8 text \(byte 0xe9 at line 3, column 11\).*Latin-1.*iconv -f latin1",
         write_text("train.csv", "id,label\ntr0000,Dress\ntr0001,Caf\xe9\n".encode("latin-1"))),
    Case("malformed_row", r"train\.csv .*malformed CSV row \(Expected 2 fields in line 3, saw 3\).*\(2 here\); quote",
         write_text("train.csv", "id,label\ntr0000,Dress\ntr0001,Dress,extra\n")),
    # ids and labels
    Case("duplicate_ids", r"train\.csv: 1 duplicate id\(s\) in column 'id', e\.g\. \['tr0000'\]",
         set_cells("id", {1: "tr0000"})),
    Case("empty_id", r"train\.csv: 1 row\(s\) with an empty id in column 'id': line 5", set_cells("id", {3: ""})),
    Case("unknown_class", r"train\.csv: labels \['Bag'\] are not in data\.classes \['Dress', 'Sandal'\]",
         spec={"classes": ["Dress", "Sandal"]}),
    Case("num_classes_mismatch", r"data\.num_classes=5 contradicts the data: .*train\.csv has 3 classes",
         spec={"num_classes": 5}),
    Case("classes_repeat_after_strip", r"data\.classes lists \['Dress'\] more than once \(after stripping spaces\)",
         spec={"classes": ["Dress", "Dress ", "Bag", "Sandal"]}),
    Case("classes_missing_value", r"data\.classes has empty or missing-value entries \['null'\]",
         spec={"classes": ["Dress", "null", "Bag", "Sandal"]}),
    # image paths
    Case("listed_image_missing", r"1 listed image\(s\) missing on disk, first: .*tr0003\.png", remove("train/tr0003.png")),
    Case("path_with_dotdot", r"train\.csv: 1 path\(s\) in column 'file' lead outside data\.root .*id 'tr0002': "
         r".*\.\./elsewhere\.png → .*elsewhere\.png.*data\.allow_outside_root=true",
         path_column(lambda root: (outside_file(root), "../elsewhere.png")[1]), {"path_col": "file", "train_dir": ""}),
    Case("absolute_path_outside", r"1 path\(s\) in column 'file' lead outside data\.root.*allow_outside_root",
         path_column(lambda root: str(outside_file(root))), {"path_col": "file", "train_dir": ""}),
    Case("symlink_outside", r"1 image path\(s\) made from column 'id' .*lead outside data\.root.*id 'tr0005'.*elsewhere",
         symlink_outside("train/tr0005.png")),
    Case("id_with_dotdot", r"image path\(s\) made from column 'id'.*lead outside.*id '\.\./\.\./x'",
         set_cells("id", {0: "../../x"})),
    Case("empty_path", r"1 row\(s\) with an empty path in column 'file': line 4",
         path_column(lambda root: ""), {"path_col": "file", "train_dir": ""}),
    Case("imagefolder_missing_value_folder", r"train_if: class folder\(s\) \['null'\] have an empty or missing-value name",
         imagefolder(lambda root: shutil.copytree(root / "train_if" / "Bag", root / "train_if" / "null")),
         {"layout": "imagefolder", "train_dir": "train_if"}),
    Case("imagefolder_symlink_outside", r"train_if: 1 image\(s\) lead outside data\.root",
         imagefolder(lambda root: (root / "train_if" / "Bag" / "link.png").symlink_to(outside_file(root))),
         {"layout": "imagefolder", "train_dir": "train_if"}),
    # images
    Case("truncated_image", r"Cannot decode image .*tr0002\.png.*data\.skip_bad_images=true", truncate("train/tr0002.png"),
         reader="verify"),
    Case("too_many_pixels", r"tr0000\.png has 32×32 = 1,024 pixels, more than data\.max_image_pixels=500 .*decompression "
         r"bombs.*skip_bad_images=true", spec={"max_image_pixels": 500}, reader="verify"),
    Case("bomb_header", r"tr0001\.png is refused as a decompression bomb: .*900000000 pixels.*data\.max_image_pixels="
         r"89478485", write_text("train/tr0001.png", bomb_png(30000, 30000)), reader="verify"),
    Case("bad_pixel_limit", r"data\.max_image_pixels=0 must be a positive integer", spec={"max_image_pixels": 0},
         reader="verify", error=ConfigError),
    Case("wide_values_beyond_16_bit", r"tr0004\.png is a 32-bit \(I\) image with values 0\.\.70000",
         save_image("train/tr0004.png", np.array([[0, 70000]], dtype=np.int32)), reader="verify"),
    Case("all_images_unreadable", r"All 24 images are unreadable",
         lambda root: [truncate(f"train/{p.name}")(root) for p in (root / "train").glob("*.png")],
         {"skip_bad_images": True}, reader="verify"),
    Case("cache_of_a_too_large_image", r"has 32×32 = 1,024 pixels, more than data\.max_image_pixels=1,000 ",
         spec={"max_image_pixels": 1000}, reader="cache"),
    # folds
    Case("kfold_class_too_small", r"data\.n_folds=10: stratified 10-fold needs at least 10 rows of every class, and "
         r".*train\.csv has fewer of 3 class\(es\): 'Bag' \(8 rows\), 'Dress' \(8 rows\), 'Sandal' \(8 rows\)\. To fix "
         r"it, lower data\.n_folds to at most 8", spec={"n_folds": 10}, reader="folds"),
    Case("holdout_single_row_class", r"needs at least 2 rows of every class .*single row of 1 class\(es\): 'Bag' \(1 row\)",
         keep_rows(1), reader="folds"),
    Case("holdout_fraction_out_of_range", r"data\.holdout_fraction=1\.5 must lie strictly between 0 and 1",
         spec={"holdout_fraction": 1.5}, reader="folds"),
    Case("holdout_fraction_too_small", r"data\.holdout_fraction=0\.05 puts 2 of 24 rows .*into validation.*each of the 3 "
         r"classes.*between 0\.125 and 0\.875", spec={"holdout_fraction": 0.05}, reader="folds"),
    Case("fold_out_of_range", r"data\.fold=3 is out of range: accepted 0\.\.1 for data\.n_folds=2",
         spec={"n_folds": 2, "fold": 3}, reader="folds"),
    Case("negative_n_folds", r"data\.n_folds=-2 is not valid: use 0 \(a holdout split\) or K >= 2",
         spec={"n_folds": -2}, reader="folds"),
    Case("saved_folds_of_another_scheme", r"folds\.csv holds folds for different data or a different fold scheme "
         r"\(data\.n_folds=3", saved_folds(2), {"n_folds": 3}, reader="folds"),
    # group and fold columns (data.group_col, data.fold_col)
    Case("group_column_missing", r"train\.csv: no column 'patient' \(data\.group_col\)\. Columns found: \['id', 'label'\]",
         spec={"group_col": "patient", "n_folds": 2}, reader="folds"),
    Case("fold_column_missing", r"train\.csv: no column 'kfold' \(data\.fold_col\)\. Columns found: \['id', 'label'\]",
         spec={"fold_col": "kfold", "n_folds": 2}, reader="folds"),
    Case("fold_column_with_gaps", r"train\.csv: the fold column 'kfold' \(data\.fold_col\) holds folds \[0, 1, 3\]; "
         r"folds must be 0\.\.K-1 .*fold\(s\) \[2\] are missing", column("kfold", lambda i: str([0, 1, 3][i % 3])),
         {"fold_col": "kfold", "n_folds": 4}, reader="folds"),
    Case("fold_column_not_integer", r"train\.csv: 2 row\(s\) have a fold that is not a non-negative integer "
         r"\('', '1\.5'\) in column 'kfold' \(data\.fold_col\): line 4 \(id 'tr0002'\), line 7 \(id 'tr0005'\)",
         column("kfold", lambda i: {2: "", 5: "1.5"}.get(i, str(i % 2))), {"fold_col": "kfold", "n_folds": 2},
         reader="folds"),
    Case("fold_column_contradicts_n_folds", r"holds 3 folds \(0\.\.2\), but data\.n_folds=2\. Set data\.n_folds=3",
         column("kfold", lambda i: str(i % 3)), {"fold_col": "kfold", "n_folds": 2}, reader="folds"),
    Case("fold_column_holding_a_whole_class", r"train\.csv: fold 0 of the fold column 'kfold' \(data\.fold_col\) holds "
         r"every row of 1 class\(es\): 'Bag' \(8 rows\)\. Its member would train without them and never predict them"
         r".*Spread each class over at least two folds", column("kfold", lambda i: "0" if i >= 16 else str(i % 2)),
         {"fold_col": "kfold", "n_folds": 2}, reader="folds"),
    Case("group_values_empty", r"train\.csv: 2 row\(s\) have an empty group \('', 'nan'\) in column 'patient' "
         r"\(data\.group_col\): line 3 \(id 'tr0001'\), line 6 \(id 'tr0004'\)",
         column("patient", lambda i: {1: "", 4: "nan"}.get(i, f"p{i // 2}")), {"group_col": "patient", "n_folds": 2},
         reader="folds"),
    Case("fewer_groups_than_folds", r"train\.csv has 3 group\(s\) in data\.group_col, fewer than the 4 folds of "
         r"data\.n_folds=4", column("patient", lambda i: f"p{i // 8}"), {"group_col": "patient", "n_folds": 4},
         reader="folds"),
    Case("group_column_without_a_csv", r"data\.group_col / data\.fold_col need data\.layout=csv \(a train\.csv\); got "
         r"'imagefolder'", imagefolder(), {"layout": "imagefolder", "train_dir": "train_if", "group_col": "patient",
                                          "n_folds": 2}, reader="folds"),
    Case("saved_folds_of_another_rule", r"folds\.csv holds folds for different data or a different fold scheme .*made by "
         r"rule 'stratified k=2 seed=42', this run's by 'stratified_group k=2 group=patient seed=42'",
         saved_folds_then(2, column("patient", lambda i: f"p{i // 2}")), {"group_col": "patient", "n_folds": 2},
         reader="folds"),
    # the test set and the sample submission
    Case("sample_submission_missing", r"Sample submission .*sample_submission\.csv does not exist \(config key "
         r"data\.sample_submission\)", remove("sample_submission.csv"), reader="sample"),
    Case("train_and_test_in_one_folder", r"6 sample submission ids do not match the 30 test images: 24 ids only in the "
         r"test folder.*set data\.test_csv=sample_submission\.csv to take the test ids from the sample",
         lambda root: [shutil.copy(p, root / "test") for p in (root / "train").glob("*.png")], reader="sample"),
    Case("sample_ids_keep_extension", r"The sample's ids keep their file extension \(e\.g\. 'te000\.png'\) and the test "
         r"ids do not.*set data\.test_csv=sample_submission\.csv and data\.ext=''",
         write_text("sample_submission.csv", "id,label\n" + "".join(f"te{k:03d}.png,Bag\n" for k in range(6))),
         reader="sample"),
    Case("test_ids_carry_extension", r"The test ids carry a file extension \(e\.g\. 'te000\.png'\) and the sample's ids "
         r"do not: remove the extension from the ids in data\.test_csv \(test\.csv\)",
         ids_csv([f"te{k:03d}.png" for k in range(6)]), {"test_csv": "test.csv", "ext": ""}, reader="sample"),
    Case("train_ids_keep_extension", r"train\.csv: 24 listed image\(s\) missing.*The ids in column 'id' keep their file "
         r"extension \(e\.g\. 'tr0000\.png'\), so <id>\.png names no file: set data\.ext=''",
         edit_train(lambda df: df.assign(id=df["id"] + ".png"))),
    Case("test_stem_in_two_files", r"Test folder .*test: 1 id\(s\) belong to several files .*\['te000\.jpg', 'te000\.png'\]",
         lambda root: shutil.copy(root / "test" / "te000.png", root / "test" / "te000.jpg"), reader="test"),
    Case("test_csv_header_only", r"test\.csv \(config key data\.test_csv\): has a header \(\['id'\]\) but no rows",
         ids_csv([]), {"test_csv": "test.csv"}, reader="test"),
    Case("test_csv_duplicate_ids", r"test\.csv: 1 duplicate id\(s\) in column 'id', e\.g\. \['te001'\]",
         ids_csv(["te000", "te001", "te001"]), {"test_csv": "test.csv"}, reader="test"),
    Case("test_csv_path_outside", r"test\.csv: 1 image path\(s\) made from column 'id'.*lead outside data\.root",
         ids_csv(["te000", "../../etc/passwd"]), {"test_csv": "test.csv", "ext": ""}, reader="test"),
    Case("test_folder_symlink_outside", r"Test folder|test: 1 image\(s\) lead outside data\.root .*id 'zz'",
         lambda root: (root / "test" / "zz.png").symlink_to(outside_file(root)), reader="test"),
    Case("empty_test_folder", r"Test folder .*test contains no images with extensions",
         lambda root: [p.unlink() for p in (root / "test").iterdir()], reader="test"),
]


def _run(case: Case, tiny: Path, tmp_path: Path) -> tuple[Path, dict[str, int]]:
    root = copy_competition(tiny, tmp_path / "comp")
    if case.damage is not None:
        case.damage(root)
    return root, files_under(tmp_path)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_data_is_refused_naming_its_cause_and_nothing_is_written(case: Case, tiny: Path, tmp_path: Path) -> None:
    root, before = _run(case, tiny, tmp_path)
    spec = DataSpec(**{"root": str(root), **{k: (v.format(root=root) if isinstance(v, str) else v)
                                             for k, v in case.spec.items()}})
    with pytest.raises(case.error, match=case.match):
        READERS[case.reader](spec, tmp_path)
    assert files_under(tmp_path) == before  # no folds.csv, no cache file, nothing changed
    assert not temp_files(tmp_path)


@pytest.mark.parametrize("value", MISSING)
def test_empty_or_missing_value_labels_name_the_rows(value: str, tiny: Path, tmp_path: Path) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    set_cells("label", {1: value, 4: value})(root)
    with pytest.raises(DataError, match=rf"train\.csv: 2 row\(s\) have an empty or missing label \({value!r}\) in column "
                                        r"'label': line 3 \(id 'tr0001'\), line 6 \(id 'tr0004'\)\. Every training image "
                                        "needs a class"):
        read_train_table(DataSpec(root=str(root)))


def test_labels_and_class_names_are_stripped_of_spaces(tiny: Path, tmp_path: Path) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    set_cells("label", {0: "Dress ", 1: "  Dress", 9: "Sandal\t"})(root)
    table = read_train_table(DataSpec(root=str(root)))
    assert table.classes == ["Bag", "Dress", "Sandal"]  # not 'Dress ' as a fourth class
    assert [table.classes[i] for i in table.labels[[0, 1, 9]]] == ["Dress", "Dress", "Sandal"]
    explicit = read_train_table(DataSpec(root=str(root), classes=[" Sandal", "Dress ", "Bag"]))
    assert explicit.classes == ["Sandal", "Dress", "Bag"]
    imagefolder(lambda r: (r / "train_if" / "Bag").rename(r / "train_if" / "Bag "))(root)
    folder_table = read_train_table(DataSpec(root=str(root), layout="imagefolder", train_dir="train_if"))
    assert folder_table.classes == ["Bag", "Dress", "Sandal"]


def test_paths_inside_the_root_and_allowed_outside_paths_are_read(tiny: Path, tmp_path: Path) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    inside = root / "images"
    inside.mkdir()
    shutil.copy(root / "train" / "tr0000.png", inside / "real.png")
    (root / "train" / "tr0001.png").unlink()
    (root / "train" / "tr0001.png").symlink_to(inside / "real.png")  # a symlink that stays inside: followed
    table = read_train_table(DataSpec(root=str(root)))
    assert len(table) == 24
    symlink_outside("train/tr0005.png")(root)
    spec = DataSpec(root=str(root), allow_outside_root=True)
    assert read_train_table(spec).paths[5].resolve() == (root.parent / "elsewhere.png").resolve()


def test_the_suggested_settings_fix_the_sample_id_mismatches(tiny: Path, tmp_path: Path) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    for p in (root / "train").glob("*.png"):  # train and test images in one folder
        shutil.copy(p, root / "test")
    table, ids = read_test_in_sample_order(DataSpec(root=str(root), test_csv="sample_submission.csv"), TINY_CLASSES)
    assert ids == table.ids == [f"te{k:03d}" for k in range(6)]
    write_text("sample_submission.csv", "id,label\n" + "".join(f"te{k:03d}.png,Bag\n" for k in range(6)))(root)
    table, ids = read_test_in_sample_order(DataSpec(root=str(root), test_csv="sample_submission.csv", ext=""), TINY_CLASSES)
    assert table.ids[0] == "te000.png" and table.paths[0] == root / "test" / "te000.png"
    edit_train(lambda df: df.assign(id=df["id"] + ".png"))(root)  # train ids that keep their extension too
    train = read_train_table(DataSpec(root=str(root), ext=""))
    assert train.ids[0] == "tr0000.png" and train.paths[0] == root / "train" / "tr0000.png"


def test_skip_bad_images_skips_truncated_too_large_and_unscalable_files(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = copy_competition(tiny, tmp_path / "comp")
    truncate("train/tr0002.png")(root)
    write_text("train/tr1001.png", bomb_png(30000, 30000))(root)
    save_image("train/tr2004.png", np.array([[0, 70000]], dtype=np.int32))(root)
    kept = verify_images(read_train_table(DataSpec(root=str(root))), skip_bad=True)
    assert len(kept) == 21 and not {"tr0002", "tr1001", "tr2004"} & set(kept.ids)
    assert "Skipped 3 unreadable image(s) of 24" in caplog.text
    assert "decompression bomb" in caplog.text  # each skipped file is named with its reason


def test_pixel_limit_can_be_raised_or_lifted(tmp_path: Path) -> None:
    path = tmp_path / "big.png"
    Image.new("L", (40, 40), 7).save(path)
    from pipeline.data.decode import load_rgb

    with pytest.raises(DataError, match="more than data.max_image_pixels=1,000"):
        load_rgb(path, max_pixels=1000)
    assert load_rgb(path, max_pixels=1600).shape == (40, 40, 3)
    assert load_rgb(path, max_pixels=None)[0, 0, 0] == 7


def test_reading_data_never_needs_write_access(tiny: Path, tmp_path: Path) -> None:
    """A read-only competition folder (as on Kaggle's /kaggle/input) is read and checked without writing."""
    root = copy_competition(tiny, tmp_path / "comp")
    for path in [root, *root.rglob("*")]:
        os.chmod(path, 0o555 if path.is_dir() else 0o444)
    try:
        spec = DataSpec(root=str(root))
        assert len(verify_images(read_train_table(spec), False)) == 24
        assert len(read_test_in_sample_order(spec, TINY_CLASSES)[0]) == 6
    finally:
        for path in [root, *root.rglob("*")]:
            os.chmod(path, 0o755 if path.is_dir() else 0o644)


def test_an_image_cache_on_a_full_disk_is_one_line_and_leaves_no_file(tiny: Path, tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Writing into a memmap on a full disk would kill the process (SIGBUS): the space is reserved first, and
    a full disk is then an error naming the cache file, with nothing left in the cache folder."""
    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    comp = copy_competition(tiny, tmp_path / "comp")
    (tmp_path / "cache").mkdir()
    before = files_under(tmp_path)
    monkeypatch.setattr(os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(OutputError, match=rf"^Cannot write {tmp_path / 'cache'}/.*\.npy: disk full \(ENOSPC: No space "
                                          r"left on device\)\. Free space .*; the partial file was removed\.$"):
        run_cache(DataSpec(root=str(comp), in_chans=1, num_workers=0), tmp_path)
    assert files_under(tmp_path) == before and not temp_files(tmp_path)
