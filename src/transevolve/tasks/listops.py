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

Generation is vectorised over batches of roots (:func:`sample_forest`, level by level with numpy);
:func:`sample_tree` is the readable recursive reference it is tested against. About 8 % of roots give a tree
of length 500-2000 (75 % are single digits).

Speed (measured on a 2-core Xeon, CPU time of a first ``load``: sampling, de-duplication, cache write and
tensors): ``lra`` preset about 6,500 examples/s (100k examples in about 16 s; the bare sampler alone about
12,500/s, the recursive reference about 2,700/s), ``lra`` with ``format="lra"`` about 3,500/s, ``small`` about
8,400/s. Later loads read the cache: about 3 s for ``lra`` (8 s in the parenthesised format, whose 100k
examples hold about 1.7 GB as int64 tensors).
"""

from __future__ import annotations

import random
import time
from collections.abc import Hashable, Iterator, Sequence
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
_OPERATOR_ARRAY = np.array(OPERATOR_IDS, dtype=np.uint8)
#: Roots drawn per vectorised batch (fixed: the data depend on it).
BATCH_ROOTS = 2048

#: Generator version: part of the cache key; bump it whenever the generated data would change.
GENERATOR_VERSION = 2

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
    """Draw one tree as LRA does, recursively (the readable reference of :func:`sample_forest`, which the
    task uses); None when it reaches ``max_length`` tokens.

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


def sample_forest(rng: np.random.Generator, num_roots: int, max_depth: int, max_args: int, min_length: int,
                  max_length: int, parens: bool = False) -> list[tuple[bytes, int] | None]:
    """Draw ``num_roots`` trees at once, level by level with numpy; the same distribution as :func:`sample_tree`.

    Each level holds the nodes of one depth of every tree, children grouped by parent in order. A tree is
    dropped as soon as its decided tokens plus one per pending child reach ``max_length``. Accepted trees
    (``min_length < length < max_length``) are valued bottom-up with segment reductions over their children and
    written top-down from each node's offset (in ``parens`` form every position not written is a ``(``).

    Returns, per root, ``(token ids as bytes, value)`` or None (rejected).
    """
    levels = []  # per depth: (tree of each node (n,), is_op (n,), arity (ops,), operator (ops,), digit (n - ops,))
    tree = np.arange(num_roots)
    alive = np.ones(num_roots, dtype=bool)
    length = np.zeros(num_roots, dtype=np.int64)
    for depth in range(1, max_depth + 1):
        if tree.size == 0:
            break
        leaves_only = depth == max_depth  # the deepest level holds digits only
        is_op = np.zeros(tree.size, dtype=bool) if leaves_only else rng.random(tree.size) <= OPERATOR_PROBABILITY
        num_ops = int(is_op.sum())
        arity = rng.integers(2, max_args + 1, size=num_ops)
        operator = rng.integers(0, 4, size=num_ops)
        digit = rng.integers(0, 10, size=tree.size - num_ops)
        op_tree = tree[is_op]
        length += np.bincount(tree, minlength=num_roots) + np.bincount(op_tree, minlength=num_roots)
        pending = np.bincount(op_tree, weights=arity, minlength=num_roots).astype(np.int64)
        alive &= length + pending < max_length
        levels.append((tree, is_op, arity, operator, digit))
        grow = alive[op_tree]
        tree = np.repeat(op_tree[grow], arity[grow])
    accepted = alive & (length > min_length)
    results: list[tuple[bytes, int] | None] = [None] * num_roots
    if not accepted.any():
        return results

    kept = []  # the levels restricted to accepted trees: (is_op, arity, operator, digit)
    for tree, is_op, arity, operator, digit in levels:
        keep = accepted[tree]
        if not keep.any():
            break
        kept.append((is_op[keep], arity[keep[is_op]], operator[keep[is_op]], digit[keep[~is_op]]))

    # Bottom-up: value and size (tokens in the output form) of every node.
    values: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(kept)
    sizes: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * len(kept)
    for d in range(len(kept) - 1, -1, -1):
        is_op, arity, operator, digit = kept[d]
        value = np.empty(is_op.size, dtype=np.int64)
        size = np.ones(is_op.size, dtype=np.int64)
        value[~is_op] = digit
        if arity.size:
            child_values, child_sizes = values[d + 1], sizes[d + 1]
            starts = np.cumsum(arity) - arity
            segment = np.repeat(np.arange(arity.size), arity)
            ordered = np.sort(segment * 10 + child_values) % 10  # children sorted within each segment
            middle = starts + arity // 2
            median = np.where(arity % 2 == 1, ordered[middle], (ordered[middle - 1] + ordered[middle]) // 2)
            candidates = (np.minimum.reduceat(child_values, starts), np.maximum.reduceat(child_values, starts),
                          median, np.add.reduceat(child_values, starts) % 10)
            value[is_op] = np.choose(operator, candidates)
            size[is_op] = 2 + np.add.reduceat(child_sizes, starts) + (2 * (arity + 1) if parens else 0)
        values[d], sizes[d] = value, size

    # Top-down: every node's start in the output, then its tokens.
    out = np.full(int(sizes[0].sum()), LPAREN_ID if parens else 0, dtype=np.uint8)
    root_start = np.cumsum(sizes[0]) - sizes[0]
    start = root_start
    for d, (is_op, arity, operator, digit) in enumerate(kept):
        out[start[~is_op]] = digit + 1
        if not arity.size:
            break
        op_start, op_size = start[is_op], sizes[d][is_op]
        head = arity + 2 if parens else 1  # tokens before the first child: "(" * (arity + 1) and the operator
        out[op_start + head - 1] = _OPERATOR_ARRAY[operator]
        out[op_start + op_size - (2 if parens else 1)] = CLOSE_ID
        step = sizes[d + 1] + (1 if parens else 0)  # a child and, in parens form, its ")"
        before = np.cumsum(step) - step
        first = np.cumsum(arity) - arity
        child_start = np.repeat(op_start + head, arity) + before - np.repeat(before[first], arity)
        if parens:
            out[op_start + op_size - 1] = RPAREN_ID
            out[child_start + sizes[d + 1]] = RPAREN_ID
        start = child_start
    data = out.tobytes()
    for i, root in enumerate(np.flatnonzero(accepted).tolist()):
        begin = int(root_start[i])
        results[root] = (data[begin:begin + int(sizes[0][i])], int(values[0][i]))
    return results


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
        min_length, max_length: keep trees with ``min_length < length < max_length`` (tree length: operator,
            digit and ``]`` tokens; the parentheses of the ``lra`` format are not counted).
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

    def _stream(self, seed: int) -> Iterator[tuple[Hashable, tuple[bytes, int]] | None]:
        o = self.options
        rng = np.random.default_rng(seed)
        while True:
            for tree in sample_forest(rng, BATCH_ROOTS, o["max_depth"], o["max_args"], o["min_length"],
                                      o["max_length"], o["format"] == "lra"):
                yield None if tree is None else (tree[0], tree)

    def _generate(self, seed: int) -> dict[str, _cache.Columns]:
        counts = {split: self.options[option] for split, option in SPLIT_SIZE_OPTIONS.items()}
        # Rejections dominate (75 % of roots are digits); 2000 draws per kept tree covers every preset with margin.
        trees = draw_unique_splits(self.name, seed, counts, self._stream, lambda n: 2000 * n + 100_000)
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
