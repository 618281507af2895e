"""Decoding speed.

- Cached (incremental) against uncached (prefix recomputed every step) greedy decoding (:func:`run_decode`): each
  family (TransEvolve, softmax Transformer) decodes ``tokens`` tokens greedily with EOS disabled, so both modes do
  exactly the same number of steps; the tokens must agree. Uncached decoding runs the model's full forward on the
  prefix (with ``attention_impl="auto"`` for TransEvolve, its fastest full pass).
- The cost of one cached step against the position it decodes (:func:`run_positions`), causal decoders of one
  shape: softmax (a key/value cache it reads whole), sparse (the same cache, each step gathers only its pattern's
  keys), linear (a constant-size recurrent state) and TransEvolve (block keys, per-layer key bias and values).
  Every model's cache is filled to the position in untimed chunks (``decode_step`` with many tokens at once), then
  ``rounds`` interleaved rounds (rotated order) each time ``steps`` consecutive one-token steps per model; the
  median is reported, with the cache's size. Fed ids are random (no argmax): a step's cost does not depend on them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from transevolve.bench.harness import EFFICIENT_ATTENTIONS
from transevolve.config import ModelConfig
from transevolve.decoding import greedy_search
from transevolve.models import DecodeCache, build_model


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


#: The causal decoders of :func:`run_positions` by default (``transevolve-full-1x<depth>`` decodes through its
#: block-level cache).
POSITION_MODELS = ("transformer", "sparse-strided", "sparse-fixed", "linear", "transevolve-full-1x{depth}")


def position_specs(width: int = 256, heads: int = 4, depth: int = 6, vocab: int = 1000, max_length: int = 8192,
                   names: list[str] | tuple[str, ...] | None = None) -> list[DecodeSpec]:
    """Causal decoders of one shape (width, heads, FF 4x, ``depth`` layers; TransEvolve as one block,
    ``transevolve-full-1x<depth>``) for :data:`POSITION_MODELS` or ``names``."""
    shape = {"kind": "decoder", "vocab_size": vocab, "width": width, "num_heads": heads, "time_dim": width // heads,
             "layers_per_block": depth, "num_blocks": 1, "dropout": 0.0, "max_length": max_length}
    softmax = ModelConfig(attention="softmax", **shape)
    configs = {"transformer": softmax, **{name: softmax.replace(**changes)
                                          for name, changes in EFFICIENT_ATTENTIONS.items()}}
    configs[f"transevolve-full-1x{depth}"] = ModelConfig(attention="evolved", attention_impl="auto", **shape)
    wanted = [name.format(depth=depth) for name in (POSITION_MODELS if names is None else names)]
    unknown = [name for name in wanted if name not in configs]
    if unknown:
        raise ValueError(f"unknown decoding model(s) {unknown}; choose from {sorted(configs)}")
    return [DecodeSpec(name, configs[name]) for name in wanted]


def positions_max_length(positions: list[int], steps: int, rounds: int, warmup: int) -> int:
    """The ``max_length`` a decoder needs for :func:`run_positions`: the last position plus the tokens decoded
    there (warm-up and timed), rounded up to a multiple of 64."""
    needed = max(positions) + warmup + steps * rounds + 1
    return -(-needed // 64) * 64


class _Decoding:
    """One model's incremental decoding at a growing position (``cache.length``)."""

    def __init__(self, spec: DecodeSpec, batch: int, seed: int = 0) -> None:
        torch.manual_seed(0)
        self.spec = spec
        self.model = build_model(spec.config).eval()
        self.cache = DecodeCache()
        self.batch = batch
        self.generator = torch.Generator().manual_seed(seed)

    def _ids(self, count: int) -> torch.Tensor:
        return torch.randint(3, self.spec.config.vocab_size, (self.batch, count), generator=self.generator)

    def fill(self, position: int, chunk: int) -> None:
        """Decode (untimed) up to ``position`` tokens in the cache, ``chunk`` tokens per call."""
        while self.cache.length < position:
            self.model.decode_step(self._ids(min(chunk, position - self.cache.length)), self.cache)

    def step(self) -> float:
        """Seconds of one one-token decoding step."""
        ids = self._ids(1)
        start = time.perf_counter()
        self.model.decode_step(ids, self.cache)
        return time.perf_counter() - start

    def cache_mb(self) -> float:
        """Size of the cached tensors (their valid parts) in MB."""
        tensors = [*self.cache.store.values(), *self.cache.store.constants.values()]
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20


@torch.inference_mode()
def run_positions(specs: list[DecodeSpec], positions: list[int], batch: int = 1, steps: int = 8, rounds: int = 3,
                  warmup: int = 2, chunk: int = 256, log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Time one cached decoding step of every model at each of ``positions`` (tokens already in the cache).

    Per position (ascending): every model's cache is filled to ``position - warmup`` tokens in chunks of ``chunk``,
    ``warmup`` untimed one-token steps follow, then ``rounds`` rounds in rotated order time ``steps`` consecutive
    steps per model (so the last timed step decodes position ``position + rounds * steps - 1``). Returns one row per
    model and position: the median step in ms (``step_ms``), its per-token share (``token_ms = step_ms / batch``),
    the raw step times, the positions timed and the cache size after them (``cache_mb``).
    """
    positions = sorted(set(positions))
    if not positions or positions[0] < warmup + 1:
        raise ValueError(f"positions must be at least warmup + 1 = {warmup + 1}, got {positions}")
    needed = positions_max_length(positions, steps, rounds, warmup)
    short = [spec.name for spec in specs if spec.config.max_length < needed]
    if short:
        raise ValueError(f"max_length of {short} is below the {needed} positions decoded; build them with "
                         "position_specs(max_length=positions_max_length(...))")
    sessions = [_Decoding(spec, batch) for spec in specs]
    rows = []
    for position in positions:
        log(f"decode by position: n={position}, {len(sessions)} models, batch {batch}, {rounds} x {steps} steps")
        for session in sessions:
            session.fill(max(session.cache.length, position - warmup), chunk)
            for _ in range(warmup):
                session.step()
        starts = [session.cache.length for session in sessions]
        times: list[list[float]] = [[] for _ in sessions]
        for round_index in range(rounds):
            shift = round_index % max(1, len(sessions))
            order = list(range(len(sessions)))[shift:] + list(range(len(sessions)))[:shift]
            for index in order:
                times[index] += [sessions[index].step() for _ in range(steps)]
        for session, seconds, start in zip(sessions, times, starts, strict=True):
            median = statistics.median(seconds)
            rows.append({"model": session.spec.name, "attention": session.spec.config.attention,
                         "position": position, "first_position": start,
                         "last_position": session.cache.length - 1, "batch": batch, "steps": len(seconds),
                         "step_ms": 1e3 * median, "token_ms": 1e3 * median / batch,
                         "cache_mb": session.cache_mb(), "raw_ms": [1e3 * t for t in seconds]})
    return rows
