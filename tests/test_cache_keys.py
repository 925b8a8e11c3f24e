"""Prediction caches keyed by content: replaced images, edited cache files, moved sweeps and weights files."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import open_dict

from pipeline.core.errors import MemberError
from pipeline.core.io import read_json, write_json
from pipeline.data.fingerprint import HASHES_FILE, table_fingerprint
from pipeline.data.spec import DataSpec
from pipeline.data.tables import read_test_table
from pipeline.member.cache import CHECKSUM, cache_problem, file_checksum
from pipeline.member.predictions import read_predictions, write_predictions
from pipeline.models.factory import create_model
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import create_policy
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from pipeline.train.fit import MemberConflict
from tests.conftest import compose_train
from tests.helpers import files_under, train

MEMBERS = ("lenet5-s0-holdout", "lenet5-s1-holdout")


class ForwardCounter:
    """Counts every module forward call in this process (a real hook on torch, not a stand-in)."""

    def __init__(self) -> None:
        self.calls = 0

    def __enter__(self) -> ForwardCounter:
        self._handle = torch.nn.modules.module.register_module_forward_hook(self._hook)
        return self

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def __exit__(self, *_: object) -> None:
        self._handle.remove()


def _cfg(root: Path, data: Path, weights: Path | None, seed: int) -> Any:
    cfg = compose_train([
        "trainer=cpu", "logger=none", "model=lenet5", f"data.root={data}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=3", "data.num_workers=0",
        "data.batch_size=32", f"paths.root={root}", f"seed={seed}",
        *([f"model.weights={weights}"] if weights is not None else []),
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
    return cfg


def _train_sweep(root: Path, data: Path, weights: Path | None = None) -> list[dict]:
    """Two tiny LeNet-5 members (seeds 0, 1) of one holdout sweep in ``root/sw``."""
    return [train(_cfg(root, data, weights, seed)) for seed in (0, 1)]


def _save_weights(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(create_model("lenet5", num_classes=10, in_chans=1).state_dict(), path)
    return path


def _predict(sweep: Path, data: Path, out: Path) -> dict:
    spec = DataSpec(root=str(data), image_size=32, crop_size=28, in_chans=1, solution="solution.csv")
    opts = PredictOptions(device="cpu", batch_size=32, num_workers=0)
    none = create_policy("none", 28)
    return submit(str(sweep), spec, [none], none, out, opts, EnsembleSpec(), SubmissionOptions(), "accuracy")


def _test_files(sweep: Path, member: str) -> list[Path]:
    return sorted((sweep / member / "predictions").glob("test-*.csv"))


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Iterator[Path]:
    """A data folder, a weights file and a two-member sweep trained from it and predicted once."""
    root = tmp_path_factory.mktemp("world")
    shutil.copytree(demo_slice, root / "data")
    _train_sweep(root, root / "data", _save_weights(root / "weights" / "lenet5.pth", 0))
    _predict(root / "sw", root / "data", root / "sw" / "predict")
    yield root


@pytest.fixture
def copy(world: Path, tmp_path: Path) -> Path:
    """A private copy of the world a test may change (copied files get new mtimes, as ``cp`` gives)."""
    shutil.copytree(world, tmp_path / "w")
    return tmp_path / "w"


def test_rerun_predicts_nothing_and_replaced_test_image_is_predicted_again(copy: Path) -> None:
    with ForwardCounter() as rerun:
        _predict(copy / "sw", copy / "data", copy / "sw" / "predict")
    assert rerun.calls == 0
    before = {m: _test_files(copy / "sw", m) for m in MEMBERS}
    images = sorted((copy / "data" / "test").glob("*.png"))
    shutil.copyfile(images[1], images[0])  # same name, other picture
    with ForwardCounter() as changed:
        _predict(copy / "sw", copy / "data", copy / "sw" / "predict")
    assert changed.calls > 0
    for m in MEMBERS:
        (new,) = set(_test_files(copy / "sw", m)) - set(before[m])  # a new key, not the old file
        ids, probs, _ = read_predictions(new)
        row = {i: k for k, i in enumerate(ids)}
        np.testing.assert_allclose(probs[row[images[0].stem]], probs[row[images[1].stem]], atol=1e-6)


def test_image_hash_record_is_used_and_distrusted_when_stale(copy: Path) -> None:
    table = read_test_table(DataSpec(root=str(copy / "data")))
    first = table_fingerprint(table, copy / "rec")
    record = read_json(copy / "rec" / HASHES_FILE)
    assert len(record) == len(table)
    # A record with a wrong hash for an unchanged file is believed (that is the fast path)...
    name = str(table.paths[0].absolute())
    lie = {**record, name: [*record[name][:2], "0" * 32]}
    write_json(copy / "rec" / HASHES_FILE, lie)
    assert table_fingerprint(table, copy / "rec") != first
    # ...but not once the file's size or mtime changed: then the file is read again.
    table.paths[0].write_bytes(table.paths[0].read_bytes())
    assert table_fingerprint(table, copy / "rec") == first == table_fingerprint(table)


def test_hand_edited_cache_file_is_recomputed_and_the_log_says_why(
    copy: Path, caplog: pytest.LogCaptureFixture
) -> None:
    (path,) = _test_files(copy / "sw", MEMBERS[0])
    original = path.read_bytes()
    lines = original.decode().splitlines()
    fields = lines[1].split(",")
    fields[1], fields[2] = fields[2], fields[1]  # still valid probabilities: only the checksum tells
    path.write_text("\n".join([lines[0], ",".join(fields), *lines[2:]]) + "\n")
    with caplog.at_level(logging.WARNING, logger="pipeline.member.cache"), ForwardCounter() as counter:
        _predict(copy / "sw", copy / "data", copy / "sw" / "predict")
    assert counter.calls > 0
    assert path.read_bytes() == original
    (line,) = [r.getMessage() for r in caplog.records if "Not using cached predictions" in r.getMessage()]
    assert str(path) in line and "checksum" in line and line.endswith("recomputing it.")


@pytest.mark.parametrize("damage, reason", [
    ("nan", "not probabilities"), ("sum", "do not sum to 1"), ("ids", "not the 3 ids"),
    ("nosum", "records no checksum"),
])
def test_cache_problem_names_each_kind_of_damage(tmp_path: Path, damage: str, reason: str) -> None:
    probs = np.array([[0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])
    ids = ["NA", "007", "null"]
    if damage == "nan":
        probs[1, 0] = np.nan
    if damage == "sum":
        probs[2] = [0.7, 0.7]
    path = write_predictions(tmp_path / "test-x.csv", ["NA", "007", "other"] if damage == "ids" else ids,
                             probs, ["a", "b"])
    side = {"rows": 3} if damage == "nosum" else {"rows": 3, CHECKSUM: file_checksum(path)}
    write_json(path.with_suffix(".json"), side)
    problem = cache_problem(path, ["a", "b"], ids)
    assert problem is not None and reason in problem
    if damage == "nan":
        assert "'p:a'" in problem and "lines [3]" in problem and "'007'" in problem


def test_read_predictions_refuses_nan_and_out_of_range_naming_file_column_rows(tmp_path: Path) -> None:
    path = tmp_path / "val_predictions.csv"
    path.write_text("id,label,p:a,p:b\nNA,0,0.5,0.5\n007,1,nan,0.9\nx,1,1.5,-0.5\n")
    with pytest.raises(MemberError, match=r"val_predictions\.csv: column 'p:a' .* 2 row\(s\): file lines \[3, 4\], "
                                          r"ids \['007', 'x'\]"):
        read_predictions(path, ["a", "b"])
    path.write_text("id,label,p:a,p:b\nNA,0,0.5,0.5\nnull,1,0.1,0.9\n")
    ids, probs, labels = read_predictions(path, ["b", "a"])
    assert ids == ["NA", "null"] and labels is not None and labels.tolist() == [0, 1]
    assert probs.tolist() == [[0.5, 0.5], [0.9, 0.1]]


def test_moved_sweep_predicts_from_cache_and_resumes_but_refuses_other_weights(world: Path, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere"
    shutil.copytree(world, moved, copy_function=shutil.copy2)  # as rsync -a: mtimes kept
    weights = moved / "weights" / "lenet5.pth"
    new_weights = moved / "other-folder" / "renamed.pth"
    new_weights.parent.mkdir()
    weights.rename(new_weights)
    counts = {m: len(list((moved / "sw" / m / "predictions").glob("*.csv"))) for m in MEMBERS}
    with ForwardCounter() as counter:
        summary = _predict(moved / "sw", moved / "data", moved / "sw" / "predict")
    assert counter.calls == 0
    assert {m: len(list((moved / "sw" / m / "predictions").glob("*.csv"))) for m in MEMBERS} == counts
    assert (moved / "sw" / "predict" / "submission.csv").read_bytes() == \
        (world / "sw" / "predict" / "submission.csv").read_bytes()
    assert summary["n_test"] == 60
    before = {m: files_under(moved / "sw" / m) for m in MEMBERS}
    again = _train_sweep(moved, moved / "data", new_weights)  # completed members: skipped, not refused
    assert {m: files_under(moved / "sw" / m) for m in MEMBERS} == before
    assert again == [read_json(moved / "sw" / m / "metrics.json") for m in MEMBERS]
    other = _save_weights(moved / "other-folder" / "different.pth", 1)
    with pytest.raises(MemberConflict, match=r"other contents than model\.weights=.*different\.pth"):
        _train_sweep(moved, moved / "data", other)


def test_ids_that_look_like_missing_values_or_numbers_stay_text_through_predict(world: Path, tmp_path: Path) -> None:
    import pandas as pd

    data = tmp_path / "data"
    shutil.copytree(world / "data", data)
    renamed = {"NA": None, "null": None, "007": None}
    images = sorted((data / "test").glob("*.png"))[:3]
    for new, image in zip(renamed, images):
        renamed[new] = image.stem
        image.rename(image.with_name(f"{new}.png"))
    back = {old: new for new, old in renamed.items()}
    for name in ("sample_submission.csv", "solution.csv"):
        table = pd.read_csv(data / name, dtype=str, keep_default_na=False)
        table["id"] = table["id"].map(lambda i: back.get(i, i))
        table.to_csv(data / name, index=False)
    sweep = tmp_path / "sw"
    shutil.copytree(world / "sw", sweep, ignore=shutil.ignore_patterns("predict"))
    _predict(sweep, data, tmp_path / "out")
    sub = pd.read_csv(tmp_path / "out" / "submission.csv", dtype=str, keep_default_na=False)
    assert set(renamed) <= set(sub["id"])
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str, keep_default_na=False)
    assert sub["id"].tolist() == sample["id"].tolist()


def test_submission_from_a_prediction_file_keeps_text_ids(tmp_path: Path) -> None:
    import pandas as pd

    from pipeline.submission.build import write_submission_from_predictions
    from pipeline.submission.format import format_from_config

    ids, classes = ["NA", "null", "007"], ["a", "b"]
    pred = write_predictions(tmp_path / "p.csv", ids, np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]), classes)
    fmt = format_from_config("label", "id", "label", "name", classes)
    for chunk in (1, None):
        out = write_submission_from_predictions(pred, tmp_path / "sub.csv", fmt, classes, ids, chunk_rows=chunk)
        sub = pd.read_csv(out, dtype=str, keep_default_na=False)
        assert sub.to_dict("list") == {"id": ids, "label": ["a", "b", "a"]}
    pred.write_text("id,p:a,p:b\nNA,0.9,0.1\nnull,nan,0.8\n007,0.6,0.4\n")
    with pytest.raises(MemberError, match=r"p\.csv: column 'p:a' .* file lines \[3\], ids \['null'\]"):
        write_submission_from_predictions(pred, tmp_path / "sub2.csv", fmt, classes, ids, chunk_rows=2)
    assert not (tmp_path / "sub2.csv").exists()


def test_labels_that_read_as_names_and_as_indices_are_refused_naming_label_as(tmp_path: Path) -> None:
    from pipeline.submission.format import SubmissionError, infer_format

    classes = [str(i) for i in range(1, 11)]
    sample = tmp_path / "sample_submission.csv"
    sample.write_text("id,label\na,9\nb,9\n")
    with pytest.raises(SubmissionError, match=r"sample_submission\.csv: .*'9' is class '9' by name but class '10' by "
                                              r"index.*submission\.label_as=name .*submission\.label_as=index"):
        infer_format(sample, classes)
    assert infer_format(sample, classes, label_as="name").label_as == "name"
    assert infer_format(sample, classes, label_as="index").label_as == "index"
    sample.write_text("id,label\na,0\nb,0\n")  # "0" is no class name: an index, as before
    assert infer_format(sample, classes).label_as == "index"


def test_member_recorded_under_the_earlier_path_hash_of_its_weights_is_the_same_member(copy: Path) -> None:
    """Sweeps trained before weights were hashed by contents (path in the hash) are not refused after an upgrade."""
    import dataclasses

    import yaml

    from pipeline.cli.train import train_spec
    from pipeline.member.manifest import read_manifest, write_manifest
    from pipeline.train.identity import WEIGHTS_SHA, member_hash

    cfg = _cfg(copy, copy / "data", copy / "weights" / "lenet5.pth", 0)
    member = Path(cfg.paths.output_dir)
    saved = yaml.safe_load((member / "config.yaml").read_text())
    assert len(saved["model"].pop(WEIGHTS_SHA)) == 64
    saved["model"]["weights"] = str(copy / "weights" / "lenet5.pth")  # as an earlier version hashed it, in place
    legacy = member_hash(train_spec(cfg), saved)
    manifest = read_manifest(member)
    assert legacy != manifest.config_hash
    write_manifest(member, dataclasses.replace(manifest, config_hash=legacy))
    before = files_under(member)
    assert train(cfg) == read_json(member / "metrics.json")
    assert files_under(member) == before
