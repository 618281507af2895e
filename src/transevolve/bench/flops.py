"""Analytic cost model: parameters (re-exported from :mod:`transevolve.params`) and FLOPs per token.

Counting convention: 2 FLOPs per multiply-accumulate of every matrix product of one forward pass, the n x n
attention products included (full n x n also for causal attention, as the implementations compute it);
elementwise work (softmax, exponentials, norms, activations) is not counted. A training step is counted as
3x the forward (backward = 2x forward), as in nanoGPT / PaLM MFU accounting. Attention costs come from each
mechanism's registry entry (:mod:`transevolve.modules.registry`); a layer-update scheme multiplies a layer's
attention and feed-forward costs by its field evaluations (``rk4``: 4) and Macaron's feed-forwards count twice at
their inner width.

Per token of a sequence of length n (``d`` width, ``f`` FF width, ``h`` heads, ``D = d + h t``, ``L`` layers per
block, ``N`` blocks), forward multiply-accumulates:

- Transformer layer: ``4 d^2`` (Q, K, V, O) ``+ 2 n d`` (``QK^T`` and ``PV``) ``+ 2 d f`` (FF).
- TransEvolve block (self): ``2 d D`` (Q and K at width D) ``+ n D`` (A0).
- TransEvolve layer: ``d^2`` (W_O) ``+ n (d + h)`` (``E [w V, w]``) ``+ D h`` (key bias ``K (P_Q tau_l)``)
  ``+ 2 d f`` (FF; randomFF has the same per-token cost plus the once-per-forward construction of its weights,
  which is not per token and not counted).
- ``path="reference"`` counts what the reference path computes instead: the key-side term kappa ``D h t`` per
  block (plus the inert query-side term, another ``D h t``, in official fidelity), ``h t`` per layer for the key
  bias (and ``h t`` more for the inert query bias in official fidelity) and ``n d`` for ``P V``.
- Cross-attention (decoders with a memory of ``s = n`` tokens): Transformer ``4 d^2 + 2 n d``; TransEvolve as its
  self-attention (block and layers) with keys from the memory.
- Minimal attention (``attention="minimal"``): per form, see
  :func:`transevolve.modules.minimal_attention.minimal_macs` (one head, both forms ``collapsed``: ``2 d^2 + 2 n d``);
  ``ff_type="none"`` costs no feed-forward FLOPs.
- Heads: the tied output projection ``d V`` per target token (encoder-decoder, decoder); the classifier head
  ``d C / n``.
- ``scheme="adaptive"``: the cost depends on the number of field evaluations (NFE) the ODE solver spends, which
  only a forward pass tells (``model.function_evaluations()``). Its layer terms (the per-layer attention and the
  feed-forward) are counted per field evaluation: ``nfe`` evaluations per forward pass (default 1, i.e. the
  once-per-forward terms plus one evaluation; :func:`flops_per_evaluation` is the cost of one evaluation alone), so
  ``flops_per_token(config, n, nfe=model.function_evaluations())`` is the cost of that forward pass. The block-level
  terms (TransEvolve's interaction) are counted once per block, as the block computes them once.

With width 256, 4 heads, FF 1024, 6 layers (t = 64, so D = 2d and ``h t = d``), the Transformer encoder costs
``72 d^2 + 12 n d`` per token. The TransEvolve 1x6 encoder costs ``60 d^2 + 8 n d`` counted as in the issue
(kappa included: ratios 1.26x at n = 512, 1.36x at n = 2048) and about ``58 d^2 + 8 n d`` on the fast paths,
which never form kappa (ratios 1.29x and 1.37x).
"""

from __future__ import annotations

from typing import Literal

from transevolve.config import ModelConfig
from transevolve.modules.registry import get_attention
from transevolve.params import ParameterCount, count_parameters
from transevolve.schemes import get_scheme

__all__ = ["ParameterCount", "count_parameters", "flop_breakdown", "flops_per_evaluation", "flops_per_token"]


Path = Literal["fast", "reference"]


def _evaluations(c: ModelConfig, nfe: float | None) -> float:
    """Field evaluations of one stack in a forward pass: ``depth x scheme.evaluations``, or ``nfe`` (default 1) for
    a scheme that integrates its blocks (``adaptive``)."""
    scheme = get_scheme(c.scheme)
    if not scheme.integrates_block:
        if nfe is not None:
            raise ValueError(f"nfe applies to schemes whose cost depends on the ODE solver (adaptive); scheme "
                             f"{c.scheme!r} evaluates its fields {c.depth * scheme.evaluations} times per stack")
        return float(c.depth * scheme.evaluations)
    if nfe is None:
        return 1.0
    if not nfe >= 0:
        raise ValueError(f"nfe must be >= 0, got {nfe}")
    return float(nfe)


def _attention(c: ModelConfig, n: int, path: Path, evaluations: float) -> dict[str, float]:
    """Forward MACs per query token of one attention type (self or cross) over a stack, from the registry: the
    per-block module once per block, the per-layer module once per field evaluation (layer evaluation and scheme
    stage)."""
    spec = get_attention(c.attention)
    total = {"projections": 0.0, "attention_n2": 0.0}
    for key, value in spec.layer_macs(c, n, path).items():
        total[key] += evaluations * value
    for key, value in spec.block_macs(c, n, path).items():
        total[key] += c.num_blocks * value
    return total


def _feed_forward(c: ModelConfig, evaluations: float) -> dict[str, float]:
    scheme = get_scheme(c.scheme)
    per_module = 0 if c.ff_type == "none" else 2 * c.width * c.scheme_ff_width
    gate = 2 * c.width if scheme.extra_parameters(c.width) else 0           # rk2_gated: w . [G1; G2]
    return {"feed_forward": evaluations * scheme.feed_forwards * per_module + c.depth * gate}


def flop_breakdown(config: ModelConfig, seq_len: int, path: Path = "fast", nfe: float | None = None
                   ) -> dict[str, float]:
    """Forward FLOPs per token by component (``projections``, ``attention_n2``, ``feed_forward``, ``head``).

    Encoder-decoder: per target token with source and target both ``seq_len`` long (encoder + decoder + logits).
    ``path`` picks which TransEvolve computation is counted (see the module docstring). ``nfe``: ``scheme="adaptive"``
    only, the field evaluations of the forward pass (``model.function_evaluations()``; default 1: the layer terms
    per field evaluation).
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if path not in ("fast", "reference"):
        raise ValueError(f"path must be 'fast' or 'reference', got {path!r}")
    total: dict[str, float] = {"projections": 0.0, "attention_n2": 0.0, "feed_forward": 0.0, "head": 0.0}

    def add(parts: dict[str, float]) -> None:
        for key, value in parts.items():
            total[key] += value

    evaluations = _evaluations(config, nfe)
    feed_forward = _feed_forward(config, evaluations)
    stacks = int(config.has_encoder) + int(config.has_decoder)
    for _ in range(stacks):
        add(_attention(config, seq_len, path, evaluations))
        add(feed_forward)
    if config.kind == "encoder_decoder":
        add(_attention(config, seq_len, path, evaluations))                      # cross-attention
    if config.has_decoder:
        total["head"] += config.width * config.vocab_size
    if config.kind == "classifier":
        assert config.num_classes is not None
        outputs = 1 if config.num_classes == 2 else config.num_classes
        total["head"] += config.width * outputs / seq_len
    return {key: 2.0 * value for key, value in total.items()}


def flops_per_token(config: ModelConfig, seq_len: int, path: Path = "fast", nfe: float | None = None) -> float:
    """Forward FLOPs per token of ``config`` at sequence length ``seq_len`` (a training step: 3x this); ``nfe``
    as in :func:`flop_breakdown` (``scheme="adaptive"``)."""
    return sum(flop_breakdown(config, seq_len, path, nfe).values())


def flops_per_evaluation(config: ModelConfig, seq_len: int, path: Path = "fast") -> float:
    """Forward FLOPs per token of one field evaluation of ``scheme="adaptive"`` (one layer's attention and
    feed-forward at one time): the cost each extra evaluation adds, ``flops_per_token(nfe=k + 1) -
    flops_per_token(nfe=k)``."""
    if not get_scheme(config.scheme).integrates_block:
        raise ValueError(f"flops_per_evaluation is for scheme='adaptive' (scheme is {config.scheme!r}); use "
                         "flops_per_token")
    return flops_per_token(config, seq_len, path, nfe=1) - flops_per_token(config, seq_len, path, nfe=0)


def scheme_costs(config: ModelConfig, seq_len: int) -> list[dict[str, object]]:
    """Per registered scheme: field evaluations per layer, and the parameters and forward FLOPs per token of
    ``config`` with that scheme relative to ``sequential`` (schemes that ``config`` cannot take are skipped)."""
    from transevolve.schemes import SCHEMES

    base = config.replace(scheme="sequential", macaron_half_width=False)
    base_parameters, base_flops = count_parameters(base).non_embedding, flops_per_token(base, seq_len)
    rows: list[dict[str, object]] = []
    for name, scheme in SCHEMES.items():
        variants = [(name, {"scheme": name})]
        if name == "macaron":
            variants.append(("macaron (half width)", {"scheme": name, "macaron_half_width": True}))
        for label, changes in variants:
            try:
                variant = base.replace(**changes)
            except ValueError:
                continue
            # adaptive: FLOPs at one field evaluation per layer (NFE = N L); they scale with the solver's NFE.
            nfe = variant.depth if scheme.integrates_block else None
            evaluations = "NFE / (N L)" if scheme.integrates_block else scheme.evaluations
            rows.append({"scheme": label, "evaluations": evaluations,
                         "stages": scheme.stages, "parameters": count_parameters(variant).non_embedding,
                         "parameters_ratio": count_parameters(variant).non_embedding / base_parameters,
                         "flops_ratio": flops_per_token(variant, seq_len, nfe=nfe) / base_flops,
                         "doc": (scheme.__doc__ or "").strip().splitlines()[0] if scheme.__doc__ else ""})
    return rows
