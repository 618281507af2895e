"""Standard pre-LayerNorm multi-head softmax attention (Vaswani et al. 2017, arXiv 1706.03762).

``out = W_O concat_h(softmax(Q_h K_h^T / sqrt(d/h)) V_h)`` with ``Q = LN(x) W_Q + b`` and keys/values from
``LN(x)`` (self-attention) or from the memory (cross-attention; the memory is already normalised by the
encoder's final LayerNorm). The fast path is ``torch.nn.functional.scaled_dot_product_attention``; the explicit
path (used when attention weights are requested) is the reference, and tests prove they agree. :meth:`step` is
incremental decoding with cached keys and values (cross-attention: projected from the memory once).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.cache import StepContext, append_cache
from transevolve.modules.dense import fused_linear
from transevolve.modules.heads import merge_heads, split_heads
from transevolve.modules.init import add_attention_projections
from transevolve.modules.masks import AttentionMasks


class SoftmaxAttention(nn.Module):
    """Multi-head attention sub-layer with its own pre-LayerNorm.

    Args:
        config: model config (width, heads, dropout, epsilon).
        cross: keys and values come from the memory instead of the normalised state.
    """

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        d = config.width
        self.num_heads = config.num_heads
        self.cross = cross
        add_attention_projections(self, d, config.layer_norm_eps, config.dropout)

    _project = staticmethod(fused_linear)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return split_heads(x, self.num_heads)                                          # (b, h, n, d/h)

    def forward(self, state: torch.Tensor, source: torch.Tensor, masks: AttentionMasks, block: None = None,
                t: float = 0.0, return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state (b, q, d)`` and ``source (b, k, d)`` -> update ``(b, q, d)`` (and weights ``(b, h, q, k)``).

        ``source`` is the state itself for self-attention (its normalised copy is used) and the memory for
        cross-attention. ``block`` (no block-level state) and ``t`` (softmax attention does not depend on time)
        keep one interface with every attention mechanism.
        """
        normed = self.norm(state)
        if self.cross:
            q = self._heads(self.query_proj(normed))
            k, v = (self._heads(x) for x in self._project(source, self.key_proj, self.value_proj))
        else:
            q, k, v = (self._heads(x) for x in self._project(normed, self.query_proj, self.key_proj,
                                                              self.value_proj))
        if return_weights:
            logits = (q @ k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
            weights = torch.softmax(logits.masked_fill(~masks.allowed_keys, float("-inf")), dim=-1)
            mixed = weights @ v
        else:
            weights = None
            if bool(masks.key_pad.any()):
                mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=masks.allowed_keys)
            else:                                  # nothing padded: no mask tensor (fused causal kernel)
                mixed = F.scaled_dot_product_attention(q, k, v, is_causal=masks.causal)
        b, _, n_q, _ = mixed.shape
        mixed = mixed.transpose(1, 2).reshape(b, n_q, -1)
        return self.dropout(self.output_proj(mixed)), weights

    def step(self, state: torch.Tensor, context: StepContext, t: float = 0.0) -> torch.Tensor:
        """Incremental decoding: ``state (b, m, d)`` new positions -> update ``(b, m, d)``.

        ``store[prefix + "keys"|"values"]`` ``(b, h, k, d/h)`` grow by the new positions (self-attention) or
        are projected from ``context.memory (b, s, d)`` on the first call (cross-attention).
        """
        store, prefix = context.store, context.prefix
        normed = self.norm(state)
        queries = self._heads(self.query_proj(normed))
        if self.cross:
            if prefix + "keys" not in store:
                assert context.memory is not None
                store[prefix + "keys"] = self._heads(self.key_proj(context.memory))
                store[prefix + "values"] = self._heads(self.value_proj(context.memory))
            keys, values = store[prefix + "keys"], store[prefix + "values"]
        else:
            keys = append_cache(store, prefix + "keys", self._heads(self.key_proj(normed)), dim=2)
            values = append_cache(store, prefix + "values", self._heads(self.value_proj(normed)), dim=2)
        mixed = F.scaled_dot_product_attention(queries, keys, values, attn_mask=context.masks.allowed)
        return self.dropout(self.output_proj(merge_heads(mixed)))
