"""Generated-solution accuracy of the dynamic-programming tasks: the oracle checks of generated solutions, the
arithmetic chain rules, and the evaluation that decodes from the problem alone (never from the reference).

Everything is tiny (``tiny`` presets, width-32 models): the whole file runs in about 10 s on one CPU thread.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from transevolve import ModelConfig
from transevolve.compare import headline_metric, summary_rows
from transevolve.models import DecodeCache, DecoderModel
from transevolve.tasks import get_task
from transevolve.tasks._dp_common import DPTask
from transevolve.tasks.arithmetic import ArithmeticTask, evaluate_expression, one_step_reductions
from transevolve.tasks.base import EOS_ID, PAD_ID, ExampleDataset, GenerationCheck, TaskData
from transevolve.tasks.lis import lis_length, lis_table
from transevolve.train.config import RunConfig, TaskConfig, TrainConfig
from transevolve.train.evaluation import GENERATED_METRICS, evaluate
from transevolve.train.evaluation import headline_metric as task_headline
from transevolve.train.loop import RunResult, train

DP_TASKS = ("arithmetic", "lis", "edit_distance")
CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _data_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRANSEVOLVE_DATA", str(tmp_path_factory.mktemp("data")))
        yield


def task_and_data(name: str, **options: Any) -> tuple[DPTask, TaskData]:
    task = get_task(name, **({"preset": "tiny", "cache": False} | options))
    assert isinstance(task, DPTask)
    return task, task.load(0)


def references(task: DPTask, data: TaskData, split: str = "test") -> Iterator[tuple[list[int], list[int]]]:
    """``(prompt, reference target)`` of every example of ``split`` (the target ends with EOS)."""
    for example in data.splits[split]:
        ids = example["ids"].tolist()
        prompt = task.generation_prompt(ids)
        yield prompt, ids[len(prompt):]


def tokens(task: DPTask, text: str) -> list[int]:
    return task.vocab.encode(text)


# ------------------------------------------------------------------------------------------------------------
# The checks on hand-made and reference generations


@pytest.mark.parametrize("fmt", ["cot", "direct"])
@pytest.mark.parametrize("name", DP_TASKS)
def test_reference_solutions_are_correct_valid_and_within_the_decoding_limit(name: str, fmt: str) -> None:
    task, data = task_and_data(name, format=fmt)
    for split in ("train", "test"):
        for prompt, target in references(task, data, split):
            assert len(target) <= task.max_target_length() < task.max_new_tokens
            assert task.check_generation(prompt, target) == (True, True, True)
            assert task.check_generation(prompt, [*target, PAD_ID, PAD_ID]) == (True, True, True)
            assert task.check_generation(prompt[1:-1], target).answer_correct  # BOS and separator optional


@pytest.mark.parametrize("name", DP_TASKS)
def test_a_wrong_answer_is_wrong_and_invalid(name: str) -> None:
    task, data = task_and_data(name)
    for prompt, target in itertools.islice(references(task, data), 20):
        other = target[-2] + 1 if task.number(target[-2] + 1) is not None else target[-2] - 1
        assert task.number(other) is not None
        assert task.check_generation(prompt, [*target[:-2], other, EOS_ID]) == (False, False, True)


def _corrupt_chain(name: str, task: DPTask, prompt: list[int], target: list[int]) -> list[int]:
    """The reference with one chain-of-thought number changed (the answer kept)."""
    chain = list(target[:-2])
    if name == "arithmetic":
        # change the first number of the first intermediate expression
        position = next(i for i, t in enumerate(chain) if task.number(t) is not None)
        chain[position] = task.number_offset + (task.number(chain[position]) + 1) % task.options["p"]  # type: ignore
    else:
        chain[0] = chain[0] + 1   # dp_1 / D[1][1] + 1 is still a number token
    return [*chain, *target[-2:]]


@pytest.mark.parametrize("name", DP_TASKS)
def test_a_wrong_chain_with_the_right_answer_is_correct_but_invalid(name: str) -> None:
    task, data = task_and_data(name)
    for prompt, target in itertools.islice(references(task, data), 20):
        corrupted = _corrupt_chain(name, task, prompt, target)
        assert task.check_generation(prompt, corrupted) == (True, False, True)
        assert task.check_generation(prompt, target[-2:]) == (True, False, True)   # the answer without a chain


@pytest.mark.parametrize("fmt", ["cot", "direct"])
@pytest.mark.parametrize("name", DP_TASKS)
def test_garbage_and_unfinished_generations_are_parse_errors(name: str, fmt: str) -> None:
    task, data = task_and_data(name, format=fmt)
    prompt, target = next(references(task, data))
    error = GenerationCheck(False, False, False)
    rng = random.Random(0)
    assert task.check_generation(prompt, target[:-1]) == error                     # no EOS: unfinished
    assert task.check_generation(prompt, []) == error
    assert task.check_generation(prompt, [EOS_ID]) == error                        # nothing before EOS
    assert task.check_generation(prompt, [task.vocab[task.answer_separator], EOS_ID]) == error
    assert task.check_generation(prompt, [*target[:-2], EOS_ID]) == error          # the answer left out
    assert task.check_generation(prompt, [*target[:-1], target[-2], EOS_ID]) == error  # two numbers at the end
    for _ in range(20):
        garbage = [rng.randrange(3, task.vocab_size) for _ in range(rng.randrange(1, 30))]
        assert not task.check_generation(prompt, garbage).parsed                   # never an EOS
    # what comes after the first EOS does not count
    assert task.check_generation(prompt, [*target, *target]) == (True, True, True)
    if fmt == "direct":   # the direct format is exactly "answer EOS"
        assert task.check_generation(prompt, [task.vocab[task.answer_separator], *target]) == error


# ------------------------------------------------------------------------------------------------------------
# Oracles: computed from the prompt, independently of the generator's reference


def _brute_force_lis(values: Sequence[int]) -> int:
    return max(r for r in range(1, len(values) + 1) for subset in itertools.combinations(values, r)
               if all(a < b for a, b in itertools.pairwise(subset)))


def test_lis_oracle_is_patience_sorting_and_matches_brute_force() -> None:
    rng = random.Random(1)
    for _ in range(200):
        values = [rng.randrange(5) for _ in range(rng.randrange(1, 9))]   # repeats: strictly increasing only
        assert lis_length(values) == _brute_force_lis(values) == max(lis_table(values))
    task, _ = task_and_data("lis")
    prompt = tokens(task, "<bos> 20 10 30 11 12 <sep>")
    assert task.check_generation(prompt, tokens(task, "1 1 2 2 3 <sep> 3 <eos>")) == (True, True, True)
    assert task.check_generation(prompt, tokens(task, "1 1 2 2 2 <sep> 3 <eos>")) == (True, False, True)
    assert task.check_generation(prompt, tokens(task, "1 1 2 2 2 <sep> 2 <eos>")) == (False, False, True)


def test_edit_distance_oracle_reads_the_two_strings_of_the_prompt() -> None:
    task, _ = task_and_data("edit_distance")      # insert / delete 2, substitute 3
    prompt = tokens(task, "<bos> a b | a c c <sep>")
    # D[i][j], i over "ab", j over "acc": row a: 0 2 4, row b: 2 3 5
    assert task.check_generation(prompt, tokens(task, "0 2 4 , 2 3 5 , <sep> 5 <eos>")) == (True, True, True)
    assert task.check_generation(prompt, tokens(task, "0 2 4 , 2 3 5 <sep> 5 <eos>")) == (True, False, True)
    assert task.check_generation(prompt, tokens(task, "5 <eos>")) == (True, False, True)
    assert task.check_generation(prompt, tokens(task, "0 2 4 , 2 3 5 , <sep> 6 <eos>")) == (False, False, True)
    with pytest.raises(ValueError, match="two strings"):
        task.check_generation(tokens(task, "a b c"), tokens(task, "5 <eos>"))


def expression(text: str) -> list[int]:
    return get_task("arithmetic", preset="tiny", cache=False).vocab.encode(text)  # type: ignore[attr-defined]


@pytest.mark.parametrize("text,value", [("3 + 4 * 5", 1), ("( 3 + 4 ) * 5", 2), ("10 - 3 - 4", 3),
                                        ("10 - ( 3 - 4 )", 0), ("1 / 2", 6), ("8 / 2 / 2", 2), ("7", 7)])
def test_arithmetic_oracle_values(text: str, value: int) -> None:
    assert evaluate_expression(expression(text), 11) == value


@pytest.mark.parametrize("text", ["3 +", "( 3 + 4", "3 4", "3 / 0", "", "( )", "3 + 4 )"])
def test_arithmetic_oracle_rejects_malformed_expressions(text: str) -> None:
    with pytest.raises(ValueError):
        evaluate_expression(expression(text), 11)


# ------------------------------------------------------------------------------------------------------------
# Arithmetic chains: any legal evaluation order, never an illegal step


def arithmetic_check(prompt: str, generated: str, num_operators: int = 3) -> GenerationCheck:
    task = get_task("arithmetic", preset="tiny", num_operators=num_operators, cache=False)
    assert isinstance(task, ArithmeticTask)
    return task.check_generation(task.vocab.encode(prompt), task.vocab.encode(generated + " <eos>"))


@pytest.mark.parametrize("prompt,generated", [
    ("( 1 + 2 ) * ( 3 + 4 )", "3 * ( 3 + 4 ) = 3 * 7 = 10"),      # left group first
    ("( 1 + 2 ) * ( 3 + 4 )", "( 1 + 2 ) * 7 = 3 * 7 = 10"),      # right group first: also valid
    ("1 + 2 - 3", "1 + 10 = 0"),                                   # regrouping a + (b - c) is legal
    ("6 / 2 * 3", "3 * 3 = 9"),                                    # left to right
    ("2 * 3 + 4 * 5", "2 * 3 + 9 = 6 + 9 = 4"),                    # either product first
])
def test_arithmetic_accepts_every_legal_evaluation_order(prompt: str, generated: str) -> None:
    assert arithmetic_check(prompt, generated) == (True, True, True)


@pytest.mark.parametrize("prompt,generated,why", [
    ("1 * 3 + 4", "1 * 7 = 7", "3 + 4 before 1 * 3 breaks precedence (7 is right by coincidence)"),
    ("5 - 2 + 0", "5 - 2 = 3", "2 + 0 before 5 - 2: x - a + b is not x - (a + b)"),
    ("8 / 2 * 1", "8 / 2 = 4", "2 * 1 before 8 / 2: x / a * b is not x / (a * b)"),
    ("( 1 + 2 ) * 4", "( 3 ) * 4 = 1", "the parentheses must go with the collapsed group"),
    ("1 + 2 + 3 + 4", "6 + 4 = 10", "two operators in one step"),
    ("1 + 2 + 3 + 4", "3 + 3 + 4 = 6 + 4 = 10 = 10", "an extra step after the value"),
    ("1 + 2 + 3", "3 + 3 = = 6", "an empty expression"),
])
def test_arithmetic_rejects_illegal_steps_even_with_the_right_answer(prompt: str, generated: str, why: str) -> None:
    assert arithmetic_check(prompt, generated) == (True, False, True), why


def test_arithmetic_wrong_step_value_is_invalid() -> None:
    assert arithmetic_check("1 + 2 + 3", "4 + 3 = 6") == (True, False, True)
    assert arithmetic_check("1 + 2 + 3", "3 + 3 = 7") == (False, False, True)


@pytest.mark.parametrize("p,num_operators", [(11, 5), (7, 6), (2, 3)])
def test_every_legal_reduction_keeps_the_value(p: int, num_operators: int) -> None:
    """On generated expressions, every one-step reduction has the expression's value (so a valid chain ends at
    the true value), and the generator's own chain is one of the legal orders."""
    task, data = task_and_data("arithmetic", p=p, num_operators=num_operators, num_train=100, num_validation=20,
                               num_test=50)
    for prompt, target in references(task, data):
        question = prompt[1:-1]
        value = evaluate_expression(question, p)
        frontier = [question]
        for _ in range(num_operators):
            reduced = [r for expr in frontier for r in one_step_reductions(expr, p)]
            assert reduced and all(evaluate_expression(r, p) == value for r in reduced)
            frontier = reduced[:6]
        assert task.check_generation(prompt, target) == (True, True, True)


# ------------------------------------------------------------------------------------------------------------
# Evaluation: decoding from the problem only


class ScriptedDecoder(DecoderModel):
    """A decoder that writes ``scripts[prompt]`` after each prompt, whatever its weights say (tests the decoding,
    grouping and grading around a known generation)."""

    def __init__(self, config: ModelConfig, task: DPTask, scripts: dict[tuple[int, ...], list[int]]) -> None:
        super().__init__(config)
        self.task, self.scripts = task, scripts
        self._cache: DecodeCache | None = None
        self._history = torch.zeros(0, 0, dtype=torch.long)

    def _next_logits(self, history: torch.Tensor) -> torch.Tensor:
        logits = torch.full((history.shape[0], 1, self.config.vocab_size), -1e4)
        for row, ids in enumerate(history.tolist()):
            prompt = self.task.generation_prompt(ids)
            script, done = self.scripts[tuple(prompt)], len(ids) - len(prompt)
            logits[row, 0, script[done] if done < len(script) else PAD_ID] = 0.0
        return logits

    def forward(self, ids: torch.Tensor, return_intermediates: bool = False) -> torch.Tensor:  # type: ignore[override]
        return self._next_logits(ids).expand(-1, ids.shape[1], -1)

    def decode_step(self, ids: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        if cache is not self._cache:
            self._cache, self._history = cache, ids
        else:
            self._history = torch.cat([self._history, ids], dim=1)
        return self._next_logits(self._history)


def scripted(task: DPTask, data: TaskData, edit: Any = None) -> ScriptedDecoder:
    config = ModelConfig(kind="decoder", vocab_size=data.vocab_size, width=32, num_heads=1, time_dim=32,
                         layers_per_block=1, max_length=data.max_length)
    scripts = {}
    for split in data.splits:
        for prompt, target in references(task, data, split):
            scripts[tuple(prompt)] = edit(prompt, target) if edit else target
    return ScriptedDecoder(config, task, scripts)


@pytest.mark.parametrize("name", DP_TASKS)
def test_evaluation_grades_what_the_model_generates(name: str) -> None:
    task, data = task_and_data(name)
    metrics = evaluate(scripted(task, data), data, "test", 8, CPU)
    assert list(metrics)[:3] == list(GENERATED_METRICS) and task_headline(data) == "generated_accuracy"
    assert (metrics["generated_accuracy"], metrics["chain_valid"], metrics["parse_error"]) == (1.0, 1.0, 0.0)
    assert {"loss", "token_accuracy", "teacher_forced_exact"} <= set(metrics)
    # A right answer after a wrong chain on every other example; an unfinished generation on every third.
    order = {tuple(p): i for i, (p, _) in enumerate(references(task, data))}

    def edit(prompt: list[int], target: list[int]) -> list[int]:
        i = order.get(tuple(prompt), 0)
        if i % 3 == 0:
            return target[:-1] + [target[-2]] * task.max_new_tokens     # never stops
        return _corrupt_chain(name, task, prompt, target) if i % 2 else target

    mixed = evaluate(scripted(task, data, edit), data, "test", 8, CPU, generate_max_examples=30)
    unfinished = sum(i % 3 == 0 for i in range(30))
    corrupted = sum(i % 3 != 0 and i % 2 == 1 for i in range(30))
    assert mixed["parse_error"] == pytest.approx(unfinished / 30)
    assert mixed["generated_accuracy"] == pytest.approx((30 - unfinished) / 30)
    assert mixed["chain_valid"] == pytest.approx((30 - unfinished - corrupted) / 30)


class CopyingDecoder(DecoderModel):
    """An LIS (chain-of-thought) "model" that cannot solve anything but copies the answer out of the chain: it
    writes ``1`` for every ``dp`` entry and then ``max`` of the ``dp`` entries it was given."""

    def __init__(self, config: ModelConfig, n: int) -> None:
        super().__init__(config)
        self.n = n
        self._cache: DecodeCache | None = None
        self._history = torch.zeros(0, 0, dtype=torch.long)

    def _predict(self, context: list[int]) -> int:
        from transevolve.tasks.lis import NUMBER_OFFSET, SEP_ID

        separators = [i for i, t in enumerate(context) if t == SEP_ID]
        if len(separators) == 1:
            return SEP_ID if len(context) - separators[0] - 1 >= self.n else NUMBER_OFFSET + 1
        if len(separators) >= 2 and context[-1] == SEP_ID:
            return max(context[separators[0] + 1:separators[1]])
        return EOS_ID

    def _logits(self, rows: list[list[int]]) -> torch.Tensor:
        logits = torch.full((len(rows), self.config.vocab_size), -1e4)
        for row, context in enumerate(rows):
            logits[row, self._predict(context)] = 0.0
        return logits

    def forward(self, ids: torch.Tensor, return_intermediates: bool = False) -> torch.Tensor:  # type: ignore[override]
        rows = ids.tolist()
        return torch.stack([self._logits([r[:t + 1] for r in rows]) for t in range(ids.shape[1])], dim=1)

    def decode_step(self, ids: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        if cache is not self._cache:
            self._cache, self._history = cache, ids
        else:
            self._history = torch.cat([self._history, ids], dim=1)
        return self._logits(self._history.tolist())[:, None]


def test_copying_the_answer_out_of_the_reference_chain_scores_nothing() -> None:
    """Teacher-forced answer exact match is 1.0 for a model that copies the answer from the given chain; the
    generated-solution accuracy of the same model is 0."""
    task, data = task_and_data("lis")
    config = ModelConfig(kind="decoder", vocab_size=data.vocab_size, width=32, num_heads=1, time_dim=32,
                         layers_per_block=1, max_length=data.max_length)
    metrics = evaluate(CopyingDecoder(config, task.options["n"]), data, "test", 16, CPU)
    assert metrics["teacher_forced_exact"] == 1.0
    assert (metrics["generated_accuracy"], metrics["chain_valid"], metrics["parse_error"]) == (0.0, 0.0, 0.0)


def _with_corrupted_references(task: DPTask, data: TaskData, seed: int = 0) -> TaskData:
    """The same problems with every reference chain and answer replaced by random tokens (lengths kept)."""
    rng = random.Random(seed)
    splits = dict(data.splits)
    for split in ("validation", "test"):
        examples = []
        for example in data.splits[split]:
            ids = example["ids"].clone()
            start = len(task.generation_prompt(ids.tolist()))
            ids[start:-1] = torch.tensor([rng.randrange(3, task.vocab_size) for _ in range(len(ids) - start - 1)])
            examples.append({**example, "ids": ids})
        splits[split] = ExampleDataset(examples)
    return dataclasses.replace(data, splits=splits)


def tiny_lis_run(steps: int = 40, **options: Any) -> RunConfig:
    return RunConfig(task=TaskConfig(name="lis", options={"preset": "tiny", "cache": False} | options),
                     model={"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.0,
                            "attention": "softmax"},
                     train=TrainConfig(max_steps=steps, batch_size=16, eval_every=steps // 2, log_every=10,
                                       warmup_steps=5, learning_rate=3e-3, device="cpu"))


@pytest.fixture(scope="module")
def trained_lis(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunResult, Path]:
    """A tiny decoder trained for 40 steps on LIS (direct format: short enough to learn something quickly)."""
    torch.manual_seed(0)
    run_dir = tmp_path_factory.mktemp("runs") / "lis"
    return train(tiny_lis_run(format="direct"), run_dir, quiet=True), run_dir


def test_training_reports_generated_accuracy_first(trained_lis: tuple[RunResult, Path]) -> None:
    result, run_dir = trained_lis
    for metrics in (result.validation, result.test):
        assert list(metrics)[:3] == list(GENERATED_METRICS)
        assert all(0.0 <= metrics[k] <= 1.0 for k in GENERATED_METRICS)
        assert metrics["chain_valid"] == metrics["generated_accuracy"]        # direct format: no chain
    saved = json.loads((run_dir / "results.json").read_text())
    assert list(saved["test"])[:3] == list(GENERATED_METRICS)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all("generated_accuracy" in r for r in rows if r["split"] == "validation")


def test_generation_never_sees_the_reference(trained_lis: tuple[RunResult, Path]) -> None:
    """Corrupting every reference chain and answer changes the teacher-forced figures, not the generated ones."""
    from transevolve.checkpoint import load_model

    _, run_dir = trained_lis
    task, data = task_and_data("lis", format="direct")
    model = load_model(run_dir / "checkpoints" / "best")
    clean = evaluate(model, data, "test", 16, CPU)
    corrupted = evaluate(model, _with_corrupted_references(task, data), "test", 16, CPU)
    assert {k: corrupted[k] for k in GENERATED_METRICS} == {k: clean[k] for k in GENERATED_METRICS}
    assert corrupted["loss"] != clean["loss"]
    # the scripted perfect solver stays perfect too: the oracle reads the prompt, not the stored answer
    perfect = evaluate(scripted(task, data), _with_corrupted_references(task, data), "test", 16, CPU)
    assert perfect["generated_accuracy"] == 1.0 and perfect["teacher_forced_exact"] < 1.0


def test_eval_command_shows_generated_accuracy_first(trained_lis: tuple[RunResult, Path]) -> None:
    from transevolve.cli import app

    _, run_dir = trained_lis
    result = CliRunner().invoke(app, ["eval", str(run_dir), "--max-examples", "12", "--batch-size", "4"])
    assert result.exit_code == 0, result.output
    assert "12 examples, solved by greedy decoding" in result.stderr
    assert "generate lis/test (greedy) 12/12 examples" in result.stderr
    header = next(line for line in result.stdout.splitlines() if "generated_accuracy" in line)
    assert header.index("generated_accuracy") < header.index("chain_valid") < header.index("parse_error") \
        < header.index("token_accuracy")


def test_compare_ranks_dp_runs_by_generated_accuracy(trained_lis: tuple[RunResult, Path]) -> None:
    result, _ = trained_lis
    other = dataclasses.replace(result, test={**result.test, "generated_accuracy": 0.5, "chain_valid": 0.25})
    results = {"a": [result], "b": [other]}
    assert headline_metric("language_modeling", results) == "generated_accuracy"
    assert headline_metric("language_modeling") == "token_accuracy"
    rows = summary_rows(results, "language_modeling")
    assert list(rows[1])[3:7] == ["validation generated_accuracy", "test generated_accuracy",
                                  "test generated_accuracy std", "test chain_valid"]
    assert rows[1]["test generated_accuracy"] == 0.5 and rows[1]["test chain_valid"] == 0.25
