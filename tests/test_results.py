"""``transevolve results``: the suite file, cells (skip, resume, segments, stale records), the verdict rules and the
report, with a fake trainer (no training)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from transevolve.config import ModelConfig
from transevolve.errors import ConfigError
from transevolve.params import count_parameters
from transevolve.results import load_suite, run_suite, write_report
from transevolve.results import stats as st
from transevolve.results.cells import COMPLETE, NEEDS_BUDGET, STOPPED, cell_path, read_record
from transevolve.results.report import (
    README_MARKERS,
    _mean_cell,
    estimate_seconds,
    evaluate_claim,
    gather,
    readme_lines,
    refresh_readme,
    suggest_budget,
)
from transevolve.train.loop import RunResult

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
ACCURACY = {"transformer": 0.60, "evolved": 0.70, "random": 0.50}


def _data(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "seeds": [0, 1],
        "models": {"transformer": {"attention": "softmax", "ff_type": "full"},
                   "evolved": {"attention": "evolved", "ff_type": "full"},
                   "random": {"attention": "evolved", "ff_type": "random"}},
        "comparisons": {
            "equal-size": {"rows": ["transformer", "evolved", "random"]},
            "equal-parameters": {"rows": ["transformer", "random"], "match_parameters": True,
                                 "reference": "transformer", "tolerance": 0.05}},
        "tasks": {"max_digit": {"base": str(CONFIGS / "max_digit" / "base.yaml"), "metric": "accuracy", "steps": 6,
                                "budget": "budget-limited", "curve_steps": 8, "train": {"eval_every": 2}}},
        "claims": [
            {"id": "evolved-better", "quote": "q", "source": "s", "metric": "headline", "expect": "higher",
             "comparisons": ["equal-size"], "tasks": ["max_digit"], "pairs": [["evolved", "transformer"]]},
            {"id": "evolved-far-fewer", "quote": "q", "source": "s", "metric": "parameters", "expect": "lower",
             "relative_margin": 0.5, "comparisons": ["equal-size"], "tasks": ["max_digit"],
             "pairs": [["evolved", "transformer"]]}],
    }
    data.update(changes)
    return data


def _write(tmp_path: Path, data: dict[str, Any]) -> str:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


class _FakeTrainer:
    """Stands in for ``train``: writes what a run directory holds (trainer state, validation curve) and returns a
    result whose accuracy depends on the row and the seed. ``interrupt_call``: that call stops half-way (Ctrl-C)."""

    def __init__(self, interrupt_call: int | None = None) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.interrupt_call = interrupt_call

    def __call__(self, config, run_dir, quiet=False, resume=False, data=None, stop_at_step=None):
        run_dir = Path(run_dir)
        self.calls.append((config.model["name"], config.model["width"], config.train.seed, resume, stop_at_step))
        ctrl_c = len(self.calls) == self.interrupt_call
        steps = config.train.max_steps // 2 if ctrl_c else (stop_at_step or config.train.max_steps)
        state = run_dir / "checkpoints" / "last"
        state.mkdir(parents=True, exist_ok=True)
        (state / "trainer_state.json").write_text(json.dumps({"step": steps, "tokens_seen": 100 * steps,
                                                             "window_tokens": 0, "best_step": steps}))
        accuracy = ACCURACY[config.model["name"]] + 0.01 * config.train.seed
        with (run_dir / "metrics.jsonl").open("a") as handle:
            for step in range(2, steps + 1, 2):
                handle.write(json.dumps({"step": step, "split": "validation", "accuracy": accuracy * step / steps,
                                         "loss": 1.0 / step}) + "\n")
        model = ModelConfig(kind="classifier", vocab_size=12, num_classes=10, **config.model)
        return RunResult(run_dir, model, count_parameters(model).total, steps, 2.0, 100.0, {"accuracy": accuracy},
                         {"accuracy": accuracy}, interrupted=ctrl_c or stop_at_step is not None)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> _FakeTrainer:
    trainer = _FakeTrainer()
    data = SimpleNamespace(kind="classification", splits={"train": SimpleNamespace(lengths=[10, 12])})
    monkeypatch.setattr("transevolve.train.loop.train", trainer)
    monkeypatch.setattr("transevolve.results.cells.load_task_data", lambda config: data)
    monkeypatch.setattr("transevolve.results.cells.measure_inference", lambda directory, data, config: {
        "tokens_per_second": 1000.0, "median_seconds": 0.01, "repeats": 5, "batch_examples": 2, "batch_tokens": 10,
        "device": "cpu"})
    monkeypatch.setattr("transevolve.results.cells.git_state", lambda: {"commit": "abc", "dirty": False})
    return trainer


# -- the suite file ----------------------------------------------------------------------------------------------
def test_packaged_suites_parse_and_match_parameters() -> None:
    for name in ("results/suite.yaml", "results/quick.yaml"):
        suite = load_suite(name)
        for task in suite.tasks:
            for comparison in suite.comparisons.values():
                widths = {row: suite.widths[(task, comparison.name, row)]
                          for row in suite.rows(task, comparison.name)}
                counts = {row: suite.parameters[(task, row, w)] for row, w in widths.items()}
                if comparison.match_parameters:
                    reference = counts[comparison.reference]
                    assert all(abs(c / reference - 1) <= comparison.tolerance for c in counts.values()), (task, counts)
                else:
                    assert len(set(widths.values())) == 1
    full = load_suite("results/suite.yaml")
    assert set(full.tasks) == {"listops", "text_food", "fashion_mnist", "translate_de"}
    assert full.seeds == (0, 1, 2) and len(full.claims) >= 8
    quick = load_suite("results/quick.yaml")
    assert quick.seeds == (0,) and all(spec.steps for spec in quick.tasks.values())
    assert quick.tasks["translate_de"].base["train"]["beam_size"] == 4          # inherited from suite.yaml
    # Rows whose parameters already match keep the task's width: one run serves both comparisons.
    assert full.cell("listops", "equal-parameters", "transformer-parallel") == \
        full.cell("listops", "equal-size", "transformer-parallel")
    assert full.cell("listops", "equal-parameters", "transevolve-randomFF-1x4").matched


def test_cells_configs_and_names(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, _data()))
    cells = suite.cells("max_digit")
    assert [c.name for c in cells][:3] == ["transformer", "evolved", "random"]
    matched = suite.cell("max_digit", "equal-parameters", "random")
    assert matched.matched and matched.name == f"random@w{matched.width}" and matched.width > 32
    run = suite.run_config(matched, seed=1)
    assert (run.model["width"], run.model["time_dim"], run.train.seed, run.train.max_steps) == \
        (matched.width, matched.width, 1, 6)                                  # max_digit: one head
    assert suite.run_config(suite.curve_cell("max_digit"), 0).train.max_steps == 8
    assert len(load_suite(_write(tmp_path, _data()), only_models=["transformer"]).cells("max_digit")) == 1
    # --comparison equal-size: the matched-width cells of equal-parameters wait; an unknown name is refused.
    assert load_suite(_write(tmp_path, _data()), only_comparisons=["equal-size"]).cells("max_digit") == cells[:3]
    assert [c.name for c in load_suite(_write(tmp_path, _data()), only_comparisons=["equal-parameters"]).cells(
        "max_digit")] == ["transformer", matched.name]
    with pytest.raises(ConfigError, match=r"unknown comparison\(s\) \['equal-width'\]"):
        load_suite(_write(tmp_path, _data()), only_comparisons=["equal-width"])
    # A task may train only some rows: the other rows have no cells there and the claims must not need them.
    data = _edit(_data(), "tasks.max_digit.rows", ["transformer", "evolved"])
    suite = load_suite(_write(tmp_path, data))
    assert [c.name for c in suite.cells("max_digit")] == ["transformer", "evolved"]
    assert suite.rows("max_digit", "equal-parameters") == ("transformer",)


def _edit(data: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    node[keys[-1]] = value
    return data


@pytest.mark.parametrize(("path", "value", "message"), [
    ("colour", 1, "unknown keys"),
    ("seeds", [], "seeds must be a non-empty list"),
    ("tasks.max_digit.steps", "TODO", "must both be TODO"),
    ("tasks.max_digit.steps", -3, "positive integer or TODO"),
    ("tasks.max_digit.budget", "done", "budget must be one of"),
    ("tasks.max_digit.models", {"nope": {}}, "not in models"),
    ("comparisons.equal-size.rows", ["transformer", "nope"], "not in models"),
    ("comparisons.equal-parameters.reference", "evolved", "reference"),
    ("models.evolved", {"attention": "evolved", "layers_per_block": 3}, "compares equal width and depth"),
    ("models.evolved", {"attention": "evolved", "num_heads": 3}, "row evolved"),
    ("comparisons.equal-parameters.tolerance", 1e-6, "no width matches"),
    ("claims.0.expect", "better", "expect must be one of"),
    ("claims.0.expect", "comparable", "needs a margin"),
    ("claims.0.pairs", [["evolved", "nope"]], "not in models"),
    ("claims.0.tasks", ["listops"], "tasks must list some of"),
    ("claims.1.margin", 3, "not both"),
    ("tasks.max_digit.rows", ["evolved", "random"], "leaves out transformer"),
    ("tasks.max_digit.rows", ["transformer", "random"], "does not train them"),
    ("tasks.max_digit.rows", ["transformer", "nope"], "not in models"),
])
def test_bad_suite_files_say_what_is_wrong(tmp_path: Path, path: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_suite(_write(tmp_path, _edit(_data(), path, value)))


def test_unknown_selection_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown task"):
        load_suite(_write(tmp_path, _data()), only_tasks=["listops"])


# -- running cells -----------------------------------------------------------------------------------------------
def test_run_writes_records_skips_finished_cells_and_resumes(tmp_path: Path, fake: _FakeTrainer) -> None:
    suite = load_suite(_write(tmp_path, _data()))
    out = tmp_path / "out"
    fake.interrupt_call = 3
    assert run_suite(suite, out, log=lambda line: None) == STOPPED                 # the third cell: Ctrl-C
    assert len(list((out / "cells").rglob("seed-*.json"))) == 2
    fake.interrupt_call = None
    fake.calls.clear()
    assert run_suite(suite, out, log=lambda line: None) == COMPLETE
    matched = suite.cell("max_digit", "equal-parameters", "random")
    # Resumed: the interrupted cell continues (resume=True), the finished ones are not trained again.
    assert fake.calls[0] == ("random", 32, 0, True, None)
    assert [c[:3] for c in fake.calls[1:]] == [("random", matched.width, 0)] + [
        (row, 32, 1) for row in ("transformer", "evolved", "random")] + [("random", matched.width, 1)]
    record = read_record(cell_path(out, matched, 1))
    assert record is not None
    for key in ("config", "git", "steps", "tokens", "wall_seconds", "parameters", "flops_per_token", "validation",
                "test", "train_tokens_per_second", "inference_tokens_per_second", "learning_curve", "machine"):
        assert key in record, key
    assert record["git"] == {"commit": "abc", "dirty": False} and record["tokens"] == 600
    assert record["training_flops"] == pytest.approx(3 * record["flops_per_token"] * 600)
    assert record["learning_curve"]["step"] == [2, 4, 6] and record["learning_curve"]["metric"] == "accuracy"
    assert (out / "runs" / ".gitignore").read_text().strip().endswith("*")
    fake.calls.clear()
    assert run_suite(suite, out, log=lambda line: None) == COMPLETE and fake.calls == []


def test_max_hours_splits_cells_into_segments_and_starts_nothing_after(tmp_path: Path, fake: _FakeTrainer) -> None:
    suite = load_suite(_write(tmp_path, _data(seeds=[0])), only_models=["transformer"])
    assert run_suite(suite, tmp_path / "none", log=lambda line: None, max_hours=0) == STOPPED
    assert fake.calls == []
    assert run_suite(suite, tmp_path / "out", log=lambda line: None, max_hours=1) == COMPLETE
    assert [(c[3], c[4]) for c in fake.calls] == [(False, 2), (True, 4), (True, None)]    # eval_every 2, 6 steps


def test_changed_configuration_marks_records_stale(tmp_path: Path, fake: _FakeTrainer) -> None:
    out = tmp_path / "out"
    run_suite(load_suite(_write(tmp_path, _data(seeds=[0]))), out, log=lambda line: None)
    fake.calls.clear()
    logged: list[str] = []
    changed = load_suite(_write(tmp_path, _edit(_data(seeds=[0]), "tasks.max_digit.steps", 8)))
    assert run_suite(changed, out, log=logged.append) == COMPLETE
    assert fake.calls == [] and any("train.max_steps" in line for line in logged)
    rows, _ = gather(changed, out)
    assert rows[("max_digit", "equal-size", "transformer")].stale == 1
    assert not rows[("max_digit", "equal-size", "transformer")].records


def test_budget_todo_runs_the_learning_curve_first(tmp_path: Path, fake: _FakeTrainer) -> None:
    data = _edit(_edit(_data(), "tasks.max_digit.steps", "TODO"), "tasks.max_digit.budget", "TODO")
    suite = load_suite(_write(tmp_path, data))
    assert run_suite(suite, tmp_path / "out", log=lambda line: None) == NEEDS_BUDGET
    assert [c[:3] for c in fake.calls] == [("transformer", 32, 0)]
    assert (tmp_path / "out" / "cells" / "max_digit" / "transformer@curve" / "seed-0.json").is_file()
    report = write_report(suite, tmp_path / "out").read_text()
    assert "| max_digit | accuracy | TODO | TODO | converged at step" in report or "budget-limited at step" in report


# -- statistics and verdicts -------------------------------------------------------------------------------------
def test_paired_statistics() -> None:
    pair = st.paired({0: 0.9, 1: 0.8, 2: 0.7, 3: 0.5}, {0: 0.8, 1: 0.6, 2: 0.6})
    assert pair is not None and pair.seeds == (0, 1, 2) and pair.differences == pytest.approx((0.1, 0.2, 0.1))
    assert pair.mean == pytest.approx(0.4 / 3) and pair.std == pytest.approx(0.057735, rel=1e-4)
    assert pair.t == pytest.approx(pair.mean / (pair.std / 3 ** 0.5)) and pair.sign_consistent
    assert st.paired({0: 1.0}, {1: 1.0}) is None


@pytest.mark.parametrize(("a", "b", "expect", "margin", "verdict"), [
    ([0.8, 0.82, 0.81], [0.7, 0.71, 0.72], "higher", 0.0, st.HELD),           # d = 0.1, se small
    ([0.7, 0.71, 0.72], [0.8, 0.82, 0.81], "higher", 0.0, st.NOT_HELD),       # opposite direction beyond 2 se
    ([0.8, 0.6, 0.75], [0.7, 0.71, 0.72], "higher", 0.0, st.CANNOT_TELL),     # within the seed spread
    ([0.8], [0.7], "higher", 0.0, st.CANNOT_TELL),                            # one seed
    ([0.7, 0.7, 0.7], [0.7, 0.7, 0.7], "higher", 0.0, st.NOT_HELD),           # identical: not better
    ([0.7, 0.71], [0.8, 0.82], "higher", 0.0, st.CANNOT_TELL),                # two seeds: no verdict yet
    ([0.7, 0.71, 0.72], [0.8, 0.82, 0.81], "lower", 0.0, st.HELD),
    ([0.70, 0.71, 0.72], [0.705, 0.71, 0.715], "comparable", 0.05, st.HELD),
    ([0.50, 0.51, 0.52], [0.70, 0.71, 0.72], "comparable", 0.05, st.NOT_HELD),
    ([0.66, 0.72, 0.64], [0.70, 0.71, 0.72], "comparable", 0.05, st.CANNOT_TELL),
])
def test_verdict_rules(a: list[float], b: list[float], expect: str, margin: float, verdict: str) -> None:
    pair = st.paired(dict(enumerate(a)), dict(enumerate(b)))
    assert st.verdict(pair, expect, margin) == verdict


def test_deterministic_metrics_need_one_seed_and_relative_margins_scale_with_b() -> None:
    pair = st.paired({0: 40.0}, {0: 100.0})
    assert pair is not None
    assert st.verdict(pair, "lower", st.margin_of(0, 0.5, pair), deterministic=True) == st.HELD      # 40 < 50
    pair = st.paired({0: 60.0}, {0: 100.0})
    assert st.verdict(pair, "lower", st.margin_of(0, 0.5, pair), deterministic=True) == st.NOT_HELD  # not half
    assert st.verdict(None, "higher") == st.NOT_RUN
    assert st.overall([st.HELD, st.HELD]) == st.HELD
    assert st.overall([st.HELD, st.NOT_RUN]) == st.CANNOT_TELL
    assert st.overall([st.HELD, st.NOT_HELD, st.CANNOT_TELL]) == st.NOT_HELD
    assert st.overall([]) == st.CANNOT_TELL


def test_budget_suggestion_rule() -> None:
    assert suggest_budget({"step": [100, 200, 300, 400], "value": [0.5, 0.795, 0.8, 0.8]}) == (200, "converged")
    assert suggest_budget({"step": [100, 200, 300, 400], "value": [0.2, 0.4, 0.6, 0.8]}) == (400, "budget-limited")
    assert suggest_budget({"step": [], "value": []}) is None


# -- the report --------------------------------------------------------------------------------------------------
def test_a_spread_is_printed_with_the_decimals_of_its_mean() -> None:
    assert _mean_cell([22.25, 21.43]) == "21.8 ± 0.6"            # BLEU: one decimal for both
    assert _mean_cell([0.367, 0.381]) == "0.374 ± 0.010"
    assert _mean_cell([1500.0, 2500.0]) == "2,000 ± 707"
    assert _mean_cell([0.5]) == "0.500" and _mean_cell([]) == "not run"


def test_report_from_records_with_missing_cells(tmp_path: Path, fake: _FakeTrainer) -> None:
    suite = load_suite(_write(tmp_path, _data(seeds=[0, 1, 2])))
    out = tmp_path / "out"
    run_suite(suite, out, log=lambda line: None)
    rows, _ = gather(suite, out)
    verdict, checks = evaluate_claim(suite.claims[0], rows)        # evolved 0.70 vs transformer 0.60, 3 seeds
    assert verdict == st.HELD and checks[0].paired is not None and checks[0].paired.n == 3
    assert evaluate_claim(suite.claims[1], rows)[0] == st.NOT_HELD   # fullFF: fewer parameters, but not half
    cell_path(out, suite.cell("max_digit", "equal-size", "evolved"), 1).unlink()
    matched = suite.cell("max_digit", "equal-parameters", "random")
    for seed in (0, 1, 2):
        cell_path(out, matched, seed).unlink()
    unrelated = f"intro\n{README_MARKERS[0]}: from results/cells -->\nold\n{README_MARKERS[1]} -->\nend\n"
    (tmp_path / "README.md").write_text(unrelated)
    write_report(suite, out, tmp_path / "RESULTS.md")
    assert (tmp_path / "README.md").read_text() == unrelated                        # a block of other records
    (tmp_path / "README.md").write_text(unrelated.replace("results/cells", "out/cells"))
    report = write_report(suite, out, tmp_path / "RESULTS.md")
    text = report.read_text()
    readme = (tmp_path / "README.md").read_text()
    assert readme.startswith("intro\n") and readme.endswith("-->\nend\n") and "\nold\n" not in readme
    assert "8 of 12 cells finished" in readme and "[`RESULTS.md`](RESULTS.md)" in readme
    assert "| transformer | 0.610 ± 0.010 |" in readme
    assert "| evolved-better | **cannot tell at this scale** |" in readme
    assert "(out/metric_vs_parameters.png)" in readme
    assert "### evolved-better: **cannot tell at this scale**" in text             # two seeds left
    assert "| random | " in text and "not run" in text
    assert "missing: no trained TransEvolve checkpoint" in text
    headline = text[text.index("## Headline"):text.index("## Status and cost")]
    assert "| row | max_digit (accuracy) |" in headline
    assert "| transformer | 0.610 ± 0.010 |" in headline and "| evolved | 0.710 ± 0.014 [2] |" in headline
    assert "| random | - @w" in headline                                           # equal-parameters: none left
    assert "| max_digit | accuracy | 6 | budget-limited |" in text and "| 8 / 12 | " in text  # cells per task
    for name in ("metric_vs_parameters.png", "metric_vs_flops.png", "metric_vs_time.png", "learning_curves.png"):
        assert (out / name).is_file() and f"(out/{name})" in text                  # links relative to the report
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cost"]["pending_cells"] == 4 and summary["cost"]["remaining_seconds"] is not None
    assert [c["verdict"] for c in summary["claims"]] == [st.CANNOT_TELL, st.NOT_HELD]


def test_readme_block_is_replaced_only_between_both_markers(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(f"a\n{README_MARKERS[0]}: note -->\nold\n{README_MARKERS[1]} -->\nb\n")
    assert refresh_readme(readme, ["new", "", "lines"])
    assert readme.read_text() == f"a\n{README_MARKERS[0]}: note -->\nnew\n\nlines\n{README_MARKERS[1]} -->\nb\n"
    for text in ("no block\n", f"{README_MARKERS[0]} -->\nonly the start\n",
                 f"{README_MARKERS[1]} -->\nreversed\n{README_MARKERS[0]} -->\n"):
        readme.write_text(text)
        assert not refresh_readme(readme, ["x"]) and readme.read_text() == text
    readme.write_text(f"{README_MARKERS[0]}: from results/cells -->\n{README_MARKERS[1]} -->\n")
    assert not refresh_readme(readme, ["x"], source="other/cells") and refresh_readme(readme, ["x"], "results/cells")


def test_readme_results_block_matches_the_committed_records() -> None:
    """The README's headline is generated: after new records, `transevolve results report` rewrites it."""
    suite = load_suite("results/suite.yaml")
    rows, curves = gather(suite, ROOT / "results")
    claims = [(claim, *evaluate_claim(claim, rows)) for claim in suite.claims]
    block = readme_lines(suite, rows, claims, estimate_seconds(suite, rows, curves), Path("RESULTS.md"),
                         Path("results"))
    lines = (ROOT / "README.md").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(README_MARKERS[0]))
    end = next(i for i, line in enumerate(lines) if line.startswith(README_MARKERS[1]))
    assert lines[start + 1:end] == block, "README.md's results block is out of date: run `transevolve results report`"


def test_report_of_an_empty_directory_says_not_run(tmp_path: Path) -> None:
    suite = load_suite(_write(tmp_path, _data()))
    text = write_report(suite, tmp_path / "empty").read_text()
    assert "0 of 8 cells finished" in text and "not run" in text
    assert "unknown" in text                                                      # nothing to estimate from
    restricted = load_suite(_write(tmp_path, _edit(_data(), "tasks.max_digit.rows", ["transformer", "evolved"])))
    text = write_report(restricted, tmp_path / "empty").read_text()
    assert "0 of 4 cells finished" in text and "| random |" not in text


def test_cli_report_needs_results(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from transevolve.results_cli import app

    result = CliRunner().invoke(app, ["report", "--out", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "no results" in result.output
    result = CliRunner().invoke(app, ["run", "--suite", _write(tmp_path, _data()), "--out", str(tmp_path / "o"),
                                      "--dry-run"])
    assert result.exit_code == 0 and "random@w" in result.output


def test_machine_summary_names_the_vector_instructions_and_any_gpu() -> None:
    from transevolve.provenance import machine_info, machine_summary

    here = machine_info()
    assert f"({here['cpu_capability']})" in machine_summary(here)
    assert machine_summary({"cpus": 2, "cpu_capability": "AVX2", "torch": "2.13.0", "torch_threads": 2}) == \
        "2 CPUs (AVX2), torch 2.13.0, 2 threads"
    assert machine_summary({"cuda": "NVIDIA H200"}) == "? CPUs (?), torch ?, ? threads, GPU NVIDIA H200"
