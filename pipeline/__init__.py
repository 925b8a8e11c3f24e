"""Competition ensembling and test-time-augmentation pipeline for image classification.

The library, one sub-package per stage, imports running down the flow::

    core → data → models → member → train
                                  ↘ predict → submission → report      (cli on top: the only Hydra user)

The Python API, without Hydra (names resolve lazily, so ``import pipeline`` stays cheap)::

    pipeline.train_member(TrainSpec(...))           # one member folder
    pipeline.predict_images(members, "test/")       # probabilities of an ensemble on a folder or table
    pipeline.write_submission_file(prediction, ...)  # ... and the competition's file
    pipeline.fit_ensemble_weights(oof_probs, labels)
    pipeline.build_report("outputs/demo/demo/predict")

``import pipeline`` also registers the classic networks (``lenet5``, ``alexnet``, ``nin``) in timm's
registry: at once when timm is already imported, otherwise the moment timm is, so a command line that
never touches a model never pays for torch.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import ModuleType
from typing import Any

from pipeline.core.lazy import lazy_exports

__version__ = "0.2.0"

__getattr__, __dir__, __all__ = lazy_exports(
    __name__,
    {
        "train.spec": ["TrainSpec"],
        "train.fit": ["train_member"],
        "data.spec": ["DataSpec"],
        "models.spec": ["ModelSpec"],
        "predict.api": ["Prediction", "predict_images", "fit_ensemble_weights"],
        "submission.api": ["write_submission_file"],
        "report.build": ["build_report"],
    },
)


class _RegisterClassicNets(importlib.abc.MetaPathFinder):
    """Import hook: once ``timm`` has executed, import :mod:`pipeline.models.classic` (which registers the nets)."""

    def find_spec(self, fullname: str, path: Any, target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        sys.meta_path.remove(self)  # one shot; the real finders locate timm
        spec = importlib.util.find_spec("timm")
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        loader = spec.loader
        exec_timm = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            exec_timm(module)
            importlib.import_module("pipeline.models.classic")

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


if "timm" in sys.modules:
    importlib.import_module("pipeline.models.classic")
elif not any(isinstance(f, _RegisterClassicNets) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterClassicNets())
