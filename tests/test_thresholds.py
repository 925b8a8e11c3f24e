"""Tests for pipeline.predict.thresholds: fitted thresholds and cut points beat the defaults where the best rule
is known, cross-fitting does not flatter, decisions round-trip through JSON, and bad inputs are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import get_metric
from pipeline.core.task import Task
from pipeline.predict.thresholds import Decision, cross_fit_decision, decision_kind, fit_decision

TAGS = Task("multilabel", ("haze", "road", "water", "cloudy"))
GRADES = Task("ordinal", ("diagnosis",), low=0, high=4)
TRUE_CUTS = [0.8, 1.3, 2.7, 3.1]


def _parts(n: int, k: int = 5) -> np.ndarray:
    return np.arange(n) % k


def _shy_label(seed: int, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Tags where label 0's positives all get probability 0.3 and its negatives at most 0.2: the best threshold for
    label 0 lies in (0.2, 0.3], and 0.5 misses every positive. The other labels are ordinary."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, 4)) < [0.3, 0.4, 0.2, 0.5]).astype(np.float64)
    preds = np.clip(labels * 0.45 + rng.random((n, 4)) * 0.5, 0, 1)
    preds[:, 0] = np.where(labels[:, 0] == 1, 0.3, rng.uniform(0.0, 0.2, n))
    return labels, preds


def _graded(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Grades 0-4 made from values by known cut points (not the midpoints), so those cut points score QWK 1."""
    values = np.random.default_rng(seed).uniform(-0.5, 4.5, n)
    return np.searchsorted(TRUE_CUTS, values, side="left").astype(np.float64), values


# --- fitted decisions beat the defaults where the best rule is known ---------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("metric", ["f2_samples", "f1_samples", "f1_macro", "f1_micro", "f0.5_macro"])
def test_thresholds_find_the_shy_label_and_beat_half(seed: int, metric: str) -> None:
    labels, preds = _shy_label(seed)
    decision = fit_decision(TAGS, labels, preds, metric)
    assert decision is not None and decision.kind == "thresholds" and decision.metric == metric
    assert len(decision.values) == 4 and 0.2 < decision.values[0] <= 0.3
    score = get_metric(metric)
    at_half = score(labels, preds)
    assert score(labels, decision.apply(preds)) > at_half + 0.02
    honest = cross_fit_decision(TAGS, labels, preds, metric, _parts(len(labels)))
    assert set(np.unique(honest)) <= {0.0, 1.0} and honest.shape == preds.shape
    assert score(labels, honest) > at_half + 0.02  # the shy label is real: cross-fitting keeps the gain


def test_samples_average_couples_labels_and_sweeps_settle() -> None:
    labels, preds = _shy_label(3)
    first = fit_decision(TAGS, labels, preds, "f2_samples")
    assert first == fit_decision(TAGS, labels, preds, "f2_samples")  # deterministic
    assert first is not None
    # Coordinate ascent ends where no single label's move improves the average.
    score = get_metric("f2_samples")
    best = score(labels, first.apply(preds))
    for j in range(4):
        for value in np.round(np.arange(5, 96, 5) / 100, 2):
            moved = Decision("thresholds", [value if i == j else v for i, v in enumerate(first.values)], "f2_samples")
            assert score(labels, moved.apply(preds)) <= best + 1e-12


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cut_points_recover_known_cut_points(seed: int) -> None:
    labels, values = _graded(seed)
    decision = fit_decision(GRADES, labels, values, "qwk")
    assert decision is not None and decision.kind == "cutpoints" and decision.low == 0.0
    assert decision.values == sorted(decision.values)
    assert decision.values == pytest.approx(TRUE_CUTS, abs=0.05)
    qwk = get_metric("qwk")
    assert qwk(labels, decision.apply(values)) > qwk(labels, values) + 0.03  # nearest grade: the midpoints
    assert qwk(labels, decision.apply(values)) > 0.99
    assert fit_decision(GRADES, labels, values[:, None], "qwk") == decision  # [N, 1] as [N]


def test_cut_points_without_a_declared_range_use_the_labels_grades() -> None:
    labels, values = _graded(0)
    decision = fit_decision(Task("ordinal", ("y",)), labels + 1, values + 1, "qwk")
    assert decision is not None and decision.low == 1.0
    assert decision.values == pytest.approx(np.add(TRUE_CUTS, 1), abs=0.05)


# --- cross-fitting is honest -----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cross_fitted_scores_are_never_better_than_in_sample_fits_on_noise(seed: int) -> None:
    """On noise, a decision fitted on the rows it scores flatters them; cross-fitted, the flattery goes."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((300, 4)) < 0.3).astype(np.float64)
    preds = rng.random((300, 4))  # unrelated to the labels
    part = _parts(300)
    for metric in ("f2_samples", "f1_macro", "f1_micro"):
        decision = fit_decision(TAGS, labels, preds, metric)
        assert decision is not None
        score = get_metric(metric)
        in_sample = score(labels, decision.apply(preds))
        crossed = score(labels, cross_fit_decision(TAGS, labels, preds, metric, part))
        assert crossed < in_sample, metric
    grades = rng.integers(0, 5, 300).astype(np.float64)
    values = rng.uniform(-0.5, 4.5, 300)
    decision = fit_decision(GRADES, grades, values, "qwk")
    assert decision is not None
    qwk = get_metric("qwk")
    assert qwk(grades, cross_fit_decision(GRADES, grades, values, "qwk", part)) < qwk(grades, decision.apply(values))


def test_cross_fit_decides_each_part_with_the_other_parts_fit() -> None:
    labels, preds = _shy_label(0, n=200)
    part = _parts(200, 4)
    crossed = cross_fit_decision(TAGS, labels, preds, "f2_samples", part)
    for k in range(4):
        fit = fit_decision(TAGS, labels[part != k], preds[part != k], "f2_samples")
        assert fit is not None
        assert np.array_equal(crossed[part == k], fit.apply(preds[part == k]))
    grades, values = _graded(0, n=400)
    crossed = cross_fit_decision(GRADES, grades, values, "qwk", _parts(400))
    assert crossed.shape == (400, 1) and set(np.unique(crossed)) <= {0.0, 1.0, 2.0, 3.0, 4.0}


@pytest.mark.parametrize(("task", "metric"), [
    (TAGS, "mean_auc"), (TAGS, "mean_ap"), (TAGS, "bce"), (GRADES, "rmse"), (GRADES, "mae"),
    (Task("regression", ("y",)), "rmse"), (Task("regression", ("y",)), "r2"),
])
def test_threshold_free_metrics_need_no_decision(task: Task, metric: str) -> None:
    if task.kind == "multilabel":
        labels, preds = _shy_label(0, n=100)
    else:
        labels, preds = _graded(0, n=100)
    assert decision_kind(task.kind, metric) is None
    assert fit_decision(task, labels, preds, metric) is None
    out = cross_fit_decision(task, labels, preds, metric, _parts(100))
    assert np.array_equal(out, preds if preds.ndim == 2 else preds[:, None])


def test_classification_tasks_need_no_decision() -> None:
    labels = np.array([0, 1, 1, 0])
    probs = np.eye(2)[[0, 1, 0, 0]]
    for metric in ("accuracy", "roc_auc", "log_loss"):
        assert fit_decision(Task("binary", ("no", "yes")), labels, probs, metric) is None
    assert fit_decision(Task("multiclass", ("a", "b")), labels, probs, "qwk") is None


# --- records and semantics -----------------------------------------------------------------------------------


def test_decisions_round_trip_through_json() -> None:
    labels, preds = _shy_label(1)
    grades, values = _graded(1)
    for decision in (fit_decision(TAGS, labels, preds, "f2_samples"), fit_decision(GRADES, grades, values, "qwk")):
        assert decision is not None
        back = Decision.from_dict(json.loads(json.dumps(decision.to_dict())))
        assert back == decision
        data, x = (preds, preds) if decision.kind == "thresholds" else (values, values)
        assert np.array_equal(back.apply(x), decision.apply(data))


def test_apply_boundaries_threshold_decides_and_cut_point_stays_below() -> None:
    thresholds = Decision("thresholds", [0.3, 0.5], "f2_samples")
    assert thresholds.apply(np.array([[0.3, 0.49], [0.29, 0.5]])).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    cuts = Decision("cutpoints", [1.5, 2.5], "qwk", low=1)
    assert cuts.apply(np.array([0.0, 1.5, 1.51, 2.5, 9.0])).ravel().tolist() == [1.0, 1.0, 2.0, 2.0, 3.0]
    # The midpoints decide as qwk's nearest-grade rounding does (halves down).
    qwk = get_metric("qwk")
    grades, values = np.array([1.0, 2.0, 3.0, 2.0, 1.0]), np.array([1.5, 2.5, 2.6, 1.4, 0.2])
    assert qwk(grades, cuts.apply(values)) == qwk(grades, values)


# --- bad inputs ------------------------------------------------------------------------------------------------


def test_wrong_shapes_and_parts_are_refused() -> None:
    labels, preds = _shy_label(0, n=50)
    with pytest.raises(ValueError, match=r"multilabel labels \[N, L\].*\(50,\) and \(50, 4\)"):
        fit_decision(TAGS, labels[:, 0], preds, "f2_samples")
    with pytest.raises(ValueError, match=r"same shape; got \(50, 4\) and \(50, 3\)"):
        fit_decision(TAGS, labels, preds[:, :3], "f2_samples")
    with pytest.raises(ValueError, match=r"preds \[N, 1\] or \[N\]; got \(50,\) and \(50, 2\)"):
        fit_decision(GRADES, np.zeros(50), np.zeros((50, 2)), "qwk")
    with pytest.raises(ValueError, match=r"one integer per row, shape \(50,\); got int64 \(49,\)"):
        cross_fit_decision(TAGS, labels, preds, "f2_samples", np.zeros(49, dtype=np.int64))
    with pytest.raises(ValueError, match=r"one integer per row.*got float64"):
        cross_fit_decision(TAGS, labels, preds, "f2_samples", np.zeros(50))
    with pytest.raises(ValueError, match=r"at least 2 parts; got \[3\]"):
        cross_fit_decision(TAGS, labels, preds, "f2_samples", np.full(50, 3))
    with pytest.raises(ValueError, match=r"4 thresholds decide preds \[N, 4\]; got \(50, 3\)"):
        Decision("thresholds", [0.5] * 4, "f1_macro").apply(preds[:, :3])
    with pytest.raises(ValueError, match=r"cut points decide ordinal values \[N, 1\] or \[N\]; got \(50, 4\)"):
        Decision("cutpoints", [0.5], "qwk").apply(preds)
    with pytest.raises(ValueError, match="at least 2 grades"):
        fit_decision(Task("ordinal", ("y",)), np.ones(10), np.ones(10), "qwk")


def test_a_metric_of_another_task_is_refused_naming_both() -> None:
    labels, preds = _shy_label(0, n=50)
    with pytest.raises(ConfigError, match=r"'qwk' does not score a multilabel task.*accepted for multilabel"):
        fit_decision(TAGS, labels, preds, "qwk")
    with pytest.raises(ConfigError, match=r"'f2_samples' does not score a ordinal task"):
        cross_fit_decision(GRADES, np.zeros(50), np.zeros(50), "f2_samples", _parts(50))


@pytest.mark.parametrize(("record", "match"), [
    ({"kind": "thresholds", "values": [0.5]}, "keys kind, values, metric and optionally low; got"),
    ({"kind": "thresholds", "values": [0.5], "metric": "f1_macro", "extra": 1}, r"got \['extra'"),
    ({"kind": "bins", "values": [0.5], "metric": "qwk"}, r"unknown decision kind 'bins'.*'thresholds', 'cutpoints'"),
    ({"kind": "cutpoints", "values": [2.5, 1.5], "metric": "qwk"}, r"cut points must be sorted; got \[2\.5, 1\.5\]"),
    ({"kind": "thresholds", "values": [], "metric": "f1_macro"}, "finite values"),
    ({"kind": "thresholds", "values": [float("nan")], "metric": "f1_macro"}, "finite values"),
])
def test_bad_records_are_refused(record: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Decision.from_dict(record)
