"""Benchmark 7: command-line start-up — ``--help`` and ``--cfg job`` against a bare ``import hydra``.

Each contender is a fresh process, as a user (or a shell's Tab completion) starts it:

* **import hydra**: ``python -c "import hydra"``, the floor any Hydra application pays.
* **pipeline-predict --help**: answered from the config folders before Hydra is imported.
* **pipeline-train --cfg job**: Hydra composes ``train.yaml`` (data, model, aug, optimizer, scheduler,
  trainer, logger and launcher groups) and prints it; torch, Lightning and timm are never imported.
* **bare Hydra app --cfg job**: a ten-line ``@hydra.main`` script on the same packaged configs, with
  only our schemas and resolvers registered — what Hydra's composition itself costs for this config.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import cli, interleaved, log_progress, paired_ratio, target, timing_table

__all__ = ["run", "main"]

NAME = "cli"
_BARE_APP = '''
import hydra
from pipeline.cli import CONF_DIR
from pipeline.cli.config import register

register()
hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")(lambda cfg: None)()
'''


def _process(*argv: str) -> Any:
    def go() -> None:
        subprocess.run(list(argv), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    return go


def run(large: bool, repeats: int, workdir: Path) -> dict[str, Any]:
    """Time the four start-ups side by side."""
    bindir = Path(sys.executable).parent
    workdir.mkdir(parents=True, exist_ok=True)
    bare = workdir / "bare_hydra_app.py"
    bare.write_text(_BARE_APP)
    runs = {
        "import hydra": _process(sys.executable, "-c", "import hydra"),
        "pipeline-predict --help": _process(str(bindir / "pipeline-predict"), "--help"),
        "pipeline-train --cfg job": _process(str(bindir / "pipeline-train"), "--cfg", "job"),
        "bare Hydra app --cfg job": _process(sys.executable, str(bare), "--cfg", "job"),
    }
    repeats = max(repeats, 10 if large else 5)
    log_progress(NAME, f"{len(runs)} contenders × {repeats} repeats")
    times, _ = interleaved(runs, repeats)
    r_help = paired_ratio(times, "pipeline-predict --help", "import hydra")
    r_cfg = paired_ratio(times, "pipeline-train --cfg job", "import hydra")
    r_floor = paired_ratio(times, "bare Hydra app --cfg job", "import hydra")
    r_ours = paired_ratio(times, "pipeline-train --cfg job", "bare Hydra app --cfg job")
    return {
        "title": "Command-line start-up: --help and --cfg job vs a bare `import hydra`",
        "what": __doc__, "params": {"repeats": repeats},
        "tables": [timing_table("Fresh process each run", times, "import hydra", unit="run")],
        "targets": [
            target("pipeline-predict --help ÷ import hydra", "≤ 1.5×", r_help, r_help <= 1.5),
            target("pipeline-train --cfg job ÷ import hydra", "≤ 1.5×", r_cfg, r_cfg <= 1.5,
                   f"Hydra's own composition of this config costs {r_floor:.2f}× (bare Hydra app)"),
            target("pipeline-train --cfg job ÷ bare Hydra app --cfg job", "≤ 1.10×", r_ours, r_ours <= 1.10,
                   "what pipeline adds on top of Hydra"),
        ],
        "notes": [
            "Before the restructure, `pipeline-predict --help` took 8.5 s on this kind of machine (34× `import hydra`): "
            "every console script imported torch, Lightning and timm first, and Hydra's help deep-copies its config "
            "store once per config group.",
            f"`--cfg job` must compose the config, which a bare Hydra application on the same files does in "
            f"{r_floor:.2f}× the time of `import hydra`; the 1.5× target is below that floor.",
        ],
    }


def main() -> None:
    """CLI: ``python -m benchmarks.bench_cli``."""
    cli(NAME, run, __doc__ or NAME)


if __name__ == "__main__":
    main()
