"""Side-by-side training speed (transevolve.results.speed): a real tiny measurement, its record, the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from transevolve.results import load_suite, write_report
from transevolve.results.report import evaluate_claim, gather
from transevolve.results.speed import METRIC, measure_config, measure_task, speed_path, timed_rate
from transevolve.results_cli import app

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _suite_file(tmp_path: Path, steps: int = 6) -> str:
    data = {
        "seeds": [0],
        "models": {"transformer": {"attention": "softmax", "ff_type": "full"},
                   "evolved": {"attention": "evolved", "ff_type": "full"}},
        "comparisons": {"equal-size": {"rows": ["transformer", "evolved"]}},
        "tasks": {"max_digit": {"base": str(CONFIGS / "max_digit" / "base.yaml"), "metric": "accuracy",
                                "steps": steps, "budget": "budget-limited", "curve_steps": 8,
                                "train": {"eval_every": 2, "batch_size": 8}}},
        "claims": [{"id": "evolved-faster", "quote": "q", "source": "s", "metric": METRIC, "expect": "higher",
                    "comparisons": ["equal-size"], "tasks": ["max_digit"], "pairs": [["evolved", "transformer"]]}],
    }
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def test_timed_rate_counts_only_the_steps_after_the_warmup(tmp_path: Path) -> None:
    rows = [{"step": 1, "split": "train", "tokens": 100, "elapsed_s": 5.0},     # slow first step: not timed
            {"step": 2, "split": "train", "tokens": 100, "elapsed_s": 6.0},
            {"step": 2, "split": "validation", "accuracy": 0.5},
            {"step": 3, "split": "train", "tokens": 300, "elapsed_s": 8.0}]
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert timed_rate(metrics, warmup=1) == (400 / 3.0, [1.0, 2.0])
    with pytest.raises(RuntimeError, match="logged 3 steps"):
        timed_rate(metrics, warmup=3)
    with pytest.raises(ValueError, match="warmup must be >= 1"):
        timed_rate(metrics, warmup=0)


def test_measure_config_turns_off_evaluations_only(tmp_path: Path) -> None:
    suite = load_suite(_suite_file(tmp_path))
    config = suite.run_config(suite.cell("max_digit", "equal-size", "evolved"), 0)
    measured = measure_config(config, warmup=1, steps=2)
    assert (measured.train.eval_every, measured.train.checkpoint_every, measured.train.log_every) == (0, 0, 1)
    assert measured.model == config.model and measured.train.max_steps == config.train.max_steps  # same schedule
    with pytest.raises(ValueError, match=r"exceeds the cell.s train\.max_steps"):
        measure_config(config, warmup=3, steps=4)


def test_rows_measured_in_rounds_feed_the_speed_claim_and_the_report(tmp_path: Path) -> None:
    suite = load_suite(_suite_file(tmp_path))
    out = tmp_path / "out"
    lines: list[str] = []
    record = measure_task(suite, "max_digit", rounds=3, warmup=1, steps=2, log=lines.append)
    assert record["order"] == [["transformer", "evolved"], ["evolved", "transformer"], ["transformer", "evolved"]]
    for row in ("transformer", "evolved"):
        entry = record["rows"][row]
        assert len(entry["tokens_per_second"]) == 3 and all(v > 0 for v in entry["tokens_per_second"])
        assert all(len(seconds) == 2 for seconds in entry["step_seconds"])
    assert len(lines) == 6 and "round 3/3" in lines[-1]
    speed_path(out, "max_digit").parent.mkdir(parents=True)
    speed_path(out, "max_digit").write_text(json.dumps(record))
    rows, _ = gather(suite, out)
    evolved = rows[("max_digit", "equal-size", "evolved")]
    assert evolved.values(METRIC) == dict(enumerate(record["rows"]["evolved"]["tokens_per_second"]))
    _, checks = evaluate_claim(suite.claims[0], rows)
    assert checks[0].paired is not None and checks[0].paired.n == 3                # paired by round
    text = write_report(suite, out).read_text()
    assert "**Training speed side by side** (equal-size" in text and "| evolved | " in text
    ratio = text.split("| evolved | ")[-1].split("|")[3].strip()
    assert ratio.endswith("x") and float(ratio[:-1]) > 0
    # A record of another configuration (here: other steps) no longer counts.
    stale = load_suite(_suite_file(tmp_path, steps=8))
    rows, _ = gather(stale, out)
    assert rows[("max_digit", "equal-size", "evolved")].values(METRIC) == {}
    assert "measured with another configuration (stale)" in write_report(stale, out).read_text()


def test_measure_task_rejects_unknown_rows_and_comparisons(tmp_path: Path) -> None:
    suite = load_suite(_suite_file(tmp_path))
    with pytest.raises(ValueError, match=r"no row\(s\) \['nope'\]"):
        measure_task(suite, "max_digit", rows=["nope"])
    with pytest.raises(ValueError, match="unknown comparison 'equal-parameters'"):
        measure_task(suite, "max_digit", comparison="equal-parameters")


def test_cli_speed_writes_the_record_and_the_report(tmp_path: Path) -> None:
    out = tmp_path / "out"
    suite = _suite_file(tmp_path)
    result = CliRunner().invoke(app, ["speed", "--suite", suite, "--out", str(out), "--rounds", "1", "--warmup", "1",
                                      "--steps", "1", "--model", "transformer"])
    assert result.exit_code == 0, result.output
    assert json.loads(speed_path(out, "max_digit").read_text())["rows"].keys() == {"transformer"}
    assert "report:" in result.output and (out / "RESULTS.md").is_file()
    result = CliRunner().invoke(app, ["speed", "--suite", suite, "--out", str(out), "--task", "nope"])
    assert result.exit_code == 2 and "unknown task(s) ['nope']" in result.output
    result = CliRunner().invoke(app, ["speed", "--suite", suite, "--out", str(out), "--steps", "9"])
    assert result.exit_code == 2 and "exceeds the cell's train.max_steps" in result.output


def test_ctrl_c_during_a_measurement_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A training run that stops before its last timed step (what Ctrl-C does) ends the command with exit 130."""
    from transevolve.train import loop

    original = loop.train

    def stopped_early(config, run_dir, stop_at_step=None, **kwargs):  # type: ignore[no-untyped-def]
        return original(config, run_dir, stop_at_step=1, **kwargs)

    monkeypatch.setattr(loop, "train", stopped_early)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["speed", "--suite", _suite_file(tmp_path), "--out", str(out), "--rounds", "1",
                                      "--warmup", "1", "--steps", "1"])
    assert result.exit_code == 130 and "interrupted: nothing written for max_digit" in result.output
    assert not speed_path(out, "max_digit").exists()
