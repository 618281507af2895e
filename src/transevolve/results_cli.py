"""``transevolve results``: run the results suite and write RESULTS.md (see :mod:`transevolve.results`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from transevolve.results.suite import Suite

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="The results suite: every (task, model, seed) cell through the normal recipe, and RESULTS.md.")

DEFAULT_OUT = Path("results")
QUICK_OUT = Path("runs") / "results-quick"
SUITE_RECORD = "suite.json"


def _report_path(out: Path, report: Path | None) -> Path:
    """RESULTS.md beside the default ``results/`` directory (the repository root when run there), else in OUT."""
    if report is not None:
        return report
    return Path("RESULTS.md") if out == DEFAULT_OUT else out / "RESULTS.md"


def _suite_name(out: Path, suite: str | None) -> str:
    from transevolve.results import DEFAULT_SUITE

    if suite is not None:
        return suite
    recorded = out / SUITE_RECORD
    return json.loads(recorded.read_text())["source"] if recorded.is_file() else DEFAULT_SUITE


@app.command("run")
def run(
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="Suite file or packaged preset (default "
                                              "results/suite.yaml; see configs/results/).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="results/quick.yaml: tiny budgets, one seed, every task; the "
                                        "machinery end to end in minutes (numbers not meaningful); default "
                                        f"--out {QUICK_OUT}.")] = False,
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these rows (repeatable).")] = None,
    comparison: Annotated[list[str] | None, typer.Option(
        "--comparison", "-C", help="Only the cells of these comparisons (repeatable), e.g. equal-size: the "
        "matched-width cells of equal-parameters wait.")] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 instead of the suite's.", min=1)] = None,
    max_hours: Annotated[float | None, typer.Option(help="Start no new cell after this many hours; a running cell "
                                                    "stops at its next evaluation (checkpoint kept). Run the same "
                                                    "command again to continue.", min=0)] = None,
    out: Annotated[Path | None, typer.Option(help=f"Output directory (default {DEFAULT_OUT}; records in "
                                             "OUT/cells, run directories in OUT/runs).")] = None,
    report: Annotated[Path | None, typer.Option(help="Report to write (default RESULTS.md for --out results, else "
                                                "OUT/RESULTS.md).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List the cells and what is finished; train nothing.")
                       ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-run progress output.")] = False,
) -> None:
    """Train every cell that is not finished (learning curves first where a step budget is TODO), then write the
    report. Finished cells are skipped; an interrupted cell resumes from its checkpoint."""
    from transevolve.cli import _exit_at_once_on_ctrl_c, _fail, _require_data, console
    from transevolve.provenance import write_json_atomically
    from transevolve.results import QUICK_SUITE, load_suite, run_suite, write_report
    from transevolve.results.cells import NEEDS_BUDGET, STOPPED

    if quick and suite:
        _fail("--quick selects results/quick.yaml; give either --quick or --suite")
    out = out or (QUICK_OUT if quick else DEFAULT_OUT)
    name = QUICK_SUITE if quick else _suite_name(out, suite)
    loaded = load_suite(name, task, model, seeds, comparison)
    if dry_run:
        _print_plan(loaded, out)
        return
    for spec in loaded.tasks.values():
        _require_data(spec.task_name, spec.base["task"].get("options") or {})
    write_json_atomically(out / SUITE_RECORD, {"source": loaded.source})
    cells = sum(len(loaded.cells(t)) for t in loaded.tasks) * len(loaded.seeds)
    console.print(f"results {loaded.source}: {len(loaded.tasks)} tasks, {cells} cells, seeds {list(loaded.seeds)} "
                  f"-> {out}", highlight=False)
    status = run_suite(loaded, out, quiet=quiet, max_hours=max_hours,
                       log=lambda line: console.print(line, highlight=False, markup=False))
    whole = load_suite(name) if (task or model or seeds or comparison) else loaded    # the report: the whole suite
    console.print(f"report: {write_report(whole, out, _report_path(out, report))}", highlight=False)
    if status == NEEDS_BUDGET:
        console.print("some tasks wait for their step budget: read their learning curves in the report, set "
                      "tasks.<task>.steps and budget in the suite file, then run again", highlight=False)
    if status == STOPPED:
        console.print(f"not finished; continue with the same command (--out {out})", highlight=False)
        _exit_at_once_on_ctrl_c()
        raise typer.Exit(code=130)


def _print_plan(suite: Suite, out: Path) -> None:
    from rich.table import Table

    from transevolve.cli import console
    from transevolve.results.cells import cell_path, changed_fields, read_record

    table = Table(title=f"cells of {suite.source} under {out}")
    for column in ("task", "cell", "width", "non-emb. parameters", "steps", "finished seeds", "stale"):
        table.add_column(column)
    for task, spec in suite.tasks.items():
        cells = suite.cells(task) if spec.steps is not None else [suite.curve_cell(task)]
        for cell in cells:
            steps = spec.curve_steps if cell.curve or spec.steps is None else spec.steps
            done, stale = [], []
            for seed in (0,) if cell.curve else suite.seeds:
                record = read_record(cell_path(out, cell, seed))
                if record is not None:
                    changed = changed_fields(record["config"], suite._run_config(cell, seed, steps))
                    (stale if changed else done).append(str(seed))
            parameters = suite.parameters.get((task, cell.row, cell.width))
            table.add_row(task, cell.name, str(cell.width), f"{parameters:,}" if parameters else "-", str(steps),
                          ",".join(done) or "-", ",".join(stale) or "-")
    console.print(table)


@app.command("speed")
def speed_command(
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks (repeatable; default every "
                                                   "task with a step budget).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these rows (repeatable; default "
                                                    "every row of the comparison).")] = None,
    comparison: Annotated[str, typer.Option("--comparison", "-C", help="The comparison whose rows are measured.")
                          ] = "equal-size",
    rounds: Annotated[int, typer.Option(help="Rounds; each runs every row once, one row later each round. The "
                                        "report's verdicts need 3.", min=1)] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed steps before the timed ones, per run.", min=1)] = 3,
    steps: Annotated[int, typer.Option(help="Timed optimizer steps per row and round.", min=1)] = 10,
    out: Annotated[Path, typer.Option(help="The suite's output directory (writes OUT/speed/<task>.json).")
                   ] = DEFAULT_OUT,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="The suite file (default: the one recorded in "
                                              f"OUT/{SUITE_RECORD}, else results/suite.yaml).")] = None,
    report: Annotated[Path | None, typer.Option(help="Report to write (default RESULTS.md for --out results, else "
                                                "OUT/RESULTS.md).")] = None,
) -> None:
    """Measure the training speed of a task's rows side by side in this process (a few steps each, interleaved
    in rounds), write OUT/speed/<task>.json, then the report. Cells' own tokens/s come from the sessions that
    trained them, on hosts of different speed; the speed claim reads these instead."""
    from transevolve.cli import _fail, _require_data, console
    from transevolve.provenance import write_json_atomically
    from transevolve.results import load_suite, write_report
    from transevolve.results.speed import measure_task, speed_path

    loaded = load_suite(_suite_name(out, suite))
    chosen = task or [t for t, spec in loaded.tasks.items() if spec.steps is not None]
    unknown = [t for t in chosen if t not in loaded.tasks]
    if unknown:
        _fail(f"unknown task(s) {unknown}; the suite has {list(loaded.tasks)}")
    waiting = [t for t in chosen if loaded.tasks[t].steps is None]
    if waiting:
        _fail(f"task(s) {waiting} have no step budget yet (tasks.<task>.steps is TODO); their cells' configuration "
              "is not fixed, so there is nothing to measure")
    for name in chosen:
        spec = loaded.tasks[name]
        _require_data(spec.task_name, spec.base["task"].get("options") or {})
    for name in chosen:
        try:
            record = measure_task(loaded, name, model, comparison, rounds, warmup, steps,
                                  log=lambda line: console.print(line, highlight=False, markup=False))
        except ValueError as error:
            _fail(str(error))
        except KeyboardInterrupt:
            console.print(f"interrupted: nothing written for {name}"
                          + (f" (done: {', '.join(chosen[:chosen.index(name)])})" if chosen.index(name) else ""),
                          highlight=False)
            raise typer.Exit(code=130) from None
        write_json_atomically(speed_path(out, name), record)
        console.print(f"{name}: wrote {speed_path(out, name)} ({record['seconds']:.0f} s)", highlight=False)
    console.print(f"report: {write_report(loaded, out, _report_path(out, report))}", highlight=False)


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option(help="The suite's output directory.")] = DEFAULT_OUT,
    suite: Annotated[str | None, typer.Option("--suite", "-s", help="The suite file (default: the one recorded in "
                                              f"OUT/{SUITE_RECORD}, else results/suite.yaml).")] = None,
    report: Annotated[Path | None, typer.Option(help="Report to write (default RESULTS.md for --out results, else "
                                                "OUT/RESULTS.md).")] = None,
) -> None:
    """Write RESULTS.md, OUT/summary.json and the figures from the cell records (no training)."""
    from transevolve.cli import _fail, console
    from transevolve.results import load_suite, write_report

    if not (out / "cells").is_dir() and not (out / SUITE_RECORD).is_file():
        _fail(f"{out} holds no results (no {out / 'cells'}); run `transevolve results run` first")
    loaded = load_suite(_suite_name(out, suite))
    console.print(f"report: {write_report(loaded, out, _report_path(out, report))}", highlight=False)
