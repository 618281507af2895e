"""Timing harness: models side by side, warm-up, interleaved repeated rounds, medians; memory in subprocesses.

- Every configuration of a group (one sequence length) is built up front and fed the same batch. After warm-up
  (two training steps and two forward passes each), ``rounds`` rounds each time one training step (forward,
  cross-entropy, backward, Adam step) per configuration, in a rotated order; then, in eval mode, ``rounds``
  rounds of one inference forward (``torch.inference_mode``) each, so inference is steady state (e.g. the random
  feed-forward's cached weights). Right before every measurement three dense-product probes are timed
  (:func:`peak_probes`: fp32 through aten, fp32 through oneDNN, bf16). Medians over rounds are reported, so slow
  phases of a noisy machine hit every configuration alike.
- A configuration is a :class:`Case`: a model of the line-up in one precision (``fp32``, or ``bf16`` =
  forward and loss under ``torch.autocast("cpu", torch.bfloat16)``, the backward following it and the Adam
  step in fp32, as in training) with one dense backend (:mod:`transevolve.modules.dense`).
- Peak memory is measured in a fresh interpreter per configuration and mode (``python -m
  transevolve.bench.memory``; :func:`measure_memories`: one interpreter for both modes, inference first): the
  resident-set high-water mark of one step (reset just before it) minus the resident set before it, with the
  model, optimizer and batch already built. So it is the step's own peak:
  activations (and, for training, gradients and the Adam state), not the interpreter, the weights or the input.
  Resident-set peaks include allocator slack, so they are coarse (a few MB) but comparable between
  configurations.
- MFU = analytic FLOPs achieved / a probe's FLOP/s right before the measurement (training counts 3x forward),
  median over rounds: ``train_mfu`` against the fastest fp32 product (the faster of the aten and oneDNN probes),
  ``train_mfu_precision`` against the peak of the precision the model ran in (bf16 rows: the bf16 probe; fp32
  rows: the fastest fp32 product again). Likewise ``infer_mfu`` / ``infer_mfu_precision``.
- Optionally (``split=True``) one more training step per configuration runs under the profiler and its time is
  split into dense products, fused attention kernels, the optimizer and the rest (:mod:`transevolve.bench.split`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from transevolve.bench.flops import Path, flops_per_token
from transevolve.bench.split import profile_split
from transevolve.config import ModelConfig
from transevolve.models import build_model
from transevolve.modules import dense
from transevolve.params import count_model_parameters, count_parameters

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


#: Block length l of the sparse models: fixed, as a trained model's is (its pattern is architecture, not a
#: function of the input length). 64 = sqrt(4096) sits in the middle (on a log scale) of the lengths the
#: ``efficient`` preset times and is close to the optimum of the causal strided cost ``2 l + n / l`` at n = 8192
#: (l = sqrt(n / 2) = 64); it is also the head width, so the block products are 64 x 64 tiles.
SPARSE_BLOCK_SIZE = 64

#: Summary width c of ``sparse-fixed``: c / l = 1 / 8, the ratio of Child et al.'s c = 16 at l = 128.
SPARSE_SUMMARY = 8

#: The efficient attentions by bench name, as config changes of the softmax Transformer (Sparse Transformer,
#: arXiv 1904.10509; Linear Transformer, arXiv 2006.16236). ``attention_impl`` is the library default (``auto``,
#: their fast paths); ``<name>/reference`` selects the explicit n x n path.
EFFICIENT_ATTENTIONS: dict[str, dict[str, Any]] = {
    "sparse-strided": {"attention": "sparse", "sparse_pattern": "strided", "sparse_block_size": SPARSE_BLOCK_SIZE},
    "sparse-fixed": {"attention": "sparse", "sparse_pattern": "fixed", "sparse_block_size": SPARSE_BLOCK_SIZE,
                     "sparse_summary": SPARSE_SUMMARY},
    "linear": {"attention": "linear"},
}


def flop_path(config: ModelConfig) -> Path:
    """The computation the analytic FLOPs count for ``config``: ``reference`` when it runs the explicit reference
    path (TransEvolve's official logits, sparse attention's masked n x n logits, linear attention's kernel matrix),
    else ``fast``. Softmax and minimal attention count the same either way."""
    return "reference" if config.attention_impl == "reference" else "fast"


def model_specs(width: int = 256, heads: int = 4, depth: int = 6, names: list[str] | None = None,
                reference_max_length: int = 2048) -> list[ModelSpec]:
    """The standard line-up at one shape; ``names`` selects (and orders) a subset.

    Selectable by name only (not in the default line-up): the library default path ``transevolve-<ff>-1x<depth>``,
    the efficient attentions of :data:`EFFICIENT_ATTENTIONS` (``sparse-strided``, ``sparse-fixed``, ``linear``, each
    also as ``<name>/reference``, limited to ``reference_max_length`` like TransEvolve's reference path) and the
    layer-update schemes ``<model>/<scheme>``.
    """
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
    # The library's default path (attention_impl="auto"), named without a path: "transevolve-full-1x6".
    for ff in ("full", "random"):
        specs.append(ModelSpec(f"transevolve-{ff}-1x{depth}", evolved(ff, 1, "auto").config))
    for name, changes in EFFICIENT_ATTENTIONS.items():
        efficient = softmax.replace(**changes)
        specs.append(ModelSpec(name, efficient))
        specs.append(ModelSpec(f"{name}/reference", efficient.replace(attention_impl="reference"),
                               max_length=reference_max_length))
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


#: Precisions a configuration can run in (``bf16``: forward and loss under CPU autocast to bfloat16).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")

#: The peak probes, each one square product (:data:`PROBE_SIZE`): fp32 ``a @ b`` through aten (MKL on x86
#: CPUs), fp32 through oneDNN (:func:`transevolve.modules.dense.linear` under ``use_dense_backend("onednn")``),
#: bf16 ``a @ b`` (aten sends it to oneDNN's bf16 kernels).
PROBES: tuple[str, ...] = ("fp32_aten", "fp32_onednn", "bf16")

#: Side of the square probe products (``2 PROBE_SIZE^3`` FLOPs each).
PROBE_SIZE = 2048
#: Why bf16 probes or cases are left out on a CPU without bf16 matrix hardware (:func:`dense.fast_bf16_available`).
BF16_SLOW_NOTE = ("{what} skipped: this CPU has no bf16 matrix hardware (oneDNN needs AVX-512 BF16 or AMX), and "
                  "PyTorch's fallback kernel runs bf16 products orders of magnitude slower than fp32")

#: The peak each precision's MFU is taken against (``fp32_fastest``: the faster fp32 probe of the same round).
PRECISION_PEAK: dict[str, str] = {"fp32": "fp32_fastest", "bf16": "bf16"}


@dataclass(frozen=True)
class Case:
    """One timed configuration: a model of the line-up in one precision with one dense backend.

    Attributes:
        spec: the model.
        precision: ``fp32``, or ``bf16`` (forward and loss under ``torch.autocast("cpu", torch.bfloat16)``).
        dense_backend: the concrete backend of the model's float32 dense products, ``aten`` or ``onednn``.
            Always ``aten`` for x-transformers (it calls ``F.linear`` itself) and for bf16 rows (autocast sends
            every product to aten's bf16 kernels, whatever the setting; see :mod:`transevolve.modules.dense`).
        label: the row's name in the reports, e.g. ``transformer@fp32+onednn`` (default: the model's name).
    """

    spec: ModelSpec
    precision: str = "fp32"
    dense_backend: str = "aten"
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or self.spec.name


def backend_applies(spec: ModelSpec, precision: str) -> bool:
    """Whether the dense-backend setting changes what ``spec`` computes in ``precision``."""
    return spec.external is None and precision == "fp32"


def concrete_backends(requested: list[str]) -> list[str]:
    """The distinct concrete backends (``aten``, ``onednn``) that ``requested`` (``auto``/``aten``/``onednn``
    names) selects on this machine, in order; ValueError for an unknown or unavailable name."""
    concrete: list[str] = []
    for name in requested:
        backend = dense.resolve_dense_backend(name)
        if backend not in concrete:
            concrete.append(backend)
    if not concrete:
        raise ValueError(f"no dense backend given; choose from {list(dense.DENSE_BACKENDS)}")
    return concrete


def make_cases(specs: list[ModelSpec], precisions: list[str] | None = None, backends: list[str] | None = None
               ) -> list[Case]:
    """Every spec in every precision and, where it applies (:func:`backend_applies`), every dense backend.

    Labels: the model's name, plus ``@<precision>`` when more than one precision runs (or the only one is not
    fp32), plus ``+<backend>`` when more than one backend runs and it applies to the row.
    """
    precisions = list(dict.fromkeys(precisions or ["fp32"]))
    unknown = [p for p in precisions if p not in PRECISIONS]
    if unknown:
        raise ValueError(f"unknown precision(s) {unknown}; choose from {list(PRECISIONS)}")
    concrete = concrete_backends(backends or ["auto"])
    cases = []
    for spec in specs:
        for precision in precisions:
            label = spec.name + (f"@{precision}" if len(precisions) > 1 or precision != "fp32" else "")
            if not backend_applies(spec, precision):
                cases.append(Case(spec, precision, "aten", label))
                continue
            for backend in concrete:
                cases.append(Case(spec, precision, backend, label + (f"+{backend}" if len(concrete) > 1 else "")))
    return cases


def _as_case(item: Case | ModelSpec) -> Case:
    """A bare spec runs in fp32 with the process's current dense backend."""
    if isinstance(item, Case):
        return item
    backend = dense.dense_backend() if backend_applies(item, "fp32") else "aten"
    return Case(item, "fp32", backend, item.name)


def step_functions(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor, precision: str = "fp32",
                   dense_backend: str = "auto") -> tuple[Callable[[], None], Callable[[], None]]:
    """``(train_step, inference)`` closures for one model and batch, in ``precision`` with ``dense_backend``.

    bf16: the forward pass and the loss run under ``torch.autocast(device, torch.bfloat16)``; the backward
    follows the forward's dtypes and the Adam step stays fp32 (parameters and optimizer state are fp32), as in
    ``train.precision=bf16``.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    device, bf16 = ids.device.type, precision == "bf16"

    def train_step() -> None:
        with dense.use_dense_backend(dense_backend):
            if not model.training:
                model.train()
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                loss = _loss(model(ids), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    def inference() -> None:
        with dense.use_dense_backend(dense_backend):
            if model.training:
                model.eval()
            with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                model(ids)

    return train_step, inference


def _timed(function: Callable[[], Any]) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def peak_probes(size: int | None = None) -> tuple[dict[str, Callable[[], float]], list[str]]:
    """Closures returning the FLOP/s of one dense ``size^3`` product each (default :data:`PROBE_SIZE`;
    :data:`PROBES`; the oneDNN one is left out, with a note, where this PyTorch cannot run it, the bf16 one where
    this CPU has no bf16 matrix hardware), and the notes."""
    size = size or PROBE_SIZE
    a, b = torch.randn(size, size), torch.randn(size, size)
    a16, b16 = a.bfloat16(), b.bfloat16()
    products: dict[str, Callable[[], Any]] = {"fp32_aten": lambda: a @ b}
    notes: list[str] = []
    if dense.onednn_available():
        def onednn() -> torch.Tensor:
            with dense.use_dense_backend("onednn"):
                return dense.linear(a, b)                 # a @ b^T: the same 2 size^3 FLOPs
        products["fp32_onednn"] = onednn
    else:
        notes.append("fp32 oneDNN probe skipped: this PyTorch cannot run oneDNN's linear primitive")
    if dense.fast_bf16_available():
        products["bf16"] = lambda: a16 @ b16
    else:
        notes.append(BF16_SLOW_NOTE.format(what="bf16 probe"))
    for product in products.values():
        product()                                         # warm-up: thread pool, oneDNN primitive cache

    def rate(product: Callable[[], Any]) -> Callable[[], float]:
        return lambda: 2.0 * size**3 / _timed(product)

    return {name: rate(product) for name, product in products.items()}, notes


def fastest_fp32(peaks: dict[str, list[float]]) -> list[float]:
    """Per round, the faster of the fp32 probes."""
    fp32 = [peaks[name] for name in PROBES if name.startswith("fp32") and peaks.get(name)]
    return [max(values) for values in zip(*fp32, strict=True)] if fp32 else []


@dataclass
class Measurement:
    """Medians over rounds for one configuration at one length (times in seconds per step).

    ``train_peaks``/``infer_peaks``: per probe name, the FLOP/s it reached right before each timed step.
    ``train_split``: the profiled training step's split (:func:`transevolve.bench.split.profile_split`).
    """

    model: str
    length: int
    batch: int
    parameters: int
    flops_per_token: float
    train_seconds: list[float] = field(default_factory=list)
    infer_seconds: list[float] = field(default_factory=list)
    train_peaks: dict[str, list[float]] = field(default_factory=dict)
    infer_peaks: dict[str, list[float]] = field(default_factory=dict)
    train_memory_mb: float | None = None
    infer_memory_mb: float | None = None
    skipped: str | None = None
    nfe: int | None = None          # function evaluations per forward (adaptive scheme; FLOPs are counted with it)
    base_model: str | None = None   # the line-up's model name (default: ``model``)
    precision: str = "fp32"
    dense_backend: str | None = None
    train_split: dict[str, Any] | None = None

    @property
    def tokens(self) -> int:
        return self.batch * self.length

    def _mfu(self, seconds: list[float], peaks: list[float], multiplier: float) -> float | None:
        if not seconds or not peaks:
            return None
        ratios = [multiplier * self.flops_per_token * self.tokens / t / peak
                  for t, peak in zip(seconds, peaks, strict=False)]
        return statistics.median(ratios)

    def _with_fastest(self, peaks: dict[str, list[float]]) -> dict[str, list[float]]:
        return {**peaks, "fp32_fastest": fastest_fp32(peaks)}

    def summary(self) -> dict[str, Any]:
        """Medians and derived figures (tokens/s, MFU against the probes timed right before each step)."""
        train = statistics.median(self.train_seconds) if self.train_seconds else None
        infer = statistics.median(self.infer_seconds) if self.infer_seconds else None
        train_peaks, infer_peaks = self._with_fastest(self.train_peaks), self._with_fastest(self.infer_peaks)
        own = PRECISION_PEAK.get(self.precision, "fp32_fastest")
        every = {name: train_peaks.get(name, []) + infer_peaks.get(name, []) for name in (*PROBES, "fp32_fastest")}
        split = self.train_split or {}
        return {
            "model": self.model, "base_model": self.base_model or self.model, "precision": self.precision,
            "dense_backend": self.dense_backend, "length": self.length, "batch": self.batch,
            "parameters": self.parameters, "flops_per_token": self.flops_per_token, "skipped": self.skipped,
            "nfe": self.nfe, "train_step_seconds": train, "infer_seconds": infer,
            "train_tokens_per_second": self.tokens / train if train else None,
            "infer_tokens_per_second": self.tokens / infer if infer else None,
            "train_mfu": self._mfu(self.train_seconds, train_peaks["fp32_fastest"], 3.0),
            "infer_mfu": self._mfu(self.infer_seconds, infer_peaks["fp32_fastest"], 1.0),
            "train_mfu_precision": self._mfu(self.train_seconds, train_peaks.get(own, []), 3.0),
            "infer_mfu_precision": self._mfu(self.infer_seconds, infer_peaks.get(own, []), 1.0),
            "peaks_gflops": {name: statistics.median(values) / 1e9 for name, values in every.items() if values},
            "train_split": split.get("fractions"), "train_split_seconds": split.get("seconds"),
            "train_memory_mb": self.train_memory_mb, "infer_memory_mb": self.infer_memory_mb,
            "rounds": len(self.train_seconds),
            "raw": {"train": self.train_seconds, "infer": self.infer_seconds,
                    "peak_flops": every["fp32_fastest"], "peaks": {n: v for n, v in every.items() if v}},
        }


def _out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (CPU allocators raise RuntimeError with such a message)."""
    if isinstance(error, MemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate" in text
                                                or "not enough memory" in text or "failed to allocate" in text)


def run_group(cases: Sequence[Case | ModelSpec], length: int, batch: int, rounds: int, warmup: int = 2,
              log: Callable[[str], None] = print, split: bool = False, max_step_seconds: float | None = None,
              probes: bool = True) -> list[Measurement]:
    """Time every configuration at one length side by side (see the module docstring); a bare
    :class:`ModelSpec` runs in fp32 with the current dense backend. ``split``: profile one more training step
    per configuration after the training rounds and record its time split.

    A configuration is skipped, with the reason in its ``skipped`` field, when ``length`` exceeds its spec's
    ``max_length``, when building or warming it up runs out of memory, or when its first warm-up training step
    takes longer than ``max_step_seconds`` (then its timed rounds would not fit the run's time). ``probes=False``
    times no peak probes (no MFU).
    """
    measurements: list[Measurement] = []
    runners: list[tuple[Measurement, Callable[[], None], Callable[[], None]]] = []
    products = peak_probes()[0] if probes else {}
    for case in map(_as_case, cases):
        spec = case.spec
        path = flop_path(spec.config)
        measurement = Measurement(case.name, length, batch, count_parameters(spec.config).total,
                                  flops_per_token(spec.config, length, path), base_model=spec.name,
                                  precision=case.precision, dense_backend=case.dense_backend)
        measurements.append(measurement)
        if spec.max_length is not None and length > spec.max_length:
            measurement.skipped = f"longer than its max_length {spec.max_length}"
            continue
        try:
            torch.manual_seed(0)
            model = build(spec)
            measurement.parameters = count_model_parameters(model)
            ids, labels = make_batch(spec, batch, length)
            train_step, inference = step_functions(model, ids, labels, case.precision, case.dense_backend)
            for index in range(warmup):
                seconds = _timed(train_step)
                if index == 0 and max_step_seconds is not None and seconds > max_step_seconds:
                    measurement.skipped = (f"one training step took {seconds:.0f} s, over the {max_step_seconds:g} s "
                                           "cap per step")
                    break
                inference()
        except (RuntimeError, MemoryError) as error:
            if not _out_of_memory(error):
                raise
            measurement.skipped = f"out of memory ({str(error).splitlines()[0][:120]})"
        if measurement.skipped:
            log(f"  n={length} {case.name} skipped: {measurement.skipped}")
            continue
        evaluations = getattr(model, "function_evaluations", lambda: None)()
        if evaluations is not None:           # the adaptive scheme: its cost is set by the solver's NFE
            measurement.nfe = evaluations
            measurement.flops_per_token = flops_per_token(spec.config, length, path, nfe=evaluations)
        runners.append((measurement, train_step, inference))
    for phase in ("train", "infer"):
        if phase == "infer":
            if split:
                for measurement, train_step, _ in runners:    # still in training mode and warm
                    measurement.train_split = profile_split(train_step)
                log(f"  n={length} profiled training step split done")
            for _, _, inference in runners:          # back in eval mode: rebuild the random FF weight cache once
                inference()
        for round_index in range(rounds):
            shift = round_index % max(1, len(runners))
            for measurement, train_step, inference in runners[shift:] + runners[:shift]:
                peaks = measurement.train_peaks if phase == "train" else measurement.infer_peaks
                for name, probe in products.items():
                    peaks.setdefault(name, []).append(probe())
                if phase == "train":
                    measurement.train_seconds.append(_timed(train_step))
                else:
                    measurement.infer_seconds.append(_timed(inference))
            log(f"  n={length} {phase} round {round_index + 1}/{rounds} done")
    return measurements


def _memory_subprocess(request: dict[str, Any], timeout: float) -> dict[str, Any] | None:
    """Run ``python -m transevolve.bench.memory`` on ``request``; its JSON answer, None if it failed."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MALLOC_MMAP_THRESHOLD_": "65536"}
    try:
        done = subprocess.run([sys.executable, "-m", "transevolve.bench.memory", json.dumps(request)],
                              capture_output=True, text=True, timeout=timeout, env=env, check=False)
    except subprocess.TimeoutExpired:
        return None
    if done.returncode != 0:
        return None
    answer: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return answer


def measure_memory(spec: ModelSpec, length: int, batch: int, mode: str, timeout: float = 600.0,
                   precision: str = "fp32", dense_backend: str = "auto") -> float | None:
    """Peak MB of one step (``train`` or ``infer``) in a fresh interpreter; None if it failed."""
    answer = _memory_subprocess({"spec": spec.to_dict(), "length": length, "batch": batch, "mode": mode,
                                 "precision": precision, "dense_backend": dense_backend}, timeout)
    return None if answer is None else float(answer["peak_mb"])


def measure_memories(spec: ModelSpec, length: int, batch: int, modes: Sequence[str], timeout: float = 600.0,
                     precision: str = "fp32", dense_backend: str = "auto") -> dict[str, float | None]:
    """Peak MB of one step per mode, all in one fresh interpreter (inference before training, each against its own
    baseline; see :mod:`transevolve.bench.memory`); None for every mode if it failed."""
    ordered = sorted(modes, key=lambda mode: mode != "infer")
    answer = _memory_subprocess({"spec": spec.to_dict(), "length": length, "batch": batch, "modes": ordered,
                                 "precision": precision, "dense_backend": dense_backend}, timeout)
    return {mode: None if answer is None else float(answer["peaks_mb"][mode]) for mode in modes}


def system_info() -> dict[str, Any]:
    """Where the numbers come from."""
    info: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "cpu_count": os.cpu_count(), "python": sys.version.split()[0],
                            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                            "onednn_available": dense.onednn_available(),
                            "dense_backend_auto": dense.resolve_dense_backend("auto")}
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
