"""Decoding speed: cached (incremental) against uncached (prefix recomputed every step) greedy decoding.

Each family (TransEvolve, softmax Transformer) decodes ``tokens`` tokens greedily with EOS disabled, so both
modes do exactly the same number of steps; the tokens must agree. Uncached decoding runs the model's full
forward on the prefix (with ``attention_impl="auto"`` for TransEvolve, its fastest full pass).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from transevolve.config import ModelConfig
from transevolve.decoding import greedy_search
from transevolve.models import build_model


@dataclass(frozen=True)
class DecodeSpec:
    name: str
    config: ModelConfig


def decode_specs(width: int = 256, heads: int = 4, depth: int = 6, vocab: int = 1000, max_length: int = 1024,
                 kinds: tuple[str, ...] = ("encoder_decoder", "decoder")) -> list[DecodeSpec]:
    """Both families at one shape, encoder-decoder and decoder-only."""
    shape = {"vocab_size": vocab, "width": width, "num_heads": heads, "time_dim": width // heads,
             "layers_per_block": depth, "num_blocks": 1, "dropout": 0.0, "max_length": max_length}
    specs = []
    for kind in kinds:
        specs.append(DecodeSpec(f"transevolve/{kind}", ModelConfig(kind=kind, attention="evolved",
                                                                   attention_impl="auto", **shape)))
        specs.append(DecodeSpec(f"transformer/{kind}", ModelConfig(kind=kind, attention="softmax", **shape)))
    return specs


def run_decode(spec: DecodeSpec, tokens: int, batch: int = 4, source_length: int = 32, rounds: int = 3
               ) -> dict[str, Any]:
    """Time cached and uncached greedy decoding of ``tokens`` tokens, each the median of ``rounds`` runs
    (interleaved: cached, uncached, cached, ...); returns seconds, speed-up and whether the tokens agree."""
    torch.manual_seed(0)
    model = build_model(spec.config).eval()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, spec.config.vocab_size, (batch, source_length), generator=generator)
    if spec.config.kind == "encoder_decoder":
        inputs: dict[str, torch.Tensor] = {"src": ids}
    else:
        ids[:, 0] = 1
        inputs = {"prompt": ids[:, :8]}
    greedy_search(model, **inputs, max_new_tokens=4, eos_id=None)                 # warm-up
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs = {}
    for _ in range(rounds):
        for use_cache in (True, False):
            start = time.perf_counter()
            outputs[use_cache] = greedy_search(model, **inputs, max_new_tokens=tokens, eos_id=None,
                                               use_cache=use_cache)
            times[use_cache].append(time.perf_counter() - start)
    cached, uncached = statistics.median(times[True]), statistics.median(times[False])
    return {"model": spec.name, "tokens": tokens, "batch": batch, "rounds": rounds, "cached_seconds": cached,
            "uncached_seconds": uncached, "speedup": uncached / cached,
            "same_tokens": bool(torch.equal(outputs[True].tokens, outputs[False].tokens)),
            "cached_tokens_per_second": batch * tokens / cached,
            "raw": {"cached": times[True], "uncached": times[False]}}
