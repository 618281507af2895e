"""Shared building blocks of the real-data tasks: deterministic splits, byte-level text, compact image datasets
and an on-disk cache for processed corpora.

Determinism: every shuffle uses :class:`random.Random` seeded with a string (``"salt:seed"``), whose stream is
stable across Python versions and platforms; inputs are put in a canonical order before shuffling.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from transevolve.data.cache import atomic_write_bytes, data_dir
from transevolve.tasks.base import PAD_ID, Example, ExampleDataset

SPLITS = ("train", "validation", "test")


def rng(salt: str, seed: int) -> random.Random:
    """A deterministic generator for one purpose (``salt``) and seed."""
    return random.Random(f"{salt}:{seed}")


def check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return value


def check_split_fractions(validation_fraction: float, test_fraction: float) -> tuple[float, float]:
    """Both fractions in [0, 1) and together below 1; returns them."""
    check_fraction("validation_fraction", validation_fraction)
    check_fraction("test_fraction", test_fraction)
    if validation_fraction + test_fraction >= 1:
        raise ValueError("validation_fraction + test_fraction must be < 1")
    return validation_fraction, test_fraction


def stratified_split(labels: Sequence[int], held_out: dict[str, int], seed: int, salt: str) -> dict[str, list[int]]:
    """Indices per split, class proportions kept: ``held_out`` gives the total size of each held-out split
    (e.g. ``{"validation": 180, "test": 360}``), everything else is ``train``.

    Per class, indices are shuffled; each held-out split takes its share of every class (largest-remainder
    rounding so the totals are exact). Returns sorted index lists, disjoint and covering every index.
    """
    labels = [int(x) for x in labels]
    total = len(labels)
    if sum(held_out.values()) > total:
        raise ValueError(f"held-out sizes {held_out} exceed the {total} examples")
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    classes = sorted(by_class)
    pools = {c: by_class[c][:] for c in classes}
    for c in classes:
        rng(f"{salt}:class{c}", seed).shuffle(pools[c])
    out: dict[str, list[int]] = {}
    for split, size in held_out.items():
        quotas = {c: size * len(by_class[c]) / total for c in classes}
        take = {c: min(int(quotas[c]), len(pools[c])) for c in classes}
        order = sorted(classes, key=lambda c: (-(quotas[c] - int(quotas[c])), c))
        short = size - sum(take.values())
        while short > 0:  # top up from the classes with the largest remainders, round robin
            grown = False
            for c in order:
                if short > 0 and take[c] < len(pools[c]):
                    take[c] += 1
                    short -= 1
                    grown = True
            if not grown:
                raise ValueError(f"cannot hold out {size} examples for {split}: too few left")
        chosen: list[int] = []
        for c in classes:
            chosen += pools[c][: take[c]]
            pools[c] = pools[c][take[c]:]
        out[split] = sorted(chosen)
    out["train"] = sorted(i for c in classes for i in pools[c])
    return {s: out.get(s, []) for s in SPLITS}


def group_split(groups: Sequence[str], fractions: dict[str, float], seed: int, salt: str,
                weights: dict[str, int] | None = None) -> dict[str, set[str]]:
    """Assign whole groups (documents, books, movies) to splits: no group is shared between splits.

    Groups are sorted, shuffled with the seed and dealt out in that order: each held-out split in ``fractions``
    takes groups until it holds at least that fraction of the total weight (``weights``: items per group,
    default 1 per occurrence in ``groups``), the rest goes to ``train``. Every held-out split gets >= 1 group
    when its fraction is positive and there are enough groups.
    """
    if weights is None:
        weights = {}
        for g in groups:
            weights[g] = weights.get(g, 0) + 1
    order = sorted(weights)
    rng(salt, seed).shuffle(order)
    total = sum(weights.values())
    assigned: dict[str, set[str]] = {s: set() for s in SPLITS}
    cursor = 0
    for split, fraction in fractions.items():
        target, held = fraction * total, 0
        while fraction > 0 and cursor < len(order) - 1 and (held < target or not assigned[split]):
            assigned[split].add(order[cursor])
            held += weights[order[cursor]]
            cursor += 1
    assigned["train"] = set(order[cursor:])
    return assigned


# ------------------------------------------------------------------------------------------------- byte-level

BYTE_OFFSET = 3  # ids 0, 1, 2 are PAD, BOS, EOS; byte b is id b + 3
BYTE_VOCAB = 256 + BYTE_OFFSET


class ByteTokenizer:
    """UTF-8 bytes shifted by 3 (LRA "Text" style): ids in ``[3, 259)``, 0 = pad, vocabulary 259."""

    vocab_size = BYTE_VOCAB

    def encode(self, text: str) -> list[int]:
        return [b + BYTE_OFFSET for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - BYTE_OFFSET for i in ids if int(i) >= BYTE_OFFSET).decode("utf-8", errors="replace")


def byte_examples(texts: Sequence[str], labels: Sequence[int], max_length: int, pad_to_length: bool) -> ExampleDataset:
    """Classification examples ``{"ids": (n,), "label": ()}`` from texts: bytes + 3, truncated to ``max_length``
    (and right-padded with 0 to exactly ``max_length`` when ``pad_to_length``). Empty texts become one pad-free
    byte (a space) so no example is empty."""
    examples: list[Example] = []
    for text, label in zip(texts, labels, strict=True):
        blob = text.encode("utf-8")[:max_length] or b" "
        ids = torch.frombuffer(bytearray(blob), dtype=torch.uint8).long() + BYTE_OFFSET
        if pad_to_length and ids.numel() < max_length:
            ids = torch.cat([ids, torch.full((max_length - ids.numel(),), PAD_ID, dtype=torch.long)])
        examples.append({"ids": ids, "label": torch.tensor(int(label), dtype=torch.long)})
    return ExampleDataset(examples)


# ------------------------------------------------------------------------------------------------------ images

class _LazyExamples(Sequence[Example]):
    def __init__(self, dataset: ArrayDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.dataset[i] for i in range(*index.indices(len(self)))]
        return self.dataset[index]

    def __iter__(self) -> Iterator[Example]:
        return (self.dataset[i] for i in range(len(self)))


class ArrayDataset(ExampleDataset):
    """Fixed-length classification examples kept compactly: ``ids (N, L)`` in a small integer dtype and
    ``labels (N,)``; ``dataset[i]`` gives ``{"ids": (L,) long, "label": () long}`` (60k x 784 pixels is 94 MB
    as int16 instead of 376 MB as int64)."""

    def __init__(self, ids: torch.Tensor, labels: torch.Tensor) -> None:  # base __init__ not called: examples is lazy
        if ids.dim() != 2 or labels.shape != (ids.shape[0],):
            raise ValueError(f"ids must be (N, L) and labels (N,), got {tuple(ids.shape)} and {tuple(labels.shape)}")
        self.ids, self.labels = ids, labels

    @property
    def examples(self) -> Sequence[Example]:  # type: ignore[override]
        return _LazyExamples(self)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, index: int) -> Example:
        return {"ids": self.ids[index].long(), "label": self.labels[index].long()}

    @property
    def lengths(self) -> list[int]:
        return [int(self.ids.shape[1])] * len(self)


def quantise(pixels: np.ndarray, levels: int, max_value: int = 255) -> np.ndarray:
    """Intensities ``0..max_value`` to ids ``1..levels`` (``floor(x * levels / (max_value + 1)) + 1``), int16."""
    if not 2 <= levels <= max_value + 1:
        raise ValueError(f"levels must be in [2, {max_value + 1}], got {levels}")
    return (pixels.astype(np.int32) * levels // (max_value + 1) + 1).astype(np.int16)


def image_splits(pixels: np.ndarray, labels: np.ndarray, split_indices: dict[str, Sequence[int]]
                 ) -> dict[str, ExampleDataset]:
    """:class:`ArrayDataset` per split from ``pixels (N, L)`` ids and ``labels (N,)``."""
    ids = torch.from_numpy(np.ascontiguousarray(pixels))
    targets = torch.from_numpy(np.ascontiguousarray(labels.astype(np.int64)))
    out: dict[str, ExampleDataset] = {}
    for split, indices in split_indices.items():
        index = torch.as_tensor(list(indices), dtype=torch.long)
        out[split] = ArrayDataset(ids[index], targets[index])
    return out


# ------------------------------------------------------------------------------------------- processed caches

def processed_dir(task: str) -> Path:
    """``data_dir()/processed/TASK``: derived corpora and tokenizers (safe to delete; rebuilt on demand)."""
    return data_dir() / "processed" / task


def cached_json(path: Path, build: Callable[[], Any]) -> tuple[Any, str]:
    """Load ``path`` (JSON with a sha256 envelope) or build, store atomically and return it.

    Returns ``(value, sha256 of the canonical JSON)``. A cache file that fails its checksum is rebuilt (it is
    derived data); the sources it was built from are themselves verified by the package layer.
    """
    if path.is_file():
        try:
            envelope = json.loads(path.read_bytes())
            body = json.dumps(envelope["value"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))
            digest = hashlib.sha256(body.encode()).hexdigest()
            if digest == envelope["sha256"]:
                return envelope["value"], digest
        except (ValueError, KeyError, TypeError):
            pass
    value = build()
    body = json.dumps(value, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    atomic_write_bytes(path, json.dumps({"sha256": digest, "value": value}, ensure_ascii=False,
                                        sort_keys=True, separators=(",", ":")).encode())
    return json.loads(body), digest


def percentiles(values: Sequence[int], points: Sequence[int] = (50, 90, 99, 100)) -> dict[str, int]:
    """Nearest-rank percentiles of integer lengths (``p100`` is the maximum)."""
    if not values:
        return {f"p{p}": 0 for p in points}
    ordered = sorted(values)
    out: dict[str, int] = {}
    for p in points:
        rank = max(1, -(-p * len(ordered) // 100))
        out[f"p{p}"] = int(ordered[rank - 1])
    return out


def longest(splits: dict[str, ExampleDataset]) -> int:
    """The longest sequence over every split (source or target)."""
    return max((max(ds.lengths, default=0) for ds in splits.values()), default=0)


def source_info(names: Sequence[str]) -> dict[str, str]:
    """``{package: version}`` of fetched packages, for :attr:`TaskData.info`."""
    from transevolve.data.packages import load_manifest

    return {name: str(load_manifest(name).get("version")) for name in names}
