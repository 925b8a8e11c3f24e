"""Choosing the ★ row without fooling oneself: a nested, cross-fitted pick among the report's rows.

The report scores a couple of dozen rows (models × policies × ensemble kinds) on the same OOF rows.
The row that scores best there is partly best by luck, and its score is optimistic (the winner's
curse; Cawley & Talbot, JMLR 2010). The nested rule judges the *choosing* instead:

1. split the OOF rows into stratified parts (:func:`pipeline.predict.fitting.split`, the one seeded split
   every cross-fitted score uses);
2. for each part, pick the row that scores best on the *other* parts, and take that row's predictions
   for the held part;
3. the concatenation of those held-out picks is scored and bootstrapped against the baseline.

The ★ row is the row picked in most parts (ties: the cheaper, then the earlier row). Its nested score
says what "take the best-looking row" is worth on rows the choice never saw.

>>> import numpy as np
>>> from pipeline.core.metrics import get_metric
>>> y = np.array([0, 1] * 10)
>>> good, bad = np.eye(2)[y], np.eye(2)[1 - y]
>>> nested_pick([bad, good], y, get_metric("accuracy")).chosen
1
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.core.metrics import Metric
from pipeline.predict.fitting import split

NESTED_PARTS = 5
"""Parts of the nested pick."""

__all__ = ["NESTED_PARTS", "NestedPick", "nested_pick"]


@dataclass
class NestedPick:
    """The outcome of :func:`nested_pick`.

    Attributes:
        probs: ``[N, K]``: each row predicted by the candidate picked without that row's part.
        picks: Index of the candidate picked for each part, in part order.
        chosen: The candidate picked in most parts (ties: the earliest in the order given).
        parts: The part of each row.
    """

    probs: np.ndarray
    picks: list[int]
    chosen: int
    parts: np.ndarray

    @property
    def votes(self) -> int:
        """In how many parts :attr:`chosen` was picked."""
        return self.picks.count(self.chosen)


def nested_pick(
    candidates: Sequence[np.ndarray], labels: np.ndarray, metric: Metric, n_parts: int = NESTED_PARTS,
    seed: int = 0,
) -> NestedPick:
    """Pick the best candidate on all parts but one, score it on that one; repeat for every part.

    Args:
        candidates: ``[N, K]`` probabilities of every candidate row, in preference order (cheapest first:
            ties in score or in votes go to the earlier candidate).
        labels: ``[N]`` integer labels.
        metric: The metric rows are chosen by (its direction is respected).
        n_parts: Number of stratified parts, at least 2.
        seed: Seed of the split (:func:`pipeline.predict.fitting.split`).

    Returns:
        The held-out picks and the row picked most often.
    """
    if not candidates:
        raise ValueError("nested_pick needs at least one candidate row")
    parts = split(labels, n_parts, seed)
    out = np.empty_like(np.asarray(candidates[0], dtype=np.float64))
    picks = []
    for part in range(n_parts):
        fit, held = parts != part, parts == part
        scores = np.array([metric(labels[fit], np.asarray(c)[fit]) for c in candidates])
        best = int(np.argmax(scores) if metric.greater_is_better else np.argmin(scores))  # ties: the first
        picks.append(best)
        out[held] = np.asarray(candidates[best])[held]
    votes = Counter(picks)
    chosen = min(votes, key=lambda i: (-votes[i], i))
    return NestedPick(out, picks, chosen, parts)
