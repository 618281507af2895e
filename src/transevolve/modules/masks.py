"""Attention masks, built once per forward pass and shared by every layer.

The official TransEvolve code blocks a pair (i, j) when query i or key j is padding (and j > i for causal
self-attention) and adds ``-1e9 * blocked`` to the scores; a padded query row is therefore fully blocked and,
since its scores are all exactly -1e9 in float32, attends uniformly to every key. The evolved attention keeps
that behaviour in every dtype (it changes what a pad-inclusive mean pools; see
:func:`transevolve.modules.evolved_attention.official_masked_logits`). The softmax Transformer blocks only padded
keys and future keys, so no row is ever fully blocked.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from transevolve.config import ModelConfig

#: Value added to blocked scores by the official code (the reference path writes it in).
BLOCKED_SCORE = -1e9


class AttentionMasks:
    """Padding and causality for one attention type (self or cross).

    Args:
        query_pad: ``(b, q)`` bool, True at padded query positions.
        key_pad: ``(b, k)`` bool, True at padded key positions.
        causal: block keys after the query position (requires q == k).
    """

    def __init__(self, query_pad: torch.Tensor, key_pad: torch.Tensor, causal: bool) -> None:
        self.query_pad = query_pad
        self.key_pad = key_pad
        self.causal = causal

    @cached_property
    def blocked(self) -> torch.Tensor:
        """``(b, 1, q, k)`` bool, the official mask: pad(i) OR pad(j) (OR j > i when causal)."""
        blocked = self.query_pad[:, None, :, None] | self.key_pad[:, None, None, :]
        if self.causal:
            blocked = blocked | self._future
        return blocked

    @cached_property
    def blocked_rows(self) -> torch.Tensor:
        """``(b, 1, q, 1)`` bool: rows the official mask blocks entirely (padded query, or no visible key)."""
        return self.blocked.all(-1, keepdim=True)

    @cached_property
    def allowed_keys(self) -> torch.Tensor:
        """``(b, 1, q or 1, k)`` bool, True where a query may attend (padded keys and future keys blocked)."""
        allowed = ~self.key_pad[:, None, None, :]
        if self.causal:
            allowed = allowed & ~self._future
        # A row with no allowed key (an all-pad sequence) attends uniformly instead of producing NaN.
        return allowed | ~allowed.any(-1, keepdim=True)

    @cached_property
    def _future(self) -> torch.Tensor:
        n_q, n_k = self.query_pad.shape[1], self.key_pad.shape[1]
        return torch.ones(n_q, n_k, dtype=torch.bool, device=self.key_pad.device).triu(1)


def visible_keys(key_pad: torch.Tensor, n_q: int, causal: bool) -> torch.Tensor:
    """``(b, 1, q or 1, k)`` bool: key j is visible to query i (not padding, and ``j <= i + k - q`` if causal).

    Queries are the last ``q`` of the ``k`` positions (``q == k`` in a full pass, fewer while decoding).
    """
    visible = ~key_pad[:, None, None, :]
    if causal:
        n_k = key_pad.shape[1]
        rows = torch.arange(n_k - n_q, n_k, device=key_pad.device)
        visible = visible & (torch.arange(n_k, device=key_pad.device)[None, :] <= rows[:, None])
    return visible


def fully_blocked_rows(query_pad: torch.Tensor, key_pad: torch.Tensor, causal: bool) -> torch.Tensor:
    """``(b, q)`` bool: rows the official mask blocks entirely (padded query, or no visible key).

    The official ``-1e9`` mask makes such a row attend uniformly to every key (pads and future keys included).
    """
    real = ~key_pad
    offset = key_pad.shape[1] - query_pad.shape[1]
    seen = real.cumsum(-1)[:, offset:] > 0 if causal else real.any(-1, keepdim=True)
    return query_pad | ~seen


@dataclass
class StepMasks:
    """Masks of ``m`` new query positions against ``k`` keys during incremental decoding.

    Attributes:
        visible: ``(b, 1, m, k)`` bool, not padding and (causal) not in the future.
        blocked_rows: ``(b, 1, m, 1)`` bool, rows the official mask blocks entirely (evolved: uniform).
    """

    visible: torch.Tensor
    blocked_rows: torch.Tensor

    @classmethod
    def build(cls, query_pad: torch.Tensor, key_pad: torch.Tensor, causal: bool) -> StepMasks:
        visible = visible_keys(key_pad, query_pad.shape[1], causal)
        visible = visible.expand(-1, -1, query_pad.shape[1], -1)
        return cls(visible, fully_blocked_rows(query_pad, key_pad, causal)[:, None, :, None])

    @property
    def allowed(self) -> torch.Tensor:
        """Softmax attention's rule: visible keys, or every key for a row that sees none."""
        return self.visible | ~self.visible.any(-1, keepdim=True)


def padding(ids: torch.Tensor) -> torch.Tensor:
    """``(b, n)`` bool, True where ``ids`` is the padding id 0."""
    return ids == 0


def validate_ids(ids: object, config: ModelConfig, name: str) -> torch.Tensor:
    """Check a batch of token ids and return it; raise a clear error on anything else.

    Accepts an integer tensor of shape ``(b, n)`` with ``1 <= n <= max_length`` and values in
    ``[0, vocab_size)``.
    """
    if not isinstance(ids, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of token ids, got {type(ids).__name__}")
    if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer token ids (torch.long), got dtype {ids.dtype}; "
                        "convert with .long() if the values are ids")
    if ids.dim() != 2:
        raise ValueError(f"{name} must have shape (batch, length), got shape {tuple(ids.shape)}; "
                         "use ids[None] for a single sequence")
    if ids.shape[0] == 0 or ids.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(ids.shape)})")
    if ids.shape[1] > config.max_length:
        raise ValueError(f"{name} has length {ids.shape[1]} > max_length={config.max_length}; truncate the "
                         "input or build the model with a larger max_length")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= config.vocab_size:
        raise ValueError(f"{name} holds ids in [{low}, {high}] but the vocabulary is [0, {config.vocab_size}); "
                         "check the tokenizer and vocab_size")
    return ids
