"""Hyper-parameter search with Hydra's Optuna sweeper: trials are member folders an ensemble can use."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from pipeline.cli import CONF_DIR
from pipeline.cli.sweep import member_folder_clashes, search_direction
from pipeline.cli.train import monitored_value
from pipeline.core.io import read_json
from pipeline.member.manifest import read_manifest
from pipeline.train.sweep import SUMMARY_JSON
from tests.test_sweep import TINY, case_configs, failure_message, run_train, summary_rows

pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")

PIPELINE_PREDICT = str(Path(sys.executable).with_name("pipeline-predict"))
# 3 trials, all of them random (TPE's start-up trials), on the tiny lenet5 members of test_sweep.
SEARCH = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.sampler.n_startup_trials=3"]


def _compose_search(*overrides: str) -> OmegaConf:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hparams_search=optuna", *overrides], return_hydra_config=True)
    GlobalHydra.instance().clear()
    return cfg


def test_search_config_direction_follows_monitor_mode_and_names_trials_apart() -> None:
    cfg = _compose_search()
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "aug"}
    assert _compose_search("monitor=val/acc", "monitor_mode=max").hydra.sweeper.direction == "maximize"
    with pytest.raises(Exception, match=r"monitor_mode='lowest' is not one of: min, max"):
        OmegaConf.to_container(_compose_search("monitor_mode=lowest").hydra.sweeper, resolve=True)
    # Two trials that differ in any one searched value get different member folders.
    names = set()
    for overrides in (["optimizer.lr=0.001"], ["optimizer.lr=0.002"], ["optimizer.weight_decay=0.07"], ["aug=strong"]):
        job = _compose_search("optimizer.lr=0.001", "optimizer.weight_decay=0.01", "aug=light", *overrides)
        HydraConfig.instance().set_config(job)
        names.add(str(job.member_name))
    assert names == {"resnet10t-lr0.001-wd0.01-light-s0-holdout", "resnet10t-lr0.002-wd0.01-light-s0-holdout",
                     "resnet10t-lr0.001-wd0.07-light-s0-holdout", "resnet10t-lr0.001-wd0.01-strong-s0-holdout"}


def test_a_search_whose_trials_would_share_a_member_folder_is_refused() -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        hydra = GlobalHydra.instance().hydra
        assert hydra is not None

        def master(*overrides: str) -> DictConfig:  # the search's config as `pipeline-train -m` composes it
            return hydra.compose_config("train", ["hparams_search=optuna", *overrides], run_mode=RunMode.MULTIRUN,
                                        with_log_configuration=False)

        assert member_folder_clashes(master()) is None  # the shipped search names its trials apart
        # the default member name drops the searched values: refused before any trial, naming the keys
        clash = member_folder_clashes(master('member_name="${model.name}-s${seed}-${fold_tag:${data.n_folds},${data.fold}}"'))
        assert clash is not None and "would write the same member folder" in clash
        for token in ("-lr${optimizer.lr}", "-weight_decay${optimizer.weight_decay}", "-${hydra:runtime.choices.aug}"):
            assert token in clash
        # a value fixed on the command line is no longer searched, so it need not be in the name
        fixed = 'member_name="${model.name}-lr${optimizer.lr}-${hydra:runtime.choices.aug}-s${seed}"'
        assert "weight_decay" in str(member_folder_clashes(master(fixed)))
        assert member_folder_clashes(master(fixed, "optimizer.weight_decay=0.01")) is None
    GlobalHydra.instance().clear()


def test_task_returns_the_members_best_monitored_value() -> None:
    assert monitored_value({"monitor": "val/log_loss", "best_score": 0.25, "val_acc": 0.9}) == 0.25
    # a failed member in a sweep, or no finite value: the Optuna sweeper records the trial as failed
    assert monitored_value({}) is None and monitored_value({"best_score": math.nan}) is None
    assert search_direction("max") == "maximize"


@pytest.fixture(scope="module")
def search(demo_slice: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 3-trial Optuna search through ``pipeline-train -m hparams_search=optuna``."""
    root = tmp_path_factory.mktemp("search")
    proc = run_train(["-m", *SEARCH, *TINY, f"data.root={demo_slice}", "experiment_name=opt"], root)
    assert proc.returncode == 0, failure_message(proc)
    return root / "outputs" / "opt" / "search"


@pytest.mark.slow
def test_three_trial_search_writes_members_and_the_best_value(search: Path) -> None:
    members = sorted(p for p in search.iterdir() if (p / "member.json").is_file())
    assert len(members) == 3
    scores = {}
    for member in members:
        assert read_manifest(member).status == "completed"
        config = yaml.safe_load((member / "config.yaml").read_text())
        opt = config["optimizer"]
        # the folder name carries the trial's values
        assert member.name in {f"lenet5-lr{opt['lr']}-wd{opt['weight_decay']}-{aug}-s0-holdout" for aug in ("light", "strong")}
        metrics = read_json(member / "metrics.json")
        assert metrics["monitor"] == "val/log_loss"
        scores[member.name] = metrics["best_score"]
    assert len({round(v, 12) for v in scores.values()}) == 3  # three different trials, not one member three times
    results = yaml.safe_load((search / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(min(scores.values()), rel=1e-9)
    best = min(scores, key=scores.__getitem__)
    params = results["best_params"]
    assert best == f"lenet5-lr{params['optimizer.lr']}-wd{params['optimizer.weight_decay']}-{params['aug']}-s0-holdout"
    summary = read_json(search / SUMMARY_JSON)
    assert summary["counts"] == {"completed": 3, "failed": 0, "running": 0}


@pytest.mark.slow
def test_the_best_trials_join_an_ensemble(search: Path, demo_slice: Path, tmp_path: Path) -> None:
    scores = {p.name: read_json(p / "metrics.json")["best_score"] for p in search.iterdir() if (p / "metrics.json").is_file()}
    best_two = sorted(scores, key=scores.__getitem__)[:2]
    out = tmp_path / "predict"
    proc = subprocess.run(
        [PIPELINE_PREDICT, f"members=[{','.join(str(search / n) for n in best_two)}]", f"predict_dir={out}",
         f"data.root={demo_slice}", "tta=none", "policies=[none]", "logger=none", "device=cpu", "num_workers=0"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, failure_message(proc)
    info = read_json(out / "predict.json")
    assert sorted(info["members"]) == sorted(best_two)
    assert (out / "submission.csv").read_text().count("\n") == 61  # header + the slice's 60 test images


@pytest.mark.slow
def test_a_failed_trial_is_failed_for_optuna_and_the_search_goes_on(demo_slice: Path, tmp_path: Path) -> None:
    # Two trials over two cases: one trains, one diverges (NaN loss) and returns None to the sweeper. The random
    # sampler with seed 0 draws "diverge", then "ok" (not the grid sampler: hydra-optuna-sweeper 1.3 crashes
    # when the grid's last trial fails, as Optuna's GridSampler stops the study while it is told the failure).
    args = ["-m", "hydra/sweeper=optuna", "hydra/sweeper/sampler=random", "hydra.sweeper.sampler.seed=0",
            "hydra.sweeper.n_trials=2", "sweep_name=search",
            "+case=choice(ok,diverge)", case_configs(tmp_path / "conf", ["ok", "diverge"]),
            "member_name=lenet5-${hydra:runtime.choices.case}", *TINY, f"data.root={demo_slice}", "experiment_name=fail"]
    proc = run_train(args, tmp_path)
    assert proc.returncode == 1, failure_message(proc)  # as any sweep with a failed member
    assert "1 of 2 members failed (lenet5-diverge)" in proc.stderr
    sweep = tmp_path / "outputs" / "fail" / "search"
    assert {m: r["status"] for m, r in summary_rows(sweep).items()} == {"lenet5-ok": "completed", "lenet5-diverge": "failed"}
    # the failed trial came first and the search went on to the next one
    assert (sweep / "lenet5-diverge" / "error.txt").stat().st_mtime < (sweep / "lenet5-ok" / "metrics.json").stat().st_mtime
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_params"] == {"+case": "ok"}
    assert results["best_value"] == pytest.approx(read_json(sweep / "lenet5-ok" / "metrics.json")["best_score"], rel=1e-9)
