"""Tiny generated tasks for smoke runs and tests (seconds on a CPU).

- ``max_digit`` (classification): a random digit sequence (ids ``1..10`` = digits ``0..9``), label = its largest
  digit; 10 classes, chance about 10% (much less for long sequences, where 9 dominates; use short lengths).
- ``reverse`` (seq2seq): a random digit sequence and its reversal; ids ``3..12`` = digits ``0..9``
  (0 pad, 1 BOS, 2 EOS).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch

from transevolve.tasks.base import BOS_ID, EOS_ID, ExampleDataset, Task, TaskData, TaskKind, register_task

_SPLIT_OFFSETS = {"train": 0, "validation": 1, "test": 2}


def _generate(sizes: dict[str, int], seed: int, min_length: int, max_length: int,
              make_example: Callable[[torch.Tensor], dict[str, torch.Tensor]]) -> dict[str, ExampleDataset]:
    """Per split, random digit sequences (digits 0..9, length in [min_length, max_length]) turned into examples."""
    splits = {}
    for split, size in sizes.items():
        generator = torch.Generator().manual_seed(seed * 3 + _SPLIT_OFFSETS[split])
        examples = []
        for _ in range(size):
            length = int(torch.randint(min_length, max_length + 1, (), generator=generator))
            examples.append(make_example(torch.randint(0, 10, (length,), generator=generator)))
        splits[split] = ExampleDataset(examples)
    return splits


def _check_sizes(name: str, sizes: dict[str, int], min_length: int, max_length: int) -> None:
    for split, size in sizes.items():
        if size < 1:
            raise ValueError(f"{name}: {split}_size={size} must be positive")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"{name}: need 1 <= min_length <= max_length, got {min_length}, {max_length}")


@register_task
class MaxDigit(Task):
    name: ClassVar[str] = "max_digit"
    kind: ClassVar[TaskKind] = "classification"
    metric: ClassVar[str] = "accuracy"
    description: ClassVar[str] = "largest digit of a random digit sequence (toy, generated)"

    def __init__(self, train_size: int = 2048, validation_size: int = 256, test_size: int = 256,
                 min_length: int = 4, max_length: int = 12) -> None:
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        _check_sizes(self.name, self.sizes, min_length, max_length)
        self.min_length, self.max_length = min_length, max_length

    def load(self, seed: int = 0) -> TaskData:
        splits = _generate(self.sizes, seed, self.min_length, self.max_length,
                           lambda digits: {"ids": digits + 1, "label": digits.max()})
        return TaskData(self.name, self.kind, self.metric, vocab_size=11, splits=splits, num_classes=10,
                        max_length=self.max_length)


@register_task
class Reverse(Task):
    name: ClassVar[str] = "reverse"
    kind: ClassVar[TaskKind] = "seq2seq"
    metric: ClassVar[str] = "bleu"
    description: ClassVar[str] = "reverse a random digit sequence (toy seq2seq, generated)"

    def __init__(self, train_size: int = 2048, validation_size: int = 128, test_size: int = 128,
                 min_length: int = 3, max_length: int = 10) -> None:
        self.sizes = {"train": train_size, "validation": validation_size, "test": test_size}
        _check_sizes(self.name, self.sizes, min_length, max_length)
        self.min_length, self.max_length = min_length, max_length

    def load(self, seed: int = 0) -> TaskData:
        def pair(digits: torch.Tensor) -> dict[str, torch.Tensor]:
            src = digits + 3
            return {"src": src, "tgt": torch.cat([torch.tensor([BOS_ID]), src.flip(0), torch.tensor([EOS_ID])])}

        splits = _generate(self.sizes, seed, self.min_length, self.max_length, pair)
        return TaskData(self.name, self.kind, self.metric, vocab_size=13, splits=splits,
                        tokenizer=DigitTokenizer(), max_length=self.max_length + 2)


class DigitTokenizer:
    """Digits ``0..9`` <-> ids ``3..12``, space separated (so that BLEU sees one word per digit)."""

    vocab_size = 13

    def encode(self, text: str) -> list[int]:
        return [int(c) + 3 for c in text if c.isdigit()]

    def decode(self, ids: list[int]) -> str:
        return " ".join(str(i - 3) for i in ids if 3 <= i < 13)
