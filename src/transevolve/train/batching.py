"""Deterministic batch order: a pure function of (seed, epoch), so that a resumed run sees the same batches.

A *global batch* is what one optimizer step consumes, over every process and accumulation step. It is split
into ``world_size * grad_accumulation`` micro-batches; process ``r`` takes micro-batches
``r * accumulation ... (r + 1) * accumulation - 1``. The loss of every micro-batch is normalised by the loss units
(examples or target tokens) of the whole global batch, so any split gives the same gradient as one process.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def epoch_batches(num_examples: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True,
                  drop_last: bool = True) -> list[list[int]]:
    """Global batches of example indices for one epoch."""
    if shuffle:
        order = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 100_003 + epoch))
        indices = order.tolist()
    else:
        indices = list(range(num_examples))
    stop = num_examples - num_examples % batch_size if drop_last else num_examples
    batches = [indices[i:i + batch_size] for i in range(0, stop, batch_size)]
    if not batches:
        raise ValueError(f"the training split has {num_examples} examples, fewer than batch_size={batch_size}; "
                         "lower train.batch_size")
    return batches


def token_budget_batches(lengths: Sequence[int], max_tokens: int, seed: int, epoch: int) -> list[list[int]]:
    """Length-bucketed global batches whose padded size (examples x longest) stays within ``max_tokens``.

    Examples are sorted by length inside shuffled chunks of 100 batches' worth, cut into batches, and the batches
    shuffled. An example longer than the budget forms a batch of its own.
    """
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    chunk = max(1, 100 * max(1, max_tokens // max(1, int(sum(lengths) / max(1, len(lengths))))))
    batches: list[list[int]] = []
    for start in range(0, len(order), chunk):
        part = sorted(order[start:start + chunk], key=lambda i: lengths[i])
        current: list[int] = []
        longest = 0
        for index in part:
            new_longest = max(longest, lengths[index])
            if current and new_longest * (len(current) + 1) > max_tokens:
                batches.append(current)
                current, new_longest = [], lengths[index]
            current.append(index)
            longest = new_longest
        if current:
            batches.append(current)
    permutation = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in permutation]


def shard(global_batch: list[int], rank: int, world_size: int, accumulation: int) -> list[list[int]]:
    """This process's micro-batches of a global batch (possibly empty lists for tiny batches)."""
    pieces = world_size * accumulation
    size = -(-len(global_batch) // pieces)
    micro = [global_batch[i * size:(i + 1) * size] for i in range(pieces)]
    return micro[rank * accumulation:(rank + 1) * accumulation]
