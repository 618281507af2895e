"""Where fetched and processed data live on disk.

The root is ``$TRANSEVOLVE_DATA`` when set, else ``transevolve`` under the user's cache directory
(``$XDG_CACHE_HOME`` or ``~/.cache`` on Linux, ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on Windows).
The environment variable is read on every call, so tests can point it at a temporary directory.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

ENV_VAR = "TRANSEVOLVE_DATA"


def user_cache_dir() -> Path:
    """The platform's per-user cache directory."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA")
        return Path(base) if base else Path.home() / "AppData" / "Local"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    base = os.environ.get("XDG_CACHE_HOME")
    return Path(base) if base else Path.home() / ".cache"


def data_dir() -> Path:
    """The data root (not created here): ``$TRANSEVOLVE_DATA`` or ``<user cache dir>/transevolve``."""
    override = os.environ.get(ENV_VAR)
    if override:
        return Path(override).expanduser()
    return user_cache_dir() / "transevolve"


def atomic_write_bytes(path: Path, blob: bytes) -> None:
    """Write ``blob`` to ``path`` through a temporary file in the same directory and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(blob)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
