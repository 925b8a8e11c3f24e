"""Damaged files a user can hand the command lines: each is one line naming the file and the remedy, nothing written.

Run through the console scripts on copies of two real members (:func:`tests.conftest.mixed_sweep`): a text
file as ``checkpoints/best.ckpt``, a truncated ``model.safetensors`` in an export, NaN in an export's
``ensemble.json`` (read by the offline kit's ``predict.py``), an undecodable test image, a repeated header
name in ``train.csv``; and two members holding the same weights, which predict warns about by name. A disk
that fills up while a file is written (:class:`FullDisk`) leaves no temporary file, and says so in one line.
"""

from __future__ import annotations

import errno
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from pipeline.cli.errors import explain
from pipeline.core.errors import OutputError
from pipeline.core.io import _HOST, write_json
from pipeline.member import predictions
from pipeline.member.predictions import write_predictions
from pipeline.submission import build
from pipeline.submission.build import write_submission_from_predictions
from pipeline.submission.format import format_from_config
from tests.conftest import copy_members
from tests.helpers import copy_competition, write_competition
from tests.test_bad_inputs_config import cli, refused
from tests.test_bad_inputs_predict import S0, retrain_on_another_split, snapshot
from tests.test_sweep import failure_message

PREDICT = ["logger=none", "tta=none", "policies=[none]", "num_workers=0", "data.num_workers=0"]


def predict_args(members: Path, data: Path, out: Path) -> list[str]:
    return [*PREDICT, f"members={members}", f"data.root={data}", f"predict_dir={out}"]


def no_outputs(predict_dir: Path) -> bool:
    """The predict folder holds Hydra's record of the command and its log: no submission, predict.json or OOF file."""
    return {p.relative_to(predict_dir).parts[0] for p in predict_dir.rglob("*") if p.is_file()} <= {".hydra", "predict.log"}


def test_a_text_file_as_the_checkpoint_names_it(tmp_path: Path, mixed_sweep: Path, demo_slice: Path) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    ckpt = members / S0 / "checkpoints" / "best.ckpt"
    ckpt.write_text("this is not a checkpoint\n")
    refused("predict", predict_args(members, demo_slice, tmp_path / "p"), members,
            rf"Cannot read checkpoint {ckpt}: truncated or not a PyTorch checkpoint.*Re-create the file")
    assert no_outputs(tmp_path / "p")


@pytest.fixture
def export(tmp_path: Path, mixed_sweep: Path) -> Path:
    members = copy_members(mixed_sweep, tmp_path / "members")
    proc = subprocess.run([str(Path(sys.executable).with_name("pipeline-export")), str(members), "--out", str(tmp_path / "ex")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, failure_message(proc)
    return tmp_path / "ex"


def test_a_truncated_safetensors_names_the_file(tmp_path: Path, export: Path, demo_slice: Path) -> None:
    weights = export / S0 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:300])
    shutil.rmtree(export / S0 / "predictions", ignore_errors=True)  # else the cached predictions are used
    refused("predict", predict_args(export, demo_slice, tmp_path / "p"), export,
            rf"Cannot read weights {weights}: truncated or not a safetensors file.*pipeline-export")
    assert no_outputs(tmp_path / "p")


def test_nan_in_a_kits_ensemble_json_names_the_file(tmp_path: Path, mixed_sweep: Path, demo_slice: Path) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    # A wheel named as the installed version: the kit's install() finds that version installed and skips pip
    # (building a real wheel takes minutes; tests/test_offline.py does it).
    wheel = tmp_path / f"pipeline-{metadata.version('pipeline')}-py3-none-any.whl"
    wheel.write_bytes(b"")
    kit = tmp_path / "kit"
    proc = subprocess.run([str(Path(sys.executable).with_name("pipeline-export")), str(members), "--kit", str(kit),
                           "--wheel", str(wheel)], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, failure_message(proc)
    path = kit / "members" / "ensemble.json"
    info = json.loads(path.read_text())
    info["weights"] = {"none.0": {"lenet5-s0": float("nan"), "lenet5-s1": 0.5}}
    path.write_text(json.dumps(info))  # json writes NaN, and Python's json reads it back without complaint
    before = snapshot(tmp_path)
    proc = subprocess.run([sys.executable, str(kit / "predict.py"), "--images", str(demo_slice / "test"), "--out",
                           str(tmp_path / "submission.csv")], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 1, failure_message(proc)
    assert proc.stderr.strip() == f"predict.py: {path} holds NaN, which is no weight or setting. Export the members " \
                                  "again (pipeline-export ... --predict-dir ...) or restore the file.", failure_message(proc)
    assert snapshot(tmp_path) == before


def test_an_undecodable_test_image_names_it_and_says_it_cannot_be_skipped(
    tmp_path: Path, mixed_sweep: Path, demo_slice: Path
) -> None:
    comp = copy_competition(demo_slice, tmp_path / "comp")
    bad = sorted((comp / "test").iterdir())[3]
    bad.write_text("not an image")
    members = copy_members(mixed_sweep, tmp_path / "members")
    before = snapshot(comp)
    proc = cli("predict", [*predict_args(members, comp, tmp_path / "p"), "data.skip_bad_images=true"], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" not in proc.stderr
    line = next(x for x in proc.stderr.splitlines() if x.startswith("Error: "))
    assert line.startswith(f"Error: Cannot decode image {bad}: ") and "a test image cannot be skipped" in line, line
    assert snapshot(comp) == before
    # the OOF rows are predicted before the test images are read (pipeline/predict/stage.py): no submission
    assert not {"submission.csv", "predict.json"} & {p.name for p in (tmp_path / "p").iterdir()}


def test_a_repeated_header_name_in_train_csv_is_refused(tmp_path: Path) -> None:
    comp = write_competition(tmp_path / "comp")
    table = comp / "train.csv"
    table.write_text(table.read_text().replace("id,label", "id,label,label", 1))
    before = snapshot(comp)
    proc = cli("train", ["model=lenet5", "trainer=cpu", "logger=none", f"data.root={comp}", "data.in_chans=1"], tmp_path)
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" not in proc.stderr
    assert f"Error: {table} (config key data.train_csv): the header names ['label'] more than once" in proc.stderr
    assert snapshot(comp) == before
    member = next((tmp_path / "out").rglob("member.json"), None) if (tmp_path / "out").exists() else None
    assert member is None or json.loads(member.read_text())["status"] == "failed"


def test_two_members_with_the_same_weights_are_named_in_a_warning(tmp_path: Path, mixed_sweep: Path,
                                                                  demo_slice: Path) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    twin = members / "lenet5-s2-holdout"
    shutil.copytree(members / S0, twin)
    manifest = twin / "member.json"
    manifest.write_text(manifest.read_text().replace(f'"{S0}"', '"lenet5-s2-holdout"').replace('"lenet5-s0"', '"lenet5-s2"'))
    proc = cli("predict", predict_args(members, demo_slice, tmp_path / "p"), tmp_path)
    assert proc.returncode == 0, failure_message(proc)
    warnings = [x for x in (proc.stdout + proc.stderr).splitlines() if "identical weights" in x]  # Hydra logs to stdout
    assert len(warnings) == 1 and f"Members {S0} and lenet5-s2-holdout hold identical weights" in warnings[0], warnings


# ----------------------------------------------------------------------------- a disk that fills up


class FullDisk:
    """A file on a disk that fills up: writing past ``room`` characters fails with ENOSPC, and so does closing,
    which flushes what is buffered (the case that left ``oof/.*.tmp`` behind). Paths without ``where`` work."""

    where = ""
    room = 0

    def __init__(self, path: Any, *args: Any, **kwargs: Any) -> None:
        self._fh = open(path, *args, **kwargs)  # noqa: SIM115
        self._full = self.where in str(path)
        self._size = 0

    def write(self, text: str) -> int:
        self._size += len(text)
        if self._full and self._size > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fh.write(text)

    def close(self) -> None:
        self._fh.close()
        if self._full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fh, name)


def full_disk(where: str, room: int) -> type[FullDisk]:
    return type("FullDisk", (FullDisk,), {"where": where, "room": room})


def _disk_full_line(path: Path) -> str:
    return rf"Cannot write {path}: disk full \(ENOSPC: No space left on device\)\. Free space on the disk that holds " \
           rf"{path.parent} \(or write to another disk\) and run the command again; the partial file was removed\."


@pytest.mark.parametrize("room", [200, 10**9], ids=["a write fails, then closing fails again", "closing fails"])
def test_disk_full_while_writing_predictions_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                      room: int) -> None:
    target = tmp_path / "oof" / "m__none.csv"
    target.parent.mkdir()
    target.write_text("earlier\n")
    monkeypatch.setattr(predictions, "open", full_disk("/oof/", room), raising=False)
    before = snapshot(tmp_path)
    with pytest.raises(OutputError, match=_disk_full_line(target)):
        write_predictions(target, [f"i{k}" for k in range(100)], np.full((100, 2), 0.5), ["a", "b"], np.zeros(100, int))
    assert snapshot(tmp_path) == before  # no .tmp left, the earlier file whole


@pytest.mark.parametrize("room", [10, 10**9], ids=["a write fails, then closing fails again", "closing fails"])
def test_disk_full_while_writing_the_submission_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                         room: int) -> None:
    ids, classes = [f"i{k}" for k in range(50)], ["a", "b"]
    pred = write_predictions(tmp_path / "ensemble_test.csv", ids, np.full((50, 2), 0.5), classes)
    (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "submission.csv"
    target.write_text("earlier\n")
    before = snapshot(tmp_path)
    monkeypatch.setattr(build, "open", full_disk("/out/", room), raising=False)
    with pytest.raises(OutputError, match=_disk_full_line(target)):
        write_submission_from_predictions(pred, target, format_from_config("label", "id", "label", "name", classes),
                                          classes, ids)
    assert snapshot(tmp_path) == before


def test_disk_full_in_an_atomic_write_leaves_no_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_then_full(self: Path, text: str, *args: Any, **kwargs: Any) -> int:
        with open(self, "w") as fh:
            fh.write(text[:5])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    (tmp_path / "predict.json").write_text("{}\n")
    before = snapshot(tmp_path)
    monkeypatch.setattr(Path, "write_text", half_then_full)
    with pytest.raises(OutputError, match=_disk_full_line(tmp_path / "predict.json")):
        write_json(tmp_path / "predict.json", {"a": 1})
    assert snapshot(tmp_path) == before


def test_disk_full_in_a_library_write_is_one_line_naming_the_file() -> None:
    """A full disk under code that is not ours (a Lightning checkpoint, a log): the command lines say it in one line."""
    err = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/runs/m/checkpoints/last.ckpt")
    assert explain(err) == ("Cannot write /runs/m/checkpoints/last.ckpt: disk full (ENOSPC: No space left on device). "
                            "Free space on the disk that holds /runs/m/checkpoints (or write to another disk) and run "
                            "the command again.")


def test_a_predict_rerun_on_a_full_disk_keeps_the_earlier_results_and_leaves_no_temporary_file(
    tmp_path: Path, mixed_sweep: Path, demo_slice: Path
) -> None:
    """The disk fills up while the rerun writes ``oof/``: exit 1, one line naming the file, and no ``.tmp`` anywhere.

    A temporary file a dead writer left in ``oof/`` (as runs before this fix did) is removed by the rerun.
    """
    members = copy_members(mixed_sweep, tmp_path / "members")
    out = tmp_path / "p"
    proc = cli("predict", predict_args(members, demo_slice, out), tmp_path)
    assert proc.returncode == 0, failure_message(proc)
    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)
    stale = out / "oof" / f".lenet5-s0__none.0.csv.{_HOST}.{dead_pid}.0a1b2c3d.tmp"
    stale.write_text("id,label\n")
    results = {k: v for k, v in snapshot(tmp_path).items() if "/.hydra/" not in k and not k.endswith(".log")
               and k != str(stale)}
    python = (f"import errno, os\nfrom typing import Any\n{inspect.getsource(FullDisk)}\nFullDisk.where = '/oof/'\n"
              "FullDisk.room = 10**9\nimport pipeline.member.predictions\npipeline.member.predictions.open = FullDisk\n")
    proc = cli("predict", predict_args(members, demo_slice, out), tmp_path, python)
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, failure_message(proc)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("Error: ")]
    assert len(errors) == 1 and "/oof/lenet5-s" in errors[0] and "disk full (ENOSPC" in errors[0], failure_message(proc)
    assert "Free space on the disk" in errors[0] and f"The folder is set by predict_dir={out}" in errors[0], errors[0]
    after = {k: v for k, v in snapshot(tmp_path).items() if "/.hydra/" not in k and not k.endswith(".log")}
    assert after == results  # the earlier results byte for byte; the stale file gone; nothing new
    assert not list(tmp_path.rglob("*.tmp")) and not list(out.glob(".staging-*"))


# ----------------------------------------------------------------------------- bad data found before any prediction

# Counts every module forward call of the command (a real hook on torch) into the file named by $PASSES at exit.
COUNT_PASSES = """
import atexit, os, torch
_calls = [0]
def _hook(*_):
    _calls[0] += 1
torch.nn.modules.module.register_module_forward_hook(_hook)
atexit.register(lambda: open(os.environ['PASSES'], 'w').write(str(_calls[0])))
"""


def refused_before_any_prediction(args: list[str], tmp_path: Path, match: str) -> None:
    """``pipeline-predict args`` exits 1 with one line matching ``match``, no forward pass, and no file written
    outside the predict folder's own record of the command (``.hydra/``, ``predict.log``)."""
    passes = tmp_path / "passes.txt"
    before = snapshot(tmp_path)
    os.environ["PASSES"] = str(passes)
    try:
        proc = cli("predict", args, tmp_path, COUNT_PASSES)
    finally:
        del os.environ["PASSES"]
    assert proc.returncode == 1, failure_message(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, failure_message(proc)
    errors = [x for x in proc.stderr.splitlines() if x.startswith("Error: ")]
    assert len(errors) == 1 and re.search(match, errors[0]), failure_message(proc)
    assert passes.read_text() == "0"
    passes.unlink()
    after = {k: v for k, v in snapshot(tmp_path).items() if "/.hydra/" not in k and not k.endswith("predict.log")}
    assert after == before


def test_an_unknown_label_in_the_solution_file_exits_before_any_prediction(tmp_path: Path, mixed_sweep: Path,
                                                                             demo_slice: Path) -> None:
    comp = copy_competition(demo_slice, tmp_path / "comp")
    solution = comp / "solution.csv"
    table = pd.read_csv(solution, dtype=str, keep_default_na=False)
    table.loc[2, "label"] = "Ghost"
    table.to_csv(solution, index=False)
    members = copy_members(mixed_sweep, tmp_path / "members")
    refused_before_any_prediction(predict_args(members, comp, tmp_path / "p"), tmp_path,
                                  rf"^Error: {solution} \(config key data.solution\): labels that are not classes in "
                                  r"column 'label' in 1 row\(s\): lines \[4\] \(ids \['te00002'\], labels \['Ghost'\]\)")
    assert no_outputs(tmp_path / "p")


def test_members_of_different_splits_exit_before_any_prediction(tmp_path: Path, mixed_sweep: Path,
                                                                demo_slice: Path) -> None:
    members = copy_members(mixed_sweep, tmp_path / "members")
    retrain_on_another_split(members, demo_slice, tmp_path)
    refused_before_any_prediction([*predict_args(members, demo_slice, tmp_path / "p"), "ensemble=caruana"], tmp_path,
                                  r"^Error: Models lenet5-s0 and lenet5-s1 were trained on different splits: .*seed=42; "
                                  r"lenet5-s1-holdout: fold 0, stratified holdout fraction=0.2 seed=7\)\..*"
                                  r"ensemble.weights=equal or given\.$")
    assert no_outputs(tmp_path / "p")
