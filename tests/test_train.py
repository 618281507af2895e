"""The training recipe: exact resume, interruption, divergence, bad configs and checkpoints, distributed."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transevolve import load_model
from transevolve.checkpoint import CheckpointError
from transevolve.train import RunConfig, TaskConfig, TrainConfig, TrainingDivergedError, load_run_config, train
from transevolve.train.config import apply_dotted, run_config_from_dict
from transevolve.train.loop import learning_rate

TASK = TaskConfig(name="max_digit", options={"train_size": 256, "validation_size": 64, "test_size": 64})
MODEL = {"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.1, "max_length": 16}


def tiny_run(steps: int = 12, **train_overrides) -> RunConfig:
    options = {"max_steps": steps, "batch_size": 16, "eval_every": 5, "log_every": 2, "warmup_steps": 3,
               "schedule": "cosine"} | train_overrides
    return RunConfig(task=TASK, model=dict(MODEL, ff_type="random"), train=TrainConfig(**options))


def parameters(run_dir: Path, which: str = "last") -> list[torch.Tensor]:
    return [p.detach().clone() for p in load_model(run_dir / "checkpoints" / which).parameters()]


@pytest.mark.parametrize("attention", ["evolved", "softmax"])
def test_resume_is_exact(tmp_path: Path, attention: str) -> None:
    """N steps, stop, resume N more == 2N uninterrupted (dropout, accumulation, an epoch boundary)."""
    run = RunConfig(task=TASK, model=dict(MODEL, attention=attention, ff_type="random"),
                    train=TrainConfig(max_steps=20, batch_size=16, grad_accumulation=2, eval_every=7,
                                      log_every=3, warmup_steps=3))
    train(run, tmp_path / "full", quiet=True)
    stopped = train(run, tmp_path / "split", quiet=True, stop_at_step=10)
    assert stopped.interrupted and stopped.steps == 10
    train(run, tmp_path / "split", resume=True, quiet=True)
    for a, b in zip(parameters(tmp_path / "full"), parameters(tmp_path / "split"), strict=True):
        assert torch.equal(a, b)
    # Without restoring the RNG (dropout masks) the parameters would differ: the test can fail.
    train(run, tmp_path / "other", quiet=True, stop_at_step=10)
    torch.manual_seed(12345)
    state = tmp_path / "other" / "checkpoints" / "last" / "optimizer.pt"
    payload = torch.load(state, weights_only=True)
    payload["rng"]["torch"] = torch.get_rng_state()
    torch.save(payload, state)
    train(run, tmp_path / "other", resume=True, quiet=True)
    assert any(not torch.equal(a, b) for a, b in zip(parameters(tmp_path / "full"),
                                                     parameters(tmp_path / "other"), strict=True))


def test_run_directory_contents(tmp_path: Path) -> None:
    result = train(tiny_run(), tmp_path / "run", quiet=True)
    run_dir = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "results.json", "curves.png"):
        assert (run_dir / name).is_file(), name
    for which in ("best", "last"):
        assert {p.name for p in (run_dir / "checkpoints" / which).iterdir()} == {
            "config.json", "model.safetensors", "trainer_state.json", "optimizer.pt"}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert {r["split"] for r in records} == {"train", "validation"}
    assert all(math.isfinite(r["loss"]) for r in records)
    assert 0.0 <= result.test["accuracy"] <= 1.0
    assert load_run_config(None, []).task.name  # defaults load
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_run(), run_dir, quiet=True)


def test_divergence_stops_with_clear_message_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from transevolve.train import loop

    calls = {"n": 0}
    original = loop.forward_loss

    def poisoned(*args, **kwargs):
        loss, stats = original(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] > 6 else loss), stats

    monkeypatch.setattr(loop, "forward_loss", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"step 7.*last good checkpoint"):
        train(tiny_run(steps=20, checkpoint_every=2, eval_every=0), tmp_path / "run", quiet=True)
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 6
    assert all(torch.isfinite(p).all() for p in parameters(tmp_path / "run"))


def test_bad_configs_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"unknown train keys.*valid keys"):
        run_config_from_dict({"train": {"max_stepz": 3}})
    with pytest.raises(ValueError, match=r"unknown model keys.*valid keys"):
        run_config_from_dict({"model": {"widht": 3}})
    with pytest.raises(ValueError, match="come from the task"):
        run_config_from_dict({"model": {"vocab_size": 3}})
    with pytest.raises(ValueError, match="learning_rate"):
        run_config_from_dict({"train": {"learning_rate": -1}})
    with pytest.raises(ValueError, match="unknown sections"):
        run_config_from_dict({"trian": {}})
    with pytest.raises(ValueError, match=r"section.key=value"):
        apply_dotted({}, ["max_steps"])
    data = apply_dotted({}, ["train.learning_rate=3e-4", "task.options.train_size=10", "model.width=64"])
    run = run_config_from_dict(data)
    assert run.train.learning_rate == pytest.approx(3e-4) and run.task.options["train_size"] == 10


def test_checkpoint_from_another_config_is_refused(tmp_path: Path) -> None:
    run = tiny_run(steps=4)
    train(run, tmp_path / "run", quiet=True, stop_at_step=2)
    (tmp_path / "run" / "config.yaml").write_text(
        (tmp_path / "run" / "config.yaml").read_text().replace("width: 32", "width: 64")
        .replace("time_dim: 32", "time_dim: 64"))
    from transevolve.train import load_run

    changed = load_run(tmp_path / "run")
    with pytest.raises(CheckpointError, match="width: checkpoint 32 vs run 64"):
        train(changed, tmp_path / "run", resume=True, quiet=True)


def test_corrupt_checkpoint_fails_clearly(tmp_path: Path) -> None:
    run = tiny_run(steps=4)
    train(run, tmp_path / "run", quiet=True, stop_at_step=2)
    optimizer_file = tmp_path / "run" / "checkpoints" / "last" / "optimizer.pt"
    optimizer_file.write_bytes(optimizer_file.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"optimizer.pt is unreadable"):
        train(run, tmp_path / "run", resume=True, quiet=True)
    weights = tmp_path / "run" / "checkpoints" / "last" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        train(run, tmp_path / "run", resume=True, quiet=True)


def test_noam_schedule_is_the_official_formula() -> None:
    cfg = TrainConfig(schedule="noam", warmup_steps=4000, noam_scale=2.0)
    for step in (1, 100, 4000, 10000):
        expected = 2.0 * 512**-0.5 * min(1.0, step / 4000) / math.sqrt(max(step, 4000))
        assert learning_rate(step, cfg, 512) == pytest.approx(expected)
    cosine = TrainConfig(schedule="cosine", warmup_steps=10, max_steps=110, learning_rate=1.0)
    assert learning_rate(5, cosine, 8) == pytest.approx(0.5)
    assert learning_rate(60, cosine, 8) == pytest.approx(0.5)
    assert learning_rate(110, cosine, 8) == pytest.approx(0.0, abs=1e-12)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "transevolve.cli", *args]


@pytest.mark.parametrize("fidelity,batch_size,accumulation", [("official", 16, 1), ("lean", 6, 2)])
def test_two_process_data_parallel_matches_one_process(tmp_path: Path, fidelity: str, batch_size: int,
                                                       accumulation: int) -> None:
    """torchrun with 2 CPU processes (gloo) == 1 process with the same global batch (dropout 0).

    Official fidelity on the factorised attention path leaves W_K's time columns out of the graph: DDP must be
    told to look for unused parameters, and those weights then stay untouched in both runs. (On the reference
    path they are in the graph, but their gradient is only rounding noise, which Adam scales up to full steps
    that differ between the two runs, so parameters would not compare equal.) A global
    batch of 6 in 2 x 2 micro-batches leaves rank 1's last micro-batch empty: it must still join the all-reduce.
    ``masked_mean`` pooling: the official ``mean`` counts pads, so there the batch composition (padding) changes
    the function itself.
    """
    config = tmp_path / "run.yaml"
    model = dict(MODEL, dropout=0.0, ff_type="full", fidelity=fidelity, pooling="masked_mean",
                 attention_impl="factorised")
    config.write_text(RunConfig(task=TASK, model=model,
                                train=TrainConfig(max_steps=6, batch_size=batch_size, grad_accumulation=accumulation,
                                                  eval_every=3, log_every=2, warmup_steps=2)).to_yaml())
    env = dict(os.environ, OMP_NUM_THREADS="1")
    single = subprocess.run(_cli("train", str(config), "--run-dir", str(tmp_path / "one"), "--quiet"),
                            env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--nnodes=1",
                f"--master_port={_free_port()}", "-m", "transevolve.cli", "train", str(config),
                "--run-dir", str(tmp_path / "two"), "--quiet"]
    double = subprocess.run(launcher, env=env, capture_output=True, text=True, timeout=600)
    assert double.returncode == 0, double.stderr[-3000:]
    for a, b in zip(parameters(tmp_path / "one"), parameters(tmp_path / "two"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    assert results["world_size"] == 2


def test_ctrl_c_from_the_command_line_exits_130_with_the_resume_command(tmp_path: Path) -> None:
    """SIGINT raised by the process itself at its first evaluation (no timing): exit code 130, resume works."""
    config = tmp_path / "run.yaml"
    config.write_text(tiny_run(steps=6, eval_every=2).to_yaml())
    child = (
        "import signal, sys\n"
        "from transevolve.train import loop\n"
        "original = loop.evaluate\n"
        "def evaluate(*args, **kwargs):\n"
        "    signal.raise_signal(signal.SIGINT)\n"
        "    return original(*args, **kwargs)\n"
        "loop.evaluate = evaluate\n"
        "from transevolve.cli import main\n"
        "sys.argv = ['transevolve', *sys.argv[1:]]\n"
        "main()\n")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    stopped = subprocess.run([sys.executable, "-c", child, "train", str(config), "--run-dir", str(tmp_path / "run")],
                             env=env, capture_output=True, text=True, timeout=600)
    assert stopped.returncode == 130, stopped.stdout + stopped.stderr
    assert "stopping after this step" in stopped.stderr
    assert "Resume with: transevolve train --resume" in stopped.stdout + stopped.stderr
    state = json.loads((tmp_path / "run" / "checkpoints" / "last" / "trainer_state.json").read_text())
    assert state["step"] == 2
    resumed = subprocess.run(_cli("train", "--resume", str(tmp_path / "run"), "--quiet"), env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert json.loads((tmp_path / "run" / "results.json").read_text())["steps"] == 6


def test_cli_errors_are_clear(tmp_path: Path) -> None:
    missing = subprocess.run(_cli("train", str(tmp_path / "nope.yaml")), capture_output=True, text=True)
    assert missing.returncode == 2 and "no config file or preset" in missing.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: {name: max_digit}\ntrain: {max_stepz: 3}\n")
    result = subprocess.run(_cli("train", str(bad)), capture_output=True, text=True)
    assert result.returncode == 2 and "unknown train keys" in result.stdout and "max_steps" in result.stdout
    unknown_task = subprocess.run(_cli("train", str(bad), "train.max_stepz=", "task.name=nope"),
                                  capture_output=True, text=True)
    assert unknown_task.returncode == 2


def test_compare_writes_report_and_plots(tmp_path: Path) -> None:
    result = subprocess.run(_cli("compare", "--config", "compare/max_digit.yaml", "--out", str(tmp_path / "cmp"),
                                 "--quiet", "train.max_steps=6", "train.eval_every=3"),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("report.md", "comparison.json", "metric_vs_parameters.png", "metric_vs_time.png",
                 "validation_curves.png"):
        assert (tmp_path / "cmp" / name).is_file(), name
    payload = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    rows = payload["rows"]
    assert [r["model"] for r in rows] == ["transformer", "transevolve-fullFF", "transevolve-randomFF"]
    capability = payload["machine"]["cpu_capability"]
    assert capability and f"({capability})" in (tmp_path / "cmp" / "report.md").read_text(), \
        "the report must name the host its times were taken on"
    assert "commit" in payload["git"]
    assert "transevolve-randomFF" in result.stdout
    evaluated = subprocess.run(_cli("eval", str(tmp_path / "cmp" / "transformer" / "seed0")), capture_output=True,
                               text=True)
    assert evaluated.returncode == 0 and "accuracy" in evaluated.stdout


def test_bf16_autocast_and_early_stopping(tmp_path: Path) -> None:
    run = RunConfig(task=TASK, model=dict(MODEL, attention="evolved", ff_type="full"),
                    train=TrainConfig(max_steps=60, batch_size=16, eval_every=2, log_every=2, warmup_steps=1,
                                      precision="bf16", learning_rate=1e-7, early_stopping=2, schedule="constant"))
    result = train(run, tmp_path / "run", quiet=True)
    assert result.steps < 60, "a learning rate of 1e-7 cannot keep improving; early stopping must trigger"
    assert math.isfinite(result.test["loss"])


def test_tensorboard_needs_its_package_or_writes_events(tmp_path: Path) -> None:
    run = tiny_run(steps=2, tensorboard=True, eval_every=0)
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="tensorboard package"):
            train(run, tmp_path / "run", quiet=True)
        return
    train(run, tmp_path / "run", quiet=True)
    assert any((tmp_path / "run" / "tensorboard").iterdir())
