"""A built wheel runs on its own: configs and the demo subset ship inside it (Hydra issues #2125, #559)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import pipeline

REPO = Path(pipeline.__file__).resolve().parent.parent
_TOP_LEVEL_SKIP = {".venv", ".git", "outputs", "data", "multirun", "build", "dist", "wandb"}
_CACHES = shutil.ignore_patterns("*.egg-info", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def _skip(folder: str, names: list[str]) -> set[str]:
    """Run outputs and environments at the top of the checkout, and caches anywhere."""
    top = set(names) & _TOP_LEVEL_SKIP if Path(folder) == REPO else set()
    return top | set(_CACHES(folder, names))


def build_wheel(dest: Path) -> Path:
    """Build this package's wheel from a copy of the source tree (the checkout stays clean)."""
    src = dest / "src"
    shutil.copytree(REPO, src, ignore=_skip)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dest), str(src)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = dest.glob("pipeline-*.whl")
    return wheel


def fresh_venv(path: Path) -> Path:
    """A new virtual environment that sees this environment's dependencies, but not the source tree.

    A ``.pth`` line adds the current site-packages to ``sys.path`` without processing the ``.pth`` files
    in it, so the editable install of the source tree stays invisible there.
    """
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    query = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.run([str(path / "bin" / "python"), "-c", query],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "_deps_from_parent_env.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return path


def run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
           "WANDB_MODE": "offline"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc


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
