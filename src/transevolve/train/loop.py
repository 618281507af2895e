"""The training recipe: build the task, the model and the optimizer, train, evaluate, checkpoint.

``train(run_config, run_dir)`` is the whole job; ``transevolve train`` is a thin wrapper. Everything a run
produces goes to ``run_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``, ``checkpoints/{last,best}/``,
``results.json``, ``curves.png``. Multi-process data parallelism: launch with ``torchrun``; rank 0 writes.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from transevolve.config import ModelConfig
from transevolve.models import build_model
from transevolve.params import count_parameters
from transevolve.tasks import TaskData, collate, get_task
from transevolve.train.batching import epoch_batches, shard, token_budget_batches
from transevolve.train.config import RunConfig, TrainConfig, run_config_from_dict
from transevolve.train.evaluation import evaluate
from transevolve.train.objectives import forward_loss, loss_units
from transevolve.train.progress import Progress
from transevolve.train.state import TrainerState, load_training_checkpoint, save_training_checkpoint

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

    ``stop_at_step`` stops early as an interruption would (the last checkpoint is saved, the schedule still
    follows ``train.max_steps``), so that the run can be resumed later.
    """
    run_dir = Path(run_dir)
    cfg = run.train
    dist, device = init_distributed(cfg.device)
    torch.manual_seed(cfg.seed)
    if data is None:
        data = get_task(run.task.name, **run.task.options).load(run.task.seed)
    model_config = resolve_model_config(run, data)
    model = build_model(model_config).to(device)
    optimizer = build_optimizer(model, cfg)
    last_dir, best_dir = run_dir / "checkpoints" / "last", run_dir / "checkpoints" / "best"
    state = TrainerState()
    if resume:
        if not (last_dir / "trainer_state.json").is_file():
            raise FileNotFoundError(f"nothing to resume: {last_dir} has no checkpoint")
        state = load_training_checkpoint(last_dir, model, optimizer)
    elif dist.is_main:
        if (last_dir / "trainer_state.json").is_file():
            raise FileExistsError(f"{run_dir} already holds a run; resume it with --resume or choose another "
                                  "--run-dir")
        run_dir.mkdir(parents=True, exist_ok=True)
        resolved = run.to_dict() | {"resolved_model": model_config.to_dict()}
        (run_dir / "config.yaml").write_text(yaml.safe_dump(resolved, sort_keys=False))
    parameters = count_parameters(model_config).total
    wrapped: nn.Module = model
    if dist.world_size > 1:
        wrapped = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                      else None)
    log = MetricsLog(run_dir / "metrics.jsonl", dist.is_main, cfg.tensorboard)
    progress = Progress(total=cfg.max_steps, start=state.step, enabled=dist.is_main and not quiet,
                        title=f"{data.name} {model_config.attention}/{model_config.ff_type}")
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    dataset = data.splits["train"]
    batches = _global_batches(data, cfg, state.epoch)
    interrupted = False
    window_start, window_tokens, window_loss, window_units = time.perf_counter(), 0, 0.0, 0
    run_start = time.perf_counter() - state.elapsed_seconds
    try:
        while state.step < cfg.max_steps:
            if stop_at_step is not None and state.step >= stop_at_step:
                raise KeyboardInterrupt
            if state.batch_in_epoch >= len(batches):
                state.epoch, state.batch_in_epoch = state.epoch + 1, 0
                batches = _global_batches(data, cfg, state.epoch)
            step_start = time.perf_counter()
            global_batch = batches[state.batch_in_epoch]
            examples = [dataset[i] for i in global_batch]
            units = loss_units(collate(examples), data.kind)
            lr = learning_rate(state.step + 1, cfg, model_config.width)
            for group in optimizer.param_groups:
                group["lr"] = lr
            model.train()
            micro_batches = shard(global_batch, dist.rank, dist.world_size, cfg.grad_accumulation)
            step_loss = torch.zeros((), device=device)
            for index, micro in enumerate(micro_batches):
                if not micro:
                    continue
                batch = {k: v.to(device) for k, v in collate([dataset[i] for i in micro]).items()}
                sync = index == len(micro_batches) - 1 or dist.world_size == 1
                context = wrapped.no_sync() if not sync and dist.world_size > 1 else _null()
                with context, autocast:
                    loss_sum, _ = forward_loss(wrapped, batch, data.kind, cfg.label_smoothing)
                    loss = loss_sum * (dist.world_size / max(units, 1))
                loss.backward()
                step_loss += loss_sum.detach()
                window_tokens += sum(int(t.numel()) for k, t in batch.items() if k in ("ids", "src", "tgt"))
            if dist.world_size > 1:
                torch.distributed.all_reduce(step_loss)
            if not torch.isfinite(step_loss):
                raise TrainingDivergedError(
                    f"the loss became {float(step_loss)} at step {state.step + 1}; the last good checkpoint "
                    f"is {last_dir if last_dir.exists() else '(none yet)'}. Lower train.learning_rate, "
                    "enable train.clip_norm or use precision=fp32")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm or float("inf"))
            if not torch.isfinite(grad_norm):
                raise TrainingDivergedError(f"the gradient norm became {float(grad_norm)} at step "
                                            f"{state.step + 1}; lower train.learning_rate")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            state.step += 1
            state.batch_in_epoch += 1
            state.step_seconds += time.perf_counter() - step_start
            window_loss += float(step_loss)
            window_units += units
            if state.step % cfg.log_every == 0 or state.step == cfg.max_steps:
                seconds = time.perf_counter() - window_start
                tokens_per_s = window_tokens * dist.world_size / max(seconds, 1e-9)
                record = {"step": state.step, "split": "train", "loss": window_loss / max(window_units, 1),
                          "lr": lr, "tokens_per_s": tokens_per_s, "epoch": state.epoch,
                          "elapsed_s": time.perf_counter() - run_start}
                log.write(record)
                progress.update(state.step, record["loss"], lr, tokens_per_s)
                state.tokens_seen += window_tokens * dist.world_size
                window_start, window_tokens, window_loss, window_units = time.perf_counter(), 0, 0.0, 0
            else:
                progress.update(state.step)
            evaluate_now = cfg.eval_every and state.step % cfg.eval_every == 0
            if evaluate_now or state.step == cfg.max_steps:
                stop = _evaluate_and_checkpoint(model, optimizer, data, cfg, device, state, log, progress,
                                                dist, last_dir, best_dir, run_start)
                if stop:
                    progress.note(f"early stopping at step {state.step}: no improvement in "
                                  f"{cfg.early_stopping} evaluations")
                    break
            elif cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0 and dist.is_main:
                state.elapsed_seconds = time.perf_counter() - run_start
                save_training_checkpoint(last_dir, model, optimizer, state)
    except KeyboardInterrupt:
        interrupted = True
        if dist.is_main:
            state.elapsed_seconds = time.perf_counter() - run_start
            save_training_checkpoint(last_dir, model, optimizer, state)
            progress.note(f"interrupted at step {state.step}; saved {last_dir}. Resume with: "
                          f"transevolve train --resume {run_dir}")
    finally:
        progress.close()
    train_seconds = time.perf_counter() - run_start
    result = RunResult(run_dir, model_config, parameters, state.step, train_seconds,
                       state.tokens_seen / max(state.step_seconds, 1e-9), interrupted=interrupted)
    if interrupted:
        return result
    return _finish(result, model, data, cfg, device, best_dir, dist)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *args: object) -> None:
        return None


def _evaluate_and_checkpoint(model: nn.Module, optimizer: torch.optim.Optimizer, data: TaskData,
                             cfg: TrainConfig, device: torch.device, state: TrainerState, log: MetricsLog,
                             progress: Progress, dist: Distributed, last_dir: Path, best_dir: Path,
                             run_start: float) -> bool:
    """Validate, keep best/last checkpoints; returns True when early stopping triggers."""
    metrics = evaluate(model, data, "validation", cfg.batch_size, device, cfg.eval_batches)
    headline = HEADLINE[data.kind]
    log.write({"step": state.step, "split": "validation", **metrics})
    progress.note(f"step {state.step}: validation " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    improved = state.best_metric is None or metrics[headline] > state.best_metric
    if improved:
        state.best_metric, state.best_step, state.evals_without_improvement = metrics[headline], state.step, 0
    else:
        state.evals_without_improvement += 1
    state.elapsed_seconds = time.perf_counter() - run_start
    if dist.is_main:
        save_training_checkpoint(last_dir, model, optimizer, state)
        if improved:
            save_training_checkpoint(best_dir, model, optimizer, state)
    if dist.world_size > 1:
        torch.distributed.barrier()
    return bool(cfg.early_stopping) and state.evals_without_improvement >= cfg.early_stopping


def _finish(result: RunResult, model: nn.Module, data: TaskData, cfg: TrainConfig, device: torch.device,
            best_dir: Path, dist: Distributed) -> RunResult:
    """Evaluate the best checkpoint on validation and test; write results.json and the curves."""
    if (best_dir / "trainer_state.json").is_file():
        load_training_checkpoint(best_dir, model, None)
    decoding = {"bleu": data.kind == "seq2seq", "beam_size": cfg.beam_size, "alpha": cfg.length_penalty,
                "max_offset": cfg.decode_max_offset}
    result.validation = evaluate(model, data, "validation", cfg.batch_size, device, **decoding)
    result.test = evaluate(model, data, "test", cfg.batch_size, device, **decoding)
    if dist.is_main:
        payload = {
            "task": data.name, "model": result.model_config.to_dict(), "parameters": result.parameters,
            "steps": result.steps, "train_seconds": result.train_seconds,
            "tokens_per_second": result.tokens_per_second, "validation": result.validation, "test": result.test,
            "device": str(device), "world_size": dist.world_size, "torch": torch.__version__,
        }
        (result.run_dir / "results.json").write_text(json.dumps(payload, indent=2) + "\n")
        from transevolve.train.plots import plot_curves

        plot_curves(result.run_dir)
    return result


def load_run(run_dir: str | Path) -> RunConfig:
    """The run config saved in ``run_dir/config.yaml``."""
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a transevolve run directory")
    data = yaml.safe_load(path.read_text())
    data.pop("resolved_model", None)
    return run_config_from_dict(data)
