"""``transevolve bench``: throughput, memory, MFU and decoding speed, side by side in one invocation."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False, invoke_without_command=True,
                  help="Benchmark TransEvolve (reference and fast paths), our Transformer and x-transformers.")


def _ints(text: str | None) -> list[int] | None:
    return None if text is None else [int(part) for part in text.split(",") if part.strip()]


def _names(text: str | None) -> list[str] | None:
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]


@app.callback()
def bench(
    ctx: typer.Context,
    quick: Annotated[bool, typer.Option("--quick", help="Smoke preset (under 2 minutes): n=128,512, 6 models, "
                                                        "fewer rounds, no MFU group, 32 decoded tokens; the same "
                                                        "as --preset quick.")] = False,
    preset_name: Annotated[str | None, typer.Option(
        "--preset", help="full (default: the issue-6 grid, n=128..4096, about 36 minutes), quick, issue15 "
                         "(issue #15's shape: batch 4, n=512,2048, x-transformers / transformer / "
                         "transevolve-full-1x6 / transevolve-random-1x6 in fp32 and bf16, dense backends aten and "
                         "onednn, the low-memory inference memory at n=4096; about 8 minutes) or efficient "
                         "(issue #16: transformer, TransEvolve factorised and low-memory, sparse-strided, "
                         "sparse-fixed, linear at n=512..8192 with peak memory, and the decoding cost at positions "
                         "256..8192; about 15 minutes).")] = None,
    lengths: Annotated[str | None, typer.Option(help="Comma-separated sequence lengths (default 128..4096).")] = None,
    models: Annotated[str | None, typer.Option(help="Comma-separated model names (default: all; see the "
                                                    "README table).")] = None,
    precision: Annotated[str | None, typer.Option(help="Comma-separated precisions, fp32 and/or bf16 (bf16: "
                                                       "forward and loss under CPU autocast, Adam in fp32; "
                                                       "default fp32).")] = None,
    dense_backend: Annotated[str | None, typer.Option(help="Comma-separated dense backends of our models' fp32 "
                                                           "products: auto, aten, onednn (default auto; the "
                                                           "concrete backend is recorded).")] = None,
    rounds: Annotated[int | None, typer.Option(help="Timed rounds per configuration (median reported).",
                                               min=1)] = None,
    tokens: Annotated[int | None, typer.Option(help="Tokens per batch; batch = tokens // n.", min=1)] = None,
    batch: Annotated[int | None, typer.Option(help="Fixed batch size at every length (overrides --tokens).",
                                              min=1)] = None,
    memory: Annotated[bool, typer.Option(help="Measure peak memory in subprocesses.")] = True,
    memory_lengths: Annotated[str | None, typer.Option(help="Comma-separated lengths for peak memory (default: "
                                                            "the preset's, within --lengths if given; efficient: "
                                                            "every timed length).")] = None,
    split: Annotated[bool | None, typer.Option(help="Profile one training step per configuration and split "
                                                    "its time (default: the preset's lengths; --split: every "
                                                    "length).")] = None,
    mfu: Annotated[bool | None, typer.Option(help="Run the width-512 MFU group.")] = None,
    decode_tokens: Annotated[int | None, typer.Option(help="Greedy tokens for the decoding comparison "
                                                           "(0: skip).", min=0)] = None,
    decode_positions: Annotated[str | None, typer.Option(
        help="Comma-separated positions at which to time one cached decoding step of causal decoders of the "
             "line-up's shape (transformer, sparse-strided, sparse-fixed, linear, TransEvolve; default: the "
             "preset's, efficient 256,1024,4096,8192; empty: skip).")] = None,
    max_step_seconds: Annotated[float | None, typer.Option(
        help="Skip a configuration (with a note) whose first training step takes longer than this (default: the "
             "preset's, efficient 90 s; others none).", min=0)] = None,
    out: Annotated[Path, typer.Option(help="Directory for NAME.json, NAME.md and NAME.png.")] = Path(
        "benchmarks/results"),
    name: Annotated[str | None, typer.Option(help="Report file stem (default bench-<preset>).")] = None,
) -> None:
    """Run the benchmark suite and write JSON, a markdown table and a log-log plot."""
    if ctx.invoked_subcommand is not None:
        return
    from transevolve.bench.report import markdown, write
    from transevolve.bench.suite import preset, run_suite

    if quick and preset_name not in (None, "quick"):
        typer.echo(f"error: --quick and --preset {preset_name} contradict each other", err=True)
        raise typer.Exit(code=2)
    chosen = "quick" if quick else (preset_name or "full")
    try:
        options = preset(chosen)
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    if lengths is not None:
        every = options.memory_lengths == options.lengths            # a preset measuring memory at every length
        options.lengths = _ints(lengths) or options.lengths
        options.memory_lengths = list(options.lengths) if every else [n for n in options.memory_lengths
                                                                         if n in options.lengths]
        if options.split_lengths is not None:
            options.split_lengths = [n for n in options.split_lengths if n in options.lengths]
    if memory_lengths is not None:
        options.memory_lengths = _ints(memory_lengths) or []
    if models is not None:
        options.models = _names(models)
        if options.memory_models is not None:
            options.memory_models = [m for m in options.memory_models if m in options.models]
    if precision is not None:
        options.precisions = _names(precision) or options.precisions
    if dense_backend is not None:
        options.dense_backends = _names(dense_backend) or options.dense_backends
    if rounds is not None:
        options.rounds, options.length_rounds = rounds, {}
    if tokens is not None:
        options.tokens_per_batch, options.batch_size = tokens, None
    if batch is not None:
        options.batch_size = batch
    if not memory:
        options.memory_lengths = []
    if split is not None:
        options.split_lengths = None if split else []
    if mfu is not None:
        options.mfu = mfu
    if decode_tokens is not None:
        options.decode_tokens = decode_tokens
    if decode_positions is not None:
        options.decode_positions = _ints(decode_positions) or []
    if max_step_seconds is not None:
        options.max_step_seconds = max_step_seconds
    try:
        results = run_suite(options, log=lambda message: typer.echo(message, err=True))
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    command = " ".join(["transevolve bench", *(shlex.quote(arg) for arg in sys.argv[2:])])
    stem = name or f"bench-{chosen}"
    paths = write(results, out, stem, command)
    typer.echo(markdown({**results, "command": command}, command))
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)


@app.command("report")
def report_command(
    results_json: Annotated[Path, typer.Argument(help="A bench JSON file (NAME.json written by transevolve bench).",
                                                 exists=True, dir_okay=False)],
    out: Annotated[Path | None, typer.Option(help="Also write the markdown to this file.")] = None,
) -> None:
    """Rebuild the markdown report (tables, issue #6 and issue #15 targets) from a bench JSON file."""
    import json

    from transevolve.bench.report import FIGURES, markdown

    try:
        results = json.loads(results_json.read_text())
    except (OSError, json.JSONDecodeError) as error:
        typer.echo(f"error: cannot read {results_json}: {error}", err=True)
        raise typer.Exit(code=2) from error
    figures = {kind: f"{results_json.stem}{suffix}" for kind, (suffix, _) in FIGURES.items()
               if (results_json.parent / f"{results_json.stem}{suffix}").exists()}
    text = markdown(results, results.get("command", "transevolve bench"), figures)
    typer.echo(text)
    if out is not None:
        out.write_text(text)
        typer.echo(f"wrote {out}", err=True)


@app.command("profile")
def profile_command(
    models: Annotated[list[str], typer.Argument(help="Model names of the benchmark line-up, e.g. transformer "
                                                     "transevolve-full-1x6/factorised.")],
    length: Annotated[int, typer.Option(help="Sequence length.", min=1)] = 512,
    tokens: Annotated[int, typer.Option(help="Tokens per batch; batch = tokens // length.", min=1)] = 8192,
    mode: Annotated[str, typer.Option(help="train (forward, backward, Adam step) or infer.")] = "train",
    steps: Annotated[int, typer.Option(help="Profiled steps per model.", min=1)] = 3,
    width: Annotated[int, typer.Option(help="Model width (heads fixed at 4 for 256, 8 for 512).", min=8)] = 256,
    top: Annotated[int, typer.Option(help="Operators listed per model.", min=1)] = 12,
    precision: Annotated[str, typer.Option(help="Comma-separated precisions, fp32 and/or bf16.")] = "fp32",
    dense_backend: Annotated[str, typer.Option(help="Comma-separated dense backends: auto, aten, "
                                                    "onednn.")] = "auto",
    out: Annotated[Path | None, typer.Option(help="Also write the markdown and JSON here (a file stem).")] = None,
) -> None:
    """Operator-level CPU profile of the models side by side: where a step's time goes."""
    import json

    from transevolve.bench.profile import markdown, profile_models

    heads = 8 if width >= 512 else 4
    try:
        profiles = profile_models(models, length, max(1, tokens // length), mode, steps, width=width, heads=heads,
                                  precisions=_names(precision), dense_backends=_names(dense_backend))
    except ValueError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(code=2) from error
    command = " ".join(["transevolve bench profile", *(shlex.quote(arg) for arg in sys.argv[3:])])
    text = markdown(profiles, top, command)
    typer.echo(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".md").write_text(text)
        out.with_suffix(".json").write_text(json.dumps([p.to_dict() for p in profiles], indent=2) + "\n")
        typer.echo(f"wrote {out.with_suffix('.md')}, {out.with_suffix('.json')}", err=True)
