"""Convert between ``fidelity="official"`` and ``fidelity="lean"``: the same function, fewer parameters.

Lean drops what provably cannot change the output of the official code:

- the query-side term ``rho`` and the time-time term ``gamma`` of every block interaction, which are constant
  along the softmax's key axis, and with them the time columns of ``W_K`` (``key_time``), which feed nothing
  else;
- the entries of the random feed-forward's singular values beyond ``min(in, out)``, which are never read.

``to_lean(official_model)`` returns a lean model that computes the same outputs (tests prove it).
"""

from __future__ import annotations

from torch import nn

from transevolve.checkpoint import load_state
from transevolve.models import build_model


def lean_state_dict(official_model: nn.Module) -> dict:
    """The official model's state dict with the inert entries removed (the layout of the lean model)."""
    config = official_model.config
    if config.fidelity != "official":
        raise ValueError(f"expected an official-fidelity model, got fidelity={config.fidelity!r}")
    lean = build_model(config.replace(fidelity="lean"))
    targets = lean.state_dict()
    state = {}
    for name, tensor in official_model.state_dict().items():
        if name not in targets:
            continue                                    # key_time: inert, dropped
        target = targets[name]
        if name.endswith("singular_values"):
            tensor = tensor[: target.shape[0]]          # entries beyond min(in, out) are never read
        state[name] = tensor.clone()
    return state


def to_lean(official_model: nn.Module) -> nn.Module:
    """A lean-fidelity copy of an official-fidelity model, computing the same function."""
    reference = next(official_model.parameters())
    lean = build_model(official_model.config.replace(fidelity="lean")).to(reference.device, reference.dtype)
    load_state(lean, lean_state_dict(official_model), source="official model")
    return lean.train(official_model.training)
