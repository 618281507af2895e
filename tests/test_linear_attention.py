"""Linear Transformer attention (``attention="linear"``, Katharopoulos et al. 2020, arXiv 2006.16236).

The fast paths (global sums; chunked prefix sums) equal the explicit kernel matrix (outputs and gradients, padding,
batch > 1, lengths not divisible by the chunk, cross-attention); cached decoding from the constant-size state equals
recomputation; every model kind and scheme runs; counts from the config equal the built models and counted
matmuls; bad configs fail with clear messages.

Tolerances: float64 ``atol = rtol = 1e-12``; float32 ``atol = rtol = 2e-5`` (outputs) and ``1e-4`` (gradients).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.bench.flops import flop_breakdown
from transevolve.config import apply_overrides
from transevolve.models import DecodeCache, EncoderDecoderModel
from transevolve.modules.linear_attention import (
    CHUNK,
    EPS,
    LinearAttention,
    linear_causal,
    linear_global,
    linear_reference,
)
from transevolve.modules.masks import AttentionMasks
from transevolve.params import count_model_parameters

SMALL: dict[str, Any] = {"vocab_size": 23, "width": 16, "num_heads": 2, "time_dim": 8, "ff_multiplier": 2,
                         "layers_per_block": 2, "num_blocks": 1, "dropout": 0.0, "max_length": 160,
                         "attention": "linear"}


def _config(kind: str = "decoder", **overrides: Any) -> ModelConfig:
    values = {**SMALL, "kind": kind, **overrides}
    if kind == "classifier":
        values.setdefault("num_classes", 3)
    return ModelConfig(**values)


# -- the formula --------------------------------------------------------------------------------------------------
def test_reference_is_the_papers_formula() -> None:
    """``out_i = phi(q_i) . sum_j phi(k_j) v_j^T / (phi(q_i) . sum_j phi(k_j) + eps)``, written out row by row, with
    ``phi = elu + 1``, no ``1/sqrt(e)``, padded keys left out, and ``j <= i`` when causal."""
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 6, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    real = torch.tensor([[True] * 6, [True] * 4 + [False] * 2])
    fq, fk = F.elu(q) + 1, (F.elu(k) + 1) * real[:, None, :, None]
    for causal in (False, True):
        out, weights = linear_reference(fq, fk, v, causal)
        for b, h, i in itertools.product(range(2), range(2), range(6)):
            keys = [j for j in range(6) if real[b, j] and (j <= i or not causal)]
            total = sum((torch.outer(fk[b, h, j], v[b, h, j]) for j in keys), torch.zeros(4, 4, dtype=q.dtype))
            norm = sum((fk[b, h, j] for j in keys), torch.zeros(4, dtype=q.dtype))
            expected = fq[b, h, i] @ total / (fq[b, h, i] @ norm + EPS)
            torch.testing.assert_close(out[b, h, i], expected, rtol=1e-12, atol=1e-12)
        assert bool((weights >= 0).all())
        assert bool((weights[1, :, :, 4:] == 0).all())                    # padded keys
        if causal:
            assert bool((weights.triu(1) == 0).all())


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
def test_fast_functions_equal_reference(causal: bool) -> None:
    """Chunk lengths 1, 3, 7 and the default over lengths 1, 5, 64, 70 and 130 (not multiples of the chunk); the
    causal path continued from a state equals one pass over the concatenation."""
    generator = torch.Generator().manual_seed(1)
    for n in (1, 5, 64, 70, 130):
        q, k, v = (torch.randn(2, 3, n, 4, generator=generator, dtype=torch.float64) for _ in range(3))
        fq, fk = F.elu(q) + 1, F.elu(k) + 1
        expected, _ = linear_reference(fq, fk, v, causal)
        if not causal:
            torch.testing.assert_close(linear_global(fq, fk, v), expected, rtol=1e-12, atol=1e-12)
            continue
        for chunk in (1, 3, 7, CHUNK):
            got, (total, norm) = linear_causal(fq, fk, v, chunk=chunk)
            torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(total, fk.transpose(-1, -2) @ v, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(norm, fk.sum(-2), rtol=1e-12, atol=1e-12)
        cut = n // 2
        state = linear_causal(fq[:, :, :cut], fk[:, :, :cut], v[:, :, :cut])[1] if cut else None
        second, _ = linear_causal(fq[:, :, cut:], fk[:, :, cut:], v[:, :, cut:], state, chunk=5)
        torch.testing.assert_close(second, expected[:, :, cut:], rtol=1e-12, atol=1e-12)


def _layer(config: ModelConfig, dtype: torch.dtype, cross: bool = False) -> LinearAttention:
    torch.manual_seed(0)
    layer = LinearAttention(config, cross=cross).to(dtype)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return layer


def _compare(config: ModelConfig, dtype: torch.dtype, n: int, causal: bool, cross: bool,
             tolerance: tuple[float, float]) -> None:
    layer = _layer(config, dtype, cross)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, n, config.width, generator=generator, dtype=dtype)
    s = n + 2 if cross else n
    memory = torch.randn(3, s, config.width, generator=generator, dtype=dtype)
    query_pad = torch.zeros(3, n, dtype=torch.bool)
    query_pad[1, n - 3:] = True
    key_pad = torch.zeros(3, s, dtype=torch.bool)
    key_pad[1, s - 3:] = True
    key_pad[2, :2] = True                         # leading pads: early causal rows see no key (output 0)
    masks = AttentionMasks(query_pad, key_pad if cross else key_pad[:, :n], causal)
    probe = torch.randn(3, n, config.width, generator=generator, dtype=dtype)
    results = []
    for impl in ("auto", "reference"):
        layer.attention_impl = impl
        layer.zero_grad()
        inputs = [x.clone().requires_grad_(True), memory.clone().requires_grad_(True)]
        out, _ = layer(inputs[0], inputs[1] if cross else inputs[0], masks)
        (out * probe).sum().backward()
        grads = [g.grad for g in (inputs if cross else inputs[:1])]
        results.append((out.detach(), [*grads, *(p.grad.clone() for p in layer.parameters() if p.grad is not None)]))
    (fast, fast_grads), (reference, reference_grads) = results
    torch.testing.assert_close(fast, reference, rtol=tolerance[0], atol=tolerance[0])
    assert len(fast_grads) == len(reference_grads) > len(list(layer.parameters()))
    for a, b in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=tolerance[1], atol=tolerance[1])


@pytest.mark.parametrize(("causal", "cross"), [(True, False), (False, False), (False, True)],
                         ids=["causal", "bidirectional", "cross"])
def test_layer_fast_path_equals_reference_float64(causal: bool, cross: bool) -> None:
    """The layer on padded batches of 3, lengths 11 and 70 (two chunks, not a multiple of 64)."""
    for n, feature_map in ((11, "elu"), (70, "elu"), (11, "relu")):
        _compare(_config(linear_feature_map=feature_map), torch.float64, n, causal, cross, (1e-12, 1e-12))


def test_layer_fast_path_equals_reference_float32() -> None:
    for causal, cross in ((True, False), (False, False), (False, True)):
        _compare(_config(), torch.float32, 70, causal, cross, (2e-5, 1e-4))


def test_padded_keys_do_not_matter() -> None:
    """Padded keys are zeroed in ``phi(K)``: whatever the memory holds there, the outputs are the same."""
    layer = _layer(_config(), torch.float64, cross=True)
    x, memory = torch.randn(2, 5, 16, dtype=torch.float64), torch.randn(2, 7, 16, dtype=torch.float64)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[:, 4:] = True
    masks = AttentionMasks(torch.zeros(2, 5, dtype=torch.bool), pad, causal=False)
    changed = memory.clone()
    changed[:, 4:] = 100 * torch.randn(2, 3, 16, dtype=torch.float64)
    torch.testing.assert_close(layer(x, changed, masks)[0], layer(x, memory, masks)[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x, memory[:, :4], AttentionMasks(masks.query_pad, pad[:, :4], False))[0],
                               layer(x, memory, masks)[0], rtol=1e-12, atol=1e-12)


def test_fast_path_stores_no_n_by_n_tensor() -> None:
    """n = 1024: nothing the fast paths save for backward has ``h n^2 / 8`` entries; the reference does."""
    config = _config(max_length=1024)
    n, h = 1024, config.num_heads
    layer = LinearAttention(config)
    for causal in (True, False):
        largest = {}
        for impl in ("auto", "reference"):
            layer.attention_impl = impl
            sizes: list[int] = []

            def pack(tensor: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
                sizes.append(tensor.numel())
                return tensor

            x = torch.randn(1, n, config.width, requires_grad=True)
            pad = torch.zeros(1, n, dtype=torch.bool)
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
                out, _ = layer(x, x, AttentionMasks(pad, pad, causal))
            out.sum().backward()
            largest[impl] = max(sizes)
        assert largest["auto"] < h * n * n // 8 <= largest["reference"], (causal, largest)


# -- the model ----------------------------------------------------------------------------------------------------
def _model(config: ModelConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(config).double().eval()


def _inputs(config: ModelConfig, seed: int = 1) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    if config.kind == "encoder_decoder":
        return random_ids(3, 11, config.vocab_size, generator=generator), \
            random_ids(3, 9, config.vocab_size, start_id=1, generator=generator)
    return (random_ids(3, 11, config.vocab_size, start_id=1 if config.kind == "decoder" else None,
                       generator=generator),)


@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder", "classifier", "decoder"])
def test_every_model_kind_fast_equals_reference(kind: str) -> None:
    config = _config(kind)
    model = _model(config)
    inputs = _inputs(config)
    fast = model(*inputs)
    model.train()
    fast.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    torch.testing.assert_close(fast, _model(config.replace(attention_impl="reference"))(*inputs),
                               rtol=1e-12, atol=1e-12)
    _, intermediates = model(*inputs, return_intermediates=True)          # weights: the normalised kernel
    trace = intermediates.decoder if config.has_decoder else intermediates.encoder
    assert trace is not None
    weights = next(iter(trace.self_attention.values()))
    assert weights is not None and bool((weights >= 0).all()) and bool((weights.sum(-1) <= 1).all())
    if config.has_decoder:
        assert bool((weights.triu(1) == 0).all())


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_decoding_equals_recomputation_with_a_constant_state(kind: str) -> None:
    """Teacher forcing through the cache in chunks of 3, 1, 4 and 4 positions equals one full pass at every position
    (a sequence that ended pads the rest); the cache holds the same few fixed-size tensors after every step."""
    for scheme in ("sequential", "rk4"):
        config = _config(kind, scheme=scheme)
        model = _model(config)
        vocab = config.vocab_size
        tokens = random_ids(2, 12, vocab, lengths=[12, 8], start_id=1)
        cache = DecodeCache()
        pieces, start, shapes = [], 0, []
        with torch.no_grad():
            if isinstance(model, EncoderDecoderModel):
                src = random_ids(2, 7, vocab)
                memory = model.encode(src)
                full = model.decode(tokens, memory, src)
            else:
                full = model(tokens)
            for size in (3, 1, 4, 4):
                piece = tokens[:, start:start + size]
                pieces.append(model.decode_step(piece, memory, src, cache) if isinstance(model, EncoderDecoderModel)
                              else model.decode_step(piece, cache))
                start += size
                shapes.append({name: tuple(tensor.shape) for name, tensor in cache.store.items()})
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-10, msg=scheme)
        assert all(shape == shapes[0] for shape in shapes)                  # constant size, whatever the length
        e = config.head_width
        for name, shape in shapes[0].items():
            assert name.rsplit(".", 1)[-1] in ("state", "normaliser"), name
            assert shape == ((2, 2, e, e) if name.endswith("state") else (2, 2, e)), (name, shape)
        assert not cache.store.buffers                                      # nothing grows


@pytest.mark.parametrize("scheme", ["sequential", "parallel", "macaron", "rk2", "rk2_gated", "rk4", "adaptive"])
def test_every_scheme_runs(scheme: str) -> None:
    kinds = ("classifier",) if scheme == "adaptive" else ("decoder", "classifier")
    for kind, share in itertools.product(kinds, (1, 2)):
        config = _config(kind, scheme=scheme, share_layers=share)
        model = _model(config)
        inputs = _inputs(config)
        out = model(*inputs)
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, _model(config.replace(attention_impl="reference"))(*inputs),
                                   rtol=1e-9, atol=1e-9)
        out.sum().backward()
        assert count_parameters(config).total == count_model_parameters(model)


# -- counts -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder", "classifier", "decoder"])
def test_counts_match_built_models(kind: str) -> None:
    for feature_map in ("elu", "relu"):
        config = _config(kind, linear_feature_map=feature_map)
        assert count_parameters(config).total == sum(p.numel() for p in build_model(config).parameters())
    softmax = tiny_config(**{**SMALL, "kind": kind, "attention": "softmax", "num_classes": config.num_classes})
    assert count_parameters(config) == count_parameters(softmax)


def test_fast_macs_do_not_grow_with_length() -> None:
    d, e = 16, 8
    encoder = _config("encoder", layers_per_block=1)
    for n in (16, 1024):
        assert flop_breakdown(encoder, n, "fast")["attention_n2"] == 2 * (2 * d * e + d)
        assert flop_breakdown(encoder, n, "reference")["attention_n2"] == 2 * 2 * n * d
    decoder = _config("decoder", layers_per_block=1)
    assert flop_breakdown(decoder, 1024, "fast")["attention_n2"] == 2 * (2 * d * e + d + 2 * CHUNK * d)


@pytest.mark.parametrize(("kind", "impl", "n"), [("encoder_decoder", "auto", 13), ("encoder_decoder", "auto", 70),
                                                 ("classifier", "auto", 13), ("decoder", "reference", 13)])
def test_macs_equal_counted_matmuls(kind: str, impl: str, n: int) -> None:
    """The registry's count times the tokens equals the matmul FLOPs of a forward pass (encoder-decoder: encoder
    self, decoder self and cross, source and target of length n; n = 70: two chunks, the second padded)."""
    config = _config(kind, attention_impl=impl)
    model = build_model(config).eval()
    b = 2
    ids = random_ids(b, n, config.vocab_size, lengths=[n] * b)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids, ids) if kind == "encoder_decoder" else model(ids)
    analytic = sum(flop_breakdown(config, n, "reference" if impl == "reference" else "fast").values()) * b * n
    assert float(counter.get_total_flops()) == pytest.approx(analytic, rel=1e-12)


# -- config -------------------------------------------------------------------------------------------------------
def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"linear_feature_map='softplus' is not one of \['elu', 'relu'\]"):
        _config(linear_feature_map="softplus")
    with pytest.raises(ValueError, match=r"linear_feature_map='relu': the linear_\* fields configure "
                                         r"attention='linear' only \(attention is 'softmax'\)"):
        _config(attention="softmax", linear_feature_map="relu")
    with pytest.raises(ValueError, match="fields configure attention='sparse' only"):
        _config(sparse_block_size=8)
    config = apply_overrides(tiny_config(), ["attention=linear", "linear_feature_map=relu"])
    assert (config.attention, config.linear_feature_map) == ("linear", "relu")
    assert ModelConfig.from_dict(config.to_dict()) == config
