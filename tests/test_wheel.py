"""A built wheel runs on its own: configs and the demo subset ship inside it (Hydra issues #2125, #559)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.packaging import REPO, build_wheel, fresh_venv, run


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_source_tree(tmp_path: Path) -> None:
    wheel = build_wheel(tmp_path / "dist")
    venv = fresh_venv(tmp_path / "venv")
    # The new environment's own pip, from the wheel file alone (no index).
    subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, timeout=300)
    work = tmp_path / "work"
    work.mkdir()
    py = str(venv / "bin" / "python")
    where = run(venv, work, py, "-c", "import pipeline, pathlib; print(pathlib.Path(pipeline.__file__).resolve())").stdout
    assert Path(where.strip()).is_relative_to(venv) and not Path(where.strip()).is_relative_to(REPO)

    help_text = run(venv, work, "pipeline-train", "--help").stdout
    assert "model: " in help_text and "lenet5" in help_text and "experiment: demo" in help_text
    job = run(venv, work, "pipeline-train", "--cfg", "job").stdout  # Hydra finds the packaged configs
    assert "member_name:" in job and "name: resnet10t" in job

    run(venv, work, "pipeline-demo-data", "--n-train", "200", "--n-test", "20")
    common = ["logger=none", "experiment_name=w", "sweep_name=s"]
    run(venv, work, "pipeline-train", "trainer=cpu", "model=lenet5", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "data.num_workers=0", *common)
    run(venv, work, "pipeline-predict", "device=cpu", "num_workers=0", "policies=[none]", *common)
    submission = work / "outputs" / "w" / "s" / "predict" / "submission.csv"
    lines = submission.read_text().splitlines()
    assert lines[0] == "id,label" and len(lines) == 21

    # pipeline-export --kit, installed from a wheel: ships the wheel file pip recorded, or says to pass --wheel.
    run(venv, work, "pipeline-export", "outputs/w/s", "--kit", "kit")
    assert (work / "kit" / "wheels" / wheel.name).read_bytes() == wheel.read_bytes()
    wheel.unlink()
    gone = run(venv, work, "pipeline-export", "outputs/w/s", "--kit", "kit2", check=False)
    assert gone.returncode == 1 and "pass the wheel with --wheel PATH" in gone.stderr and "Traceback" not in gone.stderr
    assert not (work / "kit2").exists()
