"""Progress output: heartbeat lines without a terminal, an 80-column bar, BLEU decoding progress, and the final
evaluation stated and bounded by the config. Time is a fake clock everywhere: nothing depends on the machine."""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from rich.console import Console

from transevolve import build_model
from transevolve.tasks import ExampleDataset, get_task
from transevolve.train import RunConfig, TaskConfig, TrainConfig, train
from transevolve.train.evaluation import evaluate, evaluated_examples
from transevolve.train.progress import Progress, fit_line, format_duration


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def plain_console(width: int = 160) -> tuple[Console, io.StringIO]:
    buffer = io.StringIO()
    return Console(file=buffer, width=width, force_terminal=False, color_system=None), buffer


def test_format_duration() -> None:
    assert format_duration(5) == "0:05"
    assert format_duration(125.4) == "2:05"
    assert format_duration(3 * 3600 + 61) == "3:01:01"
    assert format_duration(None) == "-:--" and format_duration(float("inf")) == "-:--"


def test_heartbeat_without_a_terminal_follows_the_clock_not_the_steps() -> None:
    clock, (console, buffer) = Clock(), plain_console()
    progress = Progress(total=1000, title="train", console=console, interactive=False, clock=clock)
    for step in range(1, 50):                     # many steps in little time: no line
        clock.now += 0.5
        progress.update(step)
    assert buffer.getvalue() == ""
    clock.now += 6.0                              # 30.5 s since the start: one heartbeat line
    progress.update(50)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 1 and "train step 50/1000" in lines[0] and "eta 9:40" in lines[0]
    progress.update(51)
    assert len(buffer.getvalue().splitlines()) == 1
    clock.now += 10.0
    progress.update(60, loss=1.5, lr=1e-3, tokens_per_s=100.0)   # a log line resets the heartbeat
    clock.now += 25.0
    progress.update(70)
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and "loss 1.5000" in lines[1]
    clock.now += 5.0
    progress.update(71)                           # 30 s after the log line
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 3 and "step 71/1000" in lines[2] and "loss 1.5000" in lines[2]
    progress.close()
    assert len(buffer.getvalue().splitlines()) == 3   # training has no closing summary line


def test_quiet_progress_prints_nothing() -> None:
    clock, (console, buffer) = Clock(), plain_console()
    progress = Progress(total=10, enabled=False, console=console, interactive=False, clock=clock, summary=True)
    clock.now += 100
    progress.update(5, loss=1.0, lr=1.0, tokens_per_s=1.0)
    progress.note("hello")
    progress.close()
    assert buffer.getvalue() == ""


def test_summary_line_for_a_counted_phase() -> None:
    clock, (console, buffer) = Clock(), plain_console()
    progress = Progress(total=40, title="BLEU x/test (beam 4)", unit="sentences", summary=True, console=console,
                        interactive=False, clock=clock)
    clock.now += 8.0
    progress.update(40)
    progress.close()
    line = buffer.getvalue().strip()
    assert line.startswith("BLEU x/test (beam 4) 40/40 sentences") and "5.0 sentences/s" in line


@pytest.mark.parametrize("width", [80, 100, 60, 40])
def test_line_fits_the_width_and_keeps_count_and_eta(width: int) -> None:
    title = "translate_de evolved/random with a rather long run name"
    stats = ["loss 3.1416", "lr 7.00e-04", "12,345 tok/s"]
    line = fit_line(width, title, 0.37, "370/1000", stats, "12:00", "20:26").plain
    assert len(line) <= width, line
    assert "370/1000" in line and "ETA 20:26" in line
    if width >= 80:
        assert "loss 3.1416" in line and "…" in line      # the title is shortened before the statistics go
    assert fit_line(400, title, 0.37, "370/1000", stats, "12:00", "20:26").plain.startswith(title)


def test_terminal_bar_renders_within_80_columns() -> None:
    clock, (console, buffer) = Clock(), plain_console(width=80)
    progress = Progress(total=1000, title="listops evolved/full " * 3, console=console, interactive=True,
                        clock=clock)
    clock.now += 60.0
    progress.update(250, loss=0.1234, lr=2e-3, tokens_per_s=54321.0)
    progress.close()                              # a non-terminal console prints the final frame once
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    assert lines and all(len(line) <= 80 for line in lines), lines
    assert "250/1000" in lines[-1] and "ETA 3:00" in lines[-1] and "loss 0.1234" in lines[-1]


# --------------------------------------------------------------------------------------------------------
def reverse_data(test_size: int = 12):
    return get_task("reverse", train_size=16, validation_size=8, test_size=test_size).load(0)


def test_evaluate_bounds_and_bleu_progress(capsys: pytest.CaptureFixture) -> None:
    data = reverse_data()
    torch.manual_seed(0)
    model = build_model(tiny_config(kind="encoder_decoder", vocab_size=13, max_length=12, num_blocks=1))
    device = torch.device("cpu")
    metrics = evaluate(model, data, "test", 4, device, bleu=True, max_examples=5, bleu_max_sentences=3,
                       progress=True)
    err = capsys.readouterr().err
    assert "BLEU reverse/test (greedy) 3/3 sentences" in err and "sentences/s" in err
    assert "/12" not in err
    first = dict(data.splits)
    first["test"] = ExampleDataset(data.splits["test"].examples[:5])
    subset = evaluate(model, dataclasses.replace(data, splits=first), "test", 4, device)
    assert metrics["loss"] == pytest.approx(subset["loss"])
    assert evaluate(model, data, "test", 4, device)["loss"] != pytest.approx(subset["loss"])
    assert evaluated_examples(12, 4) == 12 and evaluated_examples(12, 4, max_examples=5) == 5
    assert evaluated_examples(12, 4, max_batches=2) == 8 and evaluated_examples(3, 4, max_batches=2) == 3


def test_final_evaluation_is_announced_and_bounded(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = RunConfig(task=TaskConfig(name="reverse", options={"train_size": 32, "validation_size": 8,
                                                             "test_size": 8}),
                    model={"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 1, "max_length": 16},
                    train=TrainConfig(max_steps=2, batch_size=8, eval_every=0, log_every=1, warmup_steps=1,
                                      final_eval_max_examples=6, bleu_max_sentences=4, device="cpu"))
    train(run, tmp_path / "run")
    err = capsys.readouterr().err
    assert ("final evaluation: best checkpoint (step 2) on validation (6 examples of 8) and test (6 examples of 8), "
            "BLEU with greedy decoding on 4 and 4 sentences") in err
    assert "BLEU reverse/test (greedy) 4/4 sentences" in err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["final_evaluation"]["examples"] == {"validation": 6, "test": 6}
    assert results["final_evaluation"]["bleu_sentences"] == {"validation": 4, "test": 4}
    assert "bleu" in results["test"]


@pytest.mark.parametrize("field", ["final_eval_max_examples", "bleu_max_sentences"])
def test_final_evaluation_bounds_are_validated(field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: -1})
