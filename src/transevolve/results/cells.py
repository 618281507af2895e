"""Running the suite's cells: train through the normal recipe, measure, write one JSON record per cell.

Layout under the output directory ``OUT`` (default ``results/``)::

    OUT/cells/<task>/<cell>/seed-<k>.json      the record of a finished cell (committed)
    OUT/runs/<task>/<cell>/seed-<k>/           its run directory (checkpoints; ignored by git: OUT/runs/.gitignore)

``<cell>`` is the row name, ``<row>@w<width>`` for a row trained at a matched width, ``<row>@curve`` for a task's
learning-curve run. A finished cell is never trained again; a cell whose run directory exists resumes from its last
checkpoint (exactly: the same parameters as an uninterrupted run). With a deadline (``--max-hours``), a cell trains
in segments of ``train.eval_every`` steps and stops at the first segment boundary past the deadline (its checkpoint
is kept; the next invocation resumes it), so that the suite runs in pieces of bounded length.

The record of a cell (``schema`` 1)::

    schema, suite, task, row, cell, width, seed, metric           what was run (``metric``: the headline)
    validation, test                                              every metric of the best checkpoint, per split
    steps, max_steps, best_step, tokens                           optimizer steps taken, the budget, the checkpoint
                                                                  evaluated, input tokens seen (padding included)
    train_seconds                                                 the training loop (evaluations and checkpoints
                                                                  included, final evaluation excluded)
    wall_seconds                                                  the whole cell on this machine (data loading, all
                                                                  segments, final evaluation, measurements)
    train_tokens_per_second, inference_tokens_per_second          training throughput (optimizer steps only); the
    inference                                                     median of timed forward passes on a test batch
    parameters                                                    {embedding, encoder, decoder, head, total,
                                                                  non_embedding}
    flops_per_token, flops_sequence_length, training_flops        analytic forward FLOPs per token (bench.flops) at
                                                                  the mean training length; training FLOPs =
                                                                  3 x forward x tokens (per token pair for seq2seq)
    learning_curve                                                {metric, step, value, loss}: the validations of
                                                                  the run (metrics.jsonl)
    git {commit, dirty}, machine {...}, date, config, resolved_model
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transevolve.provenance import git_state, machine_info, write_json_atomically
from transevolve.results.suite import Cell, Suite
from transevolve.train.config import RunConfig

SCHEMA = 1
INFERENCE_REPEATS = 5


def cell_path(out: Path, cell: Cell, seed: int) -> Path:
    return out / "cells" / cell.task / cell.name / f"seed-{seed}.json"


def run_path(out: Path, cell: Cell, seed: int) -> Path:
    return out / "runs" / cell.task / cell.name / f"seed-{seed}"


def read_record(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict):
        flat: dict[str, Any] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix[:-1]: data}


def changed_fields(recorded: dict[str, Any], config: RunConfig) -> list[str]:
    """The dotted config fields in which a cell's record differs from the suite's current configuration."""
    old = _flatten(recorded)
    new = _flatten(json.loads(json.dumps(config.to_dict())))
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


@dataclass
class Outcome:
    """What happened to a cell: ``done`` (trained now), ``finished`` (recorded before), ``stale`` (recorded with
    another configuration: ``changed`` names the fields), ``interrupted`` (Ctrl-C) or ``deadline``."""

    status: str
    record: dict[str, Any] | None = None
    changed: list[str] = field(default_factory=list)


def load_task_data(config: RunConfig) -> Any:
    """The task's data (loaded once per cell and shared by its training segments and measurements)."""
    from transevolve.tasks import get_task

    return get_task(config.task.name, **config.task.options).load(config.task.seed)


def _wall_file(directory: Path) -> Path:
    return directory.with_name(directory.name + ".wall.json")


def _trainer_state(directory: Path) -> dict[str, Any]:
    from transevolve.train.state import STATE_FILE

    path = directory / "checkpoints" / "last" / STATE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _segment_steps(config: RunConfig) -> int:
    return config.train.eval_every or 500


def run_cell(suite: Suite, out: Path, cell: Cell, seed: int, overrides: list[str] | None = None,
             quiet: bool = False, deadline: float | None = None) -> Outcome:
    """Train and evaluate one cell unless it is finished (see the module docstring); ``deadline`` is a
    ``time.monotonic()`` value after which no segment starts."""
    from transevolve.train.loop import train

    config = suite.run_config(cell, seed, overrides)
    record = read_record(cell_path(out, cell, seed))
    if record is not None:
        changed = changed_fields(record["config"], config)
        return Outcome("stale" if changed else "finished", record, changed)
    if deadline is not None and time.monotonic() > deadline:
        return Outcome("deadline")
    directory = run_path(out, cell, seed)
    ignore = out / "runs" / ".gitignore"
    if not ignore.is_file():
        ignore.parent.mkdir(parents=True, exist_ok=True)
        ignore.write_text("# run directories (checkpoints) of the results suite: never committed\n*\n")
    wall_file = _wall_file(directory)
    wall = json.loads(wall_file.read_text())["seconds"] if wall_file.is_file() else 0.0
    start = time.monotonic()
    data = load_task_data(config)
    while True:
        resume = directory.is_dir() and any(directory.iterdir())
        stop = None
        if deadline is not None:
            done = int(_trainer_state(directory).get("step", 0)) if resume else 0
            boundary = (done // _segment_steps(config) + 1) * _segment_steps(config)
            stop = boundary if boundary < config.train.max_steps else None
        result = train(config, directory, quiet=quiet, resume=resume, data=data, stop_at_step=stop)
        write_json_atomically(wall_file, {"seconds": wall + time.monotonic() - start})
        if not result.interrupted:
            break
        if stop is None or result.steps < stop:
            return Outcome("interrupted")
        if time.monotonic() > deadline:  # type: ignore[operator]
            return Outcome("deadline")
    record = build_record(suite, cell, seed, config, result, data, directory)
    record["wall_seconds"] = wall + time.monotonic() - start
    write_json_atomically(cell_path(out, cell, seed), record)
    write_json_atomically(wall_file, {"seconds": record["wall_seconds"]})
    return Outcome("done", record)


def _mean_length(data: Any) -> int:
    return max(1, round(statistics.fmean(data.splits["train"].lengths)))


def learning_curve(directory: Path, metric: str) -> dict[str, Any]:
    """The validation metric (``metric`` when the periodic validations report it, else the training headline)
    and loss at every evaluation step of a run."""
    from transevolve.train.plots import read_metrics

    rows = [r for r in read_metrics(directory) if r.get("split") == "validation"]
    if rows and metric not in rows[-1]:
        metric = next((m for m in ("generated_accuracy", "accuracy", "token_accuracy") if m in rows[-1]), metric)
    return {"metric": metric, "step": [r["step"] for r in rows], "value": [r.get(metric) for r in rows],
            "loss": [r.get("loss") for r in rows]}


def measure_inference(directory: Path, data: Any, config: RunConfig, repeats: int = INFERENCE_REPEATS
                      ) -> dict[str, Any]:
    """Input tokens per second of forward passes (no gradient, eval mode) of the best checkpoint on the first test
    batch: one warm-up pass, then the median of ``repeats`` timed passes."""
    import torch

    from transevolve.checkpoint import load_model
    from transevolve.tasks import collate
    from transevolve.train.loop import select_device
    from transevolve.train.objectives import forward_loss

    device = select_device(config.train.device)
    model = load_model(directory / "checkpoints" / "best").to(device).eval()
    split = data.splits["test"]
    size = min(len(split), config.train.batch_size)
    batch = {k: v.to(device) for k, v in collate([split[i] for i in range(size)]).items()}
    tokens = sum(int(t.numel()) for k, t in batch.items() if k in ("ids", "src", "tgt"))
    seconds = []
    with torch.inference_mode():
        for index in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            forward_loss(model, batch, data.kind)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index:
                seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {"tokens_per_second": tokens / median, "median_seconds": median, "repeats": repeats,
            "batch_examples": size, "batch_tokens": tokens, "device": str(device)}


def build_record(suite: Suite, cell: Cell, seed: int, config: RunConfig, result: Any, data: Any,
                 directory: Path) -> dict[str, Any]:
    """The JSON record of a finished cell (fields in the module docstring)."""
    from transevolve.bench.flops import flops_per_token
    from transevolve.params import count_parameters
    from transevolve.schemes import get_scheme

    spec = suite.tasks[cell.task]
    state = _trainer_state(directory)
    tokens = int(state["tokens_seen"]) + int(state.get("window_tokens", 0)) if state else None
    length = _mean_length(data)
    results_file = directory / "results.json"
    saved = json.loads(results_file.read_text()) if results_file.is_file() else {}
    nfe = saved.get("mean_nfe") if get_scheme(result.model_config.scheme).integrates_block else None
    forward = flops_per_token(result.model_config, length, nfe=nfe)
    streams = 2 if data.kind == "seq2seq" else 1             # tokens counts source and target tokens
    inference = measure_inference(directory, data, config)
    return {
        "schema": SCHEMA, "suite": suite.source, "task": cell.task, "row": cell.row, "cell": cell.name,
        "width": cell.width, "seed": seed, "metric": spec.metric, "curve": cell.curve,
        "validation": result.validation, "test": result.test,
        "steps": result.steps, "max_steps": config.train.max_steps, "best_step": state.get("best_step"),
        "tokens": tokens, "train_seconds": result.train_seconds,
        "train_tokens_per_second": result.tokens_per_second,
        "inference_tokens_per_second": inference["tokens_per_second"], "inference": inference,
        "parameters": count_parameters(result.model_config).to_dict(),
        "flops_per_token": forward, "flops_sequence_length": length,
        "training_flops": None if tokens is None else 3 * forward * tokens / streams,
        "learning_curve": learning_curve(directory, spec.metric),
        "git": git_state(), "machine": machine_info(), "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": config.to_dict(), "resolved_model": result.model_config.to_dict(),
    }


# -- the suite ---------------------------------------------------------------------------------------------------
def collect(suite: Suite, out: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    """Every finished cell record under ``out`` that belongs to ``suite``: ``{(task, cell name, seed): record}``
    (records of other configurations are included; :func:`changed_fields` tells them apart)."""
    records = {}
    for task in suite.tasks:
        for cell in [*suite.cells(task), suite.curve_cell(task)]:
            for seed in (suite.seeds if not cell.curve else (0,)):
                record = read_record(cell_path(out, cell, seed))
                if record is not None:
                    records[(task, cell.name, seed)] = record
    return records


#: What :func:`run_suite` returns: every cell finished; every cell that can run finished but some task still waits
#: for its step budget (its learning curve is done: set ``steps`` and ``budget``); stopped (Ctrl-C or --max-hours).
COMPLETE, NEEDS_BUDGET, STOPPED = "complete", "needs budget", "stopped"


def run_suite(suite: Suite, out: str | Path, overrides: list[str] | None = None, quiet: bool = False,
              log: Callable[[str], None] = print, max_hours: float | None = None) -> str:
    """Run what is not finished: first the learning-curve run of every task whose step budget is still TODO, then
    every cell of the tasks that have one (seed by seed, so that an early stop still covers every row). Returns
    :data:`COMPLETE`, :data:`NEEDS_BUDGET` or :data:`STOPPED` (interrupted, or ``max_hours`` spent: no new cell or
    segment starts after it; the same command continues)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = None if max_hours is None else time.monotonic() + 3600 * max_hours
    waiting = False

    def handle(cell: Cell, seed: int) -> bool:
        outcome = run_cell(suite, out, cell, seed, overrides, quiet, deadline)
        label = f"{cell.task} {cell.name} seed {seed}"
        if outcome.status == "done":
            record = outcome.record or {}
            value = record.get("test", {}).get(record.get("metric"))
            shown = "n/a" if value is None else f"{value:.4f}"
            log(f"{label}: test {record.get('metric')} {shown} ({record.get('wall_seconds', 0):.0f} s)")
        elif outcome.status == "stale":
            log(f"{label}: recorded with another configuration (changed: {', '.join(outcome.changed[:6])}); "
                f"delete {cell_path(out, cell, seed)} to train it again")
        elif outcome.status == "interrupted":
            log(f"{label}: interrupted; its checkpoint is kept, run the same command to continue")
        elif outcome.status == "deadline":
            log(f"--max-hours {max_hours} spent at {label}; run the same command to continue")
        return outcome.status in ("done", "finished", "stale")

    for task, spec in suite.tasks.items():
        if spec.steps is None:
            waiting = True
            if not handle(suite.curve_cell(task), 0):
                return STOPPED
            log(f"{task}: step budget TODO; its learning curve is in the report: set tasks.{task}.steps and budget")
    for seed in suite.seeds:
        for task, spec in suite.tasks.items():
            if spec.steps is None:
                continue
            for cell in suite.cells(task):
                if not handle(cell, seed):
                    return STOPPED
    return NEEDS_BUDGET if waiting else COMPLETE
