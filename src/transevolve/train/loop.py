"""The training recipe: build the task, the model and the optimizer, train, evaluate, checkpoint.

``train(run_config, run_dir)`` is the whole job; ``transevolve train`` is a thin wrapper. Everything a run
produces goes to ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/{last,best}/``,
``results.json``, ``curves.png``. Multi-process data parallelism: launch with ``torchrun``; rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.models import build_model
from transevolve.modules.dense import fast_bf16_available, set_dense_backend
from transevolve.params import count_parameters
from transevolve.tasks import TaskData, collate, get_task
from transevolve.train.batching import epoch_batches, shard, token_budget_batches
from transevolve.train.config import RunConfig, TrainConfig
from transevolve.train.evaluation import evaluate, headline_metric
from transevolve.train.objectives import forward_loss, loss_units
from transevolve.train.progress import Progress
from transevolve.train.state import CheckpointStore, TrainerState, load_training_checkpoint

MODEL_KIND = {"classification": "classifier", "seq2seq": "encoder_decoder", "language_modeling": "decoder"}
HEADLINE = {"classification": "accuracy", "seq2seq": "token_accuracy", "language_modeling": "token_accuracy"}


class TrainingDivergedError(RuntimeError):
    """The loss or the gradient became NaN or infinite."""


@dataclass
class RunResult:
    run_dir: Path
    model_config: ModelConfig
    parameters: int
    steps: int
    train_seconds: float          # wall time of the training loop, evaluations and checkpoints included
    tokens_per_second: float      # input tokens per second of optimizer steps (evaluation excluded)
    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    interrupted: bool = False


# ---------------------------------------------------------------------------------------------------------
@dataclass
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_request: str) -> tuple[Distributed, torch.device]:
    """Join the ``torchrun`` process group when launched by it (gloo on CPU, nccl on GPU)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size > 1 and not torch.distributed.is_initialized():
        use_cuda = torch.cuda.is_available() and device_request in ("auto", "cuda")
        torch.distributed.init_process_group(backend="nccl" if use_cuda else "gloo")
    dist = Distributed(int(os.environ.get("RANK", "0")), world_size, int(os.environ.get("LOCAL_RANK", "0")))
    return dist, select_device(device_request, dist.local_rank)


def select_device(request: str, local_rank: int = 0) -> torch.device:
    if request == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if request.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={request!r} but no CUDA device is available; use device=auto or cpu")
    return torch.device(request)


# ---------------------------------------------------------------------------------------------------------
def resolve_model_config(run: RunConfig, data: TaskData) -> ModelConfig:
    """The full ModelConfig: the run's model section plus what the task decides."""
    fields: dict[str, Any] = dict(run.model)
    fields.setdefault("max_length", max(data.max_length, 8))
    if fields["max_length"] < data.max_length:
        raise ValueError(f"model.max_length={fields['max_length']} is shorter than the task's longest sequence "
                         f"({data.max_length}); raise it or shorten the task's sequences")
    kind = MODEL_KIND[data.kind]
    return ModelConfig(kind=kind, vocab_size=data.vocab_size,  # type: ignore[arg-type]
                       num_classes=data.num_classes if kind == "classifier" else None, **fields)


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """AdamW/Adam; weight decay on matrices only (not on biases, norms, scales)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    cls = torch.optim.AdamW if train.optimizer == "adamw" else torch.optim.Adam
    if train.optimizer == "adam":
        groups = [{"params": decay + no_decay, "weight_decay": train.weight_decay}]
    return cls(groups, lr=train.learning_rate, betas=train.betas, eps=train.eps)


def learning_rate(step: int, train: TrainConfig, width: int) -> float:
    """Learning rate for optimizer step ``step`` (1-based)."""
    step = max(step, 1)
    warmup = max(train.warmup_steps, 1)
    if train.schedule == "noam":
        return train.noam_scale * width**-0.5 * min(1.0, step / warmup) / math.sqrt(max(step, warmup))
    if step <= train.warmup_steps:
        return train.learning_rate * step / warmup
    if train.schedule == "constant":
        return train.learning_rate
    progress = (step - train.warmup_steps) / max(1, train.max_steps - train.warmup_steps)
    return train.learning_rate * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# ---------------------------------------------------------------------------------------------------------
class MetricsLog:
    """``metrics.jsonl``: one JSON object per line (training logs and evaluations); optionally TensorBoard."""

    def __init__(self, path: Path, enabled: bool, tensorboard: bool = False) -> None:
        self.path, self.enabled = path, enabled
        self.writer = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as error:
                raise ValueError("train.tensorboard=true needs the tensorboard package: "
                                 "pip install -e '.[tensorboard]'") from error
            self.writer = SummaryWriter(str(path.parent / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.writer is not None:
            for key, value in record.items():
                if key not in ("step", "split", "epoch") and isinstance(value, int | float):
                    self.writer.add_scalar(f"{record['split']}/{key}", value, record["step"])
            self.writer.flush()


def _global_batches(data: TaskData, train: TrainConfig, epoch: int) -> list[list[int]]:
    dataset = data.splits["train"]
    if train.max_tokens:
        return token_budget_batches(dataset.lengths, train.max_tokens, train.seed, epoch)
    return epoch_batches(len(dataset), train.batch_size, train.seed, epoch)


def train(run: RunConfig, run_dir: str | Path, resume: bool = False, quiet: bool = False,
          data: TaskData | None = None, stop_at_step: int | None = None) -> RunResult:
    """Train ``run`` into ``run_dir`` (resuming from ``run_dir/checkpoints/last`` when ``resume``).

    A fresh run needs an empty or missing ``run_dir``. Ctrl-C (SIGINT) or SIGTERM asks the run to stop at the
    end of the current step, where it saves a checkpoint; a second Ctrl-C stops at once (the last checkpoint on
    disk stays valid). Resuming truncates ``metrics.jsonl`` to the checkpoint's step, so an interrupted and
    resumed run logs and computes exactly what an uninterrupted one does. ``stop_at_step`` stops as an
    interruption would (the schedule still follows ``train.max_steps``).
    """
    run_dir = Path(run_dir)
    cfg = run.train
    dist, device = init_distributed(cfg.device)
    store = CheckpointStore(run_dir / "checkpoints")
    resume_from_checkpoint = _prepare_run_directory(run_dir, store, resume, dist)
    torch.manual_seed(cfg.seed)
    if data is None:
        data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    model_config = resolve_model_config(run, data)
    model = build_model(model_config).to(device)
    optimizer = build_optimizer(model, cfg)
    if dist.world_size > 1:  # every process its own dropout stream (the model itself is broadcast from rank 0)
        torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)
    state = TrainerState()
    if resume_from_checkpoint:
        state = store.load("last", model, optimizer, dist.rank, dist.world_size)
    if dist.is_main:
        resolved = run.to_dict() | {"resolved_model": model_config.to_dict()}
        _write_atomically(run_dir / "config.yaml", yaml.safe_dump(resolved, sort_keys=False))
        truncate_metrics(run_dir / "metrics.jsonl", state.step)
    parameters = count_parameters(model_config).total
    wrapped: nn.Module = model
    if dist.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=may_leave_parameters_unused(model_config))
    log = MetricsLog(run_dir / "metrics.jsonl", dist.is_main, cfg.tensorboard)
    progress = Progress(total=cfg.max_steps, start=state.step, enabled=dist.is_main and not quiet,
                        title=f"{data.name} {model_config.attention}/{model_config.ff_type}")
    if resume:
        progress.note(f"resuming {run_dir} at step {state.step}" if resume_from_checkpoint else
                      f"{run_dir} stopped before its first checkpoint: starting it again from step 0")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    if cfg.precision == "bf16" and device.type == "cpu" and not fast_bf16_available():
        progress.note("train.precision=bf16 on a CPU without bf16 matrix hardware (no AVX-512 BF16 or AMX): "
                      "PyTorch's fallback kernel makes it far slower than precision=fp32")
    try:
        set_dense_backend(cfg.dense_backend)
    except ValueError as error:
        raise ConfigError(f"train.{error}") from None
    dataset = data.splits["train"]
    batches = _global_batches(data, cfg, state.epoch)
    interrupted, saved_step = False, state.step if resume_from_checkpoint else -1
    window_start = time.perf_counter()
    run_start = time.perf_counter() - state.elapsed_seconds
    stop = StopRequest(progress)

    def save(names: tuple[str, ...] = ("last",)) -> None:
        nonlocal saved_step
        state.elapsed_seconds = time.perf_counter() - run_start
        rank_rng = _gather_rng(dist)
        if dist.is_main:
            store.save(model, optimizer, state, names, rank_rng)
        saved_step = state.step

    try:
        with stop:
            while state.step < cfg.max_steps:
                if stop_at_step is not None and state.step >= stop_at_step:
                    stop.requested = True
                if _agree(stop.requested, dist, device):
                    interrupted = True
                    break
                if state.batch_in_epoch >= len(batches):
                    state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                    batches = _global_batches(data, cfg, state.epoch)
                step_start = time.perf_counter()
                global_batch = batches[state.batch_in_epoch]
                units = loss_units(collate([dataset[i] for i in global_batch]), data.kind)
                lr = learning_rate(state.step + 1, cfg, model_config.width)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                model.train()
                micro_batches = shard(global_batch, dist.rank, dist.world_size, cfg.grad_accumulation)
                step_loss = torch.zeros((), device=device)
                step_tokens = 0
                for index, micro in enumerate(micro_batches):
                    # A process whose share of a small global batch is empty still takes part in the gradient
                    # all-reduce: it runs one example with weight 0 (in one process the micro-batch is skipped).
                    weight = 1.0 if micro else 0.0
                    if not micro:
                        if dist.world_size == 1:
                            continue
                        micro = global_batch[:1]
                    batch = {k: v.to(device) for k, v in collate([dataset[i] for i in micro]).items()}
                    sync = index == len(micro_batches) - 1 or dist.world_size == 1
                    context = wrapped.no_sync() if not sync and dist.world_size > 1 else _null()
                    with context, autocast:
                        loss_sum, _ = forward_loss(wrapped, batch, data.kind, cfg.label_smoothing)
                        loss = loss_sum * (weight * dist.world_size / max(units, 1))
                    loss.backward()
                    if weight:
                        step_loss += loss_sum.detach()
                        step_tokens += sum(int(t.numel()) for k, t in batch.items() if k in ("ids", "src", "tgt"))
                if dist.world_size > 1:
                    torch.distributed.all_reduce(step_loss)
                if not torch.isfinite(step_loss):
                    raise TrainingDivergedError(
                        f"the loss became {float(step_loss)} at step {state.step + 1}; the last good checkpoint "
                        f"is {store.path('last') if store.has('last') else '(none yet)'}. Lower "
                        "train.learning_rate, enable train.clip_norm or use precision=fp32")
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm or float("inf"))
                if not torch.isfinite(grad_norm):
                    raise TrainingDivergedError(f"the gradient norm became {float(grad_norm)} at step "
                                                f"{state.step + 1}; lower train.learning_rate")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batch_in_epoch += 1
                state.step_seconds += time.perf_counter() - step_start
                state.window_loss += float(step_loss)
                state.window_units += units
                state.window_tokens += step_tokens * dist.world_size
                if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                    seconds = time.perf_counter() - window_start
                    record = {"step": state.step, "split": "train",
                              "loss": state.window_loss / max(state.window_units, 1), "lr": lr,
                              "tokens": state.window_tokens,
                              "tokens_per_s": state.window_tokens / max(seconds, 1e-9), "epoch": state.epoch,
                              "elapsed_s": time.perf_counter() - run_start}
                    nfe = getattr(model, "function_evaluations", lambda: None)()
                    if nfe is not None:  # scheme="adaptive": ODE field evaluations of the last training forward
                        record["nfe"] = nfe
                    log.write(record)
                    progress.update(state.step, record["loss"], lr, record["tokens_per_s"])
                    state.tokens_seen += state.window_tokens
                    state.window_loss, state.window_units, state.window_tokens = 0.0, 0, 0
                    window_start = time.perf_counter()
                else:
                    progress.update(state.step)
                evaluate_now = cfg.eval_every and state.step % cfg.eval_every == 0
                if evaluate_now or state.step == cfg.max_steps:
                    improved, early_stop = _evaluate(model, data, cfg, device, state, log, progress)
                    save(("last", "best") if improved else ("last",))
                    if dist.world_size > 1:
                        torch.distributed.barrier()
                    if early_stop:
                        progress.note(f"early stopping at step {state.step}: no improvement in "
                                      f"{cfg.early_stopping} evaluations")
                        break
                elif cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                    save()
            if interrupted:
                if saved_step != state.step:
                    save()
                paused = stop_at_step is not None and state.step >= stop_at_step  # a planned segment end
                if paused:  # the caller planned this stop (stop_at_step) and resumes the run itself
                    progress.note(f"paused at step {state.step}; saved {store.path('last')}")
                else:
                    progress.note(f"interrupted at step {state.step}; saved {store.path('last')}. Resume with: "
                                  f"transevolve train --resume {run_dir}")
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, mid-step; the checkpoint on disk is untouched
        interrupted = True
        last = f"step {store.step('last')}" if store.has("last") else "none yet"
        progress.note(f"stopped at once; the last checkpoint ({last}) is intact. Resume with: "
                      f"transevolve train --resume {run_dir}")
    finally:
        progress.close()
    train_seconds = time.perf_counter() - run_start
    result = RunResult(run_dir, model_config, parameters, state.step, train_seconds,
                       state.tokens_seen / max(state.step_seconds, 1e-9), interrupted=interrupted)
    if interrupted:
        return result
    return _finish(result, model, data, cfg, device, store.path("best"), dist, quiet)


def may_leave_parameters_unused(config: ModelConfig) -> bool:
    """Whether a forward pass may leave parameters out of the graph (DDP must then look for them).

    Official-fidelity TransEvolve keeps ``W_K``'s time columns, which the exact maths never reads; the fast
    attention paths skip them, the reference path (and float16 autocast, which uses it) does not.
    """
    return config.attention == "evolved" and config.fidelity == "official"


def _gather_rng(dist: Distributed) -> list[torch.Tensor] | None:
    """Every process's CPU RNG state, in rank order (None in a single process)."""
    if dist.world_size == 1:
        return None
    states: list[Any] = [None] * dist.world_size
    torch.distributed.all_gather_object(states, torch.get_rng_state())
    return states


def _agree(flag: bool, dist: Distributed, device: torch.device) -> bool:
    """True on every rank when any rank has ``flag`` set (all processes stop at the same step)."""
    if dist.world_size == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.all_reduce(value)
    return bool(value.item() > 0)


class StopRequest:
    """SIGINT/SIGTERM handling for the training loop: the first signal asks for a stop at the next step
    boundary, a second SIGINT raises ``KeyboardInterrupt`` at once. Only installed in the main thread."""

    def __init__(self, progress: Progress) -> None:
        self.requested = False
        self.progress = progress
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        if self.progress.enabled:  # os.write: safe inside a signal handler, unlike buffered prints
            name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
            os.write(2, f"\n{name}: stopping after this step and saving a checkpoint (Ctrl-C again to stop at "
                        "once)\n".encode())

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *args: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def truncate_metrics(path: Path, step: int) -> None:
    """Keep the rows of ``metrics.jsonl`` up to ``step`` (a resumed run rewrites what came after its checkpoint;
    a line cut short by a kill is dropped)."""
    if not path.is_file():
        return
    kept, changed = [], False
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = int(record["step"]) <= step
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            keep = False
        if keep:
            kept.append(line)
        else:
            changed = True
    if changed:
        _write_atomically(path, "".join(line + "\n" for line in kept))


def _prepare_run_directory(run_dir: Path, store: CheckpointStore, resume: bool, dist: Distributed) -> bool:
    """Check ``run_dir`` for a fresh run or a resume (every rank checks; rank 0 repairs); returns whether a
    checkpoint is there to resume from."""
    if resume:
        if not (run_dir / "config.yaml").is_file() and not store.root.is_dir():
            raise FileNotFoundError(f"nothing to resume: {run_dir} is not a run directory (no config.yaml)")
        if dist.is_main:
            for note in store.recover():
                print(f"checkpoint recovery in {store.root}: {note}", file=sys.stderr)
        _barrier(dist)
        return store.has("last")
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        held = sorted(p.name for p in run_dir.iterdir())[:6] if run_dir.is_dir() else []
        hint = (f"resume it with: transevolve train --resume {run_dir}" if (run_dir / "config.yaml").is_file()
                else "it is not a run directory")
        raise FileExistsError(f"{run_dir} is not empty (holds {', '.join(held) or 'a file'}); a new run needs an "
                              f"empty or new --run-dir. If it is an interrupted run, {hint}")
    _barrier(dist)
    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
    return False


def _barrier(dist: Distributed) -> None:
    if dist.world_size > 1:
        torch.distributed.barrier()


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _evaluate(model: nn.Module, data: TaskData, cfg: TrainConfig, device: torch.device, state: TrainerState,
              log: MetricsLog, progress: Progress) -> tuple[bool, bool]:
    """Validate and update the best metric; returns (improved, early stopping triggers)."""
    metrics = evaluate(model, data, "validation", cfg.batch_size, device, cfg.eval_batches)
    headline = headline_metric(data)
    log.write({"step": state.step, "split": "validation", **metrics})
    progress.note(f"step {state.step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    improved = state.best_metric is None or metrics[headline] > state.best_metric
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = metrics[headline], state.step, 0
    else:
        state.evals_without_improvement += 1
    return improved, bool(cfg.early_stopping) and state.evals_without_improvement >= cfg.early_stopping


def _finish(result: RunResult, model: nn.Module, data: TaskData, cfg: TrainConfig, device: torch.device,
            best_dir: Path, dist: Distributed, quiet: bool = False) -> RunResult:
    """Evaluate the best checkpoint on validation and test; write results.json and the curves.

    The cost is bounded by ``train.final_eval_max_examples`` and ``train.bleu_max_sentences`` and stated in one
    line before it starts; the BLEU decoding shows its progress (rank 0, unless ``quiet``).
    """
    import sys

    from rich.console import Console

    from transevolve.train.evaluation import evaluated_examples

    best_step = None
    if (best_dir / "trainer_state.json").is_file():
        best_step = load_training_checkpoint(best_dir, model, None).step
    seq2seq = data.kind == "seq2seq"
    splits = ("validation", "test")
    totals = {split: len(data.splits[split]) for split in splits}
    examples = {split: evaluated_examples(totals[split], cfg.batch_size, max_examples=cfg.final_eval_max_examples)
                for split in splits}
    sentences = {split: min(n, cfg.bleu_max_sentences) if cfg.bleu_max_sentences else n
                 for split, n in examples.items()}
    show = dist.is_main and not quiet
    if show:
        def count(split: str) -> str:
            return f"{examples[split]:,} examples" + (f" of {totals[split]:,}" if examples[split] < totals[split]
                                                      else "")

        checkpoint = f"best checkpoint (step {best_step})" if best_step is not None else "final model"
        search = "greedy decoding" if cfg.beam_size == 1 else f"beam {cfg.beam_size}"
        bleu = (f", BLEU with {search} on {sentences['validation']:,} and {sentences['test']:,} sentences"
                if seq2seq else "")
        Console(stderr=True, width=None if sys.stderr.isatty() else 160).print(
            f"final evaluation: {checkpoint} on validation ({count('validation')}) and test ({count('test')}){bleu}",
            highlight=False, markup=False, soft_wrap=True)
    decoding = {"bleu": seq2seq, "beam_size": cfg.beam_size, "alpha": cfg.length_penalty,
                "max_offset": cfg.decode_max_offset, "max_examples": cfg.final_eval_max_examples,
                "bleu_max_sentences": cfg.bleu_max_sentences, "progress": show}
    result.validation = evaluate(model, data, "validation", cfg.batch_size, device, **decoding)
    result.test = evaluate(model, data, "test", cfg.batch_size, device, **decoding)
    if dist.is_main:
        evaluation = {"checkpoint_step": best_step, "examples": examples, "split_sizes": totals}
        if seq2seq:
            evaluation |= {"bleu_sentences": sentences, "beam_size": cfg.beam_size}
        payload = {
            "task": data.name, "model": result.model_config.to_dict(), "parameters": result.parameters,
            "steps": result.steps, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "validation": result.validation, "test": result.test,
            "final_evaluation": evaluation,
            "device": str(device), "world_size": dist.world_size, "torch": torch.__version__,
        }
        logged = result.run_dir / "metrics.jsonl"
        nfe = [row["nfe"] for row in map(json.loads, logged.read_text().splitlines() if logged.is_file() else [])
               if row.get("split") == "train" and "nfe" in row]
        if nfe:  # scheme="adaptive": mean field evaluations per forward over the logged training steps
            payload["mean_nfe"] = sum(nfe) / len(nfe)
        (result.run_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        from transevolve.train.plots import plot_curves

        plot_curves(result.run_dir)
    return result


def load_run(run_dir: str | Path) -> RunConfig:
    """The run config saved in ``run_dir/config.yaml`` (clear errors for a missing or unreadable file)."""
    from transevolve.train.config import load_saved_run

    return load_saved_run(run_dir)
