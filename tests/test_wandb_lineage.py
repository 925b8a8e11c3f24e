"""W&B as users expect it, read back from the offline run files: lineage, the report's run, scores, aliases, tags.

One tiny real sweep: two LeNet-5 members logged to W&B and one trained with ``logger=csv``; then
``pipeline-predict`` (mean of the three, policy ``none``) and ``pipeline-report``, both with offline W&B.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import open_dict

from pipeline.cli import CONF_DIR
from pipeline.core.tracking import use_files_artifact
from pipeline.member.predictions import read_predictions
from tests.conftest import compose_train
from tests.helpers import train
from tests.wandb_records import logged

TINY = ["model=lenet5", "trainer=cpu", "trainer.max_epochs=1", "trainer.limit_train_batches=3", "data.batch_size=32",
        "data.num_workers=0", "trainer.enable_progress_bar=false", "experiment_name=w", "sweep_name=s"]
LOGGERS = {0: "wandb", 1: "wandb", 2: "csv"}  # seed → logger of that member


def _compose(name: str, overrides: list[str]) -> Any:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name=name, overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory, demo_slice: Path) -> Iterator[dict[str, Any]]:
    """The sweep, its predict folder, what every offline run recorded, and pipeline-predict's log lines."""
    import wandb

    from pipeline.cli.predict import run as predict
    from pipeline.cli.report import run as report

    root = tmp_path_factory.mktemp("lineage")
    trained = {}
    for seed, kind in LOGGERS.items():
        # the csv member trains on one batch: most likely the worst, so that `best` lands on a W&B member
        extra = ["logger.mode=offline"] if kind == "wandb" else ["trainer.limit_train_batches=1"]
        cfg = compose_train([*TINY, f"data.root={demo_slice}", f"paths.root={root}", f"seed={seed}", f"logger={kind}",
                             *extra])
        with open_dict(cfg):
            cfg.paths.output_dir = str(root / "w" / "s" / cfg.member_name)
        train(cfg)
        trained[seed] = Path(cfg.paths.output_dir)
    out = root / "w" / "s" / "predict"
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    watched = logging.getLogger("pipeline.cli.wandb_runs")
    watched.addHandler(handler)
    watched.setLevel(logging.INFO)
    try:
        predict(_compose("predict", [
            f"members={root / 'w' / 's'}", f"predict_dir={out}", f"data.root={demo_slice}", f"paths.root={root}",
            "tta=none", "policies=[none]", "device=cpu", "num_workers=0", "logger=wandb", "logger.mode=offline",
            "experiment_name=w", "sweep_name=s", "logger.tags=[mine]",
        ]))
        report(_compose("report", [f"predict_dir={out}", f"paths.root={root}", "n_boot=20", "logger.mode=offline"]))
    finally:
        watched.removeHandler(handler)
    wandb.teardown()  # finish() can return before the service has flushed the run files; teardown waits
    runs = {}
    for run_dir in (out / "wandb").glob("offline-run-*"):
        rec = logged(run_dir)
        runs[rec["job_type"]] = {**rec, "dir": run_dir}
    train_runs = {seed: logged(next((trained[seed] / "wandb").glob("offline-run-*")))
                  for seed, kind in LOGGERS.items() if kind == "wandb"}
    yield {"members": trained, "out": out, "runs": runs, "train": train_runs, "lines": lines}


def _model_oof(out: Path, member: Path) -> tuple[np.ndarray, np.ndarray]:
    """A member's model's OOF probabilities and labels, as pipeline-predict wrote them (policy none)."""
    (path,) = (out / "oof").glob(f"{member.name.rsplit('-', 1)[0]}__*.csv")
    _, probs, labels = read_predictions(path)
    assert labels is not None
    return probs, labels


def test_predict_run_uses_the_model_artifact_each_wandb_member_logged(sweep: dict[str, Any]) -> None:
    used = {a["name"]: a for a in sweep["runs"]["predict"]["artifacts"] if a["used"]}
    logged_by_training = {a["name"]: a for rec in sweep["train"].values() for a in rec["artifacts"]
                          if a["type"] == "model"}
    assert set(used) == set(logged_by_training) and len(used) == 2
    for name, artifact in used.items():  # the same contents: W&B resolves the use to the version training logged
        assert artifact["type"] == "model" and artifact["digest"] == logged_by_training[name]["digest"]
        assert artifact["files"] == ["model.json", "model.safetensors"]


def test_a_member_trained_without_wandb_is_skipped_with_one_line(sweep: dict[str, Any]) -> None:
    csv_member = sweep["members"][2].name
    assert not (sweep["members"][2] / "wandb").exists()
    about = [line for line in sweep["lines"] if csv_member in line]
    assert about == [f"Member {csv_member} logged no W&B model artifact (trained with logger=csv or none); "
                     "it is not recorded as an input of the predict run."]


def test_per_model_oof_scores_are_in_the_summary_and_a_table(sweep: dict[str, Any]) -> None:
    rec = sweep["runs"]["predict"]
    for member in sweep["members"].values():
        model = member.name.rsplit("-", 1)[0]
        probs, labels = _model_oof(sweep["out"], member)
        assert rec["summary"][f"oof/{model}/accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))
        nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-15, 1)).mean()
        assert rec["summary"][f"oof/{model}/log_loss"] == pytest.approx(nll, rel=1e-4)
    (row,) = [r for r in rec["rows"] if "oof/models" in r]
    table = json.loads((rec["dir"] / "files" / row["oof/models"]["path"]).read_text())
    assert table["columns"] == ["model", "members", "policy", "accuracy", "log_loss"]
    assert sorted(r[0] for r in table["data"]) == sorted(m.name.rsplit("-", 1)[0] for m in sweep["members"].values())


def test_confusion_matrix_of_the_submitted_mean_of_the_oof_rows(sweep: dict[str, Any]) -> None:
    rec = sweep["runs"]["predict"]
    oof = [_model_oof(sweep["out"], m) for m in sweep["members"].values()]
    labels = oof[0][1]
    pred = np.mean([p for p, _ in oof], axis=0).argmax(1)  # ensemble=mean: the submitted merge
    (row,) = [r for r in rec["rows"] if "oof/confusion_matrix_table" in r]
    table = json.loads((rec["dir"] / "files" / row["oof/confusion_matrix_table"]["path"]).read_text())
    classes = json.loads((sweep["members"][0] / "classes.json").read_text())
    counts = {(a, p): n for a, p, n in table["data"]}
    expected = {(classes[a], classes[p]): int(((labels == a) & (pred == p)).sum())
                for a in range(len(classes)) for p in range(len(classes))}
    assert counts == expected and sum(counts.values()) == len(labels)
    assert rec["summary"]["oof/ensemble/accuracy"] == pytest.approx(float((pred == labels).mean()))


def test_best_alias_on_the_members_of_the_best_model(sweep: dict[str, Any]) -> None:
    rec = sweep["runs"]["predict"]
    models = json.loads((sweep["out"] / "predict.json").read_text())["models"]  # model → members, in order
    scores = {model: rec["summary"][f"oof/{model}/accuracy"] for model in models}
    top = next(m for m in models if scores[m] == max(scores.values()))  # ties: the first model
    with_wandb = {sweep["members"][seed].name for seed, kind in LOGGERS.items() if kind == "wandb"}
    best = [a["name"] for a in rec["artifacts"] if a["used"] and "best" in a["aliases"]]
    assert best == [f"model-w-s-{member}" for member in models[top] if member in with_wandb]
    assert all("latest" in a["aliases"] for a in rec["artifacts"] if a["used"])


def test_report_is_its_own_run_in_the_predict_runs_group(sweep: dict[str, Any]) -> None:
    predict, report = sweep["runs"]["predict"], sweep["runs"]["report"]
    assert len(list((sweep["out"] / "wandb").glob("offline-run-*"))) == 2
    assert report["run_id"] != predict["run_id"]
    assert (report["group"], report["job_type"]) == ("w/s", "report") and predict["group"] == "w/s"
    assert report["tags"] == predict["tags"]
    assert any(key.startswith("report/table/") for key in report["history"]) and "report/best_row" in report["summary"]
    assert [a["name"] for a in report["artifacts"] if a["type"] == "report"] == ["report"]


def test_tags_from_the_experiment_on_train_predict_and_report_runs(sweep: dict[str, Any]) -> None:
    for rec in sweep["train"].values():
        assert rec["tags"] == ["w", "lenet5", "multiclass"]
    assert sweep["runs"]["predict"]["tags"] == ["mine", "w", "lenet5", "multiclass"]  # logger.tags first


def test_changed_weights_are_not_declared_an_input(tmp_path: Path) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"trained")
    record = {"name": "model-x", "type": "model", "files": ["model.safetensors"], "digest": "0" * 32}
    run = SimpleNamespace(settings=SimpleNamespace(mode="offline"))
    why = use_files_artifact(run, record, tmp_path)
    assert why == f"the files ['model.safetensors'] in {tmp_path} changed since artifact model-x was logged"
    assert use_files_artifact(run, {**record, "files": ["gone.bin"]}, tmp_path) == f"{tmp_path / 'gone.bin'} is missing"
