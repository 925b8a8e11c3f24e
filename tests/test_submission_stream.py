"""The submission streamed from the ensemble's prediction file, a few rows at a time, is today's file byte for byte."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.member.predictions import read_predictions, write_predictions
from pipeline.submission.build import build_submission, write_submission, write_submission_from_predictions
from pipeline.submission.format import SubmissionError, format_from_config

CLASSES = ["cat", "dog", "bird", "fish"]
KINDS = [("label", "name", None), ("label", "index", None), ("probabilities", "name", None),
         ("label+probabilities", "name", None), ("topk", "name", 2)]


def _predictions(tmp_path: Path, n: int = 30) -> tuple[Path, list[str], np.ndarray]:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n)
    probs[4] *= 1 + 5e-5  # off by less than the tolerance: renormalised on the way out
    probs[9] = [0.25, 0.25, 0.25, 0.25]  # a tie: the lower class index wins, in both paths
    ids = [f"{i:05d}" for i in range(n)]  # leading zeros stay
    path = write_predictions(tmp_path / "ensemble_test.csv", ids, probs, CLASSES)
    read_ids, read_probs, _ = read_predictions(path, CLASSES)  # what the stage built the submission from until now
    return path, read_ids, read_probs


@pytest.mark.parametrize(("kind", "label_as", "k"), KINDS)
@pytest.mark.parametrize("shuffled_sample", [False, True])
def test_streamed_in_chunks_of_7_equals_the_whole_array_path(
    tmp_path: Path, kind: str, label_as: str, k: int | None, shuffled_sample: bool
) -> None:
    pred, ids, probs = _predictions(tmp_path)
    sample = list(np.random.default_rng(1).permutation(ids)) if shuffled_sample else ids
    fmt = format_from_config(kind, "id", "label", label_as, CLASSES, k=k)
    whole = write_submission(build_submission(ids, probs, CLASSES, fmt, sample), tmp_path / "whole.csv", fmt, sample,
                             CLASSES)
    streamed = write_submission_from_predictions(pred, tmp_path / "streamed.csv", fmt, CLASSES, sample, sample,
                                                 chunk_rows=7)
    assert streamed.read_bytes() == whole.read_bytes()
    assert len(streamed.read_text().splitlines()) == 31


def test_a_bad_row_in_a_later_chunk_is_named_by_its_row_in_the_file_and_nothing_is_written(tmp_path: Path) -> None:
    pred, ids, probs = _predictions(tmp_path)
    probs[17, 0] = np.nan
    write_predictions(pred, ids, probs, CLASSES)
    fmt = format_from_config("probabilities", "id", None, "name", CLASSES)
    out = tmp_path / "submission.csv"
    out.write_text("previous\n")
    with pytest.raises(SubmissionError) as err:
        write_submission_from_predictions(pred, out, fmt, CLASSES, ids, chunk_rows=7)
    with pytest.raises(SubmissionError) as whole_err:
        write_submission(build_submission(ids, probs, CLASSES, fmt), tmp_path / "w.csv", fmt, ids, CLASSES)
    assert "row 17 (id '00017')" in str(err.value) and str(err.value) == str(whole_err.value)
    assert out.read_text() == "previous\n" and sorted(p.name for p in tmp_path.iterdir()) == ["ensemble_test.csv",
                                                                                            "submission.csv"]


def test_ids_that_differ_from_the_sample_are_refused_before_writing(tmp_path: Path) -> None:
    pred, ids, _ = _predictions(tmp_path)
    fmt = format_from_config("label", "id", "label", "name", CLASSES)
    sample = [*ids[:-1], "99999"]
    with pytest.raises(SubmissionError, match="1 sample ids have no prediction, e.g. \\['99999'\\]"):
        write_submission_from_predictions(pred, tmp_path / "s.csv", fmt, CLASSES, sample, sample, chunk_rows=7)
    assert not (tmp_path / "s.csv").exists()
