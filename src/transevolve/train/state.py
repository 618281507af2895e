"""Training checkpoints: ``RUN_DIR/checkpoints/{last,best}/``.

Each holds ``config.json`` + ``model.safetensors`` (a plain model checkpoint: ``transevolve.load_model`` reads it),
``trainer_state.json`` (step, data position, best metric) and ``optimizer.pt`` (optimizer state and RNG states,
tensors only, loaded with ``torch.load(weights_only=True)``, so loading never executes code). A checkpoint is
written to a temporary directory and moved into place, so an interruption never leaves half a checkpoint.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transevolve.checkpoint import CheckpointError, load_state, read_config, save_model

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"


@dataclass
class TrainerState:
    """Where training stands. ``epoch`` and ``batch_in_epoch`` locate the next global batch."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    evals_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    step_seconds: float = 0.0
    tokens_seen: int = 0


def save_training_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                             state: TrainerState) -> None:
    directory = Path(directory)
    temporary = directory.with_name(directory.name + ".tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    save_model(model, temporary)
    (temporary / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, temporary / OPTIMIZER_FILE)
    backup = directory.with_name(directory.name + ".old")
    if directory.exists():
        if backup.exists():
            shutil.rmtree(backup)
        directory.rename(backup)
    temporary.rename(directory)
    if backup.exists():
        shutil.rmtree(backup)


def load_training_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None
                             ) -> TrainerState:
    """Restore model, optimizer and RNG states; returns the trainer state. Errors name what is wrong."""
    directory = Path(directory)
    if not (directory / STATE_FILE).is_file():
        raise CheckpointError(f"{directory} is not a training checkpoint (no {STATE_FILE})")
    saved_config = read_config(directory)
    config = getattr(model, "config", None)
    if saved_config != config:
        assert config is not None
        differences = [f"{key}: checkpoint {value!r} vs run {getattr(config, key)!r}"
                       for key, value in saved_config.to_dict().items()
                       if key != "name" and getattr(config, key) != value]
        raise CheckpointError(f"{directory} was saved from another model config:\n  " + "\n  ".join(differences))
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        weights = load_file(str(directory / "model.safetensors"))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{directory / 'model.safetensors'} is unreadable (truncated or corrupt?): {error}"
                              ) from error
    load_state(model, {k: v.to(next(model.parameters()).device) for k, v in weights.items()}, str(directory))
    try:
        state = TrainerState(**json.loads((directory / STATE_FILE).read_text()))
    except (json.JSONDecodeError, TypeError) as error:
        raise CheckpointError(f"{directory / STATE_FILE} is corrupt: {error}") from error
    if optimizer is not None:
        try:
            payload = torch.load(directory / OPTIMIZER_FILE, weights_only=True, map_location="cpu")
        except Exception as error:  # unpickling errors, truncated zip, missing file
            raise CheckpointError(f"{directory / OPTIMIZER_FILE} is unreadable: {type(error).__name__}: {error}"
                                  ) from error
        try:
            optimizer.load_state_dict(payload["optimizer"])
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"{directory / OPTIMIZER_FILE} does not match the optimizer: {error}") from error
        torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return state
