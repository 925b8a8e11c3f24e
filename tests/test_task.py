"""The Task record (core/task.py) and the output heads and losses per task (models/heads.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline.core.errors import ConfigError
from pipeline.core.task import Task, strata
from pipeline.models.heads import OutputHead, head_for, resolve_loss, task_loss


def test_task_record_round_trips_and_describes_its_outputs() -> None:
    task = Task("ordinal", ("diagnosis",), 0.0, 4.0, reason="declared")
    back = Task.from_dict(task.to_dict())
    assert back == task and back.reason == "declared"
    assert task.n_outputs == 1 and task.is_value and not task.softmax and task.grades.tolist() == [0, 1, 2, 3, 4]
    assert Task("multilabel", ("a", "b", "c")).n_outputs == 3
    assert Task.from_dict(None, ["x", "y"]) == Task("multiclass", ("x", "y"))  # a member from before tasks


@pytest.mark.parametrize(("kind", "columns", "low", "high", "match"), [
    ("segmentation", ("a",), None, None, "Unknown task"),
    ("binary", ("a", "b", "c"), None, None, "2 classes"),
    ("regression", ("a", "b"), None, None, "one output column"),
    ("regression", ("a",), 3.0, 1.0, "low < high"),
])
def test_task_refuses_what_cannot_be(kind: str, columns: tuple[str, ...], low: float | None, high: float | None,
                                     match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Task(kind, columns, low, high)


def test_strata_per_task() -> None:
    assert strata("multiclass", np.array([2, 0, 1])).tolist() == [2, 0, 1]
    # multi-label: the rarest positive label (rank 0 = rarest); rows without labels share the last stratum
    y = np.array([[1, 0, 1], [0, 0, 0], [1, 1, 0], [1, 0, 0]])
    assert strata("multilabel", y).tolist() == [1, 3, 0, 2]
    values = np.arange(100, dtype=float)
    bins = strata("regression", values, bins=4)
    assert sorted(np.bincount(bins).tolist()) == [25, 25, 25, 25] and (np.diff(bins) >= 0).all()
    assert strata("ordinal", np.array([0.0, 4.0, 2.0, 2.0])).tolist() == [0, 2, 1, 1]


def test_loss_auto_picks_the_tasks_loss_and_refuses_one_it_cannot_take() -> None:
    tags, value = Task("multilabel", ("a", "b")), Task("regression", ("y",), 0.0, 10.0)
    assert resolve_loss("auto", Task("multiclass", ("a", "b"))) == "cross_entropy"
    assert resolve_loss("auto", Task("multiclass", ("a", "b")), mixing=True) == "soft_target_cross_entropy"
    assert resolve_loss("auto", tags) == "bce" and resolve_loss("auto", value) == "mse"
    with pytest.raises(ConfigError, match=r"loss=cross_entropy cannot train a regression task.*mse, huber, bce_bounded"):
        resolve_loss("cross_entropy", value)
    with pytest.raises(ConfigError, match="data.target_range"):
        resolve_loss("bce_bounded", Task("regression", ("y",)))


def test_heads_map_logits_to_outputs_in_target_units() -> None:
    z = torch.tensor([[0.0], [2.0]])
    linear = head_for(Task("regression", ("y",)), "mse", np.array([4.0, 6.0, 8.0]))
    assert linear.activation == "linear" and linear.center == pytest.approx(6.0)
    assert linear(z)[:, 0].tolist() == pytest.approx([6.0, 6.0 + 2 * linear.scale])
    bounded = head_for(Task("regression", ("y",), 4.0, 12.0), "bce_bounded", None)
    assert bounded(z)[:, 0].tolist() == pytest.approx([8.0, 4.0 + 8.0 * float(torch.sigmoid(torch.tensor(2.0)))])
    assert torch.allclose(head_for(Task("multilabel", ("a",)), "bce", None)(z), torch.sigmoid(z))
    assert OutputHead.from_dict(None).rows_sum_to_one and OutputHead.from_dict(linear.to_dict()) == linear
    with pytest.raises(ValueError, match="positive scale"):
        OutputHead("linear", scale=0.0)


def test_task_losses_train_on_target_units() -> None:
    head = OutputHead("linear", center=6.0, scale=2.0)
    loss = task_loss("mse", head)
    y = torch.tensor([8.0, 4.0])
    assert float(loss(torch.tensor([[1.0], [-1.0]]), y)) == pytest.approx(0.0)  # standardised targets
    bounded = task_loss("bce_bounded", OutputHead("bounded", low=4.0, high=12.0))
    expected = F.binary_cross_entropy_with_logits(torch.zeros(2), torch.tensor([0.5, 0.0]))
    assert float(bounded(torch.zeros(2, 1), torch.tensor([8.0, 4.0]))) == pytest.approx(float(expected))
