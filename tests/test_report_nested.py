"""The report that can't fool itself: the nested ★ pick, relative error reduction, savings and the new plots.

Constructed OOF predictions only (no training): the answers are known by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.core.io import read_json, write_json
from pipeline.core.metrics import get_metric
from pipeline.report.build import build_report, compute_report
from pipeline.report.diagnostics import member_correlation, per_class_recall, place_labels, reliability_bins
from pipeline.report.load import load_predict_run
from pipeline.report.nested import nested_pick
from pipeline.report.text import relative_error_reduction, render_table
from tests.test_report import CLASSES, _labels, _probs, make_predict_dir, three_models

ACC = get_metric("accuracy")
NEW_PNGS = ("member_correlation.png", "per_class.png", "reliability.png")


def _sharp(p: np.ndarray) -> np.ndarray:
    """Confident rows: averaging such rows is close to a majority vote."""
    p = p ** 8
    return p / p.sum(axis=1, keepdims=True)


def _noisy_copies(rng: np.random.Generator, labels: np.ndarray, base: np.ndarray, n: int) -> list[np.ndarray]:
    """``n`` rows of pure noise around ``base``: each takes 30% of its rows (chosen at random) from one other
    prediction ``alt`` that is exactly as accurate as ``base`` (its right rows are ``base``'s, shuffled).

    Every copy, and every average of copies, is a per-row mixture of ``base`` and ``alt`` chosen without
    looking at the labels, so none is better than ``base`` in expectation; any gain is luck.
    """
    right = base.argmax(axis=1) == labels
    alt = _sharp(_probs(rng, labels, rng.permutation(right)))
    return [np.where((rng.random(len(labels)) < 0.3)[:, None], alt, base) for _ in range(n)]


def test_nested_pick_does_not_reward_noise() -> None:
    # Over 20 data sets of 30 noise rows around a baseline: the naive best always looks better than the
    # baseline (the winner's curse); the nested pick, scored on rows it never saw, is not, on average.
    rng = np.random.default_rng(0)
    naive, nested = [], []
    for _ in range(20):
        labels = rng.permutation(np.arange(300) % len(CLASSES))
        base = _sharp(_probs(rng, labels, rng.random(len(labels)) < 0.7))
        candidates = [base, *_noisy_copies(rng, labels, base, 30)]
        naive.append(max(ACC(labels, c) for c in candidates) - ACC(labels, base))
        pick = nested_pick(candidates, labels, ACC)
        nested.append(ACC(labels, pick.probs) - ACC(labels, base))
        assert len(pick.picks) == 5 and pick.votes == pick.picks.count(pick.chosen)
    assert min(naive) > 0 and np.mean(naive) > 0.02
    assert abs(np.mean(nested)) < 0.01 and np.mean(nested) < np.mean(naive) - 0.015


def test_nested_pick_finds_a_real_winner_and_prefers_the_earlier_on_ties() -> None:
    labels = np.array([0, 1, 2, 3] * 25)
    good, bad = np.eye(4)[labels], np.eye(4)[(labels + 1) % 4]
    pick = nested_pick([bad, good, good.copy()], labels, ACC)
    assert pick.chosen == 1 and pick.picks == [1] * 5
    np.testing.assert_array_equal(pick.probs, good)


def test_report_stars_the_nested_pick_and_labels_the_naive_one(tmp_path: Path) -> None:
    # Single realisations (the average behaviour is tested above): every model is the same baseline without
    # TTA and each model's 10-crop is noise around it, so the in-sample best row is a lucky one. The first
    # realisation whose nested pick is another row than the in-sample best exercises the labelling.
    for seed in range(20):
        rng = np.random.default_rng(9 + seed)
        labels = _labels(seed=3 + seed, n=300)
        base = _sharp(_probs(rng, labels, rng.random(len(labels)) < 0.7))
        oof = {f"m{i}-s0": {"none": base, "ten_crop": p} for i, p in enumerate(_noisy_copies(rng, labels, base, 12))}
        df, summary, _ = compute_report(make_predict_dir(tmp_path / str(seed), oof, labels, images=False), n_boot=300)
        naive, nested = summary["in_sample_best"], summary["nested_best"]
        assert naive["note"] == "in-sample, optimistic"
        assert df["best"].sum() == 1 and df["in_sample_best"].sum() == 1
        assert summary["best_row"] == nested["row"] == df.loc[df["best"], "row"].iloc[0]
        assert nested["score"] == pytest.approx(df.loc[df.attrs["baseline_index"], "accuracy"] + nested["diff"])
        assert "Chosen by a nested rule" in summary["paragraph"]
        if naive["row"] != nested["row"]:
            break
    else:
        pytest.fail("in 20 noise realisations the nested pick was always the in-sample best row")
    assert naive["diff"] > 0 and nested["diff"] < naive["diff"] and nested["verdict"] != "helped"  # held out: no luck
    assert "in-sample, optimistic" in summary["paragraph"]
    assert f"| best (in-sample, optimistic) | {naive['row']} |" in render_table(df)


def test_relative_error_reduction_reads_the_metric_direction() -> None:
    gib = relative_error_reduction(0.02, -0.01, 0.04, 0.8, True)
    assert gib == pytest.approx({"rer": 0.1, "low": -0.05, "high": 0.2})
    loss = relative_error_reduction(-0.1, -0.2, 0.05, 0.5, False)  # log loss 0.5 → 0.4: 20% less
    assert loss == pytest.approx({"rer": 0.2, "low": -0.1, "high": 0.4})
    assert relative_error_reduction(0.0, 0.0, 0.0, 1.0, True) is None


def test_summary_gains_carry_relative_error_reduction(tmp_path: Path) -> None:
    labels = _labels()
    out = make_predict_dir(tmp_path, three_models(np.random.default_rng(1), labels), labels, images=False)
    _, summary, _ = compute_report(out, n_boot=200)
    ens = summary["ensemble_gain"]
    rer = ens["relative_error_reduction"]
    assert rer["rer"] == pytest.approx(ens["diff"] / (1 - summary["baseline"]["score"]))
    assert f"a relative error reduction of {100 * rer['rer']:+.1f}%" in summary["paragraph"]
    assert f"(seconds per 1,000 images; {ens['passes']} vs 1 passes per image)" in summary["paragraph"]


# --------------------------------------------------------------------------- savings and D's keys


def test_flips_that_hurt_are_said_plainly_and_a_noise_member_is_free_to_drop(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    labels = _labels()
    a_right = rng.random(len(labels)) < 0.8
    a_none = _probs(rng, labels, a_right)
    a_flip = _probs(rng, labels, a_right & (rng.random(len(labels)) < 0.85))  # mirroring breaks 15% of hits
    b_right = rng.random(len(labels)) < 0.8
    b = _probs(rng, labels, b_right)
    noise = np.full((len(labels), len(CLASSES)), 1 / len(CLASSES)) + rng.normal(0, 1e-3, (len(labels), 4))
    noise /= noise.sum(axis=1, keepdims=True)
    oof = {"digit-s0": {"none": a_none, "hflip": a_flip}, "other-s0": {"none": b, "hflip": b},
           "noise-s0": {"none": noise, "hflip": noise}}
    out = make_predict_dir(tmp_path, oof, labels, images=False)
    _, summary, _ = compute_report(out, n_boot=500)
    flips = {f["model"]: f for f in summary["savings"]["flips"]}
    hurt = flips["digit-s0"]
    assert hurt["worse"] and hurt["diff"] == pytest.approx(ACC(labels, a_flip) - ACC(labels, a_none))
    assert hurt["sentence"].startswith(f"Horizontal flips hurt digit-s0 by {100 * hurt['diff']:+.1f} points")
    assert hurt["sentence"] in summary["paragraph"]
    assert not flips["other-s0"]["worse"] and "within noise" in flips["other-s0"]["sentence"]
    redundant = {(r["model"], r["policy"]) for r in summary["savings"]["redundant_policies"]}
    assert ("other-s0", "hflip") in redundant and ("digit-s0", "hflip") in redundant
    dropped = {d["model"]: d for d in summary["savings"]["droppable"]["models"]}
    assert dropped["noise-s0"]["free"]
    assert "Free to drop from" in summary["paragraph"] and "noise-s0" in summary["paragraph"]


def test_choices_recorded_by_predict_are_listed(tmp_path: Path) -> None:
    labels = _labels()
    out = make_predict_dir(tmp_path, three_models(np.random.default_rng(5), labels), labels, images=False)
    info = read_json(out / "predict.json")
    tta_choice = {m: {"chosen": "none", "scores": {"none": 0.7, "ten_crop": 0.7}, "reason": "cheapest of the ties"}
                  for m in info["models"]}
    ensemble_choice = {"chosen": "single", "reason": "no method beat the best single model", "scores": {}}
    write_json(out / "predict.json", {**info, "tta_choice": tta_choice, "ensemble_choice": ensemble_choice})
    build_report(out, n_boot=50)
    md = (out / "report.md").read_text()
    assert "## TTA per model" in md
    assert all(f"- `{m}`: tta=auto chose **none**: cheapest of the ties" in md for m in info["models"])
    assert "ensemble=auto chose single (no method beat the best single model)." in md


# --------------------------------------------------------------------------- plots


def test_correlation_matrix_is_corrcoef_of_true_class_probabilities(tmp_path: Path) -> None:
    labels = _labels()
    oof = three_models(np.random.default_rng(6), labels)
    pr = load_predict_run(make_predict_dir(tmp_path, oof, labels, images=False))
    key = next(k for k, p in pr.policies.items() if p["name"] == "none")
    models, matrix = member_correlation(pr, key)
    rows = np.arange(len(labels))
    expected = np.corrcoef([oof[m]["none"][rows, labels] for m in models])
    np.testing.assert_allclose(matrix, expected, rtol=1e-6)
    assert models == list(oof) and matrix.shape == (3, 3)


def test_per_class_recall_and_reliability_on_a_hand_example() -> None:
    labels = np.array([0, 0, 1, 1, 2])
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1], [0.05, 0.95, 0.0], [0.6, 0.3, 0.1]])
    np.testing.assert_allclose(per_class_recall(labels, probs, 4), [0.5, 1.0, 0.0, np.nan])
    bins = reliability_bins(labels, probs, n_bins=2)  # confidences .9 .7 .6 .95 .6 → all in the upper bin
    np.testing.assert_array_equal(bins["count"], [0, 5])
    assert bins["accuracy"][1] == pytest.approx(3 / 5)
    assert bins["confidence"][1] == pytest.approx(np.mean([0.9, 0.7, 0.6, 0.95, 0.6]))
    assert bins["ece"] == pytest.approx(abs(0.6 - np.mean([0.9, 0.7, 0.6, 0.95, 0.6])))


def test_labels_never_overlap_even_for_coinciding_points() -> None:
    anchors = np.array([[10.0, 10.0]] * 6 + [[12.0, 11.0], [200.0, 10.0]])
    widths = [50.0] * len(anchors)
    spots = place_labels(anchors, widths, height=9.0)
    for i in range(len(spots)):
        for j in range(i + 1, len(spots)):
            (xi, yi), (xj, yj) = spots[i], spots[j]
            apart = xi + widths[i] <= xj or xj + widths[j] <= xi or yi + 9 <= yj or yj + 9 <= yi
            assert apart, (i, j, spots[i], spots[j])
    assert spots[-1][1] == pytest.approx(10 - 4.5)  # a lone point keeps its label beside it


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    labels = _labels()
    out = make_predict_dir(tmp_path_factory.mktemp("plots"), three_models(np.random.default_rng(7), labels), labels,
                           images=False)
    build_report(out, n_boot=50)
    return out


@pytest.mark.parametrize("name", NEW_PNGS)
def test_new_plots_are_real_pngs(built: Path, name: str) -> None:
    assert f"]({name})" in (built / "report.md").read_text()
    with Image.open(built / name) as img:
        img.verify()
    with Image.open(built / name) as img:
        assert img.format == "PNG" and min(img.size) > 200
        assert len(np.unique(np.asarray(img.convert("RGB")).reshape(-1, 3), axis=0)) > 10


def test_a_tta_auto_submission_with_mixed_policies_is_a_row_of_the_report(tmp_path: Path) -> None:
    """tta=auto gave each model its own policy: the report scores that mix (its policy key is ``auto``), costs it
    per model, and the paragraph says what the submission bought."""

    rng = np.random.default_rng(5)
    labels = _labels(seed=4, n=300)
    oof = {m: {"none": _probs(rng, labels, rng.random(len(labels)) < acc),
               "hflip": _probs(rng, labels, rng.random(len(labels)) < acc + 0.05)}
           for m, acc in (("resnet10t-s0", 0.7), ("lenet5-s0", 0.6))}
    out = make_predict_dir(tmp_path, oof, labels, images=False)
    info = read_json(out / "predict.json")
    keys = {p["name"]: k for k, p in info["policies"].items()}
    info["submission_policy"] = "auto"
    info["submitted"] = {"models": {"resnet10t-s0": keys["hflip"], "lenet5-s0": keys["none"]},
                         "combine": {"kind": "weighted", "weights": "caruana"}}
    info["weights"]["auto"] = {"resnet10t-s0": 0.75, "lenet5-s0": 0.25}
    info["rule"] = "caruana"  # what predict records for the submitted merge
    write_json(out / "predict.json", info)
    df, summary, _ = compute_report(out, n_boot=200)
    mixed = df[df["policy_key"] == "auto"].set_index("kind")
    assert {"ensemble-equal", "ensemble-fitted", "ensemble-stack"} <= set(mixed.index)
    assert bool(mixed.loc["ensemble-fitted", "submitted"])
    assert int(mixed.loc["ensemble-equal", "forward_passes_per_image"]) == 2 + 1  # hflip for one model, none for the other
    equal = (oof["resnet10t-s0"]["hflip"] + oof["lenet5-s0"]["none"]) / 2
    assert mixed.loc["ensemble-equal", "accuracy"] == pytest.approx(float((equal.argmax(1) == labels).mean()))
    assert summary["final_gain"]["row"] == mixed.loc["ensemble-fitted", "row"]  # Caruana was submitted
    assert "The submission (ensemble-fitted / tta=auto" in summary["paragraph"]
