"""Bad input on the predict side: each case names its cause and leaves no file written, changed or half-written.

Every case runs on copies of two real members (LeNet-5 at 32/28 and 24/20) and checks, besides the error
type and message, that nothing under the test's folder changed: no submission, ``ensemble_test.csv``,
``predict.json``, prediction cache file or temporary file appeared, and earlier outputs are untouched.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from pipeline.core.errors import ConfigError, DataError, MemberError
from pipeline.data.spec import DataSpec
from pipeline.member.export import export_ensemble
from pipeline.predict.kit import build_kit
from pipeline.predict.spec import EnsembleSpec, PredictOptions
from pipeline.predict.tta import TTAPolicy, create_policy
from pipeline.submission.format import SubmissionError
from pipeline.submission.spec import SubmissionOptions
from pipeline.submission.stage import submit
from tests.conftest import MIXED_SIZES, compose_train, copy_members
from tests.helpers import train
from tests.test_cache_keys import ForwardCounter

S0, S1 = "lenet5-s0-holdout", "lenet5-s1-holdout"  # 32/28 and 24/20


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (symlinks as their target) → a hash of its bytes."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            out[str(path)] = f"-> {os.readlink(path)}"
        elif path.is_file():
            out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_unchanged(before: dict[str, str], root: Path, ignore: Callable[[str], bool] = lambda path: False) -> None:
    after = {k: v for k, v in snapshot(root).items() if not ignore(k)}
    added = sorted(set(after) - set(before))
    changed = sorted(k for k in set(after) & set(before) if after[k] != before[k])
    removed = sorted(set(before) - set(after))
    assert not (added or changed or removed), f"added {added}, changed {changed}, removed {removed}"


class Case:
    """A run of the submission stage on copies of the members, with any piece swapped out."""

    def __init__(self, root: Path, mixed_sweep: Path, demo: Path) -> None:
        self.root = root
        self.members = copy_members(mixed_sweep, root / "sw")
        self.comp = demo
        self.out = root / "predict"
        self.spec = DataSpec(root=str(demo), in_chans=1)
        self.opts = PredictOptions(device="cpu", num_workers=0, batch_size=16, chunk_size=None)
        self.ens = EnsembleSpec(weights="caruana", caruana_rounds=5)
        self.sub = SubmissionOptions()
        self.submit_policy: TTAPolicy = create_policy("ten_crop")
        self.metric = "accuracy"
        # Outputs of an earlier run: a failed run must leave them exactly as they were.
        self.out.mkdir()
        for name in ("ensemble_test.csv", "predict.json", "submission.csv"):
            (self.out / name).write_text(f"earlier {name}\n")

    def manifest(self, member: str, **changes: Any) -> None:
        path = self.members / member / "member.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    def copy_comp(self) -> Path:
        if self.comp.is_relative_to(self.root):
            return self.comp
        self.comp = Path(shutil.copytree(self.comp, self.root / "comp"))
        self.spec = replace(self.spec, root=str(self.comp))
        return self.comp

    def run(self) -> dict[str, Any]:
        return submit(str(self.members), self.spec, [create_policy("none")], self.submit_policy, self.out, self.opts,
                      self.ens, self.sub, self.metric)


@pytest.fixture
def case(tmp_path: Path, mixed_sweep: Path, demo_slice: Path) -> Case:
    return Case(tmp_path, mixed_sweep, demo_slice)


def expect(case: Case, error: type[BaseException], match: str, run: Callable[[], object] | None = None) -> None:
    """``run`` (default: the stage) raises ``error`` matching ``match`` and changes nothing under the test folder."""
    before = snapshot(case.root)
    with pytest.raises(error, match=f"(?s){match}"):
        (run or case.run)()
    assert_unchanged(before, case.root)


# ----------------------------------------------------------------------------- settings, all checked first

SETTINGS: dict[str, tuple[Callable[[Case], None], type[BaseException], str]] = {
    "precision fp8": (lambda c: setattr(c.opts, "precision", "fp8"), ConfigError,
                      r"precision='fp8' is not one of \['32', 'bf16', 'fp16'\]"),
    "unknown device": (lambda c: setattr(c.opts, "device", "tpu"), ConfigError, r"device='tpu'.*accepted: auto, cpu, cuda"),
    "cuda:9 index": (lambda c: setattr(c.opts, "device", "cuda:9"), ConfigError, r"device='cuda:9'"),
    "unknown mode": (lambda c: setattr(c.opts, "mode", "train"), ConfigError, r"mode='train' is not one of \['full', 'submit'\]"),
    "batch size 0": (lambda c: setattr(c.opts, "batch_size", 0), ConfigError, r"batch_size must be a positive integer; got 0"),
    "view reduction": (lambda c: setattr(c.opts, "view_reduce", "mode"), ConfigError, r"tta.reduce='mode'"),
    "chunk size": (lambda c: setattr(c.opts, "member_chunk_size", {S0: -1}), ConfigError, r"member_chunk_size.lenet5-s0-holdout"),
    "metric name": (lambda c: setattr(c, "metric", "auc2"), ConfigError, r"metric: unknown metric 'auc2'; accepted"),
    "fit metric": (lambda c: setattr(c.ens, "fit_metric", "nope"), ConfigError, r"ensemble.fit_metric: unknown metric 'nope'"),
    "ensemble method": (lambda c: setattr(c.ens, "method", "median"), ConfigError, r"ensemble.method='median'"),
    "weights kind": (lambda c: setattr(c.ens, "weights", "magic"), ConfigError, r"ensemble.weights='magic'"),
    "caruana rounds": (lambda c: setattr(c.ens, "caruana_rounds", 0), ConfigError, r"ensemble.caruana_rounds must be"),
    "given weights": (lambda c: (setattr(c.ens, "weights", "given"), setattr(c.ens, "given_weights", [1.0])) and None,
                      ConfigError, r"given_weights for 2 members: expected 2 weights.*'lenet5-s0', 'lenet5-s1'"),
    "submission kind": (lambda c: setattr(c.sub, "kind", "bogus"), SubmissionError, r"submission.kind 'bogus' is not one of"),
    "top-k larger than classes": (lambda c: (setattr(c.sub, "kind", "topk"), setattr(c.sub, "k", 11)) and None,
                                  SubmissionError, r"submission.k=11: kind topk needs k between 1 and .* \(10\)"),
    "top-k of zero": (lambda c: (setattr(c.sub, "kind", "topk"), setattr(c.sub, "k", 0)) and None,
                      SubmissionError, r"submission.k=0"),
    "k without topk": (lambda c: setattr(c.sub, "k", 3), SubmissionError, r"submission.k=3 needs submission.kind=topk"),
    "crop override": (lambda c: setattr(c, "submit_policy", create_policy("ten_crop", 20)), ConfigError,
                      r"tta.crop_size=20 \(policy ten_crop\) contradicts member lenet5-s0-holdout's recorded crop size 28"),
    "allowed crop larger than the image": (
        lambda c: (setattr(c, "submit_policy", create_policy("ten_crop", 30)), setattr(c.opts, "allow_crop_override", ["*"]))
        and None, ConfigError, r"tta.crop_size=30 is larger than member lenet5-s1-holdout's image size 24"),
    "multiscale scale below a member's crop": (
        lambda c: setattr(c, "submit_policy", create_policy("multiscale", scales=[24, 32])), ConfigError,
        r"Member lenet5-s0-holdout \(crop size 28\): tta.scales \[24\] are smaller"),
    "prediction cache dir not writable": (lambda c: (c.root.joinpath("afile").write_text("x"), setattr(
        c.opts, "prediction_cache_dir", str(c.root / "afile"))) and None, OSError, r"prediction_cache_dir .*afile"),
    "missing sample submission": (lambda c: setattr(c, "spec", replace(c.spec, sample_submission="nope.csv")),
                                  FileNotFoundError, r"nope.csv does not exist \(config key data.sample_submission\)"),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_bad_setting_stops_before_any_work(case: Case, name: str) -> None:
    change, error, match = SETTINGS[name]
    if name == "cuda:9 index" and torch.cuda.device_count() > 9:
        pytest.skip("this machine has 10 GPUs")
    change(case)
    expect(case, error, match)


def test_fp8_fails_even_when_the_cache_holds_the_result(case: Case) -> None:
    case.run()  # fills the prediction cache
    case.opts = PredictOptions(device="cpu", precision="fp8", num_workers=0, batch_size=16)
    expect(case, ConfigError, r"precision='fp8'")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_fails_even_when_the_cache_holds_the_result(case: Case) -> None:
    case.run()
    case.opts = PredictOptions(device="cuda", num_workers=0, batch_size=16)
    expect(case, ConfigError, r"device='cuda' but this machine has no usable CUDA device; use device=cpu or auto")


# ----------------------------------------------------------------------------- competition files


def test_probability_sample_with_a_class_absent_from_training(case: Case) -> None:
    comp = case.copy_comp()
    classes = json.loads((case.members / S0 / "classes.json").read_text())
    ids = pd.read_csv(comp / "sample_submission.csv", dtype=str)["id"]
    sample = pd.DataFrame({"id": ids, **{c: 0.1 for c in [*classes[:-1], "Ghost"]}})
    sample.to_csv(comp / "sample_submission.csv", index=False)
    expect(case, SubmissionError, r"columns matching no class the members were trained on: \['Ghost'\]; classes without a "
                                  rf"column: \['{classes[-1]}'\]")


def _solution(case: Case) -> tuple[Path, pd.DataFrame]:
    path = case.copy_comp() / "solution.csv"
    case.spec = replace(case.spec, solution="solution.csv")
    return path, pd.read_csv(path, dtype=str, keep_default_na=False)


def test_an_unknown_label_in_the_solution_file_stops_the_run_before_any_prediction(case: Case) -> None:
    path, solution = _solution(case)
    solution.loc[3, "label"] = "Ghost"
    solution.to_csv(path, index=False)
    with ForwardCounter() as passes:
        expect(case, DataError, rf"^{path} \(config key data.solution\): labels that are not classes in column 'label' "
                                r"in 1 row\(s\): lines \[5\] \(ids \['te00003'\], labels \['Ghost'\]\); accepted: "
                                r"\['Ankle boot', 'Bag', .*Fix those rows, or set data.solution=null to skip the leaderboard")
    assert passes.calls == 0


SOLUTIONS: dict[str, tuple[Callable[[pd.DataFrame], pd.DataFrame], str]] = {
    "no label column": (lambda s: s.rename(columns={"label": "class"}),
                        r"no column \['label'\]; found \['id', 'class'\]. Set data.id_col and data.label_col"),
    "a repeated id": (lambda s: s.assign(id=[*s["id"][:-1], s["id"].iloc[0]]),
                      r"ids \['te00000'\] occur more than once in column 'id'"),
}


@pytest.mark.parametrize("name", list(SOLUTIONS))
def test_a_malformed_solution_file_stops_the_run_before_any_prediction(case: Case, name: str) -> None:
    path, solution = _solution(case)
    change, match = SOLUTIONS[name]
    change(solution).to_csv(path, index=False)
    with ForwardCounter() as passes:
        expect(case, DataError, rf"{path} \(config key data.solution\): {match}")
    assert passes.calls == 0


def test_a_solution_file_without_a_sample_id_stops_the_run_before_any_prediction(case: Case) -> None:
    path, solution = _solution(case)
    solution.iloc[1:].to_csv(path, index=False)
    with ForwardCounter() as passes:
        expect(case, DataError, rf"{path} \(config key data.solution\): 1 submission id\(s\) have no row, e.g. "
                                r"\['te00000'\]; a solution file holds every test id")
    assert passes.calls == 0


def retrain_on_another_split(members: Path, data: Path, root: Path) -> None:
    """Replace member S1 by the same model trained on another split (``data.split_seed=7``, the sweep's is 42)."""
    image, crop = MIXED_SIZES[S1]
    cfg = compose_train([
        "trainer=cpu", "logger=none", "model=lenet5", f"data.root={data}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=3", "data.num_workers=0",
        "data.batch_size=32", f"paths.root={root}", "seed=1", f"data.image_size={image}",
        f"data.crop_size={crop}", "data.split_seed=7",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "other" / S1)
    train(cfg)
    GlobalHydra.instance().clear()
    shutil.rmtree(members / S1)
    shutil.move(root / "other" / S1, members / S1)


def test_members_of_different_splits_are_refused_before_any_prediction(case: Case) -> None:
    """A member retrained with another data.split_seed covers other OOF rows: a fitted merge cannot use both."""
    retrain_on_another_split(case.members, case.comp, case.root)
    with ForwardCounter() as passes:
        expect(case, MemberError, r"^Models lenet5-s0 and lenet5-s1 were trained on different splits: their out-of-fold "
                                  r"rows differ \(\d+ validation ids only in lenet5-s0, e.g. .*from folds.csv: "
                                  r"lenet5-s0-holdout: fold 0, stratified holdout fraction=0.2 seed=42; lenet5-s1-holdout: "
                                  r"fold 0, stratified holdout fraction=0.2 seed=7\). The ensemble's merge \(caruana, "
                                  r"ensemble.combine=weighted\).*ensemble.weights=equal or given.$")
    assert passes.calls == 0
    case.ens = EnsembleSpec(weights="equal")  # nothing is fitted on OOF rows: other splits may be averaged
    assert case.run()["weights"]


def test_fold_members_of_one_model_that_overlap_are_refused_before_any_prediction(case: Case) -> None:
    """Two members of one model validating on the same rows (one fold twice, or folds of two splits)."""
    case.manifest(S1, model_group="lenet5-s0")
    case.ens = EnsembleSpec(weights="equal")  # checked for every merge: the model's OOF rows are put together
    with ForwardCounter() as passes:
        expect(case, MemberError, r"^Members lenet5-s0-holdout and lenet5-s1-holdout of model lenet5-s0 validate on 120 of "
                                  r"the same rows \(e.g. \[.*\]; lenet5-s0-holdout: fold 0, stratified holdout "
                                  r"fraction=0.2 seed=42; lenet5-s1-holdout: fold 0, .*\), so they are not distinct folds "
                                  r"of one split.*leave one of them out of members.$")
    assert passes.calls == 0


def test_sample_ids_that_are_not_the_test_images(case: Case) -> None:
    comp = case.copy_comp()
    sample = pd.read_csv(comp / "sample_submission.csv", dtype=str)
    sample.loc[0, "id"] = "ghost"
    sample.to_csv(comp / "sample_submission.csv", index=False)
    expect(case, DataError, r"sample_submission.csv: .*ids only in the sample, e.g. \['ghost'\]")


# ----------------------------------------------------------------------------- crafted member folders


def _outside_file(case: Case, name: str, text: str) -> Path:
    path = case.root / "elsewhere" / name
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


CRAFTED: dict[str, tuple[Callable[[Case], None], str]] = {
    "name with ../": (lambda c: c.manifest(S0, name="../../x"), r"member name '../../x' is not a safe folder name"),
    "name ..": (lambda c: c.manifest(S0, name=".."), r"member name '..' is not a safe folder name"),
    "absolute checkpoint": (lambda c: c.manifest(S0, checkpoint="/etc/passwd"),
                            r"checkpoint in member.json '/etc/passwd' resolves to /etc/passwd, outside the member folder"),
    "checkpoint up the tree": (lambda c: c.manifest(S0, checkpoint="../lenet5-s1-holdout/checkpoints/best.ckpt"),
                               r"checkpoint in member.json '../lenet5-s1-holdout/checkpoints/best.ckpt'.*outside"),
    "symlinked checkpoint": (lambda c: (c.members / S0 / "checkpoints" / "best.ckpt").unlink()
                             or (c.members / S0 / "checkpoints" / "best.ckpt").symlink_to(
                                 c.members / S1 / "checkpoints" / "best.ckpt"),
                             r"checkpoint in member.json 'checkpoints/best.ckpt' resolves to .*lenet5-s1-holdout.*outside"),
    "symlinked eval transform": (lambda c: (c.members / S0 / "eval_transform.json").unlink()
                                 or (c.members / S0 / "eval_transform.json").symlink_to(_outside_file(
                                     c, "t.json", (c.members / S1 / "eval_transform.json").read_text())),
                                 r"file 'eval_transform.json' resolves to .*elsewhere/t.json, outside the member folder"),
    "eval transform contradicts member.json": (
        lambda c: shutil.copy(c.members / S1 / "eval_transform.json", c.members / S0 / "eval_transform.json"),
        r"Member lenet5-s0-holdout: .*eval_transform.json resizes images to 24x24 but member.json records image_size 32"),
    "eval transform that normalises": (
        lambda c: (c.members / S0 / "eval_transform.json").write_text(json.dumps({"transform": {
            "__class_fullname__": "Compose", "p": 1.0, "transforms": [
                {"__class_fullname__": "Resize", "height": 32, "width": 32, "p": 1.0},
                {"__class_fullname__": "Normalize", "mean": [0.5], "std": [0.5], "max_pixel_value": 255.0, "p": 1.0},
                {"__class_fullname__": "ToTensorV2", "p": 1.0}]}})),
        r"Member lenet5-s0-holdout: .*must return uint8 1-channel images.*returns torch.float32"),
    "eval transform not JSON": (lambda c: (c.members / S0 / "eval_transform.json").write_text("{not json"),
                                r"Member lenet5-s0-holdout: cannot use .*eval_transform.json"),
    "model kwargs that load files": (
        lambda c: c.manifest(S0, model_kwargs={"pretrained_cfg_overlay": {"file": "/etc/passwd"}}),
        r"lenet5-s0-holdout/member.json: model_kwargs \['pretrained_cfg_overlay'\] would make timm load"),
    "duplicate member names": (lambda c: c.manifest(S1, name=S0), r"Several folders hold members of the same name"),
    "different class lists": (lambda c: c.manifest(S1, classes=list(reversed(json.loads(
        (c.members / S1 / "classes.json").read_text())))), r"different class lists.*lenet5-s1-holdout"),
    "missing checkpoint": (lambda c: (c.members / S0 / "checkpoints" / "best.ckpt").unlink(),
                           r"Member .*lenet5-s0-holdout has no checkpoint: expected .*best.ckpt"),
    "crop larger than image in member.json": (lambda c: c.manifest(S0, crop_size=40) or c.manifest(S1, status="failed"),
                                              r"No completed members found.*crop_size 40 must be between 1 and image_size 32"),
    "mistyped member.json": (lambda c: c.manifest(S0, image_size="big") or c.manifest(S1, status="running"),
                             r"No completed members found.*keys \['image_size'\] have the wrong type"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_member_folder_is_refused(case: Case, name: str) -> None:
    change, match = CRAFTED[name]
    change(case)
    expect(case, MemberError, match)


def test_pickled_object_checkpoint_is_refused_and_leaves_no_temp_file(case: Case) -> None:
    class Evil:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("pwned",))

    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": Evil()}, case.members / S1 / "checkpoints" / "best.ckpt")
    expect(case, MemberError, r"Refusing to load .*lenet5-s1-holdout/checkpoints/best.ckpt.*arbitrary code")


def test_member_whose_weights_do_not_fit_leaves_no_temp_file(case: Case) -> None:
    torch.save({"state_dict": {"model.fc.weight": torch.zeros(3, 3)}}, case.members / S1 / "checkpoints" / "best.ckpt")
    expect(case, MemberError, r"lenet5-s1-holdout/checkpoints/best.ckpt does not fit model 'lenet5'")


def test_no_completed_members(case: Case) -> None:
    case.manifest(S0, status="failed")
    case.manifest(S1, status="running")
    expect(case, MemberError, r"No completed members found. Looked in: .*sw.*status failed")


def test_inference_only_mode_without_any_oof_cannot_fit_weights(case: Case) -> None:
    for member in (S0, S1):
        (case.members / member / "val_predictions.csv").unlink()
    case.opts.mode = "submit"
    expect(case, ConfigError, r"ensemble.weights=caruana needs out-of-fold predictions.*mode=submit reads")


# ----------------------------------------------------------------------------- export and kit


def test_export_of_a_crafted_member_writes_nothing_anywhere(case: Case) -> None:
    case.manifest(S0, name="../../escaped")
    expect(case, MemberError, r"member name '../../escaped' is not a safe folder name",
           lambda: export_ensemble(str(case.members), case.root / "a" / "b" / "out"))


def test_export_onto_the_members_themselves_is_refused(case: Case) -> None:
    expect(case, MemberError, r"Refusing to export member lenet5-s0-holdout onto itself",
           lambda: export_ensemble(str(case.members), case.members))


def test_export_with_a_predict_folder_of_other_members(case: Case) -> None:
    (case.out / "predict.json").write_text(json.dumps({
        "members": {S0: "x"}, "submission_policy": "k", "policies": {}, "weights": {}, "ensemble": {}, "metric": "accuracy"}))
    expect(case, MemberError, r"predict.json was made with members \['lenet5-s0-holdout'\], not the exported",
           lambda: export_ensemble(str(case.members), case.root / "out", case.out))


def test_kit_with_a_wheel_that_is_not_a_pipeline_wheel(case: Case) -> None:
    (case.root / "other-1.0-py3-none-any.whl").write_text("x")
    expect(case, ConfigError, r"--wheel .*other-1.0-py3-none-any.whl: expected an existing pipeline-<version>-\*.whl",
           lambda: build_kit(str(case.members), case.root / "kit", wheel=case.root / "other-1.0-py3-none-any.whl"))


def test_kit_into_a_folder_that_holds_something_else(case: Case) -> None:
    expect(case, ConfigError, r"--kit .*sw exists and is not a kit folder",
           lambda: build_kit(str(case.members), case.members))


# ----------------------------------------------------------------------------- the command line


def test_command_line_image_size_is_refused_with_exit_status(case: Case) -> None:
    """pipeline-predict predicts members at their own sizes; a data.crop_size on the command line is an error."""
    before = snapshot(case.root)
    proc = subprocess.run(
        [sys.executable, "-m", "pipeline.cli.predict", f"members={case.members}", f"data.root={case.comp}",
         f"predict_dir={case.out}", "logger=none", "device=cpu", "num_workers=0", "data.crop_size=20"],
        capture_output=True, text=True, timeout=300, cwd=case.root, env={**os.environ, "HYDRA_FULL_ERROR": "1"})
    assert proc.returncode != 0
    assert "['data.crop_size'] on the command line" in proc.stderr and "tta.allow_crop_override" in proc.stderr
    assert_unchanged(before, case.root, ignore=lambda path: "/.hydra/" in path or path.endswith(".log"))  # Hydra's own run record


def test_predict_cleans_the_temporary_files_a_killed_predict_left(case: Case) -> None:
    """A predict killed by SIGKILL leaves ``.<file>.<host>.<pid>.<token>.tmp`` in a cache folder; the next run removes it."""
    from pipeline.core.io import _HOST

    dead_pid = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                                  text=True, check=True).stdout)  # that process has exited: its writer is gone
    folder = case.members / S0 / "predictions"
    folder.mkdir(exist_ok=True)
    stale = folder / f".oof-none-prob_mean-x.csv.{_HOST}.{dead_pid}.0a1b2c3d.tmp"
    stale.write_text("id,label\n")
    case.run()
    assert not stale.exists()
    assert (case.out / "submission.csv").is_file()


def test_median_views_are_for_other_tasks_only() -> None:
    from pipeline.core.task import Task
    from pipeline.predict.targets import check_task_options

    with pytest.raises(ConfigError, match="tta.reduce=median is for multi-label and value outputs"):
        check_task_options(Task("multiclass", ("a", "b")), PredictOptions(view_reduce="median"))
