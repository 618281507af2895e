"""Dense products ``x @ W^T + b`` through the fastest fp32 backend of the machine at hand.

Every dense projection of the library (attention projections, feed-forward layers, the tied output projection,
classifier heads) goes through :func:`linear`. Backends:

- ``aten``: ``torch.nn.functional.linear``, PyTorch's default (MKL or OpenBLAS on CPU, cuBLAS on GPU). The
  reference: every other backend is tested equal to it within float32 rounding, gradients included.
- ``onednn``: float32 CPU products through oneDNN's inner-product/matmul primitive
  (``torch.ops.mkldnn._linear_pointwise``, the op PyTorch's own compiler uses for packed linear layers), for the
  forward product and the input gradient ``G W``; the weight gradient ``G^T X`` stays with aten, which was as fast
  or faster for it on every shape measured (oneDNN would need transposed copies of the activations). Same float32
  arithmetic, different summation order: results differ from ``aten`` by float32 rounding only (about 1e-6
  relative), never by a change of precision.

``auto`` (the default) picks ``onednn`` on CPUs where PyTorch runs its AVX-512 kernels and was built with oneDNN,
``aten`` elsewhere. The choice is made from the CPU, not from a timing, so two runs on one machine compute the same
function bit for bit. Products below :data:`ONEDNN_MIN_MACS` multiply-accumulates (decoding one token, tiny test
models), non-float32 operands (float64, bf16 autocast: aten already sends bf16 products to oneDNN), GPU tensors and
code being compiled by ``torch.compile`` always use ``aten``.

Override with :func:`set_dense_backend` / :func:`use_dense_backend`, the ``TRANSEVOLVE_DENSE_BACKEND`` environment
variable, ``train.dense_backend`` in a run file, or ``transevolve bench --dense-backend``.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

DenseBackend = Literal["auto", "aten", "onednn"]
DENSE_BACKENDS: tuple[str, ...] = ("auto", "aten", "onednn")

#: Products with fewer multiply-accumulates than this use aten: oneDNN's per-call overhead (~15 us) loses on them.
ONEDNN_MIN_MACS = 1 << 22

_requested: str = os.environ.get("TRANSEVOLVE_DENSE_BACKEND", "auto")


def _check(name: str) -> str:
    if name not in DENSE_BACKENDS:
        raise ValueError(f"dense backend {name!r} is not one of {list(DENSE_BACKENDS)} "
                         "(set train.dense_backend, --dense-backend or TRANSEVOLVE_DENSE_BACKEND to one of them)")
    if name == "onednn" and not onednn_available():
        raise ValueError("dense backend 'onednn' needs a PyTorch built with oneDNN (torch.backends.mkldnn is not "
                         "available here); use 'aten' or 'auto'")
    return name


@functools.cache
def fast_bf16_available() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (oneDNN with AVX-512 BF16 or AMX). Without it
    PyTorch falls back to a scalar reference kernel: on an AVX2-only EPYC one bf16 2048^3 product took minutes."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def onednn_available() -> bool:
    """Whether this PyTorch can run float32 products through oneDNN's linear primitive."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        probe = torch.ones(2, 2)
        torch.ops.mkldnn._linear_pointwise(probe, probe, None, "none", [], "")
    except (RuntimeError, AttributeError, NotImplementedError):
        return False
    return True


@functools.cache
def _auto_choice() -> str:
    capability = torch.backends.cpu.get_cpu_capability()
    return "onednn" if capability.startswith("AVX512") and onednn_available() else "aten"


def resolve_dense_backend(name: str | None = None) -> str:
    """The concrete backend (``aten`` or ``onednn``) that ``name`` (default: the current setting) selects here."""
    name = _check(_requested if name is None else name)
    return _auto_choice() if name == "auto" else name


def dense_backend() -> str:
    """The concrete backend in use now."""
    return resolve_dense_backend()


def set_dense_backend(name: str) -> None:
    """Select the backend for every later :func:`linear` call in this process (``auto``, ``aten`` or ``onednn``)."""
    global _requested
    _requested = _check(name)


@contextlib.contextmanager
def use_dense_backend(name: str) -> Iterator[str]:
    """Within the block, :func:`linear` uses ``name``; yields the concrete backend."""
    global _requested
    previous, _requested = _requested, _check(name)
    try:
        yield resolve_dense_backend()
    finally:
        _requested = previous


def _onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


class _OneDNNLinear(torch.autograd.Function):
    """``(m, in) @ (out, in)^T + b`` forward and input gradient through oneDNN, weight gradient through aten."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_product(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        need_x, need_weight, need_bias = ctx.needs_input_grad
        grad_x = _onednn_product(grad, weight.t(), None) if need_x else None      # G W: (m, out) (out, in)
        grad_weight = grad.t() @ x if need_weight else None                       # G^T X (aten)
        grad_bias = grad.sum(0) if need_bias and ctx.has_bias else None
        return grad_x, grad_weight, grad_bias


def _use_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() < 2:
        return False
    if torch.is_autocast_enabled("cpu") or torch.compiler.is_compiling():
        return False
    if x.numel() // x.shape[-1] * weight.shape[0] * weight.shape[1] < ONEDNN_MIN_MACS:
        return False
    return resolve_dense_backend() == "onednn"


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``x (..., in) @ weight (out, in)^T + bias (out,)`` -> ``(..., out)`` through the selected backend."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    flat = x.reshape(-1, x.shape[-1]).contiguous()
    return _OneDNNLinear.apply(flat, weight, bias).view(*x.shape[:-1], weight.shape[0])


def fused_linear(x: torch.Tensor, *layers: nn.Linear) -> tuple[torch.Tensor, ...]:
    """Several projections of the same input ``x (..., in)`` as one product (weights concatenated), split back into
    one ``(..., out_i)`` tensor per layer."""
    weight = torch.cat([layer.weight for layer in layers])
    bias = None if layers[0].bias is None else torch.cat([layer.bias for layer in layers])
    return linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, same state-dict keys) whose product goes through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
