"""``transevolve study``: the width-vs-problem-size study on the dynamic-programming tasks (see
:mod:`transevolve.study`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help="Smallest width reaching an accuracy threshold, per task, problem size and model.")


@app.command("run")
def run(
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Dotted overrides applied to every cell, e.g. train.max_steps=500.")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="Study file or packaged preset "
                                               "(default study/dp-width.yaml; see configs/study/).")] = None,
    quick: Annotated[bool, typer.Option("--quick", help="study/dp-width-quick.yaml: the machinery end to end in "
                                                        "under 15 minutes on 2 cores (numbers not meaningful).")
                     ] = False,
    out: Annotated[Path | None, typer.Option(help="Output directory; an existing one is resumed (finished cells "
                                                  "are kept). Default runs/study-<preset name>.")] = None,
    task: Annotated[list[str] | None, typer.Option("--task", "-t", help="Only these tasks (repeatable).")] = None,
    model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable).")
                     ] = None,
    seeds: Annotated[int | None, typer.Option(help="Seeds 0..N-1 instead of the file's.", min=1)] = None,
    max_hours: Annotated[float | None, typer.Option(help="Start no new cell after this many hours (run the same "
                                                         "command again to continue).", min=0)] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No per-run progress output.")] = False,
) -> None:
    """Train every cell of a study that is not finished yet, then write study.json, report.md and the plots."""
    from transevolve.cli import _exit_at_once_on_ctrl_c, _fail, _require_data, console
    from transevolve.study import DEFAULT_STUDY, QUICK_STUDY, load_study, run_study

    if quick and config:
        _fail("--quick selects study/dp-width-quick.yaml; give either --quick or --config")
    name = QUICK_STUDY if quick else (config or DEFAULT_STUDY)
    study = load_study(name, task, model, seeds)
    for spec in study.tasks.values():
        _require_data(spec.base["task"]["name"], spec.base["task"].get("options") or {})
    out = out or Path("runs") / f"study-{Path(name).stem}"
    console.print(f"study {study.source}: {len(study.tasks)} tasks, {len(study.models)} models, widths "
                  f"{list(study.widths)}, seeds {list(study.seeds)} -> {out}", highlight=False)
    finished = run_study(study, out, overrides or [], quiet=quiet, max_hours=max_hours,
                         log=lambda line: console.print(line, highlight=False))
    console.print(f"report: {out / 'report.md'}")
    if not finished:
        console.print(f"not finished; continue with the same command (--out {out})")
        _exit_at_once_on_ctrl_c()
        raise typer.Exit(code=130)


@app.command("report")
def report(
    out: Annotated[Path, typer.Argument(help="A study's output directory.")],
    config: Annotated[str | None, typer.Option("--config", "-c", help="The study file it ran (default: the one "
                                               "recorded in OUT/study.json).")] = None,
) -> None:
    """Rewrite study.json, report.md and the plots from the finished cells (no training)."""
    import json

    from transevolve.cli import _fail, console
    from transevolve.study import load_study, write_study_report

    recorded = out / "study.json"
    if config is None:
        if not recorded.is_file():
            _fail(f"{out} holds no study.json; give the study file with --config")
        config = json.loads(recorded.read_text())["source"]
    console.print(f"report: {write_study_report(load_study(config), out)}")
