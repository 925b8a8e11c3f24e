"""Generated inputs: CSVs, ids, labels and configs fed to the readers and the config validator.

Each property says what the correct result is, and that anything else is a clean ``PipelineError`` that
wrote nothing. The example budget is fixed and the search derandomised, so CI runs the same examples every
time (about 200 in all, well under a minute).
"""

from __future__ import annotations

import copy
import csv
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict

from pipeline.cli.validate import NO_EPOCH_LIMIT, known_top_level_keys, validate
from pipeline.core.errors import ConfigError, DataError, duplicates
from pipeline.data.ids import IMAGE_EXTENSIONS, check_sample_ids, strip_image_ext
from pipeline.data.spec import DataSpec
from pipeline.data.tables import MISSING_LABELS, clean_label, read_train_table
from tests.helpers import files_under
from tests.test_bad_inputs_config import composed

BUDGET = settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Characters a Kaggle id can hold that are safe in a file name here: leading zeros, dots, dashes, spaces,
# commas and quotes (CSV quoting), non-ASCII letters.
ID_CHARS = st.sampled_from(list("0123456789abcXYZ-_. ,'\"é漢"))
IDS = st.text(ID_CHARS, min_size=1, max_size=8)
LABELS = st.sampled_from(["Dress", "Bag", " Dress ", "", "  ", "NA", "nan", "None", "null", "x,y", 'q"t', "é"])


@contextmanager
def folder() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(tmp)


def write_table(root: Path, header: list[str], rows: list[list[str]]) -> None:
    with (root / "train.csv").open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([header, *rows])


@BUDGET
@given(rows=st.lists(st.tuples(IDS, LABELS), min_size=1, max_size=8))
def test_train_csv_reads_exactly_or_refuses_cleanly(rows: list[tuple[str, str]]) -> None:
    with folder() as root:
        (root / "train").mkdir()
        for image_id, _ in rows:
            if image_id.strip():
                (root / "train" / f"{image_id}.png").touch()
        write_table(root, ["id", "label"], [list(r) for r in rows])
        before = files_under(root)
        ids, labels = [r[0] for r in rows], [clean_label(r[1]) for r in rows]
        valid = all(i.strip() for i in ids) and not duplicates(ids) and not any(x.lower() in MISSING_LABELS for x in labels)
        try:
            table = read_train_table(DataSpec(root=str(root), test_dir=None, sample_submission=None))
        except DataError as err:
            assert not valid, f"refused a valid table: {err}"
            assert str(root / "train.csv") in str(err)
        else:
            assert valid, "accepted a table with empty or duplicate ids or missing labels"
            assert table.ids == ids  # as written: leading zeros, spaces and quotes kept
            assert table.labels is not None
            assert [table.classes[k] for k in table.labels] == labels
        assert files_under(root) == before


@BUDGET
@given(header=st.lists(st.sampled_from(["id", "label", "extra", "Id"]), min_size=1, max_size=5))
def test_a_header_is_read_as_written_or_refused(header: list[str]) -> None:
    with folder() as root:
        (root / "train").mkdir()
        (root / "train" / "a.png").touch()
        write_table(root, header, [["a" if h == "id" else "Bag" for h in header]])
        before = files_under(root)
        try:
            table = read_train_table(DataSpec(root=str(root), test_dir=None, sample_submission=None))
        except DataError as err:
            assert duplicates(header) or "id" not in header or "label" not in header, str(err)
            assert str(root / "train.csv") in str(err)
        else:
            assert not duplicates(header) and table.ids == ["a"]
        assert files_under(root) == before


@BUDGET
@given(sample=st.lists(IDS, max_size=8), test=st.lists(IDS, max_size=8, unique=True))
def test_sample_ids_must_be_exactly_the_test_ids(sample: list[str], test: list[str]) -> None:
    try:
        check_sample_ids(sample, test, "sample_submission.csv")
    except DataError as err:
        assert duplicates(sample) or set(sample) != set(test)
        assert str(err).startswith("sample_submission.csv: ")
    else:
        assert not duplicates(sample) and set(sample) == set(test)


@BUDGET
@given(ids=st.lists(st.tuples(IDS, st.sampled_from(["", *IMAGE_EXTENSIONS, ".PNG", ".txt"]))))
def test_strip_image_ext_removes_exactly_one_image_extension(ids: list[tuple[str, str]]) -> None:
    names = [stem + ext for stem, ext in ids]
    stems, with_ext = strip_image_ext(names)
    assert set(with_ext) == {n for n in names if Path(n).suffix.lower() in IMAGE_EXTENSIONS}
    assert stems == {n[: -len(Path(n).suffix)] if n in with_ext else n for n in names}


# ----------------------------------------------------------------------------- the config validator

VALUES = st.one_of(st.integers(-3, 5), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.sampled_from(["abc", "1e-3", "", "horizontal", "vertical", "none", "horizonal"]), st.none())


@pytest.fixture(scope="module")
def train_cfg() -> DictConfig:
    return composed("train", "scheduler=none")


@pytest.fixture(scope="module")
def predict_cfg() -> DictConfig:
    return composed("predict")


def _with(cfg: DictConfig, **values: Any) -> DictConfig:
    out = copy.deepcopy(cfg)
    OmegaConf.set_struct(out, False)
    for key, value in values.items():
        OmegaConf.update(out, key.replace("__", "."), value, force_add=True)
    return out


def _positive_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v < math.inf


def _integer(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@BUDGET
@given(lr=VALUES, epochs=VALUES, seed=VALUES)
def test_training_values_are_accepted_exactly_when_in_range(train_cfg: DictConfig, lr: Any, epochs: Any, seed: Any) -> None:
    cfg = _with(train_cfg, optimizer__lr=lr, trainer__max_epochs=epochs, seed=seed)
    valid = (_positive_number(lr) and _integer(epochs) and (epochs >= 1 or epochs == NO_EPOCH_LIMIT)
             and (seed is None or _integer(seed)))
    try:
        validate(cfg, "train")
    except ConfigError as err:
        assert not valid, str(err)
        assert "\n" not in str(err) and any(k in str(err) for k in ("optimizer.lr", "trainer.max_epochs", "seed="))
    else:
        assert valid


# tta and ensemble have typed schemas: a value of the wrong type is refused by Hydra at composition already.
FLIPS = st.one_of(st.sampled_from(["horizontal", "vertical", "none", "horizonal", "Horizontal", ""]), st.text(max_size=4))
WEIGHTS = st.one_of(st.none(), st.lists(st.one_of(st.integers(-2, 3), st.floats()), max_size=3))


@BUDGET
@given(flip=FLIPS, weights=WEIGHTS)
def test_prediction_values_are_accepted_exactly_when_in_range(predict_cfg: DictConfig, flip: str, weights: Any) -> None:
    cfg = _with(predict_cfg, tta__flip=flip, ensemble__weights="given", ensemble__given_weights=weights)
    valid = flip in ("horizontal", "vertical", "none") and (weights is None or (
        all(0 <= w < math.inf for w in weights) and any(weights)))  # NaN fails 0 <= w
    try:
        validate(cfg, "predict")
    except ConfigError as err:
        assert not valid, str(err)
        assert "tta.flip" in str(err) or "ensemble.given_weights" in str(err)
    else:
        assert valid


@BUDGET
@given(key=st.text(st.sampled_from(list("abcdeilmnoprstuz_")), min_size=1, max_size=10))
def test_a_top_level_key_is_accepted_exactly_when_known(train_cfg: DictConfig, key: str) -> None:
    cfg = copy.deepcopy(train_cfg)
    with open_dict(cfg):
        cfg[key] = 1
    try:
        validate(cfg, "train")
    except ConfigError as err:
        assert key not in known_top_level_keys() and f"Unknown config key {key} " in str(err)
    else:
        assert key in known_top_level_keys()
