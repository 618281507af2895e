"""Parameter counts from a config alone, and the parameters that provably never receive a gradient.

:func:`count_parameters` needs no model: it adds up the sub-layers of ``models.py`` (tests prove it equals
``sum(p.numel())`` of the built model for every variant). With width 512, 8 heads and FF multiplier 4, official
fidelity, the non-embedding encoder-decoder totals are 36,248,576 (fullFF 1x6), 42,542,080 (fullFF 2x3),
11,113,472 (randomFF 1x6), 17,406,976 (randomFF 2x3) and 44,140,544 (the same-convention Transformer-base).

:func:`dead_parameter_masks` lists the entries whose gradient is zero whatever the data (up to float rounding),
the official code's inert terms:

- ``*_interaction.key_time`` (the time columns of ``W_K``, official fidelity): they only feed terms that are
  constant along the softmax axis;
- ``time_amplitudes[0]`` everywhere (``sin(0) = 0``) and ``time_amplitudes[:d/2]`` of a module evaluated only at
  time 0 (the sin half);
- random feed-forward: ``singular_values[0]`` (column 0 of ``U`` is ``sin(0) = 0``) and the entries beyond
  ``min(in, out)`` (never read); at depth 0 the ``m*d -> d`` weight is exactly zero, so that projection's singular
  values and everything before it in the sub-layer (its LayerNorm, the ``d -> m*d`` projection) are dead, and the
  sub-layer outputs only its last bias;
- the key bias of softmax attention (``q . b_k`` is the same for every key of a row), a textbook fact that holds
  for every Transformer with biased key projections; likewise ``key_proj.bias`` of minimal attention's
  ``qk_form="separate"`` (its ``collapsed`` and ``symmetric`` forms keep no dead bias: ``u . x_j`` and the shared
  bias vary with the key).

``ff_type="none"`` has no feed-forward parameters.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from transevolve.config import ModelConfig
from transevolve.modules.evolved_attention import BlockInteraction, EvolvedAttention
from transevolve.modules.feedforward import RandomFeedForward, TemporalProjection
from transevolve.modules.minimal_attention import MinimalAttention
from transevolve.modules.registry import get_attention
from transevolve.modules.softmax_attention import SoftmaxAttention
from transevolve.schemes import get_scheme


@dataclass(frozen=True)
class ParameterCount:
    """Trainable parameters by part. ``non_embedding`` excludes the shared embedding only."""

    embedding: int
    encoder: int
    decoder: int
    head: int

    @property
    def total(self) -> int:
        return self.embedding + self.encoder + self.decoder + self.head

    @property
    def non_embedding(self) -> int:
        return self.total - self.embedding

    def to_dict(self) -> dict[str, int]:
        return {**asdict(self), "total": self.total, "non_embedding": self.non_embedding}


def _norm(c: ModelConfig) -> int:
    return 2 * c.width


def _feed_forward(c: ModelConfig) -> int:
    d, m = c.width, c.scheme_ff_width
    if c.ff_type == "full":
        return d * m + m + m * d + d + _norm(c)
    if c.ff_type == "none":
        return 0

    def projection(n_in: int, n_out: int) -> int:
        singular_values = n_in if c.fidelity == "official" else min(n_in, n_out)
        return singular_values + n_out

    return projection(d, m) + projection(m, d) + _norm(c)


def layer_parameters(c: ModelConfig, cross: bool) -> int:
    """Trainable parameters of one layer (its attention sub-layers, feed-forward(s) and scheme parameters)."""
    attention = get_attention(c.attention)
    scheme = get_scheme(c.scheme)
    attention_parameters = attention.layer_parameters(c, False) + (attention.layer_parameters(c, True) if cross
                                                                   else 0)
    return attention_parameters + scheme.feed_forwards * _feed_forward(c) + scheme.extra_parameters(c.width)


def _stack(c: ModelConfig, cross: bool) -> int:
    attention = get_attention(c.attention)
    interactions = attention.block_parameters(c, False) + (attention.block_parameters(c, True) if cross else 0)
    distinct_layers = c.layers_per_block // c.share_layers
    block = interactions + distinct_layers * layer_parameters(c, cross) + _norm(c)
    return c.num_blocks * block


def count_parameters(config: ModelConfig) -> ParameterCount:
    """Trainable parameters of the model ``config`` describes, without building it."""
    embedding = config.vocab_size * config.width
    encoder = _stack(config, cross=False) if config.has_encoder else 0
    decoder = _stack(config, cross=config.kind == "encoder_decoder") if config.has_decoder else 0
    head = 0
    if config.kind == "classifier":
        assert config.num_classes is not None
        outputs = 1 if config.num_classes == 2 else config.num_classes
        head = _norm(config) + config.width * outputs + outputs
    return ParameterCount(embedding, encoder, decoder, head)


def count_model_parameters(model: nn.Module) -> int:
    """``sum(p.numel())`` over trainable parameters of a built model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def dead_parameter_masks(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{parameter name: bool mask}`` of the entries that provably get no gradient (see module docstring)."""
    masks: dict[str, torch.Tensor] = {}

    def mark(name: str, parameter: torch.Tensor, index: slice | None = None) -> None:
        mask = masks.setdefault(name, torch.zeros_like(parameter, dtype=torch.bool))
        if index is None:
            mask.fill_(True)
        else:
            mask[index] = True

    for prefix, module in model.named_modules():
        dot = f"{prefix}." if prefix else ""
        if isinstance(module, BlockInteraction) and module.key_time is not None:
            mark(dot + "key_time", module.key_time)
        elif isinstance(module, SoftmaxAttention) or (isinstance(module, MinimalAttention)
                                                      and module.qk_form == "separate"):
            mark(dot + "key_proj.bias", module.key_proj.bias)
        elif isinstance(module, EvolvedAttention):
            mark(dot + "time_amplitudes", module.time_amplitudes, slice(0, 1))
            if all(t == 0 for t in module.times):
                mark(dot + "time_amplitudes", module.time_amplitudes, slice(0, module.time_amplitudes.numel() // 2))
        elif isinstance(module, TemporalProjection):
            rank = min(module.in_features, module.out_features)
            values = module.singular_values
            mark(dot + "singular_values", values, slice(0, 1))
            mark(dot + "singular_values", values, slice(rank, None))
            if all(t == 0 for t in module.times):
                mark(dot + "singular_values", values, slice(0, min(module.in_features // 2, rank)))
        if isinstance(module, RandomFeedForward) and all(t == 0 for t in module.contract.times) and \
                module.contract.in_features // 2 >= min(module.contract.in_features, module.contract.out_features):
            # W of the second projection is exactly 0 at depth 0: nothing before it reaches the output.
            for name, parameter in [("norm.weight", module.norm.weight), ("norm.bias", module.norm.bias),
                                    ("expand.singular_values", module.expand.singular_values),
                                    ("expand.bias", module.expand.bias)]:
                mark(dot + name, parameter)
    # Drop empty masks (e.g. a 0-length slice).
    return {name: mask for name, mask in masks.items() if bool(mask.any())}
