"""On-disk cache of generated task splits: safe (no pickle), checksummed, keyed by every option.

Generated splits are stored as one ``.npz`` file per (task, options, generator version, seed) under
``transevolve.data.cache.data_dir() / "generated"`` (``$TRANSEVOLVE_DATA`` when set, else ``~/.cache/transevolve``).
Each split is a set of *columns*: ``{key: [sequence, ...]}`` (ragged 1-D sequences, stored as one flat array
plus lengths) or ``{key: [int, ...]}`` (one scalar per example). A file whose key, checksum or format does not
match is reported with a warning and regenerated, never used.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transevolve.data.cache import data_dir
from transevolve.tasks.base import Example

#: One split as columns: key -> list of sequences (bytes, lists of ints or of bools) or list of scalar ints.
Columns = dict[str, Sequence[Any]]

FORMAT_VERSION = 1
_KEY_ENTRY = "__key__"
_SHA_ENTRY = "__sha256__"


def cache_dir() -> Path:
    """Directory of the generated-task cache (not created here)."""
    return data_dir() / "generated"


def cache_key_json(key: dict[str, Any]) -> str:
    """Canonical JSON of a cache key (sorted keys, no whitespace)."""
    return json.dumps({"format": FORMAT_VERSION, **key}, sort_keys=True, separators=(",", ":"))


def cache_path(name: str, key: dict[str, Any]) -> Path:
    """``<cache_dir>/<name>-<sha256(key)[:20]>.npz``."""
    digest = hashlib.sha256(cache_key_json(key).encode()).hexdigest()[:20]
    return cache_dir() / f"{name}-{digest}.npz"


def _int_dtype(low: int, high: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= low and high <= info.max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


def _pack_column(values: Sequence[Any]) -> dict[str, np.ndarray]:
    """Ragged sequences -> ``values`` (flat) + ``lengths``; scalars -> ``scalars``."""
    if len(values) == 0:
        return {"scalars": np.zeros(0, dtype=np.int64)}
    first = values[0]
    if isinstance(first, bytes | bytearray):
        lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
        return {"values": np.frombuffer(b"".join(values), dtype=np.uint8).copy(), "lengths": lengths}
    if isinstance(first, int | np.integer) and not isinstance(first, bool):
        array = np.asarray(values, dtype=np.int64)
        return {"scalars": array.astype(_int_dtype(int(array.min()), int(array.max())))}
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    total = int(lengths.sum())
    if len(first) and isinstance(first[0], bool | np.bool_):
        flat = np.fromiter(itertools.chain.from_iterable(values), dtype=np.bool_, count=total)
    else:
        flat = np.fromiter(itertools.chain.from_iterable(values), dtype=np.int64, count=total)
        if total:
            flat = flat.astype(_int_dtype(int(flat.min()), int(flat.max())))
    return {"values": flat, "lengths": lengths}


def pack(splits: dict[str, Columns]) -> dict[str, np.ndarray]:
    """Splits of columns -> flat named arrays ``"<split>/<key>/<values|lengths|scalars>"``."""
    arrays: dict[str, np.ndarray] = {}
    for split, columns in splits.items():
        sizes = {len(v) for v in columns.values()}
        if len(sizes) > 1:
            raise ValueError(f"split {split!r} has columns of different lengths {sizes}")
        for key, values in columns.items():
            for part, array in _pack_column(values).items():
                arrays[f"{split}/{key}/{part}"] = array
    return arrays


def unpack(arrays: dict[str, np.ndarray]) -> dict[str, list[Example]]:
    """Inverse of :func:`pack`, as examples: ints -> ``torch.long``, bools -> ``torch.bool``."""
    columns: dict[str, dict[str, list[torch.Tensor]]] = {}
    for name, array in arrays.items():
        split, key, part = name.split("/")
        if part == "lengths":
            continue
        if part == "scalars":
            column = list(torch.from_numpy(array.astype(np.int64)).unbind())
        else:
            lengths = arrays[f"{split}/{key}/lengths"].tolist()
            if array.dtype not in (np.uint8, np.int32, np.int64, np.bool_):
                array = array.astype(np.int32)
            # Convert example by example (each gets its own storage): no full-size int64 copy of the flat array.
            dtype = torch.bool if array.dtype == np.bool_ else torch.long
            column = [t.to(dtype, copy=True) for t in torch.split(torch.from_numpy(array), lengths)]
        columns.setdefault(split, {})[key] = column
    splits: dict[str, list[Example]] = {}
    for split, cols in columns.items():
        keys = list(cols)
        size = len(cols[keys[0]]) if keys else 0
        splits[split] = [{key: cols[key][i] for key in keys} for i in range(size)]
    return splits


def _checksum(arrays: dict[str, np.ndarray], key_json: str) -> str:
    digest = hashlib.sha256(key_json.encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{array.dtype.str}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def save(path: Path, arrays: dict[str, np.ndarray], key: dict[str, Any]) -> None:
    """Write ``arrays`` with the key and a checksum, atomically (temporary file + rename)."""
    key_json = cache_key_json(key)
    payload = dict(arrays)
    payload[_KEY_ENTRY] = np.array(key_json)
    payload[_SHA_ENTRY] = np.array(_checksum(arrays, key_json))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **payload)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def load(path: Path, key: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays stored at ``path`` if the file is intact and was written for ``key``; else None (with a
    warning when the file exists but is unusable). Never unpickles."""
    if not path.exists():
        return None
    key_json = cache_key_json(key)
    try:
        with np.load(path, allow_pickle=False) as archive:
            stored = {name: archive[name] for name in archive.files}
        stored_key = str(stored.pop(_KEY_ENTRY))
        stored_sha = str(stored.pop(_SHA_ENTRY))
        if stored_key != key_json:
            raise ValueError("the stored cache key differs from the requested one")
        if stored_sha != _checksum(stored, key_json):
            raise ValueError("checksum mismatch")
        for name in stored:
            if len(name.split("/")) != 3:
                raise ValueError(f"unexpected entry {name!r}")
    except Exception as error:  # any unreadable or inconsistent file is regenerated, whatever the cause
        warnings.warn(f"ignoring corrupt or stale cache file {path} ({type(error).__name__}: {error}); "
                      "regenerating it", RuntimeWarning, stacklevel=3)
        return None
    return stored


def cached_splits(name: str, key: dict[str, Any], build: Callable[[], dict[str, Columns]],
                  enabled: bool = True) -> tuple[dict[str, list[Example]], dict[str, Any]]:
    """Load the splits for ``key`` from the cache, or ``build()`` them (and store them when ``enabled``).

    Returns ``(splits, info)`` with ``info = {"cache_path": str | None, "cache_hit": bool}``.
    """
    path = cache_path(name, key) if enabled else None
    arrays = load(path, key) if path is not None else None
    hit = arrays is not None
    if arrays is None:
        arrays = pack(build())
        if path is not None:
            try:
                save(path, arrays, key)
            except OSError as error:
                warnings.warn(f"could not write the task cache {path}: {error}", RuntimeWarning, stacklevel=2)
    return unpack(arrays), {"cache_path": str(path) if path is not None else None, "cache_hit": hit}
