"""Progress display: a one-line bar on a terminal, plain log lines otherwise, nothing when quiet.

On a terminal the line always fits the terminal's width: the count (``37/1000``) and the ETA are kept, the bar
shrinks and the title is shortened first, then the statistics and the elapsed time are dropped. Without a
terminal (a log file, CI) a line is printed whenever the caller logs statistics and, in between, at least every
``heartbeat_s`` seconds of wall time, so a long phase never looks hung.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

from rich.cells import cell_len
from rich.console import Console
from rich.progress import Progress as RichProgress
from rich.progress import ProgressColumn, Task
from rich.text import Text

#: Seconds of wall time between two lines without a terminal when nothing else was printed.
HEARTBEAT_SECONDS = 30.0
_MAX_BAR, _MIN_BAR, _MIN_TITLE = 40, 10, 12


def format_duration(seconds: float | None) -> str:
    """``m:ss`` under an hour, ``h:mm:ss`` above, ``-:--`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "-:--"
    hours, rest = divmod(max(round(seconds), 0), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def _shorten(text: str, width: int) -> str:
    if cell_len(text) <= width:
        return text
    if width <= 1:
        return "…"[:width]
    while cell_len(text) > width - 1:
        text = text[:-1]
    return text + "…"


def fit_line(width: int, title: str, fraction: float, count: str, stats: list[str], elapsed: str,
             eta: str) -> Text:
    """``title bar count  stats  elapsed ETA eta`` in at most ``width`` cells (the count and the ETA are kept).

    Shrinks, in order: the bar (down to 10 cells), the title (down to 12), the statistics (last part first), the
    elapsed time, the bar, the rest of the title.
    """
    bar, stats, show_elapsed = _MAX_BAR, list(stats), True

    def plain() -> str:
        parts = [p for p in (title, "#" * bar, count) if p]
        text = " ".join(parts)
        for part in stats:
            text += "  " + part
        return text + ("  " + elapsed if show_elapsed else "") + (" " if text else "") + "ETA " + eta

    while (excess := cell_len(plain()) - width) > 0:
        if bar > _MIN_BAR:
            bar = max(_MIN_BAR, bar - excess)
        elif cell_len(title) > _MIN_TITLE:
            title = _shorten(title, max(_MIN_TITLE, cell_len(title) - excess))
        elif stats:
            stats.pop()
        elif show_elapsed:
            show_elapsed = False
        elif bar:
            bar = 0
        elif title:
            title = _shorten(title, cell_len(title) - excess) if cell_len(title) > excess + 1 else ""
        else:
            break
    line = Text(no_wrap=True, overflow="crop")
    if title:
        line.append(title + " ", style="bold")
    if bar:
        filled = min(bar, max(0, round(fraction * bar)))
        line.append("━" * filled, style="green")
        line.append("─" * (bar - filled) + " ", style="dim")
    line.append(count)
    for part in stats:
        line.append("  " + part)
    if show_elapsed:
        line.append("  " + elapsed, style="dim")
    line.append(" ETA " + eta, style="cyan")
    return line


class _LineColumn(ProgressColumn):
    """The whole progress line as one column, fitted to the console width at every refresh."""

    def __init__(self, owner: Progress) -> None:
        super().__init__()
        self.owner = owner

    def render(self, task: Task) -> Text:
        return self.owner.line(self.owner.console.width)


class Progress:
    """Shows a count (steps, sentences, batches), statistics, the elapsed time and the ETA.

    Args:
        total: steps (or other units) of the phase.
        start: step to start from (resumed runs); the rate and ETA count from there.
        enabled: False silences everything (``--quiet`` and non-zero ranks).
        title: shown before the bar.
        unit: what is counted; ``step`` reads ``train step 12/100``, anything else ``12/100 sentences``.
        summary: without a terminal, print a closing line (count, time, rate) on :meth:`close`.
        heartbeat_s: without a terminal, the longest wall time between two lines.
        console, interactive, clock: for tests (default: stderr, whether it is a terminal, ``time.monotonic``).
    """

    def __init__(self, total: int, start: int = 0, enabled: bool = True, title: str = "train", unit: str = "step",
                 summary: bool = False, heartbeat_s: float = HEARTBEAT_SECONDS, console: Console | None = None,
                 interactive: bool | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.interactive = enabled and (sys.stderr.isatty() if interactive is None else interactive)
        self.console = console or Console(stderr=True, width=None if self.interactive else 160)
        self.total, self.title, self.unit, self.summary = total, title, unit, summary
        self.heartbeat_s, self._clock = heartbeat_s, clock
        self._started = self._last_line = clock()
        self._start_step = self._done = self._printed = start
        self._stats = ""
        self._bar: RichProgress | None = None
        if self.interactive:
            self._bar = RichProgress(_LineColumn(self), console=self.console, transient=False)
            self._task = self._bar.add_task(title, total=total, completed=start)
            self._bar.start()

    # ---------------------------------------------------------------------------------------------------
    def elapsed(self) -> float:
        return self._clock() - self._started

    def rate(self) -> float | None:
        """Units per second since the start (None before the first one)."""
        done, elapsed = self._done - self._start_step, self.elapsed()
        return done / elapsed if done > 0 and elapsed > 0 else None

    def eta(self) -> float | None:
        rate = self.rate()
        return None if rate is None else max(self.total - self._done, 0) / rate

    def _count(self) -> str:
        return f"{self._done}/{self.total}" + ("" if self.unit == "step" else f" {self.unit}")

    def line(self, width: int) -> Text:
        """The terminal line, fitted to ``width`` cells."""
        fraction = self._done / self.total if self.total else 1.0
        stats = [part for part in self._stats.split("  ") if part]
        return fit_line(width, self.title, fraction, self._count(), stats, format_duration(self.elapsed()),
                        format_duration(self.eta()))

    def log_line(self) -> str:
        """The line printed without a terminal."""
        label = f"{self.title} step {self._count()}" if self.unit == "step" else f"{self.title} {self._count()}"
        stats = f"  {self._stats}" if self._stats else ""
        rate = self.rate()
        speed = "" if self.unit == "step" or rate is None else f"  {rate:,.1f} {self.unit}/s"
        return f"{label}{stats}{speed}  elapsed {format_duration(self.elapsed())}  eta {format_duration(self.eta())}"

    # ---------------------------------------------------------------------------------------------------
    def update(self, step: int, loss: float | None = None, lr: float | None = None,
               tokens_per_s: float | None = None, stats: str | None = None) -> None:
        """Move to ``step``. Training statistics (``loss`` ...) are printed as a log line without a terminal;
        ``stats`` replaces the shown statistics without forcing a line."""
        if not self.enabled:
            return
        self._done = step
        log = loss is not None
        if log:
            stats = f"loss {loss:.4f}  lr {lr or 0.0:.2e}  {tokens_per_s or 0.0:,.0f} tok/s"
        if stats is not None:
            self._stats = stats
        if self._bar is not None:
            self._bar.update(self._task, completed=step)
        elif log or self._clock() - self._last_line >= self.heartbeat_s:
            self._print_line()

    def _print_line(self) -> None:
        self.console.print(self.log_line(), highlight=False, soft_wrap=True)
        self._last_line, self._printed = self._clock(), self._done

    def note(self, message: str) -> None:
        if self.enabled:
            self.console.print(message, highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
        elif self.enabled and self.summary and self._printed != self._done:
            self._print_line()
