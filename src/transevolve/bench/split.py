"""Where a step's time goes: self CPU time of one profiled step, split into dense products, fused attention
kernels, the optimizer and the rest.

The step runs under :mod:`torch.profiler` (CPU activity) and every recorded operator's *self* time (its time minus
its recorded children's) goes to one category, decided by the operator and its ancestors in the call tree:

- ``optimizer``: anything inside ``Optimizer.step#...`` or ``Optimizer.zero_grad#...`` (the Adam update's
  elementwise kernels included);
- ``attention_kernels``: the fused attention kernels (``aten::_scaled_dot_product_flash_attention_for_cpu`` and
  its backward, any other ``scaled_dot_product``/``flash``/``efficient_attention`` operator) and what runs inside
  them;
- ``products``: dense product kernels (``aten::mm``, ``bmm``, ``addmm``, ``baddbmm``, ``mv``, ...,
  ``mkldnn::_linear_pointwise``, oneDNN linear and int-packed weight products) with what runs inside them, plus the
  self time of the dispatchers ``aten::matmul``/``linear``/``einsum`` and of the oneDNN linear autograd function
  (not their children: the copies a ``matmul`` makes to reach a batched layout are memory work);
- ``rest``: everything else (elementwise work, softmax, exponentials, normalisation, dropout, copies and dtype
  conversions, reductions, autograd bookkeeping).

Time outside any operator (the Python between them) is not in the profile; ``profiled_step`` (wall time of the
profiled step) shows how much that is. Profiling adds some overhead of its own, so fractions are what to read.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from torch.profiler import ProfilerActivity, profile

CATEGORIES: tuple[str, ...] = ("products", "attention_kernels", "optimizer", "rest")

#: Product kernels: their own time and everything recorded inside them count as ``products``.
PRODUCT_KERNELS = frozenset({
    "aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm", "aten::addbmm", "aten::_addmm_activation",
    "aten::mv", "aten::addmv", "aten::dot", "aten::vdot", "aten::_int_mm", "aten::mkldnn_linear",
    "aten::mkldnn_linear_backward", "aten::mkldnn_linear_backward_input", "aten::mkldnn_linear_backward_weights",
})
PRODUCT_KERNEL_PREFIXES = ("mkldnn::_linear_pointwise", "aten::_weight_int", "aten::_convert_weight_to_int")

#: Product dispatchers: only their own time counts as ``products`` (their children are classified on their own).
PRODUCT_DISPATCHERS = frozenset({"aten::matmul", "aten::linear", "aten::einsum", "aten::bilinear", "aten::tensordot",
                                 "_OneDNNLinear", "_OneDNNLinearBackward"})

ATTENTION_MARKERS = ("scaled_dot_product", "flash_attention", "efficient_attention")
OPTIMIZER_PREFIXES = ("Optimizer.step#", "Optimizer.zero_grad#")


class Event(Protocol):
    """What is read from a profiler event (:class:`torch.autograd.profiler_util.FunctionEvent`)."""

    name: str
    self_cpu_time_total: float           # microseconds
    cpu_parent: Event | None


def _is_product_kernel(name: str) -> bool:
    return name in PRODUCT_KERNELS or name.startswith(PRODUCT_KERNEL_PREFIXES)


def _is_attention(name: str) -> bool:
    return any(marker in name for marker in ATTENTION_MARKERS)


def category(event: Event) -> str:
    """The category of ``event``'s self time (see the module docstring)."""
    names = [event.name]
    parent = event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    if any(name.startswith(OPTIMIZER_PREFIXES) for name in names):
        return "optimizer"
    if any(_is_attention(name) for name in names):
        return "attention_kernels"
    if any(_is_product_kernel(name) for name in names) or event.name in PRODUCT_DISPATCHERS:
        return "products"
    return "rest"


def classify(events: Iterable[Event]) -> dict[str, float]:
    """Self CPU seconds per category, summed over ``events``."""
    seconds = dict.fromkeys(CATEGORIES, 0.0)
    for event in events:
        seconds[category(event)] += event.self_cpu_time_total / 1e6
    return seconds


def fractions(seconds: dict[str, float]) -> dict[str, float]:
    """Each category's share of the classified total (all zero when nothing was recorded)."""
    total = sum(seconds[name] for name in CATEGORIES)
    return {name: seconds[name] / total if total else 0.0 for name in CATEGORIES}


def profile_split(step: Callable[[], Any], steps: int = 1) -> dict[str, Any]:
    """Profile ``steps`` calls of ``step``; returns ``{"fractions": {category: share}, "seconds": {category: self
    s per step, "profiled_step": wall s per step}}``."""
    with profile(activities=[ProfilerActivity.CPU]) as recorded:
        start = time.perf_counter()
        for _ in range(steps):
            step()
        wall = (time.perf_counter() - start) / steps
    seconds = {name: value / steps for name, value in classify(recorded.events()).items()}
    return {"fractions": fractions(seconds), "seconds": {**seconds, "profiled_step": wall}}


def format_split(split: dict[str, float] | None) -> str:
    """``products / attention / optimizer / rest`` as percentages, e.g. ``61 / 22 / 4 / 13``."""
    if not split:
        return "-"
    return " / ".join(f"{100 * split.get(name, 0.0):.0f}" for name in CATEGORIES)
