"""The task interface: what every task gives the training recipe.

A task is one file in ``transevolve/tasks/`` that defines a :class:`Task` subclass decorated with
:func:`register_task`. ``Task.load(seed)`` returns :class:`TaskData`: deterministic train / validation / test
splits (pure functions of the seed and the task options), the vocabulary size, the metric and, for text tasks,
the tokenizer.

Examples are dicts of 1-D ``torch.long`` tensors, by task kind:

- ``classification``: ``{"ids": (n,), "label": ()}``.
- ``seq2seq``: ``{"src": (s,), "tgt": (t,)}`` with ``tgt = [BOS, y_1 .. y_m, EOS]``; the decoder reads
  ``tgt[:-1]`` and predicts ``tgt[1:]``.
- ``language_modeling``: ``{"ids": (n,), "loss_mask": (n,)}`` (bool): the model reads ``ids[:-1]`` and is trained to
  predict ``ids[1:]`` where ``loss_mask[1:]`` is True; an optional ``"answer_mask"`` marks the tokens graded by the
  metric (e.g. the final answer after a chain of thought).

Token ids: 0 is padding everywhere; sequence tasks use 1 = BOS and 2 = EOS (the official convention).

A task graded by what a model *generates* (the dynamic-programming tasks) also gives a :class:`SolutionChecker`
(``TaskData.checker``): the prompt to decode from, a decoding length limit, and a check of a generated solution
against an oracle computed from the problem alone (see :mod:`transevolve.tasks._dp_common`).
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple, Protocol

import torch
from torch.utils.data import Dataset

from transevolve.errors import UserError

TaskKind = Literal["classification", "seq2seq", "language_modeling"]
Example = dict[str, torch.Tensor]

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2


class Tokenizer(Protocol):
    """What the recipe needs from a text tokenizer."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class ExampleDataset(Dataset):
    """A list of examples with their lengths (in tokens, for length bucketing)."""

    def __init__(self, examples: list[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> Example:
        return self.examples[index]

    @property
    def lengths(self) -> list[int]:
        """Tokens per example: the longest sequence of each example."""
        return [max(int(t.numel()) for t in ex.values() if t.dim() == 1) for ex in self.examples]


class GenerationCheck(NamedTuple):
    """The verdict on one generated solution.

    Attributes:
        answer_correct: the final answer could be read and equals the oracle's answer for the problem.
        chain_valid: the whole generation is a valid derivation (every chain-of-thought step right and the answer
            correct); in the direct format (no chain) it equals ``answer_correct``.
        parsed: the final answer could be read at all (``not parsed`` is a parse error).
    """

    answer_correct: bool
    chain_valid: bool
    parsed: bool


class SolutionChecker(Protocol):
    """Grades generated solutions of a task from its problems alone (never from the reference solution)."""

    @property
    def max_new_tokens(self) -> int:
        """Decoding stops after this many generated tokens (the longest possible target plus a margin)."""
        ...

    def generation_prompt(self, ids: Sequence[int]) -> list[int]:
        """The decoder input of an example's ``ids``: everything up to and including the separator that starts
        the answer (the problem only)."""
        ...

    def check_generation(self, prompt: Sequence[int], generated: Sequence[int]) -> GenerationCheck:
        """Grade ``generated`` (the tokens after ``prompt``, ending with EOS) as a solution of ``prompt``."""
        ...


@dataclass
class TaskData:
    """A loaded task.

    Attributes:
        name: registry name.
        kind: classification, seq2seq or language_modeling.
        metric: name of the headline metric (``accuracy``, ``bleu``, ``generated_accuracy``, ...).
        vocab_size: ids are in ``[0, vocab_size)``.
        splits: ``train``, ``validation`` and ``test`` datasets.
        num_classes: for classification.
        tokenizer: for text tasks (decoding predictions, BLEU on detokenized text).
        max_length: the longest sequence in any split (source or target).
        info: free-form facts worth printing (source package, version, licence, sizes).
        checker: for tasks graded by generation (the DP tasks): prompts, decoding limit and the oracle check of a
            generated solution; the headline metric is then ``generated_accuracy``.
    """

    name: str
    kind: TaskKind
    metric: str
    vocab_size: int
    splits: dict[str, ExampleDataset]
    num_classes: int | None = None
    tokenizer: Tokenizer | None = None
    max_length: int = 0
    info: dict[str, Any] = field(default_factory=dict)
    checker: SolutionChecker | None = None


class Task(ABC):
    """Base class of every task. Subclasses set the class attributes and implement :meth:`load`.

    Options (sizes, lengths, presets) are keyword arguments of ``__init__``, validated there with clear errors.
    """

    name: ClassVar[str]
    kind: ClassVar[TaskKind]
    metric: ClassVar[str]
    description: ClassVar[str] = ""
    #: Names of the fetchable data packages this task reads (empty for generated tasks).
    data_packages: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def load(self, seed: int = 0) -> TaskData:
        """Build the splits deterministically from ``seed`` (and the options)."""


TASKS: dict[str, type[Task]] = {}


def register_task(cls: type[Task]) -> type[Task]:
    """Class decorator: add a task to :data:`TASKS` under ``cls.name``."""
    if cls.name in TASKS:
        raise ValueError(f"task {cls.name!r} is registered twice")
    TASKS[cls.name] = cls
    return cls


class TaskOptionError(UserError):
    """An unknown task, an unknown task option or an invalid option value (the message lists the options)."""


def task_options(cls: type[Task]) -> dict[str, Any]:
    """The options of a task class (keyword arguments of ``__init__``) with their defaults (``...``: required)."""
    options = {}
    for parameter in inspect.signature(cls.__init__).parameters.values():
        if parameter.name == "self" or parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        options[parameter.name] = ... if parameter.default is parameter.empty else parameter.default
    return options


def describe_options(cls: type[Task]) -> str:
    """``name=default, ...`` for error messages."""
    options = task_options(cls)
    if not options:
        return f"task {cls.name!r} takes no options"
    return f"options of task {cls.name!r} (default): " + ", ".join(
        name if default is ... else f"{name}={default!r}" for name, default in options.items())


def get_task(name: str, **options: Any) -> Task:
    """Instantiate a registered task. Unknown names list the registered tasks; unknown options and invalid
    values raise :class:`TaskOptionError` listing the task's options and their defaults."""
    from transevolve import tasks as _tasks  # noqa: F401  (imports every task module)

    if name not in TASKS:
        raise TaskOptionError(f"unknown task {name!r}; registered tasks: {sorted(TASKS)}")
    cls = TASKS[name]
    accepts_any = any(p.kind == p.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values())
    unknown = sorted(set(options) - set(task_options(cls)))
    if unknown and not accepts_any:
        raise TaskOptionError(f"task {name!r} has no option {', '.join(map(repr, unknown))}; {describe_options(cls)}")
    try:
        return cls(**options)
    except (TypeError, ValueError) as error:
        raise TaskOptionError(f"{error}\n  {describe_options(cls)}") from error


def collate(examples: list[Example]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch, right-padding 1-D tensors with 0 (False for masks).

    Returns ``{key: (b, n_max)}`` for sequences and ``{key: (b,)}`` for scalars.
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, torch.Tensor] = {}
    for key in examples[0]:
        values = [ex[key] for ex in examples]
        if values[0].dim() == 0:
            batch[key] = torch.stack(values)
        else:
            batch[key] = torch.nn.utils.rnn.pad_sequence(values, batch_first=True, padding_value=0)
    return batch


Collate = Callable[[list[Example]], dict[str, torch.Tensor]]
