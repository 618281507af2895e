"""Generated tasks: ListOps (LRA) and the dynamic-programming tasks (arithmetic mod p, LIS, edit distance).

Every label / answer / chain-of-thought step is checked against an oracle written here or in the task module
with a different algorithm (a stack evaluator with ``numpy.median``, a recursive-descent parser, brute force over
subsequences, Dijkstra on the edit graph). Everything is tiny: the whole file runs in seconds on a CPU.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import random
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from transevolve import ModelConfig, build_model
from transevolve.tasks import TASKS, _cache, collate, get_task, listops
from transevolve.tasks._dp_common import next_token_loss, teacher_forced_exact_match
from transevolve.tasks.base import BOS_ID, EOS_ID, TaskData

DP_TASKS = ("arithmetic", "lis", "edit_distance")
SPLITS = ("train", "validation", "test")


@pytest.fixture(autouse=True, scope="module")
def _data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the data cache at a temporary directory for the whole module."""
    root = tmp_path_factory.mktemp("data")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSEVOLVE_DATA", str(root))
        yield root


def load(name: str, seed: int = 0, **options: Any) -> TaskData:
    options.setdefault("preset", "tiny")
    options.setdefault("cache", False)
    return get_task(name, **options).load(seed)


def all_examples(data: TaskData) -> Iterator[tuple[str, dict[str, torch.Tensor]]]:
    for split in SPLITS:
        for example in data.splits[split]:
            yield split, example


def as_tuples(data: TaskData, key: str = "ids") -> dict[str, list[tuple[int, ...]]]:
    return {split: [tuple(ex[key].reshape(-1).tolist()) for ex in data.splits[split]] for split in SPLITS}


# ------------------------------------------------------------------------------------------------------------
# Registry and the common contract


def test_tasks_are_registered() -> None:
    assert TASKS["listops"].kind == "classification" and TASKS["listops"].metric == "accuracy"
    for name in DP_TASKS:
        assert TASKS[name].kind == "language_modeling" and TASKS[name].metric == "generated_accuracy"


@pytest.mark.parametrize("name", ["listops", *DP_TASKS])
def test_splits_sizes_ranges_and_determinism(name: str) -> None:
    data = load(name)
    for split, size in (("train", 200), ("validation", 50), ("test", 50)):
        assert len(data.splits[split]) == size
    for _, example in all_examples(data):
        ids = example["ids"]
        assert ids.dtype == torch.long and ids.dim() == 1
        assert int(ids.min()) >= 1 and int(ids.max()) < data.vocab_size
    assert data.max_length == max(max(ds.lengths) for ds in data.splits.values())
    # Same seed: the same data; another seed: different data.
    assert as_tuples(load(name)) == as_tuples(data)
    other = as_tuples(load(name, seed=1))
    assert all(other[split] != as_tuples(data)[split] for split in SPLITS)


@pytest.mark.parametrize("name", ["listops", *DP_TASKS])
def test_splits_are_disjoint(name: str) -> None:
    data = load(name)
    if name == "listops":
        keys = as_tuples(data)
    else:  # DP tasks are de-duplicated on the prompt (the tokens before the first separator)
        sep = data.tokenizer.encode("=" if name == "arithmetic" else "<sep>")[0]  # type: ignore[union-attr]
        keys = {split: [ids[: ids.index(sep)] for ids in seqs] for split, seqs in as_tuples(data).items()}
    sets = {split: set(seqs) for split, seqs in keys.items()}
    assert all(len(sets[split]) == len(keys[split]) for split in SPLITS), "duplicates inside a split"
    for a, b in itertools.combinations(SPLITS, 2):
        assert not sets[a] & sets[b], f"{a} and {b} overlap"


def test_test_split_does_not_depend_on_train_size() -> None:
    small, large = load("arithmetic", num_train=100), load("arithmetic", num_train=300)
    assert as_tuples(small)["test"] == as_tuples(large)["test"]


#: sha256 (first 16 hex digits) of every tensor of the ``tiny`` preset, seed 0, in split order. A change means the
#: generated data changed: bump the task's generator version (the cache key) and update these.
GOLDEN = {"listops": "77f4efd013e3a128", "arithmetic": "cfcb82e37cf46eb7", "lis": "05b4f09494ab6213",
          "edit_distance": "7c84eab6c2b31c14"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_generated_data_is_pinned(name: str) -> None:
    digest = hashlib.sha256()
    for _, example in all_examples(load(name)):
        for key in sorted(example):
            digest.update(key.encode())
            digest.update(example[key].numpy().tobytes())
    assert digest.hexdigest()[:16] == GOLDEN[name]


@pytest.mark.parametrize("name", DP_TASKS)
def test_docstring_examples_are_generated_ones(name: str) -> None:
    """The module docstring shows the first test example of ``tiny`` (seed 0) in both formats."""
    for fmt in ("cot", "direct"):
        task = get_task(name, preset="tiny", format=fmt, cache=False)
        text = task.vocab.decode(task.load(0).splits["test"][0]["ids"].tolist(), skip_special=False)
        assert f"{fmt}:" in sys.modules[type(task).__module__].__doc__
        assert text in sys.modules[type(task).__module__].__doc__


# ------------------------------------------------------------------------------------------------------------
# ListOps


def _lra_tuple_parse(tokens: list[int], pos: int = 0) -> tuple[list[int], int]:
    """Parse LRA's binary nesting ``T := ( T T ) | atom``; returns the flattened atoms and the next position."""
    if tokens[pos] == listops.LPAREN_ID:
        left, pos = _lra_tuple_parse(tokens, pos + 1)
        right, pos = _lra_tuple_parse(tokens, pos)
        assert tokens[pos] == listops.RPAREN_ID
        return left + right, pos + 1
    assert tokens[pos] != listops.RPAREN_ID
    return [tokens[pos]], pos + 1


@pytest.mark.parametrize("text, value", [
    ("[MED 1 2 3 4 ]", 2),                      # numpy median 2.5 -> 2: not one of the middle values' max
    ("[MED 3 8 ]", 5),                          # floor((3 + 8) / 2)
    ("[MED 9 0 5 ]", 5),
    ("[SM 9 9 7 ]", 5),
    ("[MAX 2 9 [MIN 4 7 ] 0 ]", 9),
    ("[MIN [SM 5 6 ] [MED 7 1 ] 3 ]", 1),
    ("( ( ( [MAX 2 ) 9 ) ] )", 9),              # the LRA parenthesised form
    ("7", 7),
])
def test_listops_evaluator_known_values(text: str, value: int) -> None:
    assert listops.evaluate(listops.VOCAB.encode(text)) == value


@pytest.mark.parametrize("text", ["[MAX 1 2", "[MAX ] 1", "1 2", "]", "[SM 1 ] 3"])
def test_listops_evaluator_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        listops.evaluate(listops.VOCAB.encode(text))


@pytest.mark.parametrize("fmt", ["brackets", "lra"])
def test_listops_labels_match_evaluator(fmt: str) -> None:
    data = load("listops", format=fmt, num_train=400)
    options = data.info["options"]
    for _, example in all_examples(data):
        ids = example["ids"].tolist()
        assert int(example["label"]) == listops.evaluate(ids)
        tree = [t for t in ids if t not in (listops.LPAREN_ID, listops.RPAREN_ID)]
        assert options["min_length"] < len(tree) < options["max_length"]
        if fmt == "brackets":
            assert tree == ids
    labels = [int(ex["label"]) for _, ex in all_examples(data)]
    assert len(set(labels)) == 10


def test_listops_lra_form_nests_the_bracket_form() -> None:
    brackets, lra = load("listops"), load("listops", format="lra")
    for split in SPLITS:
        for a, b in zip(brackets.splits[split], lra.splits[split], strict=True):
            flat, end = _lra_tuple_parse(b["ids"].tolist())
            assert end == b["ids"].numel() and flat == a["ids"].tolist()
            assert int(a["label"]) == int(b["label"])


def test_listops_sampler_respects_depth_and_arity() -> None:
    for seed in range(300):
        tree = listops.sample_tree(random.Random(seed), max_depth=3, max_args=3, max_length=10**6)
        assert tree is not None
        args: list[int] = []  # argument counts of the open operators
        deepest = 0
        for token in tree[0]:
            if token == listops.CLOSE_ID:
                assert 2 <= args.pop() <= 3
                continue
            if args:
                args[-1] += 1
            if token in listops.OPERATOR_IDS:
                args.append(0)
                deepest = max(deepest, len(args))
        assert not args and deepest <= 2  # depth 3 (= max_depth) holds digits only
        assert tree[1] == len(tree[0])


def test_listops_vectorised_sampler_matches_the_recursive_reference() -> None:
    """Same distribution: acceptance rate, mean length and label frequencies agree within 4 standard errors."""
    depth, arity, low, high, roots = 5, 5, 3, 80, 40_000
    fast = [t for t in listops.sample_forest(np.random.default_rng(0), roots, depth, arity, low, high) if t]
    rng = random.Random(0)
    slow = [t for t in (listops.sample_tree(rng, depth, arity, high) for _ in range(roots)) if t and t[1] > low]
    for trees in (fast, slow):  # every kept tree is valid and correctly labelled
        assert all(listops.evaluate(list(b)) == trees[i][-1] for i, (b, *_) in enumerate(trees[:500]))
    rate_fast, rate_slow = len(fast) / roots, len(slow) / roots
    assert abs(rate_fast - rate_slow) < 4 * np.sqrt(2 * rate_slow * (1 - rate_slow) / roots)
    len_fast, len_slow = np.array([len(t[0]) for t in fast]), np.array([t[1] for t in slow])
    assert abs(len_fast.mean() - len_slow.mean()) < 4 * np.sqrt(len_fast.var() / len(fast) + len_slow.var() / len(slow))
    freq_fast = np.bincount([t[1] for t in fast], minlength=10) / len(fast)
    freq_slow = np.bincount([t[2] for t in slow], minlength=10) / len(slow)
    se = np.sqrt(freq_slow * (1 - freq_slow) * (1 / len(fast) + 1 / len(slow)))
    assert (np.abs(freq_fast - freq_slow) < 4 * se + 1e-9).all()


@pytest.mark.parametrize("options, message", [
    ({"preset": "huge"}, "unknown preset"),
    ({"min_length": 50, "max_length": 51}, "no length"),
    ({"max_depth": 1}, "max_depth"),
    ({"max_args": 1}, "max_args"),
    ({"format": "parens"}, "format"),
    ({"num_train": 0}, "num_train"),
    ({"num_test": True}, "num_test"),
    ({"max_depth": 2, "max_args": 3, "min_length": 5}, "at most 5 tokens"),
])
def test_listops_options_are_validated(options: dict[str, Any], message: str) -> None:
    options.setdefault("preset", "tiny")
    with pytest.raises(ValueError, match=message):
        get_task("listops", **options)


def test_listops_trains_with_a_classifier() -> None:
    torch.manual_seed(0)
    data = load("listops")
    config = ModelConfig(kind="classifier", vocab_size=data.vocab_size, width=64, num_heads=2, time_dim=32,
                         layers_per_block=2, num_classes=10, pooling="masked_mean", dropout=0.0,
                         max_length=data.max_length)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(iter(DataLoader(data.splits["train"], batch_size=16, collate_fn=collate)))
    assert batch["ids"].shape[0] == 16 and batch["label"].shape == (16,)
    losses = []
    for _ in range(6):
        loss = torch.nn.functional.cross_entropy(model(batch["ids"]), batch["label"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]


# ------------------------------------------------------------------------------------------------------------
# DP tasks: layout of every example


@pytest.mark.parametrize("fmt", ["cot", "direct"])
@pytest.mark.parametrize("name", DP_TASKS)
def test_dp_example_layout(name: str, fmt: str) -> None:
    data = load(name, format=fmt)
    sep = data.tokenizer.encode("=" if name == "arithmetic" else "<sep>")[0]  # type: ignore[union-attr]
    for _, example in all_examples(data):
        ids, loss_mask, answer_mask = (example[k] for k in ("ids", "loss_mask", "answer_mask"))
        assert loss_mask.dtype == answer_mask.dtype == torch.bool
        assert ids.shape == loss_mask.shape == answer_mask.shape
        ids_list = ids.tolist()
        assert ids_list[0] == BOS_ID and ids_list[-1] == EOS_ID and EOS_ID not in ids_list[1:-1]
        first = ids_list.index(sep)
        assert loss_mask.tolist() == [i > first for i in range(len(ids_list))]
        # The answer is the single token before EOS, and it is trained.
        assert answer_mask.nonzero().flatten().tolist() == [len(ids_list) - 2]
        if fmt == "direct":
            assert first == len(ids_list) - 3


# ------------------------------------------------------------------------------------------------------------
# Arithmetic: recursive-descent oracle over the printed tokens


class _ArithmeticParser:
    """``expr := term (+|- term)*; term := factor (*|/ factor)*; factor := number | ( expr )`` over Z_p."""

    def __init__(self, tokens: Sequence[str], p: int) -> None:
        self.tokens, self.p, self.pos = list(tokens), p, 0

    def parse(self) -> int:
        value = self.expr()
        assert self.pos == len(self.tokens), f"trailing tokens in {self.tokens}"
        return value

    def _peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self) -> int:
        value = self.term()
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.term()
            value = (value + right if op == "+" else value - right) % self.p
        return value

    def term(self) -> int:
        value = self.factor()
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            right = self.factor()
            if op == "/":
                assert right != 0, "division by zero"
                right = pow(right, -1, self.p)
            value = value * right % self.p
        return value

    def factor(self) -> int:
        token = self._peek()
        self.pos += 1
        if token == "(":
            value = self.expr()
            assert self._peek() == ")"
            self.pos += 1
            return value
        assert token is not None and token.isdigit(), f"unexpected {token!r}"
        return int(token) % self.p


def _collapses_one_step(prev: list[str], nxt: list[str], p: int) -> bool:
    """Whether ``nxt`` is ``prev`` with one ``a op b`` or ``( a op b )`` replaced by its value."""
    for start in range(len(prev)):
        for width in (3, 5):
            window = prev[start:start + width]
            if len(window) < width:
                continue
            inner = window[1:-1] if width == 5 else window
            if width == 5 and (window[0], window[-1]) != ("(", ")"):
                continue
            if not (inner[0].isdigit() and inner[1] in "+-*/" and inner[2].isdigit()):
                continue
            if inner[1] == "/" and int(inner[2]) == 0:
                continue
            value = _ArithmeticParser(inner, p).parse()
            if [*prev[:start], str(value), *prev[start + width:]] == nxt:
                return True
    return False


@pytest.mark.parametrize("p", [11, 7])
def test_arithmetic_answers_and_steps_match_the_oracle(p: int) -> None:
    task = get_task("arithmetic", preset="tiny", p=p, num_operators=4, cache=False)
    data = task.load(3)
    for _, example in all_examples(data):
        text = task.vocab.decode(example["ids"].tolist()).split()
        segments = [list(g) for is_eq, g in itertools.groupby(text, lambda t: t == "=") if not is_eq]
        assert len(segments) == 5  # the prompt, 3 intermediate expressions, the answer
        answer = int(segments[-1][0])
        for k, segment in enumerate(segments):
            assert sum(t in "+-*/" for t in segment) == 4 - k
            assert _ArithmeticParser(segment, p).parse() == answer
        for prev, nxt in itertools.pairwise(segments):
            assert _collapses_one_step(prev, nxt, p), f"{prev} -> {nxt}"


def test_arithmetic_direct_answer_matches_parser() -> None:
    task = get_task("arithmetic", preset="tiny", format="direct", num_operators=5, cache=False)
    for _, example in all_examples(task.load(0)):
        text = task.vocab.decode(example["ids"].tolist()).split()
        prompt, answer = text[: text.index("=")], int(text[-1])
        assert _ArithmeticParser(prompt, 11).parse() == answer


def test_arithmetic_options_are_validated() -> None:
    with pytest.raises(ValueError, match="prime"):
        get_task("arithmetic", p=12)
    with pytest.raises(ValueError, match="num_operators"):
        get_task("arithmetic", num_operators=0)
    with pytest.raises(ValueError, match="format"):
        get_task("arithmetic", format="chain")
    with pytest.raises(ValueError, match="distinct"):  # 1 operator mod 2: fewer than 200 distinct prompts
        get_task("arithmetic", preset="tiny", p=2, num_operators=1, cache=False).load()


# ------------------------------------------------------------------------------------------------------------
# LIS: brute force over all subsequences


def _brute_force_lis_ending(values: Sequence[int]) -> list[int]:
    best = [0] * len(values)
    for r in range(1, len(values) + 1):
        for subset in itertools.combinations(range(len(values)), r):
            if all(values[a] < values[b] for a, b in itertools.pairwise(subset)):
                best[subset[-1]] = max(best[subset[-1]], r)
    return best


def test_lis_answers_and_dp_match_brute_force() -> None:
    task = get_task("lis", preset="tiny", cache=False)
    n = task.options["n"]
    for _, example in all_examples(task.load(0)):
        numbers = task.vocab.decode(example["ids"].tolist()).split()
        values = [int(t) for t in numbers[:n]]
        assert numbers[n] == "<sep>" and numbers[2 * n + 1] == "<sep>" and len(numbers) == 2 * n + 3
        assert all(n + 1 <= v < task.options["number_range"] for v in values)
        dp = [int(t) for t in numbers[n + 1:2 * n + 1]]
        assert dp == _brute_force_lis_ending(values)
        assert int(numbers[-1]) == max(dp)
    with pytest.raises(ValueError, match="number_range"):
        get_task("lis", n=20, number_range=30)


def test_lis_planted_runs_make_long_answers_common() -> None:
    task = get_task("lis", preset="tiny", n=30, num_train=300, cache=False)
    answers = [int(task.vocab.decode([int(ex["ids"][-2])])) for ex in task.load(0).splits["train"]]
    assert max(answers) >= 20 and min(answers) >= 3


# ------------------------------------------------------------------------------------------------------------
# Edit distance: Dijkstra on the edit graph


def _dijkstra_table(s1: str, s2: str, insert: int, delete: int, substitute: int) -> list[list[int]]:
    dist = {(0, 0): 0}
    heap = [(0, 0, 0)]
    done: set[tuple[int, int]] = set()
    while heap:
        d, i, j = heapq.heappop(heap)
        if (i, j) in done:
            continue
        done.add((i, j))
        moves = []
        if i < len(s1):
            moves.append((i + 1, j, delete))
        if j < len(s2):
            moves.append((i, j + 1, insert))
        if i < len(s1) and j < len(s2):
            moves.append((i + 1, j + 1, 0 if s1[i] == s2[j] else substitute))
        for a, b, cost in moves:
            if d + cost < dist.get((a, b), 1 << 30):
                dist[a, b] = d + cost
                heapq.heappush(heap, (d + cost, a, b))
    return [[dist[i, j] for j in range(len(s2) + 1)] for i in range(len(s1) + 1)]


@pytest.mark.parametrize("costs", [(2, 2, 3), (1, 3, 2)])
def test_edit_distance_table_and_answer_match_dijkstra(costs: tuple[int, int, int]) -> None:
    ins, dele, sub = costs
    task = get_task("edit_distance", preset="tiny", n=5, insert_cost=ins, delete_cost=dele, substitute_cost=sub,
                    cache=False)
    low, high = task.length_range
    for _, example in all_examples(task.load(0)):
        tokens = task.vocab.decode(example["ids"].tolist()).split()
        first_sep = tokens.index("<sep>")
        bar = tokens.index("|")
        s1, s2 = "".join(tokens[:bar]), "".join(tokens[bar + 1:first_sep])
        assert low <= len(s1) <= len(s2) <= high
        rows = " ".join(tokens[first_sep + 1:-2]).split(",")
        assert rows[-1].strip() == "" and tokens[-2] == "<sep>"
        table = [[int(v) for v in row.split()] for row in rows[:-1]]
        expected = _dijkstra_table(s1, s2, ins, dele, sub)
        assert table == [row[1:] for row in expected[1:]]
        assert int(tokens[-1]) == expected[-1][-1]
        assert max(max(row) for row in table) <= task.max_value


def test_edit_distance_options_are_validated() -> None:
    with pytest.raises(ValueError, match="alphabet_max"):
        get_task("edit_distance", alphabet_min=5, alphabet_max=4)
    with pytest.raises(ValueError, match="random_fraction"):
        get_task("edit_distance", random_fraction=1.5)
    with pytest.raises(ValueError, match="substitute_cost"):
        get_task("edit_distance", substitute_cost=0)


# ------------------------------------------------------------------------------------------------------------
# DP tasks train end to end with a causal decoder; the metric helper


@pytest.mark.parametrize("name", DP_TASKS)
def test_dp_task_trains_with_a_decoder(name: str) -> None:
    torch.manual_seed(0)
    data = load(name)
    config = ModelConfig(kind="decoder", vocab_size=data.vocab_size, width=64, num_heads=2, time_dim=32,
                         layers_per_block=2, dropout=0.0, max_length=data.max_length)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch = next(iter(DataLoader(data.splits["train"], batch_size=16, collate_fn=collate)))
    ids, loss_mask = batch["ids"], batch["loss_mask"]
    assert ids.shape == loss_mask.shape == batch["answer_mask"].shape
    losses = []
    for _ in range(6):
        logits = model(ids[:, :-1])
        assert logits.shape == (*ids[:, :-1].shape, data.vocab_size)
        loss = next_token_loss(logits, ids, loss_mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    score = teacher_forced_exact_match(logits.detach(), ids, batch["answer_mask"])
    assert score.shape == (16,) and ((score == 0) | (score == 1)).all()


def test_teacher_forced_exact_match_on_perfect_and_wrong_logits() -> None:
    data = load("arithmetic")
    batch = collate([data.splits["test"][i] for i in range(4)])
    ids = batch["ids"]
    perfect = torch.nn.functional.one_hot(ids[:, 1:], data.vocab_size).float()
    assert teacher_forced_exact_match(perfect, ids, batch["answer_mask"]).tolist() == [1.0] * 4
    assert teacher_forced_exact_match(perfect, ids, batch["loss_mask"]).tolist() == [1.0] * 4
    wrong = perfect.clone()
    wrong[0, :, :] = 0.0
    wrong[0, :, 3] = 1.0  # predicts "+" everywhere in example 0
    assert teacher_forced_exact_match(wrong, ids, batch["answer_mask"]).tolist() == [0.0, 1.0, 1.0, 1.0]
    assert next_token_loss(perfect * 100, ids, batch["loss_mask"]).item() < 1e-6


# ------------------------------------------------------------------------------------------------------------
# Cache


def test_pack_unpack_round_trip() -> None:
    splits = {"train": {"ids": [b"\x01\x02", b"\x03"], "label": [3, 9]},
              "test": {"ids": [[1, 70_000], [5]], "mask": [[True, False], [True]]}}
    out = _cache.unpack(_cache.pack(splits))
    assert [ex["ids"].tolist() for ex in out["train"]] == [[1, 2], [3]]
    assert [int(ex["label"]) for ex in out["train"]] == [3, 9]
    assert [ex["ids"].tolist() for ex in out["test"]] == [[1, 70_000], [5]]
    assert out["test"][0]["mask"].dtype == torch.bool and out["test"][0]["ids"].dtype == torch.long


def _same(a: TaskData, b: TaskData) -> bool:
    return all(as_tuples(a, key) == as_tuples(b, key) for key in a.splits["train"][0])


@pytest.mark.parametrize("name", ["listops", "edit_distance"])
def test_cache_round_trip_and_key(name: str, _data_root: Path) -> None:
    first = load(name, seed=7, cache=True)
    path = Path(first.info["cache_path"])
    assert not first.info["cache_hit"] and path.is_file() and path.parent == _data_root / "generated"
    second = load(name, seed=7, cache=True)
    assert second.info["cache_hit"] and _same(first, second)
    # Every option and the seed are in the key.
    assert load(name, seed=8, cache=True).info["cache_path"] != str(path)
    assert load(name, seed=7, cache=True, num_test=40).info["cache_path"] != str(path)


def test_cache_key_includes_the_generator_version(monkeypatch: pytest.MonkeyPatch) -> None:
    before = load("listops", cache=True).info["cache_path"]
    monkeypatch.setattr(listops, "GENERATOR_VERSION", listops.GENERATOR_VERSION + 1)
    assert load("listops", cache=True).info["cache_path"] != before
    lis_before = load("lis", cache=True).info["cache_path"]
    monkeypatch.setattr(TASKS["lis"], "version", 99)
    assert load("lis", cache=True).info["cache_path"] != lis_before


def _tamper_array(path: Path) -> None:
    """Rewrite the archive with one changed token but the old checksum."""
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    arrays["train/ids/values"] = arrays["train/ids/values"].copy()
    arrays["train/ids/values"][0] ^= 1
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


@pytest.mark.parametrize("damage", ["garbage", "truncate", "flip_byte", "tamper", "wrong_key"])
def test_corrupt_cache_is_detected_and_regenerated(damage: str) -> None:
    fresh = load("listops", seed=11, cache=True)
    path = Path(fresh.info["cache_path"])
    raw = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    elif damage == "truncate":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "flip_byte":
        middle = len(raw) // 2
        path.write_bytes(raw[:middle] + bytes([raw[middle] ^ 0xFF]) + raw[middle + 1:])
    elif damage == "tamper":
        _tamper_array(path)
    else:  # a valid file for another key, under this key's name
        other = Path(load("listops", seed=12, cache=True).info["cache_path"])
        path.write_bytes(other.read_bytes())
    with pytest.warns(RuntimeWarning, match="corrupt or stale"):
        again = load("listops", seed=11, cache=True)
    assert not again.info["cache_hit"] and _same(fresh, again)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load("listops", seed=11, cache=True).info["cache_hit"]  # rewritten intact
