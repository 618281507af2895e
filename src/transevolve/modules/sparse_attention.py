"""Sparse Transformer attention (Child, Gray, Radford, Sutskever 2019, "Generating Long Sequences with Sparse
Transformers", arXiv 1904.10509): softmax attention in which query ``i`` reads only the keys of a fixed set ``S_i``.

Legend: ``b`` batch, ``h`` heads, ``n`` positions, ``e = d / h`` head width, ``l`` block length
(``ModelConfig.sparse_block_size``), ``c`` summary width (``sparse_summary``), ``nb = ceil(n / l)`` blocks,
``N = nb l`` (the length padded to whole blocks), ``m`` new positions while decoding.

Patterns (0-based positions, query ``i``, key ``j``), each the union of two sets ``A1`` and ``A2``:

- ``strided``: ``A1(i) = {j : 0 <= i - j < l}`` (the previous ``l`` positions, ``i`` included) and
  ``A2(i) = {j <= i : (i - j) mod l = 0}`` (every ``l``-th position back).
- ``fixed``: ``A1(i) = {j <= i : floor(j / l) = floor(i / l)}`` (the query's block) and
  ``A2(i) = {j <= i : j mod l >= l - c}`` (the last ``c`` "summary" positions of every block).

That is the causal form (decoders). Encoders use the same sets without ``j <= i`` (the bidirectional pattern):
``strided`` ``A1 = {j : |i - j| < l}``, ``A2 = {j : (i - j) mod l = 0}``; ``fixed`` ``A1`` = the whole block of ``i``,
``A2`` = the summary positions of every block, later blocks included.

``sparse_combine`` picks how the sets are used (Child et al. section 4.3): ``merged`` ``S_i = A1(i) | A2(i)`` for
every head and layer (default); ``heads``: the first ``ceil(h / 2)`` heads use ``A1``, the others ``A2``;
``interleaved``: the distinct layers of a block alternate (the layer holding weights ``j`` of its block uses ``A1``
for even ``j``, ``A2`` for odd ``j``; layers sharing weights share the set, and every block restarts at ``A1``). When
``A2`` of ``fixed`` is used alone it also holds ``i`` itself, so that no query (e.g. the first of a causal sequence)
is left without keys.

The attention of one head, ``q = LN(x) W_Q + b_Q`` etc. as in softmax attention::

    out_i = sum_{j in S_i, j not padding} softmax_j(q_i . k_j / sqrt(e)) v_j

A query whose set holds only padding (a padded query) attends over its whole set, pads included (never NaN).

Paths (``ModelConfig.attention_impl``): ``reference`` forms the full ``(b, h, n, n)`` logits and masks them with the
pattern. The fast path (every other value) never forms an n x n tensor: the sequence is cut into ``nb`` blocks of
``l`` and each query block reads only its *near* keys (``strided``: the previous (and, in encoders, the next) block
and its own, ``2 l`` or ``3 l`` keys; ``fixed``: its own block, ``l`` keys) as batched block matmuls, plus its *far*
keys (``strided``: the keys at the same offset in every other block, ``nb`` keys, computed in a transposed
``(l, nb)`` layout; ``fixed``: the ``c`` summary keys of every other block, ``nb c`` keys), with one softmax over both
groups. Membership is decided by the same set definition as the reference (:meth:`SparsePattern.contains`), so the
two paths compute the same function; cost per query ``O(l + n / l)`` (``strided``) or ``O(l + c n / l)``
(``fixed``) instead of ``O(n)``. A pattern that uses only ``A1`` skips the far keys.

Cross-attention of a decoder with a memory is dense softmax attention over the memory (the registry builds
:class:`~transevolve.modules.softmax_attention.SoftmaxAttention` for it): the patterns are defined on the positions
of one sequence, and a memory has no order relative to the decoder's positions.

Incremental decoding (:meth:`SparseAttention.step`) caches keys and values ``(b, h, n, e)`` like softmax attention;
each step gathers only the cached positions that its new queries' sets contain (one new token: ``l + n / l`` keys
for ``strided``), so a token costs ``O(l + n / l)`` instead of ``O(n)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.cache import StepContext, append_cache
from transevolve.modules.dense import fused_linear
from transevolve.modules.heads import merge_heads, split_heads
from transevolve.modules.init import add_attention_projections
from transevolve.modules.masks import AttentionMasks

#: Which sets of the pattern a head uses: ``A1 | A2``, ``A1`` or ``A2``.
Part = Literal["merged", "first", "second"]


@dataclass(frozen=True)
class SparsePattern:
    """A Sparse Transformer pattern: ``kind`` (``strided`` | ``fixed``), block length ``block`` (l), summary width
    ``summary`` (c, ``fixed`` only)."""

    kind: str
    block: int
    summary: int

    @classmethod
    def of(cls, config: ModelConfig) -> SparsePattern:
        return cls(config.sparse_pattern, config.sparse_block_size, config.sparse_summary)

    def contains(self, i: torch.Tensor, j: torch.Tensor, causal: bool, part: Part) -> torch.Tensor:
        """Bool, broadcast of ``i`` and ``j`` (query and key positions): key ``j`` is in the query's set.

        Positions outside ``[0, n)`` are the caller's to exclude.
        """
        size, gap = self.block, i - j
        if self.kind == "strided":
            first = (gap >= 0) & (gap < size) if causal else gap.abs() < size
            second = gap % size == 0
        else:
            first = torch.div(i, size, rounding_mode="floor") == torch.div(j, size, rounding_mode="floor")
            second = j % size >= size - self.summary
            if part == "second":
                second = second | (gap == 0)        # A2 alone: the query itself too (never an empty set)
        if causal:
            first, second = first & (gap >= 0), second & (gap >= 0)
        if part == "first":
            return first
        if part == "second":
            return second
        return first | second

    def keys_per_query(self, n: int, causal: bool, part: Part) -> float:
        """Keys the fast path computes a logit for, per query row (padded rows included, see :func:`macs`)."""
        size, nb = self.block, math.ceil(n / self.block)
        near = (2 if causal else 3) * size if self.kind == "strided" else size
        far = nb if self.kind == "strided" else nb * self.summary
        return float(near + (0 if part == "first" else far))


def head_parts(config: ModelConfig, times: tuple[float, ...] = (0.0,)) -> list[tuple[Part, int]]:
    """``[(part, number of heads)]`` in head order for one layer module (``times``: its evaluation times, whose
    smallest, divided by ``share_layers``, is the index of its weights in the block)."""
    h = config.num_heads
    if config.sparse_combine == "heads":
        return [("first", (h + 1) // 2), ("second", h // 2)]
    if config.sparse_combine == "interleaved":
        index = int(min(times)) // config.share_layers
        return [("first" if index % 2 == 0 else "second", h)]
    return [("merged", h)]


def pattern_mask(pattern: SparsePattern, parts: list[tuple[Part, int]], rows: torch.Tensor, cols: torch.Tensor,
                 causal: bool) -> torch.Tensor:
    """``(h, len(rows), len(cols))`` bool: the set of every head (``rows``/``cols``: query/key positions)."""
    masks = [pattern.contains(rows[:, None], cols[None, :], causal, part).expand(count, -1, -1)
             for part, count in parts if count]
    return torch.cat(masks)


def _attend(logits: torch.Tensor, inside: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of ``logits`` restricted to ``real`` keys (in the set, not padding); a row without
    one uses ``inside`` (its set, pads included), and a row with neither (positions past ``n`` on the fast path,
    discarded) any key, so that no row is NaN."""
    allowed = torch.where(real.any(-1, keepdim=True), real, inside)
    allowed = allowed | ~allowed.any(-1, keepdim=True)
    return torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)


def sparse_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_pad: torch.Tensor,
                     pattern: SparsePattern, parts: list[tuple[Part, int]], causal: bool
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense reference: ``q, k, v (b, h, n, e)`` (``q`` already scaled), ``key_pad (b, n)`` -> ``(b, h, n, e)`` and
    the weights ``(b, h, n, n)`` (zero outside the pattern)."""
    n = q.shape[2]
    positions = torch.arange(n, device=q.device)
    inside = pattern_mask(pattern, parts, positions, positions, causal)[None]        # (1, h, n, n)
    real = inside & ~key_pad[:, None, None, :]
    weights = _attend(q @ k.transpose(-1, -2), inside, real)
    return weights @ v, weights


@dataclass
class _Keys:
    """One group of candidate keys of the fast path, per query block and row.

    Attributes:
        logits: ``(b, h, nb, l, K)``.
        positions: ``(nb or 1, l or 1, K)`` the keys' positions (may fall outside ``[0, n)``).
        candidate: ``(nb or 1, l or 1, K)`` bool, False where the key belongs to another group (no double count).
        mix: weights ``(b, h, nb, l, K)`` -> ``(b, h, nb, l, e)``.
    """

    logits: torch.Tensor
    positions: torch.Tensor
    candidate: torch.Tensor
    mix: Callable[[torch.Tensor], torch.Tensor]


def _near(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shifts: tuple[int, ...]) -> _Keys:
    """Keys of the blocks ``B + s`` (``s`` in ``shifts``) for query block ``B``; ``q, k, v (b, h, nb, l, e)``."""
    nb, size = q.shape[2], q.shape[3]

    def around(x: torch.Tensor) -> torch.Tensor:                       # (b, h, nb, l, e) -> (b, h, nb, S l, e)
        padded = F.pad(x, (0, 0, 0, 0, 1, 1))                          # a zero block before and after
        return torch.cat([padded[:, :, 1 + s: 1 + s + nb] for s in shifts], dim=3)

    keys, values = around(k), around(v)
    blocks = torch.arange(nb, device=q.device)[:, None, None]
    offsets = torch.arange(size, device=q.device)
    positions = torch.cat([(blocks + s) * size + offsets for s in shifts], dim=-1)      # (nb, 1, S l)
    return _Keys(q @ keys.transpose(-1, -2), positions, torch.ones_like(positions, dtype=torch.bool),
                 lambda weights: weights @ values)


def _strided_far(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, shifts: tuple[int, ...]) -> _Keys:
    """The key at the query's offset in every block (``(i - j) mod l = 0``), except the near blocks ``B + s``."""
    nb, size = q.shape[2], q.shape[3]
    qt, kt, vt = (x.transpose(2, 3) for x in (q, k, v))                # (b, h, l, nb, e): offset-major
    logits = (qt @ kt.transpose(-1, -2)).transpose(2, 3)               # (b, h, nb, l, nb')
    blocks = torch.arange(nb, device=q.device)
    positions = blocks[None, None, :] * size + torch.arange(size, device=q.device)[None, :, None]    # (1, l, nb')
    near = torch.zeros(nb, nb, dtype=torch.bool, device=q.device)
    for s in shifts:
        near |= blocks[None, :] - blocks[:, None] == s
    return _Keys(logits, positions, ~near[:, None, :],
                 lambda weights: (weights.transpose(2, 3) @ vt).transpose(2, 3))


def _summary_far(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, summary: int) -> _Keys:
    """The last ``summary`` keys of every block except the query's own."""
    b, h, nb, size, e = q.shape
    keys = k[:, :, :, size - summary:].reshape(b, h, nb * summary, e)
    values = v[:, :, :, size - summary:].reshape(b, h, nb * summary, e)
    logits = (q.reshape(b, h, nb * size, e) @ keys.transpose(-1, -2)).view(b, h, nb, size, nb * summary)
    blocks = torch.arange(nb, device=q.device)
    columns = (blocks[:, None] * size + torch.arange(size - summary, size, device=q.device)).reshape(1, 1, -1)
    own = (blocks[:, None] == blocks.repeat_interleave(summary)[None, :])[:, None, :]  # (nb, 1, nb c)
    return _Keys(logits, columns, ~own,
                 lambda weights: (weights.reshape(b, h, nb * size, -1) @ values).view(b, h, nb, size, e))


def sparse_fast(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_pad: torch.Tensor, pattern: SparsePattern,
                causal: bool, part: Part) -> torch.Tensor:
    """The pattern's blocks only: ``q, k, v (b, h, n, e)`` (``q`` already scaled), ``key_pad (b, n)`` ->
    ``(b, h, n, e)``; every head uses ``part``. No tensor has an n x n axis pair (see the module docstring)."""
    b, h, n, e = q.shape
    size = pattern.block
    nb = math.ceil(n / size)
    grow = nb * size - n
    q, k, v = (F.pad(x, (0, 0, 0, grow)).view(b, h, nb, size, e) for x in (q, k, v))
    shifts = ((-1, 0) if causal else (-1, 0, 1)) if pattern.kind == "strided" else (0,)
    groups = [_near(q, k, v, shifts)]
    if part != "first":
        groups.append(_strided_far(q, k, v, shifts) if pattern.kind == "strided"
                      else _summary_far(q, k, v, pattern.summary))
    rows = torch.arange(nb * size, device=q.device).view(nb, size, 1)
    logits = torch.cat([g.logits for g in groups], dim=-1)
    positions = torch.cat([g.positions.expand(nb, size, -1) for g in groups], dim=-1)     # (nb, l, K)
    candidate = torch.cat([g.candidate.expand(nb, size, -1) for g in groups], dim=-1)
    inside = candidate & (positions >= 0) & (positions < n) & pattern.contains(rows, positions, causal, part)
    key_ok = F.pad(~key_pad, (0, grow), value=False)                                      # (b, N)
    real = inside & key_ok[:, positions.clamp(0, nb * size - 1)]                          # (b, nb, l, K)
    weights = _attend(logits, inside[None, None], real[:, None])
    mixed = sum(g.mix(w) for g, w in zip(groups, weights.split([g.logits.shape[-1] for g in groups], -1),
                                           strict=True))
    assert isinstance(mixed, torch.Tensor)
    return mixed.reshape(b, h, nb * size, e)[:, :, :n]


def macs(config: ModelConfig, n: int, path: Literal["fast", "reference"]) -> dict[str, float]:
    """Forward multiply-accumulates per query token with ``n`` keys: ``projections`` (Q, K, V, O: ``4 d^2``) and
    ``attention_n2`` (logits and mixing: ``2 K d`` for ``K`` keys per query).

    ``reference``: ``K = n``. ``fast``: the keys the block algorithm computes per query row (``strided``: ``2 l + nb``
    causal, ``3 l + nb`` bidirectional; ``fixed``: ``l + nb c``; ``A1`` alone without the far term), averaged over the
    heads (``heads``) or the block's distinct layers (``interleaved``) and scaled by ``N / n`` for the rows padded to
    whole blocks. The registry's count has no self/cross or causal argument: ``decoder`` counts the causal pattern,
    ``encoder``/``classifier`` the bidirectional one, and ``encoder_decoder`` the mean of its three attention types
    (encoder self, decoder self, dense cross ``2 n d``), which :mod:`transevolve.bench.flops` counts three times, so
    the total is exact.
    """
    d = config.width
    projections = 4.0 * d * d
    if path == "reference":
        return {"projections": projections, "attention_n2": 2.0 * n * d}
    pattern = SparsePattern.of(config)
    padded = math.ceil(n / pattern.block) * pattern.block / n
    if config.sparse_combine == "interleaved":
        distinct = config.layers_per_block // config.share_layers
        layer_parts = [("first" if j % 2 == 0 else "second", 1.0 / distinct) for j in range(distinct)]
    elif config.sparse_combine == "heads":
        h = config.num_heads
        layer_parts = [("first", ((h + 1) // 2) / h), ("second", (h // 2) / h)]
    else:
        layer_parts = [("merged", 1.0)]

    def keys(causal: bool) -> float:
        return padded * sum(share * pattern.keys_per_query(n, causal, part) for part, share in layer_parts)

    if config.kind == "decoder":
        attended = keys(True)
    elif config.kind == "encoder_decoder":
        attended = (keys(False) + keys(True) + n) / 3
    else:
        attended = keys(False)
    return {"projections": projections, "attention_n2": 2.0 * attended * d}


class SparseAttention(nn.Module):
    """Multi-head Sparse Transformer self-attention with its own pre-LayerNorm (softmax attention's parameters:
    ``query_proj``, ``key_proj``, ``value_proj``, ``output_proj``, ``norm``).

    Args:
        config: model config (width, heads, dropout, epsilon, ``sparse_*``, ``attention_impl``).
        times: the evaluation times of this layer module (its index in the block, for ``interleaved``).
    """

    def __init__(self, config: ModelConfig, times: tuple[float, ...] = (0.0,)) -> None:
        super().__init__()
        d = config.width
        self.num_heads = config.num_heads
        self.scale = 1.0 / math.sqrt(config.head_width)
        self.pattern = SparsePattern.of(config)
        self.parts = head_parts(config, times)
        #: ``reference`` (dense, masked) or the fast path (any other value); may be changed on a built model.
        self.attention_impl = config.attention_impl
        add_attention_projections(self, d, config.layer_norm_eps, config.dropout)

    def _project(self, normed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(b, n, d)`` -> scaled queries, keys, values ``(b, h, n, e)`` (one matmul)."""
        q, k, v = (split_heads(x, self.num_heads)
                   for x in fused_linear(normed, self.query_proj, self.key_proj, self.value_proj))
        return q * self.scale, k, v

    def forward(self, state: torch.Tensor, source: torch.Tensor, masks: AttentionMasks, block: None = None,
                t: float = 0.0, return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state (b, n, d)`` -> update ``(b, n, d)`` (and weights ``(b, h, n, n)`` when asked, reference path).

        Self-attention only (``source`` is the state); ``masks.causal`` picks the causal or bidirectional pattern.
        ``block`` and ``t`` keep the registry's interface.
        """
        q, k, v = self._project(self.norm(state))
        weights = None
        if return_weights or self.attention_impl == "reference":
            mixed, weights = sparse_reference(q, k, v, masks.key_pad, self.pattern, self.parts, masks.causal)
        else:
            outputs, start = [], 0
            for part, count in self.parts:
                if count:
                    heads = slice(start, start + count)
                    outputs.append(sparse_fast(q[:, heads], k[:, heads], v[:, heads], masks.key_pad, self.pattern,
                                               masks.causal, part))
                    start += count
            mixed = torch.cat(outputs, dim=1) if len(outputs) > 1 else outputs[0]
        return self.dropout(self.output_proj(merge_heads(mixed))), (weights if return_weights else None)

    def step(self, state: torch.Tensor, context: StepContext, t: float = 0.0) -> torch.Tensor:
        """Incremental (causal) decoding: ``state (b, m, d)`` new positions -> update ``(b, m, d)``.

        ``store[prefix + "keys"|"values"]`` ``(b, h, k, e)`` grow by the new positions; the new queries read only
        the cached positions in their sets (gathered), masked by the sets and ``context.masks.visible``.
        """
        store, prefix = context.store, context.prefix
        q, k, v = self._project(self.norm(state))
        keys = append_cache(store, prefix + "keys", k, dim=2)
        values = append_cache(store, prefix + "values", v, dim=2)
        total, m = keys.shape[2], q.shape[2]
        positions = torch.arange(total, device=q.device)
        inside = pattern_mask(self.pattern, self.parts, positions[total - m:], positions, causal=True)   # (h, m, k)
        needed = inside.flatten(0, 1).any(0).nonzero().squeeze(-1)
        inside = inside[:, :, needed][None]
        real = inside & context.masks.visible[..., needed]
        weights = _attend(q @ keys.index_select(2, needed).transpose(-1, -2), inside, real)
        mixed = weights @ values.index_select(2, needed)
        return self.dropout(self.output_proj(merge_heads(mixed)))
