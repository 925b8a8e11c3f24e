"""Tests for pipeline.ensemble: reduction arithmetic, weights, Caruana selection, Hydra configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException

from pipeline.core.metrics import get_metric, log_loss
from pipeline.core.reduce import REDUCTIONS, merge_members, reduce_probs
from pipeline.predict.ensemble import caruana_bagged, caruana_select, resolve_weights

CONF = Path(__file__).resolve().parents[1] / "pipeline" / "conf"

P1 = np.array([0.7, 0.2, 0.1])
P2 = np.array([0.1, 0.6, 0.3])


def _pair() -> torch.Tensor:
    """Two members, one row, three classes: ``[2, 1, 3]``."""
    return torch.tensor(np.stack([P1, P2])[:, None, :])


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1 - p))


def _expected(method: str, w: tuple[float, float]) -> np.ndarray:
    """The reductions written out by hand for two members with normalised weights ``w``."""
    a, b = w
    if method == "prob_mean":
        out = a * P1 + b * P2
    elif method == "geo_mean":
        out = P1**a * P2**b
    elif method == "logit_mean":
        out = 1 / (1 + np.exp(-(a * _logit(P1) + b * _logit(P2))))
    elif method == "median":
        out = np.median(np.stack([P1, P2]), axis=0)
    else:
        out = np.maximum(P1, P2)
    return out / out.sum()


@pytest.mark.parametrize("method", REDUCTIONS)
def test_each_reduction_equal_weights(method: str) -> None:
    got = reduce_probs(_pair(), dim=0, method=method)
    np.testing.assert_allclose(got[0].numpy(), _expected(method, (0.5, 0.5)), rtol=1e-12)


def test_reductions_hand_values() -> None:
    # Independent of _expected: numbers worked out on paper.
    np.testing.assert_allclose(reduce_probs(_pair(), 0)[0].numpy(), [0.4, 0.4, 0.2])
    np.testing.assert_allclose(reduce_probs(_pair(), 0, "max")[0].numpy(), [0.7 / 1.6, 0.6 / 1.6, 0.3 / 1.6])
    np.testing.assert_allclose(reduce_probs(_pair(), 0, weights=[3, 1])[0].numpy(), [0.55, 0.3, 0.15])
    geo = np.sqrt([0.07, 0.12, 0.03])
    np.testing.assert_allclose(reduce_probs(_pair(), 0, "geo_mean")[0].numpy(), geo / geo.sum())


@pytest.mark.parametrize("method", ["prob_mean", "geo_mean", "logit_mean"])
def test_weighted_reductions(method: str) -> None:
    got = reduce_probs(_pair(), dim=0, method=method, weights=torch.tensor([3.0, 1.0]))
    np.testing.assert_allclose(got[0].numpy(), _expected(method, (0.75, 0.25)), rtol=1e-12)


def test_max_weights_only_select_members() -> None:
    np.testing.assert_allclose(reduce_probs(_pair(), 0, "max", weights=[1, 0])[0].numpy(), P1)
    torch.testing.assert_close(
        reduce_probs(_pair(), 0, "max", weights=[5, 1]), reduce_probs(_pair(), 0, "max")
    )


@pytest.mark.parametrize("method", REDUCTIONS)
def test_rows_sum_to_one_and_finite_with_zeros_and_half_precision(method: str) -> None:
    probs = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]], [[0.5, 0.5, 0.0]]], dtype=torch.float16)
    out = reduce_probs(probs, dim=0, method=method)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.sum(-1), torch.ones(1))


def test_reduce_over_a_middle_dim_matches_dim_zero() -> None:
    probs = torch.rand(4, 6, 5).softmax(-1)  # [N, V, K]
    for method in REDUCTIONS:
        torch.testing.assert_close(
            reduce_probs(probs, dim=1, method=method),
            reduce_probs(probs.transpose(0, 1), dim=0, method=method),
        )


@pytest.mark.parametrize(
    ("weights", "match"),
    [
        ([1.0, 2.0, 3.0], "expected 2 weights .*got 3"),
        ([1.0, -1.0], "non-negative"),
        ([0.0, 0.0], "all zero"),
        ([float("nan"), 1.0], "finite"),
    ],
)
def test_bad_weights_raise(weights: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        reduce_probs(_pair(), dim=0, weights=weights)


def test_bad_method_and_dim_raise() -> None:
    with pytest.raises(ValueError, match="mode.*prob_mean.*logit_mean.*geo_mean.*max.*median"):
        reduce_probs(_pair(), dim=0, method="mode")
    for dim in (-1, 2, 3):
        with pytest.raises(ValueError, match="class"):
            reduce_probs(_pair(), dim=dim)


def test_merge_members_accepts_arrays_and_tensors() -> None:
    got = merge_members([P1[None], torch.tensor(P2[None])], weights=[1, 3])
    np.testing.assert_allclose(got[0].numpy(), 0.25 * P1 + 0.75 * P2)
    with pytest.raises(ValueError, match=r"Member 1 .*\(2, 3\).*\(1, 3\)"):
        merge_members([P1[None], np.stack([P1, P2])])


# ---------------------------------------------------------------------------------------------
# Caruana selection.

N_CLASSES = 4


def _confident(labels: np.ndarray, p_true: float = 0.91) -> np.ndarray:
    probs = np.full((len(labels), N_CLASSES), (1 - p_true) / (N_CLASSES - 1))
    probs[np.arange(len(labels)), labels] = p_true
    return probs


def _complementary_case() -> tuple[list[np.ndarray], np.ndarray]:
    """Members A, B (each good on one half, unsure on the other), uniform U and random-label R."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, size=200)
    uniform = np.full((200, N_CLASSES), 1 / N_CLASSES)
    first = np.arange(200) < 100
    a = np.where(first[:, None], _confident(labels), uniform)
    b = np.where(first[:, None], uniform, _confident(labels))
    random_labels = _confident(rng.integers(0, N_CLASSES, size=200))
    return [a, uniform, b, random_labels], labels


def test_caruana_ignores_useless_members_and_mixes_complementary_ones() -> None:
    members, labels = _complementary_case()
    weights = caruana_select(members, labels, n_rounds=20)
    assert weights[1] == 0.0 and weights[3] == 0.0
    assert weights.sum() == pytest.approx(1.0)
    assert weights[0] == pytest.approx(0.5, abs=0.1) and weights[2] == pytest.approx(0.5, abs=0.1)
    blended = log_loss(labels, merge_members(members, weights).numpy())
    assert blended < min(log_loss(labels, m) for m in members)


def test_caruana_selects_a_clearly_best_member() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, N_CLASSES, size=100)
    noise = [_confident(rng.integers(0, N_CLASSES, size=100), p_true=0.5) for _ in range(2)]
    members = [noise[0], _confident(labels), noise[1]]
    np.testing.assert_array_equal(caruana_select(members, labels), [0.0, 1.0, 0.0])
    # Accuracy must be maximised: its direction comes from the registered Metric or the flag.
    accuracy = get_metric("accuracy")
    np.testing.assert_array_equal(caruana_select(members, labels, metric=accuracy), [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(
        caruana_select(members, labels, metric=accuracy.fn, greater_is_better=True), [0.0, 1.0, 0.0]
    )


def test_caruana_ties_go_to_the_lowest_index() -> None:
    members, labels = _complementary_case()
    np.testing.assert_array_equal(caruana_select([members[0], members[0]], labels), [1.0, 0.0])


def test_caruana_init_best_and_bad_arguments() -> None:
    members, labels = _complementary_case()
    weights = caruana_select(members, labels, n_rounds=0, init_best=2)
    np.testing.assert_array_equal(weights, [0.5, 0.0, 0.5, 0.0])  # A and B are the two best singles
    with pytest.raises(ValueError, match="init_best"):
        caruana_select(members, labels, init_best=5)


# ---------------------------------------------------------------------------------------------
# resolve_weights.


def test_resolve_weights_kinds() -> None:
    np.testing.assert_allclose(resolve_weights("equal", 4), [0.25] * 4)
    np.testing.assert_allclose(resolve_weights("given", 2, given=[3, 1]), [0.75, 0.25])
    fitted = np.array([0.2, 0.0, 0.8])
    np.testing.assert_allclose(resolve_weights("caruana", 3, fitted=fitted), fitted)
    np.testing.assert_allclose(resolve_weights("fitted", 3, fitted=fitted), fitted)


@pytest.mark.parametrize(
    ("kind", "given", "match"),
    [
        ("given", [1.0, 2.0], r"ensemble\.given_weights for 3 members: expected 3 .*got 2"),
        ("given", None, r"ensemble\.given_weights"),
        ("caruana", None, "caruana_select"),
        ("blend", None, "equal.*given.*caruana"),
    ],
)
def test_resolve_weights_errors(kind: str, given: list[float] | None, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        resolve_weights(kind, 3, given=given)


# ---------------------------------------------------------------------------------------------
# Hydra configs.


def test_ensemble_yamls_compose_into_weights(conf_dir: Path) -> None:
    assert sorted(p.stem for p in (CONF / "ensemble").glob("*.yaml")) == [
        "auto", "caruana", "mean", "optimize", "rank", "stack", "weighted"]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        mean = compose(config_name="config").ensemble
        weighted = compose(
            config_name="config", overrides=["ensemble=weighted", "ensemble.given_weights=[2,1,1]"]
        )
        caruana = compose(config_name="config", overrides=["ensemble=caruana"]).ensemble
    assert (mean.method, mean.weights) == ("prob_mean", "equal")
    given = list(weighted.ensemble.given_weights)
    np.testing.assert_allclose(resolve_weights(weighted.ensemble.weights, 3, given=given), [0.5, 0.25, 0.25])
    assert (caruana.weights, caruana.caruana_rounds, caruana.bags) == ("caruana", 50, 1)


@pytest.mark.parametrize(("name", "combine", "weights"), [
    ("rank", "rank", "equal"), ("stack", "stack", "equal"), ("optimize", "weighted", "optimize"),
    ("auto", "auto", "equal"), ("mean", "weighted", "equal"),
])
def test_new_ensemble_yamls_compose_and_pass_the_checks(conf_dir: Path, name: str, combine: str, weights: str) -> None:
    from pipeline.cli.config import to_dataclass
    from pipeline.predict.ensemble import check_ensemble
    from pipeline.predict.spec import EnsembleSpec

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        spec = to_dataclass(EnsembleSpec, compose(config_name="config", overrides=[f"ensemble={name}"]).ensemble)
    assert (spec.combine, spec.weights) == (combine, weights)
    check_ensemble(spec, ["a", "b"], "accuracy")


def test_ensemble_key_typo_fails_at_composition(conf_dir: Path) -> None:
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        with pytest.raises(ConfigCompositionException, match="methd"):
            compose(config_name="config", overrides=["ensemble.methd=max"])


# ---------------------------------------------------------------------------------------------
# Merge methods beyond the weighted mean (pipeline.predict.merge) and ensemble=auto.


def _noisy(labels: np.ndarray, rng: np.random.Generator, accuracy: float, k: int = N_CLASSES,
           p_top: float = 0.7) -> np.ndarray:
    """Confident predictions that are right on about ``accuracy`` of the rows."""
    wrong = rng.random(len(labels)) > accuracy
    guess = np.where(wrong, (labels + rng.integers(1, k, len(labels))) % k, labels)
    probs = np.full((len(labels), k), (1 - p_top) / (k - 1))
    probs[np.arange(len(labels)), guess] = p_top
    return probs


def test_stacking_learns_a_permuted_model_that_equal_weights_are_hurt_by() -> None:
    from pipeline.predict.fitting import cross_fit
    from pipeline.predict.merge import fit_combiner
    from pipeline.predict.spec import EnsembleSpec

    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, 600)

    def model() -> np.ndarray:  # logits: signal on the true class plus independent noise, so two models help
        logits = 1.5 * np.eye(N_CLASSES)[labels] + rng.normal(size=(len(labels), N_CLASSES))
        return torch.tensor(logits).softmax(-1).numpy()

    a = model()
    b = model()[:, [1, 2, 3, 0]]  # a second good model whose class columns are shuffled
    acc = get_metric("accuracy")
    spec = EnsembleSpec(combine="stack")
    stacked = cross_fit(lambda p, y: fit_combiner(p, y, spec, "accuracy"), [a, b], labels, 5, 0)
    equal = merge_members([a, b]).numpy()
    assert acc(labels, equal) < acc(labels, a) - 0.05  # equal averaging is hurt by the permuted copy
    assert acc(labels, stacked) > acc(labels, a) + 0.05  # the meta-model undoes the permutation and gains from b
    assert log_loss(labels, stacked) < min(log_loss(labels, equal), log_loss(labels, a))


def test_bagged_caruana_is_deterministic_under_its_seed() -> None:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, N_CLASSES, 300)
    members = [_noisy(labels, rng, acc) for acc in (0.6, 0.62, 0.64, 0.66, 0.68, 0.7)]
    runs = {seed: caruana_bagged(members, labels, bags=8, bag_fraction=0.5, seed=seed, n_rounds=10)
            for seed in range(4)}
    np.testing.assert_array_equal(runs[0], caruana_bagged(members, labels, 8, 0.5, 0, n_rounds=10))
    assert all(w.sum() == pytest.approx(1.0) and (w >= 0).all() for w in runs.values())
    assert len({tuple(w.round(6)) for w in runs.values()}) > 1  # other seeds draw other bags
    plain = caruana_select(members, labels, 10)
    np.testing.assert_array_equal(caruana_bagged(members, labels, 1, 0.5, 0, n_rounds=10), plain)
    with pytest.raises(ValueError, match="bag_fraction"):
        caruana_bagged(members, labels, 2, 0.0, 0)


def test_caruana_holds_no_float64_members_by_rows_by_classes_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    import pipeline.predict.ensemble as ensemble

    monkeypatch.setattr(ensemble, "_CHUNK_ELEMS", 20_000)  # score 2,000 rows at a time, as 400k rows of 10 would be
    rng = np.random.default_rng(0)
    n, k, m = 20_000, 10, 6
    labels = rng.integers(0, k, n)
    members = [rng.dirichlet(np.ones(k), n).astype(np.float32) for _ in range(m)]
    tracemalloc.start()
    caruana_select(members, labels, n_rounds=3)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # Beyond the members' own float32 arrays: the running float32 sum and chunk-sized buffers, well under two
    # N×K float32 arrays (a float64 members×rows×classes stack would be 9.6 MB, float64 N×K alone 1.6 MB).
    assert peak < 2 * n * k * 4, f"peak {peak / 1e6:.2f} MB"


def test_rank_average_by_hand() -> None:
    from pipeline.predict.merge import rank_average

    a = np.array([[0.9, 0.1], [0.5, 0.5], [0.2, 0.8]])
    b = np.array([[0.6, 0.4], [0.7, 0.3], [0.1, 0.9]])
    # ranks over rows, scaled to [0, 1]: a → class 0 [1, .5, 0], class 1 [0, .5, 1]; b → [.5, 1, 0], [.5, 0, 1]
    mean = np.array([[0.75, 0.25], [0.75, 0.25], [0.0, 1.0]])
    np.testing.assert_allclose(rank_average([a, b]), mean / mean.sum(1, keepdims=True), atol=1e-6)
    weighted = 0.25 * np.array([[1, 0], [.5, .5], [0, 1]]) + 0.75 * np.array([[.5, .5], [1, 0], [0, 1]])
    np.testing.assert_allclose(rank_average([a, b], np.array([0.25, 0.75])), weighted, atol=1e-6)


def test_optimized_weights_lie_on_the_simplex_and_beat_equal_and_singles() -> None:
    from pipeline.predict.merge import optimize_weights

    members, labels = _complementary_case()
    weights = optimize_weights(members, labels)
    assert weights.sum() == pytest.approx(1.0) and (weights >= 0).all()
    fitted = log_loss(labels, merge_members(members, weights).numpy())
    assert fitted < log_loss(labels, merge_members(members).numpy())
    assert fitted < min(log_loss(labels, m) for m in members)
    assert weights[3] < 0.05 and weights[0] > 0.3 and weights[2] > 0.3  # the random-label member is dropped


def test_temperature_scaling_lowers_the_log_loss_of_an_overconfident_model() -> None:
    from pipeline.predict.merge import apply_temperature, fit_temperature

    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, 500)
    over = _noisy(labels, rng, 0.7, p_top=0.99)
    t = fit_temperature(over, labels)
    assert t > 1.5
    assert log_loss(labels, apply_temperature(over, t)) < log_loss(labels, over) - 0.3
    np.testing.assert_allclose(apply_temperature(over, 1.0), over, atol=1e-6)


def test_auto_keeps_the_single_model_when_the_others_are_noise_and_mixes_complementary_ones() -> None:
    from pipeline.predict.choose import choose_ensemble
    from pipeline.predict.spec import EnsembleSpec

    rng = np.random.default_rng(0)
    labels = rng.integers(0, N_CLASSES, 400)
    good = _noisy(labels, rng, 0.8, p_top=0.97)
    noise = {f"noise{i}": _noisy(rng.integers(0, N_CLASSES, 400), rng, 1.0, p_top=0.4) for i in range(2)}
    oof = {"good": good, **noise}
    combiner, record = choose_ensemble(oof, labels, oof, EnsembleSpec(combine="auto"), "accuracy")
    assert record["chosen"] == "single", record
    assert "the best single model good, without TTA, one view, is submitted" in record["reason"]
    np.testing.assert_array_equal(combiner.apply([good, *noise.values()]), good.astype(np.float32))
    assert set(record["scores"]) == {"single", "mean", "caruana", "optimize", "stack", "rank"}

    members, labels = _complementary_case()
    pair = {"a": members[0], "b": members[2]}
    _, record = choose_ensemble(pair, labels, pair, EnsembleSpec(combine="auto"), "log_loss")
    assert record["chosen"] != "single" and "rank" not in record["scores"]
    assert record["scores"][record["chosen"]] < record["scores"]["single"]


@pytest.mark.parametrize(("change", "match"), [
    ({"combine": "blend"}, r"ensemble.combine='blend' is not one of \['weighted', 'rank', 'stack', 'auto'\]"),
    ({"bags": 0}, r"ensemble.bags must be a positive integer.*got bags=0"),
    ({"bag_fraction": 1.5}, r"bag_fraction in \(0, 1\].*bag_fraction=1.5"),
    ({"weights": "optimize", "method": "max"}, r"optimize cannot weight ensemble.method=max"),
    ({"cross_fit_parts": 1}, r"ensemble.cross_fit_parts must be an integer of at least 2"),
    ({"combine": "auto", "candidates": ["mean", "blend"]}, r"ensemble.candidates \['blend'\] are unknown"),
])
def test_bad_merge_settings_are_named_before_any_work(change: dict, match: str) -> None:
    from pipeline.core.errors import ConfigError
    from pipeline.predict.ensemble import check_ensemble
    from pipeline.predict.spec import EnsembleSpec

    with pytest.raises(ConfigError, match=match):
        check_ensemble(EnsembleSpec(**change), ["a", "b"], "accuracy")


def _task_members(kind: str) -> tuple[np.ndarray, list[np.ndarray]]:
    """Targets and two members of a regression or multi-label task: one close to the targets, one noise."""
    rng = np.random.default_rng(0)
    if kind == "regression":
        y = rng.uniform(4, 12, 300)
        return y, [(y + rng.normal(0, 0.5, 300))[:, None], rng.uniform(4, 12, (300, 1))]
    y = (rng.random((300, 5)) < 0.3).astype(float)
    return y, [np.clip(0.8 * y + 0.1 + rng.normal(0, 0.05, y.shape), 0, 1), rng.random(y.shape)]


@pytest.mark.parametrize(("kind", "columns", "metric"), [
    ("regression", ("target",), "rmse"), ("multilabel", tuple("abcde"), "f2_samples")])
def test_optimize_weights_a_task_merge_towards_the_better_member(kind: str, columns: tuple[str, ...],
                                                                 metric: str) -> None:
    from pipeline.core.task import Task
    from pipeline.predict.fitting import rule
    from pipeline.predict.spec import EnsembleSpec

    y, members = _task_members(kind)
    task = Task(kind, columns, 4.0 if kind == "regression" else None, 12.0 if kind == "regression" else None)
    combiner = rule("optimize", EnsembleSpec(), metric, task).fit(members, y)
    assert combiner.weights[0] > 0.8, combiner.weights  # equal weights (the starting point) were kept before
    smooth = get_metric(task.smooth_loss)
    assert smooth(y, combiner.apply(members)) < smooth(y, 0.5 * (members[0] + members[1]))


@pytest.mark.parametrize(("kind", "columns", "metric"), [
    ("regression", ("target",), "rmse"), ("multilabel", tuple("abcde"), "f2_samples")])
def test_auto_compares_merges_on_value_and_multilabel_targets(kind: str, columns: tuple[str, ...],
                                                              metric: str) -> None:
    from pipeline.core.task import Task
    from pipeline.predict.choose import choose_ensemble
    from pipeline.predict.spec import EnsembleSpec

    y, members = _task_members(kind)
    task = Task(kind, columns, 4.0 if kind == "regression" else None, 12.0 if kind == "regression" else None)
    oof = {"good": members[0], "noise": members[1]}
    _, record = choose_ensemble(oof, y, oof, EnsembleSpec(combine="auto"), metric, task=task)
    # every value distinct is not "a class of one row": the merges are compared, not skipped as too few rows
    assert not any("too few" in n for n in record["notes"]), record["notes"]
    assert {"mean", "caruana", "optimize"} <= set(record["scores"]), record["scores"]
