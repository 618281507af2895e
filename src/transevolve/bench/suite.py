"""The benchmark suite behind ``transevolve bench``: presets, the run, and the target checks.

One invocation runs, in this order:

1. throughput groups, one per sequence length, every configuration side by side (:func:`harness.run_group`): each
   model in every requested precision and dense backend (:func:`harness.make_cases`), with the three peak probes
   before every timed step and, at ``split_lengths``, one profiled training step split into products, fused
   attention, optimizer and the rest;
2. peak memory per model and length in fresh subprocesses (:func:`harness.measure_memory`; fp32, the first
   requested dense backend);
3. an MFU group at width 512, 8 heads, n = 512;
4. cached against uncached greedy decoding, median of interleaved rounds (:mod:`transevolve.bench.decode`);
5. the cost of one cached decoding step against the position it decodes, causal decoders of the line-up's shape
   (``decode_positions``; :func:`transevolve.bench.decode.run_positions`);
6. a numerical check that the fast TransEvolve paths (and, with ``check_all_fast_paths``, every fast path of the
   line-up, against a reference sibling built for it) reproduce the reference outputs on the benchmark batch.

Rows that cannot run are skipped with their reason in the row and a line in ``notes``: longer than the model's
``max_length``, out of memory, or (``max_step_seconds``) a first training step over the time cap; their peak memory
is then not measured either.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from transevolve.bench import harness
from transevolve.bench.decode import decode_specs, position_specs, positions_max_length, run_decode, run_positions
from transevolve.bench.harness import (
    BF16_SLOW_NOTE,
    ModelSpec,
    build,
    make_batch,
    make_cases,
    measure_memories,
    measure_memory,
    measurement_dicts,
    model_specs,
    run_group,
    system_info,
)
from transevolve.modules import dense


@dataclass
class SuiteOptions:
    """What to run. :func:`preset` gives the ``quick``, ``full``, ``issue15`` and ``efficient`` choices.

    ``batch_size`` (when set) fixes the batch at every length, else it is ``tokens_per_batch // n``.
    ``precisions`` (``fp32``, ``bf16``) and ``dense_backends`` (``auto``, ``aten``, ``onednn``) multiply the
    configurations (:func:`transevolve.bench.harness.make_cases`). ``memory_models`` (None: the timed models) are
    measured at ``memory_lengths`` in ``memory_modes``, whether or not those lengths are timed. ``split_lengths``
    (None: every timed length) get one profiled training step per configuration.

    ``length_rounds`` overrides ``rounds`` at the lengths it names (fewer rounds at long lengths);
    ``max_step_seconds`` skips a configuration whose first warm-up training step takes longer (None: no cap).
    ``decode_positions`` (empty: skip) times one cached decoding step of the ``decode_position_models`` (None:
    :data:`transevolve.bench.decode.POSITION_MODELS`) as causal decoders of the line-up's shape at those positions,
    batch ``decode_position_batch``, ``decode_position_rounds`` rounds of ``decode_position_steps`` steps.
    ``probes=False`` times no peak probes before the steps (no MFU; saves their time). ``memory_one_process``
    measures a configuration's memory modes in one subprocess (inference first, each step against its own
    baseline) instead of one subprocess per mode. ``crossover`` adds the report's crossover section (each model
    against ``transformer`` over the lengths) in place of the issue targets;
    ``check_all_fast_paths`` checks every fast path of the line-up against a reference sibling (built for the check
    when the line-up has none; TransEvolve, sparse and linear attention).
    """

    lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096])
    models: list[str] | None = None
    tokens_per_batch: int = 8192
    batch_size: int | None = None
    rounds: int = 3
    warmup: int = 2
    precisions: list[str] = field(default_factory=lambda: ["fp32"])
    dense_backends: list[str] = field(default_factory=lambda: ["auto"])
    split_lengths: list[int] | None = field(default_factory=lambda: [512, 2048])
    memory_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    memory_models: list[str] | None = None
    memory_modes: tuple[str, ...] = ("train", "infer")
    mfu: bool = True
    mfu_length: int = 512
    decode_tokens: int = 256
    decode_batches: tuple[int, ...] = (4, 16)
    decode_kinds: tuple[str, ...] = ("encoder_decoder", "decoder")
    decode_width: int = 256
    decode_rounds: int = 3
    check_length: int = 256
    width: int = 256
    heads: int = 4
    depth: int = 6
    length_rounds: dict[int, int] = field(default_factory=dict)
    max_step_seconds: float | None = None
    decode_positions: list[int] = field(default_factory=list)
    decode_position_models: list[str] | None = None
    decode_position_batch: int = 1
    decode_position_steps: int = 8
    decode_position_rounds: int = 3
    crossover: bool = False
    check_all_fast_paths: bool = False
    memory_one_process: bool = False
    probes: bool = True

    def batch(self, length: int) -> int:
        return self.batch_size or max(1, self.tokens_per_batch // length)

    def rounds_at(self, length: int) -> int:
        return self.length_rounds.get(length, self.rounds)


QUICK_MODELS = ["transformer", "x-transformers", "transevolve-full-1x6/reference", "transevolve-full-1x6/factorised",
                "transevolve-full-1x6/low_memory", "transevolve-random-1x6/factorised"]


#: Issue #15's line-up: the library's default paths (``attention_impl="auto"``) against x-transformers.
ISSUE15_MODELS = ["x-transformers", "transformer", "transevolve-full-1x6", "transevolve-random-1x6"]

#: Issue #16's efficient-attention line-up: our Transformer, TransEvolve's fast and low-memory paths, the Sparse
#: Transformer's two patterns and the Linear Transformer.
EFFICIENT_MODELS = ["transformer", "transevolve-full-1x6/factorised", "transevolve-full-1x6/low_memory",
                    "sparse-strided", "sparse-fixed", "linear"]

PRESETS = ("full", "quick", "issue15", "efficient")


def preset(name: str) -> SuiteOptions:
    """``full``: the issue-6 grid (about 36 minutes on 2 quiet cores); ``quick``: a smoke run under 2 minutes;
    ``issue15``: issue #15's shape (batch 4, n = 512 and 2048, fp32 and bf16, both dense backends, the
    low-memory inference memory at n = 4096; about 8 minutes on 2 quiet cores); ``efficient``: issue #16's
    efficient attentions (:data:`EFFICIENT_MODELS`) at n = 512 ... 8192 (8,192 tokens per batch; 2 rounds, 1 at
    n = 8192; no peak probes; a 90 s cap per training step), training and inference memory at every length, and
    the per-token decoding cost at positions 256 ... 8192 (about 15 minutes on 2 quiet cores, see
    benchmarks/README.md)."""
    if name == "full":
        return SuiteOptions()
    if name == "quick":
        return SuiteOptions(lengths=[128, 512], models=QUICK_MODELS, tokens_per_batch=1024, rounds=2, warmup=1,
                            split_lengths=[],
                            memory_lengths=[512], memory_models=["transformer", "transevolve-full-1x6/factorised",
                                                                 "transevolve-full-1x6/low_memory"],
                            mfu=False, decode_tokens=32, decode_batches=(4,), decode_kinds=("encoder_decoder",),
                            decode_width=128, decode_rounds=1,
                            check_length=128)
    if name == "issue15":
        return SuiteOptions(lengths=[512, 2048], models=list(ISSUE15_MODELS), batch_size=4, rounds=5, warmup=2,
                            precisions=["fp32", "bf16"], dense_backends=["aten", "onednn"],
                            split_lengths=[512, 2048], memory_lengths=[4096],
                            memory_models=["transformer", "transevolve-full-1x6/low_memory"],
                            memory_modes=("infer",), mfu=False, decode_tokens=0)
    if name == "efficient":
        lengths = [512, 1024, 2048, 4096, 8192]
        return SuiteOptions(lengths=lengths, models=list(EFFICIENT_MODELS), tokens_per_batch=8192, rounds=2,
                            warmup=1, length_rounds={8192: 1}, max_step_seconds=90.0, probes=False,
                            split_lengths=[], memory_lengths=list(lengths), mfu=False, decode_tokens=0,
                            memory_one_process=True, decode_positions=[256, 1024, 4096, 8192], crossover=True,
                            check_all_fast_paths=True)
    raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")


def _backends(requested: list[str], notes: list[str]) -> list[str]:
    """``requested`` without ``onednn`` where this PyTorch cannot run it (with a note), unless nothing is left."""
    if "onednn" in requested and not dense.onednn_available():
        kept = [name for name in requested if name != "onednn"]
        if kept:
            notes.append("dense backend onednn skipped: this PyTorch cannot run oneDNN's linear primitive")
            return kept
    return requested


def _check_fast_paths(specs: list[ModelSpec], length: int, batch: int, build_references: bool = False
                      ) -> list[dict[str, Any]]:
    """Max |fast - reference| of eval outputs for every fast TransEvolve spec with a reference sibling in ``specs``;
    with ``build_references``, every fast spec of an attention with a reference path (TransEvolve, sparse,
    linear), a sibling built for the check where ``specs`` has none."""
    checked = ("evolved", "sparse", "linear") if build_references else ("evolved",)
    references = {spec.config: spec for spec in specs
                  if spec.config.attention in checked and spec.config.attention_impl == "reference"}
    rows = []
    for spec in specs:
        if spec.external is not None or spec.config.attention not in checked:
            continue
        reference = references.get(spec.config)         # attention_impl is not part of config equality
        if reference is None and build_references and spec.config.attention_impl != "reference":
            reference = ModelSpec(f"{spec.name} (attention_impl=reference)",
                                  spec.config.replace(attention_impl="reference"))
        if reference is None or spec is reference:
            continue
        outputs = []
        for candidate in (reference, spec):
            torch.manual_seed(0)
            model = build(candidate).eval()
            ids, _ = make_batch(candidate, batch, length)
            ids[-1, length // 2:] = 0                    # one padded row: the official fully blocked pad rows
            with torch.no_grad():
                outputs.append(model.encode(ids) if hasattr(model, "encode") else model(ids))
        rows.append({"model": spec.name, "reference": reference.name, "length": length, "batch": batch,
                     "max_abs_error": float((outputs[0] - outputs[1]).abs().max())})
    return rows


def _peak_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Median GFLOP/s of every probe over all timed steps of ``rows``."""
    values: dict[str, list[float]] = {}
    for row in rows:
        for name, peaks in row.get("raw", {}).get("peaks", {}).items():
            values.setdefault(name, []).extend(peaks)
    return {name: statistics.median(peaks) / 1e9 for name, peaks in values.items() if peaks}


def run_suite(options: SuiteOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything in ``options``; returns the JSON-ready results."""
    started = time.perf_counter()
    notes: list[str] = []
    if not dense.onednn_available():
        notes.append("fp32 oneDNN probe skipped: this PyTorch cannot run oneDNN's linear primitive")
    backends = _backends(options.dense_backends, notes)
    if not dense.fast_bf16_available():
        if options.probes:
            notes.append(BF16_SLOW_NOTE.format(what="bf16 probe"))
        if "bf16" in options.precisions:     # asked for: run, but say why those rows are slow
            notes.append("bf16 rows run on PyTorch's fallback kernel: this CPU has no bf16 matrix hardware, so they "
                         "measure that kernel, not bf16 arithmetic")
    specs = model_specs(options.width, options.heads, options.depth, options.models)
    cases = make_cases(specs, options.precisions, backends)
    results: dict[str, Any] = {"system": system_info(), "options": asdict(options),
                               "dense_backends": sorted({case.dense_backend for case in cases}),
                               "models": [spec.to_dict() for spec in specs]}
    throughput = []
    for length in options.lengths:
        batch, rounds = options.batch(length), options.rounds_at(length)
        split = options.split_lengths is None or length in options.split_lengths
        log(f"throughput: n={length}, batch {batch}, {len(cases)} configurations, {rounds} rounds"
            + (", one profiled training step each" if split else ""))
        rows = measurement_dicts(run_group(cases, length, batch, rounds, options.warmup, log, split=split,
                                           max_step_seconds=options.max_step_seconds, probes=options.probes))
        notes += [f"{row['model']} at n={length} skipped: {row['skipped']}" for row in rows if row["skipped"]]
        throughput += rows
    results["throughput"] = throughput
    results["peaks_gflops"], results["probe_size"] = _peak_summary(throughput), harness.PROBE_SIZE
    results["memory"] = _memory(options, specs, backends, throughput, log, notes)
    if options.mfu:
        wide = model_specs(512, 8, options.depth, ["transformer", "x-transformers",
                                                   "transevolve-full-1x6/factorised"])
        batch = options.batch(options.mfu_length)
        log(f"mfu: width 512, 8 heads, n={options.mfu_length}, batch {batch}")
        results["mfu"] = measurement_dicts(run_group(make_cases(wide, options.precisions, backends),
                                                     options.mfu_length, batch, options.rounds, options.warmup,
                                                     log))
    if options.decode_tokens:
        results["decode"] = []
        for spec in decode_specs(width=options.decode_width, heads=options.heads, depth=options.depth,
                                 kinds=options.decode_kinds):
            for batch in options.decode_batches:
                log(f"decode: {spec.name}, batch {batch}, {options.decode_tokens} tokens, cached and uncached")
                results["decode"].append(run_decode(spec, options.decode_tokens, batch, rounds=options.decode_rounds))
    if options.decode_positions:
        results["decode_by_position"] = _decode_positions(options, log)
    log(f"fast-path check at n={options.check_length}")
    results["fast_path_check"] = _check_fast_paths(specs, options.check_length, 2, options.check_all_fast_paths)
    results["notes"] = notes
    results["seconds"] = time.perf_counter() - started
    return results


def _decode_positions(options: SuiteOptions, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Per-token decoding cost against position (causal decoders of the line-up's width, heads and depth)."""
    steps, rounds, warmup = options.decode_position_steps, options.decode_position_rounds, 2
    max_length = positions_max_length(options.decode_positions, steps, rounds, warmup)
    specs = position_specs(options.width, options.heads, options.depth, max_length=max_length,
                           names=options.decode_position_models)
    return run_positions(specs, options.decode_positions, batch=options.decode_position_batch, steps=steps,
                         rounds=rounds, warmup=warmup, log=log)


def _memory(options: SuiteOptions, specs: list[ModelSpec], backends: list[str], throughput: list[dict[str, Any]],
            log: Callable[[str], None], notes: list[str] | None = None) -> list[dict[str, Any]]:
    """Peak memory rows (fp32, the first requested dense backend); each also fills the matching throughput row.

    A configuration whose timed row at that length was skipped (out of memory, over the time cap) is not measured;
    a measurement that fails (the subprocess ran out of memory, crashed or took over 10 minutes) is None. Both
    add a line to ``notes``.
    """
    if not options.memory_lengths or not options.memory_modes:
        return []
    notes = notes if notes is not None else []
    names = options.memory_models if options.memory_models is not None else [spec.name for spec in specs]
    memory_specs = model_specs(options.width, options.heads, options.depth, names) if names else []
    rows = []
    for length in options.memory_lengths:
        log(f"memory: n={length} ({len(memory_specs)} models x {'/'.join(options.memory_modes)}, one subprocess "
            "each)")
        for case in make_cases(memory_specs, ["fp32"], backends[:1]):
            if case.spec.max_length is not None and length > case.spec.max_length:
                continue
            matching = [timed for timed in throughput
                        if (timed["base_model"], timed["length"], timed["precision"], timed["dense_backend"]) == (
                            case.spec.name, length, "fp32", case.dense_backend)]
            skipped = next((timed["skipped"] for timed in matching if timed["skipped"]), None)
            if skipped:
                notes.append(f"peak memory of {case.name} at n={length} not measured: its timed row was skipped "
                             f"({skipped})")
                continue
            row: dict[str, Any] = {"model": case.name, "base_model": case.spec.name, "length": length,
                                   "batch": options.batch(length), "precision": "fp32",
                                   "dense_backend": case.dense_backend}
            if options.memory_one_process:
                peaks = measure_memories(case.spec, length, row["batch"], options.memory_modes,
                                         dense_backend=case.dense_backend)
            else:
                peaks = {mode: measure_memory(case.spec, length, row["batch"], mode, dense_backend=case.dense_backend)
                         for mode in options.memory_modes}
            for mode in options.memory_modes:
                row[f"{mode}_memory_mb"] = peaks[mode]
                if row[f"{mode}_memory_mb"] is None:
                    notes.append(f"peak {mode} memory of {case.name} at n={length} failed (out of memory, error or "
                                 "over 10 minutes)")
            rows.append(row)
            for timed in matching:
                timed.update({key: row[key] for key in row if key.endswith("_memory_mb")})
    return rows
