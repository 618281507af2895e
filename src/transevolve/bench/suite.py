"""The benchmark suite behind ``transevolve bench``: presets, the run, and the target checks.

One invocation runs, in this order:

1. throughput groups, one per sequence length, every model side by side (:func:`harness.run_group`);
2. peak memory per model and length in fresh subprocesses (:func:`harness.measure_memory`);
3. an MFU group at width 512, 8 heads, n = 512;
4. cached against uncached greedy decoding, median of interleaved rounds (:mod:`transevolve.bench.decode`);
5. a numerical check that the fast TransEvolve paths reproduce the reference outputs on the benchmark batch.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from transevolve.bench.decode import decode_specs, run_decode
from transevolve.bench.harness import (
    ModelSpec,
    build,
    make_batch,
    measure_memory,
    measurement_dicts,
    model_specs,
    run_group,
    system_info,
)


@dataclass
class SuiteOptions:
    """What to run. :func:`preset` gives the ``quick`` and ``full`` choices."""

    lengths: list[int] = field(default_factory=lambda: [128, 256, 512, 1024, 2048, 4096])
    models: list[str] | None = None
    tokens_per_batch: int = 8192
    rounds: int = 3
    warmup: int = 2
    memory_lengths: list[int] = field(default_factory=lambda: [512, 1024, 2048, 4096])
    memory_models: list[str] | None = None
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

    def batch(self, length: int) -> int:
        return max(1, self.tokens_per_batch // length)


QUICK_MODELS = ["transformer", "x-transformers", "transevolve-full-1x6/reference", "transevolve-full-1x6/factorised",
                "transevolve-full-1x6/low_memory", "transevolve-random-1x6/factorised"]


def preset(name: str) -> SuiteOptions:
    """``full``: the issue's grid (about half an hour on 2 cores); ``quick``: a smoke run under 2 minutes."""
    if name == "full":
        return SuiteOptions()
    if name == "quick":
        return SuiteOptions(lengths=[128, 512], models=QUICK_MODELS, tokens_per_batch=1024, rounds=2, warmup=1,
                            memory_lengths=[512], memory_models=["transformer", "transevolve-full-1x6/factorised",
                                                                 "transevolve-full-1x6/low_memory"],
                            mfu=False, decode_tokens=32, decode_batches=(4,), decode_kinds=("encoder_decoder",),
                            decode_width=128, decode_rounds=1,
                            check_length=128)
    raise ValueError(f"unknown preset {name!r}; choose quick or full")


def _check_fast_paths(specs: list[ModelSpec], length: int, batch: int) -> list[dict[str, Any]]:
    """Max |fast - reference| of eval outputs for every fast TransEvolve spec with a reference sibling."""
    references = {spec.config: spec for spec in specs
                  if spec.config.attention == "evolved" and spec.config.attention_impl == "reference"}
    rows = []
    for spec in specs:
        reference = references.get(spec.config)         # attention_impl is not part of config equality
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


def run_suite(options: SuiteOptions, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run everything in ``options``; returns the JSON-ready results."""
    started = time.perf_counter()
    specs = model_specs(options.width, options.heads, options.depth, options.models)
    results: dict[str, Any] = {"system": system_info(), "options": asdict(options),
                               "models": [spec.to_dict() for spec in specs]}
    throughput = []
    for length in options.lengths:
        batch = options.batch(length)
        log(f"throughput: n={length}, batch {batch}, {len(specs)} models, {options.rounds} rounds")
        throughput += measurement_dicts(run_group(specs, length, batch, options.rounds, options.warmup, log))
    results["throughput"] = throughput
    memory_specs = [s for s in specs if options.memory_models is None or s.name in options.memory_models]
    by_key = {(row["model"], row["length"]): row for row in throughput}
    for length in options.memory_lengths:
        log(f"memory: n={length} ({len(memory_specs)} models x train/infer, one subprocess each)")
        for spec in memory_specs:
            row = by_key.get((spec.name, length))
            if row is None or row["skipped"]:
                continue
            for mode in ("train", "infer"):
                row[f"{mode}_memory_mb"] = measure_memory(spec, length, options.batch(length), mode)
    if options.mfu:
        wide = model_specs(512, 8, options.depth, ["transformer", "x-transformers",
                                                   "transevolve-full-1x6/factorised"])
        batch = options.batch(options.mfu_length)
        log(f"mfu: width 512, 8 heads, n={options.mfu_length}, batch {batch}")
        results["mfu"] = measurement_dicts(run_group(wide, options.mfu_length, batch, options.rounds,
                                                     options.warmup, log))
    if options.decode_tokens:
        results["decode"] = []
        for spec in decode_specs(width=options.decode_width, heads=options.heads, depth=options.depth,
                                 kinds=options.decode_kinds):
            for batch in options.decode_batches:
                log(f"decode: {spec.name}, batch {batch}, {options.decode_tokens} tokens, cached and uncached")
                results["decode"].append(run_decode(spec, options.decode_tokens, batch, rounds=options.decode_rounds))
    log(f"fast-path check at n={options.check_length}")
    results["fast_path_check"] = _check_fast_paths(specs, options.check_length, 2)
    results["seconds"] = time.perf_counter() - started
    return results
