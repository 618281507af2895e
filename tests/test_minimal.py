"""Minimal Transformers (Bermeitinger et al. 2024, arXiv 2410.13732) as config values: ``ff_type="none"`` and
``attention="minimal"`` with its query-key (``qk_form``) and value-output (``vo_form``) forms.

Counts from the config equal the built models; cached decoding equals recomputation; the collapsed forms compute
exactly the separate model they are built from; symmetric logits are a Gram matrix; identity outputs are convex
combinations of the normalised inputs; dead parameters are exactly the ones that get no gradient; a few training
steps run.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from conftest import random_ids, tiny_config

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.bench.flops import flop_breakdown
from transevolve.config import apply_overrides
from transevolve.models import DecodeCache, EncoderDecoderModel
from transevolve.modules.feedforward import NoFeedForward
from transevolve.modules.masks import AttentionMasks
from transevolve.modules.minimal_attention import MinimalAttention, symmetric_factor_size
from transevolve.params import count_model_parameters, dead_parameter_masks, layer_parameters

QK_FORMS = ("separate", "collapsed", "symmetric")
VO_FORMS = ("separate", "collapsed", "identity")
FORMS = list(itertools.product(QK_FORMS, VO_FORMS))
FF_TYPES = ("full", "random", "none")


def _config(kind: str = "decoder", qk: str = "separate", vo: str = "separate", **overrides: object) -> ModelConfig:
    return tiny_config(kind=kind, attention="minimal", qk_form=qk, vo_form=vo, **overrides)


def _model(config: ModelConfig, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config).double().eval()


def _randomise_biases(model: torch.nn.Module, seed: int = 5) -> None:
    """Biases start at zero; give them values so that the tests exercise them."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))


def _outputs(model: torch.nn.Module, seed: int = 1) -> torch.Tensor:
    """The model's output on padded random inputs (every kind)."""
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(seed)
    if isinstance(model, EncoderDecoderModel):
        src = random_ids(3, 7, vocab, generator=generator)
        return model(src, random_ids(3, 6, vocab, start_id=1, generator=generator))
    return model(random_ids(3, 8, vocab, generator=generator))


# -- parameter counts ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["classifier", "decoder", "encoder_decoder"])
def test_counts_match_built_models(kind: str) -> None:
    """Every form x feed-forward type: the config's count equals the built model, part by part."""
    for (qk, vo), ff_type in itertools.product(FORMS, FF_TYPES):
        config = _config(kind, qk, vo, ff_type=ff_type)
        model = build_model(config)
        counted = count_parameters(config)
        assert counted.total == count_model_parameters(model), (qk, vo, ff_type)
        parts = {"embedding": 0, "encoder": 0, "decoder": 0, "head": 0}
        for name, parameter in model.named_parameters():
            top = name.split(".", 1)[0]
            parts["head" if top in ("pool_norm", "head") else top] += parameter.numel()
        assert counted.to_dict() == {**parts, "total": counted.total, "non_embedding": counted.non_embedding}
        if ff_type == "none":
            assert not any("feed_forward" in name for name, _ in model.named_parameters())


def test_no_feed_forward_with_every_attention_and_scheme() -> None:
    for attention, scheme in itertools.product(("softmax", "evolved", "minimal"),
                                               ("sequential", "parallel", "rk2", "rk2_gated", "rk4")):
        config = tiny_config(kind="decoder", attention=attention, ff_type="none", scheme=scheme)
        model = build_model(config)
        assert count_parameters(config).total == count_model_parameters(model), (attention, scheme)
        assert isinstance(model.decoder.blocks[0].layers[0].feed_forward, NoFeedForward)
        assert torch.isfinite(_outputs(model)).all()
        gate = 2 * config.depth * 2 * config.width if scheme == "rk2_gated" else 0        # the gate's w . [G1; G2]
        assert flop_breakdown(config, 16)["feed_forward"] == gate
        assert flop_breakdown(config.replace(ff_type="full"), 16)["feed_forward"] > gate


def test_layer_counts_per_form_one_head() -> None:
    """One head, width d: the paper's reductions (biases as documented in minimal_attention)."""
    d = 64
    norm = 2 * d
    expected_qk = {"separate": 2 * d * d + 2 * d, "collapsed": d * d + d, "symmetric": d * (d + 1) // 2 + d}
    expected_vo = {"separate": 2 * d * d + 2 * d, "collapsed": d * d + d, "identity": 0}
    for qk, vo in FORMS:
        config = _config("encoder", qk, vo, num_heads=1, ff_type="none")
        assert layer_parameters(config, cross=False) == expected_qk[qk] + expected_vo[vo] + norm
        layer = MinimalAttention(config)
        assert sum(p.numel() for p in layer.parameters()) == expected_qk[qk] + expected_vo[vo] + norm
    # Symmetric: N (N + 1) / 2 weights for one head; h heads of width w: a (d, w) trapezoid each.
    assert symmetric_factor_size(d, d) == d * (d + 1) // 2
    assert symmetric_factor_size(64, 16) == 16 * 17 // 2 + 48 * 16


def test_paper_figures() -> None:
    """6 encoder layers, width 64, FF x4 (the paper's MNIST setting): removing the MLP leaves about 1/3; the
    symmetric variant without MLP about 1/4 (the paper keeps a full W_Q, 3 N^2 of 12 N^2; one head here stores
    the Cholesky factor, N (N + 1) / 2, so 2.5 N^2); the minimum variant (collapsed Q/K, no V/O, one head) under
    10%."""
    def params(heads: int, qk: str = "separate", vo: str = "separate", ff_type: str = "full") -> int:
        config = ModelConfig(kind="classifier", num_classes=10, vocab_size=31, width=64, num_heads=heads,
                             layers_per_block=6, attention="minimal", qk_form=qk, vo_form=vo, ff_type=ff_type)
        return count_parameters(config).non_embedding

    for heads in (1, 4):
        full = params(heads)
        assert 0.32 < params(heads, ff_type="none") / full < 0.35           # paper: 101,470 / 287,686 = 0.35
    assert 0.23 < params(4, "symmetric", ff_type="none") / params(4) < 0.26       # paper: about 25%
    assert 0.20 < params(1, "symmetric", ff_type="none") / params(1) < 0.22       # 2.5 N^2 / 12 N^2
    full = params(1)
    assert 0.16 < params(1, "collapsed", "collapsed", "none") / full < 0.18     # attention 4 N^2 -> 2 N^2
    assert params(1, "collapsed", "identity", "none") / full < 0.10             # paper: under 10%
    # Separate forms are exactly softmax attention (same count and cost).
    minimal = ModelConfig(kind="encoder_decoder", width=64, num_heads=4, vocab_size=31, attention="minimal")
    softmax = minimal.replace(attention="softmax")
    assert count_parameters(minimal) == count_parameters(softmax)
    assert flop_breakdown(minimal, 32) == flop_breakdown(softmax, 32)


def test_flops_per_form() -> None:
    d, n = 64, 32
    one = _config("encoder", "collapsed", "collapsed", num_heads=1, ff_type="none", layers_per_block=1,
                  num_blocks=1)
    costs = flop_breakdown(one, n)
    assert costs["projections"] == 2 * (2 * d * d) and costs["attention_n2"] == 2 * (2 * n * d)
    assert costs["feed_forward"] == 0
    minimum = flop_breakdown(one.replace(vo_form="identity"), n)
    assert minimum["projections"] == 2 * d * d and minimum["attention_n2"] == 2 * (2 * n * d)
    heads = flop_breakdown(one.replace(num_heads=4), n)                # every head at full width
    assert heads["projections"] == 2 * (8 * d * d) and heads["attention_n2"] == 2 * (8 * n * d)
    symmetric = flop_breakdown(one.replace(qk_form="symmetric", vo_form="separate"), n)
    assert symmetric["projections"] == 2 * (3 * d * d) and symmetric["attention_n2"] == 2 * (2 * n * d)


# -- config ----------------------------------------------------------------------------------------------------
def test_config_rejects_combinations_that_make_no_sense() -> None:
    with pytest.raises(ValueError, match="attention='minimal' only"):
        tiny_config(attention="softmax", qk_form="collapsed")
    with pytest.raises(ValueError, match="qk_form='diagonal' is not one of"):
        _config(qk="diagonal")
    with pytest.raises(ValueError, match="vo_form='none' is not one of"):
        _config(vo="none")
    with pytest.raises(ValueError, match="exactly scheme='sequential'"):
        tiny_config(ff_type="none", scheme="macaron")
    with pytest.raises(ValueError, match="ff_type='none' has none"):
        tiny_config(ff_type="none", scheme="macaron", macaron_half_width=True)
    config = apply_overrides(tiny_config(), ["ff_type=none", "attention=minimal", "qk_form=symmetric"])
    assert (config.ff_type, config.attention, config.qk_form) == ("none", "minimal", "symmetric")
    assert ModelConfig.from_dict(config.to_dict()) == config


# -- exactness -------------------------------------------------------------------------------------------------
def _attention_pairs(a: torch.nn.Module, b: torch.nn.Module) -> list[tuple[MinimalAttention, MinimalAttention]]:
    left = [m for m in a.modules() if isinstance(m, MinimalAttention)]
    right = [m for m in b.modules() if isinstance(m, MinimalAttention)]
    assert len(left) == len(right) > 0
    return list(zip(left, right, strict=True))


def _copy_shared(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Every parameter/buffer of ``target`` that ``source`` has under the same name."""
    state = source.state_dict()
    with torch.no_grad():
        for name, tensor in target.state_dict().items():
            if name in state:
                tensor.copy_(state[name])


@pytest.mark.parametrize("heads", [1, 2])
@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_collapsed_equals_separate(kind: str, heads: int) -> None:
    """``W_QK^h = W_Q^h W_K^hT``, ``u^h = b_Q^h W_K^hT``, ``W_VO^h = W_V^h W_O^h``, ``b = b_V W_O + b_O``: the
    collapsed model computes the separate one exactly (one head: the paper's reduction; several: per head)."""
    separate = _model(_config(kind, num_heads=heads))
    _randomise_biases(separate)
    collapsed = _model(_config(kind, "collapsed", "collapsed", num_heads=heads), seed=1)
    _copy_shared(separate, collapsed)
    d, w = 64, 64 // heads
    with torch.no_grad():
        for s, c in _attention_pairs(separate, collapsed):
            for h in range(heads):
                rows = slice(h * w, (h + 1) * w)
                wq, wk = s.query_proj.weight[rows], s.key_proj.weight[rows]         # (w, d) Linear weights
                c.qk_proj.weight[h * d:(h + 1) * d] = wk.T @ wq
                c.qk_proj.bias[h * d:(h + 1) * d] = wk.T @ s.query_proj.bias[rows]
                c.vo_proj.weight[:, h * d:(h + 1) * d] = s.output_proj.weight[:, rows] @ s.value_proj.weight[rows]
            c.vo_proj.bias.copy_(s.output_proj.weight @ s.value_proj.bias + s.output_proj.bias)
    expected = _outputs(separate)
    torch.testing.assert_close(_outputs(collapsed), expected, rtol=1e-10, atol=1e-10)
    # And the forms are not all the same function: a perturbed W_QK changes the output.
    with torch.no_grad():
        weight = _attention_pairs(separate, collapsed)[0][1].qk_proj.weight
        weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(0), dtype=weight.dtype))
    assert not torch.allclose(_outputs(collapsed), expected, atol=1e-6)


def test_symmetric_is_tied_separate_without_loss_of_generality() -> None:
    """Any tied ``W_K = W_Q`` (and ``b_K = b_Q``) equals a lower-trapezoidal factor: ``W^T = Q R``, ``T = R^T``,
    bias ``c Q``."""
    heads, w = 2, 32
    tied = _model(_config("encoder_decoder", num_heads=heads))
    _randomise_biases(tied)
    with torch.no_grad():
        for module in tied.modules():
            if isinstance(module, MinimalAttention):
                module.key_proj.weight.copy_(module.query_proj.weight)
                module.key_proj.bias.copy_(module.query_proj.bias)
    symmetric = _model(_config("encoder_decoder", "symmetric", num_heads=heads), seed=2)
    _copy_shared(tied, symmetric)
    with torch.no_grad():
        for t, s in _attention_pairs(tied, symmetric):
            for h in range(heads):
                rows = slice(h * w, (h + 1) * w)
                q, r = torch.linalg.qr(t.query_proj.weight[rows])             # (w, d) = (w, w) (w, d)
                factor = r.T                                                  # (d, w), lower-trapezoidal
                assert torch.all(factor.triu(1) == 0)
                s.qk_factor[h] = factor[s.factor_rows, s.factor_cols]
                s.qk_bias[rows] = t.query_proj.bias[rows] @ q
    torch.testing.assert_close(_outputs(symmetric), _outputs(tied), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("heads", [1, 4])
def test_symmetric_logits_are_a_gram_matrix(heads: int) -> None:
    config = _config("encoder", "symmetric", num_heads=heads)
    torch.manual_seed(0)
    layer = MinimalAttention(config).double()
    _randomise_biases(layer)
    x = torch.randn(2, 9, 64, dtype=torch.float64)
    logits = layer.logits(x, x)                                               # (b, h, n, n)
    assert logits.shape == (2, heads, 9, 9)
    torch.testing.assert_close(logits, logits.transpose(-1, -2), rtol=0, atol=1e-12)
    assert torch.linalg.eigvalsh(logits).min() > -1e-10                       # positive semi-definite
    separate = MinimalAttention(config.replace(qk_form="separate")).double()
    assert not torch.allclose(separate.logits(x, x), separate.logits(x, x).transpose(-1, -2))


@pytest.mark.parametrize("heads", [1, 2])
def test_identity_outputs_are_convex_combinations(heads: int) -> None:
    config = _config("encoder", "separate", "identity", num_heads=heads)
    torch.manual_seed(0)
    layer = MinimalAttention(config).double()
    _randomise_biases(layer)
    x = torch.randn(2, 7, 64, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    update, weights = layer(x, x, AttentionMasks(pad, pad, causal=False), return_weights=True)
    assert weights is not None and weights.shape == (2, heads, 7, 7)
    assert bool((weights >= 0).all())
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, heads, 7, dtype=torch.float64))
    normed = layer.norm(x).view(2, 7, heads, 64 // heads).transpose(1, 2)      # each head's slice
    mixed = (weights @ normed).transpose(1, 2).reshape(2, 7, 64)
    torch.testing.assert_close(update, mixed, rtol=0, atol=1e-12)
    if heads == 1:      # each row lies in the convex hull of the normalised inputs: inside their bounding box
        lo, hi = layer.norm(x).min(1, keepdim=True).values, layer.norm(x).max(1, keepdim=True).values
        assert bool(((update >= lo - 1e-12) & (update <= hi + 1e-12)).all())
    fast, _ = layer(x, x, AttentionMasks(pad, pad, causal=False))
    torch.testing.assert_close(fast, update, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("qk", "vo"), FORMS, ids=[f"{qk}-{vo}" for qk, vo in FORMS])
def test_fast_path_equals_explicit_path(qk: str, vo: str) -> None:
    """The fused ``scaled_dot_product_attention`` path equals the explicit one (padding, causal, cross)."""
    config = _config("encoder_decoder", qk, vo)
    torch.manual_seed(0)
    x, memory = torch.randn(2, 6, 64, dtype=torch.float64), torch.randn(2, 5, 64, dtype=torch.float64)
    pad_x, pad_m = torch.zeros(2, 6, dtype=torch.bool), torch.zeros(2, 5, dtype=torch.bool)
    pad_x[1, 4:], pad_m[0, 3:] = True, True
    for cross, causal in ((False, False), (False, True), (True, False)):
        layer = MinimalAttention(config, cross=cross).double()
        _randomise_biases(layer)
        source, masks = (memory, AttentionMasks(pad_x, pad_m, False)) if cross else \
            (x, AttentionMasks(pad_x, pad_x, causal))
        fast, _ = layer(x, source, masks)
        explicit, _ = layer(x, source, masks, return_weights=True)
        torch.testing.assert_close(fast, explicit, rtol=0, atol=1e-12)


# -- decoding --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_decoding_equals_recomputation(kind: str) -> None:
    """Teacher forcing through the cache in chunks of 3, 1, 4 and 2 positions equals one full pass, every form
    (and a two-stage scheme without a feed-forward)."""
    cases = [(qk, vo, "full", "sequential") for qk, vo in FORMS] + [("symmetric", "collapsed", "none", "rk2")]
    for qk, vo, ff_type, scheme in cases:
        model = _model(_config(kind, qk, vo, ff_type=ff_type, scheme=scheme, num_blocks=1))
        _randomise_biases(model)
        vocab = model.config.vocab_size
        tokens = random_ids(2, 10, vocab, lengths=[10, 10], start_id=1)
        cache = DecodeCache()
        pieces, start = [], 0
        with torch.no_grad():
            if isinstance(model, EncoderDecoderModel):
                src = random_ids(2, 7, vocab)
                memory = model.encode(src)
                full = model.decode(tokens, memory, src)
                for size in (3, 1, 4, 2):
                    pieces.append(model.decode_step(tokens[:, start:start + size], memory, src, cache))
                    start += size
            else:
                full = model(tokens)
                for size in (3, 1, 4, 2):
                    pieces.append(model.decode_step(tokens[:, start:start + size], cache))
                    start += size
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-10, msg=f"{qk}/{vo}")
        names = {name.rsplit(".", 1)[-1] for name in cache.store if ".self." in name}
        expected = ({"keys"} if qk != "collapsed" else set()) | ({"values"} if vo == "separate" else set()) | \
            ({"inputs"} if qk == "collapsed" or vo != "separate" else set())
        assert names == expected, (qk, vo, names)


# -- dead parameters -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("qk", QK_FORMS)
def test_dead_parameters_get_no_gradient(qk: str) -> None:
    model = _model(_config("encoder_decoder", qk, "collapsed" if qk == "separate" else "separate",
                           ff_type="none")).train()
    _randomise_biases(model)
    out = _outputs(model)
    weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    (out * weights).sum().backward()
    dead = dead_parameter_masks(model)
    attention = {name for name in dead if ".self_attention." in name or ".cross_attention." in name}
    if qk == "separate":
        assert attention and all(name.endswith("key_proj.bias") for name in attention)
    else:
        assert not attention
    named = dict(model.named_parameters())
    for name, mask in dead.items():
        grad = named[name].grad
        assert grad is None or float(grad[mask].abs().max()) < 1e-12, name
    for name, parameter in named.items():                # everything else learns
        if name not in dead and parameter.grad is not None and parameter.numel() > 1:
            assert float(parameter.grad.abs().max()) > 0, name


# -- training --------------------------------------------------------------------------------------------------
def test_training_a_minimal_model(tmp_path: Path) -> None:
    from transevolve.train import RunConfig, TaskConfig, TrainConfig, train

    task = TaskConfig(name="max_digit", options={"train_size": 128, "validation_size": 32, "test_size": 32})
    model = {"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.1, "max_length": 16,
             "attention": "minimal", "qk_form": "collapsed", "vo_form": "identity", "ff_type": "none"}
    run = RunConfig(task=task, model=model, train=TrainConfig(max_steps=6, batch_size=16, eval_every=3,
                                                              log_every=2, warmup_steps=2))
    result = train(run, tmp_path / "run", quiet=True)
    assert result.steps == 6 and result.parameters == count_parameters(result.model_config).total
    assert result.model_config.qk_form == "collapsed" and result.model_config.ff_type == "none"
    assert 0.0 <= result.test["accuracy"] <= 1.0
    assert all(torch.isfinite(torch.tensor(v)) for v in result.validation.values())
