"""The ``transevolve`` command line. Every command has ``--help``."""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from transevolve.config import PRESETS, ModelConfig, apply_overrides

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Transformers as dynamical systems: TransEvolve, a Transformer baseline and their relatives.")
# Wide tables stay readable when the output is a file or a CI log (rich assumes 80 columns there).
console = Console(width=None if sys.stdout.isatty() else 160)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

#: ``--debug`` (or ``TRANSEVOLVE_DEBUG=1``): let errors raise with their traceback instead of one line.
DEBUG_ENV = "TRANSEVOLVE_DEBUG"
_debug = False


def _debugging() -> bool:
    return _debug or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes", "on")


def _fail(message: str) -> NoReturn:
    console.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    raise typer.Exit(code=2)


def _user_errors() -> tuple[type[BaseException], ...]:
    """What bad input raises: ``UserError`` and other ``ValueError``s (configs, checkpoints, options, text that
    is not UTF-8), file errors, missing or damaged data, unparsable YAML, and wrongly typed config values."""
    import yaml

    from transevolve.data.errors import DataError

    return (ValueError, OSError, DataError, yaml.YAMLError, TypeError)


def _message(error: BaseException) -> str:
    if isinstance(error, OSError) and error.filename and error.strerror:
        return f"{error.filename}: {error.strerror}"
    if isinstance(error, TypeError):
        return f"{error} (run with --debug or {DEBUG_ENV}=1 for the traceback)"
    return str(error)


def _exit_at_once_on_ctrl_c() -> None:
    """After an interrupted run has saved its checkpoint, the interpreter still takes a moment to shut down
    (library exit handlers); a further Ctrl-C then ends the process at once with code 130 instead of a traceback."""
    import os
    import signal

    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))


def _errors_to_exit(function: Callable[..., Any]) -> Callable[..., Any]:
    """Turn bad-input errors into ``error: <message>`` and exit code 2, Ctrl-C into exit code 130 (no traceback
    unless debugging)."""
    if getattr(function, "_errors_to_exit", False):
        return function

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except (typer.Exit, BrokenPipeError):  # click ends a closed pipe (e.g. `| head`) quietly
            raise
        except _user_errors() as error:
            if _debugging():
                raise
            _fail(_message(error))
        except KeyboardInterrupt:
            if _debugging():
                raise
            err_console.print("interrupted", highlight=False)
            _exit_at_once_on_ctrl_c()
            raise typer.Exit(code=130) from None

    wrapper._errors_to_exit = True  # type: ignore[attr-defined]
    return wrapper


def _wrap_commands(typer_app: typer.Typer) -> None:
    """Apply :func:`_errors_to_exit` to every command of ``typer_app`` and of its groups."""
    for command in typer_app.registered_commands:
        if command.callback is not None:
            command.callback = _errors_to_exit(command.callback)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _wrap_commands(group.typer_instance)


def _is_main_process() -> bool:
    """False on the non-zero ranks of a ``torchrun`` launch (they train but do not print results)."""
    return os.environ.get("RANK", "0") == "0"


def _require_data(task_name: str, options: dict[str, Any]) -> None:
    """Fail before anything is written when the task or its options are invalid or its data is not fetched."""
    from transevolve.data.packages import require
    from transevolve.tasks import get_task

    task = get_task(task_name, **options)
    require(type(task).data_packages, task=task_name)


@app.command()
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
    _require_data(first.task.name, first.task.options)
    main = _is_main_process()
    if main:
        console.print(f"compare: {len(comparison.runs)} models x {len(comparison.seeds)} seeds on "
                      f"{first.task.name} ({first.train.max_steps} steps each) -> {out}", highlight=False)
    results = run_comparison(comparison, out, quiet=quiet, resume=resume)
    if any(r.interrupted for runs in results.values() for r in runs):
        if main:
            console.print(f"interrupted; continue with: transevolve compare --config {config} --out {out} --resume")
        _exit_at_once_on_ctrl_c()
        raise typer.Exit(code=130)
    if not main:
        return
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
    from transevolve.train import TrainingDivergedError, train
    from transevolve.train.config import apply_dotted, load_saved_run, run_config_from_dict

    if resume is not None:
        if config is not None and "=" in config:
            overrides = [config, *(overrides or [])]
        elif config is not None:
            _fail("with --resume the config comes from the run directory; pass only overrides")
        base = load_saved_run(resume)
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
    _require_data(run.task.name, run.task.options)
    try:
        result = train(run, directory, resume=resume is not None, quiet=quiet)
    except TrainingDivergedError as error:
        console.print(f"[bold red]training diverged:[/] {error}")
        raise typer.Exit(code=1) from None
    if result.interrupted:
        _exit_at_once_on_ctrl_c()
        raise typer.Exit(code=130)
    _print_result(result)


def _print_result(result: Any) -> None:
    """The final metrics table (rank 0 only under ``torchrun``)."""
    if not _is_main_process():
        return
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
def eval_command(
    run_dir: Annotated[Path, typer.Argument(help="A run directory written by transevolve train.")],
    split: Annotated[str, typer.Option(help="Split to evaluate.")] = "test",
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    batch_size: Annotated[int, typer.Option(help="Evaluation batch size.", min=1)] = 64,
    max_examples: Annotated[int, typer.Option(help="Evaluate the first N examples only (0 = the whole split).",
                                              min=0)] = 0,
    beam: Annotated[int | None, typer.Option(help="Beam size for BLEU (default: the run's train.beam_size).",
                                             min=1)] = None,
) -> None:
    """Evaluate a trained run's checkpoint on a split of its task (BLEU too for translation tasks).

    Dynamic-programming tasks are graded by generation: the model solves each problem by greedy decoding from
    the problem alone and the task's oracle checks the answer (generated_accuracy, the headline) and the chain
    (chain_valid); the teacher-forced metrics follow as diagnostics.
    """
    from transevolve.checkpoint import load_model
    from transevolve.tasks import get_task
    from transevolve.train.config import load_saved_run
    from transevolve.train.evaluation import evaluate, evaluated_examples
    from transevolve.train.loop import select_device

    _check_checkpoint_name(checkpoint)
    run = load_saved_run(run_dir)
    model = load_model(run_dir / "checkpoints" / checkpoint)
    device = select_device(run.train.device)
    data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    if split not in data.splits:
        _fail(f"task {run.task.name!r} has no split {split!r}; splits: {sorted(data.splits)}")
    seq2seq = data.kind == "seq2seq"
    beam_size = beam or run.train.beam_size
    examples = evaluated_examples(len(data.splits[split]), batch_size, max_examples=max_examples)
    search = "greedy decoding" if beam_size == 1 else f"beam {beam_size}"
    generated = (f", solved by greedy decoding (at most {data.checker.max_new_tokens} new tokens each) and "
                 "checked by the task's oracle" if data.checker is not None else "")
    err_console.print(f"evaluating {run_dir} ({checkpoint}) on {run.task.name}/{split}: {examples:,} examples"
                      + (f", BLEU with {search} on {examples:,} sentences" if seq2seq else "") + generated,
                      highlight=False, soft_wrap=True)
    metrics = evaluate(model.to(device), data, split, batch_size, device, bleu=seq2seq, beam_size=beam_size,
                       alpha=run.train.length_penalty, max_offset=run.train.decode_max_offset,
                       max_examples=max_examples, progress=True)
    table = Table(title=f"{run_dir} ({checkpoint}) on {run.task.name}/{split}")
    for key in metrics:
        table.add_column(key, justify="right")
    table.add_row(*[_cell(v) for v in metrics.values()])
    console.print(table)


def _check_checkpoint_name(checkpoint: str) -> None:
    if checkpoint not in ("best", "last"):
        _fail(f"--checkpoint must be best or last, got {checkpoint!r}")


def read_text_lines(raw: bytes, source: str) -> list[str]:
    """Decode UTF-8 input into lines; undecodable bytes raise ``UserError`` naming the line and byte."""
    from transevolve.errors import UserError

    try:
        return raw.decode("utf-8-sig").splitlines()
    except UnicodeDecodeError as error:
        offset = error.start
        line = raw.count(b"\n", 0, offset) + 1
        column = offset - (raw.rfind(b"\n", 0, offset) + 1) + 1
        raise UserError(f"{source}, line {line}, byte {column}: 0x{raw[offset]:02x} is not valid UTF-8 "
                        f"({error.reason}); translate reads UTF-8 text (convert it first, e.g. "
                        "iconv -f latin1 -t utf-8)") from None


@app.command()
def translate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory of a translation (seq2seq) task.")],
    input_file: Annotated[Path | None, typer.Option("--input", "-i", help="UTF-8 text file, one sentence per "
                                                    "line (default: standard input).")] = None,
    beam: Annotated[int, typer.Option(help="Beam size (1 = greedy).", min=1)] = 4,
    alpha: Annotated[float, typer.Option(help="Length penalty exponent ((5+len)/6)^alpha.")] = 0.6,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    batch_size: Annotated[int, typer.Option(help="Sentences per batch.", min=1)] = 32,
) -> None:
    """Translate sentences with a trained encoder-decoder (cached beam search); prints one line per input.

    A sentence longer than the model's max_length (in subword tokens) is cut to it, with a warning on stderr.
    """
    import torch

    from transevolve.checkpoint import load_model
    from transevolve.tasks import get_task
    from transevolve.train.config import load_saved_run
    from transevolve.train.evaluation import decode_batch
    from transevolve.train.loop import select_device

    _check_checkpoint_name(checkpoint)
    run = load_saved_run(run_dir)
    if input_file is not None:  # read (and check) the input before the slow loading
        lines = read_text_lines(input_file.read_bytes(), str(input_file))
    else:
        lines = read_text_lines(sys.stdin.buffer.read(), "standard input")
    model = load_model(run_dir / "checkpoints" / checkpoint)
    if model.config.kind != "encoder_decoder":
        _fail(f"{run_dir} holds a {model.config.kind} model; translate needs an encoder_decoder run")
    data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    if data.tokenizer is None:
        _fail(f"task {run.task.name!r} has no tokenizer")
    device = select_device(run.train.device)
    model = model.to(device)
    limit = model.config.max_length
    for start in range(0, len(lines), batch_size):
        encoded = []
        for number, line in enumerate(lines[start:start + batch_size], start=start + 1):
            ids = data.tokenizer.encode(line)
            if len(ids) > limit:
                err_console.print(f"warning: line {number} has {len(ids)} tokens; only the first {limit} (the "
                                  "model's max_length) are translated", highlight=False)
            encoded.append(ids[:limit] or [0])
        src = torch.nn.utils.rnn.pad_sequence([torch.tensor(ids) for ids in encoded], batch_first=True).to(device)
        for ids in decode_batch(model, src, beam, alpha, run.train.decode_max_offset):
            typer.echo(data.tokenizer.decode(ids))


@app.command()
def inspect(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more run directories (e.g. a TransEvolve run and "
                                                   "a Transformer run on the same task).")],
    index: Annotated[int, typer.Option(help="Which validation example to show.", min=0)] = 0,
    max_tokens: Annotated[int, typer.Option(help="Show at most this many leading tokens.", min=2)] = 48,
    out: Annotated[Path | None, typer.Option(help="PNG to write (default: attention.png in the first run).")
                   ] = None,
) -> None:
    """Plot how self-attention evolves over depth (TransEvolve: A0 then each layer, per head).

    Every run must be of the same task (the example comes from the first run's validation split).
    """
    from transevolve.checkpoint import load_model
    from transevolve.inspect_attention import attention_maps, check_same_task, plot_attention
    from transevolve.tasks import collate, get_task
    from transevolve.train.config import load_saved_run

    runs = [load_saved_run(run_dir) for run_dir in run_dirs]
    models = [load_model(run_dir / "checkpoints" / "best") for run_dir in run_dirs]
    check_same_task([(str(d), r.task.name, m.config.vocab_size) for d, r, m in zip(run_dirs, runs, models,
                                                                                  strict=True)])
    first = runs[0]
    data = get_task(first.task.name, **first.task.options).load(first.task.seed)
    split = data.splits["validation"]
    if index >= len(split):
        _fail(f"--index {index} but the validation split has {len(split)} examples")
    example = {k: (v[:max_tokens] if k in ("ids", "src") and v.dim() == 1 else v) for k, v in split[index].items()}
    if "loss_mask" in example:
        example = {k: v[:max_tokens] for k, v in example.items()}
    panels = []
    for model in models:
        maps = attention_maps(model, collate([example]))
        name = model.config.name or f"{model.config.attention}/{model.config.ff_type}"
        panels.append((name, maps))
        shifts = ", ".join(f"{s:.3f}" for s in maps.layer_shift())
        console.print(f"{name}: {len(maps.maps)} maps over {maps.tokens} tokens; mean change of attention between "
                      f"consecutive layers (total variation): {shifts}", highlight=False)
    path = plot_attention(panels, out or run_dirs[0] / "attention.png")
    console.print(f"wrote {path}", highlight=False)


@app.command()
def params(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value changes applied to every preset, "
                                                              "e.g. width=256 num_heads=4 time_dim=64")] = None,
    preset: Annotated[list[str] | None, typer.Option(help=f"Presets to list (default: the official grid). "
                                                          f"Choices: {', '.join(PRESETS)}")] = None,
    schemes: Annotated[bool, typer.Option("--schemes", help="Also list every layer-update scheme: field "
                                          "evaluations per layer, parameters and FLOPs relative to sequential."
                                          )] = False,
    length: Annotated[int, typer.Option(help="Sequence length for the FLOP ratios of --schemes.", min=1)] = 512,
) -> None:
    """Parameter counts computed from the config alone (no model is built)."""
    from transevolve.params import count_parameters

    names = preset or [n for n in PRESETS if n != "debug"]
    unknown = [n for n in names if n not in PRESETS]
    if unknown:
        _fail(f"unknown preset(s) {unknown}; choose from {list(PRESETS)}")
    table = Table(title="trainable parameters")
    for column in ("preset", "kind", "attention", "ff", "scheme", "blocks x layers", "fidelity", "encoder",
                   "decoder", "non-embedding", "total"):
        table.add_column(column, justify="left" if column in ("preset", "kind", "attention", "ff", "scheme")
                         else "right")
    configs = {name: apply_overrides(PRESETS[name], overrides or []) for name in names}
    for name, config in configs.items():
        counts = count_parameters(config)
        scheme = config.scheme + (f", shared x{config.share_layers}" if config.share_layers > 1 else "")
        table.add_row(name, config.kind, config.attention, config.ff_type, scheme,
                      f"{config.num_blocks} x {config.layers_per_block}", config.fidelity, f"{counts.encoder:,}",
                      f"{counts.decoder:,}", f"{counts.non_embedding:,}", f"{counts.total:,}")
    console.print(table)
    if schemes:
        from transevolve.bench.flops import scheme_costs

        for name, config in configs.items():
            rows = scheme_costs(config, length)
            scheme_table = Table(title=f"{name}: layer-update schemes (relative to sequential; FLOPs per token at "
                                       f"n={length})")
            for column in ("scheme", "field evaluations", "non-embedding parameters", "parameters x", "FLOPs x"):
                scheme_table.add_column(column, justify="left" if column == "scheme" else "right")
            for row in rows:
                scheme_table.add_row(str(row["scheme"]), str(row["evaluations"]), f"{row['parameters']:,}",
                                     f"{row['parameters_ratio']:.3f}", f"{row['flops_ratio']:.2f}")
            console.print(scheme_table)


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


def _show_version(value: bool) -> None:
    if value:
        from transevolve import __version__

        typer.echo(f"transevolve {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.", is_eager=True,
                                          callback=_show_version)] = False,
    debug: Annotated[bool, typer.Option("--debug", help=f"Show the traceback of errors (also {DEBUG_ENV}=1).")
                     ] = False,
) -> None:
    global _debug
    _debug = debug


# Command groups that live next to their code (`transevolve data ...`, `transevolve bench ...`).
_GROUPS = {"data": "transevolve.data.cli", "bench": "transevolve.bench.cli", "study": "transevolve.study_cli",
           "results": "transevolve.results_cli"}


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
_wrap_commands(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
