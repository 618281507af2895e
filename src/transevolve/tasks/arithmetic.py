"""Arithmetic expressions over the finite field Z_p (Feng et al. 2023, arXiv 2305.15408; Yang et al. 2024,
arXiv 2402.13934): evaluate an expression with ``num_operators`` operators ``+ - * /`` modulo a prime ``p``
(``/`` multiplies by the modular inverse). Our own generator of the published definition.

Generation: start from one uniform number (the answer); ``num_operators`` times, replace a uniformly chosen
number by ``(a op b)`` with a uniform operator and ``(a, b)`` uniform among the pairs whose value is that number
(a divisor is never 0, so division by zero cannot arise). Parentheses are printed only where precedence needs
them (``*`` and ``/`` bind tighter; a right operand of ``-`` or ``/`` keeps parentheses around an operator of
the same precedence), so a printed expression may group differently from its generation tree but has the
same value.

Chain of thought: the generation history in reverse. Each step collapses the most recently created
sub-expression (two numbers and one operator, with its parentheses if any) into its value; steps are joined by
``=``. Examples (p = 11, 3 operators; generated as ``3 + (3 - (7 + 2))``, so ``3 - 9`` collapses before
``3 + 3``)::

    cot:    <bos> 3 + 3 - ( 7 + 2 ) = 3 + 3 - 9 = 3 + 5 = 8 <eos>
    direct: <bos> 3 + 3 - ( 7 + 2 ) = 8 <eos>

The loss covers everything after the first ``=``. Graded by generation (:mod:`transevolve.tasks._dp_common`):
the answer must be the value of the prompt modulo p (:func:`evaluate_expression`, a recursive-descent parser).
The chain is *not* unique (the generator collapses sub-expressions in a random valid order), so a generated chain
is not compared with the stored one: it is valid when every expression is a legal one-step reduction of the
previous one (:func:`one_step_reductions`; the prompt first) and the last expression reduces to the answer.

Token table (fixed; ``vocab_size = 10 + p``, 21 for p = 11 as in Feng et al.)::

    0 <pad> | 1 <bos> | 2 <eos> | 3 + | 4 - | 5 * | 6 / | 7 ( | 8 ) | 9 = | 10 + k: the number k, 0 <= k < p

Presets (``num_operators``, ``p``, train / validation / test): ``tiny`` 3, 11, 200 / 50 / 50 (tests); ``small``
4, 11, 20,000 / 1,000 / 1,000; ``paper`` 6, 11, 1,000,000 / 10,000 / 100,000 (Feng et al.'s scale: 1e6 train,
1e5 test). Prompts are distinct across all splits.

Speed (one core of a 2-core Xeon, CPU time of a first ``load``, cache write and tensors included): about
21,000 examples/s with 4 operators (``small``), 14,000/s with 6 (``paper``: about 80 s).
"""

from __future__ import annotations

import itertools
import random
from typing import Any, ClassVar

from transevolve.tasks._dp_common import DPProblem, DPTask, WordVocab, check_int
from transevolve.tasks.base import register_task

ADD, SUB, MUL, DIV = range(4)
OPERATOR_TOKENS = ("+", "-", "*", "/")
#: Ids of the fixed symbols; the number k has id ``NUMBER_OFFSET + k``.
OPERATOR_IDS = (3, 4, 5, 6)
LPAREN_ID, RPAREN_ID, EQUALS_ID = 7, 8, 9
NUMBER_OFFSET = 10
_PRECEDENCE = (1, 1, 2, 2)
_LEAF = -1


def _apply(op: int, a: int, b: int, p: int) -> int | None:
    """``a op b`` modulo p; None for a division by zero."""
    if op == ADD:
        return (a + b) % p
    if op == SUB:
        return (a - b) % p
    if op == MUL:
        return a * b % p
    return None if b % p == 0 else a * pow(b, -1, p) % p


def evaluate_expression(tokens: list[int], p: int) -> int:
    """The value modulo p of an expression given as token ids (``*`` and ``/`` bind tighter, operators of equal
    precedence group to the left, parentheses as written). Raises ``ValueError`` when it is malformed or
    divides by zero.

    Grammar: ``expr := term ((+|-) term)*``, ``term := factor ((*|/) factor)*``, ``factor := number | ( expr )``.
    """
    position = 0

    def peek() -> int | None:
        return tokens[position] if position < len(tokens) else None

    def chain(operand: Any, ops: tuple[int, int]) -> int:
        nonlocal position
        value = operand()
        while peek() in (OPERATOR_IDS[ops[0]], OPERATOR_IDS[ops[1]]):
            op = OPERATOR_IDS.index(tokens[position])
            position += 1
            result = _apply(op, value, operand(), p)
            if result is None:
                raise ValueError(f"division by zero in {tokens}")
            value = result
        return value

    def factor() -> int:
        nonlocal position
        token = peek()
        position += 1
        if token == LPAREN_ID:
            value = expr()
            if peek() != RPAREN_ID:
                raise ValueError(f"unbalanced parentheses in {tokens}")
            position += 1
            return value
        if token is None or not NUMBER_OFFSET <= token < NUMBER_OFFSET + p:
            raise ValueError(f"expected a number at position {position - 1} of {tokens}")
        return token - NUMBER_OFFSET

    def expr() -> int:
        return chain(lambda: chain(factor, (MUL, DIV)), (ADD, SUB))

    value = expr()
    if position != len(tokens):
        raise ValueError(f"trailing tokens at position {position} of {tokens}")
    return value


def one_step_reductions(tokens: list[int], p: int) -> list[list[int]]:
    """Every expression obtained from ``tokens`` by evaluating one operator first, as the chain of thought does.

    A step replaces ``a op b`` (two numbers) by its value modulo p, together with the parentheses around it when
    they enclose exactly ``a op b``; nothing else changes. Without such parentheses the step must be allowed by
    precedence and associativity: the operator after ``b`` may not bind tighter than ``op``, and the operator
    before ``a`` may not bind tighter, nor equally tight when it is ``-`` or ``/`` (``x - a + b`` is not
    ``x - (a + b)``). Every legal step keeps the value of the expression; a division by zero is not a step.
    """
    numbers = range(NUMBER_OFFSET, NUMBER_OFFSET + p)
    reductions = []
    for i in range(1, len(tokens) - 1):
        if tokens[i] not in OPERATOR_IDS or tokens[i - 1] not in numbers or tokens[i + 1] not in numbers:
            continue
        op = OPERATOR_IDS.index(tokens[i])
        value = _apply(op, tokens[i - 1] - NUMBER_OFFSET, tokens[i + 1] - NUMBER_OFFSET, p)
        if value is None:
            continue
        start, stop = i - 1, i + 2
        before = tokens[start - 1] if start > 0 else None
        after = tokens[stop] if stop < len(tokens) else None
        if before == LPAREN_ID and after == RPAREN_ID:
            start, stop = start - 1, stop + 1
        else:
            if after in OPERATOR_IDS and _PRECEDENCE[OPERATOR_IDS.index(after)] > _PRECEDENCE[op]:
                continue
            if before in OPERATOR_IDS:
                left = OPERATOR_IDS.index(before)
                if _PRECEDENCE[left] > _PRECEDENCE[op] or (_PRECEDENCE[left] == _PRECEDENCE[op]
                                                           and left in (SUB, DIV)):
                    continue
        reductions.append([*tokens[:start], NUMBER_OFFSET + value, *tokens[stop:]])
    return reductions


def is_prime(p: int) -> bool:
    return p >= 2 and all(p % d for d in range(2, int(p**0.5) + 1))


def needs_parentheses(child: int, parent: int, is_right: bool) -> bool:
    """Whether ``(a child b)`` as an operand of ``parent`` must keep its parentheses."""
    if _PRECEDENCE[child] != _PRECEDENCE[parent]:
        return _PRECEDENCE[child] < _PRECEDENCE[parent]
    return is_right and parent in (SUB, DIV)


class _Tree:
    """An expression tree grown by replacing leaves: node i is a number (``op[i] == -1``) or ``left op right``."""

    def __init__(self, value: int) -> None:
        self.value, self.op, self.left, self.right = [value], [_LEAF], [_LEAF], [_LEAF]

    def expand(self, node: int, op: int, a: int, b: int) -> None:
        first = len(self.value)
        self.value += [a, b]
        self.op += [_LEAF, _LEAF]
        self.left += [_LEAF, _LEAF]
        self.right += [_LEAF, _LEAF]
        self.op[node], self.left[node], self.right[node] = op, first, first + 1

    def render(self, collapsed: set[int], node: int = 0, parent: int | None = None,
               is_right: bool = False) -> list[int]:
        """Token ids of the subtree at ``node``; nodes in ``collapsed`` print as their value."""
        op = self.op[node]
        if op == _LEAF or node in collapsed:
            return [NUMBER_OFFSET + self.value[node]]
        tokens = [*self.render(collapsed, self.left[node], op, False), OPERATOR_IDS[op],
                  *self.render(collapsed, self.right[node], op, True)]
        if parent is not None and needs_parentheses(op, parent, is_right):
            return [LPAREN_ID, *tokens, RPAREN_ID]
        return tokens


@register_task
class ArithmeticTask(DPTask):
    """Arithmetic modulo ``p`` with ``num_operators`` operators (see the module docstring).

    Args:
        preset: ``tiny``, ``small`` or ``paper``.
        num_operators: operators per expression (the size knob).
        p: the prime modulus.
        format: ``cot`` (the reduction steps, then the answer) or ``direct`` (the answer only).
        num_train, num_validation, num_test: split sizes.
        cache: store and reuse the generated splits under the data cache directory.
    """

    name: ClassVar[str] = "arithmetic"
    description: ClassVar[str] = "Evaluate an expression over Z_p (+ - * /), direct or chain of thought"
    separator: ClassVar[str] = "="
    answer_separator: ClassVar[str] = "="
    number_offset: ClassVar[int] = NUMBER_OFFSET
    version: ClassVar[int] = 1
    presets: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": {"num_operators": 3, "p": 11, "format": "cot", "num_train": 200, "num_validation": 50,
                 "num_test": 50},
        "small": {"num_operators": 4, "p": 11, "format": "cot", "num_train": 20_000, "num_validation": 1_000,
                  "num_test": 1_000},
        "paper": {"num_operators": 6, "p": 11, "format": "cot", "num_train": 1_000_000, "num_validation": 10_000,
                  "num_test": 100_000},
    }

    def __init__(self, preset: str = "small", *, num_operators: int | None = None, p: int | None = None,
                 format: str | None = None, num_train: int | None = None, num_validation: int | None = None,
                 num_test: int | None = None, cache: bool = True) -> None:
        self._configure(preset, {"num_operators": num_operators, "p": p, "format": format, "num_train": num_train,
                                 "num_validation": num_validation, "num_test": num_test}, cache)

    def _validate(self) -> None:
        check_int(self.name, "num_operators", self.options["num_operators"], 1, 100)
        p = self.options["p"]
        check_int(self.name, "p", p, 2, 1000)
        if not is_prime(p):
            raise ValueError(f"{self.name}: p={p} must be prime (division needs inverses modulo p)")

    def _build_vocab(self) -> WordVocab:
        return WordVocab(["<pad>", "<bos>", "<eos>", *OPERATOR_TOKENS, "(", ")", "=",
                          *(str(k) for k in range(self.options["p"]))])

    def _operands(self, rng: random.Random, op: int, value: int) -> tuple[int, int]:
        """A uniform pair ``(a, b)`` with ``a op b == value`` modulo p."""
        p = self.options["p"]
        if op == ADD:
            a = rng.randrange(p)
            return a, (value - a) % p
        if op == SUB:
            a = rng.randrange(p)
            return a, (a - value) % p
        if op == MUL:
            if value == 0:  # the 2p - 1 pairs with a zero factor
                i = rng.randrange(2 * p - 1)
                return (0, i) if i < p else (i - p + 1, 0)
            a = rng.randrange(1, p)
            return a, value * pow(a, -1, p) % p
        b = rng.randrange(1, p)
        return value * b % p, b

    def sample(self, rng: random.Random) -> DPProblem:
        tree = _Tree(rng.randrange(self.options["p"]))
        leaves, history = [0], []
        for _ in range(self.options["num_operators"]):
            node = leaves.pop(rng.randrange(len(leaves)))
            op = rng.randrange(4)
            tree.expand(node, op, *self._operands(rng, op, tree.value[node]))
            leaves += [tree.left[node], tree.right[node]]
            history.append(node)
        collapsed: set[int] = set()
        prompt = tree.render(collapsed)
        steps: list[int] = []
        for node in reversed(history[1:]):  # the last collapse (the root) gives the answer itself
            collapsed.add(node)
            steps += [*tree.render(collapsed), EQUALS_ID]
        return DPProblem(prompt=prompt, cot=steps, answer=[NUMBER_OFFSET + tree.value[0]])

    # Grading generated solutions

    def max_target_length(self) -> int:
        """CoT: the expressions with ``m - 1 .. 1`` operators, each followed by ``=``, then ``answer <eos>``. An
        expression with ``j`` operators has ``2 j + 1`` numbers and operators and at most ``j - 1`` pairs of
        parentheses (never around the whole expression), so the target has at most ``2 m (m - 1) + 2`` tokens."""
        m = self.options["num_operators"]
        return 2 * m * (m - 1) + 2 if self.options["format"] == "cot" else 2

    def oracle_answer(self, question: list[int]) -> int:
        return evaluate_expression(question, self.options["p"])

    def chain_is_valid(self, question: list[int], chain: list[int]) -> bool:
        """Every expression of the chain is a legal one-step reduction of the previous one (the prompt first), and
        the last one reduces in one step to the value of the prompt."""
        p = self.options["p"]
        expressions = [question]
        if chain:
            pieces: list[list[int]] = [[]]
            for token in chain[:-1]:          # the chain ends with "=" (checked by check_generation)
                if token == EQUALS_ID:
                    pieces.append([])
                else:
                    pieces[-1].append(token)
            expressions += pieces
        for previous, current in itertools.pairwise(expressions):
            if current not in one_step_reductions(previous, p):
                return False
        return [NUMBER_OFFSET + self.oracle_answer(question)] in one_step_reductions(expressions[-1], p)
