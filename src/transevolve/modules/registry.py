"""Attention mechanisms, registered in one place: name -> modules, parameter count, FLOP count, decode cache.

The trunk (:mod:`transevolve.models`) talks to every mechanism through one interface:

- a per-layer module ``layer(config, cross, times)`` with ``forward(state, source, masks, block_state, t,
  return_weights) -> (update (b, q, d), weights (b, h, q, k) or None)`` and ``step(state, context, t) -> update``
  (incremental decoding with a :class:`~transevolve.modules.cache.StepContext`);
- optionally a per-block module ``block(config)`` shared by the block's layers, with ``block_state(query_source,
  key_source, masks, impl, need_weights)`` and ``step_state(x, store, prefix, memory)`` (evolved attention's
  once-per-block query-key interaction); its state is handed to every layer of the block.

Parameter and FLOP counts are read from here by :mod:`transevolve.params` and :mod:`transevolve.bench.flops`, so a
new mechanism is one module plus one :func:`register_attention` call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from transevolve.config import ModelConfig

Path = Literal["fast", "reference"]
Costs = dict[str, float]


@dataclass(frozen=True)
class AttentionSpec:
    """One attention mechanism.

    Attributes:
        name: the config value (``ModelConfig.attention``).
        layer: ``(config, cross, times) -> module``, the per-layer sub-layer.
        block: ``config -> module`` built once per block and attention type (self/cross), or None.
        layer_parameters: ``(config, cross) -> int``, trainable parameters of one per-layer module.
        block_parameters: ``(config, cross) -> int``, of one per-block module (0 without one).
        layer_macs: ``(config, n, path) -> {"projections", "attention_n2"}``, forward multiply-accumulates per query
            token of one evaluation of the per-layer module with ``n`` keys.
        block_macs: the same for the per-block module (empty without one).
        cache: what incremental decoding caches, in words (shown by ``transevolve params``/docs).
        citation: where the mechanism comes from.
    """

    name: str
    layer: Callable[[ModelConfig, bool, tuple[float, ...]], nn.Module]
    layer_parameters: Callable[[ModelConfig, bool], int]
    layer_macs: Callable[[ModelConfig, int, Path], Costs]
    block: Callable[[ModelConfig], nn.Module] | None = None
    block_parameters: Callable[[ModelConfig, bool], int] = lambda config, cross: 0
    block_macs: Callable[[ModelConfig, int, Path], Costs] = lambda config, n, path: {}
    cache: str = ""
    citation: str = ""


ATTENTIONS: dict[str, AttentionSpec] = {}


def register_attention(spec: AttentionSpec) -> AttentionSpec:
    ATTENTIONS[spec.name] = spec
    return spec


def get_attention(name: str) -> AttentionSpec:
    """The registered mechanism ``name``; an unknown name lists the known ones."""
    if name not in ATTENTIONS:
        raise ValueError(f"unknown attention {name!r}; known attention mechanisms: {sorted(ATTENTIONS)}")
    return ATTENTIONS[name]


def _norm(config: ModelConfig) -> int:
    return 2 * config.width


# -- softmax (the standard Transformer) ------------------------------------------------------------------------
def _softmax_layer(config: ModelConfig, cross: bool, times: tuple[float, ...]) -> nn.Module:
    from transevolve.modules.softmax_attention import SoftmaxAttention

    return SoftmaxAttention(config, cross=cross)


register_attention(AttentionSpec(
    name="softmax",
    layer=_softmax_layer,
    layer_parameters=lambda c, cross: 4 * (c.width * c.width + c.width) + _norm(c),   # Q, K, V, O + pre-LN
    layer_macs=lambda c, n, path: {"projections": 4 * c.width * c.width, "attention_n2": 2 * n * c.width},
    cache="keys and values per layer (b, h, n, d/h); cross-attention: projected from the memory once",
    citation="Vaswani et al. 2017, arXiv 1706.03762",
))


# -- evolved (TransEvolve) -------------------------------------------------------------------------------------
def _evolved_layer(config: ModelConfig, cross: bool, times: tuple[float, ...]) -> nn.Module:
    from transevolve.modules.evolved_attention import EvolvedAttention

    return EvolvedAttention(config, times)


def _evolved_block(config: ModelConfig) -> nn.Module:
    from transevolve.modules.evolved_attention import BlockInteraction

    return BlockInteraction(config)


def _interaction_parameters(c: ModelConfig, cross: bool) -> int:
    big = c.score_width
    query = big * big                                          # token part (D, d) + time part (D, h t)
    key = big * big if c.fidelity == "official" else big * c.width
    return query + key


def _evolved_layer_macs(c: ModelConfig, n: int, path: Path) -> Costs:
    d, h, big, ht = c.width, c.num_heads, c.score_width, c.num_heads * c.time_dim
    if path == "fast":
        return {"projections": d * d + big * h, "attention_n2": n * (d + h)}
    inert = ht if c.fidelity == "official" else 0                  # the query bias rho . tau(t), per layer
    return {"projections": d * d + ht + inert, "attention_n2": n * d}


def _evolved_block_macs(c: ModelConfig, n: int, path: Path) -> Costs:
    d, big, ht = c.width, c.score_width, c.num_heads * c.time_dim
    if path == "fast":
        return {"projections": 2 * d * big, "attention_n2": n * big}
    inert = big * ht if c.fidelity == "official" else 0
    return {"projections": 2 * d * big + big * ht + inert, "attention_n2": n * big}


register_attention(AttentionSpec(
    name="evolved",
    layer=_evolved_layer,
    layer_parameters=lambda c, cross: c.width * c.width + c.width + _norm(c),        # W_O, theta, value LN
    layer_macs=_evolved_layer_macs,
    block=_evolved_block,
    block_parameters=_interaction_parameters,
    block_macs=_evolved_block_macs,
    cache="per block: keys K (b, h, n, D/h); per layer and stage: key bias (b, h, n) and normalised values",
    citation="Dutta et al. 2021, arXiv 2109.15142 (TransEvolve)",
))


# -- minimal (Bermeitinger et al.: collapsed / symmetric / identity projections) -------------------------------
def _minimal_layer(config: ModelConfig, cross: bool, times: tuple[float, ...]) -> nn.Module:
    from transevolve.modules.minimal_attention import MinimalAttention

    return MinimalAttention(config, cross=cross)


def _minimal_parameters(c: ModelConfig, cross: bool) -> int:
    from transevolve.modules.minimal_attention import qk_parameters, vo_parameters

    return qk_parameters(c) + vo_parameters(c) + _norm(c)


def _minimal_macs(c: ModelConfig, n: int, path: Path) -> Costs:
    from transevolve.modules.minimal_attention import minimal_macs

    return minimal_macs(c, n)


register_attention(AttentionSpec(
    name="minimal",
    layer=_minimal_layer,
    layer_parameters=_minimal_parameters,             # Q/K form + V/O form (ModelConfig.qk_form, vo_form) + pre-LN
    layer_macs=_minimal_macs,
    cache="per layer: projected keys (b, h, n, d/h) (qk separate/symmetric), projected values (b, h, n, d/h) "
          "(vo separate), normalised inputs (b, n, d) (qk collapsed, vo collapsed/identity); cross-attention: "
          "projected from the memory once, unprojected forms read the memory",
    citation="Bermeitinger et al. 2024, arXiv 2410.13732 (Reducing the Transformer Architecture to a Minimum)",
))


# -- sparse (Sparse Transformer: strided / fixed patterns) -----------------------------------------------------
def _sparse_layer(config: ModelConfig, cross: bool, times: tuple[float, ...]) -> nn.Module:
    from transevolve.modules.softmax_attention import SoftmaxAttention
    from transevolve.modules.sparse_attention import SparseAttention

    # Cross-attention is dense softmax over the memory: the patterns are defined on one sequence's positions.
    return SoftmaxAttention(config, cross=True) if cross else SparseAttention(config, times)


def _sparse_macs(c: ModelConfig, n: int, path: Path) -> Costs:
    from transevolve.modules.sparse_attention import macs

    return macs(c, n, path)


register_attention(AttentionSpec(
    name="sparse",
    layer=_sparse_layer,
    layer_parameters=lambda c, cross: 4 * (c.width * c.width + c.width) + _norm(c),   # Q, K, V, O + pre-LN
    layer_macs=_sparse_macs,                        # fast: ~ (l + n / l) keys per query (strided), see sparse_attention
    cache="keys and values per layer (b, h, n, d/h), each step reads only its pattern's positions; cross-attention "
          "(dense softmax): projected from the memory once",
    citation="Child et al. 2019, arXiv 1904.10509 (Generating Long Sequences with Sparse Transformers)",
))


# -- linear (Linear Transformer: elu + 1 feature map, prefix sums) ---------------------------------------------
def _linear_layer(config: ModelConfig, cross: bool, times: tuple[float, ...]) -> nn.Module:
    from transevolve.modules.linear_attention import LinearAttention

    return LinearAttention(config, cross=cross)


def _linear_macs(c: ModelConfig, n: int, path: Path) -> Costs:
    from transevolve.modules.linear_attention import macs

    return macs(c, n, path)


register_attention(AttentionSpec(
    name="linear",
    layer=_linear_layer,
    layer_parameters=lambda c, cross: 4 * (c.width * c.width + c.width) + _norm(c),   # Q, K, V, O + pre-LN
    layer_macs=_linear_macs,                        # fast: ~ 2 d (d/h) per token instead of 2 n d
    cache="per layer: the recurrent state S (b, h, d/h, d/h) and normaliser Z (b, h, d/h), constant in the length; "
          "cross-attention: S and Z of the memory, once",
    citation="Katharopoulos et al. 2020, arXiv 2006.16236 (Transformers are RNNs)",
))
