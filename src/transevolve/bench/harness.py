"""Timing harness: models side by side, warm-up, interleaved repeated rounds, medians; memory in subprocesses.

- Every configuration of a group (one sequence length) is built up front and fed the same batch. After warm-up
  (two training steps and two forward passes each), ``rounds`` rounds each time one training step (forward,
  cross-entropy, backward, Adam step) per configuration, in a rotated order; then, in eval mode, ``rounds``
  rounds of one inference forward (``torch.inference_mode``) each, so inference is steady state (e.g. the random
  feed-forward's cached weights). A dense fp32 matmul probe is timed next to every measurement. Medians over
  rounds are reported, so slow phases of a noisy machine hit every configuration alike.
- Peak memory is measured in a fresh interpreter per configuration and mode (``python -m
  transevolve.bench.memory``): the resident-set high-water mark of one step (reset just before it) minus the
  resident set before it, with the model, optimizer and batch already built. So it is the step's own peak:
  activations (and, for training, gradients and the Adam state), not the interpreter, the weights or the input.
  Resident-set peaks include allocator slack, so they are coarse (a few MB) but comparable between
  configurations.
- MFU = analytic FLOPs achieved / the matmul probe's FLOP/s in the same round (training counts 3x forward).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from transevolve.bench.flops import flops_per_token
from transevolve.config import ModelConfig
from transevolve.models import build_model
from transevolve.params import count_model_parameters

#: The issue's shape: encoder classifier, width 256, 4 heads, FF 1024, 6 layers (t = 64 so that d / h = t).
BASE_SHAPE: dict[str, Any] = {"kind": "classifier", "vocab_size": 256, "width": 256, "num_heads": 4, "time_dim": 64,
                              "ff_multiplier": 4, "num_classes": 4, "dropout": 0.0, "max_length": 8192}


@dataclass(frozen=True)
class ModelSpec:
    """One benchmarked configuration.

    Attributes:
        name: label in the reports, e.g. ``transevolve-full-1x6/factorised``.
        config: the model (for ``x-transformers`` the same-shape softmax config, used for FLOPs).
        external: ``"x-transformers"`` for the reference library's encoder, else None.
        max_length: skip longer sequences (e.g. the reference path's n x n tensors at n = 4096).
    """

    name: str
    config: ModelConfig
    external: str | None = None
    max_length: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "config": self.config.to_dict(), "external": self.external,
                "max_length": self.max_length}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        return cls(data["name"], ModelConfig.from_dict(data["config"]), data.get("external"), data.get("max_length"))


#: The layer-update schemes the benchmark can add to its line-up (``transformer/rk2``...), as config changes.
SCHEME_VARIANTS: dict[str, dict[str, object]] = {
    "parallel": {"scheme": "parallel"},
    "macaron": {"scheme": "macaron", "macaron_half_width": True},
    "rk2": {"scheme": "rk2"},
    "rk2_gated": {"scheme": "rk2_gated"},
    "rk4": {"scheme": "rk4"},
    "shared": {"share_layers": 0},           # 0: all layers of the block (the line-up's depth)
    "adaptive": {"scheme": "adaptive"},      # dopri5 at the default tolerances; NFE measured and reported
}


def model_specs(width: int = 256, heads: int = 4, depth: int = 6, names: list[str] | None = None,
                reference_max_length: int = 2048) -> list[ModelSpec]:
    """The standard line-up at one shape; ``names`` selects (and orders) a subset."""
    shape = {**BASE_SHAPE, "width": width, "num_heads": heads, "time_dim": width // heads}
    softmax = ModelConfig(**shape, attention="softmax", layers_per_block=depth, num_blocks=1)

    def evolved(ff: str, blocks: int, impl: str) -> ModelSpec:
        config = ModelConfig(**shape, attention="evolved", ff_type=ff, layers_per_block=depth // blocks,
                             num_blocks=blocks, attention_impl=impl)
        limit = reference_max_length if impl == "reference" else None
        return ModelSpec(f"transevolve-{ff}-{blocks}x{depth // blocks}/{impl}", config, max_length=limit)

    specs = [ModelSpec("transformer", softmax), ModelSpec("x-transformers", softmax, external="x-transformers")]
    specs += [evolved("full", 1, impl) for impl in ("reference", "factorised", "low_memory")]
    specs += [evolved("random", 1, impl) for impl in ("reference", "factorised")]
    specs += [evolved("full", 2, "factorised"), evolved("random", 2, "factorised")]
    if names is None:
        return specs
    # Layer-update schemes (selectable by name, not in the default line-up): "<model>/<scheme>".
    for scheme, variant in SCHEME_VARIANTS.items():
        changes = {k: (depth if k == "share_layers" and v == 0 else v) for k, v in variant.items()}
        specs.append(ModelSpec(f"transformer/{scheme}", softmax.replace(**changes)))
        full = evolved("full", 1, "auto").config
        specs.append(ModelSpec(f"transevolve-full-1x{depth}/{scheme}", full.replace(**changes)))
    by_name = {spec.name: spec for spec in specs}
    unknown = [name for name in names if name not in by_name]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; choose from {list(by_name)}")
    return [by_name[name] for name in names]


class _XTransformersClassifier(nn.Module):
    """``x-transformers`` encoder of the same shape with mean pooling and a linear head."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        from x_transformers import Encoder, TransformerWrapper

        assert config.num_classes is not None
        self.net = TransformerWrapper(
            num_tokens=config.vocab_size, max_seq_len=config.max_length, average_pool_embed=True,
            logits_dim=config.num_classes,
            attn_layers=Encoder(dim=config.width, depth=config.depth, heads=config.num_heads,
                                attn_dim_head=config.width // config.num_heads, ff_mult=config.ff_multiplier,
                                attn_flash=True))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.net(ids)


def build(spec: ModelSpec) -> nn.Module:
    if spec.external == "x-transformers":
        return _XTransformersClassifier(spec.config)
    if spec.external is not None:
        raise ValueError(f"unknown external model {spec.external!r}")
    return build_model(spec.config)


def make_batch(spec: ModelSpec, batch: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpadded ids ``(batch, length)`` in ``[1, V)`` and class labels ``(batch,)``."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, spec.config.vocab_size, (batch, length), generator=generator)
    labels = torch.randint(0, spec.config.num_classes or 2, (batch,), generator=generator)
    return ids, labels


def _loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    if logits.shape[-1] == 1:
        return nn.functional.binary_cross_entropy_with_logits(logits.squeeze(-1), (labels > 0).to(logits.dtype))
    return nn.functional.cross_entropy(logits, labels)


def step_functions(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor
                   ) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(train_step, inference)`` closures for one model and batch."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def train_step() -> None:
        if not model.training:
            model.train()
        loss = _loss(model(ids), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def inference() -> None:
        if model.training:
            model.eval()
        with torch.inference_mode():
            model(ids)

    return train_step, inference


def _timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def matmul_probe(size: int = 2048) -> Callable[[], float]:
    """A closure returning the FLOP/s of one dense fp32 ``size^3`` matmul (the MFU reference peak)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b

    def probe() -> float:
        return 2.0 * size**3 / _timed(lambda: a @ b)

    return probe


@dataclass
class Measurement:
    """Medians over rounds for one model at one length (times in seconds per step)."""

    model: str
    length: int
    batch: int
    parameters: int
    flops_per_token: float
    train_seconds: list[float] = field(default_factory=list)
    infer_seconds: list[float] = field(default_factory=list)
    peak_flops: list[float] = field(default_factory=list)
    infer_peak_flops: list[float] = field(default_factory=list)
    train_memory_mb: float | None = None
    infer_memory_mb: float | None = None
    skipped: str | None = None
    nfe: int | None = None          # function evaluations per forward (adaptive scheme; FLOPs are counted with it)

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    def _mfu(self, seconds: list[float], peaks: list[float], multiplier: float) -> float | None:
        if not seconds or not peaks:
            return None
        ratios = [multiplier * self.flops_per_token * self.tokens / t / peak
                  for t, peak in zip(seconds, peaks, strict=False)]
        return statistics.median(ratios)

    def summary(self) -> dict[str, Any]:
        """Medians and derived figures (tokens/s, MFU against the same round's matmul peak)."""
        train = statistics.median(self.train_seconds) if self.train_seconds else None
        infer = statistics.median(self.infer_seconds) if self.infer_seconds else None
        return {
            "model": self.model, "length": self.length, "batch": self.batch, "parameters": self.parameters,
            "flops_per_token": self.flops_per_token, "skipped": self.skipped, "nfe": self.nfe,
            "train_step_seconds": train, "infer_seconds": infer,
            "train_tokens_per_second": self.tokens / train if train else None,
            "infer_tokens_per_second": self.tokens / infer if infer else None,
            "train_mfu": self._mfu(self.train_seconds, self.peak_flops, 3.0),
            "infer_mfu": self._mfu(self.infer_seconds, self.infer_peak_flops, 1.0),
            "train_memory_mb": self.train_memory_mb, "infer_memory_mb": self.infer_memory_mb,
            "rounds": len(self.train_seconds), "raw": {"train": self.train_seconds, "infer": self.infer_seconds,
                                                        "peak_flops": self.peak_flops + self.infer_peak_flops},
        }


def run_group(specs: list[ModelSpec], length: int, batch: int, rounds: int, warmup: int = 2,
              log: Callable[[str], None] = print) -> list[Measurement]:
    """Time every spec at one length side by side (see the module docstring)."""
    measurements: list[Measurement] = []
    runners: list[tuple[Measurement, Callable[[], None], Callable[[], None]]] = []
    probe = matmul_probe()
    for spec in specs:
        torch.manual_seed(0)
        model = build(spec)
        path = "reference" if spec.config.attention == "evolved" and spec.config.attention_impl == "reference" \
            else "fast"
        measurement = Measurement(spec.name, length, batch, count_model_parameters(model),
                                  flops_per_token(spec.config, length, path))
        measurements.append(measurement)
        if spec.max_length is not None and length > spec.max_length:
            measurement.skipped = f"longer than its max_length {spec.max_length}"
            continue
        ids, labels = make_batch(spec, batch, length)
        train_step, inference = step_functions(model, ids, labels)
        for _ in range(warmup):
            train_step()
            inference()
        evaluations = getattr(model, "function_evaluations", lambda: None)()
        if evaluations is not None:           # the adaptive scheme: its cost is set by the solver's NFE
            measurement.nfe = evaluations
            measurement.flops_per_token = flops_per_token(spec.config, length, path, nfe=evaluations)
        runners.append((measurement, train_step, inference))
    for phase in ("train", "infer"):
        if phase == "infer":
            for _, _, inference in runners:          # back in eval mode: rebuild the random FF weight cache once
                inference()
        for round_index in range(rounds):
            shift = round_index % max(1, len(runners))
            for measurement, train_step, inference in runners[shift:] + runners[:shift]:
                peak = probe()
                if phase == "train":
                    measurement.train_seconds.append(_timed(train_step))
                    measurement.peak_flops.append(peak)
                else:
                    measurement.infer_seconds.append(_timed(inference))
                    measurement.infer_peak_flops.append(peak)
            log(f"  n={length} {phase} round {round_index + 1}/{rounds} done")
    return measurements


def measure_memory(spec: ModelSpec, length: int, batch: int, mode: str, timeout: float = 600.0) -> float | None:
    """Peak MB of one step (``train`` or ``infer``) in a fresh interpreter; None if it failed."""
    payload = json.dumps({"spec": spec.to_dict(), "length": length, "batch": batch, "mode": mode})
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536"}
    try:
        done = subprocess.run([sys.executable, "-m", "transevolve.bench.memory", payload], capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    return float(json.loads(done.stdout.strip().splitlines()[-1])["peak_mb"])


def system_info() -> dict[str, Any]:
    """Where the numbers come from."""
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                            "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with open("/proc/cpuinfo") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        info["cpu"] = names[0] if names else None
    except OSError:
        info["cpu"] = None
    try:
        info["git"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                     check=False).stdout.strip() or None
    except OSError:
        info["git"] = None
    return info


def measurement_dicts(measurements: list[Measurement]) -> list[dict[str, Any]]:
    return [m.summary() for m in measurements]


def spec_dicts(specs: list[ModelSpec]) -> list[dict[str, Any]]:
    return [asdict(spec) | {"config": spec.config.to_dict()} for spec in specs]
