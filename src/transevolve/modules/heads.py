"""Splitting a width into attention heads and merging them back, shared by every attention mechanism."""

from __future__ import annotations

import torch


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``(b, n, h * w)`` -> ``(b, h, n, w)`` (a view)."""
    b, n, width = x.shape
    return x.view(b, n, heads, width // heads).transpose(1, 2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """``(b, h, n, w)`` -> ``(b, n, h * w)``."""
    b, h, n, width = x.shape
    return x.transpose(1, 2).reshape(b, n, h * width)
