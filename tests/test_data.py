"""The data layer on real files: layouts, decoding, folds and every bad-input error."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import pipeline.data.decode as decode_mod
from pipeline.core.errors import DataError
from pipeline.data.dataset import ImageDataset
from pipeline.data.decode import decode_notes, load_rgb, verify_images
from pipeline.data.demo import CLASSES
from pipeline.data.folds import load_or_create_folds, make_folds, split_indices
from pipeline.data.spec import DataSpec
from pipeline.data.tables import ImageTable, read_test_table, read_train_table


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


def _save(img: Image.Image, path: Path) -> Path:
    img.save(path)
    return path


def _decoded_mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def test_l_and_rgb_decode_to_their_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(load_rgb(_save(Image.fromarray(rgb, "RGB"), tmp_path / "rgb.png")), rgb)
    gray = rgb[..., 0]
    out = load_rgb(_save(Image.fromarray(gray, "L"), tmp_path / "l.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, axis=2))


def test_rgba_and_la_are_composited_onto_black(tmp_path: Path) -> None:
    # opaque red, half-transparent green, fully transparent white (which must come out black, not white)
    rgba = np.array([[[255, 0, 0, 255], [0, 200, 0, 128], [255, 255, 255, 0]]], dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png"))
    np.testing.assert_array_equal(out, [[[255, 0, 0], [0, 100, 0], [0, 0, 0]]])
    la = np.array([[[200, 255], [200, 0]]], dtype=np.uint8)
    out = load_rgb(_save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(out, [[[200, 200, 200], [0, 0, 0]]])


def test_palette_with_a_transparent_entry(tmp_path: Path) -> None:
    img = Image.new("P", (3, 1))
    img.putpalette([255, 0, 0, 0, 0, 255, 9, 9, 9])  # 0: red (transparent), 1: blue, 2: grey
    img.putdata([0, 1, 2])
    img.info["transparency"] = 0
    path = _save(img, tmp_path / "p.png")
    assert _decoded_mode(path) == "P"
    np.testing.assert_array_equal(load_rgb(path), [[[0, 0, 0], [0, 0, 255], [9, 9, 9]]])


def test_16_bit_full_range_is_divided_by_257(tmp_path: Path) -> None:
    values = np.array([[0, 257, 32896, 65535], [1000, 20000, 40000, 60000]], dtype=np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "g16.png")
    assert _decoded_mode(path) == "I;16"
    out = load_rgb(path)
    np.testing.assert_array_equal(out[..., 0], np.rint(values / 257).astype(np.uint8))
    assert out[0, 3, 0] == 255 and out[0, 1, 0] == 1
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # greyscale on every channel


def test_16_bit_holding_8_bit_values_keeps_them_and_warns_once_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = np.array([[0, 17, 128, 254]], dtype=np.uint16)  # an 8-bit scan saved as 16-bit
    paths = [_save(Image.fromarray(values + i), tmp_path / f"s{i}.png") for i in range(3)]
    paths[2] = _save(Image.fromarray(values.astype(np.uint16) * 257), tmp_path / "s2.png")  # a real 16-bit one
    decode_mod.__dict__["_eight_bit_wide"] = 0  # as in a fresh process
    with caplog.at_level("WARNING", logger="pipeline.data.decode"):
        kept = verify_images(ImageTable(["s0", "s1", "s2"], paths), skip_bad=False)
    assert len(kept) == 3
    np.testing.assert_array_equal(load_rgb(paths[0])[..., 0], values)  # not darkened 257 times
    np.testing.assert_array_equal(load_rgb(paths[1])[..., 0], values + 1)
    np.testing.assert_array_equal(load_rgb(paths[2])[..., 0], values)
    per_image = [r for r in caplog.records if "kept as 8-bit values" in r.getMessage()]
    assert len(per_image) == 1 and "s0.png" in per_image[0].getMessage()  # one warning, not one per image
    assert "2 of 3 images are 16/32-bit files holding 8-bit values" in caplog.text
    assert decode_notes()["eight_bit_in_wide"] >= 2


def test_32_bit_integer_images_follow_the_16_bit_rule_and_larger_values_are_refused(tmp_path: Path) -> None:
    wide = np.array([[0, 257, 65535]], dtype=np.int32)
    path = _save(Image.fromarray(wide), tmp_path / "i32.tif")
    assert _decoded_mode(path) == "I"
    np.testing.assert_array_equal(load_rgb(path)[..., 0], [[0, 1, 255]])
    small = np.array([[3, 200]], dtype=np.int32)
    np.testing.assert_array_equal(load_rgb(_save(Image.fromarray(small), tmp_path / "i8.tif"))[..., 0], small)
    for name, bad in (("big", [[0, 70000]]), ("negative", [[-5, 10]])):
        path = _save(Image.fromarray(np.array(bad, dtype=np.int32)), tmp_path / f"{name}.tif")
        with pytest.raises(DataError, match=rf"{name}\.tif is a 32-bit \(I\) image with values .*outside the 16-bit "
                                            r"range.*refused rather than clipped"):
            load_rgb(path)


def test_float_images_by_their_range(tmp_path: Path) -> None:
    cases = {
        "unit": (np.array([[0.0, 0.5, 1.0]]), [[0, 128, 255]]),
        "bytes": (np.array([[0.0, 100.4, 255.0]]), [[0, 100, 255]]),
        "wide": (np.array([[0.0, 257.0, 65535.0]]), [[0, 1, 255]]),
    }
    for name, (values, expected) in cases.items():
        path = _save(Image.fromarray(values.astype(np.float32), "F"), tmp_path / f"{name}.tif")
        assert _decoded_mode(path) == "F"
        np.testing.assert_array_equal(load_rgb(path)[..., 0], expected, err_msg=name)
    for name, values in (("nan", [[0.0, np.nan]]), ("huge", [[0.0, 1e6]])):
        path = _save(Image.fromarray(np.array(values, dtype=np.float32), "F"), tmp_path / f"{name}.tif")
        with pytest.raises(DataError, match=rf"{name}\.tif is a float \(F\) image"):
            load_rgb(path)


@pytest.mark.parametrize("mode", ["1", "CMYK", "YCbCr"])
def test_other_modes_decode_to_rgb_uint8(tmp_path: Path, mode: str) -> None:
    base = np.random.default_rng(0).integers(0, 255, (9, 7, 3), dtype=np.uint8)
    img = Image.fromarray(base, "RGB").convert(mode)
    path = _save(img, tmp_path / ("x.tif" if mode != "1" else "x.png"))
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (9, 7, 3)
    np.testing.assert_array_equal(out, np.array(img.convert("RGB")))


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
