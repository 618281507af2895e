"""Tied token embedding with sinusoidal positions (the official TransEvolve convention).

``embed(ids) = E[ids] * (ids != 0) * sqrt(d) + PE[:n]`` and ``logits(y) = y @ E.T`` with one matrix ``E`` of shape
``(V, d)`` shared by source, target and output (a three-way tie). Pads get a zero embedding but still receive the
position encoding. ``PE[pos, k] = sin(pos * w_k)`` and ``PE[pos, d/2 + k] = cos(pos * w_k)`` with
``w_k = exp(-k * ln(1e4) / (d/2 - 1))`` (halves concatenated, not interleaved), computed in float32 as the
official code does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.modules.dense import linear


def sinusoidal_positions(length: int, width: int) -> torch.Tensor:
    """``(length, width)`` float32 table with concatenated sin and cos halves."""
    half = width // 2
    position = torch.arange(length, dtype=torch.float32)
    increment = math.log(1.0e4) / (torch.tensor(float(half), dtype=torch.float32) - 1)
    inverse_timescales = torch.exp(torch.arange(half, dtype=torch.float32) * -increment)
    angles = position[:, None] * inverse_timescales[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


class TiedEmbedding(nn.Module):
    """Token embedding, position encoding and output projection sharing one matrix.

    Args:
        vocab_size: V (id 0 is padding).
        width: d.
        max_length: rows of the position table.
    """

    def __init__(self, vocab_size: int, width: int, max_length: int) -> None:
        super().__init__()
        self.width = width
        self.weight = nn.Parameter(torch.randn(vocab_size, width) * width**-0.5)
        self.register_buffer("positions", sinusoidal_positions(max_length, width), persistent=False)

    def tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (b, n)`` -> scaled token embeddings ``(b, n, d)``, zero at pads (no positions).

        ``F.embedding`` rather than ``weight[ids]``: the CPU backward of advanced indexing accumulates repeated
        ids with parallel atomic adds (run-to-run different sums on 2+ threads); ``embedding``'s backward sums
        each row in index order (deterministic, and faster).
        """
        tokens = F.embedding(ids, self.weight) * (ids != 0).unsqueeze(-1).to(self.weight.dtype)
        return tokens * math.sqrt(self.width)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids (b, n)`` -> ``(b, n, d)``."""
        return self.tokens(ids) + self.positions[: ids.shape[1]]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``(b, n, d)`` -> ``(b, n, V)``: no bias, no scaling."""
        return linear(hidden, self.weight)
