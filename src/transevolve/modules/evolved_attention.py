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

Execution paths (``ModelConfig.attention_impl``; all compute the same function up to float rounding):

- ``reference``: the formulas above, one ``(b, h, q, k)`` logits tensor and softmax per layer (kept as the
  readable baseline, used whenever attention weights or block scores are requested, and by ``auto`` while the
  logits are small, ``AUTO_REFERENCE_MAX_ENTRIES``, where it is the fastest path on CPU).
- ``factorised``: ``softmax_k(A0 + beta) V = E (w * V) / (E w)`` with ``E = softmax_k(A0)`` (masked entries 0)
  computed once per block and ``w = exp(beta - max beta)`` per layer, so a layer costs one batched matmul of
  ``E`` with ``[w * V, w]`` and no n x n exponentials. ``E``'s gradient is gathered from all layers and formed
  once per block (:class:`_Kernel`). Rows whose denominator ``E w`` would underflow (logits spread over more than
  ~70 nats in opposite directions) are recomputed exactly.
- ``low_memory``: ``A0 + beta = [q / sqrt(D/h); 1] . [k; beta]``, so the key bias is folded into augmented
  queries/keys of a fused flash-attention kernel (values zero-padded to the same width, as the fused CPU kernel
  needs equal widths; :class:`_FusedAttention` keeps only the unpadded tensors for backward), and no n x n tensor
  is ever stored.

Both fast paths skip the inert terms and never form ``kappa``: the key bias at depth l is ``K (P_Q . tau_l)``
(``D h`` multiply-adds per key and layer). Fully blocked query rows (official masks: padded queries, or no
visible key) attend uniformly to every key in every dtype, as the official ``-1e9`` mask makes them do in
float32 (:func:`official_masked_logits`); the fast paths write that mean of the values directly and add a
zero-valued term that carries the gradient the reference path gives those rows (the official softmax Jacobian at
uniform weights, :func:`blocked_row_surrogate`), so training matches too.

Mixed precision (``torch.autocast`` with bfloat16, e.g. ``train.precision=bf16``): every path runs. The fast paths
take the dtypes into their own hands (autocast is switched off inside them, :func:`_product_dtype` says what the
products use) and keep float32 where accuracy needs it:

- bf16 products: the projections ``Q``, ``K`` and ``W_O`` (through autocast), ``A0 = q k^T``, the layers'
  ``E [w V, w]`` and every product of the backward kernels; the fused flash kernel of ``low_memory`` gets bf16
  ``[q; 1]``, ``[k; bias]`` and values (it accumulates, takes the maximum, exponentiates and normalises in float32).
- float32: the key biases ``K (P_Q . tau)`` and ``P_Q . tau`` (small products: ``D h`` multiply-adds per key and
  layer; they sit in the exponent, where bf16 rounding would be an absolute error of ``|beta| 2^-9``), the weights
  ``w = exp(beta - max beta)``, the values ``LN(V_src)`` (LayerNorm of the float32 residual stream), the rows
  rescued from underflow and the attention weights of ``return_weights``. The kernel ``E = softmax(A0)`` is
  stored in bf16, but PyTorch's CPU softmax takes the row maximum and sum in float32 (the result is float32
  softmax rounded once). ``E w`` and ``E (w V)`` come out of one bf16 product (accumulated in float32, rounded
  once): they share the rounding of ``E`` and ``w``, so every row still mixes with weights that sum to 1. The
  underflow floor of bf16 denominators is float32's (same exponent range).
- The sub-layer returns what autocast gives a linear layer (bf16), so the residual stream ``x + update`` stays
  float32.

Under float16 autocast the fast paths fall back to ``reference``: float16's 5-bit exponent underflows ``E``'s
entries below 6e-8 and the per-layer weights ``w`` (the factorised denominator is then no longer reliable), and
the ``-1e9`` key bias of ``low_memory`` overflows to ``-inf``. Without autocast nothing changes: float32 and
float64 run the same operations as always.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

from transevolve.config import ModelConfig
from transevolve.modules.cache import CacheStore, StepContext, append_cache
from transevolve.modules.dense import Linear
from transevolve.modules.heads import merge_heads, split_heads
from transevolve.modules.init import glorot_uniform_
from transevolve.modules.masks import BLOCKED_SCORE, AttentionMasks, fully_blocked_rows, visible_keys


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


Impl = Literal["reference", "factorised", "low_memory"]

#: ``attention_impl="auto"`` uses ``reference`` while one layer's logits ``(b, h, q, k)`` have at most this many
#: entries: below it the fast paths' fixed per-layer costs outweigh the n x n exponentials they save. Measured on
#: the 2-core CPU (training steps, 4 layers per block, fp32; ``benchmarks/attention-paths/results.md``): reference
#: 1.11-1.34x faster up to 3M entries, the two about even at 2.8-4.2M (run-to-run noise is as large there),
#: factorised 2.2x faster at 9M (batch 8 x 2 heads x 768^2).
AUTO_REFERENCE_MAX_ENTRIES = 2**22

#: Above ``AUTO_REFERENCE_MAX_ENTRIES``, ``attention_impl="auto"`` uses ``factorised`` while one block's kernel
#: ``E`` (b, h, q, k) stays within this many bytes, ``low_memory`` beyond.
AUTO_KERNEL_BYTES = 512 * 2**20


def resolve_impl(impl: str, batch: int, heads: int, n_q: int, n_k: int, element_size: int = 4,
                 need_weights: bool = False) -> Impl:
    """The concrete path for a configured ``attention_impl``: ``reference`` whenever weights or block scores
    are needed or float16 autocast is on (see the module docstring; bf16 autocast runs the fast paths), ``auto``
    by the size of the n x n logits (``reference`` up to :data:`AUTO_REFERENCE_MAX_ENTRIES`, then
    ``factorised`` while its kernel takes at most :data:`AUTO_KERNEL_BYTES`, then ``low_memory``;
    ``element_size``: bytes of the kernel's dtype, 2 under bf16 autocast)."""
    if need_weights or impl == "reference" or _float16_autocast():
        return "reference"
    if impl == "auto":
        entries = batch * heads * n_q * n_k
        if entries <= AUTO_REFERENCE_MAX_ENTRIES:
            return "reference"
        return "factorised" if entries * element_size <= AUTO_KERNEL_BYTES else "low_memory"
    if impl not in ("factorised", "low_memory"):
        raise ValueError(f"unknown attention_impl {impl!r}")
    return impl  # type: ignore[return-value]


def _float16_autocast() -> bool:
    return any(torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
               for device in ("cpu", "cuda"))


def _product_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of the fast paths' big products for activations like ``x``: autocast's dtype where autocast is on
    for ``x``'s device (it casts float32/bf16/fp16 tensors, never float64), else ``x``'s own."""
    device = x.device.type
    if torch.is_autocast_enabled(device) and x.dtype != torch.float64:
        return torch.get_autocast_dtype(device)
    return x.dtype


def _accurate_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16 products, else the dtype itself (float32 or float64): exponents, biases, rescues."""
    return torch.promote_types(dtype, torch.float32)


@contextlib.contextmanager
def _autocast_off() -> Iterator[None]:
    """Autocast off (CPU and CUDA) within the block: the fast kernels choose their dtypes themselves, in forward
    and in a backward that may be called inside an autocast region. A no-op when autocast is off."""
    with contextlib.ExitStack() as stack:
        for device in ("cpu", "cuda"):
            if torch.is_autocast_enabled(device):
                stack.enter_context(torch.autocast(device, enabled=False))
        yield


def _finite_or_zero(peak: torch.Tensor) -> torch.Tensor:
    return torch.where(torch.isfinite(peak), peak, torch.zeros_like(peak))


def _underflow_floor(dtype: torch.dtype) -> float:
    """Denominators below this lose precision (float32: ~1e-30, far above the subnormal range)."""
    return torch.finfo(dtype).tiny * 2.0**24


@dataclass
class FastScores:
    """Block-level state of the fast paths (``factorised`` or ``low_memory``); the inert terms are skipped.

    Attributes:
        impl: ``factorised`` or ``low_memory``.
        queries: ``Q`` heads scaled by ``1/sqrt(D/h)``, ``(b, h, q, D/h)`` (low_memory: a view into
            ``augmented_queries``).
        keys: ``K`` heads, ``(b, h, k, D/h)``, a view of ``flat_keys`` ``(b, k, D)``.
        time_weight: ``P_Q`` ``(D, h, t)``: the key bias at depth l is ``K (P_Q . tau_l)``, so ``kappa`` is never
            formed (``D h`` multiply-adds per key and layer instead of ``D h t`` per key and block).
        key_pad: ``(b, k)`` bool, padded keys.
        visible: ``(b, 1, q or 1, k)`` bool, keys each query may see (padding, causality).
        blocked_rows: ``(b, 1, q, 1)`` bool, fully blocked rows (uniform over every key).
        any_blocked: whether ``blocked_rows`` has any True entry.
        causal: causal self-attention.
        kernel: factorised only: ``E = exp(A0 - max)`` with invisible entries 0, ``(b, h, q, k)``.
        augmented_queries: low_memory only: ``[queries, 1]``, ``(b, h, q, D/h + 1)``.
        key_biases: key biases ``(b, h, k)`` already computed, by (attention module id, time): the integer-time
            evaluations of a block come from one matmul (:func:`precompute_key_biases`); others are added lazily.
    """

    impl: Impl
    queries: torch.Tensor
    keys: torch.Tensor
    flat_keys: torch.Tensor
    time_weight: torch.Tensor
    key_pad: torch.Tensor
    visible: torch.Tensor
    blocked_rows: torch.Tensor
    any_blocked: bool
    causal: bool
    kernel: torch.Tensor | None = None
    augmented_queries: torch.Tensor | None = None
    key_biases: dict[tuple[int, float], torch.Tensor] = field(default_factory=dict)


@dataclass
class StepScores:
    """Block-level evolved scores of ``m`` new queries while decoding: ``initial`` ``A0 (b, h, m, k)`` against
    every key so far, ``new_keys`` ``K (b, j, D)`` added by this call (None when nothing was added) and the
    interaction's ``time_weight`` ``P_Q (D, h, t)`` (the key bias at time t is ``K (P_Q . tau(t))``)."""

    initial: torch.Tensor
    new_keys: torch.Tensor | None
    time_weight: torch.Tensor


class Workspace:
    """A reusable n x n buffer. Fresh multi-megabyte allocations are page-faulted in on first touch (which
    doubled the cost of the ``A0`` matmul on the benchmark machine), so the buffer is handed out again, as a new
    view, whenever nothing else holds its storage (an earlier forward's kernel still saved for backward does).
    A buffer made under ``torch.inference_mode`` is not reused outside it (inference tensors are read-only
    there)."""

    def __init__(self) -> None:
        self.buffer: torch.Tensor | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"buffer": None}

    def get(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        buffer = self.buffer
        if (buffer is None or buffer.shape != shape or buffer.dtype != like.dtype or buffer.device != like.device
                or (buffer.is_inference() and not torch.is_inference_mode_enabled()) or not _sole_owner(buffer)):
            buffer = self.buffer = like.new_empty(shape)
        return buffer.view(shape)


def _storage_users(tensor: torch.Tensor) -> int:
    """References to ``tensor``'s storage, counting the temporary storage handle of the query itself (private
    API; -1 where unavailable)."""
    try:
        return int(torch._C._storage_Use_Count(tensor.untyped_storage()._cdata))
    except (AttributeError, RuntimeError, TypeError):
        return -1


#: What :func:`_storage_users` reports for a tensor that nothing else shares.
_SOLE_USERS = _storage_users(torch.empty(1))


def _sole_owner(tensor: torch.Tensor) -> bool:
    """Whether ``tensor`` is the only tensor using its storage (False when that cannot be told)."""
    return _SOLE_USERS > 0 and _storage_users(tensor) == _SOLE_USERS


def _head_matmul(left: torch.Tensor, right: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``left @ right`` for ``(b, h, ., .)`` operands that are head views of ``(b, n, h, c)`` projections: one
    ``bmm`` over the heads per batch row reads the strided views directly, where ``matmul`` would first copy
    both operands to a contiguous layout."""
    if out is None:
        out = left.new_empty(*left.shape[:-1], right.shape[-1])
    for row in range(left.shape[0]):
        torch.bmm(left[row], right[row], out=out[row])
    return out


def _kernel_values(queries: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor, masked: bool,
                   workspace: Workspace | None = None) -> torch.Tensor:
    shape = (*queries.shape[:-1], keys.shape[-2])
    scores = _head_matmul(queries, keys.mT, None if workspace is None else workspace.get(shape, queries))
    if masked:        # rows without any visible key stay unmasked (finite); the callers replace them
        scores.masked_fill_(~visible & visible.any(-1, keepdim=True), float("-inf"))
    # exp(A0 - logsumexp) row by row, in place: one fused pass (twice as fast as max, subtract, exp); the row
    # normaliser cancels in E (w V) / (E w) like the maximum would.
    return torch.ops.aten._softmax.out(scores, -1, False, out=scores)


class _Kernel(torch.autograd.Function):
    """``E = exp(q k^T - c)`` (per-row constant ``c``, invisible entries 0) with a fused backward.

    The gradient of ``E`` is ``sum_l G_l P_l^T`` over the layers that used it (``mixed_l = E P_l``); those
    layers (:class:`_FactorisedMix`) leave ``(G_l, P_l)`` in the collector instead of each producing an n x n
    gradient, so the backward
    is one matmul ``[G_1 .. G_L] [P_1 .. P_L]^T``, one in-place product with ``E`` (the exp; invisible entries
    are 0 in ``E``) and the two matmuls into ``q`` and ``k``. The per-row constant cancels in the attention, so
    it carries no gradient.
    """

    @staticmethod
    @_autocast_off()
    def forward(ctx: FunctionCtx, queries: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor, masked: bool,
                collector: list[tuple[torch.Tensor, torch.Tensor]], workspaces: tuple[Workspace, Workspace] | None
                ) -> torch.Tensor:
        kernel = _kernel_values(queries, keys, visible, masked, None if workspaces is None else workspaces[0])
        ctx.save_for_backward(queries, keys, kernel)
        ctx.collector = collector  # type: ignore[attr-defined]
        ctx.workspace = None if workspaces is None else workspaces[1]  # type: ignore[attr-defined]
        ctx.set_materialize_grads(False)
        return kernel

    @staticmethod
    @once_differentiable
    @_autocast_off()
    def backward(ctx: Any, grad_kernel: torch.Tensor | None) -> tuple[torch.Tensor | None, ...]:
        queries, keys, kernel = ctx.saved_tensors
        parts = list(ctx.collector)
        ctx.collector.clear()
        if parts:
            grads = torch.cat([grad for grad, _ in parts], dim=-1)
            packs = torch.cat([pack for _, pack in parts], dim=-1)
            if ctx.workspace is None:
                total = grads @ packs.transpose(-1, -2)
            else:
                total = torch.matmul(grads, packs.transpose(-1, -2), out=ctx.workspace.get(kernel.shape, kernel))
            if grad_kernel is not None:
                total += grad_kernel
            total.mul_(kernel)
        elif grad_kernel is not None:
            total = grad_kernel * kernel
        else:
            return None, None, None, None, None, None
        grad_queries = _head_matmul(total, keys) if ctx.needs_input_grad[0] else None
        grad_keys = _head_matmul(total.mT, queries) if ctx.needs_input_grad[1] else None
        return grad_queries, grad_keys, None, None, None, None


def _mix(kernel: torch.Tensor, packed: torch.Tensor) -> torch.Tensor:
    """``E @ P`` computed as ``(P^T E^T)^T`` (a transposed view): 10-20% faster with MKL for a narrow ``P``."""
    return (packed.mT @ kernel.mT).mT


class _FactorisedMix(torch.autograd.Function):
    """One factorised layer: ``out = N / den`` with ``[N, den] = E [w V, w]``, and a compact backward.

    Backward: ``G_mixed = [G, -sum_c G * out] / den`` (one (b, h, q, v + 1) tensor), ``dP = E^T G_mixed``, then
    ``dV = w dP_v`` and ``dw = sum_c dP_v V + dP_den``; ``(G_mixed, P)`` goes to ``E``'s collector. The packed
    ``P`` is rebuilt in backward rather than saved. Rows whose denominator is below the underflow floor are divided
    by 1 (and replaced by the caller); ``small`` marks them.
    """

    @staticmethod
    @_autocast_off()
    def forward(ctx: FunctionCtx, kernel: torch.Tensor, values: torch.Tensor, weights: torch.Tensor,
                parts: list[tuple[torch.Tensor, torch.Tensor]] | None) -> tuple[torch.Tensor, torch.Tensor]:
        out, small, denominator = _mix_divide(kernel, _pack(values, weights, kernel.dtype))
        ctx.save_for_backward(kernel, values, weights, out, denominator)
        ctx.parts = parts  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(small)
        return out, small

    @staticmethod
    @once_differentiable
    @_autocast_off()
    def backward(ctx: Any, grad: torch.Tensor, _: Any) -> tuple[torch.Tensor | None, ...]:
        kernel, values, weights, out, denominator = ctx.saved_tensors
        width = values.shape[-1]
        grad_mixed = grad.new_empty(*grad.shape[:-1], width + 1)
        torch.div(grad, denominator, out=grad_mixed[..., :width])
        grad_mixed[..., width:] = -(grad * out).sum(-1, keepdim=True) / denominator
        packed = _pack(values, weights, kernel.dtype)
        grad_kernel = None
        if ctx.needs_input_grad[0]:
            if ctx.parts is not None:
                ctx.parts.append((grad_mixed, packed))
            else:
                grad_kernel = grad_mixed @ packed.mT
        grad_packed = (grad_mixed.mT @ kernel).mT                                        # E^T G_mixed
        grad_values = grad_packed[..., :width] * weights if ctx.needs_input_grad[1] else None
        grad_weights = None
        if ctx.needs_input_grad[2]:
            grad_weights = (grad_packed[..., :width] * values).sum(-1, keepdim=True) + grad_packed[..., width:]
        return grad_kernel, grad_values, grad_weights, None


def _pack(values: torch.Tensor, weights: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[w * V, w]``: ``values (b, h, k, v)``, ``weights (b, h, k, 1)`` -> ``(b, h, k, v + 1)`` in ``dtype`` (the
    kernel's; the product ``w * V`` is taken in the operands' dtype and rounded once; no autograd)."""
    b, h, n_k, width = values.shape
    packed = values.new_empty(b, h, n_k, width + 1, dtype=dtype)
    torch.mul(values, weights, out=packed[..., :width])
    packed[..., width:] = weights
    return packed


def _mix_divide(kernel: torch.Tensor, packed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``N / den`` from ``[N, den] = E P`` (no autograd), written in the ``(b, q, h, v)`` layout the output projection
    reads; returns it as a ``(b, h, q, v)`` view, the underflow mask and the (safe) denominator ``(b, h, q, 1)``."""
    mixed = _mix(kernel, packed)
    numerator, denominator = mixed[..., :-1], mixed[..., -1:]
    small = denominator < _underflow_floor(denominator.dtype)
    denominator = denominator.masked_fill(small, 1.0)
    b, h, n_q, width = numerator.shape
    out = numerator.new_empty(b, n_q, h, width).transpose(1, 2)
    torch.div(numerator, denominator, out=out)
    return out, small, denominator


def _tracks_grad(*tensors: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def factorised_kernel(queries: torch.Tensor, keys: torch.Tensor, visible: torch.Tensor,
                      workspaces: tuple[Workspace, Workspace] | None = None) -> torch.Tensor:
    """``E = exp(A0 - c)`` with invisible entries 0: ``(b, h, q, k)``; ``c`` is the row's log-sum-exp over visible
    keys (so ``E`` is the row softmax, computed in place), entries in [0, 1].

    The shift is a constant per row, so it carries no gradient: the attention does not depend on it.
    With autograd, the returned tensor carries the list (``gradient_parts``) through which
    :func:`factorised_attention` hands over the layers' gradients. ``workspaces`` (kernel, gradient) are reused
    buffers (see :class:`Workspace`).
    """
    masked = not bool(visible.all())
    if not _tracks_grad(queries, keys):
        return _kernel_values(queries, keys, visible, masked, None if workspaces is None else workspaces[0])
    parts: list[tuple[torch.Tensor, torch.Tensor]] = []
    kernel = _Kernel.apply(queries, keys, visible, masked, parts, workspaces)
    kernel.gradient_parts = parts
    return kernel


def exact_attention(queries: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, visible: torch.Tensor,
                    values: torch.Tensor | None = None) -> torch.Tensor:
    """Direct masked softmax: ``softmax(q k^T + bias, invisible -> -inf)`` (then ``@ values`` if given).

    ``queries (..., q, c)``, ``keys (..., k, c)``, ``bias (..., k)``, ``visible`` broadcastable to ``(..., q, k)``.
    Rows without a visible key come out uniform (the callers replace them anyway).
    """
    logits = (queries @ keys.transpose(-1, -2) + bias.unsqueeze(-2)).masked_fill(~visible, float("-inf"))
    none_visible = ~visible.any(-1, keepdim=True)
    weights = torch.softmax(logits.masked_fill(none_visible, 0.0), dim=-1)
    return weights if values is None else weights @ values


def _rescue_rows(mixed: torch.Tensor, rows: torch.Tensor, block: FastScores, bias: torch.Tensor,
                 values: torch.Tensor) -> torch.Tensor:
    """Recompute ``rows (b, h, q, 1)`` of ``mixed (b, h, q, v)`` with :func:`exact_attention`, head by head (in
    float32 when ``mixed`` is bf16: these rows have logits spread over tens of nats)."""
    b, h, n_q, width = mixed.shape
    n_k = values.shape[2]
    flat_rows = rows.reshape(b * h, n_q)
    index = flat_rows.any(-1).nonzero().squeeze(-1)
    dtype = _accurate_dtype(mixed.dtype)

    def pick(tensor: torch.Tensor, *shape: int) -> torch.Tensor:
        picked = tensor.reshape(b * h, *shape).index_select(0, index)
        return picked.to(dtype) if picked.is_floating_point() else picked

    visible = block.visible.expand(b, h, n_q, n_k)
    with _autocast_off():
        exact = exact_attention(pick(block.queries, n_q, -1), pick(block.keys, n_k, -1), pick(bias, n_k),
                                pick(visible, n_q, n_k), pick(values, n_k, width)).to(mixed.dtype)
    flat = mixed.reshape(b * h, n_q, width)
    patched = torch.where(flat_rows.index_select(0, index).unsqueeze(-1), exact, flat.index_select(0, index))
    return flat.index_copy(0, index, patched).view(b, h, n_q, width)


def factorised_attention(block: FastScores, bias: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax(A0 + bias) V = E (w * V) / (E w)``: one matmul with ``[w * V, w]``. ``bias (b, h, k)``,
    ``values (b, h, k, v)`` -> ``(b, h, q, v)`` in the kernel's dtype. Rows whose denominator underflows are
    recomputed exactly. The weights ``w`` are exponentials of the bias's dtype (float32 under bf16 autocast); the
    product with ``E`` takes ``[w * V, w]`` in ``E``'s dtype."""
    assert block.kernel is not None
    with _autocast_off():
        masked = bias.masked_fill(block.key_pad[:, None, :], float("-inf"))
        weights = (masked - _finite_or_zero(masked.detach().amax(-1, keepdim=True))).exp().unsqueeze(-1)
        if _tracks_grad(block.kernel, weights, values):
            parts = getattr(block.kernel, "gradient_parts", None)
            out, small = _FactorisedMix.apply(block.kernel, values, weights, parts)
        else:
            out, small, _ = _mix_divide(block.kernel, _pack(values, weights, block.kernel.dtype))
    rescue = small & ~block.blocked_rows
    if bool(rescue.any()):
        out = _rescue_rows(out, rescue, block, bias, values)
    return out


def blocked_row_surrogate(queries: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, values: torch.Tensor
                          ) -> torch.Tensor:
    """Zero-valued ``(b, h, q, v)`` term carrying the reference's gradient at fully blocked rows.

    A fully blocked row's value (the mean of the values) does not depend on its scores ``S``, but autograd
    through the official ``S - 1e9`` (and the reference path, :func:`official_masked_logits`) gives it the softmax
    Jacobian at uniform weights: ``dS_ij = (g_i . V_j - mean_j g_i . V_j) / k``. The official code trains with
    that gradient, so the fast paths add ``(sum_j dS_ij V_j - mean_j(dS_ij) sum_j V_j) / k`` with
    ``dS = S - stop_gradient(S)`` (exactly 0), expanded through ``S_ij = q_i . k_j + bias_j`` so that no n x n
    tensor is formed.
    """
    n_k = values.shape[2]
    values, fixed_q, fixed_k = values.detach(), queries.detach(), keys.detach()
    delta_q, delta_k, delta_b = queries - fixed_q, keys - fixed_k, bias - bias.detach()
    weighted = (delta_q @ (fixed_k.transpose(-1, -2) @ values) + fixed_q @ (delta_k.transpose(-1, -2) @ values)
                + (delta_b.unsqueeze(-2) @ values))                                    # sum_j dS_ij V_j
    row_sum = (delta_q @ fixed_k.sum(-2).unsqueeze(-1) + fixed_q @ delta_k.sum(-2).unsqueeze(-1)
               + delta_b.sum(-1)[..., None, None])                                    # sum_j dS_ij
    return (weighted - row_sum * values.sum(-2, keepdim=True) / n_k) / n_k


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_FLASH_CPU_BACKWARD = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)


class _FusedAttention(torch.autograd.Function):
    """The fused CPU flash kernel on ``[q; 1] . [k; bias]`` with values zero-padded to the query width, saving
    only the 64-wide values and output (and the log-sum-exp) for backward: the padded keys, values and output
    are rebuilt there (the output's padded columns are exactly 0), so a layer keeps no (D/h + 1)-wide copies."""

    @staticmethod
    @_autocast_off()
    def forward(ctx: FunctionCtx, queries: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor,
                values: torch.Tensor, causal: bool) -> torch.Tensor:
        pad = queries.shape[-1] - values.shape[-1]
        keys_bias = torch.cat([keys, bias.unsqueeze(-1)], dim=-1)
        out, logsumexp = _FLASH_CPU(queries, keys_bias, F.pad(values, (0, pad)), 0.0, causal, scale=1.0)
        out = out[..., : values.shape[-1]].contiguous()
        ctx.save_for_backward(queries, keys, bias, values, out, logsumexp)
        ctx.causal = causal  # type: ignore[attr-defined]
        return out

    @staticmethod
    @once_differentiable
    @_autocast_off()
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        queries, keys, bias, values, out, logsumexp = ctx.saved_tensors
        width = values.shape[-1]
        pad = queries.shape[-1] - width
        keys_bias = torch.cat([keys, bias.unsqueeze(-1)], dim=-1)
        grad_q, grad_k, grad_v = _FLASH_CPU_BACKWARD(
            F.pad(grad.contiguous(), (0, pad)), queries, keys_bias, F.pad(values, (0, pad)), F.pad(out, (0, pad)),
            logsumexp, 0.0, ctx.causal, scale=1.0)
        return grad_q, grad_k[..., :-1], grad_k[..., -1], grad_v[..., :width], None


def fused_attention(block: FastScores, bias: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``softmax([q; 1] . [k; bias]) V`` with a fused flash-attention kernel: no n x n tensor.

    Padded keys get a ``-1e9`` bias; values are zero-padded to the query width (the fused CPU kernel needs
    equal widths). On CPU with autograd this goes through :class:`_FusedAttention` (compact saved state);
    elsewhere through ``scaled_dot_product_attention``. ``bias (b, h, k)``, ``values (b, h, k, v)`` ->
    ``(b, h, q, v)`` in the queries' dtype: the bias (float32 under bf16 autocast) and the values are rounded to it,
    and the kernel takes maxima, exponentials and sums in float32.
    """
    assert block.augmented_queries is not None
    queries = block.augmented_queries
    masked = bias.masked_fill(block.key_pad[:, None, :], BLOCKED_SCORE).to(block.keys.dtype)
    values = values.to(queries.dtype)
    if (_FLASH_CPU is not None and _FLASH_CPU_BACKWARD is not None and queries.device.type == "cpu"
            and queries.dtype in (torch.float32, torch.float64, torch.bfloat16)):
        return _FusedAttention.apply(queries, block.keys, masked, values, block.causal)
    keys = torch.cat([block.keys, masked.unsqueeze(-1)], dim=-1)
    padded = F.pad(values, (0, queries.shape[-1] - values.shape[-1]))
    with _autocast_off():
        out = F.scaled_dot_product_attention(queries, keys, padded, scale=1.0, is_causal=block.causal)
    return out[..., : values.shape[-1]]


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
        self.query_proj = Linear(d, big, bias=False)
        self.key_proj = Linear(d, big, bias=False)
        self.query_time = nn.Parameter(torch.empty(big, h, t))
        # The official W_Q/W_K are (D, D) matrices initialised as a whole.
        for weight in (self.query_proj.weight, self.key_proj.weight, self.query_time):
            glorot_uniform_(weight, big, big)
        if self.official:
            self.key_time = nn.Parameter(glorot_uniform_(torch.empty(big, h, t), big, big))
        else:
            self.register_parameter("key_time", None)
        self.dropout = nn.Dropout(config.dropout)
        self.workspaces = (Workspace(), Workspace())             # factorised kernel and its gradient

    def forward(self, query_source: torch.Tensor, key_source: torch.Tensor, masks: AttentionMasks | None = None,
                impl: Impl = "reference") -> BlockScores | FastScores:
        """``query_source (b, q, d)``, ``key_source (b, k, d)`` -> :class:`BlockScores` (``reference``) or
        :class:`FastScores` (``factorised`` / ``low_memory``, which need the ``masks``)."""
        if impl != "reference":
            if masks is None:
                raise ValueError(f"attention_impl={impl!r} needs the attention masks at block level")
            return self.fast(query_source, key_source, masks, impl)
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

    def project_queries(self, source: torch.Tensor) -> torch.Tensor:
        """``(b, q, d)`` -> query heads scaled by ``1/sqrt(D/h)``, ``(b, h, q, D/h)``."""
        queries = self.dropout(self.query_proj(source))
        b, n, big = queries.shape
        head = big // self.num_heads
        return (queries * (1.0 / math.sqrt(head))).view(b, n, self.num_heads, head).transpose(1, 2)

    def project_flat_keys(self, source: torch.Tensor) -> torch.Tensor:
        """``(b, k, d)`` -> ``K`` ``(b, k, D)`` (heads are contiguous D/h slices)."""
        return self.dropout(self.key_proj(source))

    def block_state(self, query_source: torch.Tensor, key_source: torch.Tensor, masks: AttentionMasks,
                    impl_request: str, need_weights: bool,
                    plan: list[tuple[EvolvedAttention, float]] | None = None) -> BlockScores | FastScores:
        """The block's scores on the path ``impl_request`` resolves to (``reference`` when weights are needed).

        ``plan``: the (layer, time) evaluations the block will run; on the fast paths their key biases come from
        one matmul (:func:`precompute_key_biases`).
        """
        b, n_q, _ = query_source.shape
        impl = resolve_impl(impl_request, b, self.num_heads, n_q, key_source.shape[1],
                            _product_dtype(query_source).itemsize, need_weights)
        if impl == "reference":
            return self(query_source, key_source)
        state = self(query_source, key_source, masks, impl)
        if plan:
            precompute_key_biases(state, plan)
        return state

    def step_state(self, x: torch.Tensor, store: dict[str, torch.Tensor], prefix: str,
                   memory: torch.Tensor | None) -> StepScores:
        """Incremental decoding of the block input ``x (b, m, d)``: the new queries against every cached key.

        Self-attention appends the new positions' keys to ``store[prefix + "keys"]``; cross-attention projects the
        memory's keys on the first call only.
        """
        if memory is None:
            new_keys = self.project_flat_keys(x)                                              # (b, m, D)
            keys = append_cache(store, prefix + "keys", split_heads(new_keys, self.num_heads), dim=2)
        else:
            new_keys = None
            if prefix + "keys" not in store:
                new_keys = self.project_flat_keys(memory)                                     # once per source
                store[prefix + "keys"] = split_heads(new_keys, self.num_heads)
            keys = store[prefix + "keys"]
        return StepScores(self.project_queries(x) @ keys.transpose(-1, -2), new_keys, self.query_time)

    def fast(self, query_source: torch.Tensor, key_source: torch.Tensor, masks: AttentionMasks,
             impl: Impl) -> FastScores:
        """The fast paths' block state (inert query-side and time-time terms skipped, ``kappa`` not formed)."""
        if impl not in ("factorised", "low_memory"):
            raise ValueError(f"unknown fast attention_impl {impl!r}")
        queries = self.project_queries(query_source)
        flat_keys = self.dropout(self.key_proj(key_source))                              # (b, k, D)
        b, n_k, big = flat_keys.shape
        keys = flat_keys.view(b, n_k, self.num_heads, big // self.num_heads).transpose(1, 2)
        augmented = None
        if impl == "low_memory":
            augmented = F.pad(queries, (0, 1), value=1.0)                                # [q / sqrt(D/h); 1]
            queries = augmented[..., :-1]
        visible = visible_keys(masks.key_pad, queries.shape[2], masks.causal)
        blocked = fully_blocked_rows(masks.query_pad, masks.key_pad, masks.causal)
        block = FastScores(impl, queries, keys, flat_keys, self.query_time, masks.key_pad, visible,
                           blocked[:, None, :, None], bool(blocked.any()), masks.causal, augmented_queries=augmented)
        if impl == "factorised":
            block.kernel = factorised_kernel(queries, keys, visible, self.workspaces)
        return block


class _OfficialMask(torch.autograd.Function):
    """``where(blocked, fill, logits)`` forward, identity backward: the gradient of the official
    ``logits + (-1e9) * blocked``."""

    @staticmethod
    def forward(ctx: FunctionCtx, logits: torch.Tensor, blocked: torch.Tensor, fill: torch.Tensor) -> torch.Tensor:
        ctx.dtype = logits.dtype  # type: ignore[attr-defined]
        return torch.where(blocked, fill, logits)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return grad.to(ctx.dtype), None, None


def official_masked_logits(logits: torch.Tensor, masks: AttentionMasks) -> torch.Tensor:
    """The official ``logits - 1e9 * blocked`` in every dtype: ``logits (b, h, q, k)`` -> ``(b, h, q, k)``, in
    the promotion of their dtype with float32, as the official float32 mask gives.

    Blocked entries of a partly blocked row become -1e9 (weight exactly 0). Every entry of a fully blocked row
    (padded query, or no visible key) becomes 0, so its softmax is uniform over every key in every dtype; adding
    -1e9 gives that in float32 only (``S - 1e9`` rounds to -1e9 there), while float64 keeps ``softmax(S)``.

    Gradient: the identity, as through the official ``S + (-1e9) M``. At partly blocked entries the softmax then
    passes exactly 0 (zero weight). A fully blocked row's output (the mean of the values) does not depend on its
    scores, so its true derivative w.r.t. them is 0; like the official code, it gets the softmax Jacobian at
    uniform weights instead, ``dS_ij = (g_i . V_j - mean_l g_i . V_l) / k`` (the fast paths add the same through
    :func:`blocked_row_surrogate`).
    """
    fill = torch.where(masks.blocked_rows, 0.0, BLOCKED_SCORE).to(torch.promote_types(logits.dtype, torch.float32))
    return _OfficialMask.apply(logits, masks.blocked, fill)


def time_signal(amplitudes: torch.Tensor, t: float, period: float) -> torch.Tensor:
    """``T(t) = [sin(x p), cos(x p)] * theta`` with ``x = t pi / period`` in float32; ``(d,)``.

    ``t`` is a time value (any float); at the integer depths ``l`` of the official layers it is the official
    ``T_l`` bit for bit.
    """
    half = amplitudes.shape[0] // 2
    step = torch.tensor(float(t), dtype=torch.float32) * torch.tensor(math.pi / period, dtype=torch.float32)
    angles = step * torch.arange(half, dtype=torch.float32, device=amplitudes.device)
    return torch.cat([torch.sin(angles), torch.cos(angles)]).to(amplitudes.dtype) * amplitudes


class EvolvedAttention(nn.Module):
    """Attention at time ``t`` of a block from the shared :class:`BlockScores` (the official ``Layer2``, where
    ``t`` is the layer's depth ``l``).

    Parameters: ``time_amplitudes`` theta ``(d,)``, ``value_norm`` (LayerNorm of the values source) and
    ``output_proj`` W_O ``(d, d)`` without bias. ``times`` records the times the trunk evaluates this module at
    (for :func:`transevolve.params.dead_parameter_masks`); the module itself accepts any ``t``.
    """

    def __init__(self, config: ModelConfig, times: tuple[float, ...] = (0.0,)) -> None:
        super().__init__()
        d = config.width
        self.times = times
        self.num_heads = config.num_heads
        self.time_period = config.time_period
        limit = math.sqrt(6.0 / d)
        self.time_amplitudes = nn.Parameter(torch.empty(d).uniform_(-limit, limit))
        self.value_norm = nn.LayerNorm(d, eps=config.layer_norm_eps)
        self.output_proj = Linear(d, d, bias=False)
        glorot_uniform_(self.output_proj.weight, d, d)
        self.dropout = nn.Dropout(config.dropout)

    def tau(self, t: float) -> torch.Tensor:
        """The time signal at ``t`` by head, ``tau(t)`` ``(h, t_dim)``."""
        return time_signal(self.time_amplitudes, t, self.time_period).view(self.num_heads, -1)

    def bias_mixing(self, time_weight: torch.Tensor, t: float) -> torch.Tensor:
        """``P_Q . tau(t)``: ``time_weight (D, h, t_dim)`` -> ``(D, h)``, so that ``beta(t) = K (P_Q . tau(t))``
        (in the parameters' dtype, also under autocast)."""
        with _autocast_off():
            return torch.einsum("cht,ht->ch", time_weight, self.tau(t))

    def fast_key_bias(self, block: FastScores, t: float) -> torch.Tensor:
        """``beta(t) = K (P_Q . tau(t))`` without forming ``kappa``: ``(b, h, k)`` (cached in ``block``; float32
        when ``K`` is bf16)."""
        key = (id(self), float(t))
        if key not in block.key_biases:
            mixing = self.bias_mixing(block.time_weight, t)
            with _autocast_off():
                keys = block.flat_keys.to(_accurate_dtype(block.flat_keys.dtype))
                block.key_biases[key] = (keys @ mixing.to(keys.dtype)).transpose(1, 2)
        return block.key_biases[key]

    def scores(self, block: BlockScores, masks: AttentionMasks, t: float) -> torch.Tensor:
        """Masked logits ``S(t)`` of shape ``(b, h, q, k)`` (see :func:`official_masked_logits`)."""
        tau = self.tau(t)
        key_bias = torch.einsum("bhkt,ht->bhk", block.key_time, tau).unsqueeze(2)        # (b, h, 1, k)
        if block.query_time is not None and block.time_time is not None:
            query_bias = torch.einsum("bhqt,ht->bhq", block.query_time, tau).unsqueeze(3)  # (b, h, q, 1)
            constant = (block.time_time * tau * tau).sum(-1)[None, :, None, None]      # (1, h, 1, 1)
            logits = (block.initial + (query_bias + key_bias)) + constant
        else:
            logits = block.initial + key_bias
        return official_masked_logits(logits, masks)

    def forward(self, state: torch.Tensor, source: torch.Tensor, masks: AttentionMasks,
                block: BlockScores | FastScores | None, t: float, return_weights: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``source (b, k, d)`` (the values source) and the block's scores at time ``t`` -> update ``(b, q, d)``
        (and weights ``(b, h, q, k)``).

        ``state`` (the current query-side state) is not used: TransEvolve's queries enter only through the
        block-level scores; the argument keeps one interface with every attention mechanism. ``block`` is a
        :class:`BlockScores` (reference path) or a :class:`FastScores` (fast paths).
        """
        if block is None:
            raise ValueError("EvolvedAttention needs the block-level BlockScores of its block")
        if isinstance(block, FastScores):
            return self._fast(block, source, t, return_weights)
        weights = torch.softmax(self.scores(block, masks, t), dim=-1)
        b, n_k, d = source.shape
        values = self.value_norm(source).view(b, n_k, self.num_heads, -1).transpose(1, 2)
        mixed = (weights @ values).transpose(1, 2).reshape(b, -1, d)                    # (b, q, d)
        return self.dropout(self.output_proj(mixed)), (weights if return_weights else None)

    def _merge(self, mixed: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.output_proj(merge_heads(mixed)))

    def _fast(self, block: FastScores, source: torch.Tensor, t: float, return_weights: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        values = split_heads(self.value_norm(source), self.num_heads)                   # (b, h, k, d/h)
        bias = self.fast_key_bias(block, t)                                             # (b, h, k)
        if block.impl == "factorised":
            mixed = factorised_attention(block, bias, values)
        else:
            mixed = fused_attention(block, bias, values)
        if block.any_blocked:
            filler = values.mean(-2, keepdim=True)
            if torch.is_grad_enabled() and (block.queries.requires_grad or bias.requires_grad):
                filler = filler + blocked_row_surrogate(block.queries, block.keys, bias, values)
            mixed = torch.where(block.blocked_rows, filler.to(mixed.dtype), mixed)
        weights = None
        if return_weights:
            dtype = bias.dtype                   # float32 under bf16 autocast
            with _autocast_off():
                weights = exact_attention(block.queries.to(dtype), block.keys.to(dtype), bias, block.visible)
            weights = weights.masked_fill(block.blocked_rows, 1.0 / values.shape[2])
        return self._merge(mixed), weights

    def step(self, state: torch.Tensor, context: StepContext, t: float) -> torch.Tensor:
        """Incremental decoding: the update ``(b, m, d)`` for ``m`` new query positions at time ``t``.

        ``context.scores`` (:class:`StepScores`) holds ``A0`` of the new queries against every key so far and the
        keys added by this call; ``context.store[prefix + "bias"]`` ``(b, h, k)`` and ``[prefix + "values"]``
        ``(b, h, k, d/h)`` grow along the key axis; ``store.constants[prefix + "mixing"]`` holds ``P_Q . tau(t)``.
        New values are the new states (self-attention) or the memory (cross-attention, on the first call).
        """
        scores, store, prefix = context.scores, context.store, context.prefix
        assert scores is not None, "evolved attention decodes from its block's StepScores"
        if scores.new_keys is None:
            bias = store[prefix + "bias"]
        else:
            constants = store.constants if isinstance(store, CacheStore) else {}
            mixing = constants.get(prefix + "mixing")
            if mixing is None:
                mixing = constants[prefix + "mixing"] = self.bias_mixing(scores.time_weight, t)
            bias = append_cache(store, prefix + "bias", (scores.new_keys @ mixing).transpose(1, 2), dim=2)
        new_values = context.memory if context.memory is not None else state
        if context.memory is not None and scores.new_keys is None:
            values = store[prefix + "values"]
        else:
            values = append_cache(store, prefix + "values", split_heads(self.value_norm(new_values), self.num_heads),
                                  dim=2)
        visible, blocked_rows = context.masks.visible, context.masks.blocked_rows
        logits = (scores.initial + bias.unsqueeze(2)).masked_fill(~visible, float("-inf"))
        weights = torch.softmax(logits.masked_fill(blocked_rows | ~visible.any(-1, keepdim=True), 0.0), dim=-1)
        return self._merge(weights @ values)


def precompute_key_biases(block: FastScores, evaluations: list[tuple[EvolvedAttention, float]]) -> None:
    """The key biases ``K (P_Q . tau(t))`` of several (layer, time) evaluations from one matmul ``K [M_1 .. M_E]``
    (one pass over ``K`` instead of E, and one gradient for ``K`` instead of E accumulated ones); stored in
    ``block.key_biases``."""
    evaluations = [(layer, t) for layer, t in evaluations if (id(layer), float(t)) not in block.key_biases]
    if not evaluations:
        return
    heads = block.keys.shape[1]
    mixing = torch.cat([layer.bias_mixing(block.time_weight, t) for layer, t in evaluations], dim=1)  # (D, E h)
    with _autocast_off():                        # float32 biases from bf16 keys (they are exponentiated)
        keys = block.flat_keys.to(_accurate_dtype(block.flat_keys.dtype))
        biases = (keys @ mixing.to(keys.dtype)).split(heads, dim=-1)                             # E x (b, k, h)
    for (layer, t), bias in zip(evaluations, biases, strict=True):
        block.key_biases[(id(layer), float(t))] = bias.transpose(1, 2)
