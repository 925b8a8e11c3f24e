"""Lazy re-exports for package ``__init__`` files, so importing a package costs nothing until a name is used.

The command lines import config schemas from the stage packages before they parse their arguments;
with eager re-exports that would drag in torch, Lightning and timm (seconds) for ``--help``. Each
package ``__init__`` therefore lists its public names per module and resolves them on first access
(PEP 562), as ``scipy`` and ``lazy_loader`` do:

>>> __getattr__, __dir__, __all__ = lazy_exports(__name__, {"tables": ["ImageTable"]})  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: dict[str, list[str]]
) -> tuple[Callable[[str], Any], Callable[[], list[str]], list[str]]:
    """``__getattr__``, ``__dir__`` and ``__all__`` for ``package``, re-exporting ``exports``.

    Args:
        package: the package's ``__name__``.
        exports: sub-module name (relative to the package) → the public names it defines.

    Returns:
        The three module attributes; assign them in the package ``__init__``.
    """
    where = {name: f"{package}.{module}" for module, names in exports.items() for name in names}

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name]), name)
        setattr(sys.modules[package], name, value)  # later look-ups skip this function
        return value

    def __dir__() -> list[str]:
        return sorted(set(where) | set(vars(sys.modules[package])))

    return __getattr__, __dir__, list(where)
