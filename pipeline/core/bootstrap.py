"""The paired bootstrap's resampling: row resamples drawn in bounded chunks, and metric differences over them.

:func:`pipeline.core.metrics.paired_bootstrap` is the entry point; this module holds its machinery, which reads
a metric through the three forms a :class:`pipeline.core.metrics.Metric` may carry (``per_row``, ``weighted``,
``fn``), fastest first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

import numpy as np

__all__ = ["BootstrapResult", "boot_diffs", "resample_chunks"]

# Bound on the number of resampled indices held in memory at once (about 16 MB of int64).
_BOOT_CHUNK_ELEMS = 2_000_000


class Scorer(Protocol):
    """What the bootstrap reads of a metric (a :class:`pipeline.core.metrics.Metric`)."""

    @property
    def fn(self) -> Callable[[np.ndarray, np.ndarray], float]: ...

    @property
    def per_row(self) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None: ...

    @property
    def weighted(self) -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None: ...


@dataclass(frozen=True)
class BootstrapResult:
    """Outcome of :func:`pipeline.core.metrics.paired_bootstrap`.

    Attributes:
        diff: ``metric(a) - metric(b)`` on the full data.
        low: Lower percentile bound of the difference.
        high: Upper percentile bound of the difference.
        n_boot: Number of resamples.
    """

    diff: float
    low: float
    high: float
    n_boot: int

    @property
    def significant(self) -> bool:
        """Whether the interval excludes zero (read the sign with the metric's direction)."""
        return self.low > 0 or self.high < 0


def resample_chunks(rng: np.random.Generator, n_rows: int, n_boot: int) -> Iterator[np.ndarray]:
    """Yield ``[chunk, n_rows]`` row-index arrays, ``n_boot`` rows in total, bounded in memory."""
    per_chunk = max(1, _BOOT_CHUNK_ELEMS // n_rows)
    for start in range(0, n_boot, per_chunk):
        yield rng.integers(0, n_rows, size=(min(per_chunk, n_boot - start), n_rows))


def boot_diffs(
    metric: Scorer, labels: np.ndarray, probs_a: np.ndarray, probs_b: np.ndarray, n_boot: int, seed: int
) -> np.ndarray:
    """Metric differences over ``n_boot`` paired resamples (same rows for both models)."""
    rng = np.random.default_rng(seed)
    chunks = resample_chunks(rng, len(labels), n_boot)
    if metric.per_row is not None:
        row_diff = metric.per_row(labels, probs_a) - metric.per_row(labels, probs_b)
        return np.concatenate([row_diff[idx].mean(axis=1) for idx in chunks])
    if metric.weighted is not None:
        n = len(labels)
        out = []
        for idx in chunks:  # row counts of each resample: the same resamples as the other paths
            counts = np.bincount((idx + n * np.arange(len(idx))[:, None]).ravel(), minlength=idx.size)
            counts = counts.reshape(len(idx), n)
            out.append(metric.weighted(labels, probs_a, counts) - metric.weighted(labels, probs_b, counts))
        return np.concatenate(out)
    return np.array(
        [
            metric.fn(labels[idx], probs_a[idx]) - metric.fn(labels[idx], probs_b[idx])
            for chunk in chunks
            for idx in chunk
        ]
    )
