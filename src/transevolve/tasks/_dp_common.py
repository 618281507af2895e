"""Shared machinery of the generated tasks: fixed vocabularies, option presets, seeded split generation with
de-duplication, and the dynamic-programming (DP) task base class with its metrics.

DP tasks (arithmetic modulo p, longest increasing subsequence, edit distance; Feng et al. 2023, arXiv 2305.15408,
as used by Yang et al. 2024, arXiv 2402.13934) are language-modelling tasks. One example is::

    ids         = [BOS] prompt SEP cot answer [EOS]          (cot is empty in the "direct" format)
    loss_mask   = True on every token after the first SEP   (cot, answer and EOS are trained)
    answer_mask = True on the answer tokens                 (teacher-forced diagnostic "teacher_forced_exact")

A model reads ``ids[:-1]`` and predicts ``ids[1:]`` (see :mod:`transevolve.tasks.base`).

Grading by generation (the headline metric): a model greedily continues ``[BOS] prompt SEP`` (the problem only,
:meth:`DPTask.generation_prompt`) for at most :attr:`DPTask.max_new_tokens` tokens, and
:meth:`DPTask.check_generation` grades what it wrote against an oracle computed from the prompt:

- *parsed*: the generation ends with EOS and its last token before EOS is a number, preceded by the answer
  separator or by nothing (the direct format allows nothing else: exactly ``answer EOS``);
- *answer correct*: parsed, and that number is the oracle's answer for the problem (the true value mod p, the
  true LIS length, the true weighted edit distance), however the chain looks;
- *chain valid*: the answer is correct and every chain-of-thought step is right (the task's
  :meth:`DPTask.chain_is_valid`); in the direct format it equals *answer correct*.

The reference chain and answer stored in the example are never read.

Splits are pure functions of ``(seed, options)``: each split draws from its own random stream, in the order test,
validation, train, and skips any prompt already drawn, so the three splits are disjoint and the test set does
not change when only the training-set size does.
"""

from __future__ import annotations

import hashlib
import random
import time
from abc import abstractmethod
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import torch
import torch.nn.functional as F

from transevolve.tasks import _cache
from transevolve.tasks.base import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    ExampleDataset,
    GenerationCheck,
    Task,
    TaskData,
    TaskKind,
)

T = TypeVar("T")

#: Generation order of the splits: evaluation splits first, so they do not depend on the training-set size.
SPLIT_ORDER = ("test", "validation", "train")
SPLIT_SIZE_OPTIONS = {"train": "num_train", "validation": "num_validation", "test": "num_test"}


class WordVocab:
    """A fixed token table; text is tokens separated by whitespace. Satisfies the ``Tokenizer`` protocol."""

    def __init__(self, tokens: Sequence[str], special_ids: Iterable[int] = (PAD_ID, BOS_ID, EOS_ID)) -> None:
        if len(set(tokens)) != len(tokens):
            raise ValueError("duplicate tokens in the vocabulary")
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.index: dict[str, int] = {token: i for i, token in enumerate(self.tokens)}
        self.special_ids = frozenset(special_ids)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def __getitem__(self, token: str) -> int:
        return self.index[token]

    def encode(self, text: str) -> list[int]:
        """``"a b c"`` -> ids; an unknown token raises ``ValueError``."""
        ids = []
        for token in text.split():
            if token not in self.index:
                raise ValueError(f"token {token!r} is not in the vocabulary ({self.vocab_size} tokens)")
            ids.append(self.index[token])
        return ids

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """ids -> text; the special ids (padding, BOS, EOS) are dropped unless ``skip_special`` is False."""
        special = self.special_ids if skip_special else frozenset()
        return " ".join(self.tokens[int(i)] for i in ids if int(i) not in special)


def resolve_options(task: str, presets: dict[str, dict[str, Any]], preset: str,
                    given: dict[str, Any]) -> dict[str, Any]:
    """The preset's options overridden by every ``given`` option that is not None."""
    if preset not in presets:
        raise ValueError(f"{task}: unknown preset {preset!r}; choose one of {sorted(presets)}")
    return {**presets[preset], **{key: value for key, value in given.items() if value is not None}}


def check_int(task: str, name: str, value: Any, low: int, high: int | None = None) -> None:
    """Raise ``ValueError`` unless ``value`` is an int in ``[low, high]``."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{task}: {name}={value!r} must be an integer")
    if value < low or (high is not None and value > high):
        bound = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{task}: {name}={value} must be {bound}")


def check_choice(task: str, name: str, value: Any, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"{task}: {name}={value!r} must be one of {list(choices)}")


def split_seed(task: str, seed: int, split: str) -> int:
    """The 128-bit seed of one split's random stream: a function of (task, seed, split) only."""
    digest = hashlib.sha256(f"transevolve|{task}|{seed}|{split}".encode()).digest()
    return int.from_bytes(digest[:16], "little")


def draw_unique_splits(task: str, seed: int, counts: dict[str, int],
                       stream: Callable[[int], Iterator[tuple[Hashable, T] | None]],
                       max_attempts: Callable[[int], int]) -> dict[str, list[T]]:
    """Draw ``counts[split]`` items per split from ``stream(split_seed)``, an endless iterator of
    ``(dedup key, item)`` pairs or None (a rejected draw).

    Splits are drawn in :data:`SPLIT_ORDER`, each from its own :func:`split_seed`; an item whose key was already
    drawn (in any split) is skipped. ``max_attempts(count)`` bounds the draws per split; running out raises
    ``ValueError`` (the options ask for more distinct items than the generator can reasonably give).
    """
    seen: set[Hashable] = set()
    splits: dict[str, list[T]] = {}
    for split in SPLIT_ORDER:
        draws, items, count = stream(split_seed(task, seed, split)), [], counts[split]
        budget = max_attempts(count)
        attempts = duplicates = 0
        while len(items) < count:
            if attempts >= budget:
                raise ValueError(
                    f"{task}: only {len(items)} of {count} distinct {split} examples after {attempts} draws "
                    f"({duplicates} duplicates, {attempts - len(items) - duplicates} rejected); ask for fewer "
                    "examples or a larger problem size")
            attempts += 1
            result = next(draws)
            if result is None:
                continue
            key, item = result
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            items.append(item)
        splits[split] = items
    return splits


# ------------------------------------------------------------------------------------------------------------
# Dynamic-programming tasks


@dataclass(frozen=True)
class DPProblem:
    """One generated problem, as token ids (no BOS/EOS).

    Attributes:
        prompt: the question, up to (not including) the first separator.
        cot: the chain of thought after the first separator, ending with the separator before the answer.
        answer: the final answer tokens.
    """

    prompt: list[int]
    cot: list[int]
    answer: list[int]


def lm_example_columns(prompt: Sequence[int], separator: int, steps: Sequence[int],
                       answer: Sequence[int]) -> tuple[list[int], list[bool], list[bool]]:
    """``(ids, loss_mask, answer_mask)`` for ``[BOS] prompt separator steps answer [EOS]``."""
    ids = [BOS_ID, *prompt, separator, *steps, *answer, EOS_ID]
    first_target = len(prompt) + 2
    answer_start = first_target + len(steps)
    loss_mask = [i >= first_target for i in range(len(ids))]
    answer_mask = [answer_start <= i < answer_start + len(answer) for i in range(len(ids))]
    return ids, loss_mask, answer_mask


class DPTask(Task):
    """Base of the DP tasks: presets, common options (``format``, split sizes, ``cache``) and :meth:`load`.

    Subclasses set ``name``, ``presets``, ``version`` and ``separator`` and implement :meth:`_validate`,
    :meth:`_build_vocab` and :meth:`sample`.
    """

    kind: ClassVar[TaskKind] = "language_modeling"
    metric: ClassVar[str] = "generated_accuracy"
    #: Generator version: part of the cache key; bump it whenever the generated data changes.
    version: ClassVar[int] = 1
    presets: ClassVar[dict[str, dict[str, Any]]]
    #: The token that separates the prompt from the chain of thought / answer.
    separator: ClassVar[str] = "<sep>"
    #: The token just before the answer in the chain-of-thought format.
    answer_separator: ClassVar[str] = "<sep>"
    #: Id of the number 0; the number k has id ``number_offset + k``.
    number_offset: ClassVar[int]

    options: dict[str, Any]
    vocab: WordVocab

    def _configure(self, preset: str, given: dict[str, Any], cache: bool) -> None:
        self.preset = preset
        self.options = resolve_options(self.name, self.presets, preset, given)
        self.cache = bool(cache)
        check_choice(self.name, "format", self.options["format"], ("direct", "cot"))
        for option in SPLIT_SIZE_OPTIONS.values():
            check_int(self.name, option, self.options[option], 1)
        self._validate()
        self.vocab = self._build_vocab()

    @abstractmethod
    def _validate(self) -> None:
        """Check the task-specific options (raise ``ValueError`` with the offending values)."""

    @abstractmethod
    def _build_vocab(self) -> WordVocab:
        """The fixed token table for the current options."""

    @abstractmethod
    def sample(self, rng: random.Random) -> DPProblem:
        """Draw one problem with its chain of thought and answer."""

    @property
    def vocab_size(self) -> int:
        return self.vocab.vocab_size

    # --------------------------------------------------------------------------------------------------------
    # Grading generated solutions (the SolutionChecker protocol of transevolve.tasks.base)

    @abstractmethod
    def max_target_length(self) -> int:
        """The most tokens any target (everything after the first separator, EOS included) can have."""

    @property
    def max_new_tokens(self) -> int:
        """Decoding limit: the longest possible target plus a margin of 10% (at least 4 tokens)."""
        longest = self.max_target_length()
        return longest + max(4, longest // 10)

    @abstractmethod
    def oracle_answer(self, question: list[int]) -> int:
        """The true answer to ``question`` (the prompt's tokens without BOS and separator), computed from it."""

    @abstractmethod
    def chain_is_valid(self, question: list[int], chain: list[int]) -> bool:
        """Whether ``chain`` (the generated tokens before the answer, the answer separator included) is a right
        chain of thought for ``question``."""

    def number(self, token: int) -> int | None:
        """The number a token stands for, or None when it is not a number token."""
        value = int(token) - self.number_offset
        return value if 0 <= value < self.vocab_size - self.number_offset else None

    def generation_prompt(self, ids: Sequence[int]) -> list[int]:
        """``[BOS] prompt SEP``: an example's ids up to and including the first separator (the problem only)."""
        ids = [int(i) for i in ids]
        separator = self.vocab[self.separator]
        if separator not in ids:
            raise ValueError(f"{self.name}: no separator {self.separator!r} in the example {ids[:40]}")
        return ids[: ids.index(separator) + 1]

    def _question(self, prompt: Sequence[int]) -> list[int]:
        question = [int(i) for i in prompt]
        if question and question[0] == BOS_ID:
            question = question[1:]
        if question and question[-1] == self.vocab[self.separator]:
            question = question[:-1]
        return question

    def check_generation(self, prompt: Sequence[int], generated: Sequence[int]) -> GenerationCheck:
        """Grade ``generated`` as a solution of ``prompt`` (see the module docstring for the definitions).

        Args:
            prompt: the problem, as :meth:`generation_prompt` gives it (BOS and separator optional).
            generated: the generated tokens after the prompt; the solution ends at the first EOS (anything after
                it, e.g. padding, is ignored). Without an EOS the generation is a parse error.
        """
        question = self._question(prompt)
        expected = self.oracle_answer(question)
        tokens = [int(t) for t in generated]
        if EOS_ID not in tokens:
            return GenerationCheck(False, False, False)
        output = tokens[: tokens.index(EOS_ID)]
        answer = self.number(output[-1]) if output else None
        chain = output[:-1]
        allowed = not chain or (self.options["format"] == "cot" and chain[-1] == self.vocab[self.answer_separator])
        if answer is None or not allowed:
            return GenerationCheck(False, False, False)
        correct = answer == expected
        if self.options["format"] == "direct":
            return GenerationCheck(correct, correct, True)
        return GenerationCheck(correct, correct and self.chain_is_valid(question, chain), True)

    def encode_problem(self, problem: DPProblem) -> tuple[list[int], list[bool], list[bool]]:
        """``(ids, loss_mask, answer_mask)`` of a problem in the configured format."""
        steps = problem.cot if self.options["format"] == "cot" else []
        return lm_example_columns(problem.prompt, self.vocab[self.separator], steps, problem.answer)

    def _stream(self, seed: int) -> Iterator[tuple[Hashable, DPProblem]]:
        rng = random.Random(seed)
        while True:
            problem = self.sample(rng)
            yield tuple(problem.prompt), problem

    def _generate(self, seed: int) -> dict[str, _cache.Columns]:
        counts = {split: self.options[option] for split, option in SPLIT_SIZE_OPTIONS.items()}
        problems = draw_unique_splits(self.name, seed, counts, self._stream, lambda n: 20 * n + 1000)
        splits: dict[str, _cache.Columns] = {}
        for split, items in problems.items():
            encoded = [self.encode_problem(problem) for problem in items]
            splits[split] = {"ids": [e[0] for e in encoded], "loss_mask": [e[1] for e in encoded],
                             "answer_mask": [e[2] for e in encoded]}
        return splits

    def load(self, seed: int = 0) -> TaskData:
        check_int(self.name, "seed", seed, 0)
        key = {"task": self.name, "version": self.version, "seed": seed, "options": self.options}
        start = time.perf_counter()
        splits, cache_info = _cache.cached_splits(self.name, key, lambda: self._generate(seed), self.cache)
        datasets = {split: ExampleDataset(splits[split]) for split in ("train", "validation", "test")}
        max_length = max(max(ds.lengths) for ds in datasets.values())
        info = {"preset": self.preset, "options": dict(self.options), "version": self.version, "seed": seed,
                "seconds": round(time.perf_counter() - start, 3), **cache_info}
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=self.vocab_size,
                        splits=datasets, tokenizer=self.vocab, max_length=max_length, info=info, checker=self)


# ------------------------------------------------------------------------------------------------------------
# Loss and metric for language-modelling batches (``collate`` output)


def next_token_loss(logits: torch.Tensor, ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the masked targets.

    Args:
        logits: ``(b, n - 1, V)``, the model's output on ``ids[:, :-1]``.
        ids: ``(b, n)`` token ids.
        loss_mask: ``(b, n)`` bool; ``loss_mask[:, 1:]`` selects the targets ``ids[:, 1:]``.
    """
    targets, mask = ids[:, 1:], loss_mask[:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # (b, n - 1)
    return (losses * mask).sum() / mask.sum().clamp(min=1)


def teacher_forced_exact_match(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per example, 1.0 when every masked target is the argmax prediction (teacher forcing), else 0.0.

    With ``mask = answer_mask`` this is answer exact match; with ``mask = loss_mask`` every CoT token must be
    right too (Feng et al.'s LIS / edit-distance metric). Shapes as :func:`next_token_loss`; returns ``(b,)``.
    """
    correct = (logits.argmax(dim=-1) == ids[:, 1:]) | ~mask[:, 1:]
    return correct.all(dim=1).float()
