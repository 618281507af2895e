"""Behaviour of the model trunk over every variant: shapes, gradients, causality, padding, determinism,
the softmax fast path, intermediates, dropout and the official -> lean conversion."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    ALL_VARIANTS,
    ATTENTIONS,
    FF_TYPES,
    KINDS,
    Variant,
    expected_output_shape,
    model_inputs,
    random_ids,
    tiny_config,
    variant_params,
)

from transevolve import ModelConfig, build_model, count_parameters, dead_parameter_masks
from transevolve.fidelity import lean_state_dict, to_lean
from transevolve.modules.feedforward import TemporalProjection
from transevolve.modules.softmax_attention import SoftmaxAttention
from transevolve.params import count_model_parameters

EVOLVED_VARIANTS = [v for v in ALL_VARIANTS if v.attention == "evolved" and v.fidelity == "official"]


def build(config, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return build_model(config).to(dtype)


def outputs(model, inputs, **kwargs):
    return model(*inputs, **kwargs)


# --------------------------------------------------------------------------------------------------------
# Shapes


@pytest.mark.parametrize("variant", variant_params())
def test_output_shapes(variant: Variant) -> None:
    config = variant.config()
    model = build(config).eval()
    inputs = model_inputs(config)
    with torch.no_grad():
        out = outputs(model, inputs)
    assert tuple(out.shape) == expected_output_shape(config, inputs)
    assert out.dtype == torch.float32
    assert torch.isfinite(out).all()


def test_variant_grid_is_complete() -> None:
    ids = {v.id for v in ALL_VARIANTS}
    assert len(ids) == len(ALL_VARIANTS)
    for kind in KINDS:
        for attention in ATTENTIONS:
            for ff_type in FF_TYPES:
                assert any(v.kind == kind and v.attention == attention and v.ff_type == ff_type
                           for v in ALL_VARIANTS)
    assert any(v.num_classes == 2 for v in ALL_VARIANTS)
    assert any(v.fidelity == "lean" and v.attention == "evolved" for v in ALL_VARIANTS)


@pytest.mark.parametrize("kind", KINDS)
def test_batch_helper_pads_only_row_ends(kind: str) -> None:
    config = tiny_config(kind=kind)
    inputs = model_inputs(config, batch=4, length=9, tgt_length=7)
    assert len(inputs) == (2 if kind == "encoder_decoder" else 1)
    for position, ids in enumerate(inputs):
        assert ids.dtype == torch.int64 and ids.dim() == 2
        assert (ids[:, 0] != 0).all()
        assert (ids >= 0).all() and (ids < config.vocab_size).all()
        pad = ids == 0
        assert torch.equal(pad, pad.cummax(dim=1).values), "padding must be trailing"
        assert pad.any() and (~pad).all(dim=1).any()      # some rows padded, some not
        if kind == "decoder" or position == 1:
            assert (ids[:, 0] == 1).all()
    unpadded = model_inputs(config, padded=False)
    assert all((ids != 0).all() for ids in unpadded)


# --------------------------------------------------------------------------------------------------------
# Gradients


def _softmax_key_bias_names(model: torch.nn.Module) -> set[str]:
    """The key bias of softmax attention only shifts every score of a row by the same amount (q . b_k), so the
    softmax removes it: provably dead, like the evolved attention's key_time."""
    return {f"{prefix}.key_proj.bias" for prefix, module in model.named_modules()
            if isinstance(module, SoftmaxAttention)}


@pytest.mark.parametrize("variant", variant_params())
def test_gradients_reach_every_live_parameter(variant: Variant) -> None:
    config = variant.config()
    model = build(config, torch.float64).train()
    inputs = model_inputs(config)
    out = outputs(model, inputs)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out * weights).sum().backward()

    named = dict(model.named_parameters())
    masks = dead_parameter_masks(model)
    assert set(masks) <= set(named), f"masks name non-parameters: {sorted(set(masks) - set(named))}"
    for name in _softmax_key_bias_names(model):
        masks[name] = torch.ones_like(named[name], dtype=torch.bool)

    grads = {}
    for name, parameter in named.items():
        assert parameter.requires_grad, name
        if parameter.grad is None:            # the fast paths leave provably dead parameters out of the graph
            assert name in masks and bool(masks[name].all()), f"{name} got no gradient"
            grads[name] = torch.zeros_like(parameter)
            continue
        assert torch.isfinite(parameter.grad).all(), f"{name} has non-finite gradient"
        grads[name] = parameter.grad
    scale = max(float(g.abs().max()) for g in grads.values())
    assert scale > 0
    rounding = 1e-7 * scale
    for name, grad in grads.items():
        dead = masks.get(name, torch.zeros_like(grad, dtype=torch.bool))
        assert dead.shape == grad.shape, name
        if dead.any():
            worst = float(grad[dead].abs().max())
            assert worst <= rounding, f"{name}: an entry marked dead has |grad| {worst:.3g} (scale {scale:.3g})"
        if not dead.all():
            live = float(grad[~dead].abs().max())
            assert live > rounding, f"{name}: live entries get no gradient (max |grad| {live:.3g})"


@pytest.mark.parametrize("variant", variant_params(
    [v for v in ALL_VARIANTS if v.attention == "evolved" or v.ff_type == "random"]))
def test_dead_parameters_do_not_change_outputs(variant: Variant) -> None:
    """Perturbing every masked entry by large noise leaves the function unchanged (not only the local gradient)."""
    config = variant.config()
    model = build(config, torch.float64).eval()
    masks = dead_parameter_masks(model)
    assert masks, "expected dead entries for evolved attention / random FF"
    inputs = model_inputs(config, padded=False)  # see test_float64_matches_float32_on_padded_rows
    with torch.no_grad():
        before = outputs(model, inputs)
        named = dict(model.named_parameters())
        for name, mask in masks.items():
            noise = torch.randn(named[name].shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
            named[name].add_(noise * mask)
        after = outputs(model, inputs)
        # Sanity: perturbing live entries the same way does change the outputs.
        for name, mask in masks.items():
            if not mask.all():
                named[name].add_(torch.randn_like(named[name]) * ~mask)
                break
        else:
            next(iter(named.values())).add_(1.0)
        changed = outputs(model, inputs)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-9)
    assert (changed - before).abs().max() > 1e-6


def test_dead_parameter_masks_cover_the_documented_entries() -> None:
    model = build(tiny_config(kind="encoder_decoder", ff_type="random"))
    masks = dead_parameter_masks(model)
    d = model.config.width
    assert masks["encoder.blocks.0.self_interaction.key_time"].all()
    assert masks["decoder.blocks.1.cross_interaction.key_time"].all()
    depth0 = masks["encoder.blocks.1.layers.0.self_attention.time_amplitudes"]
    assert depth0[: d // 2].all() and not depth0[d // 2:].any()
    depth1 = masks["encoder.blocks.1.layers.1.self_attention.time_amplitudes"]
    assert depth1[0] and not depth1[1:].any()
    # Depth 0 random FF: everything but the last bias is dead.
    for part in ("norm.weight", "norm.bias", "expand.singular_values", "expand.bias", "contract.singular_values"):
        assert masks[f"decoder.blocks.0.layers.0.feed_forward.{part}"].all(), part
    assert "decoder.blocks.0.layers.0.feed_forward.contract.bias" not in masks
    contract = masks["encoder.blocks.0.layers.1.feed_forward.contract.singular_values"]
    assert contract[0] and contract[d:].all() and not contract[1:d].any()
    lean = build(tiny_config(kind="encoder_decoder", ff_type="random", fidelity="lean"))
    assert not any(name.endswith("key_time") for name in dead_parameter_masks(lean))


def test_dead_parameter_masks_include_softmax_key_bias() -> None:
    model = build(tiny_config(kind="encoder", attention="softmax"))
    masks = dead_parameter_masks(model)
    assert _softmax_key_bias_names(model) <= set(masks)


def test_random_ff_depth0_contract_weight_is_exactly_zero() -> None:
    model = build(tiny_config(kind="encoder", ff_type="random"))
    projections = {name: m for name, m in model.named_modules() if isinstance(m, TemporalProjection)}
    for name, projection in projections.items():
        (t,) = projection.times
        weight = projection.weight(t)
        if t == 0 and projection.in_features > projection.out_features:
            assert torch.count_nonzero(weight) == 0, name
        else:
            assert torch.linalg.matrix_rank(weight.double()) >= (1 if t == 0 else 2), name


# --------------------------------------------------------------------------------------------------------
# Causality


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("kind", ["encoder_decoder", "decoder"])
def test_decoder_is_causal(kind: str, attention: str, ff_type: str) -> None:
    config = tiny_config(kind=kind, attention=attention, ff_type=ff_type)
    model = build(config, torch.float64).eval()
    inputs = list(model_inputs(config, padded=False))
    tgt_index = 1 if kind == "encoder_decoder" else 0
    tgt = inputs[tgt_index]
    cut = tgt.shape[1] // 2
    changed = tgt.clone()
    changed[:, cut:] = (tgt[:, cut:] % (config.vocab_size - 1)) + 1   # other non-pad ids
    assert (changed[:, cut:] != tgt[:, cut:]).all()
    other = list(inputs)
    other[tgt_index] = changed
    with torch.no_grad():
        before = outputs(model, inputs)
        after = outputs(model, other)
    torch.testing.assert_close(after[:, :cut], before[:, :cut], rtol=0, atol=1e-6)
    assert (after[:, cut:] - before[:, cut:]).abs().max() > 1e-3


# --------------------------------------------------------------------------------------------------------
# Padding


def _append_pads(ids: torch.Tensor, extra: int) -> torch.Tensor:
    return torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=ids.dtype)], dim=1)


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("num_classes", [3, 2])
def test_masked_mean_classifier_ignores_appended_pads(attention: str, ff_type: str, num_classes: int) -> None:
    config = tiny_config(kind="classifier", attention=attention, ff_type=ff_type, num_classes=num_classes,
                         pooling="masked_mean")
    model = build(config).eval()
    (ids,) = model_inputs(config)
    with torch.no_grad():
        base = model(ids)
        padded = model(_append_pads(ids, 4))
    torch.testing.assert_close(padded, base, rtol=0, atol=1e-5)
    # Sanity: the official pad-inclusive mean does see the extra pads (so the comparison above can fail).
    mean_model = build(config.replace(pooling="mean")).eval()
    with torch.no_grad():
        assert (mean_model(_append_pads(ids, 4)) - mean_model(ids)).abs().max() > 1e-4


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
def test_encoder_decoder_ignores_source_pads(attention: str, ff_type: str) -> None:
    config = tiny_config(kind="encoder_decoder", attention=attention, ff_type=ff_type)
    model = build(config).eval()
    src, tgt = model_inputs(config)
    real = tgt != 0
    assert (~real).any()
    with torch.no_grad():
        base = model(src, tgt)
        padded = model(_append_pads(src, 5), tgt)
        shortened = src.clone()
        shortened[:, 1] = 0                    # sanity: hiding a real source token does change the logits
        shortened[:, 2:] = 0
        different = model(shortened, tgt)
    torch.testing.assert_close(padded[real], base[real], rtol=0, atol=1e-5)
    assert (different[real] - base[real]).abs().max() > 1e-4


@pytest.mark.parametrize("attention", ATTENTIONS)
def test_encoder_hidden_states_ignore_appended_pads(attention: str) -> None:
    config = tiny_config(kind="encoder", attention=attention, ff_type="random")
    model = build(config).eval()
    (ids,) = model_inputs(config)
    real = ids != 0
    with torch.no_grad():
        base = model(ids)
        padded = model(_append_pads(ids, 3))[:, : ids.shape[1]]
    torch.testing.assert_close(padded[real], base[real], rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------------------------------
# Determinism


@pytest.mark.parametrize("variant", variant_params([v for v in ALL_VARIANTS if v.fidelity == "official"
                                                    and v.num_classes != 2]))
def test_same_seed_same_model(variant: Variant) -> None:
    config = variant.config()
    first, second, third = build(config, seed=11), build(config, seed=11), build(config, seed=12)
    state1, state2, state3 = first.state_dict(), second.state_dict(), third.state_dict()
    assert state1.keys() == state2.keys()
    for name in state1:
        assert torch.equal(state1[name], state2[name]), name
    assert any(not torch.equal(state1[name], state3[name]) for name in state1)
    inputs = model_inputs(config)
    with torch.no_grad():
        assert torch.equal(outputs(first.eval(), inputs), outputs(second.eval(), inputs))


@pytest.mark.parametrize("kind", KINDS)
def test_random_ff_buffers_depend_only_on_random_ff_seed(kind: str) -> None:
    config = tiny_config(kind=kind, ff_type="random")
    a, b = build(config, seed=1), build(config, seed=2)
    c = build(config.replace(random_ff_seed=5), seed=1)
    buffers_a, buffers_b, buffers_c = dict(a.named_buffers()), dict(b.named_buffers()), dict(c.named_buffers())
    random_names = [n for n in buffers_a if n.endswith((".coeffs", ".phases"))]
    assert len(random_names) == 4 * config.depth * (2 if kind == "encoder_decoder" else 1)
    for name in random_names:
        assert torch.equal(buffers_a[name], buffers_b[name]), name
        assert not torch.equal(buffers_a[name], buffers_c[name]), name
    # ... while the trained parameters do follow the global seed.
    assert not torch.equal(dict(a.named_parameters())["embedding.weight"],
                           dict(b.named_parameters())["embedding.weight"])
    # Distinct layers get distinct draws.
    assert not torch.equal(buffers_a[random_names[0]], buffers_a[random_names[4]])


# --------------------------------------------------------------------------------------------------------
# Softmax attention: fast path vs reference, intermediates


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("variant", variant_params([v for v in ALL_VARIANTS if v.attention == "softmax"
                                                    and v.fidelity == "official" and v.num_classes != 2]))
def test_softmax_sdpa_matches_explicit_reference(variant: Variant, dtype: torch.dtype) -> None:
    config = variant.config()
    model = build(config, dtype).eval()
    inputs = model_inputs(config)
    with torch.no_grad():
        fast = outputs(model, inputs)
        reference, intermediates = outputs(model, inputs, return_intermediates=True)
    assert intermediates is not None
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_intermediates_attention_weights(kind: str, attention: str) -> None:
    config = tiny_config(kind=kind, attention=attention)
    model = build(config).eval()
    inputs = model_inputs(config)
    with torch.no_grad():
        out, inter = outputs(model, inputs, return_intermediates=True)
        plain = outputs(model, inputs)
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-5)
    traces = [(inter.encoder, inputs[0], inputs[0], False)] if config.has_encoder else []
    if config.kind == "encoder_decoder":
        traces.append((inter.decoder, inputs[1], inputs[0], True))
    elif config.kind == "decoder":
        traces.append((inter.decoder, inputs[0], inputs[0], True))
    assert traces
    for trace, queries, keys, causal in traces:
        assert trace is not None
        assert len(trace.self_attention) == config.depth
        assert len(trace.layer_outputs) == config.depth
        assert len(trace.block_outputs) == config.num_blocks
        assert len(trace.block_scores) == (config.num_blocks if attention == "evolved" else 0)
        b, n = queries.shape
        for weights in trace.self_attention.values():
            assert weights.shape == (b, config.num_heads, n, n)
            assert (weights >= 0).all()
            torch.testing.assert_close(weights.sum(-1), torch.ones(b, config.num_heads, n), rtol=0, atol=1e-5)
            real_query = queries != 0
            pad_key = (queries == 0)[:, None, None, :].expand_as(weights)
            on_real_rows = real_query[:, None, :, None].expand_as(weights)
            assert weights[pad_key & on_real_rows].abs().max() < 1e-6   # real queries ignore pad keys
            if causal:
                future = torch.ones(n, n, dtype=torch.bool).triu(1).expand_as(weights)
                assert weights[future & on_real_rows].abs().max() < 1e-6
        cross_expected = config.kind == "encoder_decoder" and causal
        assert len(trace.cross_attention) == (config.depth if cross_expected else 0)
        for weights in trace.cross_attention.values():
            assert weights.shape == (b, config.num_heads, n, keys.shape[1])
            torch.testing.assert_close(weights.sum(-1), torch.ones(b, config.num_heads, n), rtol=0, atol=1e-5)
    if config.kind == "classifier":
        assert inter.pooled is not None and inter.pooled.shape == (inputs[0].shape[0], config.width)


# --------------------------------------------------------------------------------------------------------
# Dropout


@pytest.mark.parametrize("ff_type", FF_TYPES)
@pytest.mark.parametrize("attention", ATTENTIONS)
@pytest.mark.parametrize("kind", KINDS)
def test_dropout_train_vs_eval(kind: str, attention: str, ff_type: str) -> None:
    config = tiny_config(kind=kind, attention=attention, ff_type=ff_type, dropout=0.3)
    model = build(config)
    inputs = model_inputs(config)
    with torch.no_grad():
        model.train()
        first, second = outputs(model, inputs), outputs(model, inputs)
        model.eval()
        third, fourth = outputs(model, inputs), outputs(model, inputs)
    assert (first - second).abs().max() > 1e-4
    assert torch.equal(third, fourth)
    # Dropout 0 in train mode is deterministic too.
    quiet = build(config.replace(dropout=0.0)).train()
    with torch.no_grad():
        assert torch.equal(outputs(quiet, inputs), outputs(quiet, inputs))


# --------------------------------------------------------------------------------------------------------
# Official vs lean


@pytest.mark.parametrize("variant", variant_params(EVOLVED_VARIANTS))
def test_to_lean_same_function_float32(variant: Variant) -> None:
    config = variant.config()
    official = build(config).eval()
    lean = to_lean(official)
    assert lean.config == config.replace(fidelity="lean")
    assert not lean.training
    inputs = model_inputs(config)
    with torch.no_grad():
        torch.testing.assert_close(outputs(lean, inputs), outputs(official, inputs), rtol=0, atol=1e-5)
    n_official, n_lean = count_model_parameters(official), count_model_parameters(lean)
    assert n_lean < n_official
    assert count_parameters(lean.config).total == n_lean
    assert count_parameters(config).total == n_official


@pytest.mark.parametrize("variant", variant_params(EVOLVED_VARIANTS))
def test_to_lean_same_function_float64(variant: Variant) -> None:
    """Padded inputs included: fully blocked (pad) rows are uniform in both fidelities, in float64 too."""
    config = variant.config()
    official = build(config, torch.float64).eval()
    lean = to_lean(official)
    inputs = model_inputs(config, padded=True)
    assert any((x == 0).any() for x in inputs)
    with torch.no_grad():
        expected = outputs(official, inputs)
        torch.testing.assert_close(outputs(lean, inputs), expected, rtol=0, atol=1e-10)
        # Sanity: the lean model is not trivially equal to an unrelated one.
        other = build(config.replace(fidelity="lean"), torch.float64, seed=99).eval()
        assert (outputs(other, inputs) - expected).abs().max() > 1e-3


def test_to_lean_keeps_training_mode_and_rejects_lean() -> None:
    official = build(tiny_config(kind="encoder", ff_type="random")).train()
    lean = to_lean(official)
    assert lean.training
    state = lean_state_dict(official)
    assert not any(name.endswith("key_time") for name in state)
    assert all(state[n].shape[0] == 64 for n in state if n.endswith("contract.singular_values"))
    with pytest.raises(ValueError, match="official"):
        to_lean(lean)


def test_to_lean_keeps_dtype() -> None:
    official = build(tiny_config(kind="encoder"), torch.float64)
    lean = to_lean(official)
    assert all(p.dtype == torch.float64 for p in lean.parameters())


def _assert_float64_matches_float32(config: ModelConfig, ids: torch.Tensor) -> None:
    model = build(config).eval()
    double = build(config).eval()
    double.load_state_dict(model.state_dict())
    double = double.double()
    with torch.no_grad():
        torch.testing.assert_close(double(ids), model(ids).double(), rtol=0, atol=1e-5)


def test_float64_matches_float32_on_padded_rows() -> None:
    """The reference path: a fully blocked (pad) query row is uniform in float64 too, as the official -1e9 mask
    makes it in float32 (adding -1e9 in float64 used to leave softmax(S) there)."""
    config = tiny_config(kind="classifier", attention_impl="reference")
    (ids,) = model_inputs(config)
    assert (ids == 0).any()
    _assert_float64_matches_float32(config, ids)


@pytest.mark.parametrize("impl", ["factorised", "low_memory"])
def test_fast_paths_float64_matches_float32_on_padded_rows(impl: str) -> None:
    """The fast paths give fully blocked rows their uniform float32 value in every dtype."""
    config = tiny_config(kind="classifier", attention_impl=impl)
    (ids,) = model_inputs(config)
    assert (ids == 0).any()
    _assert_float64_matches_float32(config, ids)


def test_float64_matches_float32_without_padding() -> None:
    config = tiny_config(kind="classifier")
    _assert_float64_matches_float32(config, random_ids(3, 9, config.vocab_size, lengths=[9, 9, 9]))
