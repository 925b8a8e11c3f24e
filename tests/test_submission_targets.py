"""Submission formats of binary, multi-label, regression and ordinal tasks: inference, files byte for byte, errors."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.core.task import Task
from pipeline.submission.build import build_submission, validate_submission, write_submission
from pipeline.submission.format import SubmissionError, SubmissionFormat, format_from_config
from pipeline.submission.target_build import (
    build_target_submission,
    validate_target_submission,
    write_target_submission,
    write_task_submission,
)
from pipeline.submission.target_format import TargetFormat, target_format

BINARY = Task("binary", ("benign", "malignant"))
TAGS = Task("multilabel", ("clear", "haze", "primary"))
VALUE = Task("regression", ("Pawpularity",), 1, 100)
GRADE = Task("ordinal", ("diagnosis",), 0, 4)


def _sample(tmp_path: Path, text: str, name: str = "sample_submission.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _own(task: Task, sample: Path | None = None, **settings: str) -> TargetFormat:
    """``target_format`` where it must give a :class:`TargetFormat` (not a multiclass format)."""
    fmt = target_format(task, sample, **settings)  # type: ignore[arg-type]
    assert isinstance(fmt, TargetFormat)
    return fmt


def _write(tmp_path: Path, task: Task, fmt: TargetFormat | SubmissionFormat, outputs: list[list[float]],
           decided: list[list[float]] | None = None, ids: list[str] | None = None,
           sample_ids: list[str] | None = None) -> str:
    ids = ids or [chr(ord("a") + i) for i in range(len(outputs))]
    dec = None if decided is None else np.array(decided, dtype=np.float64)
    path = write_task_submission(ids, np.array(outputs), dec, task, fmt, sample_ids, tmp_path / "submission.csv")
    return path.read_bytes().decode()


# --- inference from the sample -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("task", "text", "kind", "extra"), [
    (BINARY, "image_name,target\nx,0.5\n", "probability", {}),
    (BINARY, "image_name,target\nx,0\ny,1\n", "probability", {}),  # 0/1: P(positive), as AUC competitions ask
    (BINARY, "image_name,target\nx,benign\n", "label", {"label_as": "name"}),
    (TAGS, "image_name,tags\nx,primary clear\ny,haze\n", "tags", {}),
    (TAGS, "image_name,tags\nx,\n", "tags", {}),  # no values: tags
    (TAGS, "Id,Predicted\nx,0\ny,1 2\n", "tag_ids", {}),
    (TAGS, "id,Clear,haze,PRIMARY\nx,0,1,0\n", "label_columns",
     {"probabilities": False, "label_columns": ["clear", "haze", "primary"]}),
    (TAGS, "id,primary,clear,haze\nx,0.5,0.5,0.5\n", "label_columns",
     {"probabilities": True, "label_columns": ["primary", "clear", "haze"]}),
    (VALUE, "Id,Pawpularity\nx,0\ny,37.5\n", "value", {}),
    (GRADE, "id_code,diagnosis\nx,0\ny,2\n", "grade", {}),
])
def test_the_kind_is_read_from_the_samples_columns_and_values(
    tmp_path: Path, task: Task, text: str, kind: str, extra: dict[str, object]
) -> None:
    fmt = target_format(task, _sample(tmp_path, text))
    assert isinstance(fmt, TargetFormat)
    header = text.splitlines()[0].split(",")
    assert (fmt.kind, fmt.header, fmt.id_column) == (kind, header, header[0])
    for key, value in extra.items():
        assert getattr(fmt, key) == value


def test_a_binary_sample_with_one_column_per_class_is_the_class_probabilities_format(tmp_path: Path) -> None:
    fmt = target_format(BINARY, _sample(tmp_path, "id,malignant,benign\nx,0.5,0.5\n"))
    assert isinstance(fmt, SubmissionFormat)
    assert (fmt.kind, fmt.prob_columns) == ("probabilities", ["malignant", "benign"])
    text = _write(tmp_path, BINARY, fmt, [[0.25, 0.75], [0.9, 0.1]])
    assert text == "id,malignant,benign\na,0.75,0.25\nb,0.1,0.9\n"


def test_a_binary_column_named_after_the_first_class_gets_its_probability(tmp_path: Path) -> None:
    fmt = _own(BINARY, _sample(tmp_path, "id,Benign\nx,0.5\n"))
    assert (fmt.kind, fmt.positive) == ("probability", 0)
    assert _write(tmp_path, BINARY, fmt, [[0.25, 0.75]]) == "id,Benign\na,0.25\n"
    assert _own(BINARY, _sample(tmp_path, "id,malignant\nx,0.5\n")).positive == 1


def test_label_columns_values_follow_the_setting_over_the_sample(tmp_path: Path) -> None:
    sample = _sample(tmp_path, "id,clear,haze,primary\nx,0,0,0\n")
    assert not _own(TAGS, sample).probabilities
    assert _own(TAGS, sample, label_values="probabilities").probabilities


def test_id_column_from_config_when_not_first(tmp_path: Path) -> None:
    fmt = target_format(VALUE, _sample(tmp_path, "Pawpularity,Id\n3,x\n"), id_column="Id")
    assert (fmt.id_column, fmt.header, fmt.value_columns) == ("Id", ["Pawpularity", "Id"], ["Pawpularity"])


# --- contradictions: the sample, its columns and what the task needs ------------------------------------------------

@pytest.mark.parametrize(("task", "text", "problem"), [
    (VALUE, "id,cat,dog\nx,0.5,0.5\n", r"2 value columns \['cat', 'dog'\]"),
    (VALUE, "id,tags\nx,clear haze\n",
     r"column 'tags' holds space-separated text \(a tags column\), e.g. 'clear haze'"),
    (VALUE, "id,label\nx,cat\n", r"column 'label' holds text, not numbers, e.g. 'cat'"),
    (GRADE, "id,diagnosis\nx,1\ny,0.5\n", r"column 'diagnosis' holds non-integer values \(e.g. '0.5'\), not integer "
                                          r"grades \(declare data.task=regression"),
    (TAGS, "id,clear,primary\nx,0,1\n", r"labels \['haze'\] have no column \(columns matching no label: \[\]\)"),
    (TAGS, "id,Clear,cloudy\nx,0,1\n", r"labels \['haze', 'primary'\] have no column \(columns matching no label: "
                                       r"\['cloudy'\]\)"),
    (TAGS, "id,clear\nx,1\n", r"labels \['haze', 'primary'\] have no column"),
    (TAGS, "id,tags\nx,0.5\n", r"column 'tags' holds non-integer numbers \(e.g. '0.5'\), not tags or label indices"),
    (TAGS, "id,a,b\nx,1,2\n", r"2 value columns \['a', 'b'\]"),
    (BINARY, "id,a,b\nx,1,2\n", r"2 value columns \['a', 'b'\] are not the classes"),
    (BINARY, "id,target\nx,3\n", r"column 'target' holds numbers outside \[0, 1\] \(e.g. '3'\), neither probabilities"),
    (GRADE, "id\nx\n", "there is no value column"),
])
def test_a_sample_that_contradicts_the_task_names_file_columns_and_needs(
    tmp_path: Path, task: Task, text: str, problem: str
) -> None:
    sample = _sample(tmp_path, text, "odd_sample.csv")
    header = text.splitlines()[0].split(",")
    with pytest.raises(SubmissionError) as info:
        target_format(task, sample)
    message = str(info.value)
    assert message.startswith(f"{sample}: ") and "\n" not in message
    assert re.search(problem, message), message
    assert f"the sample's columns are {header}, and the {task.kind} task needs the id column" in message


def test_each_task_says_what_it_needs(tmp_path: Path) -> None:
    needs = {}
    for task in (BINARY, TAGS, VALUE, GRADE):
        with pytest.raises(SubmissionError) as info:
            target_format(task, _sample(tmp_path, "id,a,b,c,d\nx,1,2,3,4\n"))
        needs[task.kind] = str(info.value).split(" task needs ")[1]
    assert needs["binary"].startswith("the id column plus one column, P('malignant') (probability) or the class")
    assert "one text column of space-separated tags (tags) or label indices (tag_ids)" in needs["multilabel"]
    assert "one column per label ['clear', 'haze', 'primary'] (label_columns)" in needs["multilabel"]
    assert needs["regression"].startswith("the id column plus one numeric column for 'Pawpularity' (value)")
    assert needs["ordinal"].startswith("the id column plus one column of integer grades 0..4 (grade)")


def test_tags_that_are_also_indices_are_never_guessed(tmp_path: Path) -> None:
    task = Task("multilabel", ("1", "2", "0"))
    with pytest.raises(SubmissionError, match=r"both tag names and label indices.*submission.kind=tags.*tag_ids"):
        target_format(task, _sample(tmp_path, "id,tags\nx,0 1\n"))
    assert _own(task, _sample(tmp_path, "id,tags\nx,0 1\n"), kind="tags").kind == "tags"


def test_missing_id_column_is_named(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=r"sample_submission.csv: id column 'Id' not found; columns are "
                                              r"\['id', 'y'\]"):
        target_format(VALUE, _sample(tmp_path, "id,y\nx,1\n"), id_column="Id")


@pytest.mark.parametrize(("task", "settings", "message"), [
    (VALUE, {"kind": "tags"},
     r"submission.kind 'tags' does not fit the regression task; accepted for regression: \['value'\]"),
    (TAGS, {"kind": "topk"}, r"accepted for multilabel: \['tags', 'tag_ids', 'label_columns'\]"),
    (TAGS, {"label_values": "soft"}, r"submission.label_values 'soft' is not one of \('decisions', 'probabilities'\)"),
    (BINARY, {"label_as": "id"}, r"submission.label_as 'id' is not one of"),
    (GRADE, {"k": 3}, r"submission.k=3 applies to kind topk, a multiclass format; the ordinal task writes \['grade'\]"),
    (Task("multilabel", ("clear sky", "haze")), {"kind": "tags"}, r"tags \['clear sky'\] contain spaces; set "
                                                                   r"submission.kind=tag_ids"),
    (Task("multiclass", ("a", "b", "c")), {}, r"the multiclass task's submission format comes from"),
    (TAGS, {"kind": "label_columns", "id_column": "haze"}, r"label 'haze' has the name of the id column"),
])
def test_settings_a_task_does_not_accept(task: Task, settings: dict[str, object], message: str) -> None:
    with pytest.raises(SubmissionError, match=message):
        target_format(task, None, **settings)  # type: ignore[arg-type]


# --- config ---------------------------------------------------------------------------------------------------------

def test_defaults_without_a_sample() -> None:
    formats = {t.kind: target_format(t) for t in (BINARY, TAGS, VALUE, GRADE)}
    assert {k: (f.kind, f.header) for k, f in formats.items()} == {
        "binary": ("probability", ["id", "target"]), "multilabel": ("tags", ["id", "tags"]),
        "regression": ("value", ["id", "Pawpularity"]), "ordinal": ("grade", ["id", "diagnosis"]),
    }
    cols = _own(TAGS, kind="label_columns", id_column="image", label_values="probabilities")
    assert (cols.header, cols.probabilities) == (["image", "clear", "haze", "primary"], True)


def test_config_kind_keeps_a_fitting_samples_header_else_wins_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    sample = _sample(tmp_path, "image_name,target\nx,0\ny,1\n")
    label = _own(BINARY, sample, kind="label")
    assert (label.kind, label.header, label.label_as) == ("label", ["image_name", "target"], "index")
    tags = _sample(tmp_path, "image_name,tags\nx,clear\n", "tags.csv")
    with caplog.at_level(logging.WARNING, logger="pipeline.submission"):
        cols = target_format(TAGS, tags, kind="label_columns")
    assert cols.header == ["image_name", "clear", "haze", "primary"]
    assert "differs from the sample" in caplog.text
    both = target_format(BINARY, sample, kind="label+probabilities")
    assert isinstance(both, SubmissionFormat) and both.header == ["image_name", "label", "benign", "malignant"]


# --- the written file, byte for byte ----------------------------------------------------------------------------------

def _fmt(task: Task, kind: str, header: list[str], **extra: object) -> TargetFormat:
    return TargetFormat(task, header[0], kind, header, **extra)  # type: ignore[arg-type]


def test_binary_probability_is_the_second_classes_output_in_sample_order(tmp_path: Path) -> None:
    fmt = _fmt(BINARY, "probability", ["image_name", "target"])
    text = _write(tmp_path, BINARY, fmt, [[0.25, 0.75], [0.9, 0.1], [1 / 3, 2 / 3]], sample_ids=["c", "a", "b"])
    assert text == "image_name,target\nc,0.666667\na,0.75\nb,0.1\n"


@pytest.mark.parametrize(("label_as", "decided", "expected"), [
    ("name", None, "x,benign\ny,malignant\nz,benign\n"),
    ("index", None, "x,0\ny,1\nz,0\n"),
    ("name", [[0, 1], [1, 0], [0, 1]], "x,malignant\ny,benign\nz,malignant\n"),  # decisions win over outputs
    ("index", [[0, 1], [1, 0], [0, 1]], "x,1\ny,0\nz,1\n"),
])
def test_binary_label_names_or_0_1_ties_to_the_negative_class(
    tmp_path: Path, label_as: str, decided: list[list[float]] | None, expected: str
) -> None:
    fmt = _fmt(BINARY, "label", ["id", "target"], label_as=label_as)
    text = _write(tmp_path, BINARY, fmt, [[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], decided, ids=["x", "y", "z"])
    assert text == "id,target\n" + expected


OUTPUTS = [[0.9, 0.1, 0.7], [0.2, 0.1, 0.3], [0.1, 0.6, 0.5]]
DECIDED: list[list[float]] = [[1, 0, 0], [0, 0, 0], [0, 1, 1]]


@pytest.mark.parametrize(("kind", "decided", "expected"), [
    ("tags", DECIDED, "image_name,tags\na,clear\nb,\nc,haze primary\n"),
    ("tags", None, "image_name,tags\na,clear primary\nb,\nc,haze primary\n"),  # ≥ 0.5 without decisions
    ("tag_ids", DECIDED, "image_name,tags\na,0\nb,\nc,1 2\n"),
])
def test_multilabel_tags_in_label_order_and_empty_lists_as_empty_cells(
    tmp_path: Path, kind: str, decided: list[list[float]] | None, expected: str
) -> None:
    text = _write(tmp_path, TAGS, _fmt(TAGS, kind, ["image_name", "tags"]), OUTPUTS, decided)
    assert text == expected
    read = pd.read_csv(tmp_path / "submission.csv", dtype=str, keep_default_na=False)
    assert read["tags"].tolist()[1] == ""


def test_multilabel_label_columns_decisions_or_probabilities_in_the_samples_column_order(tmp_path: Path) -> None:
    header = ["id", "primary", "Clear", "haze"]
    decisions = _fmt(TAGS, "label_columns", header, label_columns=["primary", "clear", "haze"])
    assert _write(tmp_path, TAGS, decisions, OUTPUTS, DECIDED) == "id,primary,Clear,haze\na,0,1,0\nb,0,0,0\nc,1,0,1\n"
    probs = _fmt(TAGS, "label_columns", header, label_columns=["primary", "clear", "haze"], probabilities=True)
    assert _write(tmp_path, TAGS, probs, OUTPUTS, DECIDED) == (
        "id,primary,Clear,haze\na,0.7,0.9,0.1\nb,0.3,0.2,0.1\nc,0.5,0.1,0.6\n")


def test_regression_values_are_clipped_to_the_tasks_range_only_when_it_has_one(tmp_path: Path) -> None:
    outputs = [[-3.0], [37.123456789], [250.0]]
    assert _write(tmp_path, VALUE, _fmt(VALUE, "value", ["Id", "Pawpularity"]), outputs) == (
        "Id,Pawpularity\na,1\nb,37.1235\nc,100\n")
    free = Task("regression", ("size",))
    assert _write(tmp_path, free, _fmt(free, "value", ["Id", "size"]), outputs) == "Id,size\na,-3\nb,37.1235\nc,250\n"
    upper = Task("regression", ("size",), None, 10.0)
    assert _write(tmp_path, upper, _fmt(upper, "value", ["Id", "size"]), outputs) == "Id,size\na,-3\nb,10\nc,10\n"


def test_ordinal_grades_from_cut_points_or_rounded_half_up_within_the_range(tmp_path: Path) -> None:
    fmt = _fmt(GRADE, "grade", ["id_code", "diagnosis"])
    outputs = [[0.5], [2.49], [2.5], [-1.2], [7.0]]
    assert _write(tmp_path, GRADE, fmt, outputs) == "id_code,diagnosis\na,1\nb,2\nc,3\nd,0\ne,4\n"
    cut = _write(tmp_path, GRADE, fmt, outputs, [[0], [1], [3], [0], [4]])
    assert cut == "id_code,diagnosis\na,0\nb,1\nc,3\nd,0\ne,4\n"


def test_chunked_writing_is_the_whole_file_byte_for_byte(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    outputs = rng.random((11, 3))
    decided = (outputs > 0.4).astype(float)
    ids = [f"{i:04d}" for i in range(11)]
    sample = list(rng.permutation(ids))
    for kind in ("tags", "tag_ids"):
        fmt = _fmt(TAGS, kind, ["id", "tags"])
        whole = write_target_submission(ids, outputs, decided, fmt, tmp_path / "whole.csv", sample_ids=sample)
        chunked = write_target_submission(ids, outputs, decided, fmt, tmp_path / "chunked.csv", sample_ids=sample,
                                          chunk_rows=2)
        assert whole.read_bytes() == chunked.read_bytes()
        frame = build_target_submission(ids, outputs, decided, fmt, sample)
        assert frame.to_csv(index=False).encode() == whole.read_bytes()
        assert pd.read_csv(whole, dtype=str)["id"].tolist() == sample


def test_multiclass_through_the_one_entry_is_todays_file(tmp_path: Path) -> None:
    classes = ["cat", "dog", "bird"]
    task = Task("multiclass", tuple(classes))
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    for kind in ("label", "probabilities", "label+probabilities"):
        fmt = format_from_config(kind, "id", "label", None, classes)
        today = write_submission(build_submission(["a", "b"], probs, classes, fmt, ["b", "a"]), tmp_path / "t.csv",
                                 fmt, ["b", "a"], classes)
        entry = write_task_submission(["a", "b"], probs, None, task, fmt, ["b", "a"], tmp_path / "e.csv")
        assert entry.read_bytes() == today.read_bytes()


# --- validation: every kind's values, on the file as Kaggle would read it ---------------------------------------------

@pytest.mark.parametrize(("fmt", "cells", "message"), [
    (_fmt(TAGS, "tags", ["id", "tags"]), ["clear", "clear fog"],
     r"column 'tags' has invalid tags in 1 rows, e.g. row 1 \(id 'b'\): 'clear fog'; accepted: distinct tags "
     r"\['clear', 'haze', 'primary'\] separated by single spaces \(an empty cell: no label\)"),
    (_fmt(TAGS, "tags", ["id", "tags"]), ["clear clear", "haze  primary"], r"invalid tags in 2 rows"),
    (_fmt(TAGS, "tag_ids", ["id", "tags"]), ["0 3", "1"], r"invalid tag_ids in 1 rows, e.g. row 0 \(id 'a'\): '0 3'; "
                                                          r"accepted: distinct label indices 0..2"),
    (_fmt(TAGS, "label_columns", ["id", "clear", "haze", "primary"], label_columns=["clear", "haze", "primary"]),
     ["1", "2"], r"column 'clear' has values that are not 0/1 in 1 rows, e.g. row 1 \(id 'b'\): '2'; accepted: 0 or 1"),
    (_fmt(TAGS, "label_columns", ["id", "clear", "haze", "primary"], label_columns=["clear", "haze", "primary"],
          probabilities=True), ["1.5", "0.2"], r"column 'clear' has out-of-range values .*probabilities in \[0, 1\]"),
    (_fmt(BINARY, "probability", ["id", "target"]), ["nan", "0.5"], r"column 'target' has NaN, empty or non-numeric"),
    (_fmt(BINARY, "label", ["id", "target"]), ["benign", "cancer"], r"column 'target' has invalid labels .*'cancer'"),
    (_fmt(BINARY, "label", ["id", "target"], label_as="index"), ["0", "2"], r"integer class indices 0..1"),
    (_fmt(VALUE, "value", ["id", "Pawpularity"]), ["inf", "3"], r"column 'Pawpularity' has infinite values .*"
                                                                r"accepted: finite numbers"),
    (_fmt(GRADE, "grade", ["id", "diagnosis"]), ["1.5", "2"], r"column 'diagnosis' has values that are not integers in "
                                                             r"1 rows, e.g. row 0 \(id 'a'\): '1.5'; accepted: integer "
                                                             r"grades 0..4"),
    (_fmt(GRADE, "grade", ["id", "diagnosis"]), ["5", "-1"], r"grades out of range in 2 rows"),
])
def test_validation_names_column_rows_and_accepted_values(fmt: TargetFormat, cells: list[str], message: str) -> None:
    df = pd.DataFrame({c: cells if c != fmt.id_column else ["a", "b"] for c in fmt.header}, dtype=object)
    with pytest.raises(SubmissionError, match=message):
        validate_target_submission(df, fmt, ["a", "b"])
    with pytest.raises(SubmissionError, match=message):  # the multiclass entry dispatches on the format
        validate_submission(df, fmt, ["a", "b"], [])


def test_validation_checks_header_and_ids() -> None:
    fmt = _fmt(VALUE, "value", ["Id", "Pawpularity"])
    with pytest.raises(SubmissionError, match=r"header \['Id', 'y'\] does not equal the sample's"):
        validate_target_submission(pd.DataFrame({"Id": ["a"], "y": ["1"]}), fmt, ["a"])
    with pytest.raises(SubmissionError, match=r"1 test ids are missing from column 'Id', e.g. \['b'\]"):
        validate_target_submission(pd.DataFrame({"Id": ["a"], "Pawpularity": ["1"]}), fmt, ["a", "b"])
    validate_target_submission(pd.DataFrame({"Id": ["a", "b"], "Pawpularity": ["1", "2.5"]}), fmt, ["a", "b"])


# --- writer errors: nothing is left behind ----------------------------------------------------------------------------

def _only_previous(folder: Path, previous: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [previous.name]
    assert previous.read_text() == "old good submission\n"


@pytest.mark.parametrize(("task", "fmt", "outputs", "decided", "ids", "message"), [
    (TAGS, _fmt(TAGS, "tags", ["id", "tags"]), [[0.1, 0.2]], None, ["a"],
     r"outputs have shape \(1, 2\); expected \(1 ids, 3 outputs of the multilabel task"),
    (VALUE, _fmt(VALUE, "value", ["id", "Pawpularity"]), [[1.0], [np.nan]], None, ["a", "b"],
     r"outputs are NaN or infinite in 1 rows, e.g. row 1 \(id 'b'\)"),
    (TAGS, _fmt(TAGS, "tags", ["id", "tags"]), [[0.1, 0.2, 0.3]], [[0, 0.5, 1]], ["a"],
     r"decided outputs are not 0/1 decisions in 1 rows, e.g. row 0 \(id 'a'\)"),
    (GRADE, _fmt(GRADE, "grade", ["id", "diagnosis"]), [[1.2]], [[1.5]], ["a"], r"not integer grades"),
    (GRADE, _fmt(GRADE, "grade", ["id", "diagnosis"]), [[1.2]], [[1.0, 2.0]], ["a"],
     r"decided outputs have shape \(1, 2\); expected the outputs' \(1, 1\)"),
    (GRADE, _fmt(GRADE, "grade", ["id", "diagnosis"]), [[1.0], [2.0]], None, ["a", "a"],
     r"1 prediction ids occur more than once, e.g. \['a'\]"),
    (BINARY, _fmt(BINARY, "probability", ["id", "target"]), [[-0.5, 1.5]], None, ["a"],
     r"column 'target' has out-of-range values in 1 rows, e.g. row 0 \(id 'a'\): 1.5"),
    (VALUE, _fmt(GRADE, "grade", ["id", "diagnosis"]), [[1.0]], None, ["a"],
     r"the submission format was made for .*'ordinal'.*, not for the members' task .*'regression'"),
    (VALUE, SubmissionFormat("id", "label", "label", "name", None, ["id", "label"]), [[1.0]], None, ["a"],
     r"the regression task cannot be written as the class format 'label'"),
])
def test_bad_arrays_are_refused_before_anything_is_written(
    tmp_path: Path, task: Task, fmt: TargetFormat | SubmissionFormat, outputs: list[list[float]],
    decided: list[list[float]] | None, ids: list[str], message: str
) -> None:
    previous = tmp_path / "submission.csv"
    previous.write_text("old good submission\n")
    dec = None if decided is None else np.array(decided)
    with pytest.raises(SubmissionError, match=message):
        write_task_submission(ids, np.array(outputs), dec, task, fmt, None, previous)
    _only_previous(tmp_path, previous)


def test_ids_that_differ_from_the_sample_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SubmissionError, match=r"1 sample ids have no prediction, e.g. \['z'\]"):
        _write(tmp_path, GRADE, _fmt(GRADE, "grade", ["id", "diagnosis"]), [[1.0], [2.0]], sample_ids=["a", "z"])
    assert not list(tmp_path.iterdir())


def test_a_file_that_is_invalid_once_written_is_not_renamed_into_place(tmp_path: Path) -> None:
    previous = tmp_path / "submission.csv"
    previous.write_text("old good submission\n")
    fmt = _fmt(BINARY, "probability", ["id", "target"])
    with pytest.raises(SubmissionError, match=r"(?s)submission.csv: invalid once written with .p%g.*non-numeric"):
        write_target_submission(["a"], np.array([[0.5, 0.5]]), None, fmt, previous, float_format="p%g")
    _only_previous(tmp_path, previous)


def test_hand_built_formats_the_writer_cannot_honour_are_refused() -> None:
    with pytest.raises(ValueError, match=r"kind 'tags' is not among the regression formats; accepted: \['value'\]"):
        TargetFormat(VALUE, "id", "tags", ["id", "tags"])
    with pytest.raises(ValueError, match="a value format has one value column"):
        TargetFormat(VALUE, "id", "value", ["id", "a", "b"])
    with pytest.raises(ValueError, match="needs one column per label"):
        TargetFormat(TAGS, "id", "label_columns", ["id", "clear", "haze"], ["clear", "haze"])
