"""Run the ``transevolve`` command line with its checkpoint file operations counted, optionally crashing.

Used by ``probe.py`` (probe ``interrupts/crash-in-save``); run it exactly like the CLI::

    PROBE_CRASH_ROOT=RUN/checkpoints PROBE_OPS_LOG=ops.jsonl python crash_child.py train RUNFILE --run-dir RUN

Every file operation whose path lies under ``$PROBE_CRASH_ROOT`` is counted: ``os.replace``, ``os.rename``
(so ``Path.rename``/``Path.replace``), ``os.symlink``/``os.link`` (``Path.symlink_to``), ``os.unlink``/``os.remove``/
``os.rmdir``, ``os.fsync`` (the descriptor is resolved through ``/proc/self/fd``), ``shutil.rmtree``, ``shutil.move``,
``safetensors.torch.save_file``, ``torch.save``, ``Path.write_text`` and ``Path.write_bytes``. An operation called from
inside another counted one (the unlinks of an ``rmtree``) is part of it, not counted again. Each counted operation
is tagged with the number of optimizer steps taken so far (a global optimizer step hook), so the operations of one
checkpoint event share a step.

Environment:
    PROBE_CRASH_ROOT: directory whose operations are counted (required).
    PROBE_OPS_LOG: append one JSON line per counted operation (``index``, ``step``, ``op``, ``path``).
    PROBE_CRASH_STEP, PROBE_CRASH_AT: call ``os._exit(137)`` at the ``PROBE_CRASH_AT``-th (1-based) counted
        operation made when ``PROBE_CRASH_STEP`` optimizer steps are done (0 or unset: never crash).
    PROBE_CRASH_MODE: ``before`` (default: the operation does not happen) or ``after`` (it completes first).
"""

from __future__ import annotations

import functools
import json
import os
import pathlib
import shutil
import sys
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

#: Exit status of the simulated crash (what a shell reports for SIGKILL).
CRASH_STATUS = 137

_ROOT = os.path.abspath(os.environ["PROBE_CRASH_ROOT"])
_REAL_ROOT = os.path.realpath(_ROOT)
_LOG = os.environ.get("PROBE_OPS_LOG")
_CRASH_STEP = int(os.environ.get("PROBE_CRASH_STEP") or 0)
_CRASH_AT = int(os.environ.get("PROBE_CRASH_AT") or 0)
_CRASH_AFTER = os.environ.get("PROBE_CRASH_MODE", "before") == "after"

_state = {"step": 0, "index": 0, "depth": 0}
_per_step: Counter[int] = Counter()


def _on_step(optimizer: Any, args: Any, kwargs: Any) -> None:
    """Global optimizer step hook: count the steps taken."""
    _state["step"] += 1


def _resolve(path: Any, dir_fd: int | None = None) -> str | None:
    """Absolute path of a path argument (``dir_fd``-relative names included; links kept); None if not a path."""
    if isinstance(path, int):
        try:
            return os.readlink(f"/proc/self/fd/{path}")
        except OSError:
            return None
    if not isinstance(path, str | bytes | os.PathLike):
        name = getattr(path, "name", None)  # an open file object (torch.save to a handle)
        return _resolve(name) if isinstance(name, str) else None
    text = os.fsdecode(os.fspath(path))
    if dir_fd is not None and not os.path.isabs(text):
        base = _resolve(dir_fd)
        if base is None:
            return None
        text = os.path.join(base, text)
    return os.path.abspath(text)


def _inside(path: str | None) -> bool:
    """Whether ``path`` (as given, or with its links resolved) lies under the root."""
    if path is None:
        return False
    real = os.path.realpath(path)
    return any(p == root or p.startswith(root + os.sep) for p, root in ((path, _ROOT), (real, _REAL_ROOT)))


def _counted(name: str, paths: Callable[..., Iterable[str | None]]) -> Callable[[Callable[..., Any]], Any]:
    """Wrap a file operation: count it when one of its ``paths(*args, **kwargs)`` is under the root."""

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if _state["depth"]:
                return function(*args, **kwargs)
            hits = [p for p in paths(*args, **kwargs) if _inside(p)]
            if not hits:
                return function(*args, **kwargs)
            _state["index"] += 1
            step = _state["step"]
            _per_step[step] += 1
            if _LOG:
                shown = [os.path.relpath(p, _ROOT) if p.startswith(_ROOT)
                         else os.path.relpath(os.path.realpath(p), _REAL_ROOT) for p in hits]
                record = {"index": _state["index"], "step": step, "op": name, "path": " -> ".join(shown)}
                with open(_LOG, "a") as handle:
                    handle.write(json.dumps(record) + "\n")
            crash = bool(_CRASH_AT) and step == _CRASH_STEP and _per_step[step] == _CRASH_AT
            if crash and not _CRASH_AFTER:
                os._exit(CRASH_STATUS)
            _state["depth"] += 1
            try:
                result = function(*args, **kwargs)
            finally:
                _state["depth"] -= 1
            if crash:
                os._exit(CRASH_STATUS)
            return result

        return wrapper

    return decorate


def _two(src: Any, dst: Any, *args: Any, src_dir_fd: int | None = None, dst_dir_fd: int | None = None,
         **kwargs: Any) -> list[str | None]:
    return [_resolve(src, src_dir_fd), _resolve(dst, dst_dir_fd)]


def _link(src: Any, dst: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> list[str | None]:
    return [_resolve(dst, dir_fd)]


def _one(path: Any, *args: Any, dir_fd: int | None = None, **kwargs: Any) -> list[str | None]:
    return [_resolve(path, dir_fd)]


def _second(first: Any, second: Any, *args: Any, **kwargs: Any) -> list[str | None]:
    return [_resolve(second)]


def install() -> None:
    """Patch the file operations (before ``transevolve`` is imported, so ``from ... import`` sees the patches)."""
    import safetensors.torch

    register_optimizer_step_post_hook(_on_step)
    for name in ("replace", "rename"):
        setattr(os, name, _counted(f"os.{name}", _two)(getattr(os, name)))
    os.symlink = _counted("os.symlink", _link)(os.symlink)
    os.link = _counted("os.link", _link)(os.link)
    for name in ("unlink", "remove", "rmdir"):
        setattr(os, name, _counted(f"os.{name}", _one)(getattr(os, name)))
    os.fsync = _counted("os.fsync", lambda fd: [_resolve(fd if isinstance(fd, int) else fd.fileno())])(os.fsync)
    shutil.rmtree = _counted("shutil.rmtree", _one)(shutil.rmtree)  # type: ignore[assignment]
    shutil.move = _counted("shutil.move", _two)(shutil.move)
    safetensors.torch.save_file = _counted("safetensors.save_file", _second)(safetensors.torch.save_file)
    torch.save = _counted("torch.save", _second)(torch.save)
    for name in ("write_text", "write_bytes"):
        setattr(pathlib.Path, name, _counted(f"Path.{name}", lambda self, *a, **k: [_resolve(self)])(
            getattr(pathlib.Path, name)))


def main() -> None:
    """Install the patches, then run ``transevolve`` with this script's arguments."""
    install()
    from transevolve.cli import main as cli_main

    sys.argv = ["transevolve", *sys.argv[1:]]
    cli_main()


if __name__ == "__main__":
    main()
