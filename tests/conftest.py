"""Shared helpers for the model-trunk tests: tiny configs, the variant grid and padded random batches.

Everything here is CPU-sized: width 64, 2 heads, 2 blocks of 2 layers, vocabulary 31.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from transevolve import ModelConfig

# Under pytest-xdist every worker is its own process: one intra-op thread each avoids oversubscribing the cores
# (tiny tensors are much slower with competing OpenMP thread pools).
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

FIXTURES = Path(__file__).parent / "fixtures" / "official-tf"

TINY: dict[str, Any] = {
    "vocab_size": 31,
    "width": 64,
    "num_heads": 2,
    "time_dim": 32,
    "layers_per_block": 2,
    "num_blocks": 2,
    "dropout": 0.0,
    "max_length": 64,
}

KINDS = ("encoder_decoder", "encoder", "classifier", "decoder")
ATTENTIONS = ("evolved", "softmax")
FF_TYPES = ("full", "random")
FIDELITIES = ("official", "lean")


def tiny_config(**overrides: Any) -> ModelConfig:
    """A tiny valid config; ``overrides`` replace any field (a classifier gets 3 classes unless told)."""
    values = {**TINY, **overrides}
    if values.get("kind") == "classifier" and "num_classes" not in overrides:
        values["num_classes"] = 3
    return ModelConfig(**values)


@dataclass(frozen=True)
class Variant:
    """One point of the variant grid."""

    kind: str
    attention: str
    ff_type: str
    fidelity: str
    num_classes: int | None = None

    @property
    def id(self) -> str:
        parts = [self.kind, self.attention, self.ff_type, self.fidelity]
        if self.num_classes is not None:
            parts.append(f"c{self.num_classes}")
        return "-".join(parts)

    def config(self, **overrides: Any) -> ModelConfig:
        values: dict[str, Any] = {"kind": self.kind, "attention": self.attention, "ff_type": self.ff_type,
                                  "fidelity": self.fidelity, "num_classes": self.num_classes}
        values.update(overrides)
        return tiny_config(**values)


def _fidelity_matters(attention: str, ff_type: str) -> bool:
    return attention == "evolved" or ff_type == "random"


def _variants() -> list[Variant]:
    variants: list[Variant] = []
    for kind, attention, ff_type, fidelity in itertools.product(KINDS, ATTENTIONS, FF_TYPES, FIDELITIES):
        if fidelity == "lean" and not _fidelity_matters(attention, ff_type):
            continue  # softmax + full FF: fidelity changes nothing, keep the official one only
        variants.append(Variant(kind, attention, ff_type, fidelity, 3 if kind == "classifier" else None))
    # Binary classifiers: one sigmoid unit.
    variants.append(Variant("classifier", "evolved", "random", "official", 2))
    variants.append(Variant("classifier", "softmax", "full", "official", 2))
    return variants


#: Every variant of the trunk (deduplicated: fidelity only matters for evolved attention or random FF).
ALL_VARIANTS: list[Variant] = _variants()


def variant_params(variants: list[Variant] | None = None) -> list[Any]:
    """``pytest.param`` entries with readable ids."""
    return [pytest.param(v, id=v.id) for v in (ALL_VARIANTS if variants is None else variants)]


def random_ids(batch: int, length: int, vocab_size: int, lengths: list[int] | None = None,
               start_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(batch, length)`` int64 ids in ``[1, vocab)`` with trailing padding (id 0) after ``lengths[i]`` tokens.

    By default row 0 is unpadded and the others are padded to varied lengths; the first token is never padding.
    ``start_id`` (e.g. 1 for decoder inputs) replaces the first token of every row.
    """
    if generator is None:
        generator = torch.Generator().manual_seed(1234)
    if lengths is None:
        lengths = [max(1, length - (i * (length // 3 + 1)) % length) for i in range(batch)]
    if len(lengths) != batch or not all(1 <= n <= length for n in lengths):
        raise ValueError(f"bad lengths {lengths} for batch {batch}, length {length}")
    ids = torch.randint(1, vocab_size, (batch, length), generator=generator)
    for row, n in enumerate(lengths):
        ids[row, n:] = 0
    if start_id is not None:
        ids[:, 0] = start_id
    return ids


def model_inputs(config: ModelConfig, batch: int = 3, length: int = 9, tgt_length: int = 7,
                 padded: bool = True, seed: int = 1234) -> tuple[torch.Tensor, ...]:
    """The positional arguments of ``model(...)`` for ``config.kind``: ``(src, tgt)`` or ``(ids,)``."""
    generator = torch.Generator().manual_seed(seed)

    def make(n: int, start_id: int | None) -> torch.Tensor:
        lengths = None if padded else [n] * batch
        return random_ids(batch, n, config.vocab_size, lengths, start_id, generator)

    if config.kind == "encoder_decoder":
        return make(length, None), make(tgt_length, 1)
    if config.kind == "decoder":
        return (make(length, 1),)
    return (make(length, None),)


def expected_output_shape(config: ModelConfig, inputs: tuple[torch.Tensor, ...]) -> tuple[int, ...]:
    b = inputs[0].shape[0]
    if config.kind == "encoder_decoder":
        return (b, inputs[1].shape[1], config.vocab_size)
    if config.kind == "decoder":
        return (b, inputs[0].shape[1], config.vocab_size)
    if config.kind == "encoder":
        return (b, inputs[0].shape[1], config.width)
    assert config.num_classes is not None
    return (b, 1 if config.num_classes == 2 else config.num_classes)
