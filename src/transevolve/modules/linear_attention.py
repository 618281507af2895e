"""Linear Transformer attention (Katharopoulos, Vyas, Pappas, Fleuret 2020, "Transformers are RNNs: Fast
Autoregressive Transformers with Linear Attention", arXiv 2006.16236).

Legend: ``b`` batch, ``h`` heads, ``n`` queries, ``s`` keys, ``e = d / h`` head width (``d_k = d_v = e``), ``C`` chunk
length, ``m`` new positions while decoding.

The softmax similarity is replaced by a kernel ``phi(q) . phi(k)`` with a positive feature map applied elementwise per
head (``ModelConfig.linear_feature_map``: ``elu`` ``phi(x) = elu(x) + 1``, the paper's; or ``relu``), on
``q = LN(x) W_Q + b_Q``, ``k``, ``v`` as in softmax attention, with **no** ``1 / sqrt(e)`` scaling::

    out_i = phi(q_i)^T S_i / (phi(q_i)^T Z_i + eps),   eps = 1e-6
    S_i = sum_{j in J_i} phi(k_j) v_j^T  (e x e),     Z_i = sum_{j in J_i} phi(k_j)  (e)

``J_i`` is every key (bidirectional: encoders, and cross-attention over a decoder's memory, both "linear over all
keys") or ``j <= i`` (causal: decoders). Padded keys are removed by zeroing ``phi(k_j)``; no other mask is possible.

Paths (``ModelConfig.attention_impl``): ``reference`` forms the explicit kernel matrix ``phi(Q) phi(K)^T`` (``(b, h,
n, s)``, lower-triangular when causal, padded keys zero) and normalises its rows by their sum plus ``eps``; it also
returns those weights. The fast path (every other value) never forms an n x s tensor: bidirectional, the global sums
``S = phi(K)^T V`` ``(b, h, e, e)`` and ``Z`` once; causal, the chunk-wise algorithm (chunks of ``C = 64``): per
chunk, the prefix state of the earlier chunks (an exclusive cumulative sum of per-chunk ``phi(K)^T V``, ``(b, h,
n / C, e, e)``) plus the masked ``C x C`` kernel inside the chunk. Cost per token ``O(e^2 h + C d)`` instead of ``O(n
d)``.

Incremental decoding (:meth:`LinearAttention.step`) is the recurrence ``S_i = S_{i-1} + phi(k_i) v_i^T``, ``Z_i =
Z_{i-1} + phi(k_i)``: the cache holds only ``state`` ``(b, h, e, e)`` and ``normaliser`` ``(b, h, e)`` per layer
evaluation, constant in the length, so every new token costs the same. Cross-attention computes ``S`` and ``Z`` of
the memory once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.cache import StepContext
from transevolve.modules.dense import fused_linear
from transevolve.modules.heads import merge_heads, split_heads
from transevolve.modules.init import add_attention_projections
from transevolve.modules.masks import AttentionMasks

#: Added to the denominator (the reference implementation's value).
EPS = 1e-6
#: Chunk length of the causal fast path.
CHUNK = 64

FEATURE_MAPS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "elu": lambda x: F.elu(x) + 1.0,
    "relu": F.relu,
}

#: The recurrent state of causal linear attention: ``S (b, h, e, e)`` and ``Z (b, h, e)``.
State = tuple[torch.Tensor, torch.Tensor]


def linear_reference(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, causal: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Explicit kernel matrix: ``phi(q) (b, h, n, e)``, ``phi(k) (b, h, s, e)`` (zero at padded keys), ``v (b, h, s,
    e)`` -> ``(b, h, n, e)`` and the normalised kernel ``(b, h, n, s)`` (``n == s`` when causal)."""
    kernel = fq @ fk.transpose(-1, -2)
    if causal:
        kernel = kernel.tril()
    weights = kernel / (kernel.sum(-1, keepdim=True) + EPS)
    return weights @ v, weights


def linear_global(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Bidirectional fast path: ``S = phi(K)^T V``, ``Z = sum_j phi(k_j)`` once -> ``(b, h, n, e)``."""
    return linear_readout(fq, global_state(fk, v))


def global_state(fk: torch.Tensor, v: torch.Tensor) -> State:
    """``S (b, h, e, e)`` and ``Z (b, h, e)`` of every key."""
    return fk.transpose(-1, -2) @ v, fk.sum(-2)


def linear_readout(fq: torch.Tensor, state: State) -> torch.Tensor:
    """``phi(q) (b, h, n, e)`` against one state for every query -> ``(b, h, n, e)``."""
    total, norm = state
    return (fq @ total) / ((fq @ norm.unsqueeze(-1)) + EPS)


def linear_causal(fq: torch.Tensor, fk: torch.Tensor, v: torch.Tensor, state: State | None = None,
                  chunk: int = CHUNK) -> tuple[torch.Tensor, State]:
    """Causal fast path, chunk-wise: ``phi(q), phi(k), v (b, h, n, e)`` -> ``(b, h, n, e)`` and the state after the
    last position. ``state`` is the state before the first position (incremental decoding; None: zero).

    Query ``i`` in chunk ``c`` reads ``S``/``Z`` of every earlier chunk (and ``state``) and the kernel of the keys
    ``j <= i`` of its own chunk; no tensor is larger than ``(b, h, n / C, e, e)`` or ``(b, h, n / C, C, C)``.
    """
    b, h, n, e = fq.shape
    size = min(chunk, n)
    chunks = math.ceil(n / size)
    grow = chunks * size - n
    fq, fk, v = (F.pad(x, (0, 0, 0, grow)).view(b, h, chunks, size, -1) for x in (fq, fk, v))
    totals = (fk.transpose(-1, -2) @ v).cumsum(2)                  # (b, h, chunks, e, e), inclusive prefix sums
    norms = fk.sum(-2).cumsum(2)                                   # (b, h, chunks, e)
    if state is None:
        first_total, first_norm = totals.new_zeros(b, h, 1, e, v.shape[-1]), norms.new_zeros(b, h, 1, e)
    else:
        first_total, first_norm = state[0].unsqueeze(2), state[1].unsqueeze(2)
        totals, norms = totals + first_total, norms + first_norm
    before = torch.cat([first_total, totals[:, :, :-1]], dim=2)    # exclusive: the chunks before (and ``state``)
    norms_before = torch.cat([first_norm, norms[:, :, :-1]], dim=2)
    local = (fq @ fk.transpose(-1, -2)).tril()                     # (b, h, chunks, C, C), keys j <= i of the chunk
    numerator = fq @ before + local @ v
    denominator = (fq @ norms_before.unsqueeze(-1)).squeeze(-1) + local.sum(-1)
    out = numerator / (denominator.unsqueeze(-1) + EPS)
    return out.reshape(b, h, chunks * size, -1)[:, :, :n], (totals[:, :, -1], norms[:, :, -1])


def macs(config: ModelConfig, n: int, path: Literal["fast", "reference"]) -> dict[str, float]:
    """Forward multiply-accumulates per query token with ``n`` keys: ``projections`` (Q, K, V, O: ``4 d^2``) and
    ``attention_n2`` (the attention products; for the fast path they do not grow with ``n``).

    ``reference``: ``2 n d`` (kernel matrix and mixing). Fast, bidirectional: ``2 d e + d`` (``phi(k) v^T`` into
    ``S``, ``phi(q) S``, ``phi(q) . Z``); causal: ``(2 d e + d + 2 C' d) N / n`` with ``C' = min(C, n)`` (plus the
    chunk's kernel and its mixing; ``N`` the length padded to whole chunks). As for sparse attention the registry's
    count has no self/cross or causal argument: ``decoder`` counts the causal form, the encoder kinds the
    bidirectional one, ``encoder_decoder`` the mean of encoder self (bidirectional), decoder self (causal) and cross
    (bidirectional), counted three times by :mod:`transevolve.bench.flops`.
    """
    d, e = config.width, config.head_width
    projections = 4.0 * d * d
    if path == "reference":
        return {"projections": projections, "attention_n2": 2.0 * n * d}
    size = min(CHUNK, n)
    bidirectional = 2.0 * d * e + d
    causal = (bidirectional + 2.0 * size * d) * (math.ceil(n / size) * size / n)
    cost = {"decoder": causal, "encoder_decoder": (2 * bidirectional + causal) / 3}.get(config.kind, bidirectional)
    return {"projections": projections, "attention_n2": cost}


class LinearAttention(nn.Module):
    """Multi-head linear attention with its own pre-LayerNorm (softmax attention's parameters: ``query_proj``,
    ``key_proj``, ``value_proj``, ``output_proj``, ``norm``).

    Args:
        config: model config (width, heads, dropout, epsilon, ``linear_feature_map``, ``attention_impl``).
        cross: keys and values come from the memory instead of the normalised state.
    """

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        d = config.width
        self.num_heads = config.num_heads
        self.cross = cross
        self.feature_map = FEATURE_MAPS[config.linear_feature_map]
        #: ``reference`` (explicit kernel matrix) or the fast path (any other value); may be changed on a built model.
        self.attention_impl = config.attention_impl
        add_attention_projections(self, d, config.layer_norm_eps, config.dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.num_heads)                                       # (b, h, n, e)

    def _keys_values(self, source: torch.Tensor, real: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``source (b, s, d)``, ``real (b, s)`` bool -> ``phi(k)`` zeroed at padding and ``v``, ``(b, h, s, e)``."""
        k, v = (self._heads(x) for x in fused_linear(source, self.key_proj, self.value_proj))
        return self.feature_map(k) * real[:, None, :, None].to(k.dtype), v

    def forward(self, state: torch.Tensor, source: torch.Tensor, masks: AttentionMasks, block: None = None,
                t: float = 0.0, return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state (b, n, d)`` and ``source (b, s, d)`` -> update ``(b, n, d)`` (and the normalised kernel ``(b, h,
        n, s)`` when asked, reference path).

        ``source`` is the state itself for self-attention (its normalised copy is used) and the memory for
        cross-attention; ``masks.causal`` picks prefix sums; ``block`` and ``t`` keep the registry's interface.
        """
        normed = self.norm(state)
        fq = self.feature_map(self._heads(self.query_proj(normed)))
        fk, v = self._keys_values(source if self.cross else normed, ~masks.key_pad)
        weights = None
        if return_weights or self.attention_impl == "reference":
            mixed, weights = linear_reference(fq, fk, v, masks.causal)
        elif masks.causal:
            mixed, _ = linear_causal(fq, fk, v)
        else:
            mixed = linear_global(fq, fk, v)
        return self.dropout(self.output_proj(merge_heads(mixed))), (weights if return_weights else None)

    def step(self, state: torch.Tensor, context: StepContext, t: float = 0.0) -> torch.Tensor:
        """Incremental decoding: ``state (b, m, d)`` new positions -> update ``(b, m, d)``.

        Self-attention (causal) continues ``store[prefix + "state"]`` ``(b, h, e, e)`` and ``store[prefix +
        "normaliser"]`` ``(b, h, e)`` over the new positions (replacing them: the cache does not grow).
        Cross-attention computes them from ``context.memory (b, s, d)`` on the first call.
        """
        store, prefix = context.store, context.prefix
        normed = self.norm(state)
        fq = self.feature_map(self._heads(self.query_proj(normed)))
        if self.cross:
            if prefix + "state" not in store:
                assert context.memory is not None
                fk, v = self._keys_values(context.memory, context.masks.visible[:, 0, 0, :])
                store[prefix + "state"], store[prefix + "normaliser"] = global_state(fk, v)
            mixed = linear_readout(fq, (store[prefix + "state"], store[prefix + "normaliser"]))
        else:
            m = state.shape[1]
            # The last new query sees every key up to itself: its visibility row is the new keys' padding.
            fk, v = self._keys_values(normed, context.masks.visible[:, 0, -1, -m:])
            previous = (store[prefix + "state"], store[prefix + "normaliser"]) if prefix + "state" in store else None
            mixed, (store[prefix + "state"], store[prefix + "normaliser"]) = linear_causal(fq, fk, v, previous)
        return self.dropout(self.output_proj(merge_heads(mixed)))
