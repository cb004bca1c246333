"""Progress bars (rich) that also work in notebooks and stay silent when disabled."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def progress_iter(items: Sequence[T] | Iterable[T], description: str, enabled: bool = True,
                  total: int | None = None) -> Iterator[T]:
    if not enabled:
        yield from items
        return
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), TimeRemainingColumn(), transient=False) as bar:
        task = bar.add_task(description, total=total)
        for item in items:
            yield item
            bar.advance(task)


class ProgressBar:
    """A rich bar with live fields (loss, Dice ...) for loops that report as they go; silent when
    disabled. ``fields`` maps a field name to its format, e.g. ``{"loss": "{:.4f}"}``."""

    def __init__(self, description: str, total: int, start: int = 0, fields: dict[str, str] | None = None,
                 enabled: bool = True):
        self.enabled, self.fields = enabled, dict(fields or {})
        if not enabled:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        text = " · ".join(f"{k} {{task.fields[_{k}]}}" for k in self.fields)
        self.p = Progress(TextColumn(f"[bold]{description}"), BarColumn(), MofNCompleteColumn(),
                          TextColumn(text), TimeRemainingColumn())
        self.p.start()
        self.task = self.p.add_task(description, total=total, completed=start,
                                    **{f"_{k}": "-" for k in self.fields})

    def update(self, completed: int, **values) -> None:
        if self.enabled:
            shown = {f"_{k}": self.fields[k].format(v) for k, v in values.items() if k in self.fields and v is not None}
            self.p.update(self.task, completed=completed, **shown)

    def close(self) -> None:
        if self.enabled:
            self.p.stop()
