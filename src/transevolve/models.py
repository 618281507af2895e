"""The shared trunk: layers, blocks, stacks and the four model kinds.

Every model is built from the same pieces, and three config values pick the variant:

- ``config.attention`` names a registered attention mechanism (:mod:`transevolve.modules.registry`: ``softmax``,
  ``evolved``, ...). A mechanism has a per-layer sub-layer and, optionally, a per-block module whose state is shared
  by the block's layers (TransEvolve's query-key interaction, computed once from the block input).
- ``config.scheme`` names the layer-update scheme (:mod:`transevolve.schemes`): how a layer combines its vector
  fields (self-attention, cross-attention for decoders with a memory, feed-forward), each a function of the state
  and a time value. ``sequential`` is the standard pre-LN layer ``x += A(x); x += C(x); x += F(x)``.
- ``config.share_layers = k``: k consecutive layer evaluations of a block share one layer's weights.

A block evaluates its layers at times ``t = 0 .. L-1`` (restarting in every block, as in the official TransEvolve
code), then applies a LayerNorm; a stack is ``N`` blocks. Time is a value passed to the fields, so a scheme's
intermediate stages (``t + h/2``...) evaluate TransEvolve's time signal and the random feed-forward's matrices at
their own time.

Incremental decoding (``decode_step`` of the decoder models, driven by :mod:`transevolve.decoding`) runs the same
scheme code on new positions only, with the layer fields bound to a :class:`DecodeCache`: every (block, layer,
stage, self/cross) evaluation caches what its mechanism needs (softmax: keys and values; evolved: per block the
keys ``K`` of every earlier block input, per evaluation the key biases ``K (P_Q tau(t))`` and normalised values).

``config.scheme = "adaptive"`` (schemes with ``integrates_block``) replaces the loop over layer evaluations by one
ODE solve per block (:meth:`Block.integrate`, ``torchdiffeq``): ``dx/dt = A_j(x, t) + C_j(x, t) + F_j(x, t)`` on
``[0, T]``, where ``j = min(floor(t / share_layers), L / share_layers - 1)`` is the layer whose weights hold at time
``t``. The fields are the same :class:`_PassFields` (same attention and feed-forward code); TransEvolve's block
interaction is still computed once per block and each evaluation uses the time signal at its own ``t``. The number
of field evaluations of the last forward pass is ``model.function_evaluations()``.

Traces (``return_intermediates=True``) are keyed by ``(block, layer)`` and ``(block, layer, stage)``.

Legend: ``b`` batch, ``s`` source length, ``n`` target / sequence length, ``m`` new positions, ``d`` width,
``V`` vocabulary, ``C`` classes.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from torch import nn

from transevolve.config import FIXED_ODE_METHODS, ModelConfig
from transevolve.modules.cache import CacheStore, StepContext
from transevolve.modules.embedding import TiedEmbedding
from transevolve.modules.feedforward import build_feed_forward, dense
from transevolve.modules.masks import AttentionMasks, StepMasks, padding, validate_ids
from transevolve.modules.registry import get_attention
from transevolve.schemes import Scheme, get_scheme, summed_field

#: ``(block, layer)``: a layer evaluation of a stack (``layer`` counts evaluations, shared weights or not).
LayerKey = tuple[int, int]
#: ``(block, layer, stage)``: one evaluation of a sub-layer inside a scheme's step.
StageKey = tuple[int, int, int]


@dataclass
class StackTrace:
    """What happened inside one stack, recorded on request (``return_intermediates=True``).

    Attributes:
        layer_outputs: ``(block, layer) ->`` the state after that layer's step ``(b, n, d)``.
        block_outputs: ``block ->`` the state after the block's final LayerNorm.
        self_attention: ``(block, layer, stage) ->`` self-attention weights ``(b, h, n, n)``.
        cross_attention: ``(block, layer, stage) ->`` cross-attention weights ``(b, h, n, s)`` (decoders with a
            memory).
        block_scores: ``block ->`` the block-level state of the self-attention (evolved: :class:`BlockScores`;
            absent for mechanisms without one).

    Dicts keep insertion order, which is the order of evaluation.

    ``scheme="adaptive"``: ``layer_outputs[(block, i)]`` is the solution at the ``i``-th output time after 0 (the
    integer times ``1, 2, ...`` below T, then T; the adaptive methods interpolate there, so asking for a trace does
    not change the steps), ``block_outputs`` and ``block_scores`` are recorded as usual, and no attention weights are
    recorded: the solver evaluates the fields at times it chooses, some in rejected steps, so per-stage weights
    are not meaningful.
    """

    layer_outputs: dict[LayerKey, torch.Tensor] = field(default_factory=dict)
    block_outputs: dict[int, torch.Tensor] = field(default_factory=dict)
    self_attention: dict[StageKey, torch.Tensor] = field(default_factory=dict)
    cross_attention: dict[StageKey, torch.Tensor] = field(default_factory=dict)
    block_scores: dict[int, Any] = field(default_factory=dict)


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
        store: cached tensors by name (block, layer evaluation, stage, self/cross; see
            :class:`~transevolve.modules.cache.StepContext`), as each attention mechanism's registry entry
            describes.
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


class Layer(nn.Module):
    """One layer's weights (self-attention, optional cross-attention, feed-forward(s)) and its update scheme.

    With weight sharing (``share_layers = k``) one Layer is evaluated at ``k`` consecutive times; ``times`` lists
    every time its sub-layers are evaluated at (stages included).
    """

    def __init__(self, config: ModelConfig, cross: bool, generator: torch.Generator,
                 times: tuple[float, ...]) -> None:
        super().__init__()
        attention = get_attention(config.attention)
        scheme = get_scheme(config.scheme)
        self.times = times
        self.self_attention = attention.layer(config, False, times)
        self.cross_attention = attention.layer(config, True, times) if cross else None
        self.feed_forward = build_feed_forward(config, generator, times, config.scheme_ff_width)
        self.second_feed_forward = (build_feed_forward(config, generator, times, config.scheme_ff_width)
                                    if scheme.feed_forwards == 2 else None)
        self.scheme: Scheme = scheme(config.width)

    def feed(self, x: torch.Tensor, t: float, index: int = 0) -> torch.Tensor:
        module = self.feed_forward if index == 0 else self.second_feed_forward
        assert module is not None, f"this layer has no feed-forward {index}"
        return module(x, t)


class _PassFields:
    """A layer's vector fields during a full forward pass (see :class:`transevolve.schemes.LayerFields`)."""

    def __init__(self, layer: Layer, context: _PassContext, key: LayerKey) -> None:
        self.layer, self.context, self.key = layer, context, key
        self.has_cross = layer.cross_attention is not None

    def attend(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        c = self.context
        update, weights = self.layer.self_attention(x, x, c.self_masks, c.self_state, t,
                                                    return_weights=c.trace is not None)
        if c.trace is not None:
            c.trace.self_attention[(*self.key, stage)] = weights
        return update

    def cross(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        c = self.context
        assert self.layer.cross_attention is not None and c.memory is not None and c.cross_masks is not None
        update, weights = self.layer.cross_attention(x, c.memory, c.cross_masks, c.cross_state, t,
                                                     return_weights=c.trace is not None)
        if c.trace is not None:
            c.trace.cross_attention[(*self.key, stage)] = weights
        return update

    def feed(self, x: torch.Tensor, t: float, stage: int, index: int = 0) -> torch.Tensor:
        return self.layer.feed(x, t, index)


@dataclass
class _PassContext:
    memory: torch.Tensor | None
    self_masks: AttentionMasks
    cross_masks: AttentionMasks | None
    self_state: Any
    cross_state: Any
    trace: StackTrace | None


class _StepFields:
    """A layer's vector fields during incremental decoding: each evaluation caches under its own name."""

    def __init__(self, layer: Layer, context: _StepContextOfBlock, prefix: str) -> None:
        self.layer, self.context, self.prefix = layer, context, prefix
        self.has_cross = layer.cross_attention is not None

    def attend(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        c = self.context
        step = StepContext(c.store, f"{self.prefix}{stage}.self.", c.self_masks, None, c.self_state)
        return self.layer.self_attention.step(x, step, t)

    def cross(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        c = self.context
        assert self.layer.cross_attention is not None and c.cross_masks is not None
        step = StepContext(c.store, f"{self.prefix}{stage}.cross.", c.cross_masks, c.memory, c.cross_state)
        return self.layer.cross_attention.step(x, step, t)

    def feed(self, x: torch.Tensor, t: float, stage: int, index: int = 0) -> torch.Tensor:
        return self.layer.feed(x, t, index)


@dataclass
class _StepContextOfBlock:
    store: dict[str, torch.Tensor]
    memory: torch.Tensor | None
    self_masks: StepMasks
    cross_masks: StepMasks | None
    self_state: Any
    cross_state: Any


@dataclass(frozen=True)
class _ODESettings:
    """``ModelConfig.ode_*`` as a block uses them (``interval`` already resolved: 0 -> ``layers_per_block``)."""

    method: str
    rtol: float
    atol: float
    interval: float
    step_size: float
    adjoint: bool

    @classmethod
    def of(cls, config: ModelConfig) -> _ODESettings:
        return cls(config.ode_method, float(config.ode_rtol), float(config.ode_atol),
                   float(config.ode_interval) or float(config.layers_per_block), float(config.ode_step_size),
                   config.ode_adjoint)


@contextmanager
def _seeded_randomness(device: torch.device, seed: int) -> Iterator[None]:
    """Run the body with ``device``'s random generator seeded to ``seed``, restoring its state afterwards."""
    if device.type == "cpu":
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(seed)
            yield
        return
    backend = torch.get_device_module(device.type)
    index = device.index if device.index is not None else backend.current_device()
    with torch.random.fork_rng(devices=[index], device_type=device.type):
        if device.type == "cuda":
            torch.cuda.default_generators[index].manual_seed(seed)
        else:
            backend.manual_seed(seed)
        yield


class _BlockField(nn.Module):
    """A block's layers as one vector field ``f(t, x) = A_j(x, t) + C_j(x, t) + F_j(x, t)`` (``torchdiffeq``'s
    ``func(t, y)``: ``t`` a 0-d tensor, ``x (b, n, d)`` -> ``(b, n, d)``), ``j = min(floor(t / k), layers - 1)``.

    An ``nn.Module`` holding the block's layers, so that ``parameters()`` are the adjoint's parameters. Counts its
    evaluations. With ``seed`` (training with dropout) every evaluation of layer ``j`` draws the same dropout masks
    (the generator is seeded to ``seed + j``): the field stays a deterministic function of ``(t, x)`` within a
    forward pass, as the step-size controller and the adjoint's backward solve need.
    """

    def __init__(self, layers: nn.ModuleList, layer_fields: list[_PassFields], share: int, seed: int | None) -> None:
        super().__init__()
        self.layers = layers
        self.fields = layer_fields
        self.share = share
        self.seed = seed
        self.evaluations = 0

    def layer_at(self, t: float) -> int:
        """The index of the layer whose weights hold at time ``t``."""
        return min(max(math.floor(t / self.share), 0), len(self.fields) - 1)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        self.evaluations += 1
        time = float(t.detach())
        j = self.layer_at(time)
        if self.seed is None:
            return summed_field(self.fields[j], x, time).to(x.dtype)
        with _seeded_randomness(x.device, self.seed + j):
            return summed_field(self.fields[j], x, time).to(x.dtype)


def _differentiable_tensors(value: Any) -> list[torch.Tensor]:
    """Tensors that require grad inside ``value`` (tensors, dataclasses, dicts, lists, tuples), without repeats:
    the block-level state the adjoint must treat as parameters of the field."""
    found: dict[int, torch.Tensor] = {}

    def visit(item: Any) -> None:
        if isinstance(item, torch.Tensor):
            if item.requires_grad:
                found.setdefault(id(item), item)
        elif is_dataclass(item) and not isinstance(item, type):
            for spec in fields(item):
                visit(getattr(item, spec.name))
        elif isinstance(item, dict):
            for entry in item.values():
                visit(entry)
        elif isinstance(item, list | tuple):
            for entry in item:
                visit(entry)

    visit(value)
    return list(found.values())


class Block(nn.Module):
    """``L`` layer evaluations (at times ``0 .. L-1``) sharing the block-level state of their attention mechanism
    (evolved attention: the query-key interaction, computed once from the block input), then a LayerNorm.

    With ``share_layers = k`` the block holds ``L / k`` layers and evaluates each at ``k`` consecutive times.
    """

    def __init__(self, config: ModelConfig, cross: bool, generator: torch.Generator) -> None:
        super().__init__()
        attention = get_attention(config.attention)
        scheme = get_scheme(config.scheme)
        self.self_interaction = attention.block(config) if attention.block is not None else None
        self.cross_interaction = attention.block(config) if attention.block is not None and cross else None
        share = config.share_layers
        stage_offsets = scheme.stage_times
        self.layers = nn.ModuleList(
            Layer(config, cross, generator,
                  tuple(sorted({float(i) + offset for i in range(j * share, (j + 1) * share)
                                for offset in stage_offsets})))
            for j in range(config.layers_per_block // share))
        self.final_norm = nn.LayerNorm(config.width, eps=config.layer_norm_eps)
        self.attention_impl = config.attention_impl
        self.share = share
        self.num_evaluations = config.layers_per_block
        #: ``scheme="adaptive"``: the ODE solve's settings (None for the per-layer schemes).
        self.ode = _ODESettings.of(config) if scheme.integrates_block else None
        self.dropout_rate = config.dropout
        #: Field evaluations of the last forward pass (``scheme="adaptive"``; None otherwise).
        self.last_function_evaluations: int | None = None

    def evaluations(self) -> list[tuple[int, Layer, float]]:
        """``(layer index, layer module, time)`` of every layer evaluation, in order."""
        return [(i, self.layers[i // self.share], float(i)) for i in range(self.num_evaluations)]

    def forward(self, x: torch.Tensor, memory: torch.Tensor | None, self_masks: AttentionMasks,
                cross_masks: AttentionMasks | None, trace: StackTrace | None = None, index: int = 0
                ) -> torch.Tensor:
        """``x (b, n, d)`` (``memory (b, s, d)``) -> ``(b, n, d)``; ``index`` is the block's place in its stack."""
        record = trace is not None
        evaluations = self.evaluations()
        integrates = self.ode is not None
        # The adjoint takes the block state as parameters of the field: plain autograd tensors (reference path).
        impl = "reference" if self.ode is not None and self.ode.adjoint else self.attention_impl
        self_state = cross_state = None
        if self.self_interaction is not None:
            plan = None if integrates else [(layer.self_attention, t) for _, layer, t in evaluations]
            self_state = self.self_interaction.block_state(x, x, self_masks, impl, record, plan)
            if trace is not None:
                trace.block_scores[index] = self_state
        if self.cross_interaction is not None:
            assert memory is not None and cross_masks is not None
            plan = None if integrates else [(layer.cross_attention, t) for _, layer, t in evaluations]
            cross_state = self.cross_interaction.block_state(x, memory, cross_masks, impl, record, plan)
        context = _PassContext(memory, self_masks, cross_masks, self_state, cross_state, trace)
        if integrates:
            x = self.integrate(x, context, index, trace)
        else:
            for i, layer, t in evaluations:
                x = layer.scheme.step(_PassFields(layer, context, (index, i)), x, t)
                if trace is not None:
                    trace.layer_outputs[(index, i)] = x
        x = self.final_norm(x)
        if trace is not None:
            trace.block_outputs[index] = x
        return x

    def integrate(self, x: torch.Tensor, context: _PassContext, index: int = 0, trace: StackTrace | None = None
                  ) -> torch.Tensor:
        """``scheme="adaptive"``: solve ``dx/dt = A_j(x, t) + C_j(x, t) + F_j(x, t)`` on ``[0, T]`` from the block
        input ``x (b, n, d)``; returns ``x(T)`` ``(b, n, d)`` (before the final LayerNorm).

        ``context`` holds the block-level state (computed once from the block input). Adaptive methods get the
        layer boundaries ``k, 2k, ...`` as ``jump_t`` (they step onto each and restart the field on its right
        side); fixed-grid methods take ``ceil(T / ode_step_size)`` equal steps with perturbed evaluations (at a
        boundary, a step's first stage sees the next layer, its last stage the previous one). Sets
        :attr:`last_function_evaluations` (the forward solve's evaluations; an adjoint's backward solve is not
        counted).
        """
        from torchdiffeq import odeint, odeint_adjoint

        ode = self.ode
        assert ode is not None, "Block.integrate is the path of schemes with integrates_block"
        end = ode.interval
        outputs = [0.0, end]
        if trace is not None:
            outputs = [0.0, *(float(k) for k in range(1, math.ceil(end))), end]
        times = torch.tensor(outputs, dtype=torch.promote_types(x.dtype, torch.float32), device=x.device)
        untraced = replace(context, trace=None)
        layer_fields = [_PassFields(layer, untraced, (index, j * self.share)) for j, layer in enumerate(self.layers)]
        seed = int(torch.randint(0, 2**62, ()).item()) if self.training and self.dropout_rate > 0 else None
        func = _BlockField(self.layers, layer_fields, self.share, seed)
        options: dict[str, Any]
        if ode.method in FIXED_ODE_METHODS:
            options = {"grid_constructor": _fixed_grid(ode.step_size), "perturb": True}
        else:
            jumps = [float(j * self.share) for j in range(1, len(self.layers))]
            options = {"jump_t": torch.tensor(jumps, dtype=torch.float64, device=x.device)} if jumps else {}
        solve = {"rtol": ode.rtol, "atol": ode.atol, "method": ode.method, "options": options}
        if ode.adjoint and torch.is_grad_enabled():
            state = _differentiable_tensors((context.self_state, context.cross_state, context.memory))
            solution = odeint_adjoint(func, x, times, adjoint_params=(*func.parameters(), *state), **solve)
        else:
            solution = odeint(func, x, times, **solve)
        self.last_function_evaluations = func.evaluations
        if trace is not None:
            for k in range(1, len(outputs)):
                trace.layer_outputs[(index, k - 1)] = solution[k]
        return solution[-1]

    def step(self, x: torch.Tensor, memory: torch.Tensor | None, store: dict[str, torch.Tensor], prefix: str,
             self_masks: StepMasks, cross_masks: StepMasks | None) -> torch.Tensor:
        """Incremental decoding of ``x (b, m, d)`` (the block input at the new positions) -> ``(b, m, d)``.

        The block-level state comes from the new positions against the cached keys of every earlier block input
        (evolved: ``A0`` rows); each layer evaluation and stage caches under its own name.
        """
        self_state = cross_state = None
        if self.self_interaction is not None:
            self_state = self.self_interaction.step_state(x, store, prefix + "self.", None)
        if self.cross_interaction is not None:
            assert memory is not None
            cross_state = self.cross_interaction.step_state(x, store, prefix + "cross.", memory)
        context = _StepContextOfBlock(store, memory, self_masks, cross_masks, self_state, cross_state)
        for i, layer, t in self.evaluations():
            x = layer.scheme.step(_StepFields(layer, context, f"{prefix}layers.{i}."), x, t)
        return self.final_norm(x)


def _fixed_grid(step_size: float) -> Any:
    """A ``torchdiffeq`` grid constructor: ``ceil((t1 - t0) / step_size)`` equal steps from ``t[0]`` to ``t[-1]``
    (exact end points, no sliver of a last step)."""

    def grid(func: Any, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        steps = max(1, math.ceil(float(t[-1] - t[0]) / step_size - 1e-9))
        points = torch.linspace(float(t[0]), float(t[-1]), steps + 1, dtype=t.dtype, device=t.device)
        points[0], points[-1] = t[0], t[-1]
        return points

    return grid


class Stack(nn.Module):
    """``N`` blocks. ``cross=True`` adds cross-attention to a memory (the decoder of an encoder-decoder)."""

    def __init__(self, config: ModelConfig, cross: bool, generator: torch.Generator) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(Block(config, cross, generator) for _ in range(config.num_blocks))

    def forward(self, x: torch.Tensor, self_masks: AttentionMasks, memory: torch.Tensor | None = None,
                cross_masks: AttentionMasks | None = None, trace: StackTrace | None = None) -> torch.Tensor:
        """``x (b, n, d)`` -> ``(b, n, d)``."""
        for index, block in enumerate(self.blocks):
            x = block(x, memory, self_masks, cross_masks, trace, index)
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

    def function_evaluations(self) -> int | None:
        """Vector-field evaluations of the last forward pass, summed over blocks and stacks (``scheme="adaptive"``,
        whose cost is set by the ODE solver); None for the fixed schemes (see ``Scheme.evaluations``)."""
        counts = [module.last_function_evaluations for module in self.modules()
                  if isinstance(module, Block) and module.last_function_evaluations is not None]
        return sum(counts) if counts else None

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
