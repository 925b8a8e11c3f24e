"""One owner for fitting on OOF rows (``pipeline/predict/fitting.py``): rules, the split, cross-fitting, margins.

The report must score exactly what predict submitted: the same rule, through the same function, on the same
split. These tests check it on real members (predict.json's recorded score equals the report's row) and on
constructed OOF rows (a stacked submission's row equals a recomputation written here from scikit-learn).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.core.metrics import get_metric
from pipeline.data.spec import DataSpec
from pipeline.predict.fitting import RULES, Margin, beats, cross_fit, rule, rule_name, split, submitted_rule
from pipeline.predict.record import PredictRecord
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.report.build import compute_report
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members
from tests.test_report import CLASSES, _labels, _probs, make_predict_dir


def test_split_is_stratified_seeded_and_covers_every_row() -> None:
    labels = np.repeat([0, 1, 2], [50, 30, 7])
    parts = split(labels, 5, seed=3)
    assert np.array_equal(parts, split(labels, 5, seed=3)) and not np.array_equal(parts, split(labels, 5, seed=4))
    for c in range(3):  # each class spread over the parts as evenly as its size allows
        counts = np.bincount(parts[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1
    with pytest.raises(ValueError, match="at least 2 parts"):
        split(labels, 1, seed=0)


@pytest.mark.parametrize("spec, name", [
    (EnsembleSpec(), "mean"), (EnsembleSpec(weights="caruana"), "caruana"),
    (EnsembleSpec(weights="caruana", bags=20), "bagged"), (EnsembleSpec(weights="optimize"), "optimize"),
    (EnsembleSpec(combine="stack"), "stack"), (EnsembleSpec(combine="rank"), "rank"),
    (EnsembleSpec(temperature=True), "temperature"), (EnsembleSpec(weights="caruana", temperature=True),
                                                      "caruana+temperature"),
])
def test_rule_names_round_trip_through_the_settings(spec: EnsembleSpec, name: str) -> None:
    assert rule_name(spec) == name == submitted_rule(spec, "accuracy").name
    base = name.split("+")[0]
    assert base in RULES and rule_name(rule(name, EnsembleSpec(), "accuracy").spec) == name


def test_cross_fit_never_lets_a_row_see_its_own_label() -> None:
    # A "model" that is right exactly where a lookup of the fitting rows says so: fitted on other rows it can
    # only be as good as chance, which is what cross-fitting must show.
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    noise = [rng.dirichlet([1.0, 1.0], 400) for _ in range(6)]
    caruana = rule("caruana", EnsembleSpec(caruana_rounds=30, fit_metric="accuracy"), "accuracy")
    acc = get_metric("accuracy")
    in_sample = acc(labels, caruana.fit(noise, labels).apply(noise))
    crossed = acc(labels, cross_fit(caruana, noise, labels, 5, 0))
    assert in_sample > crossed + 0.03 and abs(crossed - 0.5) < 0.07


def test_beats_needs_a_gain_beyond_noise() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 300)
    onehot = np.eye(2)[labels]
    base = np.clip(0.6 * onehot + 0.2 + rng.normal(0, 0.15, (300, 2)), 0.02, None)
    base /= base.sum(axis=1, keepdims=True)
    tiny = base.copy()
    tiny[0] = onehot[0] * 0.9 + 0.05  # one row better: strictly better, within noise
    assert beats(labels, tiny, base, "log_loss", Margin(level=None))[0]
    won, boot = beats(labels, tiny, base, "accuracy", Margin())
    assert not won and boot is not None and boot.low <= 0
    sharper = base ** 2 / (base ** 2).sum(axis=1, keepdims=True)
    assert beats(labels, sharper, base, "log_loss", Margin())[0]


def test_a_stacked_submission_row_equals_an_independent_recomputation(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(7)
    labels = _labels(seed=2, n=300)
    oof = {m: {"none": _probs(rng, labels, rng.random(300) < a), "ten_crop": _probs(rng, labels, rng.random(300) < a)}
           for m, a in (("resnet10t-s0", 0.75), ("lenet5-s0", 0.65))}
    ens = {"combine": "stack", "stack_c": 0.5, "cross_fit_parts": 4, "seed": 3, "fit_metric": "log_loss"}
    folder = make_predict_dir(tmp_path, oof, labels, ensemble=ens, images=False)
    df, summary, _ = compute_report(folder, n_boot=100)
    row = df[df["submitted"]].iloc[0]
    assert row["kind"] == "ensemble-stack" and row["policy"] == "ten_crop"
    # By hand: 4 stratified parts (seed 3), a logistic regression on the other parts' log-probabilities.
    feats = np.concatenate([np.log(np.maximum(oof[m]["ten_crop"], 1e-7)) for m in oof], axis=1)
    parts = split(labels, 4, seed=3)
    out = np.zeros((300, len(CLASSES)))
    for k in range(4):
        fit, held = parts != k, parts == k
        meta = LogisticRegression(C=0.5, max_iter=2000).fit(feats[fit], labels[fit])
        out[held] = meta.predict_proba(feats[held])
    assert row["accuracy"] == pytest.approx(get_metric("accuracy")(labels, out))
    assert row["log_loss"] == pytest.approx(get_metric("log_loss")(labels, out), abs=1e-4)
    assert summary["final_gain"]["row"] == row["row"]


@pytest.mark.slow
@pytest.mark.parametrize("ens", [EnsembleSpec(weights="caruana", caruana_rounds=10),
                                 EnsembleSpec(combine="stack", seed=2, cross_fit_parts=4)], ids=["caruana", "stack"])
def test_report_and_predict_json_give_the_same_cross_fitted_score(
    mixed_sweep: Path, demo_slice: Path, tmp_path: Path, ens: EnsembleSpec
) -> None:
    members = copy_members(mixed_sweep, tmp_path / "sw")
    out = tmp_path / "predict"
    spec = DataSpec(root=str(demo_slice), in_chans=1, solution=None)
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)
    submit(str(members), spec, [create_policy("none")], create_policy("hflip"), out, opts, ens, SubmissionOptions(),
           "accuracy")
    record = PredictRecord.read(out)  # written once, read back through its type
    assert record.rule == rule_name(ens) and record.cross_fitted is not None
    df, summary, _ = compute_report(out, n_boot=50)
    row = df[df["submitted"]].iloc[0]
    assert row["rule"] == record.rule and row["policy_key"] == record.submission_policy
    assert row["accuracy"] == pytest.approx(record.cross_fitted["score"], abs=1e-12)
    assert summary["submitted"]["cross_fitted"]["score"] == record.cross_fitted["score"]


@pytest.mark.parametrize("key", ["ensemble.margin", "tta.margin"])
@pytest.mark.parametrize("value", [0, 0.5, -0.1, 2, True, "0.05"])
def test_a_margin_outside_zero_to_a_half_is_refused_naming_its_key(key: str, value: object) -> None:
    from pipeline.core.errors import ConfigError
    from pipeline.predict.spec import check_margin

    with pytest.raises(ConfigError, match=rf"{key} must be null .* one-sided miss rate in \(0, 0.5\)"):
        check_margin(key, value)
    check_margin(key, None)
    check_margin(key, 0.05)
