"""Operator-level profiles of one training step or one inference forward, to explain a benchmark figure.

``transevolve bench profile transformer transevolve-full-1x6/factorised --length 2048`` builds the models of the
benchmark line-up (:func:`transevolve.bench.harness.model_specs`) on the benchmark batch, warms them up, records
``steps`` steps each with :mod:`torch.profiler`, and reports per model the wall time per step, the CPU time by
operator (self time, summed over forward and backward) and the share of ``aten::bmm``/``aten::mm``/``addmm``
(the dense matmuls) against everything else (exponentials, softmax, copies, normalisation, the optimizer). The
markdown report puts the models side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from transevolve.bench.harness import build, make_batch, model_specs, step_functions

#: Operators counted as dense matrix multiplication.
MATMUL_OPS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::matmul", "aten::linear",
              "aten::_scaled_dot_product_flash_attention_for_cpu",
              "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


@dataclass
class Profile:
    """One model's profile: seconds per step and self CPU seconds per step by operator (largest first)."""

    model: str
    mode: str
    length: int
    batch: int
    seconds_per_step: float
    operators: list[tuple[str, float, int]]          # (name, self CPU seconds per step, calls per step)

    @property
    def matmul_seconds(self) -> float:
        return sum(seconds for name, seconds, _ in self.operators if name in MATMUL_OPS)

    @property
    def total_seconds(self) -> float:
        return sum(seconds for _, seconds, _ in self.operators)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mode": self.mode, "length": self.length, "batch": self.batch,
                "seconds_per_step": self.seconds_per_step, "matmul_seconds": self.matmul_seconds,
                "operator_seconds": self.total_seconds,
                "operators": [{"name": n, "self_seconds": s, "calls": c} for n, s, c in self.operators]}


def profile_models(names: list[str], length: int, batch: int, mode: str = "train", steps: int = 3,
                   warmup: int = 2, width: int = 256, heads: int = 4, depth: int = 6) -> list[Profile]:
    """Profile ``steps`` training steps (``mode="train"``) or inference forwards (``"infer"``) per model."""
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be train or infer, got {mode!r}")
    if steps < 1 or length < 1 or batch < 1:
        raise ValueError("steps, length and batch must be positive")
    profiles = []
    for spec in model_specs(width, heads, depth, names):
        torch.manual_seed(0)
        model = build(spec)
        ids, labels = make_batch(spec, batch, length)
        train_step, inference = step_functions(model, ids, labels)
        run = train_step if mode == "train" else inference
        for _ in range(warmup):
            run()
        with profile(activities=[ProfilerActivity.CPU]) as recorded:
            start = time.perf_counter()
            for _ in range(steps):
                run()
            seconds = (time.perf_counter() - start) / steps
        operators = [(event.key, event.self_cpu_time_total / 1e6 / steps, event.count // steps)
                     for event in recorded.key_averages()]
        operators.sort(key=lambda row: -row[1])
        profiles.append(Profile(spec.name, mode, length, batch, seconds, operators))
    return profiles


def markdown(profiles: list[Profile], top: int = 12, command: str = "") -> str:
    """Side-by-side summary plus each model's top operators by self CPU time."""
    lines = ["# transevolve bench profile", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Self CPU time per step from `torch.profiler` (forward, backward and the Adam step for training); "
              "profiling adds overhead, so the step times are a little above the benchmark's.", "",
              "| model | mode | n | batch | s/step (profiled) | matmul s | other s | matmul share |",
              "|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        other = p.total_seconds - p.matmul_seconds
        share = p.matmul_seconds / p.total_seconds if p.total_seconds else 0.0
        lines.append(f"| {p.model} | {p.mode} | {p.length} | {p.batch} | {p.seconds_per_step:.3f} | "
                     f"{p.matmul_seconds:.3f} | {other:.3f} | {share:.0%} |")
    for p in profiles:
        lines += ["", f"## {p.model} ({p.mode}, n={p.length}, batch {p.batch})", "",
                  "| operator | self s/step | share | calls/step |", "|---|---|---|---|"]
        for name, seconds, calls in p.operators[:top]:
            share = seconds / p.total_seconds if p.total_seconds else 0.0
            lines.append(f"| `{name}` | {seconds:.4f} | {share:.1%} | {calls} |")
    return "\n".join(lines) + "\n"
