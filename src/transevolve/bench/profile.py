"""Operator-level profiles of one training step or one inference forward, to explain a benchmark figure.

``transevolve bench profile transformer transevolve-full-1x6/factorised --length 2048`` builds the models of the
benchmark line-up (:func:`transevolve.bench.harness.model_specs`) on the benchmark batch, in each requested
precision and dense backend (:func:`transevolve.bench.harness.make_cases`), warms them up, records ``steps`` steps
each with :mod:`torch.profiler`, and reports per configuration the wall time per step, the CPU time by operator
(self time, summed over forward and backward) and its split into dense products, fused attention kernels, the
optimizer and the rest (:mod:`transevolve.bench.split`). The markdown report puts the configurations side by side.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

from transevolve.bench.harness import build, make_batch, make_cases, model_specs, step_functions
from transevolve.bench.split import CATEGORIES, classify, format_split, fractions


@dataclass
class Profile:
    """One model's profile: seconds per step and self CPU seconds per step by operator (largest first)."""

    model: str
    mode: str
    length: int
    batch: int
    seconds_per_step: float
    operators: list[tuple[str, float, int]]          # (name, self CPU seconds per step, calls per step)
    split: dict[str, float] = field(default_factory=dict)      # self CPU seconds per step by category
    precision: str = "fp32"
    dense_backend: str | None = None

    @property
    def matmul_seconds(self) -> float:
        """Dense products and fused attention kernels (the matrix work)."""
        return self.split.get("products", 0.0) + self.split.get("attention_kernels", 0.0)

    @property
    def total_seconds(self) -> float:
        return sum(seconds for _, seconds, _ in self.operators)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "mode": self.mode, "length": self.length, "batch": self.batch,
                "precision": self.precision, "dense_backend": self.dense_backend,
                "seconds_per_step": self.seconds_per_step, "matmul_seconds": self.matmul_seconds,
                "operator_seconds": self.total_seconds, "split_seconds": dict(self.split),
                "split": fractions(self.split) if self.split else None,
                "operators": [{"name": n, "self_seconds": s, "calls": c} for n, s, c in self.operators]}


def profile_models(names: list[str], length: int, batch: int, mode: str = "train", steps: int = 3,
                   warmup: int = 2, width: int = 256, heads: int = 4, depth: int = 6,
                   precisions: list[str] | None = None, dense_backends: list[str] | None = None) -> list[Profile]:
    """Profile ``steps`` training steps (``mode="train"``) or inference forwards (``"infer"``) per model, in every
    precision and dense backend given (default: fp32, ``auto``)."""
    if mode not in ("train", "infer"):
        raise ValueError(f"mode must be train or infer, got {mode!r}")
    if steps < 1 or length < 1 or batch < 1:
        raise ValueError("steps, length and batch must be positive")
    profiles = []
    for case in make_cases(model_specs(width, heads, depth, names), precisions, dense_backends):
        torch.manual_seed(0)
        model = build(case.spec)
        ids, labels = make_batch(case.spec, batch, length)
        train_step, inference = step_functions(model, ids, labels, case.precision, case.dense_backend)
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
        split = {name: value / steps for name, value in classify(recorded.events()).items()}
        profiles.append(Profile(case.name, mode, length, batch, seconds, operators, split, case.precision,
                                case.dense_backend))
    return profiles


def markdown(profiles: list[Profile], top: int = 12, command: str = "") -> str:
    """Side-by-side summary plus each model's top operators by self CPU time."""
    lines = ["# transevolve bench profile", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["Self CPU time per step from `torch.profiler` (forward, backward and the Adam step for training); "
              "profiling adds overhead, so the step times are a little above the benchmark's.", "",
              "Split of the self time: dense products (mm/bmm/addmm/baddbmm kernels, oneDNN linear, matmul/linear "
              "dispatch), fused attention kernels (CPU flash attention forward and backward), the optimizer (Adam "
              "step) and the rest (elementwise, softmax, normalisation, dropout, copies); see "
              "`transevolve.bench.split`.", "",
              "| model | mode | n | batch | s/step (profiled) | " + " s | ".join(CATEGORIES) + " s | "
              "% products / attention / optimizer / rest |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for p in profiles:
        shares = fractions(p.split) if p.split else None
        lines.append(f"| {p.model} | {p.mode} | {p.length} | {p.batch} | {p.seconds_per_step:.3f} | "
                     + " | ".join(f"{p.split.get(name, 0.0):.3f}" for name in CATEGORIES)
                     + f" | {format_split(shares)} |")
    for p in profiles:
        lines += ["", f"## {p.model} ({p.mode}, n={p.length}, batch {p.batch})", "",
                  "| operator | self s/step | share | calls/step |", "|---|---|---|---|"]
        for name, seconds, calls in p.operators[:top]:
            share = seconds / p.total_seconds if p.total_seconds else 0.0
            lines.append(f"| `{name}` | {seconds:.4f} | {share:.1%} | {calls} |")
    return "\n".join(lines) + "\n"
