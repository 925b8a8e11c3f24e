"""The demo competitions of the binary, multi-label, regression and ordinal tasks (pipeline.data.task_demos),
``pipeline-demo-data --task``, their experiment configs, and the default demo left as it was."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig
from PIL import Image

from pipeline.cli import CONF_DIR
from pipeline.cli.config import register, to_dataclass
from pipeline.cli.demo import main
from pipeline.cli.validate import validate
from pipeline.core.errors import ConfigError, DataError
from pipeline.data.demo import CLASSES, load_subset
from pipeline.data.spec import DataSpec
from pipeline.data.task_demos import (
    FOOTWEAR,
    RECORD,
    SIZE_RANGE,
    TAGS,
    TASK_DEMOS,
    describe_targets,
    task_demo_out,
    write_task_demo,
)

TASKS = list(TASK_DEMOS)
METRIC = {"multilabel": "f2_samples", "ordinal": "qwk", "regression": "rmse", "binary": "roc_auc"}
SIDE = {"multilabel": 56, "ordinal": 32, "regression": 32, "binary": 28}
# tree_digest of `pipeline-demo-data --n-train 50 --n-test 20`, computed with the code before --task existed.
DEFAULT_SLICE_DIGEST = "38cf4be05c50b25842efa74b2a3af9ecf584bb5f8910b0909111f51100fe6669"


def tree_digest(root: Path) -> str:
    """File names, CSV bytes and decoded pixels (not PNG bytes, which depend on the zlib build)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(np.asarray(Image.open(p)).tobytes() if p.suffix == ".png" else p.read_bytes())
    return h.hexdigest()


def read(root: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(root / name, dtype=str, keep_default_na=False)


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """40 training and 20 test rows of each task."""
    base = tmp_path_factory.mktemp("task_demos")
    return {task: write_task_demo(task, base / task, n_train=40, n_test=20, seed=3) for task in TASKS}


@pytest.mark.parametrize("task", TASKS)
def test_files_columns_ids_and_images(task: str, small: dict[str, Path]) -> None:
    root, spec = small[task], TASK_DEMOS[task]
    train, sample, solution = (read(root, f) for f in ("train.csv", "sample_submission.csv", "solution.csv"))
    for df, rows in ((train, 40), (sample, 20), (solution, 20)):
        assert list(df.columns) == [spec.id_col, spec.target_col] and len(df) == rows
    assert train[spec.id_col].is_unique and solution[spec.id_col].is_unique
    assert not set(train[spec.id_col]) & set(solution[spec.id_col])
    assert sample[spec.id_col].tolist() == solution[spec.id_col].tolist()
    for split, ids in (("train", train[spec.id_col]), ("test", solution[spec.id_col])):
        assert sorted(p.stem for p in (root / split).iterdir()) == sorted(ids)
        for img_id in ids:
            with Image.open(root / split / f"{img_id}.png") as im:
                assert (im.mode, im.size) == ("L", (SIDE[task], SIDE[task]))
                im.load()


def _values_in_range(task: str, cells: pd.Series) -> None:
    if task == "multilabel":
        tags = cells.str.split(" ")
        assert all(row and set(row) <= set(TAGS) and len(set(row)) == len(row) for row in tags), cells.tolist()
    elif task == "ordinal":
        assert set(cells) <= {str(g) for g in range(10)}
    elif task == "regression":
        values = cells.astype(float)
        assert values.between(*SIZE_RANGE).all()
    else:
        assert set(cells) <= {"0", "1"}


@pytest.mark.parametrize("task", TASKS)
def test_targets_are_in_range_and_the_sample_is_a_valid_placeholder(task: str, small: dict[str, Path]) -> None:
    root, col = small[task], TASK_DEMOS[task].target_col
    for name in ("train.csv", "solution.csv"):
        _values_in_range(task, read(root, name)[col])
    placeholder = read(root, "sample_submission.csv")[col]
    if task == "binary":
        assert (placeholder.astype(float) == 0.5).all()  # probabilities, not labels
    else:
        _values_in_range(task, placeholder)


@pytest.mark.parametrize("task", TASKS)
def test_same_seed_same_files_other_seed_other_files(task: str, small: dict[str, Path], tmp_path: Path) -> None:
    again = write_task_demo(task, tmp_path / "again", n_train=40, n_test=20, seed=3)
    other = write_task_demo(task, tmp_path / "other", n_train=40, n_test=20, seed=4)
    assert tree_digest(again) == tree_digest(small[task])
    assert tree_digest(other) != tree_digest(small[task])
    png = sorted((again / "train").iterdir())[0]
    assert png.read_bytes() == (small[task] / "train" / png.name).read_bytes()  # byte-identical, not only pixels


def _subset_labels() -> dict[bytes, int]:
    data = load_subset()
    return {img.tobytes(): int(y) for split in ("train", "test")
            for img, y in zip(data[f"{split}_images"], data[f"{split}_labels"])}


def test_binary_target_is_footwear_and_mosaic_tags_are_the_tiles_shown(small: dict[str, Path]) -> None:
    labels = _subset_labels()
    root = small["binary"]
    for name, split in (("train.csv", "train"), ("solution.csv", "test")):
        for img_id, target in read(root, name).itertuples(index=False):
            label = labels[np.asarray(Image.open(root / split / f"{img_id}.png")).tobytes()]
            assert target == str(int(CLASSES[label] in FOOTWEAR))
    root = small["multilabel"]
    for img_id, tags in read(root, "train.csv").itertuples(index=False):
        image = np.asarray(Image.open(root / "train" / f"{img_id}.png"))
        tiles = [image[y:y + 28, x:x + 28] for y in (0, 28) for x in (0, 28)]
        shown = {TAGS[labels[t.tobytes()]] for t in tiles if t.any()}
        assert shown == set(tags.split(" ")), img_id


def test_regression_target_measures_the_drawn_shape(small: dict[str, Path]) -> None:
    """The brighter pixels (the shape) grow with the size: a target that did not describe the image would not."""
    root = small["regression"]
    train = read(root, "train.csv")
    bright = [(np.asarray(Image.open(root / "train" / f"{i}.png")) > 135).sum() for i in train["Id"]]
    assert np.corrcoef(np.sqrt(bright), train["target"].astype(float))[0, 1] > 0.8


def test_default_sizes_are_balanced(tmp_path: Path) -> None:
    """The hidden test targets of the default 600/200 sets: every label, grade and size range well represented."""
    sol = {t: read(write_task_demo(t, tmp_path / t), "solution.csv")[TASK_DEMOS[t].target_col] for t in TASKS}
    assert all(len(s) == 200 for s in sol.values())
    present = {tag: sol["multilabel"].str.split(" ").map(lambda row, tag=tag: tag in row).mean() for tag in TAGS}
    assert all(0.1 <= f <= 0.4 for f in present.values()), present
    assert sol["ordinal"].value_counts().reindex([str(g) for g in range(10)]).min() >= 18
    quarters = np.histogram(sol["regression"].astype(float), bins=np.linspace(*SIZE_RANGE, 5))[0]
    assert quarters.min() >= 0.15 * 200, quarters
    assert 0.2 <= (sol["binary"] == "1").mean() <= 0.45
    assert describe_targets("binary", sol["binary"]).startswith("200 rows; positive ")


def test_bad_requests_fail_before_anything_is_written(tmp_path: Path) -> None:
    out = tmp_path / "x"
    with pytest.raises(ConfigError, match="accepted: multilabel, ordinal, regression, binary"):
        write_task_demo("multiclass", out)
    with pytest.raises(ConfigError, match=r"--n-train 5: the binary demo takes an integer from 10 to 10000"):
        write_task_demo("binary", out, n_train=5)
    with pytest.raises(ConfigError, match=r"--n-test 501: the multilabel demo"):
        write_task_demo("multilabel", out, n_test=501)
    with pytest.raises(ConfigError, match="1797 digits"):
        write_task_demo("ordinal", out, n_train=1500, n_test=400)
    with pytest.raises(ConfigError, match="--seed -1"):
        write_task_demo("regression", out, seed=-1)
    assert not out.exists()


def test_a_finished_folder_is_reused_only_for_the_same_request(tmp_path: Path) -> None:
    out = write_task_demo("regression", tmp_path / "s", n_train=30, n_test=20)
    stamp = (out / "solution.csv").stat().st_mtime_ns
    assert write_task_demo("regression", out, n_train=30, n_test=20) == out
    assert (out / "solution.csv").stat().st_mtime_ns == stamp
    with pytest.raises(DataError, match=rf"{RECORD} records .*'seed': 0.*'seed': 1.*--force"):
        write_task_demo("regression", out, n_train=30, n_test=20, seed=1)
    write_task_demo("regression", out, n_train=12, n_test=10, seed=1, force=True)
    assert len(list((out / "train").iterdir())) == 12 and len(list((out / "test").iterdir())) == 10  # no stale PNGs
    assert len(read(out, "train.csv")) == 12


def test_a_folder_of_another_competition_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "mine"
    other.mkdir()
    (other / "train.csv").write_text("id,label\n")
    with pytest.raises(DataError, match=rf"{other} is not empty and holds no {RECORD}"):
        write_task_demo("binary", other)
    assert [p.name for p in other.iterdir()] == ["train.csv"]


def test_command_line_writes_the_task_and_prints_its_balance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from pipeline.cli import demo

    assert demo._TASKS == tuple(TASK_DEMOS)  # the command line lists the tasks without importing the writers
    main(["--task", "ordinal", "--out", str(tmp_path / "o"), "--n-train", "50", "--n-test", "20", "--seed", "1"])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train: 50 rows; grades 0: 5, 1: 5") and out[1].startswith("test (hidden): 20 rows;")
    assert out[2] == f"ordinal demo competition ready at {tmp_path / 'o'}"
    with pytest.raises(SystemExit, match="pipeline-demo-data: --n-test 3: the ordinal demo"):
        main(["--task", "ordinal", "--out", str(tmp_path / "p"), "--n-test", "3"])
    with pytest.raises(SystemExit) as err:
        main(["--seed", "1"])
    assert err.value.code == 2 and "--seed needs --task" in capsys.readouterr().err


def test_command_line_default_output_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    main(["--n-train", "50", "--n-test", "20"])
    assert capsys.readouterr().out == "Demo competition ready at data/fashion-mnist-demo\n"
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["fashion-mnist-demo"]
    assert tree_digest(tmp_path / "data" / "fashion-mnist-demo") == DEFAULT_SLICE_DIGEST


def _compose(config: str, experiment: str) -> DictConfig:
    register()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name=config, overrides=[f"experiment={experiment}", "paths.root=/r"],
                           return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()


@pytest.mark.parametrize("task", TASKS)
def test_experiment_points_at_the_written_folder_and_declares_the_task(task: str) -> None:
    """Composition and the commands' start-up validation only: training needs the keys and metrics being added."""
    validate(_compose("report", f"task_{task}"), "report")
    for config in ("train", "predict"):
        cfg = _compose(config, f"task_{task}")
        validate(cfg, config)
        data = to_dataclass(DataSpec, cfg.data)
        assert data.root == f"/r/{task_demo_out(task).as_posix()}"
        assert (data.task, data.id_col, data.label_col) == (task, TASK_DEMOS[task].id_col, TASK_DEMOS[task].target_col)
        assert cfg.metric == METRIC[task] and data.in_chans == 1 and data.image_size == 32
        if task == "multilabel":
            assert data.tag_sep == " "
        if task in ("ordinal", "regression"):
            assert data.target_range == ([0, 9] if task == "ordinal" else list(SIZE_RANGE))
    params = cfg.hydra.sweeper.params
    assert sorted(params.model.split(",")) == ["lenet5", "resnet10t"] and str(params.seed) == "0"
    assert _compose("train", f"task_{task}").trainer.max_epochs <= 10
