"""Rich progress bars shared by every long-running step."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True)


def progress_bar(*extra_columns, disable: bool = False) -> Progress:
    """A bar on stderr: description, bar, done/total, elapsed, remaining, then any extra columns."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        *extra_columns,
        console=console,
        transient=False,
        disable=disable,
    )


@contextmanager
def record_spinner(description: str, every: int = 5000) -> Iterator[Callable[[], None]]:
    """A spinner that counts records read; yields a tick() to call once a record."""
    # off a terminal a transient spinner shows nothing and leaves a blank line: disable it there
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TextColumn("{task.completed} records"),
                  TimeElapsedColumn(), console=console, transient=True,
                  disable=not console.is_terminal) as progress:
        task = progress.add_task(description, total=None)
        count = 0

        def tick() -> None:
            nonlocal count
            count += 1
            if count % every == 0:
                progress.update(task, completed=count)

        yield tick
