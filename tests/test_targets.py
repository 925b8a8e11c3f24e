"""Every competition target: the task declared or inferred (with its reason), the targets read per task, and every
bad target refused at read time naming the file, column and rows, with nothing written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import DataError
from pipeline.data.folds import load_or_create_folds
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_train_table
from tests.helpers import files_under, temp_files

TAGS = ["haze primary", "clear", "primary water", "clear primary", "water"]


def write_table(root: Path, columns: dict[str, Sequence[str]], sample: dict[str, Sequence[str]] | None = None) -> Path:
    """A competition with ``train.csv`` (an ``id`` column, then ``columns``), one real 8×8 PNG per row under
    ``train/``, and (when given) ``sample_submission.csv``; row ``k`` has id ``i<k>``."""
    n = len(next(iter(columns.values())))
    ids = [f"i{k:02d}" for k in range(n)]
    (root / "train").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for image_id in ids:
        Image.fromarray(rng.integers(0, 255, (8, 8)).astype(np.uint8), "L").save(root / "train" / f"{image_id}.png")
    pd.DataFrame({"id": ids, **{k: list(v) for k, v in columns.items()}}).to_csv(root / "train.csv", index=False)
    if sample is not None:
        pd.DataFrame({"id": ["t0", "t1"], **{k: list(v) for k, v in sample.items()}}).to_csv(
            root / "sample_submission.csv", index=False)
    return root


def cycle(values: Sequence[str], n: int) -> list[str]:
    return [values[k % len(values)] for k in range(n)]


def read(root: Path, **kw: object):  # noqa: ANN201 - an ImageTable
    return read_train_table(DataSpec(root=str(root), **kw))  # type: ignore[arg-type]


# --- inference: each layout and the reason it gives ---------------------------------------------------------------


LAYOUTS = [
    ("space-separated tags, and the sample's too", {"label": cycle(TAGS, 20)}, {"label": ["clear primary"] * 2}, {},
     "multilabel", ["clear", "haze", "primary", "water"],
     "label column 'label' holds space-separated tags (4 distinct), and so does the sample submission's column "
     "'label' → multilabel"),
    ("tags joined by data.tag_sep", {"tags": cycle(["a|b", "b", "c|a"], 9)}, None,
     {"label_col": "tags", "tag_sep": "|"}, "multilabel", ["a", "b", "c"],
     "data.tag_sep='|': column 'tags' holds tags joined by it → multilabel"),
    ("0/1 columns in data.label_cols", {"cat": cycle("0110", 8), "dog": cycle("1000", 8)}, None,
     {"label_cols": ["dog", "cat"]}, "multilabel", ["dog", "cat"],
     "data.label_cols lists 2 0/1 label columns → multilabel"),
    ("numbers with fractions", {"label": [f"{k / 4:.2f}" for k in range(12)]}, None, {}, "regression", ["label"],
     "label column 'label' holds numbers with fractions (e.g. '0.25') → regression"),
    ("2 integers and probabilities in the sample", {"target": cycle("01", 10)}, {"target": ["0.5", "0.5"]},
     {"label_col": "target"}, "binary", ["0", "1"],
     "label column 'target' holds 2 integer values ['0', '1'] and the sample submission's column 'target' holds "
     "probabilities (e.g. '0.5') → binary"),
    ("2 integers, the sample unsure: multiclass", {"label": cycle("01", 10)}, {"label": ["0", "1"]}, {}, "multiclass",
     ["0", "1"], "label column 'label' holds 2 integer values → multiclass (integers alone do not say ordinal: "
     "declare data.task=ordinal for ordered grades)"),
    ("many distinct integers, the sample a value", {"age": [str(k) for k in range(30)]}, {"age": ["31.5", "2"]},
     {"label_col": "age"}, "regression", ["age"],
     "label column 'age' holds 30 distinct integers and the sample submission's column 'age' holds a number with a "
     "fraction ('31.5') → regression (declare data.task=multiclass for class ids, or data.task=ordinal for grades)"),
    ("many distinct integers: class ids as before", {"label": [str(k) for k in range(30)]}, None, {}, "multiclass",
     sorted((str(k) for k in range(30)), key=int), "label column 'label' holds 30 integer values → multiclass "
     "(integers alone do not say ordinal: declare data.task=ordinal for ordered grades)"),
    ("a few integers: never guessed ordinal", {"label": cycle("01234", 10)}, None, {}, "multiclass",
     ["0", "1", "2", "3", "4"], "label column 'label' holds 5 integer values → multiclass (integers alone do not say "
     "ordinal: declare data.task=ordinal for ordered grades)"),
    ("class names with spaces, the sample one name per row", {"label": cycle(["Ankle boot", "T-shirt/top", "Bag"], 9)},
     {"label": ["T-shirt/top"] * 2}, {}, "multiclass", ["Ankle boot", "Bag", "T-shirt/top"],
     "label column 'label' holds 3 class names → multiclass"),
    ("many integers but data.num_classes", {"label": [str(k) for k in range(30)]}, None, {"num_classes": 30},
     "multiclass", [str(k) for k in range(30)], "data.classes / data.num_classes name the classes → multiclass"),
    ("declared ordinal", {"grade": cycle("1234", 8)}, None, {"label_col": "grade", "task": "ordinal"}, "ordinal",
     ["grade"], "declared by data.task=ordinal"),
]


@pytest.mark.parametrize(("columns", "sample", "keys", "kind", "outputs", "reason"), [c[1:] for c in LAYOUTS],
                         ids=[c[0] for c in LAYOUTS])
def test_each_layout_gives_its_task_and_says_why(tmp_path: Path, columns: dict[str, list[str]],
                                                 sample: dict[str, list[str]] | None, keys: dict[str, object],
                                                 kind: str, outputs: list[str], reason: str) -> None:
    table = read(write_table(tmp_path / "c", columns, sample), **keys)
    assert table.task is not None
    assert (table.task.kind, list(table.task.columns), table.task.reason) == (kind, outputs, reason)
    assert table.classes == outputs and len(table.labels) == len(table)


def test_multilabel_targets_from_tags_and_from_columns(tmp_path: Path) -> None:
    tags = read(write_table(tmp_path / "a", {"label": ["b a", "c", "a  c", "b"]}), task="multilabel")
    assert tags.task.reason == "declared by data.task=multilabel"
    assert tags.classes == ["a", "b", "c"] and tags.labels.dtype == np.float32
    assert tags.labels.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1], [0, 1, 0]]
    ordered = read(tmp_path / "a", tag_sep=" ", classes=["c", "b", "a", "d"])  # data.classes: its order, unseen 'd'
    assert ordered.classes == ["c", "b", "a", "d"] and ordered.labels[0].tolist() == [0, 1, 1, 0]
    cols = read(write_table(tmp_path / "b", {"x": ["1", "0", "0"], "y": ["0", "1.0", "0"]}), label_cols=["x", "y"])
    assert cols.labels.tolist() == [[1, 0], [0, 1], [0, 0]]  # an all-zero row: explicitly no label


def test_value_targets_and_their_range(tmp_path: Path) -> None:
    root = write_table(tmp_path / "c", {"label": ["0.5", "2.25", "1.0", "-1.5"], "grade": ["3", "1", "2", "2.0"]})
    reg = read(root)
    assert reg.task.kind == "regression" and reg.labels.dtype == np.float32
    assert reg.labels.tolist() == [0.5, 2.25, 1.0, -1.5] and (reg.task.low, reg.task.high) == (-1.5, 2.25)
    assert (read(root, target_range=[-2, 5]).task.low, read(root, target_range=[-2, 5]).task.high) == (-2.0, 5.0)
    ordinal = read(root, label_col="grade", task="ordinal")
    assert ordinal.labels.tolist() == [3, 1, 2, 2] and (ordinal.task.low, ordinal.task.high) == (1.0, 3.0)
    declared = read(root, label_col="grade", task="ordinal", target_range=[0, 4])
    assert declared.task.grades.tolist() == [0, 1, 2, 3, 4]


def test_one_label_per_image_is_read_as_before_with_its_task(demo_slice: Path, tmp_path: Path) -> None:
    table = read(demo_slice)
    assert table.task is not None and table.task.kind == "multiclass"
    assert list(table.task.columns) == table.classes and table.labels.dtype == np.int64
    assert table.task.reason == f"label column 'label' holds {len(table.classes)} class names → multiclass"
    folder = tmp_path / "train" / "Bag"
    folder.mkdir(parents=True)
    Image.new("L", (8, 8)).save(folder / "a.png")
    Image.new("L", (8, 8)).save(tmp_path / "train" / "Bag" / "b.png")
    folder_task = read(tmp_path, layout="imagefolder").task
    assert folder_task.reason == "layout imagefolder: one sub-folder per class → multiclass"
    binary = read(write_table(tmp_path / "b", {"label": ["dog", "cat", "dog"]}), task="binary")
    assert (binary.task.kind, binary.classes, binary.labels.tolist()) == ("binary", ["cat", "dog"], [1, 0, 1])


# --- bad targets: one clear error at read time, nothing written ------------------------------------------------------

BAD = [
    ("regression with text labels", {"y": ["1.5", "2", "cat", "0.5"]}, {"label_col": "y", "task": "regression"},
     r"train\.csv: 1 row\(s\) have a target that is not a number \('cat'\) in column 'y': line 4 \(id 'i02'\)\. Every "
     r"row needs a finite number: the task is regression \(declared by data.task=regression\)"),
    ("a NaN regression target", {"label": ["1.5", "nan", "2.5", ""]}, {},
     r"train\.csv: 2 row\(s\) have a target that is not a number \('', 'nan'\) in column 'label': line 3 \(id 'i01'\), "
     r"line 5 \(id 'i03'\)\. .*the task is regression \(label column 'label' holds numbers with fractions"),
    ("an ordinal grade that is not an integer", {"g": ["1", "2.5", "3", "0"]}, {"label_col": "g", "task": "ordinal"},
     r"train\.csv: 1 row\(s\) have a grade that is not an integer \('2\.5'\) in column 'g': line 3 \(id 'i01'\)\. "
     r"Ordinal targets are integer grades.*data.task=regression"),
    ("an ordinal grade outside the range", {"g": ["1", "2", "7", "0"]},
     {"label_col": "g", "task": "ordinal", "target_range": [0, 4]},
     r"train\.csv: 1 row\(s\) have a target outside data\.target_range=\[0, 4\] \('7'\) in column 'g': line 4 "
     r"\(id 'i02'\)\. Widen data\.target_range"),
    ("an ordinal range without integer ends", {"g": ["1", "2", "3"]},
     {"label_col": "g", "task": "ordinal", "target_range": [0.5, 4]},
     r"data\.target_range=\[0\.5, 4\]: ordinal grades are integers"),
    ("an empty tag list", {"tags": ["a b", "", "b", "  "]}, {"label_col": "tags", "tag_sep": " "},
     r"train\.csv: 2 row\(s\) have an empty tag list \('  ', ''\) in column 'tags': line 3 \(id 'i01'\), line 5 "
     r"\(id 'i03'\)\. .*give one 0/1 column per label with data\.label_cols \(an all-zero row says 'no label'\)"),
    ("a label_cols value other than 0/1", {"x": ["1", "0", "yes", "2"], "y": ["0"] * 4}, {"label_cols": ["x", "y"]},
     r"train\.csv: 2 row\(s\) have a value other than 0/1 \('2', 'yes'\) in column 'x': line 4 \(id 'i02'\), line 5 "
     r"\(id 'i03'\)\. data\.label_cols holds one 0/1 column per label"),
    ("a missing label_cols column", {"x": ["1", "0"]}, {"label_cols": ["x", "y"]},
     r"train\.csv: no column 'y'\. Columns found: \['id', 'x'\]"),
    ("task=binary with 3 classes", {"label": ["a", "b", "c", "a"]}, {"task": "binary"},
     r"The task is binary \(declared by data\.task=binary\), but .*train\.csv holds 3 classes \['a', 'b', 'c'\]; a "
     r"binary task has exactly 2"),
    ("target_range with low >= high", {"label": ["1.5", "2.5"]}, {"target_range": [4, 1]},
     r"data\.target_range=\[4, 1\]; accepted: \[low, high\], two numbers with low < high"),
    ("label_cols and tag_sep both set", {"label": ["a b"]}, {"label_cols": ["label"], "tag_sep": " "},
     r"data\.label_cols=\['label'\] and data\.tag_sep=' ' are both set"),
    ("an unknown task", {"label": ["a"]}, {"task": "regresion"},
     r"data\.task='regresion'; accepted: auto, multiclass, binary, multilabel, regression, ordinal"),
    ("a range for a task that has none", {"label": ["a", "b"]}, {"target_range": [0, 1]},
     r"data\.target_range=\[0, 1\] is set, but the task is multiclass \(label column 'label' holds 2 class names"),
    ("label_cols for a regression task", {"x": ["0", "1"]}, {"label_cols": ["x"], "task": "regression"},
     r"data\.label_cols is set, but the task is regression \(declared by data\.task=regression\)"),
    ("a tag outside data.classes", {"tags": ["a b", "c"]}, {"label_col": "tags", "tag_sep": " ", "classes": ["a", "b"]},
     r"train\.csv: labels \['c'\] are not in data\.classes \['a', 'b'\]"),
    ("one value for every row", {"y": ["2.5", "2.5"]}, {"label_col": "y"},
     r"train\.csv: every row has the same regression target 2\.5 in column 'y'; there is nothing to learn"),
]


@pytest.mark.parametrize(("columns", "keys", "match"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_target_is_refused_naming_its_cause_and_nothing_is_written(
        tmp_path: Path, columns: dict[str, list[str]], keys: dict[str, object], match: str) -> None:
    root = write_table(tmp_path / "c", columns)
    before = files_under(tmp_path)
    spec = DataSpec(root=str(root), **keys)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=match):
        load_or_create_folds(tmp_path / "sweep" / "folds.csv", read_train_table(spec), spec)
    assert files_under(tmp_path) == before and not temp_files(tmp_path)


def test_imagefolder_holds_only_class_tasks(tmp_path: Path) -> None:
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "train" / "a" / "x.png")
    with pytest.raises(DataError, match=r"/train: data\.task=regression: data\.layout=imagefolder holds one class "
                                        r"per sub-folder \(multiclass or binary\); give a train\.csv"):
        read(tmp_path, layout="imagefolder", task="regression")
