"""bf16 mixed precision: ``torch.autocast("cpu", torch.bfloat16)`` around the forward pass and the loss (what
``train.precision=bf16`` runs), with every attention path, against float32.

Tolerances, from bf16's precision: 8 significand bits, so one rounding has relative error at most
``u = 2^-9 ~ 2e-3``. A bf16 product rounds its two inputs and its output (accumulation is float32), about ``3u``
at worst, ``~1.7u`` typically (independent signs); a layer passes its update through 2-3 products, the errors of
different products and layers add with random signs, and LayerNorm keeps them relative. So:

- ``OUTPUT_RTOL = 2e-2`` (10 u): relative error (Frobenius norm) of the outputs and of the loss against float32.
  Measured 2.6e-3 to 6.4e-3 for the outputs (loss: below 4e-3) on these models, the softmax Transformer (plain
  autocast) included.
- ``GRAD_RTOL = 0.1`` for the whole gradient (all parameters as one vector): the backward has twice the products
  of the forward, each rounding the incoming gradient, and a weight gradient sums its products over every token:
  cancellations in that sum magnify the rounding relative to the result (by ``sum |terms| / |sum|``, easily 10
  at random initialisation). Measured 5.6e-3 to 2.4e-2 for TransEvolve, 1.2e-2 and 4.1e-2 for the Transformer.
- ``PARAM_RTOL = 0.25`` for each parameter tensor carrying at least 1% of the largest gradient norm (fewer terms
  per sum, same cancellations); measured up to 9.2e-2 (TransEvolve) and 0.10 (Transformer).
- Fast path against reference path, both under autocast: each is within the bound of float32, so they are within
  twice the bound of each other (triangle inequality); measured 2.2e-3 to 8.3e-3 (outputs), 4.8e-3 to 3.1e-2
  (whole gradient).

These bounds catch what a wrong dtype does (float16 overflow, a bf16 exponent or normaliser: errors of order 1,
NaN), not the last digit. Each test states which products it checks; float32 (no autocast) is covered bit for bit
by the fast-path and parity tests.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import pytest
import torch
from conftest import model_inputs, random_ids, tiny_config
from torch.utils._python_dispatch import TorchDispatchMode

from transevolve import ModelConfig, build_model
from transevolve.modules import evolved_attention
from transevolve.modules.evolved_attention import (
    FastScores,
    factorised_attention,
    factorised_kernel,
    fully_blocked_rows,
    resolve_impl,
    visible_keys,
)
from transevolve.train.objectives import forward_loss

U = 2.0**-9
OUTPUT_RTOL = 2e-2
GRAD_RTOL = 0.1
PARAM_RTOL = 0.25

#: (attention, ff_type, fidelity, attention_impl): the Transformer, TransEvolve-fullFF on both fast paths,
#: TransEvolve-randomFF in both fidelities.
MODELS = [
    ("softmax", "full", "official", "auto"),
    ("evolved", "full", "official", "reference"),
    ("evolved", "full", "official", "factorised"),
    ("evolved", "full", "official", "low_memory"),
    ("evolved", "random", "official", "factorised"),
    ("evolved", "random", "lean", "factorised"),
]


def _autocast() -> torch.autocast:
    return torch.autocast("cpu", dtype=torch.bfloat16)


def _relative(actual: torch.Tensor, expected: torch.Tensor) -> float:
    actual, expected = actual.detach().double(), expected.detach().double()
    return float((actual - expected).norm() / expected.norm().clamp_min(1e-30))


def _flat(grads: dict[str, torch.Tensor], names: list[str]) -> torch.Tensor:
    return torch.cat([grads[name].flatten() for name in names])


def _batch(config: ModelConfig, batch: int = 4, length: int = 12) -> tuple[dict[str, torch.Tensor], str]:
    """A padded training batch for ``config.kind`` and the objective's kind."""
    generator = torch.Generator().manual_seed(5)
    ids = random_ids(batch, length, config.vocab_size, generator=generator)
    if config.kind == "classifier":
        assert config.num_classes is not None
        return {"ids": ids, "label": torch.randint(0, config.num_classes, (batch,), generator=generator)}, \
            "classification"
    tgt = random_ids(batch, length - 3, config.vocab_size, start_id=1, generator=generator)
    return {"src": ids, "tgt": tgt}, "seq2seq"


def _loss_and_gradients(model: torch.nn.Module, config: ModelConfig, bf16: bool
                        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batch, kind = _batch(config)
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss, _ = forward_loss(model, batch, kind)
    assert loss.dtype == torch.float32                                 # the objective works in float32
    loss.backward()
    return loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def _count_fast_calls(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Counts the fast paths' per-layer calls (to prove autocast no longer falls back to the reference path)."""
    calls = {"factorised": 0, "low_memory": 0}
    for name, function in (("factorised", evolved_attention.factorised_attention),
                           ("low_memory", evolved_attention.fused_attention)):
        def counted(*args: Any, _name: str = name, _function: Any = function) -> torch.Tensor:
            calls[_name] += 1
            return _function(*args)

        monkeypatch.setattr(evolved_attention, f"{function.__name__}", counted)
    return calls


@pytest.mark.parametrize("kind", ["classifier", "encoder_decoder"])
@pytest.mark.parametrize(("attention", "ff_type", "fidelity", "impl"), MODELS)
def test_bf16_outputs_and_gradients_match_float32(kind: str, attention: str, ff_type: str, fidelity: str,
                                                  impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tiny_config(kind=kind, attention=attention, ff_type=ff_type, fidelity=fidelity, attention_impl=impl)
    torch.manual_seed(0)
    model = build_model(config)
    loss32, grads32 = _loss_and_gradients(model, config, bf16=False)
    calls = _count_fast_calls(monkeypatch)
    loss16, grads16 = _loss_and_gradients(model, config, bf16=True)
    if attention == "evolved" and impl != "reference":
        assert calls[impl] > 0, "autocast fell back to reference"
    assert set(grads16) == set(grads32)
    assert abs(float(loss16 - loss32)) <= OUTPUT_RTOL * abs(float(loss32))
    with torch.no_grad(), _autocast():
        inputs = model_inputs(config)
        out16 = model(*inputs)
    out32 = model(*inputs)
    assert _relative(out16, out32) < OUTPUT_RTOL
    names = sorted(grads32)
    whole = _relative(_flat(grads16, names), _flat(grads32, names))
    assert whole < GRAD_RTOL, f"whole gradient: relative error {whole:.2e}"
    largest = max(float(g.norm()) for g in grads32.values())
    for name in names:
        if float(grads32[name].norm()) >= 1e-2 * largest:
            error = _relative(grads16[name], grads32[name])
            assert error < PARAM_RTOL, f"{name}: relative error {error:.2e}"


def _with_blocked_rows(config: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Padded inputs with an all-pad sequence (every query row fully blocked) and leading pads (causal rows that
    see no key)."""
    inputs = list(model_inputs(config, batch=3, length=10, tgt_length=8))
    first = inputs[0].clone()
    first[1] = 0
    first[2, :3] = 0
    inputs[0] = first
    return tuple(inputs)


def _projection_loss(output: torch.Tensor) -> torch.Tensor:
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7))
    return (output.float() * weights).sum() / math.sqrt(output.numel())


@pytest.mark.parametrize("impl", ["factorised", "low_memory"])
@pytest.mark.parametrize(("ff_type", "fidelity"), [("full", "official"), ("random", "lean")])
@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder", "classifier"])
def test_fast_equals_reference_under_autocast_with_blocked_rows(kind: str, ff_type: str, fidelity: str,
                                                               impl: str) -> None:
    """Outputs and gradients of the fast path and of the reference path, both under bf16 autocast, on inputs with
    fully padded rows: finite, and within twice the float32 bounds of each other. W_K's time columns (official)
    get no gradient on the fast paths and rounding noise on the reference: left out."""
    config = tiny_config(kind=kind, ff_type=ff_type, fidelity=fidelity)
    torch.manual_seed(0)
    reference = build_model(config.replace(attention_impl="reference"))
    fast = build_model(config.replace(attention_impl=impl))
    fast.load_state_dict(reference.state_dict())
    inputs = _with_blocked_rows(config)
    outputs = []
    for model in (reference, fast):
        with _autocast():
            out = model(*inputs)
        assert torch.isfinite(out).all()
        _projection_loss(out).backward()
        outputs.append(out.detach())
    assert _relative(outputs[1], outputs[0]) < 2 * OUTPUT_RTOL
    grads = [{n: p.grad for n, p in m.named_parameters() if p.grad is not None and "key_time" not in n}
             for m in (reference, fast)]
    assert set(grads[0]) == set(grads[1])
    assert all(torch.isfinite(g).all() for g in grads[1].values())
    names = sorted(grads[0])
    whole = _relative(_flat(grads[1], names), _flat(grads[0], names))
    assert whole < 2 * GRAD_RTOL


@pytest.mark.parametrize("attention", ["softmax", "evolved"])
@pytest.mark.parametrize("kind", ["classifier", "encoder_decoder"])
def test_bf16_training_loss_is_finite_with_all_pad_sequences(kind: str, attention: str) -> None:
    """A batch holding an all-pad sequence (official ``mean`` pooling counts the pads; the source of an
    encoder-decoder example that is only padding): finite loss and gradients under autocast."""
    config = tiny_config(kind=kind, attention=attention)
    torch.manual_seed(0)
    model = build_model(config)
    batch, objective = _batch(config)
    source = "ids" if kind == "classifier" else "src"
    batch[source][2] = 0
    with _autocast():
        loss, _ = forward_loss(model, batch, objective)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@pytest.mark.parametrize("causal", [False, True])
def test_factorised_rescue_under_bf16(causal: bool) -> None:
    """Logits spread 100+ nats in opposite directions underflow the factorised denominator ``E w`` in bf16 as in
    float32 (same exponent range); the rescued rows are recomputed in float32 and come back in bf16."""
    torch.manual_seed(0)
    b, h, n, c, v = 2, 3, 6, 4, 5
    queries = torch.randn(b, h, n, c) * 0.1
    keys = torch.randn(b, h, n, c) * 0.1
    queries[..., 0] = 1.0
    keys[..., 0] = -60.0
    keys[:, :, 0, 0] = 60.0
    queries, keys = queries.bfloat16().requires_grad_(), keys.bfloat16()
    bias = torch.full((b, h, n), 60.0)
    bias[:, :, 0] = -120.0
    values = torch.randn(b, h, n, v)
    key_pad = torch.zeros(b, n, dtype=torch.bool)
    key_pad[1, -1] = True
    visible = visible_keys(key_pad, n, causal)
    blocked = fully_blocked_rows(torch.zeros(b, n, dtype=torch.bool), key_pad, causal)[:, None, :, None]
    with _autocast():
        block = FastScores("factorised", queries, keys, keys.transpose(1, 2).reshape(b, n, h * c),
                           torch.zeros(h * c, h, 1), key_pad, visible, blocked, bool(blocked.any()), causal,
                           kernel=factorised_kernel(queries, keys, visible))
        out = factorised_attention(block, bias, values)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    logits = queries.detach().double() @ keys.double().mT + bias.double().unsqueeze(-2)
    expected = torch.softmax(logits.masked_fill(~visible, float("-inf")), -1) @ values.double()
    # Rescued rows: float32 then one rounding; the others: the bf16 product (see the module docstring).
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=8 * U * float(values.abs().max()))
    (out.float() * torch.randn(out.shape)).sum().backward()
    assert queries.grad is not None and torch.isfinite(queries.grad).all()


_PRODUCTS = {torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.bmm, torch.ops.aten.baddbmm}
_FLASH = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu,
          torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward}


class _ProductLog(TorchDispatchMode):
    """Every matrix product (mm, addmm, bmm, baddbmm, the CPU flash-attention kernels) with its operand dtype,
    the operands' shapes and its multiply-accumulates; and the input dtypes of LayerNorm and log-softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.products: list[tuple[str, torch.dtype, list[tuple[int, ...]], int]] = []
        self.inputs: dict[str, set[torch.dtype]] = defaultdict(set)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        packet = func.overloadpacket
        if packet in _PRODUCTS:
            left, right = args[-2], args[-1]
            if packet in (torch.ops.aten.mm, torch.ops.aten.addmm):
                macs = left.shape[0] * left.shape[1] * right.shape[1]
            else:
                macs = left.shape[0] * left.shape[1] * left.shape[2] * right.shape[2]
            assert left.dtype == right.dtype
            self.products.append((packet.__name__, left.dtype, [tuple(left.shape), tuple(right.shape)], macs))
        elif packet in _FLASH:
            query, key = (args[0], args[1]) if "backward" not in packet.__name__ else (args[1], args[2])
            b, h, n_q, width = query.shape
            macs = b * h * n_q * key.shape[2] * 2 * width * (2 if "backward" in packet.__name__ else 1)
            self.products.append((packet.__name__, query.dtype, [tuple(query.shape), tuple(key.shape)], macs))
        elif packet in (torch.ops.aten.native_layer_norm, torch.ops.aten._log_softmax):
            self.inputs[packet.__name__].add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(("attention", "ff_type", "impl"), [
    ("softmax", "full", "auto"), ("minimal", "full", "auto"), ("evolved", "full", "factorised"),
    ("evolved", "full", "low_memory"), ("evolved", "random", "factorised")])
@pytest.mark.parametrize("kind", ["decoder", "classifier"])
def test_products_run_in_bf16(kind: str, attention: str, ff_type: str, impl: str) -> None:
    """One training step (forward and loss under autocast, backward) at a size where tokens dominate (width 32,
    n = 96, batch 4: 384 tokens; no other dimension is 96 or 384). Checked:

    - every product of an n x n attention tensor (A0, ``E [w V, w]``, the kernels' backward, flash attention,
      SDPA) and every product with the token dimension (projections, feed-forwards, the tied logits, the weight
      gradients) is bf16, except the key-bias products ``K (P_Q . tau)`` (one of their dimensions is heads x
      layers <= 4), which are float32 on purpose;
    - bf16 products carry at least 90% of all multiply-accumulates (the float32 rest: the key biases and
      randomFF's ``W(t)`` construction, ``in min(in, out) out`` per pass, independent of the batch);
    - LayerNorm and the loss's log-softmax only ever see float32 inputs.
    """
    config = ModelConfig(kind=kind, attention=attention, ff_type=ff_type, attention_impl=impl, vocab_size=31,
                         width=32, num_heads=2, time_dim=16, layers_per_block=2, num_blocks=2, dropout=0.0,
                         max_length=128, num_classes=3 if kind == "classifier" else None)
    n, tokens = 96, 4 * 96
    torch.manual_seed(0)
    model = build_model(config)
    generator = torch.Generator().manual_seed(3)
    ids = random_ids(4, n + (kind == "decoder"), config.vocab_size, generator=generator)
    if kind == "classifier":
        batch, objective = {"ids": ids, "label": torch.randint(0, 3, (4,), generator=generator)}, "classification"
    else:
        batch, objective = {"ids": ids, "loss_mask": (ids != 0).long()}, "language_modeling"
    log = _ProductLog()
    with log:
        with _autocast():
            loss, _ = forward_loss(model, batch, objective)
        loss.backward()
    total: dict[torch.dtype, int] = defaultdict(int)
    for _, dtype, _, macs in log.products:
        total[dtype] += macs
    wrong = []
    for name, dtype, shapes, _ in log.products:
        dims = {d for shape in shapes for d in shape}
        attention_sized = sum(d == n for shape in shapes for d in shape[-2:]) >= 2 or name.startswith("_scaled")
        bias_product = tokens in dims and min(dims) <= config.num_heads * config.layers_per_block
        expected = torch.float32 if bias_product else torch.bfloat16
        if dtype != expected and (attention_sized or tokens in dims):
            wrong.append((name, dtype, shapes))
    assert not wrong, f"products in the wrong dtype: {wrong}"
    share = total[torch.bfloat16] / sum(total.values())
    assert share >= 0.9, f"bf16 share of multiply-accumulates {share:.2f}: {dict(total)}"
    assert log.inputs["native_layer_norm"] == {torch.float32}
    assert log.inputs["_log_softmax"] == {torch.float32}


@pytest.mark.parametrize("attention", ["softmax", "evolved"])
def test_sublayers_return_bf16_and_the_residual_stream_stays_float32(attention: str) -> None:
    """Under autocast a sub-layer returns what a linear layer returns (bf16); ``x + update`` keeps the residual
    stream, the block outputs and the encoder output in float32."""
    config = tiny_config(kind="encoder_decoder", attention=attention, ff_type="random")
    torch.manual_seed(0)
    model = build_model(config)
    dtypes: dict[str, set[torch.dtype]] = defaultdict(set)

    def record(name: str) -> Any:
        def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
            dtypes[name].add((output[0] if isinstance(output, tuple) else output).dtype)
        return hook

    for name, module in model.named_modules():
        kind = name.rsplit(".", 1)[-1]
        if kind in ("self_attention", "cross_attention", "feed_forward", "final_norm"):
            module.register_forward_hook(record(kind))
        elif kind.isdigit() and name.endswith(f"blocks.{kind}"):
            module.register_forward_hook(record("block"))
    with _autocast():
        memory = model.encode(model_inputs(config)[0])
        model(*model_inputs(config))
    assert memory.dtype == torch.float32
    assert dtypes["self_attention"] == dtypes["cross_attention"] == dtypes["feed_forward"] == {torch.bfloat16}
    assert dtypes["final_norm"] == dtypes["block"] == {torch.float32}


@pytest.mark.parametrize(("attention", "ff_type"), [("softmax", "full"), ("evolved", "full"),
                                                    ("evolved", "random")])
def test_bf16_training_steps_decrease_the_loss(attention: str, ff_type: str) -> None:
    """Twelve Adam steps on one batch with the forward and loss under autocast (the fast path for TransEvolve)."""
    config = tiny_config(kind="classifier", attention=attention, ff_type=ff_type)
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batch, objective = _batch(config, batch=8)
    losses = []
    for _ in range(12):
        with _autocast():
            loss, _ = forward_loss(model, batch, objective)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(x) for x in losses)
    assert losses[-1] < 0.5 * losses[0], losses


def test_autocast_picks_the_fast_paths_except_float16() -> None:
    with _autocast():
        assert resolve_impl("auto", 1, 1, 8, 2**20) == "factorised"
        assert resolve_impl("low_memory", 1, 1, 8, 8) == "low_memory"
        assert resolve_impl("factorised", 1, 1, 8, 8, need_weights=True) == "reference"
    with torch.autocast("cpu", dtype=torch.float16):
        assert resolve_impl("auto", 1, 1, 8, 2**20) == "reference"
