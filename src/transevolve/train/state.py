"""Training checkpoints that survive a crash at any instant: ``RUN_DIR/checkpoints/``.

Layout::

    checkpoints/step-00000120/   one complete checkpoint (written as step-00000120.tmp/, then renamed)
    checkpoints/last -> step-00000120     relative symbolic links, each replaced atomically (os.replace)
    checkpoints/best -> step-00000100

A checkpoint directory holds ``config.json`` + ``model.safetensors`` (a plain model checkpoint:
``transevolve.load_model(RUN_DIR/checkpoints/best)`` reads it), ``trainer_state.json`` (step, data position,
best metric, logging window) and ``optimizer.pt`` (optimizer and RNG states, tensors only, loaded with
``torch.load(weights_only=True)``, so loading never executes code).

Why this is crash-safe: a checkpoint directory only gets its final name once every file in it is written and
synced, and ``last``/``best`` move from one complete directory to the next with a single atomic rename. Killed
between any two file operations, the run directory holds either the old or the new checkpoint behind ``last``,
never half of one; :meth:`CheckpointStore.recover` tidies what the interrupted save left (temporary directories,
a stale ``best`` link, the older layout's ``last.old``/``last.tmp``) without deleting a complete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from transevolve.checkpoint import CONFIG_FILE, WEIGHTS_FILE, CheckpointError, load_state, read_config, save_model

STATE_FILE = "trainer_state.json"
OPTIMIZER_FILE = "optimizer.pt"
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, STATE_FILE, OPTIMIZER_FILE)
_STEP_DIR = re.compile(r"^step-(\d+)$")


@dataclass
class TrainerState:
    """Where training stands. ``epoch`` and ``batch_in_epoch`` locate the next global batch; the ``window_*``
    fields carry a partly filled logging window across a resume, so the resumed log equals the uninterrupted one."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_metric: float | None = None
    best_step: int = 0
    evals_without_improvement: int = 0
    elapsed_seconds: float = 0.0
    step_seconds: float = 0.0
    tokens_seen: int = 0
    window_loss: float = 0.0
    window_units: int = 0
    window_tokens: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TypeError(f"unknown trainer state fields {unknown}")
        return cls(**data)


def _fsync_file(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:  # not every platform can open a directory
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def is_complete(directory: Path) -> bool:
    """True when ``directory`` holds every file of a training checkpoint."""
    return directory.is_dir() and all((directory / name).is_file() for name in CHECKPOINT_FILES)


def _read_step(directory: Path, key: str = "step") -> int | None:
    try:
        return int(json.loads((directory / STATE_FILE).read_text())[key])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class CheckpointStore:
    """The checkpoints of one run: save (crash-safe), recover after a crash, load ``last`` or ``best``."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, name: str) -> Path:
        """``root/last`` or ``root/best`` (a link to a complete step directory when it exists)."""
        return self.root / name

    def has(self, name: str) -> bool:
        return is_complete(self.path(name))

    def step(self, name: str) -> int | None:
        """The step of checkpoint ``name`` (None when there is none or it is unreadable)."""
        return _read_step(self.path(name))

    # -- saving -------------------------------------------------------------------------------------------
    def save(self, model: nn.Module, optimizer: torch.optim.Optimizer, state: TrainerState,
             names: tuple[str, ...] = ("last",), rank_rng: list[torch.Tensor] | None = None) -> Path:
        """Write the checkpoint of ``state.step`` once and point every link in ``names`` at it.

        ``rank_rng``: the CPU RNG state of every process of a multi-process run (rank order), so that each
        resumes with its own dropout stream.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / f"step-{state.step:08d}"
        if not is_complete(final):
            if final.exists():
                shutil.rmtree(final)
            temporary = final.with_name(final.name + ".tmp")
            if temporary.exists():
                shutil.rmtree(temporary)
            save_model(model, temporary)
            (temporary / STATE_FILE).write_text(json.dumps(asdict(state), indent=2) + "\n")
            rng: dict[str, Any] = {"torch": torch.get_rng_state()}
            if rank_rng is not None:
                rng["ranks"] = rank_rng
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state_all()
            torch.save({"optimizer": optimizer.state_dict(), "rng": rng}, temporary / OPTIMIZER_FILE)
            for name in CHECKPOINT_FILES:
                _fsync_file(temporary / name)
            _fsync_dir(temporary)
            os.replace(temporary, final)
        else:  # the same step saved again (e.g. best after last): refresh its trainer state
            self._write_state(final, state)
        for name in names:
            self._link(name, final)
        _fsync_dir(self.root)
        self._remove_unreferenced()
        return final

    def _write_state(self, directory: Path, state: TrainerState) -> None:
        temporary = directory / (STATE_FILE + ".tmp")
        temporary.write_text(json.dumps(asdict(state), indent=2) + "\n")
        _fsync_file(temporary)
        os.replace(temporary, directory / STATE_FILE)

    def _link(self, name: str, target: Path) -> None:
        link = self.path(name)
        if link.is_dir() and not link.is_symlink():  # the older layout: a real directory; keep it as a step dir
            self._adopt(link)
        temporary = self.root / f"{name}.link.tmp"
        if temporary.is_symlink() or temporary.exists():
            temporary.unlink()
        os.symlink(target.name, temporary)
        os.replace(temporary, link)

    def _adopt(self, directory: Path) -> Path | None:
        """Give a complete checkpoint of the older layout (``last``, ``last.old``...) its step name."""
        step = _read_step(directory)
        if step is None or not is_complete(directory):
            return None
        target = self.root / f"step-{step:08d}"
        if is_complete(target):
            shutil.rmtree(directory)
        else:
            if target.exists():
                shutil.rmtree(target)
            os.replace(directory, target)
        return target

    def _step_dirs(self) -> dict[int, Path]:
        found = {}
        if self.root.is_dir():
            for child in self.root.iterdir():
                match = _STEP_DIR.match(child.name)
                if match and not child.is_symlink() and is_complete(child):
                    found[int(match.group(1))] = child
        return found

    def _remove_unreferenced(self) -> None:
        """Delete step directories that no link points at, and leftovers of interrupted saves."""
        keep = {self.path(n).resolve() for n in ("last", "best") if self.path(n).is_symlink()}
        if not keep:  # never delete a checkpoint while no link protects one
            return
        for child in self.root.iterdir():
            if child.is_symlink():
                if child.name.endswith(".link.tmp"):
                    child.unlink()
                continue
            stale = child.name.endswith(".tmp") or (_STEP_DIR.match(child.name) and child.resolve() not in keep)
            if stale and child.is_dir():
                shutil.rmtree(child)

    # -- recovery -----------------------------------------------------------------------------------------
    def recover(self) -> list[str]:
        """Repair what a crash during a save left behind; returns notes on what was done.

        ``last`` ends up pointing at the newest complete checkpoint, ``best`` at the step its trainer state names
        as best. Nothing complete is deleted; incomplete temporary directories are.
        """
        notes: list[str] = []
        if not self.root.is_dir():
            return notes
        for name in ("last", "last.old", "last.tmp", "best", "best.old", "best.tmp"):  # the older layout
            legacy = self.root / name
            if legacy.is_dir() and not legacy.is_symlink():
                adopted = self._adopt(legacy)
                if adopted is not None:
                    notes.append(f"kept {name}/ as {adopted.name}/")
        candidates = self._step_dirs()
        if not candidates:
            for child in list(self.root.iterdir()):
                if child.name.endswith(".tmp") and child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
            return notes
        newest = candidates[max(candidates)]
        last = self.path("last")
        if not (last.is_symlink() and last.resolve() == newest.resolve()):
            notes.append(f"last -> {newest.name}")
            self._link("last", newest)
        best_step = _read_step(newest, "best_step")
        best = candidates.get(best_step) if best_step is not None else None
        if best is not None and not (self.path("best").is_symlink() and self.path("best").resolve() == best.resolve()):
            notes.append(f"best -> {best.name}")
            self._link("best", best)
        self._remove_unreferenced()
        return notes

    # -- loading ------------------------------------------------------------------------------------------
    def load(self, name: str, model: nn.Module, optimizer: torch.optim.Optimizer | None, rank: int = 0,
             world_size: int = 1) -> TrainerState:
        return load_training_checkpoint(self.path(name), model, optimizer, rank, world_size)


def load_training_checkpoint(directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None,
                             rank: int = 0, world_size: int = 1) -> TrainerState:
    """Restore model, optimizer and RNG states (the RNG of process ``rank``); returns the trainer state."""
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
    weights = _load_weights(directory / WEIGHTS_FILE, next(model.parameters()).device)
    load_state(model, weights, str(directory))
    try:
        state = TrainerState.from_dict(json.loads((directory / STATE_FILE).read_text()))
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
        ranks = payload["rng"].get("ranks")
        if world_size > 1 or ranks is not None:
            if ranks is None or len(ranks) != world_size:
                saved = 1 if ranks is None else len(ranks)
                raise CheckpointError(f"{directory} was saved by {saved} process(es); resume it with the same "
                                      f"number of processes (now {world_size}) so that every random stream "
                                      "continues exactly")
            torch.set_rng_state(ranks[rank])
        else:
            torch.set_rng_state(payload["rng"]["torch"])
        if "cuda" in payload["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["rng"]["cuda"])
    return state


def _load_weights(path: Path, device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file, verified against their stored checksums."""
    from transevolve.checkpoint import load_weights

    return load_weights(path, device)
