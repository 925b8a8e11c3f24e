"""Packaging helpers shared by the wheel and offline-kit tests: a built wheel, a fresh virtual environment."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pipeline
from pipeline.predict.kit import build_wheel as _build_wheel

REPO = Path(pipeline.__file__).resolve().parent.parent


def build_wheel(dest: Path) -> Path:
    """This package's wheel, built the way ``pipeline-export --kit`` builds it (the checkout stays clean)."""
    return _build_wheel(dest)


def fresh_venv(path: Path) -> Path:
    """A new virtual environment that sees this environment's dependencies, but not the source tree.

    A ``.pth`` file lists every ``site-packages`` folder of this interpreter (a worktree's venv may reach
    its dependencies through another venv's). Folders a ``.pth`` line adds are not scanned for ``.pth``
    files themselves, so the editable install of the source tree stays invisible there.
    """
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=300)
    where = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    purelib = Path(subprocess.run([str(path / "bin" / "python"), "-c", where], check=True, capture_output=True,
                                  text=True).stdout.strip())
    deps = [p for p in sys.path if p.endswith("site-packages")]
    (purelib / "_deps_from_parent_env.pth").write_text("".join(f"{p}\n" for p in deps))
    return path


def run(venv: Path, cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command with only ``venv``'s scripts on PATH, offline, in ``cwd``."""
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1", "WANDB_SILENT": "true",
           "WANDB_MODE": "offline", "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return proc
