"""TransEvolve's attention: a block-level interaction computed once, evolved over depth.

Dutta, Gautam, Chakrabarti, Chakraborty, "Redesigning the Transformer Architecture with Insights from
Multi-particle Dynamical Systems", NeurIPS 2021 (arXiv 2109.15142). The math below is what the official code
(``LCS2-IIITD/TransEvolve`` @ 1c9cddc) computes.

Once per block (:class:`BlockInteraction`, the official ``Layer1``), from a query source ``X_q (b, q, d)`` and a
key source ``X_k (b, k, d)``, with ``D = d + h t`` and learned ``W_Q, W_K`` of shape (D, D) split into a token part
``(D, d)`` and a time part ``P (D, h, t)``::

    Q = X_q W_Q^x.T, K = X_k W_K^x.T                              (b, n, D)
    A0[b,h,i,j] = <Q_h[b,i], K_h[b,j]> / sqrt(D / h)               (b, h, q, k)   heads are D/h-wide slices
    kappa[b,h,j,t] = sum_c K[b,j,c] P_Q[c,h,t]                     (b, h, k, t)   key-side time term
    rho[b,h,i,t]   = sum_c Q[b,i,c] P_K[c,h,t]                     (b, h, q, t)   query-side (inert)
    gamma[h,t]     = sum_c P_Q[c,h,t] P_K[c,h,t]                   (h, t)         time-time (inert)

At depth ``l`` (:class:`EvolvedAttention`, ``Layer2``), with its own amplitudes ``theta (d,)``::

    T_l = [sin(x p), cos(x p)] * theta,  x = l pi / P,  p = 0..d/2-1,  reshaped to tau_l (h, t)
    S_l = A0 + (rho.tau_l + kappa.tau_l) + gamma.tau_l^2 - 1e9 M
    out = concat_h(softmax_k(S_l)_h @ LN_l(V_src)_h) W_O           no value projection, W_O without bias

``rho`` is constant along keys and ``gamma`` along both axes, so the softmax removes them: only ``A0`` and the
per-key bias ``kappa.tau_l`` shape the attention, and ``W_K``'s time part never matters. ``fidelity="lean"``
drops those terms and parameters; ``"official"`` keeps them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.feedforward import glorot_uniform_
from transevolve.modules.masks import AttentionMasks


@dataclass
class BlockScores:
    """The block-level interaction shared by the L layers of one block.

    Attributes:
        initial: ``A0``, ``(b, h, q, k)``.
        key_time: ``kappa``, ``(b, h, k, t)``: the per-key bias at depth l is ``kappa @ tau_l``.
        query_time: ``rho``, ``(b, h, q, t)`` (official fidelity only; inert under the softmax).
        time_time: ``gamma``, ``(h, t)`` (official fidelity only; inert under the softmax).
    """

    initial: torch.Tensor
    key_time: torch.Tensor
    query_time: torch.Tensor | None = None
    time_time: torch.Tensor | None = None


class BlockInteraction(nn.Module):
    """Computes :class:`BlockScores` once per block (the official ``Layer1``).

    Parameters (official fidelity, D = d + h t): ``query_proj.weight (D, d)`` and ``query_time (D, h, t)`` are
    ``W_Q`` split by columns; ``key_proj.weight (D, d)`` and ``key_time (D, h, t)`` are ``W_K``. Lean fidelity has no
    ``key_time``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        d, h, t, big = config.width, config.num_heads, config.time_dim, config.score_width
        self.num_heads = h
        self.official = config.fidelity == "official"
        self.query_proj = nn.Linear(d, big, bias=False)
        self.key_proj = nn.Linear(d, big, bias=False)
        self.query_time = nn.Parameter(torch.empty(big, h, t))
        # The official W_Q/W_K are (D, D) matrices initialised as a whole.
        for weight in (self.query_proj.weight, self.key_proj.weight, self.query_time):
            glorot_uniform_(weight, big, big)
        if self.official:
            self.key_time = nn.Parameter(glorot_uniform_(torch.empty(big, h, t), big, big))
        else:
            self.register_parameter("key_time", None)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, query_source: torch.Tensor, key_source: torch.Tensor) -> BlockScores:
        """``query_source (b, q, d)``, ``key_source (b, k, d)`` -> :class:`BlockScores`."""
        b, n_q, _ = query_source.shape
        n_k = key_source.shape[1]
        h = self.num_heads
        queries = self.dropout(self.query_proj(query_source))                   # (b, q, D)
        keys = self.dropout(self.key_proj(key_source))                          # (b, k, D)
        head = queries.shape[-1] // h
        q_heads = queries.view(b, n_q, h, head).transpose(1, 2)                  # (b, h, q, D/h)
        k_heads = keys.view(b, n_k, h, head).transpose(1, 2)                     # (b, h, k, D/h)
        initial = (q_heads @ k_heads.transpose(-1, -2)) / math.sqrt(head)       # (b, h, q, k)
        key_time = torch.einsum("bkc,cht->bhkt", keys, self.query_time)
        if not self.official:
            return BlockScores(initial, key_time)
        query_time = torch.einsum("bqc,cht->bhqt", queries, self.key_time)
        time_time = (self.query_time * self.key_time).sum(0)                    # (h, t)
        return BlockScores(initial, key_time, query_time, time_time)


def time_signal(amplitudes: torch.Tensor, depth: int, period: float) -> torch.Tensor:
    """``T_l = [sin(x p), cos(x p)] * theta`` with ``x = l pi / period`` in float32; ``(d,)``."""
    half = amplitudes.shape[0] // 2
    step = torch.tensor(float(depth), dtype=torch.float32) * torch.tensor(math.pi / period, dtype=torch.float32)
    angles = step * torch.arange(half, dtype=torch.float32, device=amplitudes.device)
    return torch.cat([torch.sin(angles), torch.cos(angles)]).to(amplitudes.dtype) * amplitudes


class EvolvedAttention(nn.Module):
    """Attention at depth ``l`` of a block from the shared :class:`BlockScores` (the official ``Layer2``).

    Parameters: ``time_amplitudes`` theta ``(d,)``, ``value_norm`` (LayerNorm of the values source) and
    ``output_proj`` W_O ``(d, d)`` without bias.
    """

    def __init__(self, config: ModelConfig, depth: int) -> None:
        super().__init__()
        d = config.width
        self.depth = depth
        self.num_heads = config.num_heads
        self.time_period = config.time_period
        limit = math.sqrt(6.0 / d)
        self.time_amplitudes = nn.Parameter(torch.empty(d).uniform_(-limit, limit))
        self.value_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.output_proj = nn.Linear(d, d, bias=False)
        glorot_uniform_(self.output_proj.weight, d, d)
        self.dropout = nn.Dropout(config.dropout)

    def scores(self, block: BlockScores, masks: AttentionMasks) -> torch.Tensor:
        """Masked logits ``S_l`` of shape ``(b, h, q, k)``."""
        tau = time_signal(self.time_amplitudes, self.depth, self.time_period).view(self.num_heads, -1)
        key_bias = torch.einsum("bhkt,ht->bhk", block.key_time, tau).unsqueeze(2)        # (b, h, 1, k)
        if block.query_time is not None and block.time_time is not None:
            query_bias = torch.einsum("bhqt,ht->bhq", block.query_time, tau).unsqueeze(3)  # (b, h, q, 1)
            constant = (block.time_time * tau * tau).sum(-1)[None, :, None, None]      # (1, h, 1, 1)
            logits = (block.initial + (query_bias + key_bias)) + constant
        else:
            logits = block.initial + key_bias
        return logits + masks.additive

    def forward(self, state: torch.Tensor, values_source: torch.Tensor, masks: AttentionMasks,
                block: BlockScores | None = None, return_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``values_source (b, k, d)`` and the block's scores -> update ``(b, q, d)`` (and weights ``(b, h, q, k)``).

        ``state`` (the current query-side state) is not used: TransEvolve's queries enter only through the
        block-level scores; the argument keeps one interface with :class:`SoftmaxAttention`.
        """
        if block is None:
            raise ValueError("EvolvedAttention needs the block-level BlockScores of its block")
        weights = torch.softmax(self.scores(block, masks), dim=-1)
        b, n_k, d = values_source.shape
        values = self.value_norm(values_source).view(b, n_k, self.num_heads, -1).transpose(1, 2)
        mixed = (weights @ values).transpose(1, 2).reshape(b, -1, d)                    # (b, q, d)
        return self.dropout(self.output_proj(mixed)), (weights if return_weights else None)
