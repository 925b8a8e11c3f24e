"""Inference within a time budget (pipeline/predict/budget.py, timed.py): the plan, its record, its errors, the kit."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.errors import ConfigError
from pipeline.core.metrics import get_metric
from pipeline.data.spec import DataSpec
from pipeline.member.predictions import read_predictions
from pipeline.predict.budget import choose_plan, costs_of, within
from pipeline.predict.fitting import Margin, cross_fit, submitted_rule
from pipeline.predict.spec import BudgetSpec, EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members

CARUANA = EnsembleSpec(weights="caruana", caruana_rounds=10, margin=None)  # no margin: the best score wins
ROOT = Path(__file__).resolve().parents[1]


def _synthetic(seed: int = 0) -> tuple[dict, np.ndarray, dict]:
    """Three models × three policies of OOF probabilities (more views: a little better) and their costs."""
    rng = np.random.default_rng(seed)
    n, k = 240, 4
    labels = rng.integers(0, k, n)
    oof, costs = {}, {}
    for g, (skill, speed) in {"a": (1.6, 9.0), "b": (1.3, 4.0), "c": (1.0, 1.5)}.items():
        base = rng.normal(size=(n, k))
        for key, (gain, views) in {"none.1": (0.0, 1), "hflip.2": (0.25, 2), "ten_crop.3": (0.4, 10)}.items():
            logits = base + 0.5 * rng.normal(size=(n, k))
            logits[np.arange(n), labels] += skill + gain
            p = np.exp(logits)
            oof.setdefault(g, {})[key] = (p / p.sum(1, keepdims=True)).astype(np.float32)
            costs.setdefault(g, {})[key] = speed * views
    return oof, labels, costs


def _brute_force(oof: dict, labels: np.ndarray, costs: dict, limit: float, ens: EnsembleSpec) -> tuple[float, float]:
    """Every subset of models × policy per model, scored independently: (best score among those that fit, its cost)."""
    m, rule = get_metric("accuracy"), submitted_rule(ens, "accuracy")
    best = (-1.0, 0.0)
    for combo in itertools.product(*[[None, *per] for per in oof.values()]):
        plan = {g: k for g, k in zip(oof, combo) if k is not None}
        cost = sum(costs[g][k] for g, k in plan.items())
        if plan and cost <= limit:
            crossed = cross_fit(rule, [oof[g][k] for g, k in plan.items()], labels, ens.cross_fit_parts, ens.seed)
            best = max(best, (float(m(labels, crossed)), -cost))
    return best[0], -best[1]


@pytest.mark.parametrize("limit", [12.0, 30.0, 60.0])
def test_plan_is_the_best_cross_fitted_plan_that_fits_by_brute_force(limit: float) -> None:
    oof, labels, costs = _synthetic()
    full = sum(c["ten_crop.3"] for c in costs.values())
    assert limit < full  # the budget binds: the full plan does not fit
    plan, record = choose_plan(oof, labels, costs, limit, CARUANA, "accuracy", Margin(level=None), {})
    spent = sum(costs[g][k] for g, k in plan.items())
    best, _ = _brute_force(oof, labels, costs, limit, CARUANA)
    assert spent <= limit and record["cost_seconds"] == pytest.approx(spent)
    assert record["score"] == pytest.approx(best)
    assert record["plans_scored"] == 4 ** 3 - 1 and record["plans_compared"] < record["plans_scored"]
    assert [f["cost_seconds"] for f in record["frontier"]] == sorted(f["cost_seconds"] for f in record["frontier"])


def test_with_a_margin_the_plan_fits_and_never_scores_below_its_baseline() -> None:
    oof, labels, costs = _synthetic(1)
    plan, record = choose_plan(oof, labels, costs, 30.0, CARUANA, "accuracy", Margin(level=0.05), {})
    assert sum(costs[g][k] for g, k in plan.items()) <= 30.0
    m = get_metric("accuracy")
    base = max(float(m(labels, oof[g]["none.1"])) for g in oof)  # the best single model without TTA fits
    assert record["score"] >= base and "beyond noise" in record["reason"]


def test_a_timing_from_another_device_is_an_estimate_and_says_from_what() -> None:
    timing = {"a": {"none.1": {"seconds_per_1000": 2.0, "measured_on": "oof", "device": "cuda:0"}},
              "b": {"none.1": {"seconds_per_1000": 4.0, "measured_on": "oof", "device": "cpu"}}}
    costs, source, stale = costs_of(timing, 500, "cpu")
    assert costs == {"a": {"none.1": 1.0}, "b": {"none.1": 2.0}} and stale == [("a", "none.1")]
    assert source["a"]["none.1"] == "estimated from OOF timings measured on cuda:0, not cpu"
    assert source["b"]["none.1"] == "measured on cpu (OOF rows)"
    oof, labels, _ = _synthetic()
    priced = {"costs": costs, "source": source, "limit": 5.0, "n_test": 500, "setting": "budget.seconds=5"}
    one = {g: {"none.1": oof[g]["none.1"]} for g in ("a", "b")}
    _, record = within(priced, {"a": "none.1", "b": "none.1"}, one, labels, CARUANA, "accuracy", Margin(), {})
    assert record["configured"]["fits"] and record["estimated"]
    assert record["estimated_from"] == ["estimated from OOF timings measured on cuda:0, not cpu"]


@pytest.mark.parametrize("value", [0, -5, float("nan")])
def test_zero_negative_or_nan_budget_is_refused_by_the_config_validation(value: float) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.validate import validate

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="predict", overrides=[f"budget.per_1000={value}", "logger=none"])
    GlobalHydra.instance().clear()
    with pytest.raises(ConfigError, match=r"budget.per_1000=.*: a time budget must be a positive number of seconds"):
        validate(cfg, "predict")


# ----------------------------------------------------------------------------- end to end, tiny real members


def _submit(members: Path, comp: Path, out: Path, budget: BudgetSpec | None, auto: bool = False) -> dict:
    spec = DataSpec(root=str(comp), in_chans=1, solution="solution.csv")
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)
    policies = [create_policy("none"), create_policy("hflip")]
    return submit(str(members), spec, policies, create_policy("ten_crop"), out, opts, CARUANA, SubmissionOptions(),
                  "accuracy", [*policies, create_policy("ten_crop")] if auto else (), budget=budget)


@pytest.fixture(scope="module")
def budgeted(mixed_sweep: Path, demo_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run with an ample budget (the configured plan fits), then one whose budget fits only part of it."""
    root = tmp_path_factory.mktemp("budget")
    members = copy_members(mixed_sweep, root / "sw")
    ample = _submit(members, demo_slice, root / "ample", BudgetSpec(seconds=1e9))
    costs = {g: {k: v["seconds"] for k, v in per.items()} for g, per in ample["budget"]["costs"].items()}
    cheapest = min(c for per in costs.values() for c in per.values())
    limit = (cheapest + ample["budget"]["configured"]["cost_seconds"]) / 2
    n = ample["budget"]["n_test"]  # the OOF timings are cached with the predictions: the second run prices alike
    tight = _submit(members, demo_slice, root / "tight", BudgetSpec(per_1000=limit * 1000 / n))
    return {"members": members, "comp": demo_slice, "root": root, "ample": ample, "tight": tight, "limit": limit}


def test_an_ample_budget_keeps_the_configured_submission(budgeted: dict) -> None:
    record = budgeted["ample"]["budget"]
    assert record["configured"]["fits"] and record["left_out"] == [] and not record["estimated"]
    assert record["reason"].startswith("the configured plan fits")
    assert all(s["source"] == "measured on cpu (OOF rows)" for per in record["costs"].values() for s in per.values())


def test_a_budget_that_fits_part_gives_the_best_cross_fitted_plan_that_fits(budgeted: dict) -> None:
    tight, limit, out = budgeted["tight"], budgeted["limit"], budgeted["root"] / "tight"
    record = tight["budget"]
    assert not record["configured"]["fits"] and record["left_out"]
    assert record["submitted_cost_seconds"] <= limit * (1 + 1e-9)
    names = {v: k for k, v in tight["policy_names"].items()}
    costs = {g: {names[p]: v["seconds"] for p, v in per.items() if names[p] in tight["policies"]}
             for g, per in record["costs"].items()}
    oof, labels = {}, None
    for g, per in costs.items():
        for key in per:
            _, probs, labels = read_predictions(out / "oof" / f"{g}__{key}.csv", tight["classes"])
            oof.setdefault(g, {})[key] = probs
    best, _ = _brute_force(oof, np.asarray(labels), costs, limit, CARUANA)
    assert record["score"] == pytest.approx(best)
    # Only the plan is predicted on the test set.
    assert sorted(p.name for p in (out / "test").iterdir()) == sorted(f"{g}__{k}.csv" for g, k in record["keys"].items())
    assert tight["submitted"]["models"] == record["keys"]


def test_tta_auto_respects_the_budget(budgeted: dict) -> None:
    costs = budgeted["ample"]["budget"]["costs"]
    limit = 1.01 * min(c["seconds"] for per in costs.values() for c in per.values())  # one model fits, never two
    out = budgeted["root"] / "auto"
    summary = _submit(budgeted["members"], budgeted["comp"], out, BudgetSpec(seconds=limit), auto=True)
    record = summary["budget"]
    assert summary["tta_choice"] is not None and not record["configured"]["fits"]
    assert len(record["keys"]) == 1 and record["submitted_cost_seconds"] <= limit
    assert sorted(p.name for p in (out / "test").iterdir()) == [f"{g}__{k}.csv" for g, k in record["keys"].items()]


def test_a_budget_below_the_cheapest_plan_fails_before_anything_is_written(budgeted: dict) -> None:
    out = budgeted["root"] / "too-small"
    with pytest.raises(ConfigError, match=r"budget.seconds=1e-06: no plan fits in 1e-06 s; the cheapest plan, model "
                                          r"\S+ under \S+ alone, costs .* s on the test set \(measured on cpu"):
        _submit(budgeted["members"], budgeted["comp"], out, BudgetSpec(seconds=1e-6))
    assert not out.exists() or not any(out.iterdir())


def test_timings_from_another_device_are_estimates_or_timed_here(budgeted: dict, tmp_path: Path) -> None:
    members = tmp_path / "sw"
    shutil.copytree(budgeted["members"], members)
    sides = list(members.glob("*/predictions/val-*.json"))
    assert sides
    for side in sides:  # as if the OOF predictions had been made on a GPU
        side.write_text(json.dumps({**json.loads(side.read_text()), "device": "cuda:0"}))
    est = _submit(members, budgeted["comp"], tmp_path / "est", BudgetSpec(seconds=1e9, probe_images=0))["budget"]
    assert est["estimated"] and est["estimated_from"] == ["estimated from OOF timings measured on cuda:0, not cpu"]
    timed = _submit(members, budgeted["comp"], tmp_path / "timed", BudgetSpec(seconds=1e9, probe_images=8))["budget"]
    assert {s["source"] for per in timed["costs"].values() for s in per.values()} == {
        "measured on cpu (a quick timing on 8 test images)"}
    assert not timed["estimated"] and not list(members.rglob("*probe*"))  # the timing wrote nothing beside them


# ----------------------------------------------------------------------------- the kit


@pytest.fixture(scope="module")
def kit(budgeted: dict) -> Path:
    """A kit of the tight run, with a stand-in wheel of the installed version (predict.py then installs nothing)."""
    from importlib import metadata

    from pipeline.predict.kit import build_kit

    wheel = budgeted["root"] / f"pipeline-{metadata.version('pipeline')}-py3-none-any.whl"
    wheel.write_bytes(b"stand-in")
    return build_kit(str(budgeted["members"]), budgeted["root"] / "kit", budgeted["root"] / "tight", wheel=wheel)


def _kit(kit: Path, comp: Path, out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(kit / "predict.py"), "--images", str(comp / "test"), "--out", str(out),
                           "--device", "cpu", "--num-workers", "0", "--probe-images", "8", *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=out.parent)


def test_kit_time_budget_prints_the_plan_and_refuses_a_budget_below_the_cheapest(budgeted: dict, kit: Path) -> None:
    out = budgeted["root"] / "kit-sub.csv"
    ample = _kit(kit, budgeted["comp"], out, "--time-budget", "100000")
    assert ample.returncode == 0, ample.stderr[-2000:]
    assert "Time budget 100000 s: the submission:" in ample.stdout and out.is_file()
    small = _kit(kit, budgeted["comp"], budgeted["root"] / "none.csv", "--time-budget", "0.000001")
    assert small.returncode != 0
    assert "--time-budget 1e-06: no plan fits; the cheapest, model" in small.stderr and "alone, costs" in small.stderr
    assert not (budgeted["root"] / "none.csv").exists()


def test_kit_keeps_the_best_recorded_plan_that_fits_measured_costs(budgeted: dict, kit: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.predict.timed as timed
    from pipeline.member.export import read_ensemble
    from pipeline.predict.api import predict_images

    ens = read_ensemble(kit / "members")
    frontier = ens["budget"]["frontier"]
    cheap = frontier[0]  # the cheapest recorded plan; make every other model × policy cost 1,000 s per 1,000 images
    monkeypatch.setattr(timed, "probe_timings", lambda models, table, wanted, *a: {
        gk: (1.0 if cheap["keys"].get(gk[0]) == gk[1] else 1000.0) for gk in wanted})
    key = ens["submission_policy"]
    spec = {f: v for f, v in ens["policies"].get(key, ens.get("submission_policy_spec") or {}).items() if f != "views"}
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=16)
    pred, text = timed.predict_within(kit / "members", budgeted["comp"] / "test", ens, key, create_policy(**spec),
                                      ens["weights"].get(key), 10.0, opts)
    assert "recorded plan" in text and len(cheap["keys"]) == 1
    (g, k), = cheap["keys"].items()
    pspec = {f: v for f, v in ens["policies"][k].items() if f != "views"}
    alone = predict_images([p for p in (kit / "members").iterdir() if p.name.startswith(g)], budgeted["comp"] / "test",
                           create_policy(**pspec), options=opts)
    np.testing.assert_allclose(pred.probs, alone.probs, atol=1e-6)
