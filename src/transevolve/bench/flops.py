"""Analytic cost model: parameters (re-exported from :mod:`transevolve.params`) and FLOPs per token.

Counting convention: 2 FLOPs per multiply-accumulate of every matrix product of one forward pass, the n x n
attention products included (full n x n also for causal attention, as the implementations compute it);
elementwise work (softmax, exponentials, norms, activations) is not counted. A training step is counted as
3x the forward (backward = 2x forward), as in nanoGPT / PaLM MFU accounting.

Per token of a sequence of length n (``d`` width, ``f`` FF width, ``h`` heads, ``D = d + h t``, ``L`` layers per
block, ``N`` blocks), forward multiply-accumulates:

- Transformer layer: ``4 d^2`` (Q, K, V, O) ``+ 2 n d`` (``QK^T`` and ``PV``) ``+ 2 d f`` (FF).
- TransEvolve block (self): ``2 d D`` (Q and K at width D) ``+ D h t`` (key-side time term kappa) ``+ n D`` (A0);
  the official code's inert query-side term adds ``D h t`` (``include_inert=True``; the fast paths skip it).
- TransEvolve layer: ``d^2`` (W_O) ``+ n (d + h)`` (``E [w V, w]``; the reference's ``P V`` is ``n d``) ``+ h t``
  (key bias) ``+ 2 d f`` (FF; randomFF has the same per-token cost plus the once-per-forward construction of its
  weights, which is not per token and not counted).
- Cross-attention (decoders with a memory of ``s = n`` tokens): Transformer ``4 d^2 + 2 n d``; TransEvolve block
  ``2 d D + D h t + n D`` and per layer ``d^2 + n (d + h) + h t``.
- Heads: the tied output projection ``d V`` per target token (encoder-decoder, decoder); the classifier head
  ``d C / n``.

With width 256, 4 heads, FF 1024, 6 layers (t = 64, so D = 2d and ``h t = d``), the TransEvolve 1x6 encoder costs
``60 d^2 + 8 n d`` against ``72 d^2 + 12 n d``: ratios 1.26x at n = 512 and 1.36x at n = 2048.
"""

from __future__ import annotations

from transevolve.config import ModelConfig
from transevolve.params import ParameterCount, count_parameters

__all__ = ["ParameterCount", "count_parameters", "flop_breakdown", "flops_per_token"]


def _self_stack(c: ModelConfig, n: int, include_inert: bool) -> dict[str, float]:
    """Forward MACs per token of one stack's self-attention and FF parts, by component."""
    d, f, h, big, ht = c.width, c.ff_width, c.num_heads, c.score_width, c.num_heads * c.time_dim
    depth, blocks = c.depth, c.num_blocks
    parts = {"feed_forward": depth * 2 * d * f}
    if c.attention == "softmax":
        parts["projections"] = depth * 4 * d * d
        parts["attention_n2"] = depth * 2 * n * d
        return parts
    parts["projections"] = blocks * (2 * d * big + big * ht * (2 if include_inert else 1)) + depth * (d * d + ht)
    parts["attention_n2"] = blocks * n * big + depth * n * (d + h)
    return parts


def _cross(c: ModelConfig, n: int) -> dict[str, float]:
    """Forward MACs per target token of the cross-attention (memory of ``n`` tokens), by component."""
    d, h, big, ht = c.width, c.num_heads, c.score_width, c.num_heads * c.time_dim
    depth, blocks = c.depth, c.num_blocks
    if c.attention == "softmax":
        return {"projections": depth * 4 * d * d, "attention_n2": depth * 2 * n * d}
    return {"projections": blocks * (2 * d * big + big * ht) + depth * (d * d + ht),
            "attention_n2": blocks * n * big + depth * n * (d + h)}


def flop_breakdown(config: ModelConfig, seq_len: int, include_inert: bool = False) -> dict[str, float]:
    """Forward FLOPs per token by component (``projections``, ``attention_n2``, ``feed_forward``, ``head``).

    Encoder-decoder: per target token with source and target both ``seq_len`` long (encoder + decoder + logits).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    total: dict[str, float] = {"projections": 0.0, "attention_n2": 0.0, "feed_forward": 0.0, "head": 0.0}

    def add(parts: dict[str, float]) -> None:
        for key, value in parts.items():
            total[key] += value

    if config.has_encoder:
        add(_self_stack(config, seq_len, include_inert))
    if config.has_decoder:
        add(_self_stack(config, seq_len, include_inert))
        if config.kind == "encoder_decoder":
            add(_cross(config, seq_len))
        total["head"] += config.width * config.vocab_size
    if config.kind == "classifier":
        assert config.num_classes is not None
        outputs = 1 if config.num_classes == 2 else config.num_classes
        total["head"] += config.width * outputs / seq_len
    return {key: 2.0 * value for key, value in total.items()}


def flops_per_token(config: ModelConfig, seq_len: int, include_inert: bool = False) -> float:
    """Forward FLOPs per token of ``config`` at sequence length ``seq_len`` (a training step: 3x this)."""
    return sum(flop_breakdown(config, seq_len, include_inert).values())
