"""Save and load models as ``config.json`` + ``model.safetensors`` (no pickle, nothing executes on load).

The random feed-forward's fixed tensors are persistent buffers, so they are in the file and a loaded model
computes exactly what the saved one did.

The safetensors metadata holds a SHA-256 of every tensor's bytes (key ``sha256``, a JSON object tensor name ->
hex digest); :func:`load_weights` and :func:`load_model` verify them and name the tensors whose bytes changed, so a
damaged file fails to load instead of evaluating to NaN. Files written before checksums existed load with a
warning.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import struct
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from transevolve.config import ModelConfig
from transevolve.errors import UserError
from transevolve.models import build_model

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "transevolve-model"
CHECKSUM_KEY = "sha256"


class CheckpointError(UserError):
    """A checkpoint that cannot be loaded; the message says what is wrong."""


class UnverifiedCheckpointWarning(UserWarning):
    """A weights file without checksums (written by an older version) was loaded unverified."""


def tensor_sha256(tensor: torch.Tensor) -> str:
    """SHA-256 of a tensor's bytes as safetensors stores them (contiguous, row-major, on CPU)."""
    flat = tensor.detach().contiguous().cpu().reshape(-1)
    return hashlib.sha256(flat.view(torch.uint8).numpy().tobytes()).hexdigest()


def save_model(model: nn.Module, directory: str | Path) -> Path:
    """Write ``directory/config.json`` and ``directory/model.safetensors``; returns the directory."""
    config = getattr(model, "config", None)
    if not isinstance(config, ModelConfig):
        raise TypeError("save_model expects a transevolve model (with a ModelConfig in .config)")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    checksums = {name: tensor_sha256(tensor) for name, tensor in state.items()}
    save_file(state, str(directory / WEIGHTS_FILE),
              metadata={"format": FORMAT, CHECKSUM_KEY: json.dumps(checksums, sort_keys=True)})
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
    state = load_weights(weights, map_location)
    model = build_model(config)
    load_state(model, state, source=str(weights))
    return model.eval()


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, after checking every tensor against the checksum stored at save time.

    Raises :class:`CheckpointError` when the file is missing, unreadable, or when tensors do not match their
    checksums (naming them). A file without checksums loads with an :class:`UnverifiedCheckpointWarning`.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} not found")
    try:
        state = load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupt?): {error}"
                              ) from error
    verify_weights(path)
    return state


def verify_weights(path: str | Path) -> bool:
    """Check the stored per-tensor SHA-256 digests against the bytes in ``path`` (a readable safetensors file).

    Returns False (with a warning) for a file without checksums; raises :class:`CheckpointError` naming the
    tensors whose bytes do not match.
    """
    path = Path(path)
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as blob:
        (header_size,) = struct.unpack("<Q", blob[:8])
        try:
            header = json.loads(blob[8:8 + header_size])
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise CheckpointError(f"{path} has a corrupt header: {error}") from error
        metadata = header.pop("__metadata__", None) or {}
        if CHECKSUM_KEY not in metadata:
            warnings.warn(f"{path} has no checksums (written by an older transevolve); loaded unverified",
                          UnverifiedCheckpointWarning, stacklevel=3)
            return False
        try:
            expected = json.loads(metadata[CHECKSUM_KEY])
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{path}: the stored checksums are corrupt ({error})") from error
        if not isinstance(expected, dict) or set(expected) != set(header):
            raise CheckpointError(f"{path}: the stored checksums do not list the file's tensors (corrupt header)")
        start = 8 + header_size
        corrupt = []
        for name, info in sorted(header.items()):
            begin, end = info["data_offsets"]
            if hashlib.sha256(blob[start + begin:start + end]).hexdigest() != expected[name]:
                corrupt.append(name)
    if corrupt:
        shown = ", ".join(corrupt[:8]) + (f" ... ({len(corrupt)} in all)" if len(corrupt) > 8 else "")
        raise CheckpointError(f"{path} is corrupt: the bytes of {len(corrupt)} tensor(s) do not match the checksum "
                              f"stored when it was saved: {shown}. Restore the file from a copy (or use the other "
                              "checkpoint, best or last)")
    return True


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
