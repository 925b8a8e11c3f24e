"""Predicting tasks other than one class per image: files, merges, one split, refusals (predict/targets.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.task import Task
from pipeline.member.predictions import file_layout, read_predictions, write_predictions
from pipeline.predict.ensemble import check_ensemble
from pipeline.predict.fitting import cross_fit, rule, split
from pipeline.predict.merge import fit_combiner
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.targets import check_task_options, members_task

TAGS = Task("multilabel", ("a", "b", "c"))
VALUE = Task("regression", ("size",), 4.0, 12.0)


def test_prediction_files_hold_values_and_targets_of_any_task(tmp_path: Path) -> None:
    y = np.array([[1, 0, 1], [0, 1, 0]], float)
    p = np.array([[0.9, 0.2, 0.7], [0.1, 0.8, 0.4]])
    write_predictions(tmp_path / "tags.csv", ["NA", "007"], p, TAGS.columns, y, **file_layout(TAGS))
    ids, probs, labels = read_predictions(tmp_path / "tags.csv", list(TAGS.columns))
    assert ids == ["NA", "007"] and np.allclose(probs, p) and np.array_equal(labels, y)  # rows need not sum to 1
    write_predictions(tmp_path / "v.csv", ["x", "y"], np.array([[15.5], [-2.0]]), VALUE.columns, np.array([5.0, 7.5]),
                      **file_layout(VALUE))
    assert (tmp_path / "v.csv").read_text().splitlines()[0] == "id,y:size,v:size"
    _, values, targets = read_predictions(tmp_path / "v.csv", ["size"])
    assert values[:, 0].tolist() == [15.5, -2.0] and targets.tolist() == [5.0, 7.5]  # any range, not probabilities
    (tmp_path / "bad.csv").write_text("id,v:size\nx,nan\n")
    with pytest.raises(MemberError, match=r"bad.csv: column 'v:size' holds values that are not finite"):
        read_predictions(tmp_path / "bad.csv", ["size"])


def test_merges_of_other_tasks_average_without_renormalising() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(8, 2, 200)
    good, noisy = y + rng.normal(0, 0.3, 200), y + rng.normal(0, 3.0, 200)
    spec = EnsembleSpec(weights="caruana")
    combiner = fit_combiner([good[:, None], noisy[:, None]], y, spec, "rmse", task=VALUE)
    assert combiner.weights[0] > 0.8 and not combiner.normalize and combiner.info["fit_metric"] == "mse"
    merged = combiner.apply([good[:, None], noisy[:, None]])
    assert np.allclose(merged[:, 0], combiner.weights[0] * good + combiner.weights[1] * noisy, atol=1e-4)
    mean = fit_combiner([good[:, None], noisy[:, None]], y, replace(spec, weights="equal"), "rmse", task=VALUE)
    assert np.allclose(mean.apply([good[:, None], noisy[:, None]])[:, 0], (good + noisy) / 2, atol=1e-4)
    # sigmoid outputs stay independent probabilities
    tags = rng.random((50, 3))
    m = fit_combiner([tags, tags], (tags > 0.5).astype(float), replace(spec, weights="equal"), "f2_samples", task=TAGS)
    assert np.allclose(m.apply([tags, tags]), tags, atol=1e-6)


def test_one_split_stratifies_multilabel_rows_and_regression_values() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=300)
    part = split(values, 5, seed=0)
    assert sorted(np.bincount(part).tolist()) == [60] * 5
    for k in range(5):  # each part spans the range (binned values dealt out in turn)
        assert values[part == k].min() < -1 and values[part == k].max() > 1
    y = (rng.random((300, 4)) < [0.5, 0.3, 0.1, 0.05]).astype(float)
    part = split(y, 5, seed=0)
    rare = [int(y[part == k, 3].sum()) for k in range(5)]
    assert max(rare) - min(rare) <= 1
    crossed = cross_fit(rule("caruana", EnsembleSpec(), "rmse", VALUE), [values[:, None], values[:, None] * 0],
                        values, 5, 0)
    assert np.allclose(crossed[:, 0], values, atol=1e-5)


def test_merges_made_for_class_probabilities_are_refused_for_other_tasks() -> None:
    for settings, match in (({"combine": "rank"}, "ensemble.combine=rank merges class probabilities"),
                            ({"temperature": True}, "ensemble.temperature=true"),
                            ({"method": "geo_mean"}, "ensemble.method=geo_mean")):
        with pytest.raises(ConfigError, match=match):
            check_ensemble(EnsembleSpec(**settings), ["m1", "m2"], "rmse", VALUE)
    check_ensemble(EnsembleSpec(weights="caruana"), ["m1", "m2"], "rmse", VALUE)
    with pytest.raises(ConfigError, match="tta.reduce=geo_mean merges class probabilities"):
        check_task_options(TAGS, PredictOptions(view_reduce="geo_mean"))
    check_task_options(TAGS, PredictOptions(view_reduce="median"))
    with pytest.raises(ConfigError, match="tta.reduce=median is for multi-label"):
        check_task_options(Task("multiclass", ("a", "b")), PredictOptions(view_reduce="median"))


class _Manifest:
    def __init__(self, task: Task) -> None:
        self.task, self.classes, self.num_classes, self.output = task.to_dict(), list(task.columns), task.n_outputs, None


class _Member:
    def __init__(self, name: str, task: Task) -> None:
        self.name, self.path, self.manifest = name, Path(f"/sweep/{name}"), _Manifest(task)


def test_members_of_different_tasks_or_labels_are_not_merged() -> None:
    assert members_task([_Member("a", VALUE), _Member("b", VALUE)]) == VALUE  # type: ignore[list-item]
    for other in (TAGS, Task("regression", ("size",), 0.0, 12.0), Task("ordinal", ("size",), 4.0, 12.0)):
        with pytest.raises(MemberError, match="predict different things; one predict merges members of one task"):
            members_task([_Member("a", VALUE), _Member("b", other)])  # type: ignore[list-item]


def test_stacking_beyond_class_probabilities() -> None:
    rng = np.random.default_rng(2)
    y = rng.normal(8, 2, 300)
    biased, noisy = 0.5 * y + 1.0, y + rng.normal(0, 2.0, 300)  # a linear meta-model undoes the bias
    spec = EnsembleSpec(combine="stack", stack_c=100.0)
    stack = fit_combiner([biased[:, None], noisy[:, None]], y, spec, "rmse", task=VALUE)
    pred = stack.apply([biased[:, None], noisy[:, None]])[:, 0]
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.1 and stack.info["meta_model"].startswith("Ridge")
    tags = (rng.random((300, 3)) < 0.4).astype(float)
    sure = np.clip(tags * 0.6 + 0.2 + rng.normal(0, 0.05, (300, 3)), 0.01, 0.99)
    flat = np.full((300, 3), 0.5)
    ml = fit_combiner([sure, flat], tags, spec, "mean_auc", task=TAGS).apply([sure, flat])
    assert ml.shape == (300, 3) and ((ml > 0.5) == (tags > 0.5)).mean() > 0.95
    crossed = cross_fit(rule("stack", spec, "rmse", VALUE), [biased[:, None], noisy[:, None]], y, 5, 0)
    assert np.sqrt(np.mean((crossed[:, 0] - y) ** 2)) < 0.2  # honest too: a linear map needs few rows


def test_ensemble_auto_for_values_compares_merges_on_the_tasks_smooth_loss() -> None:
    from pipeline.predict.choose import choose_ensemble

    rng = np.random.default_rng(3)
    y = rng.normal(8, 2, 400)
    a, b = y + rng.normal(0, 1.0, 400), y + rng.normal(0, 1.0, 400)  # independent errors: the mean halves the MSE
    oof = {"a": a[:, None], "b": b[:, None]}
    spec = EnsembleSpec(combine="auto", candidates=["mean", "caruana", "stack"])
    combiner, record = choose_ensemble(oof, y, oof, spec, "rmse", task=VALUE)
    assert record["chosen"] in ("mean", "caruana", "stack") and "mse gain" in record["margin"]
    assert not combiner.normalize
    same = {"a": a[:, None], "b": a[:, None]}
    _, record = choose_ensemble(same, y, same, spec, "rmse", task=VALUE)
    assert any("identical" in note for note in record["notes"])  # said; a ridge may still shrink the one model


def test_a_time_budget_is_refused_for_other_tasks_naming_the_keys() -> None:
    from pipeline.predict.spec import check_budget

    with pytest.raises(ConfigError, match=r"budget.seconds / budget.per_1000: .* a regression task"):
        check_budget(600, None, 32, VALUE)
    check_budget(600, None, 32, Task("multiclass", ("a", "b")))  # class probabilities: planned as before
