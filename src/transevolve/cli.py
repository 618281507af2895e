"""The ``transevolve`` command line. Every command has ``--help``."""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from transevolve.config import PRESETS, ModelConfig, apply_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transformers as dynamical systems: TransEvolve, a Transformer baseline and their relatives.")
# Wide tables stay readable when the output is a file or a CI log (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code=2)


def _errors_to_exit(function):
    """Turn the library's clear errors into a one-line message and exit code 2 (no traceback)."""
    import functools

    from transevolve.checkpoint import CheckpointError

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (ValueError, FileNotFoundError, FileExistsError, CheckpointError, TypeError) as error:
            _fail(str(error))

    return wrapper


@app.command()
@_errors_to_exit
def compare(
    overrides: Annotated[list[str] | None, typer.Argument(
        help="Dotted overrides applied to every model, e.g. train.max_steps=200 model.width=128.")] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="Comparison file or packaged preset "
                                        "(see configs/compare/).")] = "compare/digits.yaml",
    models: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only these models (repeatable).")] = None,
    seeds: Annotated[int | None, typer.Option(help="Train seeds 0..N-1 (default: the file's seeds).", min=1)
                     ] = None,
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/compare-<task>-<time>).")] = None,
    resume: Annotated[bool, typer.Option(help="Continue an interrupted comparison in --out.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train several models on one task side by side; print and save the comparison.

    With no arguments: a Transformer, TransEvolve-fullFF and TransEvolve-randomFF on the default task of
    configs/compare/digits.yaml. Writes one run directory per model, comparison.json, report.md and plots.
    """
    from transevolve.compare import load_comparison, run_comparison, summary_rows, task_kind

    comparison = load_comparison(config, overrides or [], models, seeds)
    first = next(iter(comparison.runs.values()))
    if out is None:
        if resume:
            _fail("--resume needs --out DIR (the comparison to continue)")
        out = Path("runs") / f"compare-{first.task.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    console.print(f"compare: {len(comparison.runs)} models x {len(comparison.seeds)} seeds on {first.task.name} "
                  f"({first.train.max_steps} steps each) -> {out}")
    results = run_comparison(comparison, out, quiet=quiet, resume=resume)
    if any(r.interrupted for runs in results.values() for r in runs):
        console.print(f"interrupted; continue with: transevolve compare --config {config} --out {out} --resume")
        raise typer.Exit(code=130)
    rows = summary_rows(results, task_kind(results))
    table = Table(title=f"{first.task.name}: mean over seeds {list(comparison.seeds)}, best validation checkpoint")
    for column in rows[0]:
        table.add_column(column, justify="left" if column == "model" else "right")
    for row in rows:
        table.add_row(*[_cell(v) for v in row.values()])
    console.print(table)
    console.print(f"report: {out / 'report.md'}")


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4f}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


@app.command("train")
@_errors_to_exit
def train_command(
    config: Annotated[str | None, typer.Argument(help="Run file (YAML: task, model, train) or packaged preset.")
                      ] = None,
    overrides: Annotated[list[str] | None, typer.Argument(help="Dotted overrides, e.g. train.max_steps=500.")
                         ] = None,
    run_dir: Annotated[Path | None, typer.Option(help="Run directory (default runs/<task>-<model>-<time>).")
                       ] = None,
    resume: Annotated[Path | None, typer.Option(help="Resume the run in this directory from its last "
                                                "checkpoint (overrides may extend train.max_steps).")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")] = False,
) -> None:
    """Train one model. Ctrl-C saves a checkpoint; --resume continues exactly where it stopped."""
    from transevolve.compare import preset_path
    from transevolve.train import TrainingDivergedError, load_run, train
    from transevolve.train.config import apply_dotted, run_config_from_dict

    if resume is not None:
        if config is not None and "=" in config:
            overrides = [config, *(overrides or [])]
        elif config is not None:
            _fail("with --resume the config comes from the run directory; pass only overrides")
        base = load_run(resume)
        run = run_config_from_dict(apply_dotted(base.to_dict(), overrides or []))
        directory = resume
    else:
        if config is None:
            _fail("give a run file or preset (e.g. transevolve train configs/listops/transevolve-full.yaml), "
                  "or --resume RUN_DIR")
        from transevolve.train.config import load_run_config

        run = load_run_config(preset_path(config), overrides or [])
        name = run.model.get("name") or f"{run.model.get('attention', 'evolved')}"
        directory = run_dir or Path("runs") / f"{run.task.name}-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    try:
        result = train(run, directory, resume=resume is not None, quiet=quiet)
    except TrainingDivergedError as error:
        console.print(f"[bold red]training diverged:[/] {error}")
        raise typer.Exit(code=1) from None
    if result.interrupted:
        raise typer.Exit(code=130)
    _print_result(result)


def _print_result(result) -> None:
    table = Table(title=f"{result.run_dir}")
    table.add_column("split")
    keys = sorted(set(result.validation) | set(result.test))
    for key in keys:
        table.add_column(key, justify="right")
    for split, metrics in (("validation", result.validation), ("test", result.test)):
        table.add_row(split, *[_cell(metrics.get(k, float("nan"))) for k in keys])
    console.print(table)
    console.print(f"parameters {result.parameters:,}; {result.steps} steps in {result.train_seconds:.1f} s "
                  f"({result.tokens_per_second:,.0f} tokens/s)")


@app.command("eval")
@_errors_to_exit
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by transevolve train.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.", min=1)] = 64,
) -> None:
    """Evaluate a trained run's checkpoint on a split of its task."""
    from transevolve.checkpoint import load_model
    from transevolve.tasks import get_task
    from transevolve.train import load_run
    from transevolve.train.evaluation import evaluate
    from transevolve.train.loop import select_device

    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")
    run = load_run(run_dir)
    model = load_model(run_dir / "checkpoints" / checkpoint)
    device = select_device(run.train.device)
    data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    metrics = evaluate(model.to(device), data, split, batch_size, device, bleu=data.kind == "seq2seq")
    table = Table(title=f"{run_dir} ({checkpoint}) on {run.task.name}/{split}")
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*[_cell(v) for v in metrics.values()])
    console.print(table)


@app.command()
@_errors_to_exit
def translate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of a translation (seq2seq) task.")],
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="Text file, one sentence per line "
                                                    "(default: standard input).")] = None,
    beam: Annotated[int, typer.Option(help="Beam size (1 = greedy).", min=1)] = 4,
    alpha: Annotated[float, typer.Option(help="Length penalty exponent ((5+len)/6)^alpha.")] = 0.6,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    batch_size: Annotated[int, typer.Option(help="Sentences per batch.", min=1)] = 32,
) -> None:
    """Translate sentences with a trained encoder-decoder (cached beam search); prints one line per input."""
    import torch

    from transevolve.checkpoint import load_model
    from transevolve.tasks import get_task
    from transevolve.train import load_run
    from transevolve.train.evaluation import decode_batch
    from transevolve.train.loop import select_device

    run = load_run(run_dir)
    model = load_model(run_dir / "checkpoints" / checkpoint)
    if model.config.kind != "encoder_decoder":
        _fail(f"{run_dir} holds a {model.config.kind} model; translate needs an encoder_decoder run")
    data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    if data.tokenizer is None:
        _fail(f"task {run.task.name!r} has no tokenizer")
    device = select_device(run.train.device)
    model = model.to(device)
    lines = (input_file.read_text() if input_file is not None else sys.stdin.read()).splitlines()
    limit = model.config.max_length
    for start in range(0, len(lines), batch_size):
        chunk = lines[start:start + batch_size]
        encoded = [data.tokenizer.encode(line)[:limit] or [0] for line in chunk]
        src = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in encoded], batch_first=True).to(device)
        for ids in decode_batch(model, src, beam, alpha, run.train.decode_max_offset):
            typer.echo(data.tokenizer.decode(ids))


@app.command()
@_errors_to_exit
def inspect(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (e.g. a TransEvolve run and "
                                                   "a Transformer run on the same task).")],
    index: Annotated[int, typer.Option(help="Which validation example to show.", min=0)] = 0,
    max_tokens: Annotated[int, typer.Option(help="Show at most this many leading tokens.", min=2)] = 48,
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: attention.png in the first run).")
                   ] = None,
) -> None:
    """Plot how self-attention evolves over depth (TransEvolve: A0 then each layer, per head)."""
    from transevolve.checkpoint import load_model
    from transevolve.inspect_attention import attention_maps, plot_attention
    from transevolve.tasks import collate, get_task
    from transevolve.train import load_run

    panels = []
    example = None
    for run_dir in run_dirs:
        run = load_run(run_dir)
        model = load_model(run_dir / "checkpoints" / "best")
        if example is None:
            data = get_task(run.task.name, **run.task.options).load(run.task.seed)
            split = data.splits["validation"]
            if index >= len(split):
                _fail(f"--index {index} but the validation split has {len(split)} examples")
            example = {k: (v[:max_tokens] if k in ("ids", "src") and v.dim() == 1 else v)
                       for k, v in split[index].items()}
            if "loss_mask" in example:
                example = {k: v[:max_tokens] for k, v in example.items()}
        maps = attention_maps(model, collate([example]))
        name = model.config.name or f"{model.config.attention}/{model.config.ff_type}"
        panels.append((name, maps))
        shifts = ", ".join(f"{s:.3f}" for s in maps.layer_shift())
        console.print(f"{name}: {len(maps.maps)} maps over {maps.tokens} tokens; mean change of attention between "
                      f"consecutive layers (total variation): {shifts}")
    path = plot_attention(panels, out or run_dirs[0] / "attention.png")
    console.print(f"wrote {path}")


@app.command()
def params(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value changes applied to every preset, "
                                                              "e.g. width=256 num_heads=4 time_dim=64")] = None,
    preset: Annotated[list[str] | None, typer.Option(help=f"Presets to list (default: the official grid). "
                                                          f"Choices: {', '.join(PRESETS)}")] = None,
) -> None:
    """Parameter counts computed from the config alone (no model is built)."""
    from transevolve.params import count_parameters

    names = preset or [n for n in PRESETS if n != "debug"]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        _fail(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    table = Table(title="trainable parameters")
    for column in ("preset", "kind", "attention", "ff", "blocks x layers", "fidelity", "encoder", "decoder",
                   "non-embedding", "total"):
        table.add_column(column, justify="left" if column in ("preset", "kind", "attention", "ff") else "right")
    for name in names:
        try:
            config = apply_overrides(PRESETS[name], overrides or [])
        except ValueError as error:
            _fail(str(error))
        counts = count_parameters(config)
        table.add_row(name, config.kind, config.attention, config.ff_type,
                      f"{config.num_blocks} x {config.layers_per_block}", config.fidelity, f"{counts.encoder:,}",
                      f"{counts.decoder:,}", f"{counts.non_embedding:,}", f"{counts.total:,}")
    console.print(table)


@app.command("convert-official")
def convert_official(
    fixture: Annotated[Path, typer.Argument(help="Official weights: NAME.npz with its manifest NAME.json beside it.")],
    output: Annotated[Path, typer.Argument(help="Directory to write config.json and model.safetensors into.")],
    check: Annotated[bool, typer.Option(help="Replay the stored inputs and report the error against the "
                                             "official outputs (fails above --tolerance).")] = True,
    tolerance: Annotated[float, typer.Option(help="Largest accepted absolute error.")] = 1e-4,
) -> None:
    """Convert official TensorFlow TransEvolve weights into a transevolve safetensors checkpoint."""
    from transevolve.checkpoint import save_model
    from transevolve.interop import OfficialFormatError, check_official_outputs, from_official_npz

    try:
        model = from_official_npz(fixture)
    except OfficialFormatError as error:
        _fail(str(error))
    save_model(model, output)
    config: ModelConfig = model.config
    console.print(f"wrote {output}/ ({config.kind}, width {config.width}, {config.num_heads} heads, "
                  f"{config.num_blocks} x {config.layers_per_block}, ff {config.ff_type})")
    if check:
        errors = check_official_outputs(fixture, model)
        outputs = {k: v for k, v in errors.items() if k.startswith("output.")}
        worst = max(errors.values()) if errors else float("nan")
        for key, value in outputs.items():
            console.print(f"  {key}: max abs error {value:.2e}")
        console.print(f"  worst over {len(errors)} outputs and intermediates: {worst:.2e}")
        if not errors or worst > tolerance:
            _fail(f"the converted model does not reproduce the official outputs within {tolerance}")


@app.callback(invoke_without_command=False)
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        from transevolve import __version__

        console.print(__version__)
        raise typer.Exit()


# Command groups that live next to their code (`transevolve data ...`, `transevolve bench ...`).
_GROUPS = {"data": "transevolve.data.cli", "bench": "transevolve.bench.cli"}


def _add_groups() -> None:
    for name, module_name in _GROUPS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name is not None and module_name.startswith(error.name):
                continue  # the group is not part of this installation yet
            raise
        app.add_typer(module.app, name=name)


_add_groups()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
