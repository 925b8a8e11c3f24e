"""Every config group option and every experiment composes through real Hydra."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from pipeline.cli import CONF_DIR
from pipeline.cli.config import fold_tag

GROUPS = ["data", "model", "aug", "optimizer", "scheduler", "trainer", "logger", "launcher"]
PREDICT_GROUPS = ["tta", "ensemble"]


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml") if p.stem != "default")


def _compose(config: str, overrides: list[str]) -> object:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name=config, overrides=overrides, return_hydra_config=False)


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in options(g)])
def test_train_group_option_composes(group: str, option: str) -> None:
    cfg = _compose("train", [f"{group}={option}", "data.root=/x", "paths.root=/tmp"])
    node = cfg.get(group)
    if group != "launcher":
        assert node is not None
        OmegaConf.to_container(node, resolve=True)  # every interpolation resolves


@pytest.mark.parametrize("group,option", [(g, o) for g in PREDICT_GROUPS for o in options(g)])
def test_predict_group_option_composes(group: str, option: str) -> None:
    cfg = _compose("predict", [f"{group}={option}", "paths.root=/tmp"])
    OmegaConf.to_container(cfg[group], resolve=True)


@pytest.mark.parametrize("experiment", options("experiment"))
@pytest.mark.parametrize("config", ["train", "predict", "report"])
def test_experiment_composes(experiment: str, config: str) -> None:
    cfg = _compose(config, [f"experiment={experiment}", "paths.root=/tmp"])
    assert cfg.experiment_name == experiment


def test_member_name_is_readable_and_stable() -> None:
    cfg = _compose("train", ["model=resnet10t", "seed=3", "data.n_folds=5", "data.fold=2", "paths.root=/tmp"])
    assert cfg.member_name == "resnet10t-s3-f2"
    assert fold_tag(0, 0) == "holdout"


def test_typo_in_schema_backed_group_fails_at_composition(tmp_path: Path) -> None:
    """A user's own data yaml with a misspelt key fails when composed, naming the key."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine.yaml").write_text("defaults: [base_data, _self_]\nroot: /x\nn_fold: 3\n")
    with pytest.raises(ConfigCompositionException) as err:
        _compose("train", [f"hydra.searchpath=[file://{tmp_path}]", "data=mine", "paths.root=/tmp"])
    assert "n_fold" in str(err.value) + str(err.value.__cause__)
    with pytest.raises(ConfigCompositionException):
        _compose("predict", ["tta.flipp=none", "paths.root=/tmp"])


def test_configs_ship_inside_the_package() -> None:
    import pipeline

    assert CONF_DIR == Path(pipeline.__file__).resolve().parent / "conf"
    assert (CONF_DIR / "train.yaml").is_file() and (CONF_DIR / "experiment" / "demo.yaml").is_file()
