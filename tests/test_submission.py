"""Tests for pipeline.submission: format inference, building, validation and atomic writing."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.core.errors import DataError
from pipeline.core.io import read_csv_as_text
from pipeline.data.tables import check_sample_ids
from pipeline.submission.build import build_submission, validate_submission, write_submission
from pipeline.submission.format import SubmissionError, SubmissionFormat, format_from_config, infer_format

CLASSES = ["cat", "dog", "bird"]
IDS = ["a", "b", "c", "d"]
PROBS = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6], [0.5, 0.3, 0.2]])
PROB_FMT = SubmissionFormat(
    "id", "probabilities", None, "name", ["dog", "bird", "cat"], ["id", "dog", "bird", "cat"]
)
LABEL_FMT = SubmissionFormat("id", "label", "label", "name", None, ["id", "label"])
INDEX_FMT = SubmissionFormat("id", "label", "label", "index", None, ["id", "label"])


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_infer_label_format_with_names(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "id,label\nb,cat\na,cat\n")
    fmt = infer_format(sample, CLASSES)
    assert (fmt.kind, fmt.id_column, fmt.label_column, fmt.label_as) == ("label", "id", "label", "name")
    assert fmt.header == ["id", "label"]


def test_infer_label_format_with_indices_and_config_override(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "image,category\n001,0\n002,2\n")
    assert infer_format(sample, CLASSES).label_as == "index"
    assert infer_format(sample, CLASSES, label_as="name").label_as == "name"
    # An index outside [0, K) cannot be an index, so the sample holds names (or placeholders).
    _write(sample, "image,category\n001,0\n002,3\n")
    assert infer_format(sample, CLASSES).label_as == "name"


def test_infer_probability_format_with_permuted_columns(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "image_id,dog,bird,cat\nx,0.3,0.3,0.4\n")
    fmt = infer_format(sample, CLASSES)
    assert fmt.kind == "probabilities" and fmt.id_column == "image_id"
    assert fmt.prob_columns == ["dog", "bird", "cat"]
    assert fmt.header == ["image_id", "dog", "bird", "cat"]


def test_infer_probability_format_with_column_safe_names(tmp_path: Path) -> None:
    classes = ["Black-grass", "Sugar beet", "Maize"]
    sample = _write(tmp_path / "sample.csv", "file,sugar_beet,Maize,black-grass\nx,0,0,1\n")
    fmt = infer_format(sample, classes)
    assert fmt.prob_columns == ["Sugar beet", "Maize", "Black-grass"]
    assert fmt.header == ["file", "sugar_beet", "Maize", "black-grass"]


def test_infer_id_column_from_config_when_not_first(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "label,id\ncat,a\n")
    fmt = infer_format(sample, CLASSES, id_column="id")
    assert (fmt.id_column, fmt.label_column, fmt.header) == ("id", "label", ["label", "id"])


def test_infer_unknown_columns_error_names_file_and_columns(tmp_path: Path) -> None:
    sample = _write(tmp_path / "weird_sample.csv", "id,foo,cat,bar\nx,1,2,3\n")
    with pytest.raises(ValueError, match=r"weird_sample\.csv.*\['foo', 'bar'\].*Accepted"):
        infer_format(sample, CLASSES)


def test_format_from_config_without_sample() -> None:
    fmt = format_from_config("probabilities", "id", None, None, CLASSES)
    assert fmt.header == ["id", *CLASSES] and fmt.prob_columns == CLASSES
    fmt = format_from_config("label", "id", "target", "index", CLASSES)
    assert (fmt.header, fmt.label_as) == (["id", "target"], "index")
    # Without a sample every setting has a default: label column "label", id column "id", and the kind
    # label+probabilities (a folder of test images with no sample submission).
    assert format_from_config("label", "id", None, None, CLASSES).header == ["id", "label"]
    fmt = format_from_config(None, None, None, None, CLASSES)
    assert (fmt.kind, fmt.header, fmt.prob_columns) == ("label+probabilities", ["id", "label", *CLASSES], CLASSES)
    with pytest.raises(SubmissionError, match=r"'labels'.*\('label', 'probabilities', 'label\+probabilities', 'topk'\)"):
        format_from_config("labels", "id", "x", None, CLASSES)
    with pytest.raises(SubmissionError, match=r"classes \['label'\] have the name of the id or label column"):
        format_from_config(None, None, None, None, ["label", "other"])


def test_label_and_probabilities_kind_builds_validates_and_writes(tmp_path: Path) -> None:
    fmt = format_from_config("label+probabilities", "id", "label", None, CLASSES)
    df = build_submission(IDS, PROBS, CLASSES, fmt)
    assert list(df.columns) == ["id", "label", *CLASSES]
    assert df["label"].tolist() == ["cat", "dog", "bird", "cat"] and df["dog"].tolist() == PROBS[:, 1].tolist()
    written = read_csv_as_text(write_submission(df, tmp_path / "s.csv", fmt, IDS, CLASSES))
    assert written["label"].tolist() == df["label"].tolist()
    bad = df.copy()
    bad.loc[1, "label"], bad.loc[2, "bird"] = "cow", 1.5
    with pytest.raises(SubmissionError, match=r"(?s)'bird' has out-of-range.*'label' has invalid labels.*'cow'"):
        validate_submission(bad, fmt, IDS, CLASSES)


def test_topk_kind_writes_the_k_best_classes_best_first(tmp_path: Path) -> None:
    fmt = format_from_config("topk", "id", "label", None, CLASSES, k=2)
    df = build_submission(IDS, PROBS, CLASSES, fmt)
    assert df["label"].tolist() == ["cat dog", "dog cat", "bird cat", "cat dog"]  # ties to the lower class index
    write_submission(df, tmp_path / "s.csv", fmt, IDS, CLASSES)
    index = build_submission(IDS, PROBS, CLASSES, format_from_config("topk", "id", "label", "index", CLASSES, k=3))
    assert index["label"].tolist() == ["0 1 2", "1 0 2", "2 0 1", "0 1 2"]
    for cell in ("cat", "cat cat", "cat cow"):  # one label, a repeat, an unknown class
        bad = df.copy()
        bad.loc[0, "label"] = cell
        match = rf"invalid labels in 1 rows, e.g. row 0 \(id 'a'\): '{cell}'.*accepted: 2 distinct"
        with pytest.raises(SubmissionError, match=match):
            validate_submission(bad, fmt, IDS, CLASSES)
    for k in (0, 4, None):
        with pytest.raises(SubmissionError, match=rf"submission.k={k}: kind topk needs k between 1 and the number of classes"):
            format_from_config("topk", "id", "label", None, CLASSES, k=k)


def test_topk_keeps_a_label_samples_header(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "image,predictions\nx,cat dog\n")
    fmt = format_from_config("topk", None, None, None, CLASSES, sample_csv=sample, k=2)
    assert (fmt.kind, fmt.header, fmt.label_column, fmt.k) == ("topk", ["image", "predictions"], "predictions", 2)


def test_single_class_named_column_is_not_taken_for_a_label_column(tmp_path: Path) -> None:
    sample = _write(tmp_path / "sample.csv", "id,dog\nx,0.5\n")  # P(dog) only: not a format we can write
    with pytest.raises(SubmissionError, match=r"classes without a column: \['cat', 'bird'\]"):
        infer_format(sample, CLASSES)


def test_format_from_config_with_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    sample = _write(tmp_path / "sample.csv", "id,dog,bird,cat\nx,0.3,0.3,0.4\n")
    # Agreeing config keeps the sample's exact header order.
    assert format_from_config("probabilities", None, None, None, CLASSES, sample_csv=sample) == PROB_FMT
    with caplog.at_level(logging.WARNING, logger="pipeline.submission"):
        fmt = format_from_config("label", "id", "label", None, CLASSES, sample_csv=sample)
    assert fmt == LABEL_FMT  # config wins
    assert "differs from the sample" in caplog.text


def test_build_submission_follows_sample_order() -> None:
    sample_ids = ["c", "a", "d", "b"]
    df = build_submission(IDS, PROBS, CLASSES, PROB_FMT, sample_ids)
    assert list(df.columns) == PROB_FMT.header
    assert df["id"].tolist() == sample_ids
    assert df["dog"].tolist() == [0.2, 0.2, 0.3, 0.8]
    assert df["cat"].tolist() == [0.2, 0.7, 0.5, 0.1]
    labels = build_submission(IDS, PROBS, CLASSES, LABEL_FMT, sample_ids)
    assert labels["label"].tolist() == ["bird", "cat", "cat", "dog"]
    assert build_submission(IDS, PROBS, CLASSES, INDEX_FMT, sample_ids)["label"].tolist() == [2, 0, 0, 1]


def test_build_submission_rejects_ids_not_in_sample() -> None:
    with pytest.raises(SubmissionError, match=r"1 sample ids have no prediction.*'e'.*1 predictions.*'d'"):
        build_submission(IDS, PROBS, CLASSES, LABEL_FMT, ["a", "b", "c", "e"])


def _good(fmt: SubmissionFormat) -> pd.DataFrame:
    return build_submission(IDS, PROBS, CLASSES, fmt, IDS)


def _set(row: int, col: str, value: Any) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def mutate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.astype({col: object}) if isinstance(value, str) else df
        df.loc[row, col] = value
        return df

    return mutate


BAD_PROB_CASES = {
    "wrong header": (
        lambda df: df.rename(columns={"bird": "birds"}),
        r"missing columns \['bird'\].*\['birds'\]",
    ),
    "wrong order": (lambda df: df[["id", "cat", "dog", "bird"]], "wrong order"),
    "missing id": (lambda df: df.iloc[:3], r"(?s)row count is 3 .* 4 ids.*1 test ids are missing.*'d'"),
    "extra id": (_set(3, "id", "zzz"), r"1 ids in column 'id' are not in the test set, e.g. \['zzz'\]"),
    "duplicate id": (_set(1, "id", "a"), r"1 duplicate ids in column 'id', e.g. \['a'\]"),
    "row count": (lambda df: pd.concat([df, df.iloc[:1]]), r"row count is 5 but the test set has 4"),
    "nan": (_set(2, "dog", np.nan), r"column 'dog' has NaN.* row 2 \(id 'c'\)"),
    "inf": (_set(1, "cat", np.inf), r"column 'cat' has infinite .*row 1 \(id 'b'\): inf"),
    "negative": (_set(0, "bird", -0.1), r"column 'bird' has out-of-range .*row 0 \(id 'a'\): -0.1.*\[0, 1\]"),
    "above one": (_set(0, "cat", 1.3), r"column 'cat' has out-of-range .*row 0 \(id 'a'\): 1.3"),
    "sum": (
        _set(3, "dog", 0.25),
        r"do not sum to 1 \(tolerance 0.0001\) in 1 rows, e.g. row 3 \(id 'd'\): 0.95",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PROB_CASES))
def test_validator_rejects_bad_probability_submission(case: str) -> None:
    mutate, message = BAD_PROB_CASES[case]
    validate_submission(_good(PROB_FMT), PROB_FMT, IDS, CLASSES)  # the unmutated frame is fine
    with pytest.raises(SubmissionError, match=message):
        validate_submission(mutate(_good(PROB_FMT)), PROB_FMT, IDS, CLASSES)


@pytest.mark.parametrize(
    ("fmt", "mutate", "message"),
    [
        (
            LABEL_FMT,
            _set(1, "label", "dgo"),
            r"invalid labels .*row 1 \(id 'b'\): 'dgo'.*class names \['cat'",
        ),
        (LABEL_FMT, _set(2, "label", np.nan), r"NaN or empty labels in 1 rows, e.g. row 2"),
        (INDEX_FMT, _set(0, "label", 3), r"invalid labels .*row 0 \(id 'a'\): 3.*indices 0..2"),
        (INDEX_FMT, _set(0, "label", "dog"), r"invalid labels .*'dog'.*indices 0..2"),
    ],
)
def test_validator_rejects_bad_labels(
    fmt: SubmissionFormat, mutate: Callable[[pd.DataFrame], pd.DataFrame], message: str
) -> None:
    validate_submission(_good(fmt), fmt, IDS, CLASSES)
    with pytest.raises(SubmissionError, match=message):
        validate_submission(mutate(_good(fmt)), fmt, IDS, CLASSES)


def test_write_round_trips_and_renormalises(tmp_path: Path) -> None:
    df = _good(PROB_FMT)
    df["cat"] += 5e-5  # within tolerance, so accepted, and renormalised before formatting
    path = write_submission(df, tmp_path / "sub" / "submission.csv", PROB_FMT, IDS, CLASSES)
    written = read_csv_as_text(path)
    assert list(written.columns) == PROB_FMT.header
    sums = written[["dog", "bird", "cat"]].astype(float).sum(axis=1)
    assert np.abs(sums - 1).max() < 1e-6
    index_path = write_submission(_good(INDEX_FMT), tmp_path / "idx.csv", INDEX_FMT, IDS, CLASSES)
    assert index_path.read_text() == "id,label\na,0\nb,1\nc,2\nd,0\n"


def _assert_only_previous_file(folder: Path, previous: Path) -> None:
    assert [p.name for p in folder.iterdir()] == [previous.name]
    assert previous.read_text() == "old good submission\n"


def test_failed_validation_leaves_previous_file_and_no_temp(tmp_path: Path) -> None:
    previous = _write(tmp_path / "submission.csv", "old good submission\n")
    bad = _set(2, "dog", np.nan)(_good(PROB_FMT))
    with pytest.raises(SubmissionError, match="NaN"):
        write_submission(bad, previous, PROB_FMT, IDS, CLASSES)
    _assert_only_previous_file(tmp_path, previous)


def test_exception_while_writing_leaves_previous_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_to_csv(self: pd.DataFrame, path: Path, *args: Any, **kwargs: Any) -> None:
        Path(path).write_text("id,dog,bird,cat\na,0.2")
        raise OSError("disk full")

    previous = _write(tmp_path / "submission.csv", "old good submission\n")
    monkeypatch.setattr(pd.DataFrame, "to_csv", broken_to_csv)
    with pytest.raises(OSError, match="disk full"):
        write_submission(_good(PROB_FMT), previous, PROB_FMT, IDS, CLASSES)
    _assert_only_previous_file(tmp_path, previous)
    with pytest.raises(OSError, match="disk full"):
        write_submission(_good(PROB_FMT), tmp_path / "new.csv", PROB_FMT, IDS, CLASSES)
    _assert_only_previous_file(tmp_path, previous)


def test_formatting_that_breaks_row_sums_is_caught_after_writing(tmp_path: Path) -> None:
    previous = _write(tmp_path / "submission.csv", "old good submission\n")
    thirds = build_submission(IDS, np.full((4, 3), 1 / 3), CLASSES, PROB_FMT, IDS)
    with pytest.raises(SubmissionError, match=r"(?s)invalid once written with '%.1f'.*do not sum to 1"):
        write_submission(thirds, previous, PROB_FMT, IDS, CLASSES, float_format="%.1f")
    _assert_only_previous_file(tmp_path, previous)


def test_check_sample_ids_mismatch(tmp_path: Path) -> None:
    check_sample_ids(["b", "a"], ["a", "b"], tmp_path / "sample.csv")  # order does not matter
    with pytest.raises(
        DataError,
        match=r"sample\.csv: the 3 sample .* 3 test images: 1 ids only in the sample, e.g. \['x'\]; "
        r"1 ids only in the test folder, e.g. \['c'\]",
    ):
        check_sample_ids(["a", "b", "x"], ["a", "b", "c"], tmp_path / "sample.csv")
    with pytest.raises(DataError, match=r"test ids carry a file extension \(e\.g\. 'a\.jpg'\) and the sample's ids do not"):
        check_sample_ids(["a", "b"], ["a.jpg", "b.jpg"], tmp_path / "sample.csv")
