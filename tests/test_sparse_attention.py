"""Sparse Transformer attention (``attention="sparse"``, Child et al. 2019, arXiv 1904.10509).

The pattern sets are the paper's; the fast block path equals the dense masked reference (outputs and gradients,
lengths not divisible by the block, padding, batch > 1, every combine mode, causal and bidirectional) and stores no
n x n tensor; cached decoding equals recomputation; every model kind and scheme runs; counts from the config equal
the built models and counted matmuls; bad configs fail with clear messages.

Tolerances: float64 ``atol = rtol = 1e-12``; float32 ``atol = rtol = 2e-5`` (outputs) and ``1e-4`` (gradients).
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import torch
from conftest import random_ids, tiny_config
from torch.utils.flop_counter import FlopCounterMode

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.bench.flops import flop_breakdown
from transevolve.config import apply_overrides
from transevolve.models import DecodeCache, EncoderDecoderModel
from transevolve.modules.masks import AttentionMasks
from transevolve.modules.softmax_attention import SoftmaxAttention
from transevolve.modules.sparse_attention import SparseAttention, SparsePattern, sparse_fast, sparse_reference
from transevolve.params import count_model_parameters

SMALL: dict[str, Any] = {"vocab_size": 23, "width": 16, "num_heads": 2, "time_dim": 8, "ff_multiplier": 2,
                         "layers_per_block": 2, "num_blocks": 1, "dropout": 0.0, "max_length": 40,
                         "attention": "sparse", "sparse_block_size": 4}
PATTERNS = [("strided", {}), ("fixed", {"sparse_summary": 2})]
COMBINES = ["merged", "heads", "interleaved"]


def _config(kind: str = "decoder", pattern: str = "strided", **overrides: Any) -> ModelConfig:
    values = {**SMALL, "kind": kind, "sparse_pattern": pattern, **dict(PATTERNS)[pattern], **overrides}
    if kind == "classifier":
        values.setdefault("num_classes", 3)
    return ModelConfig(**values)


def _members(pattern: SparsePattern, i: int, n: int, causal: bool, part: str = "merged") -> set[int]:
    row = pattern.contains(torch.tensor(i), torch.arange(n), causal, part)   # type: ignore[arg-type]
    return set(torch.nonzero(row).flatten().tolist())


# -- the sets ------------------------------------------------------------------------------------------------------
def test_pattern_sets_are_the_papers() -> None:
    """Strided l = 3: the previous 3 positions and every 3rd back; fixed l = 4, c = 1: the block and the last
    position of every block. Bidirectional: the same sets without ``j <= i``."""
    strided = SparsePattern("strided", 3, 4)
    assert _members(strided, 7, 12, causal=True) == {5, 6, 7} | {1, 4, 7}
    assert _members(strided, 7, 12, causal=True, part="first") == {5, 6, 7}
    assert _members(strided, 7, 12, causal=True, part="second") == {1, 4, 7}
    assert _members(strided, 7, 12, causal=False) == {5, 6, 7, 8, 9} | {1, 4, 7, 10}
    fixed = SparsePattern("fixed", 4, 1)
    assert _members(fixed, 6, 12, causal=True) == {4, 5, 6} | {3}
    assert _members(fixed, 6, 12, causal=False) == {4, 5, 6, 7} | {3, 7, 11}
    # A2 of ``fixed`` used alone also holds the query (the first block's rows would otherwise be empty).
    assert _members(fixed, 1, 12, causal=True, part="second") == {1}
    assert _members(SparsePattern("fixed", 4, 2), 9, 12, causal=True, part="second") == {2, 3, 6, 7, 9}
    for i in range(12):      # every set holds the query itself
        for pattern, causal, part in itertools.product((strided, fixed), (True, False), ("merged", "first", "second")):
            assert i in _members(pattern, i, 12, causal, part)


# -- fast path == reference -----------------------------------------------------------------------------------------
def _layer_pair(config: ModelConfig, dtype: torch.dtype, times: tuple[float, ...] = (0.0,)) -> SparseAttention:
    torch.manual_seed(0)
    layer = SparseAttention(config, times).to(dtype)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():                         # non-zero biases, so that they are exercised
        for name, parameter in layer.named_parameters():
            if name.endswith("bias"):
                parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=dtype))
    return layer


def _run(layer: SparseAttention, impl: str, x: torch.Tensor, masks: AttentionMasks, probe: torch.Tensor
         ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    layer.attention_impl = impl
    layer.zero_grad()
    x = x.detach().requires_grad_(True)
    out, _ = layer(x, x, masks)
    (out * probe).sum().backward()
    assert x.grad is not None
    return out.detach(), [x.grad, *(p.grad.clone() for p in layer.parameters() if p.grad is not None)]


def _compare(config: ModelConfig, dtype: torch.dtype, n: int, causal: bool, tolerance: tuple[float, float],
             times: tuple[float, ...] = (0.0,)) -> None:
    layer = _layer_pair(config, dtype, times)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, n, config.width, generator=generator, dtype=dtype)
    pad = torch.zeros(3, n, dtype=torch.bool)
    pad[1, n - 3:] = True                         # trailing padding
    pad[2, : 2] = True                            # leading padding: padded queries whose sets may hold only pads
    probe = torch.randn(3, n, config.width, generator=generator, dtype=dtype)
    masks = AttentionMasks(pad, pad, causal)
    fast, fast_grads = _run(layer, "auto", x, masks, probe)
    reference, reference_grads = _run(layer, "reference", x, masks, probe)
    output_tol, grad_tol = tolerance
    torch.testing.assert_close(fast, reference, rtol=output_tol, atol=output_tol)
    assert len(fast_grads) == len(reference_grads) == 1 + len(list(layer.parameters()))
    for a, b in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=grad_tol, atol=grad_tol)


@pytest.mark.parametrize("causal", [True, False], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("combine", COMBINES)
@pytest.mark.parametrize("pattern", [p for p, _ in PATTERNS])
def test_fast_path_equals_reference_float64(pattern: str, combine: str, causal: bool) -> None:
    """Lengths 13 (not a multiple of l = 4), 4 (one block) and 1; padding; batch 3; interleaved: both sets."""
    config = _config("encoder", pattern, sparse_combine=combine)
    for n in (13, 4, 1):
        for times in ((0.0,), (1.0,)) if combine == "interleaved" else ((0.0,),):
            _compare(config, torch.float64, n, causal, (1e-12, 1e-12), times)


def test_fast_path_equals_reference_float32() -> None:
    for pattern, causal in itertools.product(("strided", "fixed"), (True, False)):
        _compare(_config("encoder", pattern, sparse_block_size=5), torch.float32, 23, causal, (2e-5, 1e-4))


@pytest.mark.parametrize("pattern", ["strided", "fixed"])
def test_fast_functions_over_block_sizes(pattern: str) -> None:
    """The functions themselves over block sizes (l = 1, l = n, l > n, c = l) and lengths."""
    generator = torch.Generator().manual_seed(2)
    for (block, summary), n, causal, part in itertools.product(((1, 1), (3, 1), (5, 5), (8, 3)), (1, 5, 11),
                                                               (True, False), ("merged", "first", "second")):
        sparse = SparsePattern(pattern, block, summary)
        q, k, v = (torch.randn(2, 2, n, 4, generator=generator, dtype=torch.float64) for _ in range(3))
        pad = torch.zeros(2, n, dtype=torch.bool)
        pad[1, n // 2 + 1:] = True
        expected, weights = sparse_reference(q, k, v, pad, sparse, [(part, 2)], causal)   # type: ignore[list-item]
        got = sparse_fast(q, k, v, pad, sparse, causal, part)                            # type: ignore[arg-type]
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        rows = torch.arange(n)
        outside = ~sparse.contains(rows[:, None], rows[None, :], causal, part)           # type: ignore[arg-type]
        assert bool((weights[:, :, outside] == 0).all())


def test_fast_path_stores_no_n_by_n_tensor() -> None:
    """n = 1024, l = 32: nothing the fast path saves for backward has ``h n^2 / 8`` entries (it computes 96 keys per
    query); the reference does."""
    config = _config("decoder", sparse_block_size=32, max_length=1024)
    n, h = 1024, config.num_heads
    for pattern in ("strided", "fixed"):
        layer = SparseAttention(config.replace(sparse_pattern=pattern, sparse_summary=2 if pattern == "fixed" else 4))
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
                out, _ = layer(x, x, AttentionMasks(pad, pad, causal=True))
            out.sum().backward()
            largest[impl] = max(sizes)
        assert largest["auto"] < h * n * n // 8 <= largest["reference"], (pattern, largest)


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
    """Whole models on padded batches (causal decoders, bidirectional encoders, dense cross-attention)."""
    for pattern, combine in (("strided", "merged"), ("fixed", "heads")):
        config = _config(kind, pattern, sparse_combine=combine)
        model = _model(config)
        inputs = _inputs(config)
        fast = model(*inputs)
        model.train()
        fast.sum().backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        reference = _model(config.replace(attention_impl="reference"))(*inputs)
        torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-12)
        layer = next(m for m in model.modules() if isinstance(m, SparseAttention))
        assert layer.pattern == SparsePattern(pattern, 4, config.sparse_summary)
    if kind == "encoder_decoder":                 # cross-attention is dense softmax over the memory
        assert isinstance(model.decoder.blocks[0].layers[0].cross_attention, SoftmaxAttention)
        assert isinstance(model.decoder.blocks[0].layers[0].self_attention, SparseAttention)


def test_traced_weights_follow_the_pattern() -> None:
    config = _config("decoder", "fixed", sparse_summary=1, sparse_combine="interleaved")
    model = _model(config)
    ids = random_ids(2, 12, config.vocab_size, lengths=[12, 12], start_id=1)
    _, intermediates = model(ids, return_intermediates=True)
    assert intermediates.decoder is not None
    rows = torch.arange(12)
    pattern = SparsePattern("fixed", 4, 1)
    for (_, layer, _), weights in intermediates.decoder.self_attention.items():
        part = "first" if layer % 2 == 0 else "second"
        outside = ~pattern.contains(rows[:, None], rows[None, :], True, part)     # type: ignore[arg-type]
        assert weights is not None and bool((weights[:, :, outside] == 0).all())
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 12, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_decoding_equals_recomputation(kind: str) -> None:
    """Teacher forcing through the cache in chunks of 3, 1, 4 and 4 positions equals one full pass at every position
    (padded ones included: a sequence that ended pads the rest), every pattern and combine mode, two schemes."""
    cases = [(p, c, "sequential") for p, c in itertools.product(("strided", "fixed"), COMBINES)]
    cases.append(("strided", "merged", "rk4"))
    for pattern, combine, scheme in cases:
        config = _config(kind, pattern, sparse_combine=combine, scheme=scheme, sparse_block_size=3,
                         sparse_summary=1 if pattern == "fixed" else 4)
        model = _model(config)
        vocab = config.vocab_size
        tokens = random_ids(2, 12, vocab, lengths=[12, 8], start_id=1)
        cache = DecodeCache()
        pieces, start = [], 0
        with torch.no_grad():
            if isinstance(model, EncoderDecoderModel):
                src = random_ids(2, 7, vocab)
                memory = model.encode(src)
                full = model.decode(tokens, memory, src)
                for size in (3, 1, 4, 4):
                    pieces.append(model.decode_step(tokens[:, start:start + size], memory, src, cache))
                    start += size
            else:
                full = model(tokens)
                for size in (3, 1, 4, 4):
                    pieces.append(model.decode_step(tokens[:, start:start + size], cache))
                    start += size
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-10,
                                   msg=f"{pattern}/{combine}/{scheme}")
        assert {name.rsplit(".", 1)[-1] for name in cache.store if ".self." in name} == {"keys", "values"}


@pytest.mark.parametrize("scheme", ["sequential", "parallel", "macaron", "rk2", "rk2_gated", "rk4", "adaptive"])
def test_every_scheme_runs(scheme: str) -> None:
    """Every scheme (with and without weight sharing), fast path equal to reference, finite gradients."""
    kinds = ("classifier",) if scheme == "adaptive" else ("decoder", "classifier")
    for kind, share in itertools.product(kinds, (1, 2)):
        config = _config(kind, "fixed", scheme=scheme, share_layers=share, sparse_combine="heads")
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
    for pattern, combine in itertools.product(("strided", "fixed"), COMBINES):
        config = _config(kind, pattern, sparse_combine=combine)
        model = build_model(config)
        assert count_parameters(config).total == sum(p.numel() for p in model.parameters())
        # The same parameters as the standard Transformer (softmax attention's Q, K, V, O and pre-LN).
        assert count_parameters(config) == count_parameters(tiny_config(**{
            **SMALL, "kind": kind, "attention": "softmax", "sparse_block_size": 32,
            "num_classes": config.num_classes}))


def test_fast_macs_count_the_attended_keys() -> None:
    d, n, size = 16, 64, 8
    config = _config("decoder", sparse_block_size=size, max_length=n, layers_per_block=1)
    fast, reference = flop_breakdown(config, n, "fast"), flop_breakdown(config, n, "reference")
    assert reference["attention_n2"] == 2 * 2 * n * d
    assert fast["attention_n2"] == 2 * 2 * (2 * size + n // size) * d            # band (2 blocks) + one key per block
    fixed = flop_breakdown(config.replace(sparse_pattern="fixed", sparse_summary=2), n, "fast")
    assert fixed["attention_n2"] == 2 * 2 * (size + 2 * n // size) * d
    classifier = flop_breakdown(_config("classifier", sparse_block_size=size, layers_per_block=1), n, "fast")
    assert classifier["attention_n2"] == 2 * 2 * (3 * size + n // size) * d     # bidirectional: 3 blocks
    assert fast["projections"] == reference["projections"] == 2 * 4 * d * d
    long = config.replace(max_length=4096, sparse_block_size=64)                # l = sqrt(n): 192 keys of 4096
    assert flop_breakdown(long, 4096, "fast")["attention_n2"] == flop_breakdown(long, 4096, "reference")[
        "attention_n2"] * 192 / 4096


@pytest.mark.parametrize(("kind", "pattern", "combine", "impl"), [
    ("decoder", "strided", "merged", "auto"), ("classifier", "fixed", "heads", "auto"),
    ("decoder", "fixed", "interleaved", "auto"), ("classifier", "strided", "merged", "reference")])
def test_macs_equal_counted_matmuls(kind: str, pattern: str, combine: str, impl: str) -> None:
    """FLOPs of the registry's count times the tokens equal the matmul FLOPs a forward pass performs (n = 13, not a
    multiple of l = 4: the padded rows are counted)."""
    config = _config(kind, pattern, sparse_combine=combine, attention_impl=impl)
    model = build_model(config).eval()
    b, n = 2, 13
    ids = random_ids(b, n, config.vocab_size, lengths=[n] * b)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    analytic = sum(flop_breakdown(config, n, "reference" if impl == "reference" else "fast").values()) * b * n
    assert float(counter.get_total_flops()) == pytest.approx(analytic, rel=1e-12)


# -- config -------------------------------------------------------------------------------------------------------
def test_config_errors() -> None:
    with pytest.raises(ValueError, match=r"sparse_pattern='dilated' is not one of \['strided', 'fixed'\]"):
        _config(pattern="strided", sparse_pattern="dilated")
    with pytest.raises(ValueError, match="sparse_block_size=0 must be a positive integer"):
        _config(sparse_block_size=0)
    with pytest.raises(ValueError, match="sparse_summary=5 must be at most sparse_block_size=4"):
        _config(pattern="fixed", sparse_summary=5)
    with pytest.raises(ValueError, match="sparse_summary=2 is read by sparse_pattern='fixed' only"):
        _config(pattern="strided", sparse_summary=2)
    with pytest.raises(ValueError, match=r"sparse_block_size=4: the sparse_\* fields configure attention='sparse' "
                                         r"only \(attention is 'softmax'\)"):
        _config(attention="softmax")
    with pytest.raises(ValueError, match="sparse_combine='random' is not one of"):
        _config(sparse_combine="random")
    with pytest.raises(ValueError, match="needs num_heads >= 2"):
        _config(sparse_combine="heads", num_heads=1)
    with pytest.raises(ValueError, match=r"interleaved.*layers_per_block / share_layers >= 2"):
        _config(sparse_combine="interleaved", share_layers=2)
    config = apply_overrides(tiny_config(), ["attention=sparse", "sparse_pattern=fixed", "sparse_block_size=8",
                                             "sparse_summary=2", "sparse_combine=heads"])
    assert (config.sparse_pattern, config.sparse_block_size, config.sparse_summary) == ("fixed", 8, 2)
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert config != config.replace(sparse_block_size=16)                 # architecture, part of equality
