"""Incremental decoding (``decode_step`` + :class:`DecodeCache`) and the greedy / beam searches.

Cached and uncached decoding must give the same tokens and (within float rounding) the same logits and scores,
for TransEvolve and the softmax Transformer, encoder-decoder and decoder-only; beam size 1 must be greedy.
"""

from __future__ import annotations

import pytest
import torch
from conftest import random_ids, tiny_config

from transevolve import ModelConfig, build_model
from transevolve.decoding import EOS_ID, beam_search, greedy_search, length_penalty
from transevolve.models import DecodeCache, DecoderModel, EncoderDecoderModel

FAMILIES = [("evolved", "full"), ("evolved", "random"), ("softmax", "full")]
KINDS = ("encoder_decoder", "decoder")


def _model(kind: str, attention: str, ff_type: str = "full", seed: int = 3, **overrides: object) -> torch.nn.Module:
    config = tiny_config(kind=kind, attention=attention, ff_type=ff_type, max_length=96, **overrides)
    torch.manual_seed(seed)
    return build_model(config).eval()


def _mid_sequence_eos(model: torch.nn.Module, inputs: dict[str, torch.Tensor], steps: int = 20) -> int | None:
    """A token that greedy decoding first produces a few steps in (so that, used as EOS, rows end mid-way)."""
    tokens = greedy_search(model, **inputs, max_new_tokens=steps, eos_id=None).tokens
    for position in range(2, steps - 2):
        for row in range(tokens.shape[0]):
            token = int(tokens[row, position])
            if token not in tokens[row, :position].tolist():
                return token
    return None


def _model_with_eos(kind: str, attention: str, ff_type: str = "full", batch: int = 3
                    ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], int]:
    """A tiny model, inputs, and an EOS id that greedy decoding reaches mid-sequence on some row."""
    for seed in range(3, 40):
        model = _model(kind, attention, ff_type, seed=seed)
        inputs = _inputs(model, batch)
        eos = _mid_sequence_eos(model, inputs)
        if eos is not None:
            return model, inputs, eos
    raise AssertionError("no seed gives a greedy output that changes token")


def _inputs(model: torch.nn.Module, batch: int = 3) -> dict[str, torch.Tensor]:
    vocab = model.config.vocab_size
    if isinstance(model, EncoderDecoderModel):
        return {"src": random_ids(batch, 9, vocab)}                     # padded sources
    return {"prompt": random_ids(batch, 4, vocab, lengths=[4] * batch, start_id=1)}


@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize(("attention", "ff_type"), FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_greedy_cached_equals_uncached(kind: str, attention: str, ff_type: str, stop: bool) -> None:
    model, inputs, eos = _model_with_eos(kind, attention, ff_type)
    eos = eos if stop else EOS_ID
    cached = greedy_search(model, **inputs, max_new_tokens=24, use_cache=True, return_logits=True, eos_id=eos)
    plain = greedy_search(model, **inputs, max_new_tokens=24, use_cache=False, return_logits=True, eos_id=eos)
    assert torch.equal(cached.tokens, plain.tokens)
    assert torch.equal(cached.lengths, plain.lengths)
    assert cached.logits is not None and plain.logits is not None
    live = torch.arange(cached.tokens.shape[1])[None, :] < cached.lengths[:, None]       # steps before EOS
    torch.testing.assert_close(cached.logits[live], plain.logits[live], rtol=0, atol=1e-4)
    torch.testing.assert_close(cached.scores, plain.scores, rtol=0, atol=1e-4)
    if stop:
        assert bool((cached.lengths < 24).any()), "some row should stop at the chosen EOS"
        ended = cached.tokens.gather(1, (cached.lengths - 1)[:, None]).squeeze(1)
        assert bool((ended[cached.lengths < 24] == eos).all())
        after = torch.arange(cached.tokens.shape[1])[None, :] >= cached.lengths[:, None]
        assert bool((cached.tokens[after] == 0).all())


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.parametrize("stop", [False, True])
@pytest.mark.parametrize(("attention", "ff_type"), FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_beam_cached_equals_uncached(kind: str, attention: str, ff_type: str, stop: bool,
                                     early_stopping: bool) -> None:
    model, inputs, eos = _model_with_eos(kind, attention, ff_type)
    eos = eos if stop else EOS_ID
    options = {"beam_size": 3, "max_new_tokens": 16, "early_stopping": early_stopping, "eos_id": eos}
    cached = beam_search(model, **inputs, use_cache=True, **options)
    plain = beam_search(model, **inputs, use_cache=False, **options)
    assert cached.hypotheses is not None and plain.hypotheses is not None
    assert torch.equal(cached.hypotheses, plain.hypotheses)
    torch.testing.assert_close(cached.hypothesis_scores, plain.hypothesis_scores, rtol=0, atol=1e-4)
    assert torch.equal(cached.tokens, cached.hypotheses[:, 0])
    scores = cached.hypothesis_scores
    assert scores is not None and bool((scores[:, :-1] >= scores[:, 1:]).all())      # best first


@pytest.mark.parametrize("use_cache", [True, False])
@pytest.mark.parametrize(("attention", "ff_type"), FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_beam_size_one_is_greedy(kind: str, attention: str, ff_type: str, use_cache: bool) -> None:
    model, inputs, eos = _model_with_eos(kind, attention, ff_type, batch=4)
    greedy = greedy_search(model, **inputs, max_new_tokens=20, use_cache=use_cache, eos_id=eos)
    assert bool((greedy.lengths < 20).any())
    beam = beam_search(model, **inputs, beam_size=1, alpha=0.6, max_new_tokens=20, use_cache=use_cache, eos_id=eos)
    width = int(greedy.lengths.max())
    assert torch.equal(beam.tokens, greedy.tokens[:, :width])
    assert torch.equal(beam.lengths, greedy.lengths)
    torch.testing.assert_close(beam.scores, greedy.scores / length_penalty(greedy.lengths.float(), 0.6),
                               rtol=0, atol=1e-5)


def test_beam_search_finds_a_better_sequence_than_greedy_or_equal() -> None:
    """Under the beam's own objective, beam 4 is never worse than beam 1 on these inputs."""
    model, inputs, eos = _model_with_eos("encoder_decoder", "evolved", batch=4)
    one = beam_search(model, **inputs, beam_size=1, max_new_tokens=12, eos_id=eos)
    four = beam_search(model, **inputs, beam_size=4, max_new_tokens=12, eos_id=eos)
    assert bool((four.scores >= one.scores - 1e-5).all())


@pytest.mark.parametrize(("attention", "ff_type"), FAMILIES)
@pytest.mark.parametrize("kind", KINDS)
def test_decode_step_in_chunks_matches_full_forward(kind: str, attention: str, ff_type: str) -> None:
    """Teacher forcing through the cache in chunks of 3, 1, 4 and 2 positions equals one full pass."""
    model = _model(kind, attention, ff_type)
    vocab = model.config.vocab_size
    tokens = random_ids(2, 10, vocab, lengths=[10, 10], start_id=1)
    cache = DecodeCache()
    pieces = []
    with torch.no_grad():
        if isinstance(model, EncoderDecoderModel):
            src = random_ids(2, 7, vocab)
            memory = model.encode(src)
            full = model.decode(tokens, memory, src)
            start = 0
            for size in (3, 1, 4, 2):
                pieces.append(model.decode_step(tokens[:, start:start + size], memory, src, cache))
                start += size
        else:
            assert isinstance(model, DecoderModel)
            full = model(tokens)
            start = 0
            for size in (3, 1, 4, 2):
                pieces.append(model.decode_step(tokens[:, start:start + size], cache))
                start += size
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=0, atol=1e-4)


@pytest.mark.parametrize("attention", ["evolved", "softmax"])
def test_cache_holds_what_the_design_says(attention: str) -> None:
    model = _model("encoder_decoder", attention)
    src = random_ids(2, 7, model.config.vocab_size)
    cache = DecodeCache()
    with torch.no_grad():
        memory = model.encode(src)
        model.decode_step(torch.ones(2, 1, dtype=torch.long), memory, src, cache)
        model.decode_step(torch.full((2, 1), 5, dtype=torch.long), memory, src, cache)
    config: ModelConfig = model.config
    names = set(cache.store)
    if attention == "evolved":
        assert "decoder.0.self.keys" in names and "decoder.0.cross.keys" in names
        assert cache.store["decoder.0.self.keys"].shape == (2, config.num_heads, 2,
                                                            config.score_width // config.num_heads)
        assert cache.store["decoder.0.cross.keys"].shape[2] == 7                    # once per source
        assert cache.store["decoder.0.layers.0.0.self.bias"].shape == (2, config.num_heads, 2)
        assert cache.store["decoder.0.layers.0.0.self.values"].shape == (2, config.num_heads, 2, config.head_width)
        assert cache.store["decoder.0.layers.0.0.cross.values"].shape[2] == 7
    else:
        assert cache.store["decoder.0.layers.0.0.self.keys"].shape == (2, config.num_heads, 2, config.head_width)
        assert cache.store["decoder.0.layers.0.0.cross.values"].shape[2] == 7
    before = {name: tensor.clone() for name, tensor in cache.store.items()}
    cache.reorder(torch.tensor([1, 0]))
    for name, tensor in cache.store.items():
        assert torch.equal(tensor, before[name].flip(0))
    cache.reorder(torch.tensor([1, 1]), keep_cross=True)
    for name, tensor in cache.store.items():
        assert torch.equal(tensor, before[name].flip(0) if ".cross." in name else before[name][[0, 0]])


def test_default_length_is_source_plus_offset_and_respects_max_length() -> None:
    model = _model("encoder_decoder", "evolved")
    src = random_ids(2, 9, model.config.vocab_size)
    out = greedy_search(model, src=src, length_offset=5, eos_id=None)
    assert out.tokens.shape == (2, 14)
    out = greedy_search(model, src=src, eos_id=None)                                 # 9 + 50, room for 96
    assert out.tokens.shape == (2, 59)
    out = greedy_search(model, src=src, length_offset=500, eos_id=None)
    assert out.tokens.shape == (2, model.config.max_length)


def test_decoding_input_errors() -> None:
    decoder = _model("decoder", "evolved")
    with pytest.raises(ValueError, match="padding"):
        greedy_search(decoder, prompt=torch.tensor([[1, 5, 0]]))
    with pytest.raises(ValueError, match="prompt"):
        greedy_search(decoder, src=torch.tensor([[1, 5]]))
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(decoder, prompt=torch.tensor([[1, 5]]), beam_size=0)
    encoder = build_model(tiny_config(kind="encoder"))
    with pytest.raises(TypeError, match="EncoderDecoderModel"):
        greedy_search(encoder, src=torch.tensor([[1, 5]]))


def test_length_penalty_formula() -> None:
    assert length_penalty(1, 0.6) == pytest.approx(1.0)
    assert length_penalty(7, 0.6) == pytest.approx(2.0**0.6)
    assert length_penalty(3, 0.0) == 1.0
