"""Progress bars for every step a user waits through: one helper, :func:`progress`, over rich.

A bar is drawn only when it helps: on a terminal. When stderr is not a terminal (CI logs, a file, a
pipe) nothing is drawn, so logs stay readable. ``PIPELINE_PROGRESS=1`` forces bars on, ``=0`` off.

>>> for batch in progress(loader, total=len(table), desc="Predicting test", unit="img", size=len):  # doctest: +SKIP
...     ...
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

__all__ = ["ENV", "progress", "progress_enabled"]

T = TypeVar("T")

ENV = "PIPELINE_PROGRESS"
"""Environment variable: ``1`` draws bars even without a terminal, ``0`` never draws them."""


def progress_enabled(force: bool | None = None) -> bool:
    """Whether bars are drawn: ``force`` when given, else :data:`ENV` when set, else whether stderr is a terminal."""
    if force is not None:
        return force
    env = os.environ.get(ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def progress(
    iterable: Iterable[T], total: int | None, desc: str, unit: str = "it", size: Callable[[T], int] | None = None,
    force: bool | None = None,
) -> Iterator[T]:
    """Yield the items of ``iterable`` while a rich bar on stderr shows done/total, the rate and the time left.

    Args:
        iterable: The work, item by item.
        total: Units of work in all (images, rows, resamples); None when unknown.
        desc: What is being done ("Predicting test (2 members × ten_crop)").
        unit: Name of a unit, for the rate ("img" → "img/s").
        size: Units in one item (e.g. images in a batch); None: one per item.
        force: Draw (True) or never draw (False) whatever the terminal; None: :func:`progress_enabled`.
    """
    if not progress_enabled(force):
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column

    # The description takes what the other columns leave and is cut with "…", so the count, rate and time
    # left stay whole on a narrow terminal (rich would otherwise squeeze every column alike).
    columns = (TextColumn("{task.description}", table_column=Column(ratio=1, no_wrap=True, overflow="ellipsis")),
               BarColumn(bar_width=24), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    console = Console(file=sys.stderr, force_terminal=True if force or not sys.stderr.isatty() else None)
    with Progress(*columns, console=console, transient=False, expand=True) as bar:
        task = bar.add_task(desc, total=total, rate="")
        for item in iterable:
            yield item
            bar.advance(task, 1 if size is None else size(item))
            speed = bar.tasks[0].speed
            bar.update(task, rate=f"{speed:,.0f} {unit}/s" if speed else "")
