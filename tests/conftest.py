"""Shared fixtures: a small real slice of the demo competition and real composed Hydra configs."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, open_dict

from pipeline.cli import CONF_DIR
from pipeline.cli.config import register
from pipeline.data.demo import prepare_demo

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("WANDB_DISABLE_GIT", "true")
register()


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """A parent config holding copies of the ``tta`` and ``ensemble`` groups plus a tiny ``data`` node."""
    for group in ("tta", "ensemble"):
        shutil.copytree(CONF_DIR / group, tmp_path / group)
    (tmp_path / "config.yaml").write_text(
        "defaults:\n  - tta: ten_crop\n  - ensemble: mean\n  - _self_\n"
        "data:\n  image_size: 32\n  crop_size: 28\n"
    )
    register()
    return tmp_path


@pytest.fixture(scope="session")
def demo_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """600 training and 60 test images of the real demo competition (Fashion-MNIST)."""
    return prepare_demo(tmp_path_factory.mktemp("comp") / "fmnist", n_train=600, n_test=60)


def compose_train(overrides: list[str] | None = None) -> DictConfig:
    """Compose ``conf/train.yaml`` exactly as the CLI does (without the hydra node)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides or [])


@pytest.fixture
def train_cfg(tmp_path: Path, demo_slice: Path) -> Iterator[Callable[..., DictConfig]]:
    """Factory of tiny CPU training configs writing into ``tmp_path``."""

    def make(*overrides: str, member: str = "member") -> DictConfig:
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=resnet10t", f"data.root={demo_slice}",
            "trainer.max_epochs=1", "trainer.enable_progress_bar=false", "data.num_workers=0",
            "data.batch_size=32", f"paths.root={tmp_path}", *overrides,
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / "sweep" / member)
        return cfg

    yield make
    GlobalHydra.instance().clear()


MIXED_SIZES = {"lenet5-s0-holdout": (32, 28), "lenet5-s1-holdout": (24, 20)}
"""Members of :func:`mixed_sweep`: name → (image size, crop size)."""


@pytest.fixture(scope="session")
def mixed_sweep(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Path:
    """Two real LeNet-5 members of one holdout sweep trained at different resolutions (32/28 and 24/20).

    Trained for 3 batches: the tests compare predictions with predictions, not with labels. Tests that
    change a member copy it first (:func:`copy_members`).
    """
    from omegaconf import open_dict

    from tests.helpers import train

    root = tmp_path_factory.mktemp("mixed")
    for seed, (image, crop) in enumerate(MIXED_SIZES.values()):
        cfg = compose_train([
            "trainer=cpu", "logger=none", "model=lenet5", f"data.root={demo_slice}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "trainer.limit_train_batches=3", "data.num_workers=0",
            "data.batch_size=32", f"paths.root={root}", f"seed={seed}", f"data.image_size={image}", f"data.crop_size={crop}",
        ])
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
        train(cfg)
    GlobalHydra.instance().clear()
    return root / "sw"


def copy_members(sweep: Path, dest: Path) -> Path:
    """A copy of a sweep's member folders without any cached predictions."""
    shutil.copytree(sweep, dest, ignore=shutil.ignore_patterns("predictions", "predict*"))
    return dest
