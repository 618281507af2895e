"""The ``transevolve`` command line. Every command has ``--help``."""

from __future__ import annotations

import importlib
import json
import sys
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


@app.command()
def compare(
    steps: Annotated[int, typer.Option(help="Training steps per model.", min=1)] = 150,
    batch: Annotated[int, typer.Option(help="Sequences per step.", min=1)] = 32,
    length: Annotated[int, typer.Option(help="Sequence length.", min=2)] = 32,
    seed: Annotated[int, typer.Option(help="Seed for initialisation and data.")] = 0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the results as JSON here.")] = None,
) -> None:
    """Train a Transformer, TransEvolve-fullFF and TransEvolve-randomFF side by side and compare them.

    For now this runs on a small embedded synthetic task (largest digit of a sequence, 10 classes) as a smoke
    run of the whole trunk; real tasks arrive with the task registry.
    """
    from transevolve.compare import run_compare

    console.print(f"compare: 3 models x {steps} steps on the embedded max-digit task (batch {batch}, "
                  f"length {length}, seed {seed}, CPU)")
    results = run_compare(steps=steps, batch=batch, length=length, seed=seed)
    table = Table(title="max-digit (10 classes, chance 10%)")
    for column in ("model", "parameters", "accuracy", "train s", "tokens/s", "final loss"):
        table.add_column(column, justify="left" if column == "model" else "right")
    for r in results:
        table.add_row(r.name, f"{r.parameters:,}", f"{r.accuracy:.1%}", f"{r.train_seconds:.1f}",
                      f"{r.tokens_per_second:,.0f}", f"{r.final_loss:.4f}")
    console.print(table)
    if json_out is not None:
        json_out.write_text(json.dumps([r.__dict__ for r in results], indent=2) + "\n")
        console.print(f"wrote {json_out}")


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
