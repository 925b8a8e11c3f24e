"""Which metric judges a run: chosen from the submission format when none is set (and the report says why),
a user's own ``{_target_: …, greater_is_better: …}`` through pipeline-predict and pipeline-report, and the
report's warning when a group lies in more than one fold."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from pipeline.cli import CONF_DIR
from pipeline.core.errors import ConfigError
from pipeline.core.io import read_json
from pipeline.core.metrics import METRICS
from pipeline.data.spec import DataSpec
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.report.build import build_report
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import copy_members

TARGET = "tests.test_metric_choice.mean_true_class_probability"


def mean_true_class_probability(labels: np.ndarray, probs: np.ndarray) -> float:
    """A user's metric: the mean probability given to the true class (higher is better)."""
    return float(probs[np.arange(len(labels)), labels].mean())


def _submit(members: Path, demo: Path, out: Path, sample: str, metric: str | None = None) -> dict:
    spec = DataSpec(root=str(demo), in_chans=1, sample_submission=sample)
    opts = PredictOptions(device="cpu", num_workers=0, batch_size=64, chunk_size=None)
    return submit(str(members), spec, [], create_policy("none"), out, opts,
                  EnsembleSpec(weights="caruana", caruana_rounds=5, fit_metric=None), SubmissionOptions(), metric)


@pytest.fixture(scope="module")
def members(mixed_sweep: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_members(mixed_sweep, tmp_path_factory.mktemp("choice") / "sw")


def test_probability_sample_is_judged_by_log_loss_and_the_report_says_why(
    members: Path, demo_slice: Path, tmp_path: Path
) -> None:
    sample = pd.read_csv(demo_slice / "sample_submission.csv", dtype=str)[["id"]]
    classes = read_json(members / "lenet5-s0-holdout" / "classes.json")
    for c in classes:
        sample[c] = 0.1
    sample.to_csv(tmp_path / "sample_probs.csv", index=False)
    summary = _submit(members, demo_slice, tmp_path / "p", str(tmp_path / "sample_probs.csv"))
    assert summary["metric"] == "log_loss" and summary["ensemble"]["fit_metric"] == "log_loss"
    assert "one probability column per class" in summary["metric_reason"]
    df = build_report(tmp_path / "p", n_boot=20)
    text = (tmp_path / "p" / "report.md").read_text()
    assert df.attrs["metric"] == "log_loss"
    assert "**Metric:** log_loss (lower is better)" in text
    assert "Why this metric: log loss: the sample submission" in text and "one probability column per class" in text


def test_label_sample_is_judged_by_accuracy(members: Path, demo_slice: Path, tmp_path: Path) -> None:
    summary = _submit(members, demo_slice, tmp_path / "p", "sample_submission.csv")
    assert summary["metric"] == "accuracy" and summary["ensemble"]["fit_metric"] == "accuracy"
    assert summary["metric_reason"].startswith("accuracy: the sample submission (sample_submission.csv) asks for a "
                                               "class label")
    build_report(tmp_path / "p", n_boot=20)
    assert "Why this metric: accuracy: the sample submission" in (tmp_path / "p" / "report.md").read_text()


def _compose(name: str, *overrides: str) -> object:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=name, overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.slow
def test_custom_metric_by_target_in_predict_and_report(members: Path, demo_slice: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import predict, report

    out = tmp_path / "p"
    metric = f"metric={{_target_:{TARGET},greater_is_better:true}}"
    cfg = _compose("predict", f"members={members}", f"data.root={demo_slice}", "data.in_chans=1", f"predict_dir={out}",
                   f"paths.root={tmp_path}", "logger=none", "tta=none", "policies=[none]", "device=cpu",
                   "num_workers=0", "ensemble=caruana", "ensemble.fit_metric=null", "ensemble.caruana_rounds=5", metric)
    try:
        summary = predict.run(cfg)  # type: ignore[arg-type]
        assert summary["metric"] == TARGET and summary["ensemble"]["fit_metric"] == TARGET
        assert read_json(out / "predict.json")["metric_target"] == {"_target_": TARGET, "greater_is_better": True}
        METRICS.pop(TARGET)  # a fresh pipeline-report process: the metric is imported again from predict.json
        rcfg = _compose("report", f"predict_dir={out}", f"paths.root={tmp_path}", "n_boot=20", "wandb=false")
        df = report.run(rcfg)  # type: ignore[arg-type]
        assert df.attrs["metric"] == TARGET and TARGET in METRICS and METRICS[TARGET].greater_is_better
        assert f"Metric: {TARGET} (set by the metric setting)" in capsys.readouterr().out
        # greater_is_better is respected: the in-sample best row has the largest value (rows can tie to ~1e-12;
        # the starred row is the nested pick, which need not be the in-sample maximum)
        best = df.loc[df["in_sample_best"], TARGET].iloc[0]
        assert best == pytest.approx(df[TARGET].max(), rel=1e-9) and best > df[TARGET].min()
    finally:
        METRICS.pop(TARGET, None)
    bad = _compose("predict", f"paths.root={tmp_path}", f"metric={{_target_:{TARGET}}}")
    with pytest.raises(ConfigError, match=r"metric\._target_=tests\.test_metric_choice\..*set metric\.greater_is_better"):
        predict.run(bad)  # type: ignore[arg-type]
    missing = _compose("predict", f"paths.root={tmp_path}", "metric={_target_:nowhere.fn,greater_is_better:false}")
    with pytest.raises(ConfigError, match=r"metric\._target_=nowhere\.fn cannot be imported"):
        predict.run(missing)  # type: ignore[arg-type]


def test_report_warns_when_a_group_lies_in_two_folds(members: Path, demo_slice: Path, tmp_path: Path) -> None:
    sweep = copy_members(members, tmp_path / "sw")
    _submit(sweep, demo_slice, tmp_path / "p", "sample_submission.csv")
    folds_files = sorted(sweep.glob("*/folds.csv"))
    for file in folds_files:  # groups as a fold column would leave them: every group in fold -1 and fold 0
        folds = pd.read_csv(file, dtype=str)
        folds.assign(group=[f"g{i % 7}" for i in range(len(folds))]).to_csv(file, index=False)
    build_report(tmp_path / "p", n_boot=20)
    text = (tmp_path / "p" / "report.md").read_text()
    assert text.count("**Warning:** 7 of 7 groups in ") == 1  # both members share one folds file: one warning
    assert "(e.g. group 'g0' in folds [-1, 0]" in text
    for file in folds_files:  # group folds: a group never straddles
        folds = pd.read_csv(file, dtype=str)
        folds.assign(group="g" + folds["fold"]).to_csv(file, index=False)
    build_report(tmp_path / "p", n_boot=20)
    assert "**Warning:**" not in (tmp_path / "p" / "report.md").read_text()
