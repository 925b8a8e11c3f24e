"""The console scripts: answer ``--help`` at once, otherwise hand over to the command's Hydra ``main``.

Importing Hydra takes about a quarter of a second and composing its help several seconds; the help
here reads the config folders instead (:mod:`pipeline.cli.help`).
"""

from __future__ import annotations

import importlib

from pipeline.cli.help import print_help_if_asked

__all__ = ["train", "predict", "report"]

_COMMANDS = {
    "train": ("pipeline-train", "train one ensemble member (or a sweep of them with -m) into member folders."),
    "predict": ("pipeline-predict", "member folders → TTA × ensemble → a validated submission file."),
    "report": ("pipeline-report", "what the ensemble and TTA bought, with intervals and inference cost."),
}


def _start(command: str) -> None:
    app, summary = _COMMANDS[command]
    if not print_help_if_asked(app, command, summary):
        importlib.import_module(f"pipeline.cli.{command}").main()


def train() -> None:
    """``pipeline-train``."""
    _start("train")


def predict() -> None:
    """``pipeline-predict``."""
    _start("predict")


def report() -> None:
    """``pipeline-report``."""
    _start("report")
