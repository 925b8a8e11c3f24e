"""Known third-party noise, silenced at its source by exact message, so the pipeline's own lines stand out.

Each filter names one message of one library; anything else those libraries say still shows:

- Lightning's ``_pytree`` touches torch's deprecated ``LeafSpec`` on every batch transfer (a FutureWarning
  about Lightning's code, not ours, which a user cannot act on);
- Lightning's ``💡 Tip:`` lines advertise its paid services at every ``Trainer``.

W&B's ``wandb:`` lines are turned off in its settings (:mod:`pipeline.core.tracking`).
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_third_party"]

_TIP_LOGGERS = ("pytorch_lightning.utilities.rank_zero", "lightning_fabric.utilities.rank_zero")


class _DropLightningTips(logging.Filter):
    """Drops Lightning's ``💡 Tip: ...`` advertisements (litlogger, litmodels)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_FILTER = _DropLightningTips()


def quiet_third_party() -> None:
    """Install the filters (idempotent); call it in the process that trains, before the ``Trainer`` is built."""
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning,
                            module=r"pytorch_lightning\.utilities\._pytree")
    for name in _TIP_LOGGERS:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)
