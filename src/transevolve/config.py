"""One frozen, validated configuration object for every model of the library.

Variants are values of this object, never subclasses:

- ``attention="evolved"`` is TransEvolve (Dutta et al., NeurIPS 2021, arXiv 2109.15142): the query-key
  interaction is computed once per block of ``layers_per_block`` layers and evolved over depth;
  ``attention="softmax"`` is the standard pre-LayerNorm Transformer built from the same embeddings,
  feed-forward, norms and heads.
- ``ff_type="full"`` is a learned feed-forward; ``"random"`` the TransEvolve-randomFF projection built from
  fixed depth-dependent random matrices with trainable singular values and biases.
- ``fidelity="official"`` reproduces the official TensorFlow code parameter for parameter, inert terms and
  dead parameters included; ``"lean"`` drops what provably cannot change the output (same function,
  fewer parameters).

Dimension legend used across the package: ``b`` batch, ``n`` sequence (``q`` queries, ``k`` keys), ``d`` width,
``h`` heads, ``t`` time width (tau), ``D = d + h * t`` the TransEvolve score width.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal, get_args

ModelKind = Literal["encoder_decoder", "encoder", "classifier", "decoder"]
#: Registered attention mechanisms (:mod:`transevolve.modules.registry`); the built-in ones:
AttentionKind = str   # "evolved" | "softmax" | "minimal" | "sparse" | "linear" | ... (any registered name)
FeedForwardKind = Literal["full", "random", "none"]
QKForm = Literal["separate", "collapsed", "symmetric"]
VOForm = Literal["separate", "collapsed", "identity"]
SparsePattern = Literal["strided", "fixed"]
SparseCombine = Literal["merged", "interleaved", "heads"]
LinearFeatureMap = Literal["elu", "relu"]
Fidelity = Literal["official", "lean"]
Pooling = Literal["mean", "masked_mean"]
AttentionImpl = Literal["reference", "factorised", "low_memory", "auto"]
#: ``torchdiffeq`` methods accepted by ``scheme="adaptive"``: embedded-error adaptive Runge-Kutta pairs, and
#: fixed-grid Runge-Kutta methods (``ode_step_size``). Multistep (Adams) methods are left out (they do not restart
#: at the piecewise-constant field's jumps), and so is ``scipy_solver`` (no autograd).
ADAPTIVE_ODE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")
FIXED_ODE_METHODS = ("euler", "midpoint", "heun2", "heun3", "rk4")


def _choices(literal: Any) -> tuple[str, ...]:
    return get_args(literal)


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model's architecture. Validated at construction.

    Attributes:
        kind: ``encoder_decoder`` (translation), ``encoder`` (hidden states), ``classifier`` (encoder + pooled
            head) or ``decoder`` (causal language model without cross-attention).
        vocab_size: shared vocabulary size V (source, target and output projection are tied); id 0 is padding.
        width: model width d.
        num_heads: attention heads h.
        layers_per_block: L, the layers that share one block-level interaction (TransEvolve). For the
            softmax Transformer a block is simply L layers followed by a LayerNorm.
        num_blocks: N blocks per stack; total depth is N * L.
        attention: ``evolved`` (TransEvolve), ``softmax`` (standard Transformer), ``minimal`` (softmax attention
            with the reductions of Bermeitinger et al. 2024, arXiv 2410.13732, chosen by ``qk_form`` and ``vo_form``),
            ``sparse`` (Sparse Transformer, Child et al. 2019, arXiv 1904.10509: softmax attention restricted to a
            strided or fixed pattern, chosen by the ``sparse_*`` fields; :mod:`transevolve.modules.sparse_attention`)
            or ``linear`` (Linear Transformer, Katharopoulos et al. 2020, arXiv 2006.16236: kernel attention
            ``phi(q) . phi(k)`` with prefix sums when causal; :mod:`transevolve.modules.linear_attention`).
        ff_type: ``full`` (learned), ``random`` (TransEvolve-randomFF) or ``none`` (no feed-forward: the layer's
            feed-forward field is zero and has no parameters; ``ff_multiplier`` is then unused).
        ff_multiplier: inner feed-forward width is ``ff_multiplier * width`` (official: 4).
        dropout: dropout rate at the official sites (projected Q/K, sub-layer outputs).
        max_length: longest sequence accepted (the size of the sinusoidal position table).
        layer_norm_eps: LayerNorm epsilon (official Keras default 1e-3; PyTorch's default would be 1e-5).
        time_dim: tau, the per-head width of the time signal; the official code hard-codes 64 and needs
            ``width / num_heads == time_dim``.
        time_period: the constant P in the time signal ``T_l[k] = theta_k * sin(pi * l * k / P)``
            (official: 64).
        fidelity: ``official`` or ``lean`` (see module docstring).
        num_classes: classes of a ``classifier`` (2 means one sigmoid unit, as in the official code).
        pooling: classifier pooling: ``mean`` over all positions, pads included (official), or
            ``masked_mean`` over non-pad positions.
        scheme: the layer-update scheme (:mod:`transevolve.schemes`): ``sequential`` (Lie-Trotter, the standard
            pre-LN layer), ``parallel`` (Zhong et al.), ``macaron`` (Strang-Marchuk), ``rk2``, ``rk2_gated``, ``rk4``
            (ODE Transformer), ``adaptive`` (a block's layers as one ODE solved by ``torchdiffeq``, see ``ode_*``).
            TransEvolve computes its block interaction once per block under every scheme and evolves it with the
            time signal at each stage's (or field evaluation's) time.
        share_layers: k consecutive layers of a block share one layer's weights (1 = none, layers_per_block =
            all): the block then integrates a piecewise-constant (k = L: autonomous up to the time signal) field.
        macaron_half_width: halve the inner width of Macaron's two feed-forwards, so that a layer has the
            parameters of one full-width feed-forward (as the Macaron paper does).
        qk_form: ``attention="minimal"`` only: the query-key form, ``separate`` (``W_Q``, ``W_K`` per head),
            ``collapsed`` (one (d, d) ``W_QK`` per head, unprojected keys; exact for one head, a superset for
            several) or ``symmetric`` (``W_K = W_Q``: a lower-trapezoidal (d, d/h) factor ``T`` per head and a
            shared bias, Gram-matrix logits; one head: ``W_QK = T T^T``, d (d + 1) / 2 weights). Formulas:
            :mod:`transevolve.modules.minimal_attention`.
        vo_form: ``attention="minimal"`` only: the value-output form, ``separate`` (``W_V``, ``W_O``),
            ``collapsed`` (one (d, d) ``W_VO`` per head, the heads summed, one output bias) or ``identity`` (no
            ``W_V``, ``W_O``: each head mixes its slice of the normalised inputs, a convex combination).
        sparse_pattern: ``attention="sparse"`` only (as are all ``sparse_*`` fields): ``strided`` (the previous
            ``sparse_block_size`` positions and every ``sparse_block_size``-th position back) or ``fixed`` (the
            query's block of ``sparse_block_size`` positions and the last ``sparse_summary`` positions of every
            block). Causal in decoders, both directions in encoders; exact sets in
            :mod:`transevolve.modules.sparse_attention`. Cross-attention is dense softmax over the memory.
        sparse_block_size: l, the stride / block length (about ``sqrt(n)`` for sequences of length n).
        sparse_summary: c, the summary positions at the end of every block (``sparse_pattern="fixed"`` only;
            ``1 <= c <= l``).
        sparse_combine: how the two sets of a pattern are combined: ``merged`` (their union, every head and layer;
            default), ``heads`` (the first ``ceil(h/2)`` heads attend to the first set, the others to the second)
            or ``interleaved`` (the distinct layers of a block alternate: even ones the first set, odd ones the
            second).
        linear_feature_map: ``attention="linear"`` only: the positive feature map ``phi`` applied to queries and
            keys per head: ``elu`` (``elu(x) + 1``, the paper's) or ``relu`` (``max(x, 0)``).
        ode_method: ``scheme="adaptive"`` only (as are all ``ode_*`` fields): the ``torchdiffeq`` method that
            integrates each block, ``dx/dt = A_j(x, t) + C_j(x, t) + F_j(x, t)`` on ``[0, T]`` with ``j = min(floor(t
            / share_layers), L / share_layers - 1)``. Adaptive: ``dopri5`` (default), ``dopri8``, ``bosh3``,
            ``fehlberg2``, ``adaptive_heun`` (told the layer boundaries as ``jump_t``, so they step onto each jump
            and restart there); fixed grid: ``euler``, ``midpoint``, ``heun2``, ``heun3``, ``rk4`` (``ceil(T /
            ode_step_size)`` equal steps, evaluations perturbed to the right side of a boundary). Not available for
            kinds with causal decoding (``decoder``, ``encoder_decoder``).
        ode_rtol, ode_atol: relative and absolute tolerances of the adaptive methods' error control (RMS norm over
            the whole ``(b, n, d)`` state: every position and batch row shares the step sizes).
        ode_interval: T, the integration interval of a block (0 = ``layers_per_block``). T must exceed
            ``layers_per_block - share_layers`` so that every layer's weights hold for some time; past
            ``layers_per_block`` the last layer's field continues.
        ode_step_size: the step of the fixed-grid methods (ignored by the adaptive ones).
        random_ff_seed: seed of the fixed random tensors of the random feed-forward (they are saved with the
            model as buffers, so a checkpoint reproduces them).
        attention_impl: how evolved attention is computed (an execution choice, not architecture: it is left out
            of config equality). ``reference`` materialises the official logits ``A0 + key bias (+ inert
            terms) - 1e9 M`` and a softmax per layer. ``factorised`` computes ``E = exp(A0 - row max)`` once per
            block and per layer only ``E (w * V) / (E w)`` with ``w = exp(key bias - max)``: one batched matmul,
            no n x n exponentials. ``low_memory`` folds the key bias into augmented queries/keys of a fused
            ``scaled_dot_product_attention`` and never stores an n x n tensor. ``auto`` (default) picks ``reference``
            while a layer's logits (b, h, q, k) have at most 4M entries (faster there on CPU), then ``factorised``
            unless its n x n tensor would be large, then ``low_memory``. The fast paths skip the inert terms,
            agree with ``reference`` to float rounding (and rescue rows whose factorised denominator would
            underflow), and fall back to ``reference`` when intermediates are requested or under float16
            autocast (bf16 autocast keeps the fast paths, with float32 normalisers).
            Softmax attention always uses fused attention (its explicit path when weights are requested) whatever
            this says. Sparse and linear attention: ``reference`` computes the explicit n x n logits (kernel
            matrix) with the pattern (causal) mask; every other value selects their fast path, which never forms an
            n x n tensor (sparse: the pattern's blocks only; linear: global or chunked prefix sums); both fall back
            to ``reference`` when attention weights are requested.
        ode_adjoint: ``scheme="adaptive"``: backpropagate with ``torchdiffeq.odeint_adjoint`` (memory independent
            of the number of steps; the field is solved again backwards in time) instead of through the solver's
            operations. An execution choice, left out of equality. Evolved attention then uses its ``reference``
            path, whose block state is plain autograd tensors the adjoint can take as parameters.
    """

    kind: ModelKind = "encoder_decoder"
    vocab_size: int = 32000
    width: int = 512
    num_heads: int = 8
    layers_per_block: int = 6
    num_blocks: int = 1
    attention: AttentionKind = "evolved"
    ff_type: FeedForwardKind = "full"
    ff_multiplier: int = 4
    dropout: float = 0.1
    max_length: int = 10000
    layer_norm_eps: float = 1e-3
    time_dim: int = 64
    time_period: float = 64.0
    fidelity: Fidelity = "official"
    num_classes: int | None = None
    pooling: Pooling = "mean"
    random_ff_seed: int = 1
    scheme: str = "sequential"
    share_layers: int = 1
    macaron_half_width: bool = False
    qk_form: QKForm = "separate"
    vo_form: VOForm = "separate"
    sparse_pattern: SparsePattern = "strided"
    sparse_block_size: int = 32
    sparse_summary: int = 4
    sparse_combine: SparseCombine = "merged"
    linear_feature_map: LinearFeatureMap = "elu"
    ode_method: str = "dopri5"
    ode_rtol: float = 1e-3
    ode_atol: float = 1e-4
    ode_interval: float = 0.0
    ode_step_size: float = 1.0
    # Execution choices and labels: not part of the architecture, left out of equality.
    attention_impl: AttentionImpl = field(default="auto", compare=False)
    ode_adjoint: bool = field(default=False, compare=False)
    # Not part of the architecture; kept so that a saved config says where it came from.
    name: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        errors = self._errors()
        if errors:
            raise ValueError("invalid ModelConfig:\n  - " + "\n  - ".join(errors))

    def _errors(self) -> list[str]:
        errors: list[str] = []
        for name, literal in (
            ("kind", ModelKind),
            ("ff_type", FeedForwardKind),
            ("qk_form", QKForm),
            ("vo_form", VOForm),
            ("sparse_pattern", SparsePattern),
            ("sparse_combine", SparseCombine),
            ("linear_feature_map", LinearFeatureMap),
            ("fidelity", Fidelity),
            ("pooling", Pooling),
            ("attention_impl", AttentionImpl),
        ):
            value = getattr(self, name)
            if value not in _choices(literal):
                errors.append(f"{name}={value!r} is not one of {list(_choices(literal))}")
        from transevolve.modules.registry import ATTENTIONS
        from transevolve.schemes import SCHEMES

        if self.attention not in ATTENTIONS:
            errors.append(f"attention={self.attention!r} is not one of the registered mechanisms {sorted(ATTENTIONS)}")
        if self.scheme not in SCHEMES:
            errors.append(f"scheme={self.scheme!r} is not one of the registered schemes {sorted(SCHEMES)}")
        for name in ("vocab_size", "width", "num_heads", "layers_per_block", "num_blocks", "ff_multiplier",
                     "max_length", "time_dim", "share_layers", "sparse_block_size", "sparse_summary"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                errors.append(f"{name}={value!r} must be a positive integer")
        if errors:
            return errors
        if self.vocab_size < 2:
            errors.append(f"vocab_size={self.vocab_size} must be at least 2 (id 0 is padding)")
        if not 0.0 <= self.dropout < 1.0:
            errors.append(f"dropout={self.dropout} must be in [0, 1)")
        if not self.layer_norm_eps > 0:
            errors.append(f"layer_norm_eps={self.layer_norm_eps} must be positive")
        if not self.time_period > 0:
            errors.append(f"time_period={self.time_period} must be positive")
        if self.width % 2:
            errors.append(f"width={self.width} must be even (sinusoidal positions use sin/cos halves)")
        if self.width % self.num_heads:
            errors.append(
                f"width={self.width} is not divisible by num_heads={self.num_heads}; "
                f"choose num_heads among {[h for h in range(1, 17) if self.width % h == 0]}"
            )
        elif self.attention == "evolved" and self.width // self.num_heads != self.time_dim:
            errors.append(
                f"evolved attention needs width/num_heads == time_dim, got {self.width}/{self.num_heads} = "
                f"{self.width // self.num_heads} but time_dim={self.time_dim}: the time signal T_l of width "
                f"{self.width} is split into {self.num_heads} heads and paired with the tau={self.time_dim} time "
                f"columns (issue D4 of the official code). Use num_heads={max(1, self.width // self.time_dim)} "
                f"or time_dim={self.width // self.num_heads} (the official code only supports time_dim=64)"
            )
        if self.ff_type == "random" and (self.width % 2 or (self.ff_multiplier * self.width) % 2):
            errors.append("ff_type='random' needs even input and output widths")
        if self.kind == "classifier":
            if self.num_classes is None or self.num_classes < 2:
                errors.append(
                    f"kind='classifier' needs num_classes >= 2 (got {self.num_classes}); "
                    "2 classes use one sigmoid unit as in the official code"
                )
        elif self.num_classes is not None:
            errors.append(f"num_classes={self.num_classes} is only meaningful for kind='classifier' "
                          f"(kind={self.kind!r}); leave it None")
        if self.layers_per_block % self.share_layers:
            errors.append(f"share_layers={self.share_layers} must divide layers_per_block={self.layers_per_block} "
                          f"(k consecutive layers share one layer's weights); choose among "
                          f"{[k for k in range(1, self.layers_per_block + 1) if self.layers_per_block % k == 0]}")
        if not isinstance(self.macaron_half_width, bool):
            errors.append(f"macaron_half_width={self.macaron_half_width!r} must be true or false")
        elif self.macaron_half_width and self.scheme != "macaron":
            errors.append("macaron_half_width=true halves the two feed-forwards of scheme='macaron' (to match the "
                          f"parameters of one full-width feed-forward); scheme is {self.scheme!r}")
        elif self.macaron_half_width and (self.ff_width // 2) % 2 and self.ff_type == "random":
            errors.append("macaron_half_width with ff_type='random' needs ff_multiplier * width divisible by 4")
        if self.attention != "minimal" and (self.qk_form, self.vo_form) != ("separate", "separate"):
            errors.append(f"qk_form={self.qk_form!r} and vo_form={self.vo_form!r} choose the projections of "
                          f"attention='minimal' only (attention is {self.attention!r}); leave them 'separate'")
        errors.extend(self._sparse_linear_errors())
        if self.ff_type == "none" and self.scheme == "macaron":
            errors.append("ff_type='none' with scheme='macaron': Macaron splits the feed-forward into two half steps "
                          "around attention; without a feed-forward it is exactly scheme='sequential' (use that)")
        if self.ff_type == "none" and self.macaron_half_width is True:
            errors.append("macaron_half_width=true halves the inner width of the feed-forwards, but ff_type='none' "
                          "has none")
        errors.extend(self._ode_errors())
        if self.kind != "classifier" and self.pooling != "mean":
            errors.append(f"pooling={self.pooling!r} is only meaningful for kind='classifier'")
        return errors

    def _sparse_linear_errors(self) -> list[str]:
        """The ``sparse_*`` and ``linear_*`` fields: only with their attention, and consistent with the model."""
        errors: list[str] = []
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        for mechanism, prefix in (("sparse", "sparse_"), ("linear", "linear_")):
            changed = [name for name in defaults if name.startswith(prefix) and getattr(self, name) != defaults[name]]
            if self.attention != mechanism and changed:
                settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in changed)
                errors.append(f"{settings}: the {prefix}* fields configure attention={mechanism!r} only (attention "
                              f"is {self.attention!r}); leave them at their defaults")
        if self.attention != "sparse":
            return errors
        if self.sparse_pattern == "fixed" and self.sparse_summary > self.sparse_block_size:
            errors.append(f"sparse_summary={self.sparse_summary} must be at most sparse_block_size="
                          f"{self.sparse_block_size}: the summary is the last c positions of every block of l")
        if self.sparse_pattern == "strided" and self.sparse_summary != defaults["sparse_summary"]:
            errors.append(f"sparse_summary={self.sparse_summary} is read by sparse_pattern='fixed' only (the strided "
                          f"pattern has no summary positions); leave it at {defaults['sparse_summary']}")
        if self.sparse_combine == "heads" and self.num_heads < 2:
            errors.append("sparse_combine='heads' splits the heads between the pattern's two sets and needs "
                          f"num_heads >= 2 (got {self.num_heads}); use 'merged'")
        distinct = self.layers_per_block // self.share_layers
        if self.sparse_combine == "interleaved" and distinct < 2:
            errors.append("sparse_combine='interleaved' alternates the pattern's two sets over the distinct layers "
                          f"of a block and needs layers_per_block / share_layers >= 2 (got {self.layers_per_block} / "
                          f"{self.share_layers}); use 'merged' or 'heads'")
        return errors

    def _ode_errors(self) -> list[str]:
        """The ``ode_*`` fields (checked whatever the scheme) and ``scheme="adaptive"``'s constraints."""
        errors: list[str] = []
        methods = [*ADAPTIVE_ODE_METHODS, *FIXED_ODE_METHODS]
        if self.ode_method not in methods:
            errors.append(f"ode_method={self.ode_method!r} is not one of {methods}")
        numbers: dict[str, float] = {}
        for name in ("ode_rtol", "ode_atol", "ode_interval", "ode_step_size"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value):
                errors.append(f"{name}={value!r} must be a finite number")
            else:
                numbers[name] = float(value)
        for name in ("ode_rtol", "ode_atol", "ode_step_size"):
            if name in numbers and not numbers[name] > 0:
                errors.append(f"{name}={numbers[name]} must be positive")
        interval = numbers.get("ode_interval")
        if interval is not None and interval != 0:
            shortest = self.layers_per_block - self.share_layers
            if interval < 0 or interval <= shortest:
                errors.append(f"ode_interval={interval} must be 0 (= layers_per_block) or more than layers_per_block - "
                              f"share_layers = {shortest}, so that every layer's weights hold for some time")
        if not isinstance(self.ode_adjoint, bool):
            errors.append(f"ode_adjoint={self.ode_adjoint!r} must be true or false")
        if self.scheme == "adaptive" and self.has_decoder:
            errors.append(f"scheme='adaptive' is not available for kind={self.kind!r} (causal decoding): the "
                          "step-size controller's error norm couples all positions, so a position's output would "
                          "depend on future tokens, and incremental decoding could not equal recomputation; use it "
                          "with kind 'encoder' or 'classifier'")
        return errors

    # ----------------------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Total number of layers per stack (N * L)."""
        return self.num_blocks * self.layers_per_block

    @property
    def head_width(self) -> int:
        """Per-head width of values (and of softmax-attention queries/keys): d / h."""
        return self.width // self.num_heads

    @property
    def score_width(self) -> int:
        """TransEvolve's block-level projection width D = d + h * tau."""
        return self.width + self.num_heads * self.time_dim

    @property
    def ff_width(self) -> int:
        return self.ff_multiplier * self.width

    @property
    def scheme_ff_width(self) -> int:
        """Inner width of each feed-forward module of a layer (Macaron's two halves with ``macaron_half_width``)."""
        return self.ff_width // 2 if self.macaron_half_width else self.ff_width

    @property
    def has_decoder(self) -> bool:
        return self.kind in ("encoder_decoder", "decoder")

    @property
    def has_encoder(self) -> bool:
        return self.kind in ("encoder_decoder", "encoder", "classifier")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from a mapping; unknown keys fail with the list of valid ones."""
        if not isinstance(data, dict):
            raise TypeError(f"a model config must be a mapping, got {type(data).__name__}")
        valid = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - valid)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; valid keys are {sorted(valid)}")
        return cls(**data)


def _preset(**kw: Any) -> ModelConfig:
    return ModelConfig(**kw)


#: Named presets: the official grid (d=512, 8 heads) and small CPU-sized models.
PRESETS: dict[str, ModelConfig] = {
    "transevolve-full-1x6": _preset(name="transevolve-full-1x6", ff_type="full"),
    "transevolve-full-2x3": _preset(name="transevolve-full-2x3", ff_type="full", layers_per_block=3,
                                    num_blocks=2),
    "transevolve-random-1x6": _preset(name="transevolve-random-1x6", ff_type="random"),
    "transevolve-random-2x3": _preset(name="transevolve-random-2x3", ff_type="random", layers_per_block=3,
                                      num_blocks=2),
    "transformer-base": _preset(name="transformer-base", attention="softmax"),
    "debug": _preset(name="debug", vocab_size=64, width=64, num_heads=2, layers_per_block=2, num_blocks=1,
                     time_dim=32, max_length=256),
}


def _parse_value(name: str, text: str, current: Any) -> Any:
    lowered = text.strip().lower()
    if lowered in ("none", "null") and not isinstance(current, str):      # ff_type=none is a value
        return None
    if isinstance(current, bool):
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"{name}={text!r}: expected true or false")
    kind = type(current) if current is not None else int
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"{name}={text!r}: expected a value of type {kind.__name__}") from None


def apply_overrides(config: ModelConfig, overrides: list[str] | tuple[str, ...]) -> ModelConfig:
    """Apply ``key=value`` strings (e.g. ``["width=256", "ff_type=random"]``) to a config, with validation."""
    valid = {f.name: f for f in dataclasses.fields(ModelConfig)}
    changes: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form key=value (e.g. width=256)")
        key, text = item.split("=", 1)
        key = key.strip().removeprefix("model.")
        if key not in valid:
            raise ValueError(f"unknown model config key {key!r}; valid keys are {sorted(valid)}")
        changes[key] = _parse_value(key, text, getattr(config, key))
    return config.replace(**changes)
