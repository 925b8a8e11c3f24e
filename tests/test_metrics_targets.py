"""Tests for the metrics of regression, ordinal and multi-label targets: agreement with sklearn, edge cases,
the task each metric scores, and the paired bootstrap on 2-D and float labels."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import (
    METRICS,
    Metric,
    check_metric_task,
    get_metric,
    metric_names,
    paired_bootstrap,
    qwk,
    register_custom_metric,
    score_all,
)
from pipeline.core.task import TASKS

SEEDS = [0, 1, 2, 3]
VALUE_METRICS = {
    "rmse": skm.root_mean_squared_error, "mse": skm.mean_squared_error, "mae": skm.mean_absolute_error,
    "r2": skm.r2_score,
}


def _values(seed: int, n: int = 150) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.normal(3.0, 2.0, size=n)
    return labels, labels + rng.normal(0.0, 1.5, size=n)


def _multilabel(seed: int, n: int = 120, n_labels: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Random tags and probabilities, with edge cases: rows without tags, a column without positives, a column
    of positives only, probabilities exactly 0.5 (decided positive), 0 and 1."""
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, n_labels)) < rng.uniform(0.1, 0.6, n_labels)).astype(np.float64)
    labels[:4] = 0.0
    labels[:, 1] = 0.0
    labels[:, 2] = 1.0
    preds = np.clip(0.35 * labels + rng.random((n, n_labels)) * 0.7, 0, 1)
    preds[5, :] = 0.5
    preds[6, 0], preds[7, 0] = 0.0, 1.0
    return labels, preds


def _sk_fbeta(labels: np.ndarray, preds: np.ndarray, beta: float, average: str) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(skm.fbeta_score(labels, (preds >= 0.5).astype(int), beta=beta, average=average, zero_division=0))


# --- regression and ordinal values ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("name", sorted(VALUE_METRICS))
def test_value_metrics_match_sklearn_with_preds_as_column_or_vector(name: str, seed: int) -> None:
    labels, preds = _values(seed)
    expected = VALUE_METRICS[name](labels, preds)
    metric = get_metric(name)
    assert metric(labels, preds[:, None]) == pytest.approx(expected, rel=1e-12)
    assert metric(labels, preds) == pytest.approx(expected, rel=1e-12)
    assert metric.greater_is_better == (name == "r2")
    assert metric.tasks == {"regression", "ordinal"}


def test_value_metrics_by_hand_and_r2_edge_cases_as_sklearn() -> None:
    labels, preds = np.array([1.0, 2.0, 4.0]), np.array([[2.0], [2.0], [1.0]])
    assert get_metric("mse")(labels, preds) == pytest.approx((1 + 0 + 9) / 3)
    assert get_metric("mae")(labels, preds) == pytest.approx(4 / 3)
    assert get_metric("rmse")(labels, preds) == pytest.approx(math.sqrt(10 / 3))
    constant = np.full(4, 2.0)  # sklearn (force_finite): 1.0 when predicted exactly, else 0.0
    assert get_metric("r2")(constant, constant) == skm.r2_score(constant, constant) == 1.0
    assert get_metric("r2")(constant, constant + 1) == skm.r2_score(constant, constant + 1) == 0.0


@pytest.mark.parametrize("seed", SEEDS)
def test_qwk_of_grade_values_rounds_clips_and_matches_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    grades = rng.integers(0, 5, size=300).astype(np.float64)
    values = grades + rng.normal(0, 0.9, size=300)  # some fall below 0 or above 4: clipped to the labels' range
    assert values.min() < -0.5 and values.max() > 4.5
    decided = np.clip(np.ceil(values - 0.5), 0, 4).astype(int)
    expected = skm.cohen_kappa_score(grades.astype(int), decided, weights="quadratic")
    assert qwk(grades, values[:, None]) == pytest.approx(expected, rel=1e-12)
    assert qwk(grades, values) == pytest.approx(expected, rel=1e-12)
    assert qwk(grades + 1, values[:, None] + 1) == pytest.approx(expected, rel=1e-12)  # grades 1..5: the same


def test_qwk_grade_rounding_halves_go_down_as_midpoint_cut_points() -> None:
    grades = np.array([0.0, 1.0, 2.0, 1.0])
    # 1.5 is between grades 1 and 2: the lower one, as the cut point 1.5 decides it (not below 1.5).
    assert qwk(grades, np.array([0.0, 1.0, 1.5, 1.0])) == pytest.approx(
        skm.cohen_kappa_score([0, 1, 2, 1], [0, 1, 1, 1], weights="quadratic"))
    assert qwk(grades, np.array([0.0, 1.0, 1.5000001, 1.0])) == 1.0


def test_qwk_multiclass_unchanged_and_ordinal_needs_integer_grades() -> None:
    labels, probs = np.array([0, 1, 2, 2]), np.eye(3)[[0, 2, 2, 1]]
    assert qwk(labels, probs) == pytest.approx(skm.cohen_kappa_score(labels, [0, 2, 2, 1], weights="quadratic"))
    with pytest.raises(ValueError, match=r"integer grades.*\[1\.5\] at rows \[1\]"):
        qwk(np.array([1.0, 1.5, 2.0]), np.array([1.0, 2.0, 2.0]))
    assert "ordinal" in get_metric("qwk").tasks


# --- multi-label ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("average", ["samples", "macro", "micro"])
@pytest.mark.parametrize("beta", [1.0, 2.0, 0.5])
def test_fbeta_matches_sklearn_zero_division_0(seed: int, average: str, beta: float) -> None:
    labels, preds = _multilabel(seed)
    metric = get_metric(f"f{beta:g}_{average}")
    expected = _sk_fbeta(labels, preds, beta, average)
    assert metric(labels, preds) == pytest.approx(expected, rel=1e-12)
    decisions = (preds >= 0.5).astype(np.float64)  # a 0/1 matrix of decisions scores the same
    assert metric(labels, decisions) == pytest.approx(expected, rel=1e-12)
    assert metric.greater_is_better and metric.tasks == {"multilabel"}


def test_fbeta_edge_cases_by_hand() -> None:
    labels = np.array([[0, 0], [1, 0], [1, 1]], dtype=float)
    preds = np.array([[0.1, 0.2], [0.9, 0.5], [0.1, 0.1]])  # row 0: nothing true, nothing decided
    # samples: row 0 scores 0 (zero_division=0) and counts; row 1: tp 1, 1 true, 2 decided; row 2: nothing decided.
    assert get_metric("f1_samples")(labels, preds) == pytest.approx((0 + 2 / 3 + 0) / 3)
    assert get_metric("f1_samples")(labels, preds) == pytest.approx(_sk_fbeta(labels, preds, 1.0, "samples"))
    nobody = np.zeros((3, 2))  # no true label and nothing decided anywhere: 0, as sklearn with zero_division=0
    for average in ("samples", "macro", "micro"):
        assert get_metric(f"f1_{average}")(nobody, nobody) == _sk_fbeta(nobody, nobody, 1.0, average) == 0.0


def test_registered_and_pattern_fbeta_names() -> None:
    assert {"f1_samples", "f2_samples", "f1_macro", "f1_micro"} <= set(METRICS)
    assert get_metric("f0.5_macro").name == "f0.5_macro"
    assert get_metric("f3_micro").name == "f3_micro"
    for bad in ("f0_macro", "f2_weighted", "f_samples"):
        with pytest.raises(KeyError, match="f<beta>_<samples|macro|micro>"):
            get_metric(bad)
    with pytest.raises(ValueError, match="built-in metric's"):
        register_custom_metric("f2_macro", lambda y, p: 0.0, True)


@pytest.mark.parametrize("seed", SEEDS)
def test_bce_matches_sklearn_log_loss_per_label(seed: int) -> None:
    labels, preds = _multilabel(seed)
    preds = np.clip(preds, 0.01, 0.99)  # inside both clip ranges
    expected = np.mean([skm.log_loss(labels[:, j], preds[:, j], labels=[0, 1]) for j in range(labels.shape[1])])
    assert get_metric("bce")(labels, preds) == pytest.approx(expected, rel=1e-12)
    assert not get_metric("bce").greater_is_better


def test_bce_clips_like_log_loss() -> None:
    # A sure wrong answer costs -log(1e-15) per cell, like the multiclass log loss's clip.
    assert get_metric("bce")(np.array([[1.0, 0.0]]), np.array([[0.0, 0.0]])) == pytest.approx(-math.log(1e-15) / 2)
    assert "log_loss" in METRICS and METRICS["log_loss"].tasks == {"multiclass", "binary"}


@pytest.mark.parametrize("seed", SEEDS)
def test_mean_auc_and_ap_match_sklearn_on_scorable_columns(seed: int) -> None:
    labels, preds = _multilabel(seed)
    preds = np.round(preds, 1)  # ties
    scorable = [j for j in range(labels.shape[1]) if 0 < labels[:, j].sum() < len(labels)]
    assert len(scorable) == labels.shape[1] - 2  # columns 1 (no positive) and 2 (all positive) are left out
    assert get_metric("mean_auc")(labels, preds) == pytest.approx(
        skm.roc_auc_score(labels[:, scorable], preds[:, scorable], average="macro"), rel=1e-12)
    with_positives = [j for j in range(labels.shape[1]) if labels[:, j].sum() > 0]
    assert get_metric("mean_ap")(labels, preds) == pytest.approx(
        skm.average_precision_score(labels[:, with_positives], preds[:, with_positives], average="macro"), rel=1e-12)


def test_mean_ap_leaves_out_a_column_without_positives_where_sklearn_scores_it() -> None:
    labels = np.array([[1, 0], [0, 0], [1, 0]], dtype=float)
    preds = np.array([[0.9, 0.3], [0.2, 0.8], [0.7, 0.1]])
    assert get_metric("mean_ap")(labels, preds) == 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert skm.average_precision_score(labels, preds, average="macro") == 0.5


def test_mean_auc_and_ap_raise_when_no_column_is_scorable() -> None:
    labels, preds = np.ones((4, 2)), np.full((4, 2), 0.5)
    with pytest.raises(ValueError, match="mean_auc is undefined on these 4 rows: no label column has both"):
        get_metric("mean_auc")(labels, preds)
    with pytest.raises(ValueError, match="mean_ap is undefined on these 4 rows: no label column has a positive"):
        get_metric("mean_ap")(np.zeros((4, 2)), preds)


# --- input checks --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "labels", "preds", "match"), [
    ("f1_samples", np.array([[0, 2]]), np.array([[0.1, 0.2]]),
     r"labels must be 0 or 1; got \[2\.0\] at \(row, column\) \[\(0, 1\)\]"),
    ("bce", np.array([[0, 1]]), np.array([[0.1, 1.2]]), r"preds must be probabilities in \[0, 1\]; got \[1\.2\]"),
    ("mean_auc", np.array([0, 1]), np.array([[0.1], [0.2]]), r"multilabel labels \[N, L\].*\(2,\) and \(2, 1\)"),
    ("f1_macro", np.zeros((2, 3)), np.zeros((2, 2)), r"same shape; got \(2, 3\) and \(2, 2\)"),
    ("rmse", np.array([1.0, 2.0]), np.ones((2, 2)), r"preds \[N, 1\] or \[N\]; got \(2,\) and \(2, 2\)"),
    ("rmse", np.array([1.0, np.nan]), np.ones(2), r"labels must be finite; got NaN or inf at rows \[1\]"),
    ("mae", np.array([1.0, 2.0, 3.0]), np.ones(2), r"same non-zero N; got 3 and 2"),
    ("mse", np.array(["a", "b"]), np.ones(2), r"labels must be numbers; got dtype <U1"),
])
def test_bad_inputs_name_the_problem(name: str, labels: np.ndarray, preds: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        get_metric(name)(labels, preds)


def test_multiclass_checks_are_not_loosened() -> None:
    with pytest.raises(ValueError, match="integer class indices; got dtype float64"):
        get_metric("accuracy")(np.array([0.0, 1.0]), np.eye(2))
    with pytest.raises(ValueError, match=r"lie in \[0, 1\]"):
        score_all(np.array([0, 2]), np.eye(2), task="binary")
    with pytest.raises(ValueError, match="binary task's probs have 2 columns; got 3"):
        score_all(np.array([0, 1]), np.eye(3)[:2], names=["accuracy"], task="binary")


# --- the tasks a metric scores -------------------------------------------------------------------------------


def test_every_metric_names_its_tasks_and_every_task_has_its_default_metric() -> None:
    from pipeline.core.task import Task

    for metric in METRICS.values():
        assert metric.tasks and metric.tasks <= set(TASKS), metric.name
    for kind in TASKS:
        columns = ("a", "b") if kind != "regression" and kind != "ordinal" else ("y",)
        task = Task(kind, columns)
        assert check_metric_task(task.default_metric, kind).name == task.default_metric
        assert check_metric_task(task.smooth_loss, kind).name == task.smooth_loss
    assert metric_names("regression") == ["mse", "mae", "rmse", "r2"]
    assert metric_names("ordinal") == ["qwk", "mse", "mae", "rmse", "r2"]


def test_check_metric_task_names_metric_task_and_what_is_accepted() -> None:
    with pytest.raises(ConfigError, match=r"'accuracy' does not score a regression task.*accepted for regression: "
                                          r"\['mse', 'mae', 'rmse', 'r2'\]"):
        check_metric_task("accuracy", "regression")
    with pytest.raises(ConfigError, match=r"'rmse' does not score a multilabel task.*'f1_samples'.*f<beta>_"):
        check_metric_task("rmse", "multilabel")
    with pytest.raises(ValueError, match=r"'log_loss' does not score a multilabel task.*'bce'"):
        check_metric_task("log_loss", "multilabel")
    with pytest.raises(ConfigError, match=r"unknown task 'tags'.*'multilabel'"):
        check_metric_task("bce", "tags")
    assert check_metric_task("f0.5_samples", "multilabel").name == "f0.5_samples"
    assert check_metric_task("top3", "binary").name == "top3"


# --- score_all and the paired bootstrap ---------------------------------------------------------------------


def test_score_all_per_task() -> None:
    labels, preds = _multilabel(0)
    scores = score_all(labels, preds, task="multilabel")
    assert list(scores) == metric_names("multilabel")
    assert scores["f2_samples"] == pytest.approx(_sk_fbeta(labels, preds, 2.0, "samples"))
    values, guess = _values(0)
    assert score_all(values, guess, names=["rmse", "r2"]) == {  # without task: each metric reads its own kind
        "rmse": get_metric("rmse")(values, guess), "r2": get_metric("r2")(values, guess)}
    with pytest.raises(ConfigError, match="'accuracy' does not score a regression task"):
        score_all(values, guess, names=["rmse", "accuracy"], task="regression")


@pytest.mark.parametrize("name", ["rmse", "mse", "mae", "r2", "qwk", "bce", "f1_samples", "f2_samples", "f1_macro",
                                  "f1_micro", "f0.5_macro", "mean_auc", "mean_ap"])
def test_bootstrap_fast_forms_equal_recomputing_per_resample(name: str) -> None:
    """Per-row and weighted forms score exactly what re-running the metric on each resampled set of rows scores."""
    if name in ("bce", "f1_samples", "f2_samples", "f1_macro", "f1_micro", "f0.5_macro", "mean_auc", "mean_ap"):
        labels, preds_a = _multilabel(3)
        preds_b = np.clip(preds_a + np.random.default_rng(4).normal(0, 0.2, preds_a.shape), 0, 1)
        task = "multilabel"
    else:
        labels, preds_a = _values(3)
        if name == "qwk":
            labels = np.clip(np.round(labels), 0, 6)
        preds_b = preds_a + np.random.default_rng(4).normal(0, 1.0, preds_a.shape)
        task = "ordinal"
    metric = get_metric(name)
    assert metric.per_row is not None or metric.weighted is not None
    looped = Metric(name + "_loop", metric.fn, metric.greater_is_better, tasks=metric.tasks)
    fast = paired_bootstrap(labels, preds_a, preds_b, metric, n_boot=60, seed=2, task=task)
    slow = paired_bootstrap(labels, preds_a, preds_b, looped, n_boot=60, seed=2, task=task)
    assert fast.diff == pytest.approx(metric(labels, preds_a) - metric(labels, preds_b), rel=1e-12)
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), rel=1e-9)
    assert fast.low < fast.high


def test_bootstrap_of_multilabel_rows_and_float_labels() -> None:
    labels, preds = _multilabel(1, n=400)
    better = np.clip(preds + 0.3 * (2 * labels - 1), 0, 1)  # pushed towards the truth: surely better
    result = paired_bootstrap(labels, better, preds, "f2_samples", n_boot=200, seed=0)
    assert result.significant and result.low > 0
    same = paired_bootstrap(labels, preds, preds.copy(), "mean_auc", n_boot=50)
    assert (same.diff, same.low, same.high) == (0.0, 0.0, 0.0)
    values, guess = _values(1, n=400)
    result = paired_bootstrap(values, guess, guess + 1.0, "rmse", n_boot=200, seed=0, task="regression")
    assert result.high < 0  # lower is better: a is surely better
    with pytest.raises(ConfigError, match="'accuracy' does not score a regression task"):
        paired_bootstrap(values, guess, guess, "accuracy", task="regression")
    with pytest.raises(ValueError, match=r"same shape; got \(400, 6\) and \(400, 3\)"):
        paired_bootstrap(labels, preds, preds[:, :3], "bce")
