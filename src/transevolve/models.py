"""The shared trunk: layers, blocks, stacks and the four model kinds.

Every model is built from the same pieces; ``config.attention`` picks TransEvolve's evolved attention or the
standard softmax attention, and nothing else changes, so comparisons differ only in the attention.

- Layer at depth ``l`` (pre-LN, residual): ``x += SelfAttn_l(x)``; ``x += CrossAttn_l(x, memory)`` (decoders with
  a memory); ``x += FF_l(x)``.
- Block: for evolved attention, the block-level interactions (self, and cross from the block input to the memory)
  are computed once from the block input; then ``L`` layers; then a LayerNorm. Depth ``l`` restarts at 0 in every
  block, as in the official code.
- Stack: ``N`` blocks.

Incremental decoding (``decode_step`` of the decoder models, driven by :mod:`transevolve.decoding`) runs the
same layers on new positions only, with a :class:`DecodeCache` holding per block the projected keys ``K`` of
every earlier block input (evolved: a new position's ``A0`` row needs its query against all of them) and per layer
the key biases and normalised values (evolved) or keys and values (softmax); the cross-attention terms are
computed once per source. The evolved key bias of a new key is ``K (P_Q . tau_l)`` (``P_Q . tau_l`` cached per
layer), so ``kappa`` itself need not be cached.

Legend: ``b`` batch, ``s`` source length, ``n`` target / sequence length, ``m`` new positions, ``d`` width,
``V`` vocabulary, ``C`` classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.embedding import TiedEmbedding
from transevolve.modules.evolved_attention import (
    BlockInteraction,
    BlockScores,
    CacheStore,
    EvolvedAttention,
    FastScores,
    append_cache,
    fully_blocked_rows,
    precompute_key_biases,
    resolve_impl,
    visible_keys,
)
from transevolve.modules.feedforward import build_feed_forward, dense
from transevolve.modules.masks import AttentionMasks, padding, validate_ids
from transevolve.modules.softmax_attention import SoftmaxAttention


@dataclass
class StackTrace:
    """What happened inside one stack, recorded on request (``return_intermediates=True``).

    Attributes:
        layer_outputs: state after every layer, ``(b, n, d)`` each, in depth order over all blocks.
        block_outputs: state after every block's final LayerNorm.
        self_attention: per layer, the self-attention weights ``(b, h, n, n)``.
        cross_attention: per layer, the cross-attention weights ``(b, h, n, s)`` (decoders with a memory).
        block_scores: per block, the evolved attention's :class:`BlockScores` (self-attention; empty for softmax).
    """

    layer_outputs: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[torch.Tensor] = field(default_factory=list)
    self_attention: list[torch.Tensor] = field(default_factory=list)
    cross_attention: list[torch.Tensor] = field(default_factory=list)
    block_scores: list[BlockScores] = field(default_factory=list)


@dataclass
class Intermediates:
    """Embedded inputs and per-stack traces of one forward pass."""

    encoder_input: torch.Tensor | None = None
    decoder_input: torch.Tensor | None = None
    encoder: StackTrace | None = None
    decoder: StackTrace | None = None
    pooled: torch.Tensor | None = None


class DecodeCache:
    """State of incremental decoding for one batch of sequences (every tensor is batch-first).

    Attributes:
        length: positions processed so far.
        key_pad: ``(b, length)`` bool, padded positions among them (e.g. after a sequence finished).
        store: cached tensors by module path: per block ``keys (b, h, n, D/h)`` (evolved, self and cross), per
            layer ``bias (b, h, n)`` and ``values (b, h, n, d/h)`` (evolved; ``P_Q . tau_l`` in
            ``store.constants``) or ``keys``/``values`` (softmax).
    """

    def __init__(self) -> None:
        self.length = 0
        self.key_pad: torch.Tensor | None = None
        self.store = CacheStore()

    def reorder(self, index: torch.Tensor, keep_cross: bool = False) -> None:
        """Keep batch rows ``index`` (in that order) of every cached tensor (beam search).

        ``keep_cross=True`` leaves the cross-attention entries alone: they depend on the source only, so this is
        exact when ``index`` moves rows only among rows that share a source (the hypotheses of one sentence).
        """
        self.store = self.store.index_select(index, keep=lambda name: keep_cross and ".cross." in name)
        if self.key_pad is not None:
            self.key_pad = self.key_pad.index_select(0, index)

    def extend(self, query_pad: torch.Tensor) -> torch.Tensor:
        """Record ``m`` new positions (``query_pad (b, m)``); returns the padding of every position so far."""
        self.key_pad = query_pad if self.key_pad is None else torch.cat([self.key_pad, query_pad], dim=1)
        self.length += query_pad.shape[1]
        return self.key_pad


@dataclass
class StepMasks:
    """Masks of ``m`` new query positions against ``k`` keys during incremental decoding.

    Attributes:
        visible: ``(b, 1, m, k)`` bool, not padding and (causal) not in the future.
        blocked_rows: ``(b, 1, m, 1)`` bool, rows the official mask blocks entirely (evolved: uniform).
    """

    visible: torch.Tensor
    blocked_rows: torch.Tensor

    @classmethod
    def build(cls, query_pad: torch.Tensor, key_pad: torch.Tensor, causal: bool) -> StepMasks:
        visible = visible_keys(key_pad, query_pad.shape[1], causal)
        visible = visible.expand(-1, -1, query_pad.shape[1], -1)
        return cls(visible, fully_blocked_rows(query_pad, key_pad, causal)[:, None, :, None])

    @property
    def allowed(self) -> torch.Tensor:
        """Softmax attention's rule: visible keys, or every key for a row that sees none."""
        return self.visible | ~self.visible.any(-1, keepdim=True)


@dataclass
class StepScores:
    """Block-level evolved scores of ``m`` new queries: ``initial`` ``A0 (b, h, m, k)`` against every key so far,
    ``new_keys`` ``K (b, j, D)`` added by this call (None when nothing was added) and the interaction's
    ``time_weight`` ``P_Q (D, h, t)`` (the key bias at depth l is ``K (P_Q . tau_l)``)."""

    initial: torch.Tensor
    new_keys: torch.Tensor | None
    time_weight: torch.Tensor


def _attention(config: ModelConfig, depth: int, cross: bool) -> nn.Module:
    if config.attention == "evolved":
        return EvolvedAttention(config, depth)
    return SoftmaxAttention(config, cross=cross)


class Layer(nn.Module):
    """One layer at depth ``l`` of its block: self-attention, optional cross-attention, feed-forward."""

    def __init__(self, config: ModelConfig, depth: int, cross: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.self_attention = _attention(config, depth, cross=False)
        self.cross_attention = _attention(config, depth, cross=True) if cross else None
        self.feed_forward = build_feed_forward(config, depth, generator)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, self_masks: AttentionMasks,
                cross_masks: AttentionMasks | None, self_scores: BlockScores | FastScores | None,
                cross_scores: BlockScores | FastScores | None, trace: StackTrace | None) -> torch.Tensor:
        """``x (b, n, d)``, ``memory (b, s, d)`` or None -> ``(b, n, d)``."""
        record = trace is not None
        update, weights = self.self_attention(x, x, self_masks, self_scores, return_weights=record)
        x = x + update
        if trace is not None:
            trace.self_attention.append(weights)
        if self.cross_attention is not None:
            assert memory is not None and cross_masks is not None
            update, weights = self.cross_attention(x, memory, cross_masks, cross_scores, return_weights=record)
            x = x + update
            if trace is not None:
                trace.cross_attention.append(weights)
        x = x + self.feed_forward(x)
        if trace is not None:
            trace.layer_outputs.append(x)
        return x

    def step(self, x: torch.Tensor, memory: torch.Tensor | None, store: dict[str, torch.Tensor], prefix: str,
             self_masks: StepMasks, cross_masks: StepMasks | None, self_scores: StepScores | None,
             cross_scores: StepScores | None) -> torch.Tensor:
        """Incremental decoding: ``x (b, m, d)`` new positions -> ``(b, m, d)``, growing the cache."""
        if isinstance(self.self_attention, EvolvedAttention):
            assert self_scores is not None
            x = x + self.self_attention.step(self_scores.initial, self_scores.new_keys, x, store, prefix + "self.",
                                             self_masks.visible, self_masks.blocked_rows, self_scores.time_weight)
        else:
            x = x + self.self_attention.step(x, store, prefix + "self.", self_masks.allowed)
        if self.cross_attention is not None:
            assert memory is not None and cross_masks is not None
            if isinstance(self.cross_attention, EvolvedAttention):
                assert cross_scores is not None
                new_values = memory if cross_scores.new_keys is not None else None
                x = x + self.cross_attention.step(cross_scores.initial, cross_scores.new_keys, new_values, store,
                                                  prefix + "cross.", cross_masks.visible, cross_masks.blocked_rows,
                                                  cross_scores.time_weight)
            else:
                x = x + self.cross_attention.step(x, store, prefix + "cross.", cross_masks.allowed, memory)
        return x + self.feed_forward(x)


class Block(nn.Module):
    """``L`` layers sharing one block-level interaction (evolved attention), then a LayerNorm."""

    def __init__(self, config: ModelConfig, cross: bool, generator: torch.Generator) -> None:
        super().__init__()
        evolved = config.attention == "evolved"
        self.self_interaction = BlockInteraction(config) if evolved else None
        self.cross_interaction = BlockInteraction(config) if evolved and cross else None
        self.layers = nn.ModuleList(Layer(config, depth, cross, generator)
                                    for depth in range(config.layers_per_block))
        self.final_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attention_impl = config.attention_impl
        self.num_heads = config.num_heads

    def _scores(self, interaction: BlockInteraction, query_source: torch.Tensor, key_source: torch.Tensor,
                masks: AttentionMasks, need_weights: bool) -> BlockScores | FastScores:
        b, n_q, _ = query_source.shape
        impl = resolve_impl(self.attention_impl, b, self.num_heads, n_q, key_source.shape[1],
                            query_source.element_size(), need_weights)
        if impl == "reference":
            return interaction(query_source, key_source)
        return interaction(query_source, key_source, masks, impl)

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, self_masks: AttentionMasks,
                cross_masks: AttentionMasks | None, trace: StackTrace | None = None) -> torch.Tensor:
        record = trace is not None
        self_scores = cross_scores = None
        if self.self_interaction is not None:
            self_scores = self._scores(self.self_interaction, x, x, self_masks, record)
            if isinstance(self_scores, FastScores):
                precompute_key_biases(self_scores, [layer.self_attention for layer in self.layers])
        if self.cross_interaction is not None:
            assert memory is not None and cross_masks is not None
            cross_scores = self._scores(self.cross_interaction, x, memory, cross_masks, record)
            if isinstance(cross_scores, FastScores):
                precompute_key_biases(cross_scores, [layer.cross_attention for layer in self.layers])
        if trace is not None and isinstance(self_scores, BlockScores):
            trace.block_scores.append(self_scores)
        for layer in self.layers:
            x = layer(x, memory, self_masks, cross_masks, self_scores, cross_scores, trace)
        x = self.final_norm(x)
        if trace is not None:
            trace.block_outputs.append(x)
        return x

    def _key_heads(self, keys: torch.Tensor) -> torch.Tensor:
        b, n, big = keys.shape
        return keys.view(b, n, self.num_heads, big // self.num_heads).transpose(1, 2)

    def step(self, x: torch.Tensor, memory: torch.Tensor | None, store: dict[str, torch.Tensor], prefix: str,
             self_masks: StepMasks, cross_masks: StepMasks | None) -> torch.Tensor:
        """Incremental decoding of ``x (b, m, d)`` (the block input at the new positions) -> ``(b, m, d)``.

        Evolved attention: the new positions' queries meet the cached keys of every earlier block input; the
        cross-attention keys and ``kappa`` are projected from the memory on the first call only.
        """
        self_scores = cross_scores = None
        if self.self_interaction is not None:
            interaction = self.self_interaction
            new_keys = interaction.project_flat_keys(x)                                       # (b, m, D)
            keys = append_cache(store, prefix + "self.keys", self._key_heads(new_keys), dim=2)
            self_scores = StepScores(interaction.project_queries(x) @ keys.transpose(-1, -2), new_keys,
                                     interaction.query_time)
        if self.cross_interaction is not None:
            assert memory is not None
            interaction = self.cross_interaction
            new_keys = None
            if prefix + "cross.keys" not in store:
                new_keys = interaction.project_flat_keys(memory)                              # once per source
                store[prefix + "cross.keys"] = self._key_heads(new_keys)
            initial = interaction.project_queries(x) @ store[prefix + "cross.keys"].transpose(-1, -2)
            cross_scores = StepScores(initial, new_keys, interaction.query_time)
        for index, layer in enumerate(self.layers):
            x = layer.step(x, memory, store, f"{prefix}layers.{index}.", self_masks, cross_masks, self_scores,
                           cross_scores)
        return self.final_norm(x)


class Stack(nn.Module):
    """``N`` blocks. ``cross=True`` adds cross-attention to a memory (the decoder of an encoder-decoder)."""

    def __init__(self, config: ModelConfig, cross: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, cross, generator) for _ in range(config.num_blocks))

    def forward(self, x: torch.Tensor, self_masks: AttentionMasks, memory: torch.Tensor | None = None,
                cross_masks: AttentionMasks | None = None, trace: StackTrace | None = None) -> torch.Tensor:
        """``x (b, n, d)`` -> ``(b, n, d)``."""
        for block in self.blocks:
            x = block(x, memory, self_masks, cross_masks, trace)
        return x

    def step(self, x: torch.Tensor, store: dict[str, torch.Tensor], prefix: str, self_masks: StepMasks,
             memory: torch.Tensor | None = None, cross_masks: StepMasks | None = None) -> torch.Tensor:
        """Incremental decoding: ``x (b, m, d)`` new positions -> ``(b, m, d)``."""
        for index, block in enumerate(self.blocks):
            x = block.step(x, memory, store, f"{prefix}{index}.", self_masks, cross_masks)
        return x


def _generator(config: ModelConfig) -> torch.Generator:
    """The source of the random feed-forward's fixed tensors: seeded by the config, not the global RNG."""
    return torch.Generator().manual_seed(config.random_ff_seed)


class _Model(nn.Module):
    """Common helpers; every concrete model has ``config`` and ``embedding``."""

    config: ModelConfig
    embedding: TiedEmbedding

    def _check(self, ids: object, name: str) -> torch.Tensor:
        ids = validate_ids(ids, self.config, name)
        return ids.to(self.embedding.weight.device)

    def _embed_step(self, ids: torch.Tensor, cache: DecodeCache) -> tuple[torch.Tensor, torch.Tensor]:
        """Embed ``ids (b, m)`` at positions ``cache.length ...``; returns ``(b, m, d)`` and their padding."""
        offset, m = cache.length, ids.shape[1]
        if offset + m > self.config.max_length:
            raise ValueError(f"decoding past max_length={self.config.max_length} (position {offset + m - 1})")
        x = self.embedding.tokens(ids) + self.embedding.positions[offset: offset + m]
        return x, padding(ids)


class EncoderModel(_Model):
    """Embedding + encoder stack: ``ids (b, n) -> hidden states (b, n, d)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = TiedEmbedding(config.vocab_size, config.width, config.max_length)
        self.encoder = Stack(config, cross=False, generator=_generator(config))

    def encode(self, ids: torch.Tensor, intermediates: Intermediates | None = None) -> torch.Tensor:
        ids = self._check(ids, "ids")
        pad = padding(ids)
        x = self.embedding(ids)
        trace = None
        if intermediates is not None:
            intermediates.encoder_input = x
            trace = intermediates.encoder = StackTrace()
        return self.encoder(x, AttentionMasks(pad, pad, causal=False), trace=trace)

    def forward(self, ids: torch.Tensor, return_intermediates: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Intermediates]:
        intermediates = Intermediates() if return_intermediates else None
        hidden = self.encode(ids, intermediates)
        return (hidden, intermediates) if intermediates is not None else hidden


class ClassifierModel(EncoderModel):
    """Encoder + pooled head: ``ids (b, n) -> logits (b, C)``, or ``(b, 1)`` (one sigmoid unit) when C = 2.

    Pooling: ``mean`` over all positions, pads included (official), or ``masked_mean`` over real tokens; then
    LayerNorm and a dense layer.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        assert config.num_classes is not None
        self.pool_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.head = dense(config.width, 1 if config.num_classes == 2 else config.num_classes)

    def pool(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """``(b, n, d)`` -> ``(b, d)``."""
        if self.config.pooling == "mean":
            return hidden.mean(dim=1)
        keep = (ids != 0).unsqueeze(-1).to(hidden.dtype)
        return (hidden * keep).sum(dim=1) / keep.sum(dim=1).clamp_min(1.0)

    def forward(self, ids: torch.Tensor, return_intermediates: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Intermediates]:
        intermediates = Intermediates() if return_intermediates else None
        hidden = self.encode(ids, intermediates)
        pooled = self.pool(hidden, ids.to(hidden.device))
        logits = self.head(self.pool_norm(pooled))
        if intermediates is not None:
            intermediates.pooled = pooled
            return logits, intermediates
        return logits

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> class probabilities ``(b, C)`` (sigmoid for the binary head, softmax otherwise)."""
        if logits.shape[-1] == 1:
            positive = torch.sigmoid(logits)
            return torch.cat([1 - positive, positive], dim=-1)
        return torch.softmax(logits, dim=-1)


class EncoderDecoderModel(_Model):
    """Translation model: ``src (b, s)``, ``tgt (b, n)`` (decoder input, starting with the start id) ->
    logits ``(b, n, V)``. One embedding serves source, target and output projection."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        generator = _generator(config)
        self.embedding = TiedEmbedding(config.vocab_size, config.width, config.max_length)
        self.encoder = Stack(config, cross=False, generator=generator)
        self.decoder = Stack(config, cross=True, generator=generator)

    def encode(self, src: torch.Tensor, intermediates: Intermediates | None = None) -> torch.Tensor:
        """``src (b, s)`` -> memory ``(b, s, d)``."""
        src = self._check(src, "src")
        pad = padding(src)
        x = self.embedding(src)
        trace = None
        if intermediates is not None:
            intermediates.encoder_input = x
            trace = intermediates.encoder = StackTrace()
        return self.encoder(x, AttentionMasks(pad, pad, causal=False), trace=trace)

    def decode(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor,
               intermediates: Intermediates | None = None) -> torch.Tensor:
        """``tgt (b, n)``, ``memory (b, s, d)``, ``src (b, s)`` (for its padding) -> logits ``(b, n, V)``."""
        tgt = self._check(tgt, "tgt")
        if tgt.shape[0] != memory.shape[0]:
            raise ValueError(f"tgt has batch {tgt.shape[0]} but the memory has batch {memory.shape[0]}")
        tgt_pad, src_pad = padding(tgt), padding(src.to(tgt.device))
        x = self.embedding(tgt)
        trace = None
        if intermediates is not None:
            intermediates.decoder_input = x
            trace = intermediates.decoder = StackTrace()
        hidden = self.decoder(x, AttentionMasks(tgt_pad, tgt_pad, causal=True), memory=memory,
                              cross_masks=AttentionMasks(tgt_pad, src_pad, causal=False), trace=trace)
        return self.embedding.logits(hidden)

    def decode_step(self, tgt: torch.Tensor, memory: torch.Tensor, src: torch.Tensor, cache: DecodeCache
                    ) -> torch.Tensor:
        """Incremental :meth:`decode`: ``tgt (b, m)`` the next ``m`` target ids -> their logits ``(b, m, V)``.

        Equals the last ``m`` positions of ``decode(all ids so far, memory, src)`` (within float rounding),
        except at padded target positions, whose official uniform attention would include future keys.
        """
        tgt = self._check(tgt, "tgt")
        x, query_pad = self._embed_step(tgt, cache)
        key_pad = cache.extend(query_pad)
        self_masks = StepMasks.build(query_pad, key_pad, causal=True)
        cross_masks = StepMasks.build(query_pad, padding(src.to(tgt.device)), causal=False)
        hidden = self.decoder.step(x, cache.store, "decoder.", self_masks, memory, cross_masks)
        return self.embedding.logits(hidden)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor, return_intermediates: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Intermediates]:
        intermediates = Intermediates() if return_intermediates else None
        memory = self.encode(src, intermediates)
        logits = self.decode(tgt, memory, src, intermediates)
        return (logits, intermediates) if intermediates is not None else logits


class DecoderModel(_Model):
    """Causal language model (no cross-attention): ``ids (b, n) -> next-token logits (b, n, V)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = TiedEmbedding(config.vocab_size, config.width, config.max_length)
        self.decoder = Stack(config, cross=False, generator=_generator(config))

    def forward(self, ids: torch.Tensor, return_intermediates: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, Intermediates]:
        ids = self._check(ids, "ids")
        pad = padding(ids)
        intermediates = Intermediates() if return_intermediates else None
        x = self.embedding(ids)
        trace = None
        if intermediates is not None:
            intermediates.decoder_input = x
            trace = intermediates.decoder = StackTrace()
        logits = self.embedding.logits(self.decoder(x, AttentionMasks(pad, pad, causal=True), trace=trace))
        return (logits, intermediates) if intermediates is not None else logits

    def decode_step(self, ids: torch.Tensor, cache: DecodeCache) -> torch.Tensor:
        """Incremental :meth:`forward`: ``ids (b, m)`` the next ``m`` ids -> their logits ``(b, m, V)``."""
        ids = self._check(ids, "ids")
        x, query_pad = self._embed_step(ids, cache)
        key_pad = cache.extend(query_pad)
        hidden = self.decoder.step(x, cache.store, "decoder.", StepMasks.build(query_pad, key_pad, causal=True))
        return self.embedding.logits(hidden)


MODEL_CLASSES: dict[str, type[_Model]] = {
    "encoder_decoder": EncoderDecoderModel,
    "encoder": EncoderModel,
    "classifier": ClassifierModel,
    "decoder": DecoderModel,
}

Model = EncoderDecoderModel | EncoderModel | ClassifierModel | DecoderModel


def build_model(config: ModelConfig) -> nn.Module:
    """The model of ``config.kind``, freshly initialised (parameters from the global torch RNG)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"build_model expects a ModelConfig, got {type(config).__name__}")
    return MODEL_CLASSES[config.kind](config)
