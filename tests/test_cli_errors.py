"""Bad input on the command line: one ``error: <message>`` line, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import tiny_config
from typer.testing import CliRunner

from transevolve import __version__, build_model, save_model
from transevolve.cli import app

runner = CliRunner()


def invoke(*args: str, stdin: bytes | str | None = None) -> tuple[int, str, BaseException | None]:
    result = runner.invoke(app, list(args), input=stdin)
    return result.exit_code, result.output, result.exception


def assert_user_error(args: list[str], *fragments: str, stdin: bytes | None = None) -> str:
    code, output, exception = invoke(*args, stdin=stdin)
    assert code == 2, output
    assert isinstance(exception, SystemExit), f"{type(exception).__name__}: {exception}"
    assert "error:" in output and "Traceback" not in output
    for fragment in fragments:
        assert fragment in output, (fragment, output)
    return output


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def fake_run(directory: Path, task: dict, model_config) -> Path:
    """A run directory holding config.yaml and an (untrained) best checkpoint."""
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "config.yaml").write_text(yaml.safe_dump({"task": task, "model": {}, "train": {"device": "cpu"}}))
    torch.manual_seed(0)
    save_model(build_model(model_config), directory / "checkpoints" / "best")
    return directory


REVERSE = {"name": "reverse", "seed": 0, "options": {"train_size": 16, "validation_size": 8, "test_size": 8}}


def reverse_run(directory: Path) -> Path:
    config = tiny_config(kind="encoder_decoder", vocab_size=13, max_length=12, num_blocks=1)
    return fake_run(directory, REVERSE, config)


# --------------------------------------------------------------------------------------------------------
def test_version_prints_and_exits_zero() -> None:
    code, output, _ = invoke("--version")
    assert code == 0 and __version__ in output


def test_train_and_compare_without_fetched_data_fail_cleanly(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "data"
    empty.mkdir()
    monkeypatch.setenv("TRANSEVOLVE_DATA", str(empty))
    monkeypatch.delenv("TRANSEVOLVE_DEBUG", raising=False)
    result = subprocess.run([sys.executable, "-m", "transevolve.cli", "train", "text_rt/transformer", "--run-dir",
                             str(tmp_path / "run")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "transevolve data fetch text_rt" in result.stdout and "not yet fetched" in result.stdout
    assert not (tmp_path / "run").exists()
    assert_user_error(["compare", "--config", "compare/text_rt.yaml", "--out", str(tmp_path / "cmp")],
                      "transevolve data fetch text_rt")
    assert not (tmp_path / "cmp").exists()


def test_eval_of_a_run_whose_config_does_not_parse(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write(run / "config.yaml", "task: {name: max_digit\nmodel: [\n")
    assert_user_error(["eval", str(run)], "config.yaml is not valid YAML", "written by transevolve train")
    write(run / "config.yaml", "- just\n- a list\n")
    assert_user_error(["eval", str(run)], "not a mapping")
    assert_user_error(["eval", str(tmp_path / "nowhere")], "does not exist")


def test_base_cycles_are_named(tmp_path: Path) -> None:
    write(tmp_path / "self.yaml", "base: self.yaml\ntask: {name: max_digit}\n")
    output = assert_user_error(["train", str(tmp_path / "self.yaml")], "cycle")
    assert output.count("self.yaml") >= 2
    write(tmp_path / "a.yaml", "base: b.yaml\n")
    write(tmp_path / "b.yaml", "base: c.yaml\ntask: {name: max_digit}\n")
    write(tmp_path / "c.yaml", "base: a.yaml\n")
    output = " ".join(assert_user_error(["train", str(tmp_path / "a.yaml")], "cycle").split())
    assert "a.yaml -> " in output and "b.yaml -> " in output and "c.yaml -> " in output


@pytest.mark.parametrize(("text", "fragment"), [
    ("", "is empty"),
    ("# only a comment\n", "is empty"),
    ("- task\n- model\n", "not a mapping"),
    ("just words\n", "not a mapping"),
    ("train: {max_steps: 5}\n", "does not name a task"),
    ("model: {width: 64}\n", "does not name a task"),
])
def test_run_files_without_a_task_are_errors(tmp_path: Path, text: str, fragment: str) -> None:
    path = write(tmp_path / "run.yaml", text)
    output = assert_user_error(["train", str(path), "--run-dir", str(tmp_path / "out")], fragment,
                               "task: {name:", "model", "train")
    assert "configs/" in output                                  # points at the presets
    assert not (tmp_path / "out").exists()


def test_translate_rejects_undecodable_input(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    write(run / "config.yaml", yaml.safe_dump({"task": REVERSE}))
    output = assert_user_error(["translate", str(run)], "standard input, line 2, byte 3", "0xff", "UTF-8",
                               stdin=b"1 2 3\n4 \xff 5\n")
    assert "iconv" in output
    (tmp_path / "in.txt").write_bytes(b"\xe9t\xe9\n")
    assert_user_error(["translate", str(run), "--input", str(tmp_path / "in.txt")], "in.txt, line 1, byte 1")


def test_translate_warns_when_it_truncates(tmp_path: Path) -> None:
    run = reverse_run(tmp_path / "run")
    result = runner.invoke(app, ["translate", str(run), "--beam", "1"], input="1 2 3\n" + "4 " * 30 + "\n")
    assert result.exit_code == 0, result.output
    assert "line 2 has 30 tokens" in result.stderr and "max_length" in result.stderr
    assert "line 1" not in result.stderr
    assert len(result.stdout.splitlines()) == 2


def test_inspect_refuses_runs_of_different_tasks(tmp_path: Path) -> None:
    first = reverse_run(tmp_path / "reverse")
    classifier = tiny_config(kind="classifier", vocab_size=11, num_classes=10, max_length=16, num_blocks=1)
    second = fake_run(tmp_path / "digits", {"name": "max_digit", "seed": 0, "options": {}}, classifier)
    assert_user_error(["inspect", str(first), str(second)], "'reverse'", "'max_digit'", "one task")


def test_task_option_errors_list_the_options(tmp_path: Path) -> None:
    base = write(tmp_path / "run.yaml", "task: {name: max_digit}\n")
    assert_user_error(["train", str(base), "task.options.train_sise=10"], "no option 'train_sise'",
                      "options of task 'max_digit'", "train_size=2048", "max_length=12")
    assert_user_error(["train", str(base), "task.options.min_length=-3"], "min_length",
                      "options of task 'max_digit'")
    assert_user_error(["train", str(base), "task.name=nope"], "unknown task 'nope'", "max_digit")


def test_messages_with_brackets_are_printed_verbatim(tmp_path: Path) -> None:
    path = write(tmp_path / "run.yaml", "task: {name: max_digit}\ntrain: {max_stepz: 3}\n")
    assert_user_error(["train", str(path)], "['max_stepz']", "max_steps")


def test_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "empty.yaml", "")
    code, _, exception = invoke("--debug", "train", str(path))
    assert code == 1 and isinstance(exception, ValueError) and "is empty" in str(exception)
    assert invoke("train", str(path))[0] == 2                    # --debug does not stick to later calls
    monkeypatch.setenv("TRANSEVOLVE_DEBUG", "1")
    code, _, exception = invoke("train", str(path))
    assert code == 1 and isinstance(exception, ValueError)


def test_results_table_only_on_rank_zero(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from types import SimpleNamespace

    from transevolve import cli

    result = SimpleNamespace(run_dir=Path("runs/x"), validation={"accuracy": 0.5}, test={"accuracy": 0.25},
                             parameters=10, steps=3, train_seconds=1.0, tokens_per_second=5.0)
    monkeypatch.setenv("RANK", "1")
    cli._print_result(result)
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    cli._print_result(result)
    assert "0.2500" in capsys.readouterr().out


def test_eval_states_its_work_and_reads_at_most_max_examples(tmp_path: Path) -> None:
    run = reverse_run(tmp_path / "run")
    result = runner.invoke(app, ["eval", str(run), "--max-examples", "5", "--batch-size", "2"])
    assert result.exit_code == 0, result.output
    assert "test: 5 examples, BLEU with greedy decoding on 5 sentences" in result.stderr
    assert "BLEU reverse/test (greedy) 5/5 sentences" in result.stderr
    assert "bleu" in result.stdout
    assert_user_error(["eval", str(run), "--split", "train2"], "no split 'train2'")
    assert_user_error(["eval", str(run), "--checkpoint", "first"], "best or last")


def test_data_info_uses_the_presets_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transevolve.data.cli import preset_options

    assert preset_options("listops") == ({"preset": "small"}, "configs/listops/base.yaml")
    assert preset_options("no_such_task") == ({}, None)
    monkeypatch.setenv("TRANSEVOLVE_DATA", str(tmp_path))
    small = ["-o", "num_train=40", "-o", "num_validation=8", "-o", "num_test=8", "-o", "cache=false"]
    result = runner.invoke(app, ["data", "info", "listops", *small])
    assert result.exit_code == 0, result.output
    assert "loading listops with preset=small" in result.stderr and "configs/listops/base.yaml" in result.stderr
    assert "preset: small" in result.stdout
    result = runner.invoke(app, ["data", "info", "listops", "--task-defaults", *small, "-o", "preset=tiny"])
    assert result.exit_code == 0, result.output
    assert "configs/listops" not in result.stderr and "preset=tiny" in result.stderr
