"""Progress display: a rich progress bar on a terminal, plain log lines otherwise, nothing when quiet."""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """Shows step, loss, learning rate, tokens/s and ETA.

    Args:
        total: steps of the run.
        start: step to start from (resumed runs).
        enabled: False silences everything (``--quiet`` and non-zero ranks).
        title: shown before the bar.
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, title: str = "train") -> None:
        self.enabled = enabled
        self.interactive = enabled and sys.stderr.isatty()
        self.console = Console(stderr=True, width=None if self.interactive else 160)
        self.total, self.title = total, title
        self._bar: RichProgress | None = None
        self._started = time.perf_counter()
        self._start_step = start
        if self.interactive:
            self._bar = RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                     TimeRemainingColumn(), console=self.console, transient=False)
            self._task = self._bar.add_task(title, total=total, completed=start, stats="")
            self._bar.start()

    def update(self, step: int, loss: float | None = None, lr: float | None = None,
               tokens_per_s: float | None = None) -> None:
        if not self.enabled:
            return
        stats = None
        if loss is not None:
            stats = f"loss {loss:.4f}  lr {lr:.2e}  {tokens_per_s:,.0f} tok/s"
        if self._bar is not None:
            if stats is not None:
                self._bar.update(self._task, completed=step, stats=stats)
            else:
                self._bar.update(self._task, completed=step)
        elif stats is not None:
            done = step - self._start_step
            elapsed = time.perf_counter() - self._started
            eta = elapsed / max(done, 1) * (self.total - step)
            self.console.print(f"{self.title} step {step}/{self.total}  {stats}  eta {eta:.0f}s", highlight=False,
                               soft_wrap=True)

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
