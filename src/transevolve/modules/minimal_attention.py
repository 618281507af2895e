"""Minimal attention: softmax attention with the reductions of Bermeitinger et al. 2024 ("Reducing the Transformer
Architecture to a Minimum", arXiv 2410.13732) as config values (``attention="minimal"``, ``qk_form``, ``vo_form``).

Notation: ``x_i = LN(state_i)`` (self-attention; the keys and values come from the memory in cross-attention, which
the encoder's final LayerNorm has already normalised), ``h`` heads of width ``d_h = d / h``, ``s = 1 / sqrt(d_h)``
for every form. Linear layers are written row-vector style, ``x W + b``.

Query-key forms (``qk_form``), logits of head ``h``:

- ``separate``: ``s (x_i W_Q^h + b_Q^h) . (x_j W_K^h + b_K^h)``, ``W_Q^h, W_K^h`` of shape (d, d_h): the standard
  attention (softmax attention's parameters and biases; ``b_K`` is dead: ``q_i . b_K`` is the same for every key).
- ``collapsed``: ``s (x_i W_QK^h + u^h) . x_j`` with one (d, d) matrix ``W_QK^h`` per head (the paper's reading for
  several heads: "collapsing Q/K gives no saving"): ``h d^2 + h d`` parameters. ``W_QK^h = W_Q^h W_K^hT`` and
  ``u^h = b_Q^h W_K^hT`` give exactly the ``separate`` logits up to terms constant along the keys, which softmax
  ignores; so ``collapsed`` represents every ``separate`` model (and, for ``h > 1``, more: ``W_QK^h`` may have rank
  ``d > d_h``). For one head it is the paper's exact reduction, ``d^2 + d`` parameters instead of ``2 d^2 + 2 d``.
  The keys are the unprojected ``x_j``.
- ``symmetric``: ``s (x_i T^h + c^h) . (x_j T^h + c^h)``: ``W_K = W_Q`` (the paper's "reuse W^Q"), one factor
  ``T^h`` (d, d_h) per head and a shared bias ``c^h``, so the self-attention logits are a Gram matrix (symmetric,
  positive semi-definite). ``T^h`` is lower-trapezoidal (``T^h[a, k] = 0`` for ``k > a``): without loss of
  generality, since any ``W W^T`` with ``W`` of shape (d, d_h) equals ``R^T R`` with ``R`` the upper-trapezoidal
  factor of ``W^T = Q R``. One head is the paper's Cholesky form ``W_QK = T T^T`` with ``d (d + 1) / 2`` parameters;
  ``h`` heads have ``h (d_h (d_h + 1) / 2 + (d - d_h) d_h) + d``. In cross-attention the logits are the same
  bilinear form between a query and a memory token (rectangular, so not a symmetric matrix).

Value-output forms (``vo_form``), update of token ``i`` with attention weights ``a^h_ij``:

- ``separate``: ``concat_h(sum_j a^h_ij (x_j W_V^h + b_V^h)) W_O + b_O`` (softmax attention's).
- ``collapsed``: ``sum_h sum_j a^h_ij x_j W_VO^h + b`` with one (d, d) matrix per head (the V/O product cannot be
  merged across heads): ``h d^2 + d`` parameters, one output bias (``b = b_V W_O + b_O`` because the weights of a row
  sum to 1). ``W_VO^h = W_V^h W_O^h`` gives exactly ``separate``; one head: ``d^2 + d`` instead of ``2 d^2 + 2 d``.
- ``identity``: no ``W_V``, ``W_O`` (the paper fixes them to the identity): ``concat_h(sum_j a^h_ij x_j^h)`` where
  ``x_j^h`` is head ``h``'s slice of width ``d_h`` of ``x_j``. With one head each output row is a convex combination
  of the normalised inputs; with ``h`` heads each slice is one. No parameters.

Every form keeps the sub-layer's pre-LayerNorm (2 d parameters) and the output dropout of softmax attention.
:meth:`MinimalAttention.step` is incremental decoding; it caches what the forms need: projected keys ``(b, h, n, d_h)``
(``separate``, ``symmetric``), projected values ``(b, h, n, d_h)`` (``vo_form="separate"``) and the normalised inputs
``(b, n, d)`` (``collapsed`` keys, ``collapsed``/``identity`` values), once each.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.cache import StepContext, append_cache
from transevolve.modules.dense import linear
from transevolve.modules.heads import merge_heads, split_heads
from transevolve.modules.init import dense
from transevolve.modules.masks import AttentionMasks


def symmetric_factor_size(width: int, head_width: int) -> int:
    """Entries of one lower-trapezoidal factor ``T`` of shape (width, head_width): ``T[a, k]`` with ``k <= a``."""
    return head_width * (head_width + 1) // 2 + (width - head_width) * head_width


def qk_parameters(config: ModelConfig) -> int:
    """Trainable query-key parameters of one minimal-attention module (see the module docstring)."""
    d, h = config.width, config.num_heads
    if config.qk_form == "separate":
        return 2 * (d * d + d)
    if config.qk_form == "collapsed":
        return h * d * d + h * d
    return h * symmetric_factor_size(d, config.head_width) + d


def vo_parameters(config: ModelConfig) -> int:
    """Trainable value-output parameters of one minimal-attention module."""
    d, h = config.width, config.num_heads
    if config.vo_form == "separate":
        return 2 * (d * d + d)
    if config.vo_form == "collapsed":
        return h * d * d + d
    return 0


def minimal_macs(config: ModelConfig, n: int) -> dict[str, float]:
    """Forward multiply-accumulates per query token with ``n`` keys: ``projections`` and ``attention_n2``.

    Projections: ``separate`` Q/K ``2 d^2``; ``collapsed`` ``h d^2`` (queries only, the keys are unprojected);
    ``symmetric`` ``d^2`` (one dense projection serves queries and keys in self-attention; a cross-attention layer
    projects its memory with it too, ``d^2`` more per memory token, which this per-layer count does not distinguish);
    V/O ``separate`` ``2 d^2``, ``collapsed`` ``h d^2``, ``identity`` 0. The n x n products: logits ``n d``
    (``collapsed``: ``n h d``, every head at full width) and mixing ``n d`` (``collapsed`` values: ``n h d``).
    """
    d, h = config.width, config.num_heads
    projections = {"separate": 2 * d * d, "collapsed": h * d * d, "symmetric": d * d}[config.qk_form]
    projections += {"separate": 2 * d * d, "collapsed": h * d * d, "identity": 0}[config.vo_form]
    logits = n * h * d if config.qk_form == "collapsed" else n * d
    mixing = n * h * d if config.vo_form == "collapsed" else n * d
    return {"projections": float(projections), "attention_n2": float(logits + mixing)}


class MinimalAttention(nn.Module):
    """Multi-head softmax attention with its own pre-LayerNorm and the query-key / value-output forms of
    ``config.qk_form`` and ``config.vo_form`` (module docstring).

    Parameters by form: ``query_proj``, ``key_proj`` (qk ``separate``); ``qk_proj`` (d -> h d, ``collapsed``: the
    ``W_QK^h`` side by side, bias ``u``); ``qk_factor`` (h, P) and ``qk_bias`` (d) (``symmetric``: the packed
    trapezoids); ``value_proj``, ``output_proj`` (vo ``separate``); ``vo_proj`` (h d -> d, ``collapsed``).

    Args:
        config: model config (width, heads, forms, dropout, epsilon).
        cross: keys and values come from the memory instead of the normalised state.
    """

    def __init__(self, config: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        d, h = config.width, config.num_heads
        self.width, self.num_heads, self.head_width = d, h, config.head_width
        self.qk_form, self.vo_form = config.qk_form, config.vo_form
        self.cross = cross
        self.scale = 1.0 / math.sqrt(config.head_width)
        self.norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        if self.qk_form == "separate":
            self.query_proj = dense(d, d)
            self.key_proj = dense(d, d)
        elif self.qk_form == "collapsed":
            self.qk_proj = dense(d, h * d)
        else:
            rows, cols = torch.tril_indices(d, config.head_width)
            self.register_buffer("factor_rows", rows, persistent=False)
            self.register_buffer("factor_cols", cols, persistent=False)
            limit = math.sqrt(6.0 / (2 * d))                           # W_Q's Glorot limit as a dense (d, d)
            self.qk_factor = nn.Parameter(torch.empty(h, rows.numel()).uniform_(-limit, limit))
            self.qk_bias = nn.Parameter(torch.zeros(d))
        if self.vo_form == "separate":
            self.value_proj = dense(d, d)
            self.output_proj = dense(d, d)
        elif self.vo_form == "collapsed":
            self.vo_proj = dense(h * d, d)
        self.dropout = nn.Dropout(config.dropout)

    # -- forms ---------------------------------------------------------------------------------------------
    def symmetric_weight(self) -> torch.Tensor:
        """The shared query/key projection of the ``symmetric`` form as a Linear weight ``(d, d)``: row block ``h``
        is ``T^h`` transposed, ``(d_h, d)``."""
        h, d, w = self.num_heads, self.width, self.head_width
        factor = self.qk_factor.new_zeros(h, d, w)
        factor[:, self.factor_rows, self.factor_cols] = self.qk_factor
        return factor.transpose(1, 2).reshape(h * w, d)

    def _spread(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d)`` -> the same tokens for every head, ``(b, h, n, d)`` (a view)."""
        return x.unsqueeze(1).expand(-1, self.num_heads, -1, -1)

    def _symmetric(self, x: torch.Tensor) -> torch.Tensor:
        """``(b, n, d)`` -> ``x T + c`` as heads ``(b, h, n, d_h)`` (the ``symmetric`` queries, and keys)."""
        return split_heads(linear(x, self.symmetric_weight(), self.qk_bias), self.num_heads)

    def _queries(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised queries ``(b, m, d)`` -> query heads ``(b, h, m, e)``: ``e = d_h`` (``collapsed``: ``d``)."""
        if self.qk_form == "separate":
            return split_heads(self.query_proj(x), self.num_heads)
        if self.qk_form == "collapsed":
            b, m, _ = x.shape
            return self.qk_proj(x).view(b, m, self.num_heads, self.width).transpose(1, 2)
        return self._symmetric(x)

    def _keys(self, x: torch.Tensor) -> torch.Tensor:
        """Key sources ``(b, n, d)`` -> key heads ``(b, h, n, e)`` (``collapsed``: the unprojected ``x``)."""
        if self.qk_form == "separate":
            return split_heads(self.key_proj(x), self.num_heads)
        if self.qk_form == "collapsed":
            return self._spread(x)
        return self._symmetric(x)

    def _queries_keys(self, queries_in: torch.Tensor, keys_in: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Query heads of ``queries_in (b, m, d)`` and key heads of ``keys_in (b, n, d)``; the ``symmetric``
        self-attention projects once (queries and keys are the same tensor)."""
        queries = self._queries(queries_in)
        if self.qk_form == "symmetric" and keys_in is queries_in:
            return queries, queries
        return queries, self._keys(keys_in)

    def _values(self, values_in: torch.Tensor) -> torch.Tensor:
        """``(b, n, d)`` -> value heads ``(b, h, n, d_h)`` (``collapsed``: the inputs for every head,
        ``(b, h, n, d)``)."""
        if self.vo_form == "separate":
            return split_heads(self.value_proj(values_in), self.num_heads)
        if self.vo_form == "collapsed":
            return self._spread(values_in)
        return split_heads(values_in, self.num_heads)

    def _output(self, mixed: torch.Tensor) -> torch.Tensor:
        """Mixed values ``(b, h, m, e)`` -> the update ``(b, m, d)`` (before dropout)."""
        merged = merge_heads(mixed)                                  # (b, m, h e)
        if self.vo_form == "separate":
            return self.output_proj(merged)
        if self.vo_form == "collapsed":
            return self.vo_proj(merged)
        return merged

    def logits(self, state: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """The scaled logits before masking, ``(b, h, q, k)``, of ``state (b, q, d)`` against ``source (b, k, d)``
        (the state itself for self-attention), for inspection and tests."""
        normed = self.norm(state)
        queries, keys = self._queries_keys(normed, source if self.cross else normed)
        return (queries @ keys.transpose(-1, -2)) * self.scale

    # -- interface -----------------------------------------------------------------------------------------
    def forward(self, state: torch.Tensor, source: torch.Tensor, masks: AttentionMasks, block: None = None,
                t: float = 0.0, return_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``state (b, q, d)`` and ``source (b, k, d)`` -> update ``(b, q, d)`` (and weights ``(b, h, q, k)``).

        ``source`` is the state itself for self-attention (its normalised copy is used) and the memory for
        cross-attention; ``block`` and ``t`` keep the registry's interface (no block state, no time dependence).
        """
        normed = self.norm(state)
        keys_in = source if self.cross else normed
        queries, keys = self._queries_keys(normed, keys_in)
        values = self._values(keys_in)
        if return_weights:
            logits = (queries @ keys.transpose(-1, -2)) * self.scale
            weights = torch.softmax(logits.masked_fill(~masks.allowed_keys, float("-inf")), dim=-1)
            mixed = weights @ values
        else:
            weights = None
            if bool(masks.key_pad.any()):
                mixed = F.scaled_dot_product_attention(queries, keys, values, attn_mask=masks.allowed_keys,
                                                       scale=self.scale)
            else:
                mixed = F.scaled_dot_product_attention(queries, keys, values, is_causal=masks.causal,
                                                       scale=self.scale)
        return self.dropout(self._output(mixed)), weights

    def step(self, state: torch.Tensor, context: StepContext, t: float = 0.0) -> torch.Tensor:
        """Incremental decoding: ``state (b, m, d)`` new positions -> update ``(b, m, d)``.

        Self-attention appends the new positions to ``store[prefix + "keys"]`` (``(b, h, k, d_h)``, qk ``separate``
        or ``symmetric``), ``store[prefix + "values"]`` (``(b, h, k, d_h)``, vo ``separate``) and
        ``store[prefix + "inputs"]`` (``(b, k, d)``, the normalised inputs, when a form reads them unprojected).
        Cross-attention projects ``context.memory (b, s, d)`` once into ``keys``/``values`` and reads the memory
        itself for the unprojected forms.
        """
        store, prefix = context.store, context.prefix
        normed = self.norm(state)
        project_keys = self.qk_form != "collapsed"
        project_values = self.vo_form == "separate"
        if self.cross:
            memory = context.memory
            assert memory is not None
            queries = self._queries(normed)
            if project_keys and prefix + "keys" not in store:
                store[prefix + "keys"] = self._keys(memory)
            if project_values and prefix + "values" not in store:
                store[prefix + "values"] = self._values(memory)
            keys = store[prefix + "keys"] if project_keys else self._spread(memory)
            values = store[prefix + "values"] if project_values else self._values(memory)
        else:
            queries, new_keys = self._queries_keys(normed, normed)
            inputs = None
            if not (project_keys and project_values):
                inputs = append_cache(store, prefix + "inputs", normed, dim=1)
            if project_keys:
                keys = append_cache(store, prefix + "keys", new_keys, dim=2)
            else:
                assert inputs is not None
                keys = self._spread(inputs)
            if project_values:
                values = append_cache(store, prefix + "values", self._values(normed), dim=2)
            else:
                assert inputs is not None
                values = self._values(inputs)
        mixed = F.scaled_dot_product_attention(queries, keys, values, attn_mask=context.masks.allowed,
                                               scale=self.scale)
        return self.dropout(self._output(mixed))
