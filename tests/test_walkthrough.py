"""The README's "Bring your own competition" walk-through, run as written (only sizes made tiny).

A CSV-plus-images competition whose ids keep their ``.jpg`` is written here; "pretrained" weights come from
members trained here (no model hub); ``conf/experiment/mycomp.yaml`` then serves train, predict and report;
two models train at two resolutions into one sweep; predict, report, export a kit and submit offline from it.
The commands below are the README's, with the sizes and the data location overridden.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig, OmegaConf
from PIL import Image

from pipeline.cli import CONF_DIR
from pipeline.cli.config import to_dataclass
from pipeline.cli.predict import options
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_test_in_sample_order, read_train_table
from pipeline.predict.spec import TTASpec
from tests.helpers import train
from tests.test_sweep import failure_message

REPO = CONF_DIR.parents[1]
USER_CONF = REPO / "conf"
BIN = Path(sys.executable).parent
TRAIN_GROUPS = ("model", "aug", "optimizer", "scheduler", "trainer", "launcher")


def _compose(config: str, overrides: Sequence[str], conf: Path = USER_CONF) -> DictConfig:
    """Compose a packaged config with ``conf`` on the search path, as ``--config-dir conf`` does."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config, overrides=[f"hydra.searchpath=[file://{conf}]", "paths.root=/tmp",
                                                          *overrides])
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("config", ["train", "predict", "report"])
def test_mycomp_serves_train_predict_and_report(config: str) -> None:
    cfg = _compose(config, ["experiment=mycomp"])
    # every interpolation resolves (the CLIs log the whole config), aside from what needs Hydra's run: paths.*
    # and the checkpoint folder built from paths.output_dir
    for key in cfg:
        if key not in ("paths", "callbacks"):
            OmegaConf.to_container(OmegaConf.create({key: cfg[key]}, parent=cfg), resolve=True)
    assert cfg.experiment_name == "mycomp"
    assert cfg.model.name == "efficientnet_b0"
    assert cfg.model.weights == "/kaggle/input/timm-weights/efficientnet_b0.safetensors"
    spec = to_dataclass(DataSpec, cfg.data)
    assert (spec.ext, spec.test_csv, spec.n_folds, spec.image_size, spec.crop_size) == ("", "sample_submission.csv",
                                                                                      5, 256, 224)
    if config == "train":  # the second model at its own resolution finds its own weights file
        other = _compose(config, ["experiment=mycomp", "model=convnext_tiny", "data.image_size=320",
                                  "data.crop_size=288"])
        assert other.model.weights == "/kaggle/input/timm-weights/convnext_tiny.safetensors"
        assert (other.data.image_size, other.aug.area_for_downscale) == (320, "image")


def test_an_experiment_that_overrides_train_groups_composes_for_predict_and_report_which_ignore_them(
    tmp_path: Path,
) -> None:
    (tmp_path / "experiment").mkdir()
    picks = ["override /data: csv", "override /tta: five_crop", "override /ensemble: caruana"]
    train_picks = ["override /model: lenet5", "override /aug: none", "override /optimizer: sgd",
                   "override /scheduler: step", "override /trainer: cpu", "override /launcher: local"]
    for name, lines in (("full", picks + train_picks), ("bare", picks)):
        body = "".join(f"  - {line}\n" for line in lines)
        (tmp_path / "experiment" / f"{name}.yaml").write_text(
            f"# @package _global_\ndefaults:\n{body}\nexperiment_name: mine\ndata:\n  root: /data/mine\n")
    trained = _compose("train", ["experiment=full"], tmp_path)
    assert (trained.model.name, trained.optimizer._target_, trained.tta.name) == ("lenet5", "torch.optim.SGD",
                                                                                 "five_crop")
    for config in ("predict", "report"):
        full, bare = _compose(config, ["experiment=full"], tmp_path), _compose(config, ["experiment=bare"], tmp_path)
        assert full.model.name == "lenet5"  # composed ...
        kept = {k: v for k, v in OmegaConf.to_container(full).items() if k not in TRAIN_GROUPS}
        assert kept == OmegaConf.to_container(bare)  # ... and nothing else changes
    full, bare = _compose("predict", ["experiment=full"], tmp_path), _compose("predict", ["experiment=bare"], tmp_path)
    built = [options(c, to_dataclass(DataSpec, c.data), to_dataclass(TTASpec, c.tta)) for c in (full, bare)]
    assert built[0] == built[1]  # what pipeline-predict runs on is the same


def _readme_models() -> set[str]:
    """Every ``model=a,b`` the user-facing docs and configs name."""
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), *sorted(USER_CONF.rglob("*.*"))]
    found = set()
    for path in texts:
        for value in re.findall(r"(?<![\w.])model=([a-z0-9_,]+)\b(?!\()", path.read_text()):
            found.update(v for v in value.split(",") if v)
        found.update(re.findall(r"override /model: (\w+)", path.read_text()))
    return found


def test_every_model_the_docs_name_has_a_config() -> None:
    named = _readme_models()
    assert {"resnet50", "convnext_tiny", "efficientnet_b0", "lenet5"} <= named
    missing = sorted(n for n in named if not (CONF_DIR / "model" / f"{n}.yaml").is_file())
    assert missing == [], f"model={missing} in the docs has no pipeline/conf/model entry"


# --- the walk-through itself ------------------------------------------------------------------------------

CLASSES = ("cat", "dog", "fox")


def write_jpeg_competition(root: Path, per_class: int = 8, n_test: int = 9, size: int = 48) -> Path:
    """``train.csv`` (image_id with its ``.jpg``, label, a group column), ``train/``, ``test/``, a sample.

    RGB JPEGs whose colour and fine texture depend on the class; four images per group (source photo).
    """
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()

    def image(c: int) -> Image.Image:
        base = np.zeros((size, size, 3))
        base[..., c] = 150
        texture = rng.integers(0, 2, (size, size, 1)) * (40 + 40 * c)
        return Image.fromarray(np.clip(base + texture + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8))

    rows = []
    for c, label in enumerate(CLASSES):
        for k in range(per_class):
            image_id = f"{label[0]}{k}.jpg"
            image(c).save(root / "train" / image_id, quality=95)
            rows.append((image_id, label, f"{label}-photo{k // 4}"))
    pd.DataFrame(rows, columns=["image_id", "label", "source"]).to_csv(root / "train.csv", index=False)
    test_ids = [f"t{k}.jpg" for k in range(n_test)]
    for k, image_id in enumerate(test_ids):
        image(k % 3).save(root / "test" / image_id, quality=95)
    pd.DataFrame({"image_id": test_ids, "label": CLASSES[0]}).to_csv(root / "sample_submission.csv", index=False)
    return root


def test_the_written_competition_reads_with_mycomp_data_settings(tmp_path: Path) -> None:
    """``ext: ''`` and ``test_csv: sample_submission.csv``: ids keep their ``.jpg``, test ids come from the sample."""
    root = write_jpeg_competition(tmp_path / "comp")
    cfg = _compose("train", ["experiment=mycomp", f"data.root={root}"])
    spec = to_dataclass(DataSpec, cfg.data)
    table = read_train_table(spec)
    assert table.ids[0] == "c0.jpg" and table.paths[0] == root / "train" / "c0.jpg"
    (root / "test" / "stray.jpg").write_bytes((root / "test" / "t0.jpg").read_bytes())  # not in the sample
    test, ids = read_test_in_sample_order(spec, table.classes)
    assert ids == test.ids == [f"t{k}.jpg" for k in range(9)] and test.paths[0] == root / "test" / "t0.jpg"


def test_path_col_paths_resolve_against_train_dir_and_test_dir(tmp_path: Path) -> None:
    root = write_jpeg_competition(tmp_path / "comp")
    df = pd.read_csv(root / "train.csv")
    (root / "train" / "sub").mkdir()
    shutil.move(root / "train" / "c0.jpg", root / "train" / "sub" / "c0.jpg")
    df["file"] = df["image_id"].where(df["image_id"] != "c0.jpg", "sub/c0.jpg")
    df.to_csv(root / "train.csv", index=False)
    sample = pd.read_csv(root / "sample_submission.csv")
    sample.assign(file=sample["image_id"]).to_csv(root / "test.csv", index=False)
    spec = DataSpec(root=str(root), id_col="image_id", path_col="file", test_csv="test.csv")
    assert read_train_table(spec).paths[0] == root / "train" / "sub" / "c0.jpg"
    test, _ = read_test_in_sample_order(spec, CLASSES)
    assert test.paths[0] == root / "test" / "t0.jpg"


def test_timm_weights_saved_as_the_readme_says_load_as_model_weights(tmp_path: Path) -> None:
    """The README's recipe (``pretrained=True`` there; no hub here) gives a file ``model.weights`` takes."""
    import timm
    import torch
    from safetensors.torch import save_file

    from pipeline.models.factory import create_model

    name = "efficientnet_b0"
    model = timm.create_model(name)  # README: timm.create_model(name, pretrained=True) on a machine with internet
    save_file(model.state_dict(), tmp_path / f"{name}.safetensors")
    tuned = create_model(name, num_classes=len(CLASSES), weights=tmp_path / f"{name}.safetensors")
    assert torch.equal(tuned.conv_stem.weight, model.conv_stem.weight)  # the backbone is the saved one
    assert tuned.get_classifier().out_features == len(CLASSES)  # the head fits the competition


# Tiny sizes for 2 CPU cores: the README's commands with these appended (and nothing else changed).
TINY = ["data.batch_size=8", "data.num_workers=0", "trainer=cpu", "trainer.max_epochs=1",
        "trainer.limit_train_batches=2", "trainer.enable_progress_bar=false", "logger=none", "data.n_folds=2",
        "data.fold=0,1"]
SIZES = {"efficientnet_b0": ["data.image_size=32", "data.crop_size=28"],
         "convnext_tiny": ["data.image_size=40", "data.crop_size=32"]}


def _run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=900, check=False)
    assert proc.returncode == 0, failure_message(proc)
    return proc


def _pretrained_weights(train_cfg_dir: Path, root: Path, weights_dir: Path) -> None:
    """"Pretrained" weights for both models: members trained here, their timm-standard model.safetensors."""
    weights_dir.mkdir()
    for name, sizes in SIZES.items():
        cfg = _compose("train", [f"model={name}", "data=csv", f"data.root={root}", "data.id_col=image_id", "data.ext=",
                                 "data.n_folds=0", *sizes, *[t for t in TINY if not t.startswith("data.fold")],
                                 "data.n_folds=0", f"paths.root={train_cfg_dir}"])
        cfg.paths.output_dir = str(train_cfg_dir / name)
        train(cfg)
        shutil.copy(train_cfg_dir / name / "model.safetensors", weights_dir / f"{name}.safetensors")


def _loads_with_timm_alone(folder: Path, tmp_path: Path) -> None:
    """An exported member is a timm-standard folder: ``timm.create_model("local-dir:…")`` in a process that never
    imports pipeline gives the logits the member gives."""
    import torch

    from pipeline.member.folder import find_members
    from pipeline.member.weights import build_model

    code = ("import sys, timm, torch; m = timm.create_model(sys.argv[1], pretrained=True).eval(); "
            "torch.manual_seed(0); x = torch.randn(2, 3, 28, 28)\n"
            "with torch.no_grad(): torch.save({'x': x, 'y': m(x)}, sys.argv[2])\n"
            "assert 'pipeline' not in sys.modules")
    _run(tmp_path, sys.executable, "-c", code, f"local-dir:{folder}", str(tmp_path / "timm.pt"))
    saved = torch.load(tmp_path / "timm.pt", weights_only=True)
    (member,), _ = find_members(folder)
    with torch.no_grad():  # the same weights; float sums may differ in the last bits with another thread count
        torch.testing.assert_close(build_model(member)(saved["x"]), saved["y"], rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_bring_your_own_competition_walkthrough(tmp_path: Path) -> None:
    root = write_jpeg_competition(tmp_path / "data" / "mycomp")
    weights = tmp_path / "timm-weights"
    _pretrained_weights(tmp_path / "pretrain", root, weights)
    shutil.copytree(USER_CONF, tmp_path / "conf")  # the user's conf/ folder, as in a checkout
    where = [f"data.root={root}", f"weights_dir={weights}"]
    train_, predict, report, export = (str(BIN / f"pipeline-{c}") for c in ("train", "predict", "report", "export"))

    # README: two models, two resolutions, one sweep (outputs/mycomp/main)
    _run(tmp_path, train_, "--config-dir", "conf", "-m", "experiment=mycomp", *where, *SIZES["efficientnet_b0"],
         *TINY)
    _run(tmp_path, train_, "--config-dir", "conf", "-m", "experiment=mycomp", "model=convnext_tiny",
         *SIZES["convnext_tiny"], *where, *TINY)
    sweep = tmp_path / "outputs" / "mycomp" / "main"
    members = sorted(p.name for p in sweep.iterdir() if (p / "member.json").is_file())
    assert members == ["convnext_tiny-s0-f0", "convnext_tiny-s0-f1", "efficientnet_b0-s0-f0", "efficientnet_b0-s0-f1"]
    folds = pd.read_csv(sweep / "folds.csv")  # group folds: no source photo in two folds
    assert folds["rule"].str.startswith("stratified_group").all() and folds.groupby("group")["fold"].nunique().max() == 1

    # README: predict (OOF predictions, Caruana weights, submission) and report
    light = ["logger=none", "num_workers=0", "data.num_workers=0", "device=cpu"]
    _run(tmp_path, predict, "--config-dir", "conf", "experiment=mycomp", *where, *light)
    _run(tmp_path, report, "--config-dir", "conf", "experiment=mycomp", "logger=none", "n_boot=50")
    submission = pd.read_csv(sweep / "predict" / "submission.csv")
    assert list(submission.columns) == ["image_id", "label"] and submission["image_id"].tolist() == [
        f"t{k}.jpg" for k in range(9)]
    assert set(submission["label"]) <= set(CLASSES)
    assert (sweep / "predict" / "report.md").is_file()

    # README: export the kit, then the notebook's cell (predict.py from the kit; here with this interpreter,
    # where the kit's version is installed already: tests/test_offline.py installs a kit into a fresh venv).
    kit = tmp_path / "kit"
    _run(tmp_path, export, "outputs/mycomp/main", "--kit", "kit/", "--predict-dir", "outputs/mycomp/main/predict")
    _loads_with_timm_alone(kit / "members" / "efficientnet_b0-s0-f0", tmp_path)
    notebook = tmp_path / "kaggle" / "working"
    notebook.mkdir(parents=True)
    _run(notebook, sys.executable, str(kit / "predict.py"), "--images", str(root / "test"), "--sample",
         str(root / "sample_submission.csv"), "--out", "submission.csv", "--device", "cpu", "--num-workers", "0")
    assert (notebook / "submission.csv").read_bytes() == (sweep / "predict" / "submission.csv").read_bytes()

    # README: inference only from the kit's members (a notebook with the package but no training images)
    test_only = tmp_path / "input" / "mycomp"
    test_only.mkdir(parents=True)
    shutil.copytree(root / "test", test_only / "test")
    shutil.copy(root / "sample_submission.csv", test_only)
    _run(tmp_path, predict, "--config-dir", "conf", "experiment=mycomp", "mode=submit", f"members={kit / 'members'}",
         f"data.root={test_only}", f"predict_dir={tmp_path / 'working' / 'predict'}", f"weights_dir={weights}",
         *light)
    assert ((tmp_path / "working" / "predict" / "submission.csv").read_bytes()
            == (sweep / "predict" / "submission.csv").read_bytes())
