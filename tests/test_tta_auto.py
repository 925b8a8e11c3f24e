"""tta=auto on a task where mirroring changes the label: a real member must not be given a horizontal flip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.metrics import get_metric
from pipeline.data.spec import DataSpec
from pipeline.predict.choose import candidate_policies
from pipeline.predict.fitting import Margin
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.helpers import train

CANDIDATES = [{"name": "none"}, {"name": "hflip"}, {"name": "vflip"}, {"name": "five_crop"},
              {"name": "ten_crop", "flip": "horizontal"}, {"name": "ten_crop", "flip": "vertical"}]


def write_left_right(root: Path, per_class: int = 80, n_test: int = 20, size: int = 32) -> Path:
    """Class ``left``: the left half is bright; ``right``: the right half. A left-right mirror swaps the labels."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for label in ("left", "right"):
        for k in range(per_class):
            pixels = rng.integers(0, 60, (size, size))
            half = slice(0, size // 2) if label == "left" else slice(size // 2, size)
            pixels[:, half] += 120
            Image.fromarray(pixels.astype(np.uint8), "L").save(root / "train" / f"{label}{k:03d}.png")
            rows.append((f"{label}{k:03d}", label))
    pd.DataFrame(rows, columns=["id", "label"]).to_csv(root / "train.csv", index=False)
    ids = [f"te{k:03d}" for k in range(n_test)]
    for k, image_id in enumerate(ids):
        pixels = rng.integers(0, 60, (size, size))
        (pixels[:, : size // 2] if k % 2 else pixels[:, size // 2 :])[...] += 120  # odd: left, even: right
        Image.fromarray(pixels.astype(np.uint8), "L").save(root / "test" / f"{image_id}.png")
    pd.DataFrame({"id": ids, "label": "left"}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.fixture(scope="module")
def left_right(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The competition and one real LeNet-5 member trained on it (holdout of 40 rows, no flip augmentation)."""
    from omegaconf import open_dict

    from tests.conftest import compose_train

    root = tmp_path_factory.mktemp("leftright")
    comp = write_left_right(root / "comp")
    cfg = compose_train([
        "trainer=cpu", "logger=none", "model=lenet5", "aug=none", f"data.root={comp}", "data.solution=null",
        "data.holdout_fraction=0.25", "trainer.max_epochs=6", "trainer.enable_progress_bar=false",
        "data.num_workers=0", "data.batch_size=16", f"paths.root={root}",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
    train(cfg)
    return comp, root / "sw"


def _run(comp: Path, sweep: Path, out: Path, max_passes: int | None = None, ens: EnsembleSpec | None = None) -> dict:
    spec = DataSpec(root=str(comp), in_chans=1, solution=None)
    opts = PredictOptions(device="cpu", batch_size=32, num_workers=0)
    return submit(str(sweep), spec, [], create_policy("none"), out, opts, ens or EnsembleSpec(), SubmissionOptions(),
                  "accuracy", candidate_policies(CANDIDATES), max_passes)


@pytest.mark.slow
def test_tta_auto_never_mirrors_left_right_where_that_swaps_the_label(left_right: tuple[Path, Path]) -> None:
    comp, sweep = left_right
    summary = _run(comp, sweep, sweep / "predict")
    (model,) = summary["models"]
    choice = summary["tta_choice"][model]
    policies, names = summary["policies"], summary["policy_names"]
    scores = choice["scores"]  # by readable name: no file-key hash in what the user reads
    assert set(scores) == {names[k] for k in policies}  # every candidate was scored on the OOF rows
    assert not any("." in name for name in scores)
    by_name = {(p["name"], p["flip"] if p["name"] == "ten_crop" else None): names[k] for k, p in policies.items()}
    none, hflip = by_name[("none", None)], by_name[("hflip", None)]
    assert scores[none] > 0.9  # the member learned the task...
    assert scores[hflip] < scores[none] - 0.2  # ...and mirrored views destroy it
    assert not choice["gains"][hflip]["beats_baseline"]
    chosen = policies[choice["key"]]
    assert names[choice["key"]] == choice["chosen"]
    assert chosen["name"] != "hflip" and not (chosen["name"] == "ten_crop" and chosen["flip"] == "horizontal")
    assert any(s.startswith(f"Horizontal flips hurt model {model} by −") for s in choice["harms"])
    assert not any(s.startswith("Vertical") for s in choice["harms"]) or scores[by_name[("vflip", None)]] < scores[none]
    # The test set is predicted under the chosen policy only, and the submission comes from it.
    assert summary["test_policies"] == [choice["key"]]
    assert summary["submission_policy"] == choice["key"]
    assert (sweep / "predict" / "test" / f"{model}__{choice['key']}.csv").is_file()
    assert read_json(sweep / "predict" / "predict.json")["tta_choice"] == summary["tta_choice"]
    sub = pd.read_csv(sweep / "predict" / "submission.csv")
    assert (sub["label"] == np.where(np.arange(len(sub)) % 2, "left", "right")).mean() > 0.9


@pytest.mark.slow
def test_tta_auto_respects_the_pass_budget(left_right: tuple[Path, Path], tmp_path: Path) -> None:
    comp, sweep = left_right
    summary = _run(comp, sweep, tmp_path / "predict", max_passes=1)
    (choice,) = summary["tta_choice"].values()
    assert choice["views"] == 1 and summary["policies"][choice["key"]]["name"] == "none"
    assert "over the budget of 1 passes" in choice["reason"]
    with pytest.raises(ConfigError, match=r"tta.max_passes=0: no candidate policy fits"):
        _run(comp, sweep, tmp_path / "again", max_passes=0)


@pytest.mark.slow
def test_ensemble_auto_submits_the_single_model_with_one_view_when_nothing_beats_it(
    left_right: tuple[Path, Path], tmp_path: Path
) -> None:
    from pipeline.member.predictions import read_predictions

    comp, sweep = left_right
    # One model whose policy is forced to `none`: its mean is the single model itself, a tie, so nothing beats it.
    summary = _run(comp, sweep, tmp_path / "predict", max_passes=1, ens=EnsembleSpec(combine="auto"))
    choice = summary["ensemble_choice"]
    (model,) = summary["models"]
    assert choice["chosen"] == "single" and set(choice["scores"]) == {"single"}
    assert f"the best single model {model}, without TTA, one view, is submitted" in choice["reason"]
    assert "one model: nothing to merge" in choice["notes"] and "one model: nothing to merge" in choice["reason"]
    none_key = summary["submission_policy"]
    assert summary["policies"][none_key]["name"] == "none" and summary["submitted"]["models"] == {model: none_key}
    assert summary["weights"][none_key] == {model: 1.0}
    classes = summary["classes"]
    _, single, _ = read_predictions(tmp_path / "predict" / "test" / f"{model}__{none_key}.csv", classes)
    _, submitted, _ = read_predictions(tmp_path / "predict" / "ensemble_test.csv", classes)
    np.testing.assert_allclose(submitted, single, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("ens", [EnsembleSpec(combine="stack", temperature=True), EnsembleSpec(combine="rank"),
                                 EnsembleSpec(weights="optimize", temperature=True)], ids=["stack+T", "rank", "optimize+T"])
def test_fitted_merges_run_in_the_stage_and_record_an_honest_score(
    left_right: tuple[Path, Path], tmp_path: Path, ens: EnsembleSpec
) -> None:
    from pipeline.member.predictions import read_predictions

    comp, sweep = left_right
    summary = _run(comp, sweep, tmp_path / "predict", max_passes=1, ens=ens)
    fit = summary["submitted"]["combine"]
    assert fit["kind"] == ens.combine
    if ens.temperature:
        (t,) = fit["temperatures"]
        assert t > 0
    crossed = summary["cross_fitted"]
    assert crossed["metric"] == "accuracy" and crossed["rule"] == summary["rule"]
    assert 0.9 <= crossed["score"] <= 1.0  # out of sample, on a task the member solved
    _, probs, _ = read_predictions(tmp_path / "predict" / "ensemble_test.csv", summary["classes"])
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert (probs.argmax(axis=1) == 1 - np.arange(len(probs)) % 2).mean() > 0.9  # classes: left=0, right=1


@pytest.mark.slow
def test_pipeline_predict_config_runs_tta_auto_and_ensemble_auto(left_right: tuple[Path, Path], tmp_path: Path) -> None:
    """The composed ``pipeline-predict`` config (tta=auto, ensemble=auto) through the CLI's own ``run``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from pipeline.cli import CONF_DIR
    from pipeline.cli.predict import run

    comp, sweep = left_right
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="predict", overrides=[
                "tta=auto", "tta.max_passes=5", "ensemble=auto", "logger=none", f"paths.root={tmp_path}",
                f"data.root={comp}", "data.solution=null", f"members={sweep}", f"predict_dir={tmp_path / 'predict'}",
                "device=cpu", "num_workers=0", "batch_size=32", "policies=[none]"])
    finally:
        GlobalHydra.instance().clear()
    summary = run(cfg)
    (choice,) = summary["tta_choice"].values()
    assert choice["views"] <= 5 and summary["policies"][choice["key"]]["name"] in ("none", "vflip", "five_crop")
    assert summary["ensemble_choice"]["chosen"] in ("single", "single+tta")
    assert Path(summary["submission"]).is_file()


def test_bad_candidates_name_the_entry() -> None:
    with pytest.raises(ConfigError, match=r"tta.candidates\[1\].*hflip always mirrors left-right"):
        candidate_policies([{"name": "none"}, {"name": "hflip", "flip": "vertical"}])
    with pytest.raises(ConfigError, match=r"tta.candidates\[0\].*Unknown tta.name 'flip'"):
        candidate_policies(["flip"])
    with pytest.raises(ConfigError, match="needs tta.candidates"):
        candidate_policies([])


def _two_class_oof() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """300 OOF rows of two classes: labels, one-hot, a weak model's probabilities, and the same rows made more or
    less sure in turn (the argmax unchanged: how another view or another model moves rows both ways)."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 150)
    onehot = np.eye(2)[labels]
    base = np.clip(0.3 * onehot + 0.35 + rng.normal(0, 0.15, (300, 2)), 0.02, None)
    base /= base.sum(axis=1, keepdims=True)
    moved = np.exp(np.log(base) * np.where(np.arange(300) % 2, 0.6, 1.4)[:, None])
    return labels, onehot, base, moved / moved.sum(axis=1, keepdims=True)


def test_policy_rule_leaves_none_only_for_a_gain_beyond_noise_and_then_takes_the_best() -> None:
    from pipeline.predict.choose import choose_policies

    acc = get_metric("accuracy")
    # "hflip": other views make each row more or less sure, and three wrong rows happen to come out right:
    # +1 point of accuracy, by luck.
    labels, onehot, base, lucky = _two_class_oof()
    wrong = np.flatnonzero(lucky.argmax(axis=1) != labels)[:3]
    lucky[wrong] = onehot[wrong] * 0.7 + 0.15
    # "ten_crop": every row a little surer, and a third of the wrong rows come out right.
    sharper = base ** 1.6 / (base ** 1.6).sum(axis=1, keepdims=True)
    fixed = np.flatnonzero(base.argmax(axis=1) != labels)[::3]
    sharper[fixed] = onehot[fixed] * 0.6 + 0.2
    policies = {"n": {"name": "none", "views": 1}, "h": {"name": "hflip", "views": 2},
                "t": {"name": "ten_crop", "flip": "horizontal", "views": 10}}
    oof = {"m": {"n": (labels, base), "h": (labels, lucky), "t": (labels, sharper)}}
    assert acc(labels, lucky) == pytest.approx(acc(labels, base) + 0.01)
    out = choose_policies(oof, policies, "accuracy")["m"]
    assert not out["gains"]["hflip"]["beats_baseline"]  # 3 lucky rows of 300: within noise
    assert out["gains"]["ten_crop"]["beats_baseline"]
    assert out["chosen"] == "ten_crop" and out["key"] == "t"  # the best that passed, although the dearest
    # Without ten_crop nothing beats none, and the cheapest is kept...
    two = {k: policies[k] for k in "nh"}
    out = choose_policies({"m": {k: oof["m"][k] for k in "nh"}}, two, "accuracy")["m"]
    assert out["chosen"] == "none" and "no policy beat none beyond noise" in out["reason"]
    # ...where the old rule without a margin (tta.margin=null) falls for the three lucky rows.
    out = choose_policies({"m": {k: oof["m"][k] for k in "nh"}}, two, "accuracy", margin=Margin(level=None))["m"]
    assert out["chosen"] == "hflip"


def test_ensemble_auto_does_not_take_a_merge_that_wins_by_a_few_lucky_rows() -> None:
    # Two models as good as each other: each is confidently right on three rows where the other is weakly
    # wrong, and otherwise the same rows made more or less sure. Any merge fixes those rows: +1 point of
    # cross-fitted accuracy over the best single model, by luck of six rows out of 300.
    from pipeline.predict.choose import choose_ensemble

    acc = get_metric("accuracy")
    labels, onehot, base, m1 = _two_class_oof()
    m0 = base.copy()
    a, b = np.flatnonzero(base.argmax(1) != labels)[:3], np.flatnonzero(base.argmax(1) == labels)[:3]
    m1[a], m0[b], m1[b] = onehot[a] * 0.6 + 0.2, onehot[b] * 0.6 + 0.2, 0.55 - onehot[b] * 0.1
    models = {"m0": m0, "m1": m1}
    assert acc(labels, m0) == acc(labels, m1) < acc(labels, (m0 + m1) / 2)
    spec = EnsembleSpec(combine="auto", candidates=["mean"])
    _, naive = choose_ensemble(models, labels, models, spec, "accuracy", Margin(level=None))
    assert naive["chosen"] != "single" and naive["scores"][naive["chosen"]] > naive["scores"]["single"]
    _, honest = choose_ensemble(models, labels, models, spec, "accuracy")
    assert honest["chosen"] == "single"  # the margin does not fall for it
    assert not any(g["beats_baseline"] for g in honest["gains"].values())
    assert "no method beat it beyond noise" in honest["reason"]
