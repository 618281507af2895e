"""Initialisation shared by every module: Keras' defaults, as the official TensorFlow code uses them."""

from __future__ import annotations

import math

import torch
from torch import nn

from transevolve.modules.dense import Linear


def glorot_uniform_(weight: torch.Tensor, fan_in: int, fan_out: int) -> torch.Tensor:
    """Keras' default initializer: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return weight.uniform_(-limit, limit)


def add_attention_projections(module: nn.Module, width: int, layer_norm_eps: float, dropout: float) -> None:
    """Give ``module`` the standard attention sub-layer's parameters: a pre-LayerNorm ``norm`` and ``query_proj``,
    ``key_proj``, ``value_proj``, ``output_proj`` (``width x width``, with bias), and its ``dropout``."""
    module.norm = nn.LayerNorm(width, eps=layer_norm_eps)
    for name in ("query_proj", "key_proj", "value_proj", "output_proj"):
        setattr(module, name, dense(width, width))
    module.dropout = nn.Dropout(dropout)


def dense(in_features: int, out_features: int, bias: bool = True) -> Linear:
    """A Linear layer with Keras initialisation (Glorot-uniform weight, zero bias), products through
    :func:`transevolve.modules.dense.linear`."""
    layer = Linear(in_features, out_features, bias=bias)
    glorot_uniform_(layer.weight, in_features, out_features)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer
