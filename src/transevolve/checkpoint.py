"""Save and load models as ``config.json`` + ``model.safetensors`` (no pickle, nothing executes on load).

The random feed-forward's fixed tensors are persistent buffers, so they are in the file and a loaded model
computes exactly what the saved one did.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from transevolve.config import ModelConfig
from transevolve.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "transevolve-model"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message says what is wrong."""


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``; returns the directory."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save_model expects a transevolve model (with a ModelConfig in .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
    payload = {"format": FORMAT, "format_version": 1, "model": config.to_dict()}
    (directory / CONFIG_FILE).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return directory


def read_config(directory: str | Path) -> ModelConfig:
    """The :class:`ModelConfig` stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} not found: a model checkpoint is a directory with {CONFIG_FILE} and "
                              f"{WEIGHTS_FILE} (written by transevolve.save_model)")
    try:
        payload = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a transevolve model config (format {FORMAT!r} expected)")
    try:
        return ModelConfig.from_dict(payload["model"])
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path} holds an invalid model config: {error}") from error


def load_model(directory: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild the model saved in ``directory`` and load its weights (returned in eval mode)."""
    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{weights} not found")
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights} is not a readable safetensors file (truncated or corrupt?): {error}"
                              ) from error
    model = build_model(config)
    load_state(model, state, source=str(weights))
    return model.eval()


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``load_state_dict`` with an error that names every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = [f"{k}: {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                  for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    if missing or unexpected or mis_shaped:
        lines = [f"{source} does not match the model (was it saved from another config?)"]
        for title, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mis_shaped)):
            if items:
                lines.append(f"  {title} ({len(items)}): {', '.join(items[:6])}{' ...' if len(items) > 6 else ''}")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)
