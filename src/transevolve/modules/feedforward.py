"""Position-wise feed-forward sub-layers: ``FF(x) = Dropout(lin2(relu(lin1(LN(x)))))``, d -> m*d -> d.

- :class:`FullFeedForward`: two learned dense layers (TransEvolve-fullFF, and the Transformer's FF).
- :class:`RandomFeedForward`: TransEvolve-randomFF. Each dense layer is a :class:`TemporalProjection` whose
  weight ``W_l = U_l diag(s) V_l`` is built from fixed random tensors and the layer's depth ``l``; only the
  "singular values" ``s`` and the bias are trained.
- :class:`NoFeedForward`: ``ff_type="none"`` (Bermeitinger et al. 2024): the feed-forward field is zero, no
  parameters.

Official quirks kept on purpose (see ``docs`` and ``dead_parameter_masks``): ``U_l`` and ``V_l`` are not
orthogonal; at depth 0 ``U_0``/``V_0`` are rank 1, so the d->m*d weight is rank 1 and the m*d->d weight is exactly
zero; the entries of ``s`` beyond ``min(in, out)`` and ``s[0]`` are never read.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.dense import linear
from transevolve.modules.init import dense


def _autocast_off(device: str) -> contextlib.AbstractContextManager[Any]:
    """Autocast off on ``device`` (a no-op context when it is off)."""
    return torch.autocast(device, enabled=False) if torch.is_autocast_enabled(device) else contextlib.nullcontext()


class TemporalProjection(nn.Module):
    """Depth-dependent random projection ``y = x @ W_l + bias``, ``W_l = U_l diag(s) V_l`` (in, out).

    With ``x1 = l * pi / in``, ``x2 = l * pi / out``, ``p = 0..in/2-1`` and ``q = 0..out/2-1`` (float32, in this
    order, as the official code computes them; the angles reach thousands of radians):

    - ``U_l = [sin((x1 p) C), cos((x1 p) C)] / sqrt(out)``, shape (in, in), ``C`` fixed ~ N(0, in^2);
    - ``V_l = [sin((x2 q) P), cos((x2 q) P)] / sqrt(out)``, shape (out, out), ``P`` fixed ~ N(0, out^2);
    - ``diag(s)`` is the rectangular (in, out) diagonal; only ``s[:min(in, out)]`` is read.

    The fixed tensors are persistent buffers, so a checkpoint reproduces them exactly. ``W_l`` is built once per
    forward pass (shared by the batch); in eval mode without autograd it is also cached across passes and rebuilt
    when ``s``, a buffer, the dtype or the device changes (tensor version counters) or on ``train(True)``.

    Under autocast ``W_l`` is still built in the parameters' dtype (float32: the angles reach thousands of radians
    and its entries are sums of ``min(in, out)`` terms); the token product ``x W_l`` is then autocast's (bf16, like
    any linear layer), its output bf16.

    ``l`` is a time value ``t`` passed to :meth:`forward` (any float; the official layers use their integer depth).

    Args:
        in_features, out_features: widths.
        generator: source of the fixed random tensors.
        lean: keep only the read entries of ``s`` (``min(in, out)``) instead of the official ``in``.
        times: the times the trunk evaluates this projection at (metadata for dead-parameter analysis).
    """

    def __init__(self, in_features: int, out_features: int, generator: torch.Generator, lean: bool = False,
                 times: tuple[float, ...] = (0.0,)) -> None:
        super().__init__()
        self.in_features, self.out_features, self.times = in_features, out_features, times
        rank = min(in_features, out_features)
        self.register_buffer("coeffs", torch.randn(in_features, in_features // 2, generator=generator)
                             * in_features)
        self.register_buffer("phases", torch.randn(out_features, out_features // 2, generator=generator)
                             * out_features)
        limit = math.sqrt(6.0 / rank)
        self.singular_values = nn.Parameter(torch.empty(rank if lean else in_features).uniform_(-limit, limit))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self._cached_weight: torch.Tensor | None = None
        self._cache_key: tuple | None = None

    def _sinusoid_matrix(self, table: torch.Tensor, size: int, t: float) -> torch.Tensor:
        step = torch.tensor(float(t), dtype=torch.float32) * torch.tensor(math.pi / size, dtype=torch.float32)
        frequencies = step * torch.arange(table.shape[1], dtype=torch.float32, device=table.device)
        angles = frequencies * table
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1) / math.sqrt(self.out_features)

    def _weight_key(self, t: float) -> tuple:
        return (float(t), *((x.data_ptr(), x._version, x.dtype, x.device)
                            for x in (self.singular_values, self.coeffs, self.phases)))

    def weight(self, t: float) -> torch.Tensor:
        """The time-dependent weight ``W(t)`` of shape (in, out) (cached in eval mode without autograd)."""
        if self.training or torch.is_grad_enabled():
            return self._build_weight(t)
        key = self._weight_key(t)
        if self._cached_weight is None or self._cache_key != key:
            self._cached_weight, self._cache_key = self._build_weight(t), key
        return self._cached_weight

    def train(self, mode: bool = True) -> TemporalProjection:
        if mode or mode != self.training:                      # eval() on an eval module keeps the cache
            self._cached_weight = self._cache_key = None
        return super().train(mode)

    def _apply(self, fn, recurse: bool = True):  # type: ignore[no-untyped-def]
        self._cached_weight = self._cache_key = None
        return super()._apply(fn, recurse)

    def _build_weight(self, t: float) -> torch.Tensor:
        rank = min(self.in_features, self.out_features)
        with _autocast_off(self.coeffs.device.type):
            left = self._sinusoid_matrix(self.coeffs, self.in_features, t)[:, :rank]      # (in, rank)
            right = self._sinusoid_matrix(self.phases, self.out_features, t)[:rank]       # (rank, out)
            scaled = left * self.singular_values[:rank].to(left.dtype)
            return scaled @ right

    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """``(..., in)`` at time ``t`` -> ``(..., out)``."""
        return linear(x, self.weight(t).to(x.dtype).t(), self.bias)


def _relu(hidden: torch.Tensor) -> torch.Tensor:
    """ReLU, in place when autograd is not recording (saves one large allocation per layer at inference; under
    autograd the in-place form on the linear's output view costs more in backward than it saves)."""
    if torch.is_grad_enabled() and hidden.requires_grad:
        return torch.relu(hidden)
    return torch.relu_(hidden)


class FullFeedForward(nn.Module):
    """Learned pre-LN feed-forward: ``Dropout(W2 relu(W1 LN(x) + b1) + b2)``; ``(b, n, d) -> (b, n, d)``."""

    def __init__(self, config: ModelConfig, ff_width: int | None = None) -> None:
        super().__init__()
        inner = ff_width or config.ff_width
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.expand = dense(config.width, inner)
        self.contract = dense(inner, config.width)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        """``(b, n, d)`` -> ``(b, n, d)``; a learned feed-forward does not depend on ``t``."""
        return self.dropout(self.contract(_relu(self.expand(self.norm(x)))))


class RandomFeedForward(nn.Module):
    """TransEvolve-randomFF: as :class:`FullFeedForward` with both dense layers replaced by
    :class:`TemporalProjection` evaluated at the time ``t`` (the official layer: its depth)."""

    def __init__(self, config: ModelConfig, generator: torch.Generator, times: tuple[float, ...] = (0.0,),
                 ff_width: int | None = None) -> None:
        super().__init__()
        lean = config.fidelity == "lean"
        inner = ff_width or config.ff_width
        self.norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.expand = TemporalProjection(config.width, inner, generator, lean, times)
        self.contract = TemporalProjection(inner, config.width, generator, lean, times)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """``(b, n, d)`` at time ``t`` -> ``(b, n, d)``."""
        return self.dropout(self.contract(_relu(self.expand(self.norm(x), t)), t))


class NoFeedForward(nn.Module):
    """``ff_type="none"``: the zero field. Returns a zero of ``x``'s shape that is one broadcast scalar (a stride-0
    view, no allocation), so that every scheme's ``x + h F(x)``, sums and concatenations stay correct at the cost
    of one elementwise add. No parameters."""

    def forward(self, x: torch.Tensor, t: float = 0.0) -> torch.Tensor:
        """``(b, n, d)`` -> zeros ``(b, n, d)`` (read-only: an expanded 0-dim tensor)."""
        return x.new_zeros(()).expand_as(x)


def build_feed_forward(config: ModelConfig, generator: torch.Generator, times: tuple[float, ...] = (0.0,),
                       ff_width: int | None = None) -> nn.Module:
    """The feed-forward sub-layer of ``config.ff_type`` (``ff_width`` overrides the inner width, e.g. Macaron's
    halved feed-forwards); ``times`` are the times the trunk evaluates it at."""
    if config.ff_type == "full":
        return FullFeedForward(config, ff_width)
    if config.ff_type == "none":
        return NoFeedForward()
    return RandomFeedForward(config, generator, times, ff_width)
