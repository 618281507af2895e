"""Interruption at any instant: Ctrl-C inside a step, a second Ctrl-C, a hard kill, a crash between any two file
operations of a checkpoint save. Each is injected at a chosen point of the run (no timing, no subprocess races)
and the resumed run must end with the parameters, metrics and config of an uninterrupted one."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from transevolve import load_model
from transevolve.train import RunConfig, TaskConfig, TrainConfig, train
from transevolve.train import loop as loop_module
from transevolve.train import state as state_module

TASK = TaskConfig(name="max_digit", options={"train_size": 96, "validation_size": 32, "test_size": 32})
MODEL = {"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.1, "max_length": 16,
         "attention": "evolved", "ff_type": "full"}
STEPS = 8


def run_config(steps: int = STEPS) -> RunConfig:
    return RunConfig(task=TASK, model=MODEL, train=TrainConfig(
        max_steps=steps, batch_size=16, grad_accumulation=2, eval_every=3, log_every=3, checkpoint_every=2,
        warmup_steps=2))


class Killed(BaseException):
    """A hard kill: nothing in the process gets to react (not an Exception, not a KeyboardInterrupt)."""


def parameters(run_dir: Path) -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_model(run_dir / "checkpoints" / "last").parameters()]


def logged(run_dir: Path) -> list[tuple]:
    """The reproducible part of metrics.jsonl (timings dropped)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"], r.get("accuracy")) for r in rows]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    train(run_config(), run_dir, quiet=True)
    return run_dir


def assert_same_run(reference: Path, resumed: Path) -> None:
    for a, b in zip(parameters(reference), parameters(resumed), strict=True):
        assert torch.equal(a, b)
    assert logged(resumed) == logged(reference)
    steps = [r[0] for r in logged(resumed) if r[1] == "train"]
    assert steps == sorted(set(steps)), "a step was logged twice"
    saved = yaml.safe_load((resumed / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == STEPS
    assert json.loads((resumed / "results.json").read_text())["steps"] == STEPS


# -------------------------------------------------------------------------------------------------------------
def inject(monkeypatch: pytest.MonkeyPatch, point: str, at_step: int, action: Callable[[], None]) -> None:
    """Call ``action`` once, at ``point`` of optimizer step ``at_step`` (1-based)."""
    progress = {"step": 0, "done": False}
    # progress["step"] counts optimizer steps begun: forward and backward of step k run while it is k - 1
    target = at_step - 1 if point in ("forward", "backward") else at_step

    def fire() -> None:
        if not progress["done"] and progress["step"] == target:
            progress["done"] = True
            action()

    original_model, original_optimizer = loop_module.build_model, loop_module.build_optimizer

    def build_model(config):
        model = original_model(config)
        if point == "forward":  # fire in the n-th module call of the step, n drawn from the step number
            calls = {"n": 0, "fire_at": random.Random(at_step).randrange(1, 30)}

            def on_call(*args: object) -> None:
                if progress["step"] == target:
                    calls["n"] += 1
                    if calls["n"] >= calls["fire_at"]:
                        fire()

            for module in model.modules():
                module.register_forward_hook(on_call)
        elif point == "backward":
            parameter = next(p for p in model.parameters() if p.requires_grad)
            parameter.register_hook(lambda grad: (fire(), grad)[1])
        return model

    def build_optimizer(model, cfg):
        optimizer = original_optimizer(model, cfg)

        def count(*args: object) -> None:
            progress["step"] += 1

        optimizer.register_step_pre_hook(count)
        if point == "optimizer":
            optimizer.register_step_pre_hook(lambda *args: fire())
        return optimizer

    monkeypatch.setattr(loop_module, "build_model", build_model)
    monkeypatch.setattr(loop_module, "build_optimizer", build_optimizer)
    if point == "evaluation":
        original_evaluate = loop_module.evaluate

        def evaluate(*args, **kwargs):
            fire()
            return original_evaluate(*args, **kwargs)

        monkeypatch.setattr(loop_module, "evaluate", evaluate)


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)


@pytest.mark.parametrize("point,at_step", [("forward", 2), ("backward", 5), ("optimizer", 4), ("evaluation", 3),
                                           ("forward", 7)])
def test_ctrl_c_inside_a_step_stops_at_its_end_and_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path, point: str, at_step: int) -> None:
    with monkeypatch.context() as patch:
        inject(patch, point, at_step, ctrl_c)
        result = train(run_config(), tmp_path / "run", quiet=True)
    assert result.interrupted
    stopped_at = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())["step"]
    assert stopped_at == result.steps >= 1, "the interrupted step finishes and is saved"
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "the handler is restored"
    train(run_config(), tmp_path / "run", resume=True, quiet=True)
    assert_same_run(reference, tmp_path / "run")


def test_second_ctrl_c_stops_at_once_and_the_last_checkpoint_resumes_exactly(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path) -> None:
    with monkeypatch.context() as patch:
        inject(patch, "forward", 6, lambda: (ctrl_c(), ctrl_c()))
        result = train(run_config(), tmp_path / "run", quiet=True)
    assert result.interrupted
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 4, "stopped mid-step 6: the checkpoint of step 4 (checkpoint_every=2) stays"
    train(run_config(), tmp_path / "run", resume=True, quiet=True)
    assert_same_run(reference, tmp_path / "run")


def kill() -> None:
    raise Killed


@pytest.mark.parametrize("point,at_step", [("forward", 5), ("optimizer", 7), ("evaluation", 6)])
def test_hard_kill_then_resume_equals_an_uninterrupted_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path, point: str, at_step: int) -> None:
    with monkeypatch.context() as patch, pytest.raises(Killed):
        inject(patch, point, at_step, kill)
        train(run_config(), tmp_path / "run", quiet=True)
    with (tmp_path / "run" / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 99, "split": "tra')  # a line cut short by the kill
    train(run_config(), tmp_path / "run", resume=True, quiet=True)
    assert_same_run(reference, tmp_path / "run")


def test_killed_before_the_first_checkpoint_resumes_from_the_start(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path) -> None:
    with monkeypatch.context() as patch, pytest.raises(Killed):
        inject(patch, "forward", 1, kill)
        train(run_config(), tmp_path / "run", quiet=True)
    with pytest.raises(FileExistsError, match="--resume"):
        train(run_config(), tmp_path / "run", quiet=True)   # a fresh run never writes into it
    train(run_config(), tmp_path / "run", resume=True, quiet=True)
    assert_same_run(reference, tmp_path / "run")


def test_resume_that_extends_max_steps_updates_config_yaml(tmp_path: Path) -> None:
    train(run_config(steps=4), tmp_path / "run", quiet=True)
    train(run_config(steps=6), tmp_path / "run", resume=True, quiet=True)
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["train"]["max_steps"] == 6
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 6


# -------------------------------------------------------------------------------------------------------------
class FileOperations:
    """Counts the file operations of checkpoint saves and kills the run at the chosen one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, save_index: int, kill_at: int | None) -> None:
        self.save_index, self.kill_at = save_index, kill_at
        self.saves, self.operations, self.inside = 0, 0, False
        original_save = state_module.CheckpointStore.save

        def save(store, *args, **kwargs):
            self.saves += 1
            self.inside = self.saves == self.save_index
            try:
                return original_save(store, *args, **kwargs)
            finally:
                self.inside = False

        monkeypatch.setattr(state_module.CheckpointStore, "save", save)
        for owner, name in ((os, "replace"), (os, "symlink"), (os, "unlink"), (shutil, "rmtree"),
                            (state_module, "save_model"), (torch, "save"), (state_module, "_fsync_file"),
                            (state_module, "_fsync_dir"), (Path, "write_text"), (Path, "unlink")):
            monkeypatch.setattr(owner, name, self.wrap(getattr(owner, name)))

    def wrap(self, function: Callable) -> Callable:
        def wrapped(*args, **kwargs):
            if self.inside:
                self.operations += 1
                if self.operations == self.kill_at:
                    raise Killed
            return function(*args, **kwargs)

        return wrapped


def test_a_crash_between_any_two_file_operations_of_a_checkpoint_save_loses_nothing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reference: Path) -> None:
    save_index = 3  # step 4's save: replaces an existing last (and best) and removes an older step directory
    with monkeypatch.context() as patch:
        counter = FileOperations(patch, save_index, kill_at=None)
        train(run_config(), tmp_path / "count", quiet=True)
    assert counter.operations >= 10, counter.operations
    for kill_at in range(1, counter.operations + 1):
        run_dir = tmp_path / f"kill{kill_at}"
        with monkeypatch.context() as patch, pytest.raises(Killed):
            FileOperations(patch, save_index, kill_at)
            train(run_config(), run_dir, quiet=True)
        assert (run_dir / "checkpoints" / "last" / "trainer_state.json").is_file(), \
            f"killed at file operation {kill_at}: no complete checkpoint behind last"
        train(run_config(), run_dir, resume=True, quiet=True)
        assert_same_run(reference, run_dir)
        leftovers = [p.name for p in (run_dir / "checkpoints").iterdir() if p.name.endswith(".tmp")]
        assert not leftovers, leftovers


def test_older_layout_left_by_a_crash_between_its_two_renames_is_recovered(tmp_path: Path, reference: Path) -> None:
    """The previous layout replaced checkpoints/last with two renames; a crash between them left only
    last.old and last.tmp, which --resume ignored and the next train deleted."""
    train(run_config(), tmp_path / "run", quiet=True, stop_at_step=4)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = checkpoints / "last"
    shutil.copytree(last.resolve(), checkpoints / "last.old")
    for link in ("last", "best"):
        (checkpoints / link).unlink()
    for child in checkpoints.iterdir():
        if child.name.startswith("step-"):
            shutil.rmtree(child)
    (checkpoints / "last.tmp").mkdir()  # incomplete: the crash came before it was written
    train(run_config(), tmp_path / "run", resume=True, quiet=True)
    assert_same_run(reference, tmp_path / "run")
