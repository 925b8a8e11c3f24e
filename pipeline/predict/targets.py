"""What the members of one predict run predict: their task, checked to agree, and the settings it allows.

Members are untrusted input: each records its :class:`~pipeline.core.task.Task` in ``member.json`` (members
written before tasks existed are multiclass over their classes). One predict merges members of one task and
one set of output columns only; anything else would average unlike things.
"""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.core.errors import ConfigError, MemberError
from pipeline.core.task import Task
from pipeline.member.folder import Member
from pipeline.models.heads import OutputHead
from pipeline.predict.spec import PredictOptions

__all__ = ["VALUE_REDUCTIONS", "check_task_options", "member_head", "member_task", "members_task", "task_or_none"]

VALUE_REDUCTIONS = ("prob_mean", "median")
"""``tta.reduce`` values for outputs that are not class probabilities: the mean, or the median of the views."""


def member_task(member: Member) -> Task:
    """A member's recorded task; the error names its ``member.json``."""
    m = member.manifest
    try:
        task = Task.from_dict(m.task, list(m.classes))
    except (TypeError, ValueError) as err:
        raise MemberError(f"{member.path}/member.json: its 'task' record is not usable: {err}") from err
    if list(task.columns) != list(m.classes) or task.n_outputs != m.num_classes:
        raise MemberError(f"{member.path}/member.json: its task's columns {list(task.columns)} contradict its classes "
                          f"{list(m.classes)} or num_classes={m.num_classes}.")
    return task


def member_head(member: Member) -> OutputHead:
    """How a member's logits become its outputs; the error names its ``member.json``."""
    try:
        head = OutputHead.from_dict(member.manifest.output)
    except (TypeError, ValueError) as err:
        raise MemberError(f"{member.path}/member.json: its 'output' record is not usable: {err}") from err
    task = member_task(member)
    expected = {"multilabel": ("sigmoid",), "regression": ("linear", "bounded"), "ordinal": ("linear", "bounded")}
    if head.activation not in expected.get(task.kind, ("softmax",)):
        raise MemberError(f"{member.path}/member.json: output '{head.activation}' cannot make {task.kind} outputs.")
    return head


def members_task(members: Sequence[Member]) -> Task:
    """The one task of these members.

    Raises:
        MemberError: members of different tasks, output columns or target ranges, naming one of each.
    """
    first = member_task(members[0])
    for m in members[1:]:
        other = member_task(m)
        if not other.same_targets(first):
            raise MemberError(
                f"Members {members[0].name} ({first.kind}, columns {list(first.columns)[:6]}, range "
                f"[{first.low}, {first.high}]) and {m.name} ({other.kind}, columns {list(other.columns)[:6]}, range "
                f"[{other.low}, {other.high}]) predict different things; one predict merges members of one task "
                "and label set. Predict them separately."
            )
    return first


def check_task_options(task: Task, opts: PredictOptions) -> None:
    """Run options that only class probabilities can take.

    Raises:
        ConfigError: ``tta.reduce`` other than a mean or median for multi-label or value outputs.
    """
    if not task.softmax and opts.view_reduce not in VALUE_REDUCTIONS:
        raise ConfigError(f"tta.reduce={opts.view_reduce} merges class probabilities; this is a {task.kind} task. "
                          f"Accepted for {task.kind}: {', '.join(VALUE_REDUCTIONS)}.")
    if task.softmax and opts.view_reduce == "median":
        raise ConfigError("tta.reduce=median is for multi-label and value outputs; class probabilities merge with "
                          "prob_mean, logit_mean, geo_mean or max.")


def task_or_none(task: Task) -> Task | None:
    """None for class probabilities (the code paths of one class per image stay as they were), else the task."""
    return None if task.softmax else task
