"""One training per member folder at a time: a second process is refused before it writes anything."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import open_dict

from pipeline.member.lock import LOCK_FILE, MemberBusy
from pipeline.member.manifest import read_manifest
from tests.conftest import compose_train
from tests.helpers import files_under, train

HOLD = "import sys, time; from pipeline.member.lock import member_lock\nwith member_lock(sys.argv[1]):\n" \
       "    print('locked', flush=True); time.sleep(600)\n"


def _cfg(root: Path, data: Path) -> object:
    cfg = compose_train([
        "trainer=cpu", "logger=none", "model=lenet5", f"data.root={data}", "trainer.max_epochs=1",
        "trainer.enable_progress_bar=false", "trainer.limit_train_batches=3", "data.num_workers=0",
        "data.batch_size=32", f"paths.root={root}",
    ])
    with open_dict(cfg):
        cfg.paths.output_dir = str(root / "sw" / cfg.member_name)
    return cfg


def _holder(member: Path) -> subprocess.Popen[str]:
    """Another real process that holds the member's lock until killed."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(Path.cwd()), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(member)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    return proc


def test_second_training_of_a_member_is_refused_and_a_killed_holder_frees_it(tmp_path: Path, demo_slice: Path) -> None:
    cfg = _cfg(tmp_path, demo_slice)
    member = Path(cfg.paths.output_dir)
    holder = _holder(member)
    try:
        before = files_under(member)
        with pytest.raises(MemberBusy, match=rf"Member folder {member} is being trained by another process \(held by "
                                             rf"pid {holder.pid} on "):
            train(cfg)
        assert files_under(member) == before == {LOCK_FILE: before[LOCK_FILE]}  # no error.txt, no member.json
    finally:
        holder.send_signal(signal.SIGKILL)  # dies without any clean-up: the OS releases its lock
        holder.wait()
    metrics = train(cfg)
    assert read_manifest(member).status == "completed" and metrics["n_val"] == 120
    assert not (member / "error.txt").exists() and not (member / LOCK_FILE).exists()


def test_two_real_trainings_of_one_member_at_once(tmp_path: Path, demo_slice: Path) -> None:
    """Two real pipeline-train processes: one trains the member, the other stops naming the folder."""
    env = {**os.environ, "PYTHONPATH": str(Path.cwd()), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    args = ["trainer=cpu", "logger=none", "model=lenet5", f"data.root={demo_slice}", "trainer.max_epochs=1",
            "trainer.enable_progress_bar=false", "data.num_workers=0", "data.batch_size=16", f"paths.output_root={out}",
            "experiment_name=lock", "sweep_name=s"]
    cmd = [str(Path(sys.executable).parent / "pipeline-train"), *args]
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=tmp_path)
    deadline = time.time() + 120
    locks: list[Path] = []
    while not locks and time.time() < deadline and first.poll() is None:
        locks = list(out.glob(f"lock/s/*/{LOCK_FILE}")) if out.exists() else []
        time.sleep(0.05)
    assert locks, "the first training never took its lock"
    first.send_signal(signal.SIGSTOP)  # paused while holding the lock, so the second surely meets it
    try:
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    finally:
        first.send_signal(signal.SIGCONT)
    first_out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, first_out[-2000:]
    assert second.returncode != 0
    member = locks[0].parent
    assert f"Member folder {member} is being trained by another process" in second.stderr + second.stdout
    assert read_manifest(member).status == "completed" and not (member / "error.txt").exists()
