"""The oneDNN dense backend computes the reference (aten) products within float32 rounding, gradients included."""

from __future__ import annotations

import pytest
import torch

from transevolve.config import ModelConfig
from transevolve.models import build_model
from transevolve.modules import dense
from transevolve.modules.dense import linear, onednn_available, resolve_dense_backend, use_dense_backend

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch has no oneDNN")

# float32 products of width k differ between summation orders by a few ulps of the partial sums: relative to the
# output's scale, 1e-5 is ~100 ulps and far below any precision change (bf16 would be ~1e-2).
RTOL = 1e-5


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = expected.abs().max().clamp_min(1e-12)
    assert ((actual - expected).abs().max() / scale).item() < RTOL


def _grads(backend: str, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
           transpose_weight: bool = False) -> tuple[torch.Tensor, ...]:
    leaves = [t.detach().clone().requires_grad_() for t in (x, weight) + ((bias,) if bias is not None else ())]
    w = leaves[1].t() if transpose_weight else leaves[1]
    with use_dense_backend(backend):
        out = linear(leaves[0], w, leaves[2] if bias is not None else None)
    out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
    return (out.detach(), *(leaf.grad for leaf in leaves))


@pytest.mark.parametrize("shape", [(4, 128, 256), (300, 256), (2, 3, 50, 96)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_onednn_equals_aten_forward_and_backward(shape: tuple[int, ...], with_bias: bool) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=gen)
    weight = torch.randn(512, shape[-1], generator=gen) / shape[-1] ** 0.5
    bias = torch.randn(512, generator=gen) if with_bias else None
    for got, want in zip(_grads("onednn", x, weight, bias), _grads("aten", x, weight, bias), strict=True):
        _close(got, want)


def test_onednn_reads_transposed_weights_and_strided_inputs() -> None:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(256, 512, generator=gen)[:, ::2]                     # non-contiguous (256, 256)
    weight = torch.randn(256, 1024, generator=gen) / 16                  # used as (1024, 256) through .t()
    for got, want in zip(_grads("onednn", x, weight, None, transpose_weight=True),
                         _grads("aten", x, weight, None, transpose_weight=True), strict=True):
        _close(got, want)


def test_onednn_is_really_used_and_small_products_stay_with_aten(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, ...]] = []
    original = dense._onednn_product

    def spy(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        calls.append(tuple(x.shape))
        return original(x, weight, bias)

    monkeypatch.setattr(dense, "_onednn_product", spy)
    big, small = torch.randn(512, 256), torch.randn(2, 256)
    weight = torch.randn(256, 256)
    with use_dense_backend("onednn"):
        linear(big, weight)
        linear(small, weight)                                            # below ONEDNN_MIN_MACS
        linear(big.double(), weight.double())                           # not float32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            linear(big, weight)                                          # bf16 autocast: aten's own oneDNN path
    with use_dense_backend("aten"):
        linear(big, weight)
    assert calls == [(512, 256)]


def test_backend_names_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="dense backend 'mkl' is not one of"):
        resolve_dense_backend("mkl")
    assert resolve_dense_backend("aten") == "aten"
    assert resolve_dense_backend("auto") in ("aten", "onednn")
    expected = "onednn" if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else "aten"
    assert resolve_dense_backend("auto") == expected


@pytest.mark.parametrize("preset", [
    dict(attention="softmax", ff_type="full"),
    dict(attention="evolved", ff_type="full"),
    dict(attention="evolved", ff_type="random"),
])
def test_training_step_of_a_model_agrees_between_backends(preset: dict) -> None:
    config = ModelConfig(kind="classifier", vocab_size=40, num_classes=5, width=128, num_heads=2,
                         time_dim=64, layers_per_block=2, num_blocks=1, max_length=128, dropout=0.0, **preset)
    ids = torch.randint(1, 40, (4, 96), generator=torch.Generator().manual_seed(2))
    results = {}
    for backend in ("aten", "onednn"):
        torch.manual_seed(0)
        model = build_model(config)
        with use_dense_backend(backend):
            logits = model(ids)
            logits.square().mean().backward()
        results[backend] = [logits.detach()] + [p.grad.clone() for p in model.parameters() if p.grad is not None]
    # A whole network: errors compound, so 1e-4 of each tensor's scale; tensors whose exact gradient is 0 (the
    # softmax key bias) hold rounding noise only, compared against the largest gradient instead.
    largest = max(want.abs().max().item() for want in results["aten"][1:])
    for got, want in zip(results["onednn"], results["aten"], strict=True):
        assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-6 * largest


def test_onednn_runs_are_bit_reproducible() -> None:
    gen = torch.Generator().manual_seed(3)
    x, weight = torch.randn(512, 256, generator=gen), torch.randn(1024, 256, generator=gen)
    first, second = _grads("onednn", x, weight, None), _grads("onednn", x, weight, None)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
