"""The data layer on real files: layouts, decoding, folds and every bad-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.data.dataset import ImageDataset
from pipeline.data.decode import load_rgb, verify_images
from pipeline.data.demo import CLASSES
from pipeline.data.folds import load_or_create_folds, make_folds, split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_test_table, read_train_table


def spec(root: Path, **kw: object) -> DataSpec:
    return DataSpec(root=str(root), **kw)  # type: ignore[arg-type]


def test_demo_csv_layout(demo_slice: Path) -> None:
    table = read_train_table(spec(demo_slice))
    assert len(table) == 600
    assert set(table.classes) == set(CLASSES)
    assert table.labels is not None and table.labels.max() == len(table.classes) - 1
    assert table.paths[0] == demo_slice / "train" / f"{table.ids[0]}.png"


def test_explicit_classes_keep_their_order(demo_slice: Path) -> None:
    table = read_train_table(spec(demo_slice, classes=CLASSES))
    assert table.classes == CLASSES
    raw = pd.read_csv(demo_slice / "train.csv")["label"].tolist()
    assert [CLASSES[i] for i in table.labels[:20]] == raw[:20]


def test_path_column_and_custom_columns(tmp_path: Path, demo_slice: Path) -> None:
    df = pd.read_csv(demo_slice / "train.csv").head(30)
    df = df.rename(columns={"id": "image_id", "label": "target"})
    df["file"] = "train/" + df["image_id"] + ".png"
    df.to_csv(tmp_path / "labels.csv", index=False)
    shutil.copytree(demo_slice / "train", tmp_path / "train")
    table = read_train_table(
        spec(tmp_path, train_csv="labels.csv", id_col="image_id", label_col="target", path_col="file", train_dir="")
    )
    assert len(table) == 30 and table.paths[0].is_file()


def test_imagefolder_layout(tmp_path: Path, demo_slice: Path) -> None:
    df = pd.read_csv(demo_slice / "train.csv").head(40)
    for _, row in df.iterrows():
        folder = tmp_path / "train" / row["label"].replace("/", "-")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(demo_slice / "train" / f"{row['id']}.png", folder)
    table = read_train_table(spec(tmp_path, layout="imagefolder"))
    assert len(table) == 40
    assert table.classes == sorted({lbl.replace("/", "-") for lbl in df["label"]})
    assert all(table.classes[y] == p.parent.name for y, p in zip(table.labels, table.paths))


def test_test_folder_and_test_csv(tmp_path: Path, demo_slice: Path) -> None:
    table = read_test_table(spec(demo_slice))
    assert len(table) == 60 and table.labels is None and table.ids == sorted(table.ids)
    pd.DataFrame({"id": table.ids[:7]}).to_csv(tmp_path / "test.csv", index=False)
    shutil.copytree(demo_slice / "test", tmp_path / "test")
    t2 = read_test_table(spec(tmp_path, test_csv="test.csv"))
    assert t2.ids == table.ids[:7]


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "I;16", "RGB", "LA", "CMYK"])
def test_any_image_mode_decodes_to_rgb_uint8(tmp_path: Path, mode: str) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (9, 7, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB")
    if mode == "I;16":
        arr16 = (base[..., 0].astype(np.uint16) * 257)
        img = Image.fromarray(arr16)
        assert img.mode.startswith("I;16")
    elif mode == "P":
        img = img.quantize(16)
    else:
        img = img.convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (9, 7, 3)
    if mode == "I;16":  # 16-bit scaled, not clipped to 255
        np.testing.assert_array_equal(out[..., 0], base[..., 0])


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist \(config key data.root\)"):
        read_train_table(spec(tmp_path / "nope"))


def test_csv_without_columns_lists_found_columns(tmp_path: Path) -> None:
    (tmp_path / "train").mkdir()
    pd.DataFrame({"image": ["a"], "class": ["x"]}).to_csv(tmp_path / "train.csv", index=False)
    with pytest.raises(DataError, match=r"no column 'id'.*\['image', 'class'\]"):
        read_train_table(spec(tmp_path))
    with pytest.raises(DataError, match=r"no column 'label'.*\['image', 'class'\]"):
        read_train_table(spec(tmp_path, id_col="image"))


def test_listed_image_missing_on_disk(tmp_path: Path, demo_slice: Path) -> None:
    shutil.copytree(demo_slice, tmp_path / "c")
    (tmp_path / "c" / "train" / "tr00003.png").unlink()
    (tmp_path / "c" / "train" / "tr00007.png").unlink()
    with pytest.raises(DataError, match=r"2 listed image\(s\) missing on disk, first: .*tr00003.png.*tr00007.png"):
        read_train_table(spec(tmp_path / "c"))


def test_truncated_image_named_or_skipped(tmp_path: Path, demo_slice: Path, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(demo_slice, tmp_path / "c")
    bad = tmp_path / "c" / "train" / "tr00005.png"
    bad.write_bytes(bad.read_bytes()[:40])
    table = read_train_table(spec(tmp_path / "c"))
    with pytest.raises(DataError, match=r"tr00005.png.*data.skip_bad_images=true"):
        verify_images(table, skip_bad=False)
    kept = verify_images(table, skip_bad=True)
    assert len(kept) == len(table) - 1 and "tr00005" not in kept.ids
    assert "Skipped 1 unreadable image(s) of 600" in caplog.text


def test_num_classes_contradicting_data(demo_slice: Path) -> None:
    with pytest.raises(DataError, match=r"data.num_classes=5 contradicts the data: .* has 10 classes"):
        read_train_table(spec(demo_slice, num_classes=5))


def test_empty_test_folder(tmp_path: Path) -> None:
    (tmp_path / "test").mkdir()
    with pytest.raises(DataError, match=r"Test folder .*test contains no images"):
        read_test_table(spec(tmp_path))


def test_kfold_stratified_and_deterministic(demo_slice: Path) -> None:
    table = read_train_table(spec(demo_slice))
    a = make_folds(table.ids, table.labels, 5, seed=3, holdout_fraction=0.2)
    b = make_folds(table.ids, table.labels, 5, seed=3, holdout_fraction=0.2)
    c = make_folds(table.ids, table.labels, 5, seed=4, holdout_fraction=0.2)
    assert a.equals(b) and not a["fold"].equals(c["fold"])
    assert sorted(a["fold"].unique()) == [0, 1, 2, 3, 4]
    per_class = pd.crosstab(a["label"], a["fold"])
    assert (per_class.max(axis=1) - per_class.min(axis=1)).max() <= 1  # stratified
    tr, va = split_indices(a, 2, 5)
    assert len(set(tr) & set(va)) == 0 and len(tr) + len(va) == len(table)
    with pytest.raises(DataError, match=r"data.fold=5 is out of range: accepted 0..4"):
        split_indices(a, 5, 5)


def test_holdout_and_saved_folds_are_shared(tmp_path: Path, demo_slice: Path) -> None:
    s = spec(demo_slice, n_folds=0, holdout_fraction=0.25)
    table = read_train_table(s)
    saved = load_or_create_folds(tmp_path / "folds.csv", table, s)
    assert (saved["fold"] == 0).sum() == 150 and set(saved["fold"]) == {-1, 0}
    again = load_or_create_folds(tmp_path / "folds.csv", table, s)
    assert again["fold"].tolist() == saved["fold"].tolist()
    with pytest.raises(DataError, match="different fold scheme"):
        load_or_create_folds(tmp_path / "folds.csv", table, spec(demo_slice, n_folds=5))


def test_dataset_carries_row_index(demo_slice: Path) -> None:
    table = read_train_table(spec(demo_slice))
    ds = ImageDataset(table, None, in_chans=1)
    item = ds[11]
    assert item["index"] == 11 and item["target"] == int(table.labels[11])
    assert tuple(item["image"].shape) == (1, 28, 28)
