"""ListOps as defined by the Long Range Arena (Tay et al. 2021, arXiv 2011.04006; definition in
``docs/listops.md``): classify the value (a digit 0-9) of a nested list expression. Our own generator.

Expressions: operators ``[MIN``, ``[MAX``, ``[MED`` (integer part of the numpy median: for an even number of
arguments ``floor((a + b) / 2)`` of the two middle values) and ``[SM`` (sum modulo 10) over digits, each closed
by ``]``, e.g. ``[MAX 2 9 [MIN 4 7 ] 0 ]`` = 9.

Sampling (LRA): a node at depth ``d`` (root: 1) is an operator with probability 0.25 when ``d < max_depth``
(``r <= 0.25`` for ``r ~ U[0, 1)``), else a digit; an operator takes a uniform number of arguments in
``[2, max_args]`` and a uniform operator. The *length* counts operator, digit and ``]`` tokens; a tree is kept
when ``min_length < length < max_length`` (strict) and trees are distinct across all splits. Long trees are
rare, so this is rejection sampling; a tree is abandoned as soon as it reaches ``max_length`` tokens.

Formats: ``brackets`` (the tokens above; sequence length = tree length) or ``lra``, the LRA TSV form that nests
every argument step in parentheses (``( ( ( [MAX 2 ) 9 ) ] )`` for ``[MAX 2 9 ]``; an operator with ``k``
arguments adds ``2 (k + 1)`` tokens, so sequences are roughly twice the tree length). The ``lra`` preset has
LRA's sizes; which format an experiment reads must be stated (LRA models read the parenthesised form, cut at
2000 tokens). The same seed gives the same trees and labels in both formats.

Token table (fixed, ``vocab_size = 18`` in both formats)::

    0 <pad> | 1..10 digits 0..9 (id = digit + 1) | 11 [MIN | 12 [MAX | 13 [MED | 14 [SM | 15 ] | 16 ( | 17 )

Examples are ``{"ids": (n,), "label": ()}``, 10 classes, metric accuracy.

Presets (``min_length``, ``max_length``, train / validation / test):

- ``lra``: 500, 2000, 96,000 / 2,000 / 2,000 (LRA);
- ``small``: 100, 500, 5,000 / 500 / 500 (CPU experiments);
- ``tiny``: 10, 60, 200 / 50 / 50 (tests).

Speed (2-core CPU, brackets format, one process): about 2,200 accepted examples/s for ``lra`` lengths
(500-2000; about 14 % of root draws are operators that complete, so most time goes to rejected trees), about
7,000/s for ``small``; the full ``lra`` preset (100k examples) takes about 45 s, then loads from the cache in
about 2 s.
"""

from __future__ import annotations

import random
import time
from collections.abc import Hashable, Sequence
from typing import Any, ClassVar

import numpy as np

from transevolve.tasks import _cache
from transevolve.tasks._dp_common import (
    SPLIT_SIZE_OPTIONS,
    WordVocab,
    check_choice,
    check_int,
    draw_unique_splits,
    resolve_options,
)
from transevolve.tasks.base import ExampleDataset, Task, TaskData, TaskKind, register_task

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
DIGIT_IDS = tuple(range(1, 11))
MIN_ID, MAX_ID, MED_ID, SM_ID, CLOSE_ID, LPAREN_ID, RPAREN_ID = range(11, 18)
OPERATOR_IDS = (MIN_ID, MAX_ID, MED_ID, SM_ID)
VOCAB = WordVocab(["<pad>", *(str(d) for d in range(10)), *OPERATORS, "]", "(", ")"], special_ids=(0,))
VOCAB_SIZE = VOCAB.vocab_size
OPERATOR_PROBABILITY = 0.25
_LPAREN = bytes([LPAREN_ID])

#: Generator version: part of the cache key; bump it whenever the generated data would change.
GENERATOR_VERSION = 1

PRESETS: dict[str, dict[str, Any]] = {
    "lra": {"min_length": 500, "max_length": 2000, "num_train": 96_000, "num_validation": 2_000,
            "num_test": 2_000},
    "small": {"min_length": 100, "max_length": 500, "num_train": 5_000, "num_validation": 500, "num_test": 500},
    "tiny": {"min_length": 10, "max_length": 60, "num_train": 200, "num_validation": 50, "num_test": 50},
}
DEFAULTS: dict[str, Any] = {"max_depth": 10, "max_args": 10, "format": "brackets"}


class _TooLong(Exception):
    """Raised inside the sampler when a tree reaches the length limit."""


def sample_tree(rng: random.Random, max_depth: int, max_args: int, max_length: int,
                parens: bool = False) -> tuple[bytes, int, int] | None:
    """Draw one tree as LRA does; None when it reaches ``max_length`` tokens.

    Returns ``(token ids as bytes, tree length, value)``; with ``parens`` the ids are in the LRA parenthesised
    form (the tree length still counts operator, digit and ``]`` tokens only).
    """
    draw = rng.random
    out = bytearray()
    length = 0
    span = max_args - 1

    def node(depth: int) -> int:
        nonlocal length
        if depth < max_depth and draw() <= OPERATOR_PROBABILITY:
            arity = 2 + int(draw() * span)
            operator = int(draw() * 4)
            length += 2
            if length >= max_length:
                raise _TooLong
            if parens:
                out.extend(_LPAREN * (arity + 1))
            out.append(OPERATOR_IDS[operator])
            values = []
            for _ in range(arity):
                values.append(node(depth + 1))
                if parens:
                    out.append(RPAREN_ID)
            out.append(CLOSE_ID)
            if parens:
                out.append(RPAREN_ID)
            if operator == 0:
                return min(values)
            if operator == 1:
                return max(values)
            if operator == 3:
                return sum(values) % 10
            values.sort()
            half = arity // 2
            return values[half] if arity % 2 else (values[half - 1] + values[half]) // 2
        length += 1
        if length >= max_length:
            raise _TooLong
        digit = int(draw() * 10)
        out.append(digit + 1)
        return digit

    try:
        value = node(1)
    except _TooLong:
        return None
    return bytes(out), length, value


def max_tree_length(max_depth: int, max_args: int) -> int:
    """Length of the largest possible tree (every node an operator with ``max_args`` arguments)."""
    length = 1
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def evaluate(ids: Sequence[int]) -> int:
    """The value of a ListOps token sequence (either format; padding ignored), computed with an explicit stack
    and ``numpy.median``, independently of the generator. Raises ``ValueError`` on a malformed sequence."""
    stack: list[tuple[int, list[int]]] = []
    result: int | None = None
    for token in (int(t) for t in ids):
        if token in (0, LPAREN_ID, RPAREN_ID):
            continue
        if result is not None:
            raise ValueError("tokens after the end of the expression")
        if token in OPERATOR_IDS:
            stack.append((token, []))
            continue
        if 1 <= token <= 10:
            value = token - 1
        elif token == CLOSE_ID:
            if not stack:
                raise ValueError("']' without an operator")
            operator, args = stack.pop()
            if not args:
                raise ValueError("operator without arguments")
            if operator == MIN_ID:
                value = min(args)
            elif operator == MAX_ID:
                value = max(args)
            elif operator == MED_ID:
                value = int(np.median(np.asarray(args)))
            else:
                value = sum(args) % 10
        else:
            raise ValueError(f"token id {token} is not a ListOps token")
        if stack:
            stack[-1][1].append(value)
        else:
            result = value
    if result is None or stack:
        raise ValueError("incomplete expression")
    return result


@register_task
class ListOpsTask(Task):
    """LRA ListOps, generated (see the module docstring).

    Args:
        preset: ``lra``, ``small`` or ``tiny``: defaults of the length range and split sizes.
        min_length, max_length: keep trees with ``min_length < length < max_length``.
        max_depth, max_args: tree depth (root = 1) and operator arity limits (LRA: 10, 10).
        num_train, num_validation, num_test: split sizes.
        format: ``brackets`` or ``lra`` (parenthesised LRA form).
        cache: store and reuse the generated splits under the data cache directory.
    """

    name: ClassVar[str] = "listops"
    kind: ClassVar[TaskKind] = "classification"
    metric: ClassVar[str] = "accuracy"
    description: ClassVar[str] = "LRA ListOps: value (0-9) of nested MIN/MAX/MED/SM lists (generated)"
    num_classes: ClassVar[int] = 10
    vocab_size: ClassVar[int] = VOCAB_SIZE

    def __init__(self, preset: str = "lra", *, min_length: int | None = None, max_length: int | None = None,
                 max_depth: int | None = None, max_args: int | None = None, num_train: int | None = None,
                 num_validation: int | None = None, num_test: int | None = None, format: str | None = None,
                 cache: bool = True) -> None:
        given = {"min_length": min_length, "max_length": max_length, "max_depth": max_depth, "max_args": max_args,
                 "num_train": num_train, "num_validation": num_validation, "num_test": num_test, "format": format}
        presets = {name: {**DEFAULTS, **values} for name, values in PRESETS.items()}
        self.preset = preset
        self.options = resolve_options(self.name, presets, preset, given)
        self.cache = bool(cache)
        self._validate()

    def _validate(self) -> None:
        o, name = self.options, self.name
        check_int(name, "max_depth", o["max_depth"], 2, 64)
        check_int(name, "max_args", o["max_args"], 2)
        check_int(name, "min_length", o["min_length"], 0)
        check_int(name, "max_length", o["max_length"], 2)
        for option in SPLIT_SIZE_OPTIONS.values():
            check_int(name, option, o[option], 1)
        check_choice(name, "format", o["format"], ("brackets", "lra"))
        if o["max_length"] - o["min_length"] < 2:
            raise ValueError(f"{name}: no length satisfies min_length={o['min_length']} < length < "
                             f"max_length={o['max_length']}")
        largest = max_tree_length(o["max_depth"], o["max_args"])
        if o["min_length"] >= largest:
            raise ValueError(f"{name}: min_length={o['min_length']} but trees with max_depth={o['max_depth']}, "
                             f"max_args={o['max_args']} have at most {largest} tokens")

    def _generate(self, seed: int) -> dict[str, _cache.Columns]:
        o = self.options
        parens = o["format"] == "lra"

        def draw(rng: random.Random) -> tuple[Hashable, tuple[bytes, int]] | None:
            tree = sample_tree(rng, o["max_depth"], o["max_args"], o["max_length"], parens)
            if tree is None or tree[1] <= o["min_length"]:
                return None
            return tree[0], (tree[0], tree[2])

        counts = {split: o[option] for split, option in SPLIT_SIZE_OPTIONS.items()}
        # Rejections dominate (75 % of roots are digits); 2000 draws per kept tree covers every preset with margin.
        trees = draw_unique_splits(self.name, seed, counts, draw, lambda n: 2000 * n + 100_000)
        return {split: {"ids": [t[0] for t in items], "label": [t[1] for t in items]}
                for split, items in trees.items()}

    def load(self, seed: int = 0) -> TaskData:
        check_int(self.name, "seed", seed, 0)
        key = {"task": self.name, "version": GENERATOR_VERSION, "seed": seed, "options": self.options}
        start = time.perf_counter()
        splits, cache_info = _cache.cached_splits(self.name, key, lambda: self._generate(seed), self.cache)
        datasets = {split: ExampleDataset(splits[split]) for split in ("train", "validation", "test")}
        max_length = max(max(ds.lengths) for ds in datasets.values())
        info = {"preset": self.preset, "options": dict(self.options), "version": GENERATOR_VERSION, "seed": seed,
                "seconds": round(time.perf_counter() - start, 3), **cache_info}
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=VOCAB_SIZE,
                        splits=datasets, num_classes=self.num_classes, tokenizer=VOCAB, max_length=max_length,
                        info=info)
