"""Longest increasing subsequence (Feng et al. 2023, arXiv 2305.15408; Yang et al. 2024, arXiv 2402.13934):
the length of the longest strictly increasing subsequence of ``n`` integers. Our own generator of the published
definition.

Generation: ``n`` values uniform in ``[n + 1, number_range)``, then 1 to 3 increasing runs are planted: a total
run length ``L`` uniform in ``[3, n]`` is cut into 1-3 (uniform) positive parts, the ``L`` positions are a
uniform random subset split at random among the runs, and each run gets sorted distinct values (so runs are
increasing but interleave). Values start above ``n``, so DP values (at most ``n``) never share a token with
inputs.

Chain of thought: ``dp_1 .. dp_n`` with ``dp_i`` the length of the longest increasing subsequence ending at
``i``, then ``<sep>`` and the answer ``max_i dp_i``. Examples (n = 8, number_range 250)::

    cot:    <bos> 111 85 215 188 210 31 223 165 <sep> 1 1 2 2 3 1 4 2 <sep> 4 <eos>
    direct: <bos> 111 85 215 188 210 31 223 165 <sep> 4 <eos>

The loss covers everything after the first ``<sep>``. Graded by generation (:mod:`transevolve.tasks._dp_common`):
the answer must be the true LIS length of the input (computed by patience sorting, an algorithm independent of
the DP), and the chain is valid when the generated ``dp`` array is exactly the true one (the chain is unique).

Token table (fixed; ``vocab_size = 4 + number_range``, 254 for Feng et al.'s 250)::

    0 <pad> | 1 <bos> | 2 <eos> | 3 <sep> | 4 + k: the number k, 0 <= k < number_range

Presets (``n``, train / validation / test; ``number_range`` 250): ``tiny`` 8, 200 / 50 / 50 (tests); ``small``
20, 20,000 / 1,000 / 1,000; ``paper`` 50, 1,000,000 / 10,000 / 100,000 (Feng et al. use n = 50 / 80 / 100).
Prompts are distinct across all splits.

Speed (one core of a 2-core Xeon, CPU time of a first ``load``, cache write and tensors included): about
10,600 examples/s for n = 20 (``small``), 6,200/s for n = 50 (``paper``: about 3 minutes), 2,900/s for n = 100
(the O(n^2) DP dominates).
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Sequence
from typing import Any, ClassVar

from transevolve.tasks._dp_common import DPProblem, DPTask, WordVocab, check_int
from transevolve.tasks.base import register_task

SEP_ID = 3
NUMBER_OFFSET = 4


def lis_table(values: Sequence[int]) -> list[int]:
    """``dp[i]``: length of the longest strictly increasing subsequence ending at ``i`` (O(n^2))."""
    dp: list[int] = []
    for i, value in enumerate(values):
        dp.append(1 + max((dp[j] for j in range(i) if values[j] < value), default=0))
    return dp


def lis_length(values: Sequence[int]) -> int:
    """Length of the longest strictly increasing subsequence by patience sorting (O(n log n)):
    ``tails[k]`` is the smallest possible last value of an increasing subsequence of length ``k + 1``."""
    tails: list[int] = []
    for value in values:
        position = bisect.bisect_left(tails, value)   # strict: an equal value replaces, never extends
        if position == len(tails):
            tails.append(value)
        else:
            tails[position] = value
    return len(tails)


@register_task
class LISTask(DPTask):
    """Longest increasing subsequence of ``n`` numbers (see the module docstring).

    Args:
        preset: ``tiny``, ``small`` or ``paper``.
        n: sequence length (the size knob).
        number_range: inputs are drawn from ``[n + 1, number_range)``; must be at least ``2 n + 1``.
        format: ``cot`` (the DP array, then the answer) or ``direct`` (the answer only).
        num_train, num_validation, num_test: split sizes.
        cache: store and reuse the generated splits under the data cache directory.
    """

    name: ClassVar[str] = "lis"
    description: ClassVar[str] = "Longest increasing subsequence length, direct or chain of thought (DP array)"
    version: ClassVar[int] = 1
    number_offset: ClassVar[int] = NUMBER_OFFSET
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"n": 8, "number_range": 250, "format": "cot", "num_train": 200, "num_validation": 50,
                 "num_test": 50},
        "small": {"n": 20, "number_range": 250, "format": "cot", "num_train": 20_000, "num_validation": 1_000,
                  "num_test": 1_000},
        "paper": {"n": 50, "number_range": 250, "format": "cot", "num_train": 1_000_000, "num_validation": 10_000,
                  "num_test": 100_000},
    }

    def __init__(self, preset: str = "small", *, n: int | None = None, number_range: int | None = None,
                 format: str | None = None, num_train: int | None = None, num_validation: int | None = None,
                 num_test: int | None = None, cache: bool = True) -> None:
        self._configure(preset, {"n": n, "number_range": number_range, "format": format, "num_train": num_train,
                                 "num_validation": num_validation, "num_test": num_test}, cache)

    def _validate(self) -> None:
        n, number_range = self.options["n"], self.options["number_range"]
        check_int(self.name, "n", n, 3, 10_000)
        check_int(self.name, "number_range", number_range, 7, 100_000)
        if number_range < 2 * n + 1:
            raise ValueError(f"{self.name}: number_range={number_range} must be at least 2 n + 1 = {2 * n + 1} "
                             f"(inputs in [n + 1, number_range) must allow an increasing run of length n={n})")

    def _build_vocab(self) -> WordVocab:
        return WordVocab(["<pad>", "<bos>", "<eos>", "<sep>", *(str(k) for k in range(self.options["number_range"]))])

    def sample_values(self, rng: random.Random) -> list[int]:
        """The input sequence (length n) with 1-3 planted increasing runs."""
        n, high = self.options["n"], self.options["number_range"]
        values = [rng.randrange(n + 1, high) for _ in range(n)]
        total = rng.randint(3, n)
        runs = rng.randint(1, 3)
        positions = rng.sample(range(n), total)  # a uniform subset, in random order
        cuts = [0, *sorted(rng.sample(range(1, total), runs - 1)), total]
        for start, stop in itertools.pairwise(cuts):
            run = sorted(positions[start:stop])
            for position, value in zip(run, sorted(rng.sample(range(n + 1, high), len(run))), strict=True):
                values[position] = value
        return values

    def sample(self, rng: random.Random) -> DPProblem:
        values = self.sample_values(rng)
        dp = lis_table(values)
        return DPProblem(prompt=[NUMBER_OFFSET + v for v in values],
                         cot=[*(NUMBER_OFFSET + d for d in dp), SEP_ID],
                         answer=[NUMBER_OFFSET + max(dp)])

    # Grading generated solutions

    def max_target_length(self) -> int:
        """``dp_1 .. dp_n <sep> answer <eos>`` (cot) or ``answer <eos>`` (direct)."""
        return self.options["n"] + 3 if self.options["format"] == "cot" else 2

    def _values(self, question: list[int]) -> list[int]:
        values = [self.number(token) for token in question]
        if not values or any(v is None for v in values):
            raise ValueError(f"{self.name}: the prompt {question} is not a sequence of numbers")
        return values  # type: ignore[return-value]

    def oracle_answer(self, question: list[int]) -> int:
        return lis_length(self._values(question))

    def chain_is_valid(self, question: list[int], chain: list[int]) -> bool:
        """The chain must be the true ``dp`` array, then ``<sep>``."""
        return chain == [*(NUMBER_OFFSET + d for d in lis_table(self._values(question))), SEP_ID]
