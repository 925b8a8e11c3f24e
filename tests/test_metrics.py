"""Tests for pipeline.metrics: agreement with sklearn, metric directions, and the paired bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.core.metrics import (
    LOG_LOSS_EPS,
    METRICS,
    Metric,
    accuracy,
    balanced_accuracy,
    get_metric,
    log_loss,
    macro_f1,
    map_at_k,
    metric_names,
    paired_bootstrap,
    qwk,
    register_custom_metric,
    roc_auc,
    score_all,
    top_k_accuracy,
)

N_CLASSES = 6


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    """Random labels and Dirichlet probabilities, with one row giving its true class probability 0."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, size=300)
    probs = rng.dirichlet(np.ones(N_CLASSES), size=300)
    probs[0] = 0.0
    probs[0, (labels[0] + 1) % N_CLASSES] = 1.0
    return labels, probs


def _kaggle_clip(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    return clipped / clipped.sum(axis=1, keepdims=True)


def test_accuracy_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    assert accuracy(labels, probs) == pytest.approx(skm.accuracy_score(labels, probs.argmax(axis=1)))


def test_log_loss_matches_sklearn_on_kaggle_clipped_probs(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    expected = skm.log_loss(labels, _kaggle_clip(probs), labels=list(range(N_CLASSES)))
    assert log_loss(labels, probs) == pytest.approx(expected, rel=1e-12)


def test_log_loss_zero_probability_follows_kaggle_not_sklearn() -> None:
    # sklearn >= 1.5 clips to float64 eps (2.2e-16) without renormalising, so a zero on the true
    # class costs about 36.04 there, against Kaggle's -log(1e-15 / (1 + 1e-15)) of about 34.54.
    labels, probs = np.array([0]), np.array([[0.0, 0.5, 0.5]])
    kaggle = -math.log(1e-15 / (1 + 1e-15))
    assert log_loss(labels, probs) == pytest.approx(kaggle, rel=1e-9)
    assert skm.log_loss(labels, probs, labels=[0, 1, 2]) == pytest.approx(-math.log(np.finfo(float).eps))


def test_log_loss_matches_sklearn_without_extremes(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    labels, probs = labels[1:], probs[1:]
    assert log_loss(labels, probs) == pytest.approx(
        skm.log_loss(labels, probs, labels=list(range(N_CLASSES)))
    )


def test_macro_f1_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    assert macro_f1(labels, probs) == pytest.approx(skm.f1_score(labels, probs.argmax(1), average="macro"))


def test_macro_f1_skips_classes_neither_present_nor_predicted() -> None:
    labels = np.array([0, 1, 2, 2, 1])
    probs = np.eye(5)[[0, 1, 3, 2, 0]]  # class 3 predicted but absent, class 4 neither
    expected = skm.f1_score(labels, probs.argmax(1), average="macro", zero_division=0)
    assert macro_f1(labels, probs) == pytest.approx(expected)


def test_balanced_accuracy_matches_sklearn(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    expected = skm.balanced_accuracy_score(labels, probs.argmax(1))
    assert balanced_accuracy(labels, probs) == pytest.approx(expected)


@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_top_k_matches_sklearn(data: tuple[np.ndarray, np.ndarray], k: int) -> None:
    # Row 0 has tied zeros, which sklearn breaks towards the higher class index and we towards the
    # lower one (as argmax does); compare on the rows without ties.
    labels, probs = data[0][1:], data[1][1:]
    expected = skm.top_k_accuracy_score(labels, probs, k=k, labels=list(range(N_CLASSES)))
    assert top_k_accuracy(labels, probs, k) == pytest.approx(expected)
    if k > 1:
        assert get_metric(f"top{k}")(labels, probs) == pytest.approx(expected)


def test_top_k_clips_k_and_breaks_ties_like_argmax() -> None:
    labels = np.array([0, 1, 2, 1])
    probs = np.full((4, 3), 1 / 3)  # all tied: argmax says class 0
    assert top_k_accuracy(labels, probs, 1) == accuracy(labels, probs) == 0.25
    assert get_metric("top5")(labels, probs) == 1.0


CLASS_METRICS = metric_names("multiclass")  # the other tasks' metrics: tests/test_metrics_targets.py


def test_class_metrics_are_the_classification_ones_in_registration_order() -> None:
    assert CLASS_METRICS == ["accuracy", "log_loss", "macro_f1", "balanced_accuracy", "roc_auc", "qwk", "map@3",
                             "top2", "top3", "top5"]
    assert metric_names("binary") == CLASS_METRICS


@pytest.mark.parametrize("name", sorted(CLASS_METRICS))
def test_registered_metric_direction(name: str) -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, N_CLASSES, size=200)
    onehot = np.eye(N_CLASSES)[labels]
    perfect = (onehot + 0.1) / (1 + 0.1 * N_CLASSES)
    wrong = (1.01 - onehot) / (N_CLASSES - 1 + 0.01 * N_CLASSES)  # true class ranked last
    metric = METRICS[name]
    good, bad = metric(labels, perfect), metric(labels, wrong)
    assert (good > bad) if metric.greater_is_better else (good < bad)


@pytest.mark.parametrize("name", [n for n in CLASS_METRICS if METRICS[n].per_row is not None])
def test_per_row_mean_equals_metric(data: tuple[np.ndarray, np.ndarray], name: str) -> None:
    labels, probs = data
    metric = METRICS[name]
    assert metric.per_row is not None
    assert metric.per_row(labels, probs).mean() == pytest.approx(metric(labels, probs), rel=1e-12)


def test_get_metric_unknown_lists_accepted_names() -> None:
    with pytest.raises(KeyError, match=r"'rmsle'.*accuracy.*log_loss.*top<k>"):
        get_metric("rmsle")


def test_score_all_returns_every_metric(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    scores = score_all(labels, probs)
    assert list(scores) == CLASS_METRICS
    assert scores["log_loss"] == log_loss(labels, probs)
    assert score_all(labels, probs, names=["top4"]) == {"top4": top_k_accuracy(labels, probs, 4)}


def test_labels_out_of_range_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"\[0, 2\].*\[3\]"):
        accuracy(np.array([0, 3]), np.full((2, 3), 1 / 3))


def _synthetic_probs(labels: np.ndarray, correct: np.ndarray, n_classes: int) -> np.ndarray:
    """0.7 on the true class where ``correct``, else 0.7 on the next class; 0.1 elsewhere."""
    top = np.where(correct, labels, (labels + 1) % n_classes)
    probs = np.full((len(labels), n_classes), 0.3 / (n_classes - 1))
    probs[np.arange(len(labels)), top] = 0.7
    return probs


def test_bootstrap_brackets_known_accuracy_difference() -> None:
    rng = np.random.default_rng(42)
    n, k = 20_000, 4
    labels = rng.integers(0, k, size=n)
    probs_a = _synthetic_probs(labels, rng.random(n) < 0.80, k)
    probs_b = _synthetic_probs(labels, rng.random(n) < 0.75, k)
    result = paired_bootstrap(labels, probs_a, probs_b, "accuracy", n_boot=1000, seed=0)
    assert result.low <= 0.05 <= result.high
    assert result.low > 0 and result.significant
    assert result.diff == pytest.approx(accuracy(labels, probs_a) - accuracy(labels, probs_b))
    assert result.high - result.low < 0.03


@pytest.mark.parametrize("name", ["accuracy", "log_loss", "macro_f1", "top2"])
def test_bootstrap_identical_predictions_give_zero_interval(
    data: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    labels, probs = data
    result = paired_bootstrap(labels, probs, probs.copy(), name, n_boot=50, seed=3)
    assert (result.diff, result.low, result.high, result.n_boot) == (0.0, 0.0, 0.0, 50)
    assert not result.significant


def test_bootstrap_vectorised_and_loop_paths_agree(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs_a = data
    probs_b = np.random.default_rng(5).dirichlet(np.ones(N_CLASSES), size=len(labels))
    looped = Metric("log_loss_loop", log_loss, greater_is_better=False)  # no per_row: forces the loop
    fast = paired_bootstrap(labels, probs_a, probs_b, "log_loss", n_boot=200, seed=7)
    slow = paired_bootstrap(labels, probs_a, probs_b, looped, n_boot=200, seed=7)
    assert fast.low == pytest.approx(slow.low, rel=1e-9)
    assert fast.high == pytest.approx(slow.high, rel=1e-9)


def test_bootstrap_is_deterministic_given_seed(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs_a = data
    probs_b = np.roll(probs_a, 1, axis=1)
    first = paired_bootstrap(labels, probs_a, probs_b, "log_loss", n_boot=100, seed=1)
    assert paired_bootstrap(labels, probs_a, probs_b, "log_loss", n_boot=100, seed=1) == first
    assert paired_bootstrap(labels, probs_a, probs_b, "log_loss", n_boot=100, seed=2) != first


def test_bootstrap_rejects_mismatched_shapes(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    with pytest.raises(ValueError, match="differ in shape"):
        paired_bootstrap(labels, probs, np.hstack([probs, np.zeros((len(probs), 1))]), "accuracy")


# --- competition metrics: ROC AUC, quadratic weighted kappa, MAP@k, a user's own -------------------------


def test_roc_auc_matches_sklearn_multiclass_and_binary(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    assert roc_auc(labels, probs) == pytest.approx(
        skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro"), rel=1e-12)
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, size=200)
    p1 = np.round(rng.random(200), 1)  # rounded: many ties, which count half
    binary = np.stack([1 - p1, p1], axis=1)
    assert roc_auc(y, binary) == pytest.approx(skm.roc_auc_score(y, p1), rel=1e-12)
    assert get_metric("roc_auc").greater_is_better


def test_qwk_matches_sklearn_quadratic_kappa_on_argmax(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    expected = skm.cohen_kappa_score(labels, probs.argmax(axis=1), weights="quadratic")
    assert qwk(labels, probs) == pytest.approx(expected, rel=1e-12)
    # A class nobody has or predicts still counts in the distances (the full ordinal scale): sklearn with labels=.
    y, pred = np.array([0, 0, 4, 4, 1]), np.array([0, 1, 4, 1, 1])  # classes 2 and 3 absent
    onehot = np.eye(5)[pred]
    full = skm.cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(5)))
    assert qwk(y, onehot) == pytest.approx(full, rel=1e-12)
    assert qwk(y, onehot) != pytest.approx(skm.cohen_kappa_score(y, pred, weights="quadratic"))


def test_map_at_3_by_hand() -> None:
    labels = np.array([0, 1, 2, 3])
    probs = np.array([
        [0.5, 0.3, 0.1, 0.1],   # true class first: 1
        [0.5, 0.3, 0.15, 0.05],  # second: 1/2
        [0.5, 0.3, 0.15, 0.05],  # third: 1/3
        [0.5, 0.3, 0.15, 0.05],  # fourth, outside the top 3: 0
    ])
    expected = (1 + 1 / 2 + 1 / 3 + 0) / 4
    assert map_at_k(labels, probs, 3) == pytest.approx(expected)
    assert get_metric("map@3")(labels, probs) == get_metric("map_at_3")(labels, probs) == pytest.approx(expected)
    assert get_metric("map@1")(labels, probs) == accuracy(labels, probs) == 0.25
    assert get_metric("map@7").name == "map@7" and get_metric("map@3").greater_is_better


@pytest.mark.parametrize("name", ["roc_auc", "qwk"])
def test_bootstrap_of_non_decomposable_metrics_equals_recomputing_per_resample(
    data: tuple[np.ndarray, np.ndarray], name: str
) -> None:
    """The batched form scores exactly what re-running the metric on each resample scores."""
    labels, probs_a = data
    probs_b = np.random.default_rng(9).dirichlet(np.ones(N_CLASSES), size=len(labels))
    metric = get_metric(name)
    assert metric.weighted is not None and metric.per_row is None
    looped = Metric(name + "_loop", metric.fn, metric.greater_is_better)
    fast = paired_bootstrap(labels, probs_a, probs_b, metric, n_boot=100, seed=4)
    slow = paired_bootstrap(labels, probs_a, probs_b, looped, n_boot=100, seed=4)
    assert (fast.low, fast.high) == pytest.approx((slow.low, slow.high), rel=1e-9)
    assert fast.diff == pytest.approx(metric(labels, probs_a) - metric(labels, probs_b))
    assert fast.low < fast.diff < fast.high


def test_roc_auc_bootstrap_skips_resamples_of_one_class() -> None:
    """Three rows, two of one class: some resamples hold a single class and have no AUC; they are left out."""
    labels = np.array([0, 0, 1])
    good = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]])
    bad = good[:, ::-1].copy()
    assert np.isnan(get_metric("roc_auc").weighted(labels, good, np.array([[1, 1, 0]])))[0]
    result = paired_bootstrap(labels, good, bad, "roc_auc", n_boot=200, seed=0)
    assert result.diff == 1.0 and result.low == result.high == 1.0


def user_metric(labels: np.ndarray, probs: np.ndarray) -> float:
    """A user's metric: the mean probability given to the true class."""
    return float(probs[np.arange(len(labels)), labels].mean())


def test_custom_metric_is_registered_by_name_with_its_direction(data: tuple[np.ndarray, np.ndarray]) -> None:
    labels, probs = data
    metric = register_custom_metric("tests.test_metrics.user_metric", user_metric, greater_is_better=True)
    try:
        assert get_metric("tests.test_metrics.user_metric") is metric
        assert metric(labels, probs) == user_metric(labels, probs)
        same = paired_bootstrap(labels, probs, probs, metric.name, n_boot=20)
        assert (same.low, same.high) == (0.0, 0.0)
        with pytest.raises(ValueError, match="'accuracy' is a built-in metric's"):
            register_custom_metric("accuracy", user_metric, True)
        with pytest.raises(ValueError, match="greater_is_better true/false"):
            register_custom_metric("x.y", user_metric, "yes")  # type: ignore[arg-type]
    finally:
        METRICS.pop("tests.test_metrics.user_metric")
