"""Pseudo-labelling and distillation (``teacher=pseudo|distill``): real members taught by a real predict folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from pipeline.cli import CONF_DIR
from pipeline.core.errors import ConfigError
from pipeline.member.predictions import read_predictions
from pipeline.member.teacher import TeacherSpec, select_test_rows
from pipeline.train.teacher import check_teacher, teacher_loss
from tests.conftest import compose_train
from tests.helpers import train

BIN = Path(sys.executable).parent


def _member_cfg(root: Path, demo: Path, sweep: str, *overrides: str, seed: int = 0):  # type: ignore[no-untyped-def]
    cfg = compose_train([
        "trainer=cpu", "logger=none", "model=lenet5", f"data.root={demo}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=4", "data.num_workers=0",
        "data.batch_size=32", f"paths.root={root}", f"seed={seed}", *overrides,
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / sweep / cfg.member_name)
    return cfg


def _predict(root: Path, demo: Path, sweep: Path, *overrides: str) -> Path:
    from pipeline.cli.predict import run

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name="predict", overrides=[
                "logger=none", f"paths.root={root}", f"data.root={demo}", f"members={sweep}",
                f"predict_dir={sweep / 'predict'}", "device=cpu", "num_workers=0", "batch_size=64",
                "policies=[none]", *overrides])
    finally:
        GlobalHydra.instance().clear()
    run(cfg)
    return sweep / "predict"


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> tuple[Path, Path]:
    """Two LeNet-5 members of one holdout sweep, predicted (hflip, Caruana): the teacher's predict folder."""
    root = tmp_path_factory.mktemp("teacher")
    for seed in (0, 1):
        train(_member_cfg(root, demo_slice, "gen1", seed=seed))
    GlobalHydra.instance().clear()
    return root, _predict(root, demo_slice, root / "gen1", "tta=hflip", "ensemble=caruana")


def _refused(root: Path, demo: Path, sweep: str, *overrides: str) -> str:
    cfg = _member_cfg(root, demo, sweep, *overrides)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert not any(Path(cfg.paths.output_dir).glob("*.csv")), "a refused member wrote files"
    return str(err.value)


def test_pseudo_labelled_generation_keeps_test_rows_out_of_its_oof_rows(
    teacher: tuple[Path, Path], demo_slice: Path
) -> None:
    root, source = teacher
    metrics = train(_member_cfg(root, demo_slice, "gen2", "teacher=pseudo", f"teacher.source={source}"))
    assert metrics["n_val"] > 0
    member = next((root / "gen2").glob("lenet5-*"))
    record = json.loads((member / "teacher.json").read_text())
    targets = pd.read_csv(member / "teacher_targets.csv", dtype={"id": str})
    test_ids = set(pd.read_csv(demo_slice / "sample_submission.csv", dtype=str)["id"])
    val_ids, _, _ = read_predictions(member / "val_predictions.csv")
    teacher_val, _, _ = read_predictions(next((root / "gen1").glob("lenet5-s0-*")) / "val_predictions.csv")
    # Test images trained the member, and never entered its OOF rows; those are exactly the teacher's.
    assert set(targets.loc[targets["source"] == "test", "id"]) == test_ids
    assert not set(val_ids) & test_ids and set(val_ids) == set(teacher_val)
    assert not set(val_ids) & set(targets["id"])
    assert record["rows"] == {"train": int((targets["source"] == "train").sum()), "test": len(test_ids)}
    assert sorted(record["teacher_members"]) == sorted(json.loads((source / "predict.json").read_text())["members"])
    # The test targets are the submitted ensemble's test probabilities.
    ids, probs, _ = read_predictions(source / "ensemble_test.csv")
    test_rows = targets[targets["source"] == "test"].set_index("id")
    np.testing.assert_allclose(test_rows.loc[ids].iloc[:, 1:].to_numpy(float), probs, atol=1e-6)
    manifest = json.loads((member / "member.json").read_text())
    assert manifest["recipe"]["teacher"]["kind"] == "pseudo"
    # generation 1 vs generation 2 in the report: the new generation's submission as one compared row
    from pipeline.report.build import compute_report

    gen2 = _predict(root, demo_slice, root / "gen2", "tta=none", "ensemble=mean")
    df, summary, _ = compute_report(source, n_boot=50, compare=[gen2])
    assert summary["compared"][0]["kind"] == "generation 2 (pseudo-labelled)"
    assert (df["kind"] == "generation 2 (pseudo-labelled)").sum() == 1


def test_distilled_student_is_an_ordinary_member(teacher: tuple[Path, Path], demo_slice: Path) -> None:
    from pipeline.predict.api import predict_images

    root, source = teacher
    train(_member_cfg(root, demo_slice, "student", "teacher=distill", f"teacher.source={source}",
                      "teacher.temperature=2", "teacher.alpha=0.7", "teacher.threshold=0.0"))
    member = next((root / "student").glob("lenet5-*"))
    targets = pd.read_csv(member / "teacher_targets.csv", dtype={"id": str})
    soft = targets.iloc[:, 2:].to_numpy(float)
    assert not np.isnan(soft).any() and np.allclose(soft.sum(axis=1), 1.0, atol=1e-5)
    assert (targets["source"] == "train").sum() == json.loads((member / "teacher.json").read_text())["rows"]["train"]
    pred = predict_images(root / "student", demo_slice / "test", policy="none")
    assert pred.probs.shape == (60, 10) and np.allclose(pred.probs.sum(axis=1), 1.0, atol=1e-5)


def test_the_member_hash_follows_the_source_contents(teacher: tuple[Path, Path], demo_slice: Path,
                                                      tmp_path: Path) -> None:
    from pipeline.cli.train import train_spec
    from pipeline.train.identity import member_hash

    root, source = teacher
    copy = tmp_path / "gen1"
    shutil.copytree(source.parent, copy, ignore=shutil.ignore_patterns("predictions"))
    cfg = _member_cfg(root, demo_slice, "x", "teacher=pseudo", f"teacher.source={copy / 'predict'}")
    before = member_hash(spec := train_spec(cfg), {})
    frame = pd.read_csv(copy / "predict" / "ensemble_test.csv", dtype={"id": str})
    frame.iloc[0, 1:] = frame.iloc[0, 1:][::-1].to_numpy()
    frame.to_csv(copy / "predict" / "ensemble_test.csv", index=False)
    assert spec.teacher is not None and spec.teacher.digest
    assert member_hash(train_spec(cfg), {}) != before


def test_bad_teacher_sources_are_refused_before_anything_is_written(
    teacher: tuple[Path, Path], demo_slice: Path, tmp_path: Path
) -> None:
    root, source = teacher
    pseudo = ("teacher=pseudo",)
    assert "no predict.json" in _refused(root, demo_slice, "b1", *pseudo, f"teacher.source={tmp_path}")
    broken = tmp_path / "gen1"
    shutil.copytree(source.parent, broken, ignore=shutil.ignore_patterns("predictions"))
    (broken / "predict" / "ensemble_test.csv").rename(broken / "predict" / "kept.csv")
    assert "no test probabilities" in _refused(root, demo_slice, "b2", *pseudo, f"teacher.source={broken / 'predict'}")
    (broken / "predict" / "kept.csv").rename(broken / "predict" / "ensemble_test.csv")
    # another competition: other test ids, other classes
    frame = pd.read_csv(broken / "predict" / "ensemble_test.csv", dtype={"id": str})
    frame.assign(id="x" + frame["id"]).to_csv(broken / "predict" / "ensemble_test.csv", index=False)
    message = _refused(root, demo_slice, "b3", *pseudo, f"teacher.source={broken / 'predict'}")
    assert "test ids" in message and "60 of them missing" in message
    record = json.loads((source / "predict.json").read_text())
    (broken / "predict" / "predict.json").write_text(json.dumps({**record, "classes": record["classes"][::-1]}))
    assert "classes" in _refused(root, demo_slice, "b4", *pseudo, f"teacher.source={broken / 'predict'}")
    # a threshold no test image reaches; a split the teacher was not validated on
    message = _refused(root, demo_slice, "b5", *pseudo, f"teacher.source={source}", "teacher.threshold=0.9999")
    assert "selects no test image" in message and "largest top probability" in message
    message = _refused(root, demo_slice, "b6", *pseudo, f"teacher.source={source}", "data.holdout_fraction=0.3")
    assert "none of its 2 members was validated on this member's" in message
    assert "aug.mixup" in _refused(root, demo_slice, "b7", *pseudo, f"teacher.source={source}", "aug.mixup=0.2")


@pytest.mark.parametrize(("key", "value", "expected"), [
    ("kind", "teach", "teacher.kind='teach'"), ("temperature", 0, "teacher.temperature=0"),
    ("alpha", 1.5, "teacher.alpha=1.5"), ("threshold", 1.0, "would select no test image"),
    ("targets", "sharp", "teacher.targets='sharp'"), ("source", "", "teacher.source is not set"),
])
def test_bad_teacher_settings_name_the_key(key: str, value: object, expected: str) -> None:
    spec = TeacherSpec(kind="distill", source="somewhere")
    setattr(spec, key, value)
    with pytest.raises(ConfigError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        check_teacher(spec, softmax=True, mixing=False, loss="auto")
    with pytest.raises(ConfigError, match="one class per image"):
        check_teacher(TeacherSpec(kind="pseudo", source="s"), softmax=False, mixing=False, loss="auto")


def test_select_test_rows_names_the_best_probability() -> None:
    probs = np.array([[0.6, 0.4], [0.9, 0.1]])
    assert select_test_rows(probs, 0.8, "x").tolist() == [1]
    with pytest.raises(ConfigError, match="largest top probability is 0.9000"):
        select_test_rows(probs, 0.95, "x")


def test_teacher_loss_is_hinton_soft_term_plus_hard_term() -> None:
    torch.manual_seed(0)
    logits, soft = torch.randn(4, 3), torch.softmax(torch.randn(4, 3), -1)
    target = torch.tensor([0, 2, -1, 1])  # row 2: a test image, no label
    batch = {"soft": soft, "target": target, "soft_w": torch.tensor([0.7, 0.7, 1.0, 0.0]),
             "hard_w": torch.tensor([0.3, 0.3, 0.0, 1.0])}
    t = 2.0
    soft_ce = -(soft * F.log_softmax(logits / t, -1)).sum(-1) * t * t
    hard_ce = F.cross_entropy(logits, target.clamp(min=0), reduction="none")
    expected = (0.7 * soft_ce[:2] + 0.3 * hard_ce[:2]).sum() + soft_ce[2] + hard_ce[3]
    assert teacher_loss(logits, batch, t).item() == pytest.approx(expected.item() / 4, rel=1e-6)


@pytest.mark.slow
def test_distilled_student_predicts_exports_and_runs_from_a_kit(
    teacher: tuple[Path, Path], demo_slice: Path, tmp_path: Path
) -> None:
    from tests.packaging import build_wheel

    root, source = teacher
    train(_member_cfg(root, demo_slice, "kitstudent", "teacher=distill", f"teacher.source={source}"))
    predict = _predict(root, demo_slice, root / "kitstudent", "tta=none", "ensemble=mean")
    kit = tmp_path / "kit"
    run = dict(check=True, capture_output=True, text=True, cwd=tmp_path)
    subprocess.run([str(BIN / "pipeline-export"), str(root / "kitstudent"), "--predict-dir", str(predict), "--kit",
                    str(kit), "--wheel", str(build_wheel(tmp_path / "wheel"))], **run)  # type: ignore[call-overload]
    subprocess.run([sys.executable, str(kit / "predict.py"), "--images", str(demo_slice / "test"), "--sample",
                    str(demo_slice / "sample_submission.csv"), "--out", str(tmp_path / "kit.csv"), "--device", "cpu",
                    "--num-workers", "0"], **run)  # type: ignore[call-overload]
    assert (tmp_path / "kit.csv").read_bytes() == (predict / "submission.csv").read_bytes()


def test_report_puts_the_student_beside_the_ensemble_and_the_best_single_model(
    teacher: tuple[Path, Path], demo_slice: Path
) -> None:
    from pipeline.report.build import build_report, compute_report

    root, source = teacher
    train(_member_cfg(root, demo_slice, "repstudent", "teacher=distill", f"teacher.source={source}"))
    student = _predict(root, demo_slice, root / "repstudent", "tta=none", "ensemble=mean")
    df = build_report(source, n_boot=200, compare=[student])
    summary = json.loads((source / "report.json").read_text())
    (row,) = summary["compared"]
    assert row["kind"] == "student (distilled)" and row["forward_passes_per_image"] == 1
    hit = df[df["kind"] == "student (distilled)"].iloc[0]
    # the student's row is its own submission's OOF rows, paired with this report's baseline
    from pipeline.member.predictions import read_predictions as rp

    ids, probs, labels = rp(next((root / "repstudent").glob("lenet5-*")) / "val_predictions.csv")
    order = {i: n for n, i in enumerate(ids)}
    pr_ids = pd.read_csv(next((source / "oof").glob("*.csv")), dtype={"id": str})["id"]
    acc = float((probs[[order[i] for i in pr_ids]].argmax(1) == labels[[order[i] for i in pr_ids]]).mean())
    assert summary["metric"] == "accuracy"  # the demo slice's sample submission asks for a label
    assert hit["accuracy"] == pytest.approx(acc)
    assert not hit["best"] and not hit["submitted"]
    assert "Compared, student (distilled)" in summary["paragraph"]
    assert "student (distilled)" in (source / "report.md").read_text()
    with pytest.raises(ConfigError, match="the report's own predict folder"):
        compute_report(source, n_boot=50, compare=[source])
    with pytest.raises(ConfigError, match="No predict.json in"):
        compute_report(source, n_boot=50, compare=[root])


def test_a_k_fold_teacher_teaches_fold_k_with_its_fold_k_members_only(tmp_path: Path, demo_slice: Path) -> None:
    """The whole ensemble's test probabilities were made by fold 1's member too, which trained on fold 0's
    validation rows: fold 0 of the new generation must take its targets from fold 0's member alone."""
    from pipeline.member.folder import find_members
    from pipeline.predict.api import predict_images
    from pipeline.predict.tta import create_policy

    folds = ("data.n_folds=2",)
    for fold in (0, 1):
        train(_member_cfg(tmp_path, demo_slice, "kf", *folds, f"data.fold={fold}"))
    source = _predict(tmp_path, demo_slice, tmp_path / "kf", "tta=none", "ensemble=mean")
    train(_member_cfg(tmp_path, demo_slice, "kf2", *folds, "data.fold=0", "teacher=pseudo", f"teacher.source={source}"))
    member = next((tmp_path / "kf2").glob("lenet5-*-f0"))
    record = json.loads((member / "teacher.json").read_text())
    assert record["teacher_members"] == ["lenet5-s0-f0"] and record["test_targets"].startswith("the matched members")
    targets = pd.read_csv(member / "teacher_targets.csv", dtype={"id": str})
    test = targets[targets["source"] == "test"].set_index("id").iloc[:, 1:]
    fold0 = [m for m in find_members(tmp_path / "kf")[0] if m.name.endswith("-f0")]
    own = predict_images(fold0, demo_slice / "test", policy=create_policy("none"))
    np.testing.assert_allclose(test.loc[own.ids].to_numpy(float), own.probs, atol=1e-6)
    ids, whole, _ = read_predictions(source / "ensemble_test.csv")
    assert not np.allclose(test.loc[ids].to_numpy(float), whole, atol=1e-3)  # not the leaky whole ensemble
