"""The incremental-decoding cache shared by every attention mechanism: tensors by name, growing ones in
over-allocated buffers (amortised O(1) appends), reordered by batch row for beam search."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from transevolve.modules.masks import StepMasks


class CacheStore(dict[str, torch.Tensor]):
    """The tensors of an incremental-decoding cache by name; growing ones live in over-allocated buffers.

    ``store[name]`` is always the valid part. :func:`append_cache` writes into ``buffers[name] = (buffer, dim)``,
    doubling its capacity when full, so appending one position costs O(1) amortised instead of a full copy.
    ``constants`` holds tensors that are not per sequence (left alone by reordering).
    """

    def __init__(self) -> None:
        super().__init__()
        self.buffers: dict[str, tuple[torch.Tensor, int]] = {}
        self.constants: dict[str, torch.Tensor] = {}          # not per sequence (e.g. P_Q . tau_l)

    def index_select(self, index: torch.Tensor, keep: Callable[[str], bool] = lambda name: False) -> CacheStore:
        """A store with batch rows ``index`` of every entry (entries where ``keep(name)`` are shared as is)."""
        selected = CacheStore()
        selected.constants = self.constants
        for name, tensor in self.items():
            if keep(name):
                selected[name] = tensor
                if name in self.buffers:
                    selected.buffers[name] = self.buffers[name]
            elif name in self.buffers:
                buffer, dim = self.buffers[name]
                buffer = buffer.index_select(0, index)
                selected.buffers[name] = (buffer, dim)
                selected[name] = buffer.narrow(dim, 0, tensor.shape[dim])
            else:
                selected[name] = tensor.index_select(0, index)
        return selected


def append_cache(store: dict[str, torch.Tensor], name: str, new: torch.Tensor, dim: int) -> torch.Tensor:
    """Grow ``store[name]`` by ``new`` along ``dim`` (create it when absent); returns the grown tensor.

    With a :class:`CacheStore` the data goes into an over-allocated buffer (amortised O(1) per position);
    with a plain dict it is concatenated.
    """
    old = store.get(name)
    if not isinstance(store, CacheStore):
        store[name] = new if old is None else torch.cat([old, new], dim=dim)
        return store[name]
    length = 0 if old is None else old.shape[dim]
    needed = length + new.shape[dim]
    buffer = store.buffers[name][0] if name in store.buffers else None
    if buffer is None or buffer.shape[dim] < needed:
        shape = list(new.shape)
        shape[dim] = max(16, 2 * needed)
        grown = new.new_empty(shape)
        if old is not None:
            grown.narrow(dim, 0, length).copy_(old)
        buffer = grown
        store.buffers[name] = (buffer, dim)
    buffer.narrow(dim, length, new.shape[dim]).copy_(new)
    store[name] = buffer.narrow(dim, 0, needed)
    return store[name]


@dataclass
class StepContext:
    """What an attention sub-layer needs for one incremental-decoding call.

    Attributes:
        store: the cache (a :class:`CacheStore`); this sub-layer's entries start with ``prefix``.
        prefix: names this evaluation (block, layer, stage, self/cross), e.g. ``decoder.0.layers.2.1.self.``.
        masks: the new positions' masks against every key so far.
        memory: the encoder output ``(b, s, d)`` for cross-attention, None for self-attention.
        scores: the block-level state of the step, for mechanisms with a block interaction (evolved attention's
            :class:`~transevolve.modules.evolved_attention.StepScores`), else None.
    """

    store: dict[str, torch.Tensor]
    prefix: str
    masks: StepMasks
    memory: torch.Tensor | None = None
    scores: Any = None
