"""Rich progress bars shared by every long-running step, and a clock of where the time goes."""

from __future__ import annotations

import threading
import time
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


class StageClock:
    """Seconds spent per named stage, summed over calls and threads (stages in different threads overlap)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._lock = threading.Lock()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] = self.seconds.get(name, 0.0) + seconds

