"""Edit distance (Feng et al. 2023, arXiv 2305.15408; Yang et al. 2024, arXiv 2402.13934): the minimum cost of
turning one string into another with insert / delete cost 2 and substitute cost 3 (not unit costs; all three
are options). Our own generator of the published definition.

Generation: an alphabet of 3-10 letters (uniform size, uniform subset of a-z) and ``s1`` of length ``n``. With
probability ``random_fraction`` (0.4) ``s2`` is a fresh random string of length uniform in
``[max(1, n - 3), n + 2]``; otherwise ``s2`` is ``s1`` after ``k`` (uniform in ``[1, n]``) random edits, each a
uniform choice of insert / delete / replace (by a different letter), where an insert or delete that would leave
``[max(1, n - 3), n + 2]`` becomes a replace (our reading: it keeps the published maximum sequence lengths).
The shorter string is put first.

Chain of thought: the DP table ``D[i][j]`` (cost of turning ``s1[:i]`` into ``s2[:j]``), rows ``i = 1..|s1|``,
columns ``j = 1..|s2|``, each row followed by ``,``; then ``<sep>`` and the answer ``D[|s1|][|s2|]``. Examples
(n = 4)::

    cot:    <bos> o v v v | o v f v v <sep> 0 2 4 6 8 , 2 0 2 4 6 , 4 2 3 2 4 , 6 4 5 3 2 , <sep> 2 <eos>
    direct: <bos> o v v v | o v f v v <sep> 2 <eos>

The loss covers everything after the first ``<sep>``. Graded by generation (:mod:`transevolve.tasks._dp_common`):
the answer must be the true weighted edit distance of the two prompt strings, and the chain is valid when the
generated table is exactly the true DP table, rows ended by ``,`` (the chain is unique).

Token table (fixed for given options)::

    0 <pad> | 1 <bos> | 2 <eos> | 3 | | 4 <sep> | 5 , | 6..31 letters a..z | 32 + k: the number k, 0 <= k <= max_value

``max_value`` is the largest cost a table cell can take (a bound from the costs and the lengths: 3 n + 4 with
the default costs), so ``vocab_size = 33 + max_value`` (97 for n = 20; Feng et al. use numbers 0..59).

Presets (``n``, train / validation / test): ``tiny`` 4, 200 / 50 / 50 (tests); ``small`` 8, 20,000 / 1,000 /
1,000; ``paper`` 12, 1,000,000 / 10,000 / 100,000 (Feng et al. use n = 12 / 16 / 20). Prompts are distinct
across all splits.

Speed (one core of a 2-core Xeon, CPU time of a first ``load``, cache write and tensors included): about
11,700 examples/s for n = 8 (``small``), 8,400/s for n = 12 (``paper``: about 2 minutes), 4,400/s for n = 20.
"""

from __future__ import annotations

import random
import string
from collections.abc import Sequence
from typing import Any, ClassVar

from transevolve.tasks._dp_common import DPProblem, DPTask, WordVocab, check_int
from transevolve.tasks.base import register_task

BAR_ID, SEP_ID, COMMA_ID = 3, 4, 5
LETTER_OFFSET = 6
NUMBER_OFFSET = 32


def edit_table(s1: Sequence[int], s2: Sequence[int], insert: int, delete: int, substitute: int) -> list[list[int]]:
    """The ``(|s1| + 1) x (|s2| + 1)`` table ``D[i][j]`` = cost of turning ``s1[:i]`` into ``s2[:j]``."""
    table = [[j * insert for j in range(len(s2) + 1)]]
    for i, a in enumerate(s1, start=1):
        prev, row = table[-1], [i * delete]
        for j, b in enumerate(s2, start=1):
            row.append(min(prev[j] + delete, row[j - 1] + insert, prev[j - 1] + (0 if a == b else substitute)))
        table.append(row)
    return table


def max_cost(rows: int, cols: int, insert: int, delete: int, substitute: int) -> int:
    """An upper bound on every cell of a table with at most ``rows`` x ``cols`` characters."""
    best = 0
    for i in range(rows + 1):
        for j in range(cols + 1):
            via_substitute = substitute * min(i, j) + (delete * (i - j) if i > j else insert * (j - i))
            best = max(best, min(delete * i + insert * j, via_substitute))
    return best


@register_task
class EditDistanceTask(DPTask):
    """Edit distance between two strings (see the module docstring).

    Args:
        preset: ``tiny``, ``small`` or ``paper``.
        n: length of the first generated string (the size knob); the other has length in ``[n - 3, n + 2]``.
        alphabet_min, alphabet_max: range of the per-example alphabet size (letters from a-z).
        insert_cost, delete_cost, substitute_cost: edit costs (Feng et al.: 2, 2, 3).
        random_fraction: probability that the second string is random rather than an edited copy.
        format: ``cot`` (the DP table, then the answer) or ``direct`` (the answer only).
        num_train, num_validation, num_test: split sizes.
        cache: store and reuse the generated splits under the data cache directory.
    """

    name: ClassVar[str] = "edit_distance"
    description: ClassVar[str] = "Edit distance (insert/delete 2, substitute 3), direct or chain of thought (DP table)"
    version: ClassVar[int] = 1
    number_offset: ClassVar[int] = NUMBER_OFFSET
    _common: ClassVar[dict[str, Any]] = {"alphabet_min": 3, "alphabet_max": 10, "insert_cost": 2, "delete_cost": 2,
                                         "substitute_cost": 3, "random_fraction": 0.4, "format": "cot"}
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {**_common, "n": 4, "num_train": 200, "num_validation": 50, "num_test": 50},
        "small": {**_common, "n": 8, "num_train": 20_000, "num_validation": 1_000, "num_test": 1_000},
        "paper": {**_common, "n": 12, "num_train": 1_000_000, "num_validation": 10_000, "num_test": 100_000},
    }

    def __init__(self, preset: str = "small", *, n: int | None = None, alphabet_min: int | None = None,
                 alphabet_max: int | None = None, insert_cost: int | None = None, delete_cost: int | None = None,
                 substitute_cost: int | None = None, random_fraction: float | None = None, format: str | None = None,
                 num_train: int | None = None, num_validation: int | None = None, num_test: int | None = None,
                 cache: bool = True) -> None:
        self._configure(preset, {
            "n": n, "alphabet_min": alphabet_min, "alphabet_max": alphabet_max, "insert_cost": insert_cost,
            "delete_cost": delete_cost, "substitute_cost": substitute_cost, "random_fraction": random_fraction,
            "format": format, "num_train": num_train, "num_validation": num_validation, "num_test": num_test,
        }, cache)

    def _validate(self) -> None:
        o, name = self.options, self.name
        check_int(name, "n", o["n"], 1, 1000)
        check_int(name, "alphabet_min", o["alphabet_min"], 2, 26)
        check_int(name, "alphabet_max", o["alphabet_max"], o["alphabet_min"], 26)
        for option in ("insert_cost", "delete_cost", "substitute_cost"):
            check_int(name, option, o[option], 1, 1000)
        fraction = o["random_fraction"]
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 <= fraction <= 1.0:
            raise ValueError(f"{name}: random_fraction={fraction!r} must be a number in [0, 1]")
        o["random_fraction"] = float(fraction)

    @property
    def length_range(self) -> tuple[int, int]:
        """Inclusive length range of the second generated string."""
        n = self.options["n"]
        return max(1, n - 3), n + 2

    @property
    def max_value(self) -> int:
        o = self.options
        return max_cost(o["n"], self.length_range[1], o["insert_cost"], o["delete_cost"], o["substitute_cost"])

    def _build_vocab(self) -> WordVocab:
        return WordVocab(["<pad>", "<bos>", "<eos>", "|", "<sep>", ",", *string.ascii_lowercase,
                          *(str(k) for k in range(self.max_value + 1))])

    def sample_strings(self, rng: random.Random) -> tuple[list[int], list[int]]:
        """Two strings as letter indices (0 = a), the shorter first."""
        o = self.options
        n, (low, high) = o["n"], self.length_range
        alphabet = rng.sample(range(26), rng.randint(o["alphabet_min"], o["alphabet_max"]))
        s1 = [rng.choice(alphabet) for _ in range(n)]
        if rng.random() < o["random_fraction"]:
            s2 = [rng.choice(alphabet) for _ in range(rng.randint(low, high))]
        else:
            s2 = list(s1)
            for _ in range(rng.randint(1, n)):
                edit = rng.randrange(3)  # 0 insert, 1 delete, 2 replace
                if (edit == 0 and len(s2) >= high) or (edit == 1 and len(s2) <= low):
                    edit = 2
                if edit == 0:
                    s2.insert(rng.randint(0, len(s2)), rng.choice(alphabet))
                elif edit == 1:
                    del s2[rng.randrange(len(s2))]
                else:
                    position = rng.randrange(len(s2))
                    s2[position] = rng.choice([c for c in alphabet if c != s2[position]])
        return (s2, s1) if len(s2) < len(s1) else (s1, s2)

    def sample(self, rng: random.Random) -> DPProblem:
        o = self.options
        s1, s2 = self.sample_strings(rng)
        table = edit_table(s1, s2, o["insert_cost"], o["delete_cost"], o["substitute_cost"])
        steps: list[int] = []
        for row in table[1:]:
            steps += [*(NUMBER_OFFSET + cost for cost in row[1:]), COMMA_ID]
        steps.append(SEP_ID)
        return DPProblem(prompt=[*(LETTER_OFFSET + c for c in s1), BAR_ID, *(LETTER_OFFSET + c for c in s2)],
                         cot=steps, answer=[NUMBER_OFFSET + table[-1][-1]])

    # Grading generated solutions

    def max_target_length(self) -> int:
        """The table (at most ``n`` rows, the shorter string, of at most ``n + 2`` numbers and a comma), then
        ``<sep> answer <eos>``; or ``answer <eos>`` (direct)."""
        n = self.options["n"]
        return n * (self.length_range[1] + 1) + 3 if self.options["format"] == "cot" else 2

    def _strings(self, question: list[int]) -> tuple[list[int], list[int]]:
        letters = range(LETTER_OFFSET, LETTER_OFFSET + 26)
        if question.count(BAR_ID) != 1 or any(t not in letters for t in question if t != BAR_ID):
            raise ValueError(f"{self.name}: the prompt {question} is not two strings separated by |")
        bar = question.index(BAR_ID)
        return question[:bar], question[bar + 1:]

    def _table(self, question: list[int]) -> list[list[int]]:
        o = self.options
        return edit_table(*self._strings(question), o["insert_cost"], o["delete_cost"], o["substitute_cost"])

    def oracle_answer(self, question: list[int]) -> int:
        return self._table(question)[-1][-1]

    def chain_is_valid(self, question: list[int], chain: list[int]) -> bool:
        """The chain must be the true table: rows ``1..|s1|``, columns ``1..|s2|``, each row then ``,``; then
        ``<sep>``."""
        expected: list[int] = []
        for row in self._table(question)[1:]:
            expected += [*(NUMBER_OFFSET + cost for cost in row[1:]), COMMA_ID]
        return chain == [*expected, SEP_ID]
