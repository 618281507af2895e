"""Layer-update schemes: how one layer combines its vector fields into a step, read as an ODE solver.

A layer offers its vector fields through :class:`LayerFields` (self-attention ``A``, optional cross-attention
``C``, feed-forward ``F``; each a function of the state ``x (b, n, d)`` and a time ``t``, returning an update of
the same shape). A :class:`Scheme` turns them into one step of size ``h`` from time ``t``. The same scheme code
serves the full forward pass and incremental decoding: only the fields it is handed differ.

| scheme | update (``h`` = 1 in the networks) | field evaluations | paper |
|---|---|---|---|
| ``sequential`` | ``x += hA(x); x += hC(x); x += hF(x)`` (Lie-Trotter + Euler) | 1 | Vaswani et al.; Lu et al. |
| ``parallel`` | ``x += h(A(x) + C(x) + F(x))`` (Euler on the summed field) | 1 | Zhong et al. |
| ``macaron`` | ``x += h/2 F1(x); x += hA(x); x += hC(x); x += h/2 F2(x)`` (Strang-Marchuk) | 1 (+1 FF) | Lu et al. |
| ``rk2`` | Heun on ``G = sequential layer - x``: ``x += h/2 (G1 + G2)``, ``G2`` at ``(x + hG1, t + h)`` | 2 | Li |
| ``rk2_gated`` | ``rk2`` with ``x += h(g G1 + (1 - g) G2)``, ``g = sigmoid(w [G1; G2] + b)`` per token | 2 | Li |
| ``rk4`` | classical Runge-Kutta on ``G`` (stages at ``t``, ``t + h/2``, ``t + h/2``, ``t + h``) | 4 | Li |
| ``adaptive`` | a block's layers as one ODE ``dx/dt = A_j + C_j + F_j``, by ``torchdiffeq`` | NFE | Zhong et al. |

``adaptive`` is not a per-layer step: the block integrates the summed field (:func:`summed_field`, ``parallel``'s
update divided by ``h``) of the layer whose weights hold at time ``t`` (``j = floor(t / share_layers)``) over
``[0, T]`` with an adaptive (or fixed-grid) solver (:meth:`transevolve.models.Block.integrate`); its cost is the
number of field evaluations (NFE) the solver spends. Schemes with ``integrates_block = True`` are driven that way.

Stages are numbered; a field evaluated at stage ``s`` sees the state of that stage (decoding caches its keys and
values per stage). Add a scheme by subclassing :class:`Scheme` with ``@register_scheme``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar, Protocol

import torch
from torch import nn


class LayerFields(Protocol):
    """The vector fields of one layer, bound to a forward pass (masks, block scores, trace) or a decoding step
    (cache). ``stage`` names the evaluation inside the step (caches and traces are keyed by it)."""

    has_cross: bool

    def attend(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        """Self-attention update ``(b, n, d)``."""
        ...

    def cross(self, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
        """Cross-attention update ``(b, n, d)`` (only when ``has_cross``)."""
        ...

    def feed(self, x: torch.Tensor, t: float, stage: int, index: int = 0) -> torch.Tensor:
        """Feed-forward update ``(b, n, d)``; ``index`` picks one of the scheme's feed-forward modules."""
        ...


def _scaled(update: torch.Tensor, h: float) -> torch.Tensor:
    return update if h == 1.0 else update * h


def sequential_update(fields: LayerFields, x: torch.Tensor, t: float, h: float, stage: int) -> torch.Tensor:
    """One Lie-Trotter step (today's pre-LN layer): ``(b, n, d) -> (b, n, d)``."""
    x = x + _scaled(fields.attend(x, t, stage), h)
    if fields.has_cross:
        x = x + _scaled(fields.cross(x, t, stage), h)
    return x + _scaled(fields.feed(x, t, stage), h)


class Scheme(nn.Module, ABC):
    """One layer's update rule. Subclasses set the class attributes and implement :meth:`step`.

    Attributes:
        name: the config value (``ModelConfig.scheme``).
        evaluations: vector-field evaluations per step (each evaluation runs every sub-layer once); the cost of a
            layer relative to ``sequential``, before ``feed_forwards``.
        feed_forwards: feed-forward modules per layer (Macaron has two).
        stages: distinct states at which the fields are evaluated (decoding caches keys and values per stage).
        stage_times: the time offsets (in units of ``h``) of the stages.
        integrates_block: the block integrates its layers as one ODE (:meth:`transevolve.models.Block.integrate`)
            instead of calling :meth:`step` once per layer evaluation.
    """

    name: ClassVar[str]
    evaluations: ClassVar[int] = 1
    feed_forwards: ClassVar[int] = 1
    stages: ClassVar[int] = 1
    stage_times: ClassVar[tuple[float, ...]] = (0.0,)
    integrates_block: ClassVar[bool] = False

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    @abstractmethod
    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        """``x (b, n, d)`` at time ``t`` -> the state after one step of size ``h``."""

    @classmethod
    def extra_parameters(cls, width: int) -> int:
        """Trainable parameters the scheme adds to each layer."""
        return 0


SCHEMES: dict[str, type[Scheme]] = {}


def register_scheme(cls: type[Scheme]) -> type[Scheme]:
    SCHEMES[cls.name] = cls
    return cls


def get_scheme(name: str) -> type[Scheme]:
    """The scheme class registered as ``name``; an unknown name lists the known ones."""
    if name not in SCHEMES:
        raise ValueError(f"unknown scheme {name!r}; known schemes: {sorted(SCHEMES)}")
    return SCHEMES[name]


@register_scheme
class Sequential(Scheme):
    name = "sequential"

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        return sequential_update(fields, x, t, h, stage=0)


@register_scheme
class Parallel(Scheme):
    name = "parallel"

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        return x + _scaled(summed_field(fields, x, t, 0), h)


@register_scheme
class Macaron(Scheme):
    name = "macaron"
    feed_forwards = 2

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        x = x + _scaled(fields.feed(x, t, 0, index=0), 0.5 * h)
        x = x + _scaled(fields.attend(x, t, 0), h)
        if fields.has_cross:
            x = x + _scaled(fields.cross(x, t, 0), h)
        return x + _scaled(fields.feed(x, t, 0, index=1), 0.5 * h)


def _layer_field(fields: LayerFields, x: torch.Tensor, t: float, stage: int) -> torch.Tensor:
    """``G(x, t)``: the residual of one sequential layer (ODE Transformer's ``F``), ``(b, n, d)``."""
    return sequential_update(fields, x, t, 1.0, stage) - x


@register_scheme
class RK2(Scheme):
    name = "rk2"
    evaluations = stages = 2
    stage_times = (0.0, 1.0)

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        first = _layer_field(fields, x, t, 0)
        second = _layer_field(fields, x + _scaled(first, h), t + h, 1)
        return x + _scaled(first + second, 0.5 * h)


@register_scheme
class GatedRK2(Scheme):
    """ODE Transformer's "learnable" RK2: a per-token gate ``g = sigmoid(w [G1; G2] + b)`` mixes the stages."""

    name = "rk2_gated"
    evaluations = stages = 2
    stage_times = (0.0, 1.0)

    def __init__(self, width: int) -> None:
        super().__init__(width)
        self.gate = nn.Linear(2 * width, 1)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)                        # starts as Heun (g = 1/2)

    @classmethod
    def extra_parameters(cls, width: int) -> int:
        return 2 * width + 1

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        first = _layer_field(fields, x, t, 0)
        second = _layer_field(fields, x + _scaled(first, h), t + h, 1)
        gate = torch.sigmoid(self.gate(torch.cat([first, second], dim=-1)))           # (b, n, 1)
        return x + _scaled(gate * first + (1 - gate) * second, h)


@register_scheme
class RK4(Scheme):
    name = "rk4"
    evaluations = stages = 4
    stage_times = (0.0, 0.5, 1.0)

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        k1 = _layer_field(fields, x, t, 0)
        k2 = _layer_field(fields, x + _scaled(k1, 0.5 * h), t + 0.5 * h, 1)
        k3 = _layer_field(fields, x + _scaled(k2, 0.5 * h), t + 0.5 * h, 2)
        k4 = _layer_field(fields, x + _scaled(k3, h), t + h, 3)
        return x + _scaled(k1 + 2 * k2 + 2 * k3 + k4, h / 6)


def summed_field(fields: LayerFields, x: torch.Tensor, t: float, stage: int = 0) -> torch.Tensor:
    """The parallel (summed) vector field ``A(x, t) + C(x, t) + F(x, t)``: ``(b, n, d) -> (b, n, d)``.

    ``parallel`` takes one Euler step of it; ``adaptive`` integrates it with an ODE solver.
    """
    update = fields.attend(x, t, stage)
    if fields.has_cross:
        update = update + fields.cross(x, t, stage)
    return update + fields.feed(x, t, stage)


@register_scheme
class Adaptive(Scheme):
    """Zhong et al.'s "neural ODE solver with a sophisticated integration scheme": a block's layers read as one
    ODE ``dx/dt = A_j(x, t) + C_j(x, t) + F_j(x, t)`` on ``[0, T]``, ``j = min(floor(t / share_layers), L / k - 1)``
    (piecewise constant in ``t``), integrated by ``torchdiffeq`` (``ModelConfig.ode_*``).

    The block does the integration (:meth:`transevolve.models.Block.integrate`); this class only marks the scheme.
    Its modules and parameters are those of ``parallel`` (one feed-forward per layer). ``evaluations = 1`` is the
    cost of one field evaluation; a forward pass costs as many as the solver spends (``model.function_evaluations()``).
    ``stage_times`` is metadata only: a layer is evaluated anywhere in its time interval, not only at its start.
    """

    name = "adaptive"
    integrates_block = True
    stage_times = (0.0, 0.5)

    def step(self, fields: LayerFields, x: torch.Tensor, t: float, h: float = 1.0) -> torch.Tensor:
        raise RuntimeError("scheme 'adaptive' has no per-layer step: the block integrates all its layers as one ODE "
                           "(Block.integrate), and incremental decoding is not available for it")
