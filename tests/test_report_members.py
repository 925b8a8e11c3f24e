"""What each model adds to the submitted ensemble, and which recipe differences bought diversity or score.

Constructed OOF predictions (the synthetic predict folders of ``tests/test_report.py``), with recipes written
into the members' ``member.json``: no training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.core.io import read_json, safe_name, write_json
from pipeline.core.metrics import get_metric
from pipeline.core.reduce import merge_members
from pipeline.member.predictions import write_predictions
from pipeline.report.build import build_report, compute_report
from tests.test_report import POLICIES, SPEED, _labels, _probs, make_predict_dir, three_models

ACC = get_metric("accuracy")
MIXUP = {"mixup": 0.2, "cutmix": 1.0, "mixup_prob": 1.0, "mixup_switch_prob": 0.5, "mixup_mode": "batch"}


def _set_recipes(out: Path, recipes: dict[str, dict[str, Any] | None]) -> None:
    """Write ``recipe`` (a :class:`~pipeline.member.manifest.Recipe` as a dict) into each model's member.json."""
    info = read_json(out / "predict.json")
    for model, recipe in recipes.items():
        folder = Path(info["members"][info["models"][model][0]])
        write_json(folder / "member.json", {**read_json(folder / "member.json"), "recipe": recipe})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Three models, equal mean submitted under ten_crop; the first trained with Mixup/CutMix, the others plain."""
    labels = _labels()
    oof = three_models(np.random.default_rng(1), labels)
    out = make_predict_dir(tmp_path_factory.mktemp("members"), oof, labels, images=False)
    first, *rest = oof
    _set_recipes(out, {first: {"mixup": MIXUP}, **dict.fromkeys(rest, {})})
    build_report(out, n_boot=100)
    return out, oof, labels


def test_one_row_per_model_with_weight_recipe_correlation_and_cost(mixed: tuple) -> None:
    out, oof, labels = mixed
    drop = read_json(out / "report.json")["savings"]["droppable"]
    rows = {r["model"]: r for r in drop["models"]}
    assert list(rows) == list(oof) and drop["row"] == "ensemble-equal / ten_crop"
    first = next(iter(oof))
    assert rows[first]["recipe"] == "mixup 0.2 · cutmix 1" and rows[first]["differs"] == ["mixup", "cutmix"]
    true = np.corrcoef([oof[m]["ten_crop"][np.arange(len(labels)), labels] for m in oof])
    for i, (model, r) in enumerate(rows.items()):
        assert r["weight"] == pytest.approx(1 / 3)
        assert r["sec_per_1000_images"] == pytest.approx(SPEED[model] * POLICIES["ten_crop"][1])
        assert r["mean_correlation"] == pytest.approx(np.delete(true[i], i).mean())
        if model != first:
            assert r["recipe"] == "plain" and r["differs"] == []
    md = (out / "report.md").read_text()
    table = md[md.index("## What each model adds"):].split("\n\n")[2].splitlines()
    assert len(table) == 2 + len(oof)
    assert f"| {first} | resnet10t | 0.33 | **mixup 0.2** · **cutmix 1** |" in table[2]


def test_left_out_change_equals_a_direct_recomputation(mixed: tuple) -> None:
    out, oof, labels = mixed
    rows = {r["model"]: r for r in read_json(out / "report.json")["savings"]["droppable"]["models"]}
    model = "lenet5-s0"
    merge = lambda ms: merge_members([oof[m]["ten_crop"] for m in ms], method="prob_mean").numpy()  # noqa: E731
    direct = ACC(labels, merge([m for m in oof if m != model])) - ACC(labels, merge(list(oof)))
    assert rows[model]["diff"] == pytest.approx(direct, abs=1e-12)
    assert rows[model]["ci_low"] <= rows[model]["diff"] <= rows[model]["ci_high"]


def test_paragraph_names_the_recipe_difference_and_what_it_bought(mixed: tuple) -> None:
    out, oof, _ = mixed
    report = read_json(out / "report.json")
    first = next(iter(oof))
    text = report["savings"]["droppable"]["recipes"]
    assert text in report["paragraph"]
    assert f"The difference in Mixup and CutMix ({first}: mixup 0.2, cutmix 1; the others: no mixup, no cutmix)" in text
    assert "observation, not a proof" in text and "do not differ" not in text
    scored = not next(r for r in report["savings"]["droppable"]["models"] if r["model"] == first)["free"]
    assert (f"leaving {first} out lowers accuracy beyond noise" in text) == scored


def test_paragraph_says_the_recipes_do_not_differ(tmp_path: Path) -> None:
    labels = _labels()
    oof = three_models(np.random.default_rng(2), labels)
    out = make_predict_dir(tmp_path, oof, labels, images=False)
    _set_recipes(out, dict.fromkeys(oof, {"mixup": MIXUP, "averaging": [{"ema": {"decay": 0.999}}]}))
    _, summary, _ = compute_report(out, n_boot=50)
    rows = summary["savings"]["droppable"]["models"]
    assert {r["recipe"] for r in rows} == {"mixup 0.2 · cutmix 1 · ema 0.999"} and all(not r["differs"] for r in rows)
    assert "The training recipes do not differ between the models, so their diversity came from seeds only." in (
        summary["paragraph"])


def test_members_without_a_recipe_are_said_so(tmp_path: Path) -> None:
    labels = _labels()
    out = make_predict_dir(tmp_path, three_models(np.random.default_rng(3), labels), labels, images=False)
    _, summary, _ = compute_report(out, n_boot=50)
    assert {r["recipe"] for r in summary["savings"]["droppable"]["models"]} == {None}
    assert "None of the 3 models' member.json records a training recipe" in summary["paragraph"]


@pytest.mark.parametrize(("metric", "better"), [("rmse", -1), ("qwk", 1)])
def test_drop_one_works_for_an_ordinal_task(tmp_path: Path, metric: str, better: int) -> None:
    # Two models near the grades and one guessing: leaving the guesser out helps, leaving a good one out hurts.
    rng = np.random.default_rng(0)
    n, key = 300, POLICIES["none"][0]
    grades = rng.integers(0, 5, n).astype(float)
    outputs = {"a-s0": grades + rng.normal(0, 0.6, n), "b-s0": grades + rng.normal(0, 0.6, n),
               "guess-s0": rng.uniform(0, 4, n)}
    labels = _labels(n=n)
    out = make_predict_dir(tmp_path, {m: {"none": _probs(rng, labels, labels >= 0)} for m in outputs}, labels,
                           images=False)
    for model, values in outputs.items():
        write_predictions(out / "oof" / f"{safe_name(model)}__{key}.csv", [f"img{i:04d}" for i in range(n)],
                          values[:, None], ["grade"], grades, values=True, targets=["grade"])
    info = read_json(out / "predict.json")
    write_json(out / "predict.json", {**info, "classes": ["grade"], "metric": metric,
                                      "task": {"kind": "ordinal", "columns": ["grade"], "low": 0, "high": 4}})
    _, summary, _ = compute_report(out, n_boot=100)
    rows = {r["model"]: r for r in summary["savings"]["droppable"]["models"]}
    assert rows["guess-s0"]["free"] and better * rows["guess-s0"]["diff"] > 0
    assert not rows["a-s0"]["free"] and better * rows["a-s0"]["ci_high"] < 0
    if metric == "rmse":  # no decisions: the equal mean without the guesser, scored directly
        direct = get_metric("rmse")(grades, (outputs["a-s0"] + outputs["b-s0"])[:, None] / 2)
        full = get_metric("rmse")(grades, sum(outputs.values())[:, None] / 3)
        assert rows["guess-s0"]["diff"] == pytest.approx(direct - full, rel=1e-5)
