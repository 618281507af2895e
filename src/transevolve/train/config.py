"""Run configuration: a task, a (partial) model config and a training config, read from YAML.

A run file has three sections::

    task:  {name: digits, seed: 0, options: {...}}     # options are the task's keyword arguments
    model: {attention: evolved, ff_type: full, width: 64, num_heads: 1, ...}   # ModelConfig fields
    train: {max_steps: 2000, batch_size: 64, learning_rate: 1e-3, ...}         # TrainConfig fields

``kind``, ``vocab_size``, ``num_classes`` and (by default) ``max_length`` of the model come from the task.
Dotted overrides (``train.max_steps=100 model.width=128 task.options.preset=small``) change any value; unknown
keys fail with the list of valid ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.modules.dense import DENSE_BACKENDS

Optimizer = Literal["adamw", "adam"]
Schedule = Literal["noam", "cosine", "constant"]
Precision = Literal["fp32", "bf16"]

#: Model fields that the task decides.
TASK_DERIVED_MODEL_FIELDS = ("kind", "vocab_size", "num_classes")


@dataclass(frozen=True)
class TrainConfig:
    """How to train.

    Attributes:
        max_steps: optimizer steps.
        batch_size: examples per optimizer step (global, over all processes and accumulation steps); ignored
            when ``max_tokens`` is set.
        max_tokens: token budget per step for length-bucketed batches (sequence-to-sequence); 0 = off.
        grad_accumulation: micro-batches per optimizer step.
        optimizer: ``adamw`` or ``adam`` (betas, eps, weight_decay below).
        learning_rate: peak learning rate for ``cosine``/``constant``; for ``noam`` the official
            ``lr = noam_scale * d^-0.5 * min(1, step / warmup) / sqrt(max(step, warmup))`` is used instead.
        warmup_steps: linear warm-up steps (all schedules).
        clip_norm: gradient clipping by global norm; 0 = off.
        label_smoothing: for classification and sequence losses.
        precision: ``fp32`` or ``bf16`` (autocast; on CPU too).
        dense_backend: ``auto``, ``aten`` or ``onednn``: the backend of float32 dense products
            (:mod:`transevolve.modules.dense`); an execution choice, equal results within float32 rounding.
        eval_every: steps between evaluations on the validation split (0 = only at the end).
        eval_batches: cap on validation batches per evaluation (0 = the whole split).
        log_every: steps between metric log lines.
        checkpoint_every: steps between ``last`` checkpoints (0 = at evaluations and at the end only).
        early_stopping: stop after this many evaluations without improvement (0 = never).
        seed: initialisation, dropout and data order.
        device: ``auto`` (GPU when present), ``cpu``, ``cuda``, ``cuda:1``...
        decode_max_offset: BLEU decoding stops at source length + this.
        beam_size, length_penalty: beam search for the final BLEU (beam 1 = greedy).
        final_eval_max_examples: the final evaluation of the best checkpoint uses at most this many examples of
            the validation and of the test split (the first ones, in a fixed order); 0 = whole splits. It is
            recorded in ``results.json``; metrics on a subset are not comparable with full-split numbers.
        bleu_max_sentences: the final BLEU decodes at most this many sentences per split (beam search is by far
            the slowest part of evaluating a translation model); 0 = as many as evaluated.
        tensorboard: also write TensorBoard event files to ``RUN_DIR/tensorboard`` (needs the optional
            ``tensorboard`` package: ``pip install -e '.[tensorboard]'``).
    """

    max_steps: int = 1000
    batch_size: int = 32
    max_tokens: int = 0
    grad_accumulation: int = 1
    optimizer: Optimizer = "adamw"
    learning_rate: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.01
    schedule: Schedule = "cosine"
    warmup_steps: int = 100
    noam_scale: float = 0.5
    clip_norm: float = 1.0
    label_smoothing: float = 0.0
    precision: Precision = "fp32"
    dense_backend: str = "auto"
    eval_every: int = 200
    eval_batches: int = 0
    log_every: int = 20
    checkpoint_every: int = 0
    early_stopping: int = 0
    seed: int = 0
    device: str = "auto"
    decode_max_offset: int = 50
    beam_size: int = 1
    length_penalty: float = 0.6
    final_eval_max_examples: int = 0
    bleu_max_sentences: int = 0
    tensorboard: bool = False

    def __post_init__(self) -> None:
        errors = []
        for name in ("max_steps", "batch_size", "grad_accumulation", "log_every", "beam_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                errors.append(f"{name}={getattr(self, name)!r} must be a positive integer")
        for name in ("max_tokens", "warmup_steps", "eval_every", "eval_batches", "checkpoint_every",
                     "early_stopping", "decode_max_offset", "final_eval_max_examples", "bleu_max_sentences"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                errors.append(f"{name}={getattr(self, name)!r} must be a non-negative integer")
        for name, literal in (("optimizer", Optimizer), ("schedule", Schedule), ("precision", Precision)):
            if getattr(self, name) not in get_args(literal):
                errors.append(f"{name}={getattr(self, name)!r} is not one of {list(get_args(literal))}")
        if self.dense_backend not in DENSE_BACKENDS:
            errors.append(f"dense_backend={self.dense_backend!r} is not one of {list(DENSE_BACKENDS)}")
        if not self.learning_rate > 0:
            errors.append(f"learning_rate={self.learning_rate} must be positive")
        if not 0 <= self.label_smoothing < 1:
            errors.append(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        if self.clip_norm < 0 or self.weight_decay < 0:
            errors.append("clip_norm and weight_decay must be non-negative")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            errors.append(f"betas={self.betas} must be two numbers in [0, 1)")
        if self.batch_size % self.grad_accumulation:
            errors.append(f"batch_size={self.batch_size} must be divisible by grad_accumulation="
                          f"{self.grad_accumulation}")
        if errors:
            raise ValueError("invalid train config:\n  - " + "\n  - ".join(errors))


@dataclass(frozen=True)
class TaskConfig:
    """Which task, with which options (keyword arguments of the task class) and data seed."""

    name: str = "digits"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RunConfig:
    task: TaskConfig = field(default_factory=TaskConfig)
    model: dict[str, Any] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        valid = {f.name for f in dataclasses.fields(ModelConfig)} - set(TASK_DERIVED_MODEL_FIELDS)
        unknown = sorted(set(self.model) - valid)
        if unknown:
            derived = [k for k in unknown if k in TASK_DERIVED_MODEL_FIELDS]
            hint = f" ({derived} come from the task)" if derived else ""
            raise ValueError(f"unknown model keys {unknown}{hint}; valid keys are {sorted(valid)}")

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["train"]["betas"] = list(self.train.betas)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _build(cls: type, data: Any, section: str) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, dict):
        raise ValueError(f"section {section!r} must be a mapping, got {type(data).__name__}")
    valid = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ValueError(f"unknown {section} keys {unknown}; valid keys are {sorted(valid)}")
    data = dict(data)
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, value in data.items():
        default = defaults.get(key)
        # YAML reads 1e-3 as a string and 5 where 5.0 is meant; coerce to the field's type.
        if isinstance(default, float) and isinstance(value, (str, int)) and not isinstance(value, bool):
            try:
                data[key] = float(value)
            except ValueError:
                raise ValueError(f"{section}.{key}={value!r} must be a number") from None
    if "betas" in data:
        data["betas"] = tuple(float(b) for b in data["betas"])
    return cls(**data)


def run_config_from_dict(data: dict[str, Any]) -> RunConfig:
    if not isinstance(data, dict):
        raise ValueError("a run config must be a mapping with sections task, model and train")
    unknown = sorted(set(data) - {"task", "model", "train"})
    if unknown:
        raise ValueError(f"unknown sections {unknown}; a run config has task, model and train")
    model = data.get("model") or {}
    if not isinstance(model, dict):
        raise ValueError("section 'model' must be a mapping of ModelConfig fields")
    return RunConfig(task=_build(TaskConfig, data.get("task"), "task"), model=dict(model),
                     train=_build(TrainConfig, data.get("train"), "train"))


def _parse_scalar(text: str) -> Any:
    """YAML scalar semantics: ``3`` -> int, ``1e-3`` -> float, ``true`` -> bool, ``[1, 2]`` -> list."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") and value[0] in "0123456789.-+" else value
        except ValueError:
            return value
    return value


def apply_dotted(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides to a nested dict (a copy)."""
    import copy

    result = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value (e.g. train.max_steps=100)")
        path, text = item.split("=", 1)
        keys = path.strip().split(".")
        if keys[0] not in ("task", "model", "train") or len(keys) < 2:
            raise ValueError(f"override {item!r}: the key must start with task., model. or train.")
        node = result
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ValueError(f"override {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_scalar(text)
    return result


RUN_FILE_HELP = """A run file is a YAML mapping with the sections task (its name is required), model and train
(or `base: other.yaml` to start from another run file), e.g.
  task: {name: digits, seed: 0}
  model: {attention: evolved, ff_type: full, width: 64, num_heads: 2, time_dim: 32}
  train: {max_steps: 1000, batch_size: 32}
presets: configs/<task>/{transformer,transevolve-full,transevolve-random}.yaml (e.g. configs/digits/transformer.yaml)"""


def load_run_config(path: str | Path | None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run file (or start from defaults when ``path`` is None) and apply dotted overrides.

    A file must name its task (``task.name``, possibly through ``base:`` or an override); an empty file, a file
    that is not a mapping and a ``base:`` cycle raise :class:`ConfigError` explaining what a run file holds.
    """
    if path is None:
        return run_config_from_dict(apply_dotted({}, overrides or []))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found; presets live in configs/ (e.g. "
                                "configs/digits/transevolve-full.yaml)")
    data = apply_dotted(load_yaml_with_base(path), overrides or [])
    require_task(data, path)
    try:
        return run_config_from_dict(data)
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(f"{path}: {error}") from error


def require_task(data: dict[str, Any], source: str | Path) -> None:
    """Raise :class:`ConfigError` unless ``data`` (a resolved run file) names its task."""
    task = data.get("task")
    if not isinstance(task, dict) or not task.get("name"):
        present = ", ".join(sorted(data)) or "nothing"
        raise ConfigError(f"{source} does not name a task (it holds {present}; task.name is missing).\n"
                          f"{RUN_FILE_HELP}")


def load_yaml_with_base(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a YAML mapping; ``base: other.yaml`` merges another file (relative to this one) under it.

    ``base`` chains may be nested; a file that is its own base, directly or through others, is an error that
    names the chain.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(resolved):], resolved))
        raise ConfigError(f"base: files form a cycle: {cycle}")
    if not path.is_file():
        via = f" (the base of {_chain[-1]})" if _chain else ""
        raise FileNotFoundError(f"config file {path}{via} not found")
    data = read_yaml_mapping(path)
    if "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base must be a file name (relative to {path.parent}), got {base!r}")
    return _merge(load_yaml_with_base(path.parent / base, (*_chain, resolved)), data)


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """The YAML mapping in ``path``; empty, unreadable and non-mapping files raise :class:`ConfigError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path} is not UTF-8 text (byte {error.start}: {error.reason})") from error
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from error
    if data is None:
        raise ConfigError(f"{path} is empty.\n{RUN_FILE_HELP}")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a YAML {type(data).__name__}, not a mapping.\n{RUN_FILE_HELP}")
    return data


def load_saved_run(run_dir: str | Path) -> RunConfig:
    """The run config that ``transevolve train`` saved in ``run_dir/config.yaml``, with clear errors."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {run_dir} is not a transevolve run directory")
    try:
        data = read_yaml_mapping(path)
    except ConfigError as error:
        raise ConfigError(f"{error} ({path} is written by transevolve train; restore it from a copy or train "
                          "the run again)") from error
    data = {k: v for k, v in data.items() if k != "resolved_model"}
    try:
        return run_config_from_dict(data)
    except ValueError as error:
        raise ConfigError(f"{path} is not a valid run config: {error}") from error


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged
