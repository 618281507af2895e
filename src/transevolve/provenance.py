"""Where a result came from: the git commit (and whether the work tree had changes), the machine, and writing a
record atomically. Shared by ``transevolve study`` and ``transevolve results``."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

_PACKAGE_DIR = Path(__file__).parent


def _git(*args: str) -> str | None:
    """Output of a read-only git command in the package's checkout (``--no-optional-locks``: never takes the index
    lock, so it cannot disturb a concurrent git operation); None outside a checkout or without git."""
    try:
        return subprocess.run(["git", "--no-optional-locks", *args], capture_output=True, text=True, check=True,
                              cwd=_PACKAGE_DIR, timeout=30).stdout
    except (OSError, subprocess.CalledProcessError, subprocess.TimeoutExpired):
        return None


def git_commit() -> str | None:
    """The commit checked out where the package lives (None outside a git checkout)."""
    output = _git("rev-parse", "HEAD")
    if output is None:
        return None
    return output.strip() or None


def git_state() -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}``; dirty: tracked files differ from the commit (untracked
    files do not count)."""
    commit = git_commit()
    if commit is None:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status.strip())}


def machine_info() -> dict[str, Any]:
    """The machine a timing was taken on: platform, processor, CPU count, the vector instructions PyTorch uses
    (``AVX2``, ``AVX512``: hosts of one name differ, and speeds with them), torch version and threads."""
    import torch

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def machine_summary(machine: dict[str, Any]) -> str:
    """One line for a report: ``"2 CPUs (AVX2), torch 2.13.0, 2 threads"`` (and the GPU where there was one), from a
    :func:`machine_info` dictionary; missing fields read ``?``."""
    text = (f"{machine.get('cpus', '?')} CPUs ({machine.get('cpu_capability') or '?'}), torch "
            f"{machine.get('torch', '?')}, {machine.get('torch_threads', '?')} threads")
    return text + (f", GPU {machine['cuda']}" if machine.get("cuda") else "")


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON: a temporary file renamed into place, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(payload, indent=2) + "\n")
    temporary.replace(path)
