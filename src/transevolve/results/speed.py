"""Training speed side by side: the rows of one task, a few training steps each, interleaved in rounds.

A cell's ``train_tokens_per_second`` is taken while the cell trains, and the cells of one task train in different
sessions, on hosts whose speed differed by up to 2x (the same ListOps cell at 34k and 18k tokens/s). A speed
claim that pairs such numbers measures the hosts. Here the rows of one comparison run in one process, one after
the other, each ``warmup + steps`` optimizer steps through the normal training loop (:func:`transevolve.train.loop.
train` with ``stop_at_step``: the cell's own data, batch, schedule, precision and dense backend), the ``steps``
after the warm-up timed. A round runs every row once; each round starts one row later than the one before, so no
row always goes first. A round gives one tokens/s per row, and the report pairs rows by round as it pairs cells by
seed (claim metric ``train_tokens_per_second_side_by_side``).

Record ``OUT/speed/<task>.json`` (``schema`` 1)::

    schema, suite, task, comparison, steps, warmup           what was measured
    rows {row: {cell, config, tokens_per_second [per round], step_seconds [per round, timed steps]}}
    order [[row, ...] per round], git, machine, date, seconds
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transevolve.provenance import git_state, machine_info
from transevolve.results.suite import Suite
from transevolve.train.config import RunConfig

SCHEMA = 1
METRIC = "train_tokens_per_second_side_by_side"
DEFAULT_COMPARISON = "equal-size"


def speed_path(out: Path, task: str) -> Path:
    return out / "speed" / f"{task}.json"


def measure_config(config: RunConfig, warmup: int, steps: int) -> RunConfig:
    """``config`` with evaluations and periodic checkpoints off (the training computation is unchanged)."""
    if warmup < 1 or steps < 1:
        raise ValueError(f"need warmup >= 1 and steps >= 1, got warmup={warmup}, steps={steps}")
    if warmup + steps > config.train.max_steps:
        raise ValueError(f"warmup + steps = {warmup + steps} exceeds the cell's train.max_steps "
                         f"({config.train.max_steps}); measure fewer steps")
    return dataclasses.replace(config, train=dataclasses.replace(config.train, eval_every=0, checkpoint_every=0,
                                                                  log_every=1))


def timed_rate(metrics: Path, warmup: int) -> tuple[float, list[float]]:
    """Tokens per second of the steps after the first ``warmup`` (>= 1) in a ``log_every: 1`` training log, and
    the seconds of each of those steps (from ``elapsed_s``: the loop's wall clock, logging included)."""
    if warmup < 1:
        raise ValueError(f"warmup must be >= 1 (the first timed step starts where a logged one ended), got {warmup}")
    rows = [r for r in map(json.loads, metrics.read_text().splitlines()) if r.get("split") == "train"]
    if len(rows) <= warmup:
        raise RuntimeError(f"{metrics} logged {len(rows)} steps; expected more than the {warmup} warm-up steps")
    timed = rows[warmup:]
    seconds = [row["elapsed_s"] - before["elapsed_s"] for before, row in zip(rows[warmup - 1:], timed, strict=False)]
    return sum(row["tokens"] for row in timed) / sum(seconds), seconds


def measure_task(suite: Suite, task: str, rows: list[str] | None = None, comparison: str = DEFAULT_COMPARISON,
                 rounds: int = 3, warmup: int = 3, steps: int = 10, log: Callable[[str], None] = print
                 ) -> dict[str, Any]:
    """Measure the training speed of ``rows`` (default: every row of ``comparison``) of ``task`` side by side
    (module docstring); returns the record (not written). Ctrl-C raises KeyboardInterrupt (nothing measured is kept:
    a record needs every round)."""
    from transevolve.results.cells import load_task_data
    from transevolve.train.loop import train

    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if comparison not in suite.comparisons:
        raise ValueError(f"unknown comparison {comparison!r}; the suite has {sorted(suite.comparisons)}")
    known = suite.rows(task, comparison)
    chosen = list(rows) if rows else list(known)
    unknown = [r for r in chosen if r not in known]
    if unknown:
        raise ValueError(f"{task} has no row(s) {unknown} in comparison {comparison!r}; its rows: {list(known)}")
    cells = {row: suite.cell(task, comparison, row) for row in chosen}
    configs = {row: suite.run_config(cell, 0) for row, cell in cells.items()}
    measured = {row: measure_config(config, warmup, steps) for row, config in configs.items()}
    data = load_task_data(next(iter(configs.values())))
    rates: dict[str, list[float]] = {row: [] for row in chosen}
    step_seconds: dict[str, list[list[float]]] = {row: [] for row in chosen}
    order = []
    start = time.monotonic()
    for index in range(rounds):
        shift = index % len(chosen)
        this_round = chosen[shift:] + chosen[:shift]
        order.append(this_round)
        for row in this_round:
            with tempfile.TemporaryDirectory(prefix="transevolve-speed-") as directory:
                run_dir = Path(directory) / "run"
                result = train(measured[row], run_dir, quiet=True, data=data, stop_at_step=warmup + steps)
                if result.steps < warmup + steps:       # Ctrl-C: the loop stopped early; record nothing
                    raise KeyboardInterrupt
                rate, seconds = timed_rate(run_dir / "metrics.jsonl", warmup)
            rates[row].append(rate)
            step_seconds[row].append(seconds)
            log(f"{task} round {index + 1}/{rounds} {row}: {rate:,.0f} tokens/s")
    return {"schema": SCHEMA, "suite": suite.source, "task": task, "comparison": comparison, "steps": steps,
            "warmup": warmup,
            "rows": {row: {"cell": cells[row].name, "config": configs[row].to_dict(), "tokens_per_second": rates[row],
                           "step_seconds": step_seconds[row]} for row in chosen},
            "order": order, "git": git_state(), "machine": machine_info(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "seconds": time.monotonic() - start}


def load_speed(out: Path, task: str) -> dict[str, Any] | None:
    """The record ``OUT/speed/<task>.json``, or None."""
    path = speed_path(out, task)
    return json.loads(path.read_text()) if path.is_file() else None


def read_speed(suite: Suite, record: dict[str, Any] | None, task: str, comparison: str, row: str) -> dict[int, float]:
    """``{round: tokens/s}`` of ``row`` from a task's speed ``record`` (:func:`load_speed`) when it was measured for
    ``comparison`` with the row's current configuration, else ``{}``."""
    from transevolve.results.cells import changed_fields

    if record is None or record.get("comparison") != comparison:
        return {}
    entry = record.get("rows", {}).get(row)
    if entry is None:
        return {}
    if changed_fields(entry["config"], suite.run_config(suite.cell(task, comparison, row), 0)):
        return {}
    return dict(enumerate(float(v) for v in entry["tokens_per_second"]))


def summary(values: dict[int, float]) -> float | None:
    """The median tokens/s over rounds."""
    return statistics.median(values.values()) if values else None
