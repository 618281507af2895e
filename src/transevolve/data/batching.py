"""Batching: padding masks from collated batches and a length-bucketed sampler with a token budget.

:func:`transevolve.tasks.base.collate` right-pads every 1-D field with 0, so the padding mask of any id field is
``ids != PAD_ID`` (:func:`padding_mask`); no separate mask travels with the batch.

:class:`TokenBudgetBatchSampler` groups examples of similar length so that each batch's *padded* size
``batch_size x longest example`` stays within ``max_tokens`` (translation, where lengths vary a lot).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import DataLoader, Sampler

from transevolve.tasks.base import PAD_ID, ExampleDataset, collate


def padding_mask(ids: torch.Tensor) -> torch.Tensor:
    """``(b, n)`` bool, True at real tokens, from ``(b, n)`` ids padded with 0 by ``collate``."""
    return ids != PAD_ID


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Length-bucketed batches of at most ``max_tokens`` padded tokens each.

    Every epoch: sort the indices by length (ties broken by a seeded shuffle when ``shuffle``, by index
    otherwise), cut the sorted list greedily into batches whose ``len(batch) * max(length)`` stays within
    ``max_tokens``, then shuffle the batch order (when ``shuffle``). Each example appears exactly once per epoch,
    and the batches are a pure function of ``(lengths, max_tokens, shuffle, seed, epoch)``; call
    :meth:`set_epoch` before each epoch to get a new order (as with ``DistributedSampler``).

    An example longer than ``max_tokens`` on its own is **not dropped**: it becomes a batch of one that exceeds
    the budget (its indices are listed in :attr:`oversized`), so every example is still seen once per epoch. Use
    the task's ``max_length`` option to bound this.

    Args:
        lengths: tokens per example, e.g. ``ExampleDataset.lengths`` (the longest field of each example).
        max_tokens: budget of padded tokens per batch (>= 1).
        shuffle: randomise ties and batch order.
        seed: base seed; the epoch is mixed in.
        max_batch_size: optional cap on examples per batch.
    """

    def __init__(self, lengths: Sequence[int], max_tokens: int, shuffle: bool = True, seed: int = 0,
                 max_batch_size: int | None = None) -> None:
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1 or None, got {max_batch_size}")
        if any(int(n) < 0 for n in lengths):
            raise ValueError("lengths must be non-negative")
        self.lengths = [int(n) for n in lengths]
        self.max_tokens, self.shuffle, self.seed, self.max_batch_size = max_tokens, shuffle, seed, max_batch_size
        self.epoch = 0
        self.oversized = [i for i, n in enumerate(self.lengths) if n > max_tokens]
        self._num_batches = len(self._batches(0))

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order :meth:`__iter__` yields next."""
        self.epoch = int(epoch)

    def _batches(self, epoch: int) -> list[list[int]]:
        order = list(range(len(self.lengths)))
        generator = random.Random(f"token-budget:{self.seed}:{epoch}")
        if self.shuffle:
            generator.shuffle(order)
        order.sort(key=lambda i: self.lengths[i])  # stable: ties keep the shuffled order
        batches: list[list[int]] = []
        batch: list[int] = []
        longest = 0
        for index in order:
            length = max(self.lengths[index], 1)
            grown = max(longest, length)
            full = self.max_batch_size is not None and len(batch) >= self.max_batch_size
            if batch and ((len(batch) + 1) * grown > self.max_tokens or full):
                batches.append(batch)
                batch, grown = [], length
            batch.append(index)
            longest = grown
        if batch:
            batches.append(batch)
        if self.shuffle:
            generator.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches(self.epoch))

    def __len__(self) -> int:
        # The batch boundaries depend only on the sorted lengths, so the count is the same every epoch.
        return self._num_batches


def token_budget_loader(dataset: ExampleDataset, max_tokens: int, shuffle: bool = True, seed: int = 0,
                        max_batch_size: int | None = None, num_workers: int = 0) -> DataLoader:
    """A :class:`DataLoader` over ``dataset`` with a :class:`TokenBudgetBatchSampler` and ``collate``
    (call ``loader.batch_sampler.set_epoch(e)`` each epoch)."""
    sampler = TokenBudgetBatchSampler(dataset.lengths, max_tokens, shuffle=shuffle, seed=seed,
                                      max_batch_size=max_batch_size)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=num_workers)
