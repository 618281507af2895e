"""Invariants of the layer-update schemes (:mod:`transevolve.schemes`) and of the trunk that runs them.

Each scheme is checked against its explicit formula on hand-made vector fields, against exact solutions of linear
ODEs (observed order of accuracy), and inside built models: parameter counts with weight sharing, one block
interaction per block, incremental decoding equal to recomputation, FLOP counts equal to counted matmuls, the
continuous time signal, and config validation.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch
from conftest import random_ids
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.bench.flops import flop_breakdown
from transevolve.decoding import greedy_search
from transevolve.models import DecodeCache
from transevolve.modules.evolved_attention import BlockInteraction, time_signal
from transevolve.modules.feedforward import FullFeedForward, RandomFeedForward, TemporalProjection
from transevolve.modules.masks import AttentionMasks, padding
from transevolve.params import count_model_parameters
from transevolve.schemes import SCHEMES, GatedRK2, Macaron, Parallel, Scheme, get_scheme

SCHEME_NAMES = ("sequential", "parallel", "macaron", "rk2", "rk2_gated", "rk4")
ATTENTIONS = ("evolved", "softmax")
FF_TYPES = ("full", "random")
DECODER_KINDS = ("encoder_decoder", "decoder")

SMALL: dict[str, Any] = {"vocab_size": 23, "width": 16, "num_heads": 2, "time_dim": 8, "ff_multiplier": 2,
                         "layers_per_block": 2, "num_blocks": 2, "dropout": 0.0, "max_length": 32}

Field = Callable[[torch.Tensor, float], torch.Tensor]


def small_config(**overrides: Any) -> ModelConfig:
    """A tiny config (width 16, 2 heads, 2 blocks of 2 layers); ``overrides`` replace any field."""
    values = {**SMALL, **overrides}
    if values.get("kind") == "classifier" and "num_classes" not in overrides:
        values["num_classes"] = 3
    return ModelConfig(**values)


def test_every_scheme_is_registered() -> None:
    """The per-layer schemes tested here are registered under their names (other schemes may exist too)."""
    assert set(SCHEME_NAMES) <= set(SCHEMES)
    for name in SCHEME_NAMES:
        assert get_scheme(name).name == name
        assert not getattr(get_scheme(name), "integrates_block", False)          # driven by ``step``


# -- hand-made vector fields ---------------------------------------------------------------------------------------
class FakeFields:
    """A :class:`~transevolve.schemes.LayerFields` from plain functions of ``(x, t)``; records every call as
    ``(sub-layer, t, stage)``."""

    def __init__(self, attend: Field, feed: Field, cross: Field | None = None, second_feed: Field | None = None
                 ) -> None:
        self._attend, self._cross = attend, cross
        self._feeds = (feed, second_feed if second_feed is not None else feed)
        self.has_cross = cross is not None
        self.calls: list[tuple[str, float, int]] = []

    def attend(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        self.calls.append(("attend", t, stage))
        return self._attend(x, t)

    def cross(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        assert self._cross is not None
        self.calls.append(("cross", t, stage))
        return self._cross(x, t)

    def feed(self, x: torch.Tensor, t: float, stage: int, index: int = 0) -> torch.Tensor:
        self.calls.append((f"feed{index}", t, stage))
        return self._feeds[index](x, t)


def _nonlinear_fields(width: int, seed: int = 0) -> tuple[Field, Field, Field, Field]:
    """Four time-dependent nonlinear fields ``(b, n, d) -> (b, n, d)`` in float64."""
    g = torch.Generator().manual_seed(seed)
    w = [torch.randn(width, width, generator=g, dtype=torch.float64) / math.sqrt(width) for _ in range(4)]
    return (lambda x, t: torch.tanh(x @ w[0] + t),
            lambda x, t: torch.sin(x @ w[1]) * math.cos(t),
            lambda x, t: 0.1 * (x @ w[2]) ** 2 + t,
            lambda x, t: torch.relu(x @ w[3]) - 0.5 * t)


def _make_scheme(name: str, width: int) -> Scheme:
    scheme = get_scheme(name)(width).double()
    if isinstance(scheme, GatedRK2):                          # a non-trivial gate (it starts at exactly 1/2)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():
            scheme.gate.weight.copy_(torch.randn(scheme.gate.weight.shape, generator=g, dtype=torch.float64))
            scheme.gate.bias.fill_(0.3)
    return scheme


def _explicit_step(name: str, scheme: Scheme, fields: tuple[Field, Field, Field, Field], x: torch.Tensor, t: float,
                   h: float) -> torch.Tensor:
    """The textbook formula of each scheme (see the table in ``schemes.py`` and related-methods A, B, C)."""
    a, c, f0, f1 = fields

    def lie_trotter(y: torch.Tensor, s: float, step: float) -> torch.Tensor:
        y = y + step * a(y, s)
        y = y + step * c(y, s)
        return y + step * f0(y, s)

    def g(y: torch.Tensor, s: float) -> torch.Tensor:
        return lie_trotter(y, s, 1.0) - y

    if name == "sequential":
        return lie_trotter(x, t, h)
    if name == "parallel":
        return x + h * (a(x, t) + c(x, t) + f0(x, t))
    if name == "macaron":
        y = x + 0.5 * h * f0(x, t)
        y = y + h * a(y, t)
        y = y + h * c(y, t)
        return y + 0.5 * h * f1(y, t)
    if name in ("rk2", "rk2_gated"):
        k1 = g(x, t)
        k2 = g(x + h * k1, t + h)
        if name == "rk2":
            return x + 0.5 * h * (k1 + k2)
        assert isinstance(scheme, GatedRK2)
        gate = torch.sigmoid(torch.cat([k1, k2], dim=-1) @ scheme.gate.weight.T + scheme.gate.bias)
        return x + h * (gate * k1 + (1 - gate) * k2)
    assert name == "rk4"
    k1 = g(x, t)
    k2 = g(x + 0.5 * h * k1, t + 0.5 * h)
    k3 = g(x + 0.5 * h * k2, t + 0.5 * h)
    k4 = g(x + h * k3, t + h)
    return x + h * (k1 + 2 * k2 + 2 * k3 + k4) / 6


def test_parallel_is_an_euler_step_of_the_summed_field() -> None:
    width = 6
    attend, cross, feed, _ = _nonlinear_fields(width)
    x = torch.randn(2, 3, width, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    for h in (1.0, 0.3):
        for with_cross in (True, False):
            fields = FakeFields(attend, feed, cross if with_cross else None)
            expected = x + h * (attend(x, 0.7) + (cross(x, 0.7) if with_cross else 0.0) + feed(x, 0.7))
            torch.testing.assert_close(Parallel(width).step(fields, x, 0.7, h), expected, rtol=0, atol=1e-14)
            # Every field sees the same state at the same time: one stage.
            assert {(t, stage) for _, t, stage in fields.calls} == {(0.7, 0)}


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_scheme_step_equals_its_explicit_formula(name: str) -> None:
    """Each scheme on nonlinear, time-dependent fields (cross-attention included) against its textbook formula."""
    width = 6
    fields = _nonlinear_fields(width, seed=3)
    x = torch.randn(2, 3, width, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    scheme = _make_scheme(name, width)
    for t, h in ((0.0, 1.0), (1.5, 0.25)):
        fake = FakeFields(fields[0], fields[2], fields[1], fields[3])
        got = scheme.step(fake, x, t, h)
        torch.testing.assert_close(got, _explicit_step(name, scheme, fields, x, t, h), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_stage_bookkeeping_matches_the_calls(name: str) -> None:
    """``evaluations``, ``feed_forwards``, ``stages`` and ``stage_times`` describe what ``step`` really calls."""
    width = 4
    attend, cross, feed, second = _nonlinear_fields(width)
    cls = get_scheme(name)
    fake = FakeFields(attend, feed, cross, second)
    t, h = 2.0, 0.25
    _make_scheme(name, width).step(fake, torch.ones(1, 2, width, dtype=torch.float64), t, h)
    kinds = [kind for kind, _, _ in fake.calls]
    assert kinds.count("attend") == kinds.count("cross") == cls.evaluations
    assert sum(kind.startswith("feed") for kind in kinds) == cls.evaluations * cls.feed_forwards
    assert {kind for kind in kinds if kind.startswith("feed")} == {f"feed{i}" for i in range(cls.feed_forwards)}
    stages = sorted({stage for _, _, stage in fake.calls})
    assert stages == list(range(cls.stages))
    offsets = {(time - t) / h for _, time, _ in fake.calls}
    assert offsets == set(cls.stage_times)
    # Every sub-layer of one stage runs at that stage's time.
    for stage in stages:
        assert len({time for _, time, s in fake.calls if s == stage}) == 1


# -- observed order of accuracy on linear ODEs ---------------------------------------------------------------------
def _matrix(seed: int, width: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(width, width, generator=g, dtype=torch.float64) / math.sqrt(width)


def _amplitude(t: float) -> float:
    """``a(t) = 1 + cos(t) / 2``: makes the fields non-autonomous (``int_0^T a = T + sin(T) / 2``)."""
    return 1.0 + 0.5 * math.cos(t)


def _linear(matrix: torch.Tensor, timed: bool) -> Field:
    return lambda x, t: (_amplitude(t) if timed else 1.0) * (x @ matrix.T)


def _integrate(scheme: Scheme, fields: FakeFields, x0: torch.Tensor, total: float, steps: int) -> torch.Tensor:
    h = total / steps
    x = x0
    for k in range(steps):
        x = scheme.step(fields, x, k * h, h)
    return x


def _observed_order(scheme: Scheme, fields: FakeFields, generator: torch.Tensor, total: float, steps: int) -> float:
    """``log2(err(h) / err(h/2))`` against the exact ``expm(generator) x0``."""
    x0 = torch.randn(2, 3, generator.shape[0], dtype=torch.float64, generator=torch.Generator().manual_seed(9))
    exact = x0 @ torch.linalg.matrix_exp(generator).T
    coarse = (_integrate(scheme, fields, x0, total, steps) - exact).norm().item()
    fine = (_integrate(scheme, fields, x0, total, 2 * steps) - exact).norm().item()
    assert fine < coarse and fine > 1e-13, (coarse, fine)                  # converging, above rounding
    return math.log2(coarse / fine)


def _zero(x: torch.Tensor, t: float) -> torch.Tensor:
    return torch.zeros_like(x)


def _nilpotent(seed: int, width: int = 4) -> torch.Tensor:
    """A rank-1 ``u v^T`` with ``v . u = 0``: ``N^2 = 0``, so an Euler step ``I + hN`` is its exact flow."""
    g = torch.Generator().manual_seed(seed)
    u, v = torch.randn(2, width, generator=g, dtype=torch.float64)
    v = v - (v @ u) / (u @ u) * u
    return torch.outer(u, v) / (u.norm() * v.norm())


ORDER_CASES = [
    # scheme, how the field is split, expected order
    ("parallel", "split3-timed", 1.0),
    ("sequential", "split3-timed", 1.0),
    ("sequential", "nilpotent", 1.0),
    ("macaron", "nilpotent", 2.0),
    ("macaron", "split2", 1.0),
    ("rk2", "single-timed", 2.0),
    ("rk2_gated", "single-timed", 2.0),
    ("rk4", "single-timed", 4.0),
    ("rk2", "layer-field", 2.0),
    ("rk4", "layer-field", 4.0),
]


@pytest.mark.parametrize(("name", "split", "order"), ORDER_CASES, ids=[f"{c[0]}-{c[1]}" for c in ORDER_CASES])
def test_observed_order_of_accuracy(name: str, split: str, order: float) -> None:
    """Integrate ``dx/dt = M(t) x`` on [0, T] with N and 2N steps and compare with ``expm``.

    - ``split3-timed``: ``A, C, F = a(t) A_i x`` (non-commuting): Euler (parallel) and Lie-Trotter (sequential)
      are order 1.
    - ``nilpotent``: ``A = A1 x``, ``F = A2 x`` with ``A1^2 = A2^2 = 0`` and ``[A1, A2] != 0``: every Euler sub-step
      is the exact sub-flow, so only the splitting error is left: Lie-Trotter order 1, Strang (macaron) order 2.
    - ``split2``: general non-commuting ``A1, A2``: Macaron's Euler sub-steps have local error O(h^2), so the
      scheme is first order (Strang's second order needs exact or second-order sub-flows).
    - ``single-timed``: ``A = a(t) A1 x``, FF 0 (the stage times must be right): Heun 2, RK4 4.
    - ``layer-field``: the RK schemes integrate the sequential layer's residual ``G(x) = (I + F)(I + A) x - x``
      (ODE Transformer).
    """
    a1, a2, a3 = _matrix(1), _matrix(2), _matrix(3)
    assert not torch.allclose(a1 @ a2, a2 @ a1)                             # the split does not commute
    total = 1.0
    integral = total + 0.5 * math.sin(total)
    if split == "split3-timed":
        fields = FakeFields(_linear(a1, True), _linear(a2, True), _linear(a3, True))
        generator = (a1 + a2 + a3) * integral
    elif split == "nilpotent":
        n1, n2 = _nilpotent(1), _nilpotent(2)
        assert float((n1 @ n1).abs().max()) < 1e-15 and not torch.allclose(n1 @ n2, n2 @ n1)
        fields = FakeFields(_linear(n1, False), _linear(n2, False))        # macaron: n2 in two half steps
        generator = (n1 + n2) * total
    elif split == "split2":
        fields = FakeFields(_linear(a1, False), _linear(a2, False))
        generator = (a1 + a2) * total
    elif split == "single-timed":
        fields = FakeFields(_linear(a1, True), _zero)
        generator = a1 * integral
    else:
        fields = FakeFields(_linear(a1, False), _linear(a2, False))
        generator = (a1 + a2 + a2 @ a1) * total
    scheme = get_scheme(name)(4).double()
    observed = _observed_order(scheme, fields, generator, total, steps=32)
    assert observed == pytest.approx(order, abs=0.3), observed


def test_macaron_with_cross_attention_is_still_consistent() -> None:
    """With cross-attention Macaron is F/2, A, C, F/2: a consistent (order >= 1) splitting of A + C + F."""
    a1, a2, a3 = _matrix(1), _matrix(2), _matrix(3)
    fields = FakeFields(_linear(a1, False), _linear(a2, False), _linear(a3, False))
    observed = _observed_order(Macaron(4).double(), fields, a1 + a2 + a3, 1.0, steps=16)
    assert observed > 0.7, observed


# -- the schemes inside built models -------------------------------------------------------------------------------
def _perturb(model: nn.Module, seed: int = 5) -> nn.Module:
    """Give the zero-initialised parameters (biases, RK2 gates) small random values, so that they matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias") or ".scheme.gate." in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=g, dtype=parameter.dtype))
    return model


def _built(config: ModelConfig, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return _perturb(build_model(config)).double().eval()


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize(("attention", "impl"), [("softmax", "auto"), ("evolved", "reference"),
                                                  ("evolved", "factorised")])
def test_parallel_model_from_its_modules(attention: str, impl: str, ff_type: str) -> None:
    """A parallel encoder block equals ``final_norm`` of ``x_{l+1} = x_l + A_l(x_l) + F_l(x_l)`` (l = 0, 1)
    computed from its modules, with TransEvolve's block scores from the block input."""
    config = small_config(kind="encoder", scheme="parallel", attention=attention, ff_type=ff_type, num_blocks=1,
                          attention_impl=impl)
    model = _built(config)
    ids = random_ids(2, 7, config.vocab_size)
    with torch.no_grad():
        x = model.embedding(ids)
        pad = padding(ids)
        masks = AttentionMasks(pad, pad, causal=False)
        block = model.encoder.blocks[0]
        scores = block.self_interaction(x, x) if block.self_interaction is not None else None
        state = x
        for depth, layer in enumerate(block.layers):
            attend, _ = layer.self_attention(state, state, masks, scores, float(depth))
            state = state + attend + layer.feed_forward(state, float(depth))
        expected = block.final_norm(state)
        got = model.encode(ids)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)


def _zero_feed_forward(module: nn.Module) -> None:
    with torch.no_grad():
        if isinstance(module, FullFeedForward):
            module.contract.weight.zero_()
        else:
            assert isinstance(module, RandomFeedForward)
            module.contract.singular_values.zero_()
        module.contract.bias.zero_()


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_macaron_without_feed_forward_is_attention_only(attention: str, ff_type: str) -> None:
    """Zeroing the output weights and biases of both Macaron feed-forwards leaves ``x + A(x) (+ C(x))``: the
    sequential model with the same attention weights and a zeroed feed-forward."""
    config = small_config(kind="encoder_decoder", scheme="macaron", attention=attention, ff_type=ff_type)
    macaron = _built(config)
    sequential = build_model(config.replace(scheme="sequential")).double().eval()
    own = sequential.state_dict()
    shared = {name: value for name, value in macaron.state_dict().items() if name in own}
    assert set(shared) == set(own)                                  # macaron only adds the second feed-forwards
    sequential.load_state_dict(shared)
    src, tgt = random_ids(2, 6, config.vocab_size), random_ids(2, 5, config.vocab_size, start_id=1)
    with torch.no_grad():
        assert not torch.allclose(macaron(src, tgt), sequential(src, tgt))     # the feed-forwards matter before
        for model in (macaron, sequential):
            for stack in (model.encoder, model.decoder):
                for block in stack.blocks:
                    for layer in block.layers:
                        _zero_feed_forward(layer.feed_forward)
                        if layer.second_feed_forward is not None:
                            _zero_feed_forward(layer.second_feed_forward)
        assert all(layer.second_feed_forward is not None for block in macaron.encoder.blocks
                   for layer in block.layers)
        torch.testing.assert_close(macaron(src, tgt), sequential(src, tgt), rtol=0, atol=1e-12)
        # Layer by layer: each layer adds exactly its attention update(s).
        _, trace = macaron(src, tgt, return_intermediates=True)
        assert trace.encoder is not None and trace.encoder_input is not None
        layer = macaron.encoder.blocks[0].layers[0]
        block = macaron.encoder.blocks[0]
        x = trace.encoder_input
        pad = padding(src)
        scores = block.self_interaction(x, x) if block.self_interaction is not None else None
        update, _ = layer.self_attention(x, x, AttentionMasks(pad, pad, causal=False), scores, 0.0)
        torch.testing.assert_close(trace.encoder.layer_outputs[(0, 0)], x + update, rtol=0, atol=1e-12)


# -- parameter counts with weight sharing --------------------------------------------------------------------------
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_full_sharing_has_one_layer_of_parameters(name: str, attention: str) -> None:
    for layers in (2, 4):
        for kind in ("encoder_decoder", "decoder", "classifier"):
            one = small_config(kind=kind, scheme=name, attention=attention, layers_per_block=1, num_blocks=1)
            shared = one.replace(layers_per_block=layers, share_layers=layers)
            assert count_parameters(shared) == count_parameters(one), (layers, kind)
            assert count_parameters(one.replace(layers_per_block=layers)).total > count_parameters(one).total
    config = small_config(scheme=name, attention=attention, layers_per_block=4, share_layers=4, num_blocks=1)
    model = build_model(config)
    assert count_model_parameters(model) == count_parameters(config).total
    assert all(len(block.layers) == 1 for stack in (model.encoder, model.decoder) for block in stack.blocks)


SCHEME_VARIANTS = [*SCHEME_NAMES, "macaron-half"]


def _scheme_fields(variant: str) -> dict[str, Any]:
    if variant == "macaron-half":
        return {"scheme": "macaron", "macaron_half_width": True}
    return {"scheme": variant}


@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder", "classifier"])
@pytest.mark.parametrize("variant", SCHEME_VARIANTS)
def test_counted_parameters_equal_the_built_model(variant: str, kind: str) -> None:
    """Every scheme x attention x ff_type x share_layers (1, 2) x kind: ``count_parameters`` equals the model."""
    for attention in ATTENTIONS:
        for ff_type in FF_TYPES:
            counts = {}
            for share in (1, 2):
                config = small_config(kind=kind, attention=attention, ff_type=ff_type, share_layers=share,
                                      **_scheme_fields(variant))
                counted = count_parameters(config).total
                assert counted == count_model_parameters(build_model(config)), (attention, ff_type, share)
                counts[share] = counted
            assert counts[2] < counts[1]


def test_scheme_parameters_differ_as_documented() -> None:
    """rk2_gated adds ``2d + 1`` per layer; macaron a second feed-forward; half width brings it back to one."""
    base = small_config(kind="encoder", layers_per_block=3, num_blocks=2)
    layers = base.depth
    sequential = count_parameters(base).total
    assert count_parameters(base.replace(scheme="rk2_gated")).total == sequential + layers * (2 * base.width + 1)
    for name in ("parallel", "rk2", "rk4"):
        assert count_parameters(base.replace(scheme=name)).total == sequential
    macaron = count_parameters(base.replace(scheme="macaron")).total
    half = count_parameters(base.replace(scheme="macaron", macaron_half_width=True)).total
    d, f = base.width, base.ff_width
    assert macaron - sequential == layers * (2 * d * f + f + d + 2 * d)               # one more full FF
    assert half - sequential == layers * 3 * d                # two half-width FFs: one more output bias and LN
    assert half == count_model_parameters(build_model(base.replace(scheme="macaron", macaron_half_width=True)))


# -- one block interaction per block -------------------------------------------------------------------------------
@contextmanager
def _counting(method: str) -> Iterator[dict[int, int]]:
    """Count calls of ``BlockInteraction.<method>`` per module (by id)."""
    counts: dict[int, int] = {}
    original = getattr(BlockInteraction, method)

    def wrapper(self: BlockInteraction, *args: Any, **kwargs: Any) -> Any:
        counts[id(self)] = counts.get(id(self), 0) + 1
        return original(self, *args, **kwargs)

    setattr(BlockInteraction, method, wrapper)
    try:
        yield counts
    finally:
        setattr(BlockInteraction, method, original)


def _interactions(stack: nn.Module) -> list[BlockInteraction]:
    found = []
    for block in stack.blocks:
        found.append(block.self_interaction)
        if block.cross_interaction is not None:
            found.append(block.cross_interaction)
    return found


@pytest.mark.parametrize("impl", ["reference", "factorised"])
@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_block_interaction_runs_once_per_block(name: str, impl: str) -> None:
    config = small_config(kind="encoder_decoder", scheme=name, attention="evolved", attention_impl=impl)
    model = _built(config)
    encoder, decoder = _interactions(model.encoder), _interactions(model.decoder)
    assert len(encoder) == config.num_blocks and len(decoder) == 2 * config.num_blocks     # self + cross
    src, tgt = random_ids(2, 6, config.vocab_size), random_ids(2, 5, config.vocab_size, start_id=1)
    with torch.no_grad(), _counting("forward") as counts:
        model(src, tgt)
    assert counts == {id(module): 1 for module in encoder + decoder}
    # Incremental decoding: step_state once per decoder block interaction and decode call, never forward.
    with torch.no_grad():
        memory = model.encode(src)
        cache_calls = []
        cache = DecodeCache()
        with _counting("forward") as forwards, _counting("step_state") as steps:
            for start, size in ((0, 2), (2, 1), (3, 2)):
                model.decode_step(tgt[:, start:start + size], memory, src, cache)
                cache_calls.append(dict(steps))
    assert forwards == {}
    assert cache_calls == [{id(module): calls for module in decoder} for calls in (1, 2, 3)]


# -- incremental decoding equals recomputation ---------------------------------------------------------------------
@pytest.mark.parametrize("share", [1, 2])
@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("name", SCHEME_NAMES)
@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_incremental_decoding_equals_recomputation(kind: str, name: str, attention: str, ff_type: str,
                                                   share: int) -> None:
    """Teacher forcing through ``decode_step`` in chunks of 2, 1 and 3 equals one full pass (float64)."""
    config = small_config(kind=kind, scheme=name, attention=attention, ff_type=ff_type, share_layers=share)
    model = _built(config)
    tokens = random_ids(2, 6, config.vocab_size, lengths=[6, 6], start_id=1)
    cache = DecodeCache()
    pieces = []
    with torch.no_grad():
        if kind == "encoder_decoder":
            src = random_ids(2, 5, config.vocab_size)                        # padded sources
            memory = model.encode(src)
            full = model.decode(tokens, memory, src)
            start = 0
            for size in (2, 1, 3):
                pieces.append(model.decode_step(tokens[:, start:start + size], memory, src, cache))
                start += size
        else:
            full = model(tokens)
            start = 0
            for size in (2, 1, 3):
                pieces.append(model.decode_step(tokens[:, start:start + size], cache))
                start += size
    assert full.dtype == torch.float64
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("kind", DECODER_KINDS)
def test_greedy_rk4_cached_equals_uncached(kind: str, attention: str) -> None:
    config = small_config(kind=kind, scheme="rk4", attention=attention, ff_type="random", share_layers=2)
    model = _built(config)
    if kind == "encoder_decoder":
        inputs = {"src": random_ids(2, 6, config.vocab_size)}
    else:
        inputs = {"prompt": random_ids(2, 3, config.vocab_size, lengths=[3, 3], start_id=1)}
    options = {"max_new_tokens": 8, "eos_id": None, "return_logits": True}
    cached = greedy_search(model, **inputs, use_cache=True, **options)
    plain = greedy_search(model, **inputs, use_cache=False, **options)
    assert torch.equal(cached.tokens, plain.tokens)
    assert cached.logits is not None and plain.logits is not None
    torch.testing.assert_close(cached.logits, plain.logits, rtol=0, atol=1e-9)


# -- FLOPs against counted matmuls ---------------------------------------------------------------------------------
FLOP_SHAPE = {"vocab_size": 64, "width": 64, "num_heads": 2, "time_dim": 32, "ff_multiplier": 4, "dropout": 0.0,
              "max_length": 256}
FLOP_SCHEMES = ["sequential", "parallel", "macaron", "macaron-half", "rk2", "rk2_gated", "rk4"]


@pytest.mark.parametrize(("attention", "impl"), [("softmax", "reference"), ("evolved", "reference"),
                                                  ("evolved", "factorised")])
@pytest.mark.parametrize("variant", FLOP_SCHEMES)
def test_scheme_flops_match_counted_matmuls(variant: str, attention: str, impl: str) -> None:
    """As ``test_bench.test_analytic_flops_match_counted_matmuls`` for every scheme (encoder-decoder: self,
    cross and the two stacks), with the same path and the same tolerance."""
    n, b = 48, 2
    config = ModelConfig(kind="encoder_decoder", attention=attention, layers_per_block=2, num_blocks=2,
                         attention_impl=impl, **_scheme_fields(variant), **FLOP_SHAPE)
    model = build_model(config).eval()
    ids = random_ids(b, n, config.vocab_size, lengths=[n] * b)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, ids)
    counted = float(counter.get_total_flops())
    path = "reference" if attention == "evolved" and impl == "reference" else "fast"
    parts = flop_breakdown(config, n, path)
    fused = attention == "softmax"                 # the CPU flash-attention kernel is invisible to the counter
    analytic = (sum(parts.values()) - (parts["attention_n2"] if fused else 0.0)) * b * n
    assert counted == pytest.approx(analytic, rel=0.0 if attention == "softmax" else 5e-3)


#: Stage time offsets of every evaluation inside one step (``stage_times`` lists the distinct ones).
STAGE_OFFSETS = {"rk2": (0.0, 1.0), "rk2_gated": (0.0, 1.0), "rk4": (0.0, 0.5, 0.5, 1.0)}
EXACT_SHAPE = {"vocab_size": 40, "width": 32, "num_heads": 2, "time_dim": 16, "ff_multiplier": 2, "dropout": 0.0,
               "max_length": 64}


def _counted_flops(model: nn.Module, inputs: tuple[torch.Tensor, ...]) -> int:
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops())


def _fast_path_extra_flops(config: ModelConfig, b: int, n: int) -> int:
    """What TransEvolve's fast paths compute beyond the per-token model, per block and attention type: the
    per-forward ``P_Q . tau(t)`` (``D h t``) once per distinct (layer, time), minus the key biases
    ``K (P_Q . tau(t))`` (``b n D h``) that evaluations at an already seen (layer, time) reuse (rk4's two stages
    at ``t + 1/2``; with sharing, a stage at the next layer's time)."""
    offsets = STAGE_OFFSETS.get(config.scheme, (0.0,))
    assert len(offsets) == get_scheme(config.scheme).evaluations
    pairs = {(i // config.share_layers, i + offset) for i in range(config.layers_per_block) for offset in offsets}
    evaluations = config.layers_per_block * len(offsets)
    big, h, t = config.score_width, config.num_heads, config.time_dim
    per_block = len(pairs) * big * h * t - (evaluations - len(pairs)) * b * n * big * h
    attention_types = 3 if config.kind == "encoder_decoder" else 1          # encoder self, decoder self + cross
    return 2 * config.num_blocks * attention_types * per_block


@pytest.mark.parametrize("share", [1, 2])
@pytest.mark.parametrize(("impl", "fidelity"), [("reference", "lean"), ("factorised", "official"),
                                                ("factorised", "lean")])
@pytest.mark.parametrize("variant", FLOP_SCHEMES)
def test_evolved_scheme_flops_are_exact(variant: str, impl: str, fidelity: str, share: int) -> None:
    """Without tolerance: counted matmul FLOPs equal ``flops_per_token * tokens`` (reference path, lean) or that
    plus the fast paths' per-forward terms and shared key biases (:func:`_fast_path_extra_flops`)."""
    n, b = 12, 2
    config = ModelConfig(kind="encoder_decoder", layers_per_block=2, num_blocks=2, attention_impl=impl,
                         fidelity=fidelity, share_layers=share, **_scheme_fields(variant), **EXACT_SHAPE)
    model = build_model(config).eval()
    ids = random_ids(b, n, config.vocab_size, lengths=[n] * b)
    analytic = sum(flop_breakdown(config, n, "reference" if impl == "reference" else "fast").values()) * b * n
    extra = 0 if impl == "reference" else _fast_path_extra_flops(config, b, n)
    assert _counted_flops(model, (ids, ids)) == analytic + extra


def test_reference_flops_count_the_official_query_bias() -> None:
    """Official fidelity, reference path: every layer evaluation also forms the inert query bias
    ``query_time . tau(t)`` (``h t`` MACs per token, ``EvolvedAttention.scores``); the cost model must count what
    the reference path computes (``bench/flops.py`` docstring). Lean fidelity (no query bias) is exact above."""
    n, b = 12, 2
    config = ModelConfig(kind="encoder", layers_per_block=2, num_blocks=1, attention_impl="reference",
                         fidelity="official", **EXACT_SHAPE)
    model = build_model(config).eval()
    ids = random_ids(b, n, config.vocab_size, lengths=[n] * b)
    analytic = sum(flop_breakdown(config, n, "reference").values()) * b * n
    counted = _counted_flops(model, (ids,))
    query_bias = 2 * config.depth * config.num_heads * config.time_dim * b * n
    assert counted - analytic in (0, query_bias)                 # nothing else is missing
    assert counted == analytic


# -- the time signal and the random feed-forward at continuous time ------------------------------------------------
def _integer_depth_signal(amplitudes: torch.Tensor, depth: int, period: float) -> torch.Tensor:
    """The pre-redesign ``T_l`` (integer depth ``l``), written out in float32."""
    half = amplitudes.shape[0] // 2
    step = torch.tensor(float(depth), dtype=torch.float32) * torch.tensor(math.pi / period, dtype=torch.float32)
    angles = step * torch.arange(half, dtype=torch.float32)
    return torch.cat([torch.sin(angles), torch.cos(angles)]) * amplitudes


def test_time_signal_integer_depths_and_continuity() -> None:
    g = torch.Generator().manual_seed(0)
    amplitudes = torch.rand(64, generator=g) - 0.5
    for depth in range(12):
        assert torch.equal(time_signal(amplitudes, depth, 64.0), _integer_depth_signal(amplitudes, depth, 64.0))
        assert torch.equal(time_signal(amplitudes, float(depth), 64.0), time_signal(amplitudes, depth, 64.0))
    # Lipschitz in t: |dT_k/dt| <= |theta_k| * (pi / P) * (d/2 - 1).
    period, delta = 64.0, 1e-3
    bound = float(amplitudes.abs().max()) * math.pi / period * (amplitudes.shape[0] // 2 - 1)
    times = [k * delta for k in range(3001)]
    signals = torch.stack([time_signal(amplitudes, t, period) for t in times])
    jumps = (signals[1:] - signals[:-1]).abs().max(dim=1).values
    assert float(jumps.max()) <= bound * delta * 1.01 + 1e-6
    # Non-integer times interpolate (not floor/round to a depth) and approach the integer values from both sides.
    for depth in (1, 2):
        middle = time_signal(amplitudes, depth + 0.5, period)
        assert not torch.equal(middle, time_signal(amplitudes, depth, period))
        assert not torch.equal(middle, time_signal(amplitudes, depth + 1, period))
        for side in (-1e-4, 1e-4):
            near = time_signal(amplitudes, depth + side, period)
            torch.testing.assert_close(near, time_signal(amplitudes, depth, period), rtol=0, atol=bound * 2e-4)


def _integer_depth_weight(projection: TemporalProjection, depth: int) -> torch.Tensor:
    """The pre-redesign ``W_l = U_l diag(s) V_l`` at integer depth ``l`` (float32)."""
    def sinusoid(table: torch.Tensor, size: int) -> torch.Tensor:
        step = torch.tensor(float(depth), dtype=torch.float32) * torch.tensor(math.pi / size, dtype=torch.float32)
        angles = step * torch.arange(table.shape[1], dtype=torch.float32) * table
        return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1) / math.sqrt(projection.out_features)

    rank = min(projection.in_features, projection.out_features)
    left = sinusoid(projection.coeffs, projection.in_features)[:, :rank]
    right = sinusoid(projection.phases, projection.out_features)[:rank]
    return (left * projection.singular_values[:rank]) @ right


def test_random_feed_forward_at_integer_time_is_the_layer_at_that_depth() -> None:
    """Layer 1 of an unshared model and the shared module at t = 1 (fixed tensors copied) give the same weights,
    bit for bit the pre-redesign ``W_1``; and the trunk evaluates them at those times."""
    config = small_config(kind="encoder", ff_type="random", num_blocks=1)
    torch.manual_seed(0)
    unshared = build_model(config)
    shared = build_model(config.replace(share_layers=2))
    layer_one = unshared.encoder.blocks[0].layers[1].feed_forward
    module = shared.encoder.blocks[0].layers[0].feed_forward
    assert len(shared.encoder.blocks[0].layers) == 1
    assert not torch.equal(module.expand.coeffs, layer_one.expand.coeffs)
    module.load_state_dict(layer_one.state_dict())
    x = torch.randn(2, 3, config.width, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        for name in ("expand", "contract"):
            ours, theirs = getattr(module, name), getattr(layer_one, name)
            assert torch.equal(ours.weight(1.0), theirs.weight(1))
            assert torch.equal(ours.weight(1.0), _integer_depth_weight(theirs, 1))
            assert not torch.equal(ours.weight(0.0), ours.weight(1.0))
        assert torch.equal(module(x, 1.0), layer_one(x, 1))
    # Which times the trunk evaluates each random feed-forward at (sequential: the integer depths).
    seen: list[tuple[int, float]] = []
    original = RandomFeedForward.forward

    def record(self: RandomFeedForward, x: torch.Tensor, t: float) -> torch.Tensor:
        seen.append((id(self), t))
        return original(self, x, t)

    ids = random_ids(2, 5, config.vocab_size)
    RandomFeedForward.forward = record  # type: ignore[method-assign]
    try:
        with torch.no_grad():
            unshared(ids)
            unshared_seen, seen[:] = list(seen), []
            shared(ids)
    finally:
        RandomFeedForward.forward = original  # type: ignore[method-assign]
    layers = unshared.encoder.blocks[0].layers
    assert unshared_seen == [(id(layers[0].feed_forward), 0.0), (id(layers[1].feed_forward), 1.0)]
    assert seen == [(id(module), 0.0), (id(module), 1.0)]


def test_random_feed_forward_tensors_are_drawn_as_before() -> None:
    """A sequential unshared model draws the fixed random tensors in the pre-redesign order (checkpoints of older
    models hold the same tensors): per layer, expand (coeffs, phases) then contract (coeffs, phases)."""
    config = small_config(kind="encoder", ff_type="random")
    model = build_model(config)
    g = torch.Generator().manual_seed(config.random_ff_seed)
    d, f = config.width, config.ff_width
    for block in model.encoder.blocks:
        for layer in block.layers:
            for projection, (n_in, n_out) in ((layer.feed_forward.expand, (d, f)),
                                              (layer.feed_forward.contract, (f, d))):
                assert torch.equal(projection.coeffs, torch.randn(n_in, n_in // 2, generator=g) * n_in)
                assert torch.equal(projection.phases, torch.randn(n_out, n_out // 2, generator=g) * n_out)


def test_evolved_time_signal_at_stage_times() -> None:
    """rk4 evaluates the evolved attention at t, t + 1/2 and t + 1 (its stage times), each through ``tau(t)``."""
    config = small_config(kind="encoder", scheme="rk4", num_blocks=1, attention_impl="reference")
    model = build_model(config).eval()
    times: list[float] = []
    attention = model.encoder.blocks[0].layers[1].self_attention
    original = attention.tau

    def tau(t: float) -> torch.Tensor:
        times.append(t)
        return original(t)

    attention.tau = tau  # type: ignore[method-assign]
    with torch.no_grad():
        model(random_ids(2, 5, config.vocab_size))
    assert times == [1.0, 1.5, 1.5, 2.0]


# -- config errors -------------------------------------------------------------------------------------------------
def test_config_errors_name_the_valid_choices() -> None:
    with pytest.raises(ValueError, match="scheme='euler'") as error:
        small_config(scheme="euler")
    for name in SCHEME_NAMES:
        assert repr(name) in str(error.value)
    with pytest.raises(ValueError, match=re.escape(f"known schemes: {sorted(SCHEMES)}")):
        get_scheme("euler")
    with pytest.raises(ValueError, match=r"share_layers=2 must divide layers_per_block=3.*choose among \[1, 3\]"):
        small_config(layers_per_block=3, share_layers=2)
    with pytest.raises(ValueError, match=r"choose among \[1, 2, 3, 6\]"):
        small_config(layers_per_block=6, share_layers=4)
    with pytest.raises(ValueError, match="share_layers=0 must be a positive integer"):
        small_config(share_layers=0)
    for scheme in ("sequential", "parallel", "rk2", "rk2_gated", "rk4"):
        with pytest.raises(ValueError, match="macaron_half_width=true halves the two feed-forwards"):
            small_config(scheme=scheme, macaron_half_width=True)
    assert small_config(scheme="macaron", macaron_half_width=True).scheme_ff_width == SMALL["ff_multiplier"] * 8
    assert small_config(layers_per_block=6, share_layers=3).share_layers == 3
