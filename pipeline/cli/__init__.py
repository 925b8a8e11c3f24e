"""The command lines: the only place that imports Hydra or OmegaConf.

Each ``main`` composes the config, turns it into typed objects and calls the library. The console
scripts start in :mod:`pipeline.cli.entry`, which answers ``--help`` before importing Hydra; torch,
Lightning and timm wait until a command actually runs.
"""

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
"""The configs shipped inside the package (``pipeline/conf``); users add theirs with ``--config-dir``."""
