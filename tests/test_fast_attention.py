"""Fast evolved attention (``attention_impl``: factorised, low_memory, auto) against the reference path.

The reference path is the official formula (logits + softmax per layer). Every fast path must give the same
outputs and the same gradients (1e-5 absolute, float32) for every model kind, both feed-forwards and both
fidelities, with padding (including the official fully blocked pad rows), and stay exact under adversarial
logits where the factorised denominator underflows.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import FF_TYPES, FIDELITIES, FIXTURES, KINDS, model_inputs, random_ids, tiny_config

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.interop import from_official_npz, read_official_fixture
from transevolve.modules.evolved_attention import (
    AUTO_KERNEL_BYTES,
    AUTO_REFERENCE_MAX_ENTRIES,
    FastScores,
    factorised_attention,
    factorised_kernel,
    fully_blocked_rows,
    resolve_impl,
    visible_keys,
)

FAST = ("factorised", "low_memory")
ATOL = 1e-5


def _pair(config: ModelConfig, impl: str, seed: int = 0, dtype: torch.dtype = torch.float32
          ) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(seed)
    reference = build_model(config.replace(attention_impl="reference")).to(dtype)
    fast = build_model(config.replace(attention_impl=impl)).to(dtype)
    fast.load_state_dict(reference.state_dict())
    return reference, fast


def _loss(output: torch.Tensor) -> torch.Tensor:
    """A fixed random projection of every output entry (pads included), of order 1."""
    weights = torch.randn(output.shape, generator=torch.Generator().manual_seed(7)).to(output.dtype)
    return (output * weights).sum() / math.sqrt(output.numel())


def _gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: (p.grad if p.grad is not None else torch.zeros_like(p)) for name, p in model.named_parameters()}


def _assert_same_training_step(config: ModelConfig, impl: str, inputs: tuple[torch.Tensor, ...],
                               dtype: torch.dtype = torch.float32, atol: float = ATOL) -> None:
    reference, fast = _pair(config, impl, dtype=dtype)
    expected, actual = reference(*inputs), fast(*inputs)
    torch.testing.assert_close(actual, expected, rtol=0, atol=atol)
    _loss(expected).backward()
    _loss(actual).backward()
    expected_grads, actual_grads = _gradients(reference), _gradients(fast)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(actual_grads[name], grad, rtol=0, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def _with_blocked_rows(config: ModelConfig) -> tuple[torch.Tensor, ...]:
    """Padded inputs plus an all-pad sequence (every row fully blocked) and leading pads (causal rows that see
    no key)."""
    inputs = list(model_inputs(config, batch=3, length=8, tgt_length=6))
    first = inputs[0].clone()
    first[1] = 0                                  # all-pad sequence
    first[2, :3] = 0                              # leading pads
    inputs[0] = first
    if config.kind == "encoder_decoder":
        tgt = inputs[1].clone()
        tgt[2, :2] = 0
        inputs[1] = tgt
    return tuple(inputs)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize(("kind", "ff_type", "fidelity"), list(itertools.product(KINDS, FF_TYPES, FIDELITIES)))
def test_fast_equals_reference_outputs_and_gradients(kind: str, ff_type: str, fidelity: str, impl: str) -> None:
    config = tiny_config(kind=kind, ff_type=ff_type, fidelity=fidelity)
    inputs = model_inputs(config, padded=True)
    assert any((x == 0).any() for x in inputs)
    _assert_same_training_step(config, impl, inputs)


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("kind", KINDS)
def test_fast_handles_all_pad_rows_and_leading_pads(kind: str, impl: str) -> None:
    """An all-pad sequence (every row fully blocked) and leading pads (causal rows that see no key)."""
    config = tiny_config(kind=kind)
    _assert_same_training_step(config, impl, _with_blocked_rows(config))


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("kind", KINDS)
def test_fast_equals_reference_in_float64_with_blocked_rows(kind: str, impl: str) -> None:
    """float64, where ``S - 1e9`` no longer rounds to -1e9: the reference still gives fully blocked rows the
    official uniform attention and its gradient, so both paths agree to float64 rounding."""
    config = tiny_config(kind=kind, ff_type="random" if kind == "decoder" else "full")
    _assert_same_training_step(config, impl, _with_blocked_rows(config), torch.float64, atol=1e-10)


@pytest.mark.parametrize("impl", FAST)
def test_fast_with_dropout_trains_and_matches_in_eval(impl: str) -> None:
    config = tiny_config(kind="encoder_decoder", dropout=0.1)
    reference, fast = _pair(config, impl)
    inputs = model_inputs(config)
    _loss(fast.train()(*inputs)).backward()
    assert all(p.grad is not None for n, p in fast.named_parameters() if not n.endswith("key_time"))
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(*inputs), reference.eval()(*inputs), rtol=0, atol=ATOL)


def test_auto_picks_reference_for_small_logits_then_by_kernel_size() -> None:
    assert resolve_impl("auto", 2, 4, 128, 128) == "reference"
    assert resolve_impl("auto", 1, 1, 1, AUTO_REFERENCE_MAX_ENTRIES) == "reference"
    assert resolve_impl("auto", 1, 1, 1, AUTO_REFERENCE_MAX_ENTRIES + 1) == "factorised"
    assert resolve_impl("auto", 16, 4, 512, 512) == "factorised"
    side = math.isqrt(AUTO_KERNEL_BYTES // (4 * 4)) + 1
    assert resolve_impl("auto", 1, 4, side, side) == "low_memory"
    assert resolve_impl("factorised", 1, 4, 8, 8, need_weights=True) == "reference"
    assert resolve_impl("reference", 1, 4, 8, 8) == "reference"
    with pytest.raises(ValueError):
        resolve_impl("fastest", 1, 4, 8, 8)


@pytest.mark.parametrize("impl", [*FAST, "auto"])
def test_intermediates_fall_back_to_reference(impl: str) -> None:
    config = tiny_config(kind="encoder_decoder")
    reference, fast = _pair(config, impl)
    inputs = model_inputs(config)
    with torch.no_grad():
        plain = fast(*inputs)
        traced, intermediates = fast(*inputs, return_intermediates=True)
        expected, expected_inter = reference(*inputs, return_intermediates=True)
    torch.testing.assert_close(traced, expected, rtol=0, atol=0)
    torch.testing.assert_close(plain, expected, rtol=0, atol=ATOL)
    assert intermediates.encoder is not None and expected_inter.encoder is not None
    assert len(intermediates.encoder.block_scores) == config.num_blocks


def test_config_field_validation_and_parameter_counts() -> None:
    base = tiny_config(kind="encoder_decoder")
    with pytest.raises(ValueError, match="attention_impl"):
        base.replace(attention_impl="flash")
    for impl in ("reference", *FAST, "auto"):
        config = base.replace(attention_impl=impl)
        assert config == base                              # an execution choice, not architecture
        assert ModelConfig.from_dict(config.to_dict()).attention_impl == impl
        assert count_parameters(config) == count_parameters(base)
        model = build_model(config)
        assert sum(p.numel() for p in model.parameters()) == count_parameters(base).total
    assert ModelConfig().attention_impl == "auto"


# --------------------------------------------------------------------------------------------------------
# Numerical safety


def _block(queries: torch.Tensor, keys: torch.Tensor, key_pad: torch.Tensor, causal: bool) -> FastScores:
    n_q = queries.shape[2]
    visible = visible_keys(key_pad, n_q, causal)
    query_pad = torch.zeros(key_pad.shape[0], n_q, dtype=torch.bool)
    blocked = fully_blocked_rows(query_pad, key_pad, causal)[:, None, :, None]
    b, h, n_k, c = keys.shape
    return FastScores("factorised", queries, keys, keys.transpose(1, 2).reshape(b, n_k, h * c),
                      torch.zeros(h * c, h, 1), key_pad, visible, blocked, bool(blocked.any()), causal,
                      kernel=factorised_kernel(queries, keys, visible))


def _exact64(queries: torch.Tensor, keys: torch.Tensor, bias: torch.Tensor, visible: torch.Tensor,
             values: torch.Tensor) -> torch.Tensor:
    logits = queries.double() @ keys.double().transpose(-1, -2) + bias.double().unsqueeze(-2)
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), -1) @ values.double()


@pytest.mark.parametrize("causal", [False, True])
def test_factorised_survives_adversarial_logits(causal: bool) -> None:
    """``A0`` peaks where the key bias is lowest, 100+ nats apart: ``E w`` underflows to 0 in float32 without
    the rescue, yet the true softmax is well defined."""
    torch.manual_seed(0)
    b, h, n, c, v = 2, 3, 6, 4, 5
    queries = torch.randn(b, h, n, c) * 0.1
    keys = torch.randn(b, h, n, c) * 0.1
    # A0[i, j] ~ +60 for j = 0 and ~ -60 elsewhere; the bias is -120 at key 0 and +60 elsewhere.
    queries[..., 0] = 1.0
    keys[..., 0] = -60.0
    keys[:, :, 0, 0] = 60.0
    bias = torch.full((b, h, n), 60.0)
    bias[:, :, 0] = -120.0
    values = torch.randn(b, h, n, v)
    key_pad = torch.zeros(b, n, dtype=torch.bool)
    key_pad[1, -1] = True
    block = _block(queries.requires_grad_(), keys, key_pad, causal)
    out = factorised_attention(block, bias, values)
    expected = _exact64(queries.detach(), keys, bias, block.visible, values)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=1e-5)
    # The naive factorisation underflows on these rows (that is what the rescue is for).
    assert block.kernel is not None
    weights = (bias - bias.amax(-1, keepdim=True)).exp()
    naive_denominator = block.kernel @ weights.unsqueeze(-1)
    assert (naive_denominator < 1e-30).any()
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    (out * probe).sum().backward()
    exact_queries = queries.detach().double().requires_grad_()
    (_exact64(exact_queries, keys, bias, block.visible, values) * probe.double()).sum().backward()
    assert queries.grad is not None and exact_queries.grad is not None
    torch.testing.assert_close(queries.grad.double(), exact_queries.grad, rtol=0, atol=1e-4)


def test_factorised_kernel_gradient_matches_plain_autograd() -> None:
    """The fused kernel backward (all layers' gradients in one matmul) equals autograd through the formula."""
    torch.manual_seed(1)
    b, h, n, c, v = 2, 2, 7, 5, 3
    key_pad = torch.zeros(b, n, dtype=torch.bool)
    key_pad[0, -2:] = True
    for causal in (False, True):
        queries, keys = torch.randn(b, h, n, c, requires_grad=True), torch.randn(b, h, n, c, requires_grad=True)
        block = _block(queries, keys, key_pad, causal)
        layers = [(torch.randn(b, h, n, requires_grad=True), torch.randn(b, h, n, v, requires_grad=True))
                  for _ in range(3)]
        out = sum(factorised_attention(block, bias, values).square().sum() for bias, values in layers)
        leaves = [queries, keys] + [t for layer in layers for t in layer]
        fused = torch.autograd.grad(out, leaves)
        q2, k2 = queries.detach().requires_grad_(), keys.detach().requires_grad_()
        visible = block.visible
        plain = sum(torch.softmax((q2 @ k2.transpose(-1, -2) + bias.unsqueeze(-2)).masked_fill(
            ~visible, float("-inf")), -1).matmul(values).square().sum() for bias, values in layers)
        expected = torch.autograd.grad(plain, [q2, k2, *leaves[2:]])
        for got, want in zip(fused, expected, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", FAST)
def test_large_logits_model_level(impl: str) -> None:
    """Interaction weights scaled up 40x: logits in the thousands, spread widely; still the reference function.

    Compared at real positions: at pad rows the reference's ``S - 1e9`` is no longer exactly uniform once
    ``|S| >= 32`` (float32 spacing at 1e9 is 64), while the fast paths keep the uniform rows of the official
    semantics.
    """
    config = tiny_config(kind="decoder")
    reference, fast = _pair(config, impl)
    with torch.no_grad():
        for model in (reference, fast):
            for name, parameter in model.named_parameters():
                if "interaction" in name or name.endswith("time_amplitudes"):
                    parameter.mul_(40.0)
    (ids,) = model_inputs(config)
    real = ids != 0
    with torch.no_grad():
        torch.testing.assert_close(fast(ids)[real], reference(ids)[real], rtol=0, atol=ATOL)


def test_low_memory_stores_no_square_tensor() -> None:
    """Training through the low-memory path saves nothing of size n x n per (batch, head)."""
    n = 300                                      # longer than every width of the tiny model (64, D 128, FF 256)
    config = tiny_config(kind="decoder", max_length=n, attention_impl="low_memory")
    model = build_model(config)
    ids = random_ids(2, n, config.vocab_size, lengths=[n, n - 10], start_id=1)
    saved: list[tuple[int, ...]] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved.append(tuple(tensor.shape))
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = _loss(model(ids))
    loss.backward()
    assert saved
    assert not [shape for shape in saved if sum(size >= n for size in shape) >= 2]


def test_factorised_stores_one_square_tensor_per_block() -> None:
    n = 300
    config = tiny_config(kind="encoder", max_length=n, attention_impl="factorised")
    model = build_model(config)
    ids = random_ids(2, n, config.vocab_size)
    square: set[int] = set()

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        if sum(size >= n for size in tensor.shape) >= 2 and tensor.is_floating_point():
            square.add(tensor.untyped_storage().data_ptr())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _loss(model(ids)).backward()
    assert len(square) == config.num_blocks


# --------------------------------------------------------------------------------------------------------
# Official fixtures through the fast paths


@pytest.mark.parametrize("impl", FAST)
@pytest.mark.parametrize("fixture", sorted(FIXTURES.glob("*.npz")), ids=lambda p: Path(p).stem)
def test_official_fixtures_through_fast_paths(fixture: Path, impl: str) -> None:
    official = from_official_npz(fixture)
    model = build_model(official.config.replace(attention_impl=impl))
    model.load_state_dict(official.state_dict())
    model.eval()
    arrays = read_official_fixture(fixture).arrays
    src = torch.from_numpy(arrays["input.src_ids"].astype(np.int64))
    with torch.no_grad():
        if "input.tgt_ids" in arrays:
            ours = model(src, torch.from_numpy(arrays["input.tgt_ids"].astype(np.int64)))
            expected = arrays["output.logits"]
        else:
            logits = model(src)
            ours = torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, -1)
            expected = arrays["output.probs"]
    assert float((ours.double() - torch.from_numpy(expected.astype(np.float64))).abs().max()) < 1e-4


# --------------------------------------------------------------------------------------------------------
# Random feed-forward: the depth-dependent weight is cached in eval mode


def test_random_ff_weight_cached_in_eval_and_invalidated() -> None:
    config = tiny_config(kind="encoder", ff_type="random")
    model = build_model(config).eval()
    projection = model.encoder.blocks[0].layers[1].feed_forward.expand
    with torch.no_grad():
        first = projection.weight(1.0)
        assert projection.weight(1.0) is first                                  # cached
        torch.testing.assert_close(first, projection._build_weight(1.0), rtol=0, atol=0)
        projection.singular_values.mul_(2.0)                                 # in-place update: rebuilt
        second = projection.weight(1.0)
        assert second is not first
        torch.testing.assert_close(second, 2.0 * first, rtol=1e-6, atol=1e-7)
        other = build_model(config)
        model.load_state_dict(other.state_dict())                           # new values: rebuilt
        torch.testing.assert_close(projection.weight(1.0), other.encoder.blocks[0].layers[1].feed_forward.expand
                                   .weight(1.0), rtol=0, atol=0)
    with torch.inference_mode():
        cached = projection.weight(1.0)
        assert projection.weight(1.0) is cached
    model.eval()                                                             # already eval: cache kept
    with torch.inference_mode():
        assert projection.weight(1.0) is cached
    model.double()                                                           # dtype change: rebuilt
    with torch.no_grad():
        assert projection.weight(1.0).dtype == torch.float64
    model.train()                                                            # training: never cached
    assert projection._cached_weight is None
    built = projection.weight(1.0)
    assert built.requires_grad and projection.weight(1.0) is not built
    model.eval()
    assert projection.weight(1.0).requires_grad                                 # autograd on: not cached
    assert projection._cached_weight is None


def test_random_ff_cache_keeps_outputs() -> None:
    config = tiny_config(kind="classifier", ff_type="random")
    model = build_model(config).eval()
    (ids,) = model_inputs(config)
    with torch.no_grad():
        first = model(ids)
        again = model(ids)
    torch.testing.assert_close(again, first, rtol=0, atol=0)
    torch.testing.assert_close(model(ids).detach(), first, rtol=0, atol=0)   # autograd path, no cache


def test_kernel_workspace_reuse_is_safe() -> None:
    """The factorised kernel's buffer is reused across passes, but never while a graph still holds it: two
    forwards before one backward (gradient accumulation) still give the reference gradients."""
    config = tiny_config(kind="encoder", attention_impl="factorised")
    reference, fast = _pair(config.replace(attention_impl="reference"), "factorised")
    first, second = model_inputs(config, seed=1), model_inputs(config, seed=2)
    (_loss(reference(*first)) + _loss(reference(*second))).backward()
    (_loss(fast(*first)) + _loss(fast(*second))).backward()
    expected, actual = _gradients(reference), _gradients(fast)
    for name, grad in expected.items():
        torch.testing.assert_close(actual[name], grad, rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")
    fast.eval()
    interaction = fast.encoder.blocks[0].self_interaction
    with torch.no_grad():
        out = fast(*first)
        pointer = interaction.workspaces[0].buffer.data_ptr()
        again = fast(*first)
    assert interaction.workspaces[0].buffer.data_ptr() == pointer                     # reused in inference
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    copy = __import__("copy").deepcopy(fast)
    assert copy.encoder.blocks[0].self_interaction.workspaces[0].buffer is None


def test_workspace_made_in_inference_mode_is_not_reused_outside_it() -> None:
    """Evaluation under ``inference_mode`` then ``no_grad`` then training (what the training loop does around
    its evaluations) through the reused n x n workspace."""
    config = tiny_config(kind="encoder", attention_impl="factorised")
    reference, fast = _pair(config, "factorised")
    inputs = model_inputs(config)
    with torch.inference_mode():
        expected = reference(*inputs)
        torch.testing.assert_close(fast(*inputs), expected, rtol=0, atol=ATOL)
    with torch.no_grad():
        torch.testing.assert_close(fast(*inputs), expected.clone(), rtol=0, atol=ATOL)
    _loss(reference(*inputs)).backward()
    _loss(fast(*inputs)).backward()
    for name, grad in _gradients(reference).items():
        torch.testing.assert_close(_gradients(fast)[name], grad, rtol=0, atol=ATOL, msg=lambda m, n=name: f"{n}: {m}")


def test_bf16_autocast_keeps_the_fast_paths_float16_does_not() -> None:
    assert resolve_impl("auto", 1, 1, 8, 2**20) == "factorised"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert resolve_impl("auto", 1, 1, 8, 2**20) == "factorised"
        assert resolve_impl("low_memory", 1, 1, 8, 8) == "low_memory"
    with torch.autocast("cpu", dtype=torch.float16):
        assert resolve_impl("auto", 1, 1, 8, 2**20) == "reference"
