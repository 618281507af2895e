"""scheme="adaptive": a block's layers as one neural ODE solved by torchdiffeq.

The solve matches a hand-written fixed-step RK4 of the same piecewise-constant summed field, the NFE is reported
and follows the tolerance, the adjoint's gradients match backpropagation through the solver, decoder kinds are
rejected with the reason, parameter counts match, and training logs the NFE.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.bench.flops import flop_breakdown, flops_per_evaluation, flops_per_token
from transevolve.config import apply_overrides
from transevolve.models import Block, _PassContext, _PassFields
from transevolve.modules.masks import AttentionMasks, padding
from transevolve.params import count_model_parameters
from transevolve.schemes import get_scheme, summed_field
from transevolve.train import RunConfig, TaskConfig, TrainConfig, train

SMALL = {"vocab_size": 20, "width": 16, "num_heads": 1, "time_dim": 16, "layers_per_block": 2, "num_blocks": 1,
         "max_length": 16, "dropout": 0.0, "scheme": "adaptive"}


def config(**overrides: object) -> ModelConfig:
    values = {"kind": "classifier", "num_classes": 3, **SMALL, **overrides}
    if values["kind"] != "classifier":
        values.pop("num_classes")
    return ModelConfig(**values)  # type: ignore[arg-type]


def ids_batch(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 20, (3, 7), generator=generator)
    ids[0, 5:] = 0                                                            # one padded row
    return ids


def rk4_reference(block: Block, x: torch.Tensor, masks: AttentionMasks, steps_per_unit: int = 200,
                  order: list[int] | None = None) -> torch.Tensor:
    """The block's ODE by classical RK4 with a fixed step, layer by layer (each layer's field on its own time
    interval ``[j k, (j + 1) k]``, the last one up to T), from the block's own modules; ``(b, n, d)`` -> after the
    final LayerNorm. ``order`` permutes the layers (a wrong field, to show the comparison can fail)."""
    assert block.ode is not None
    state = None
    if block.self_interaction is not None:
        state = block.self_interaction.block_state(x, x, masks, "reference", False)
    context = _PassContext(None, masks, None, state, None, None)
    layers = len(block.layers)
    bounds = [float(j * block.share) for j in range(layers)] + [block.ode.interval]
    for j, index in enumerate(order or range(layers)):
        fields = _PassFields(block.layers[index], context, (0, j))
        start, stop = bounds[j], bounds[j + 1]
        steps = max(1, round((stop - start) * steps_per_unit))
        h = (stop - start) / steps
        for i in range(steps):
            t = start + i * h
            k1 = summed_field(fields, x, t)
            k2 = summed_field(fields, x + 0.5 * h * k1, t + 0.5 * h)
            k3 = summed_field(fields, x + 0.5 * h * k2, t + 0.5 * h)
            k4 = summed_field(fields, x + h * k3, t + h)
            x = x + (h / 6) * (k1 + 2 * k2 + 2 * k3 + k4)
    return block.final_norm(x)


@pytest.mark.parametrize(("attention", "ff_type", "share", "interval"), [
    ("evolved", "full", 1, 0.0),
    ("evolved", "random", 1, 0.0),
    ("softmax", "full", 2, 3.0),        # one layer, integrated past layers_per_block
    ("softmax", "random", 1, 2.5),      # the last layer continues to T = 2.5
])
def test_tight_solve_matches_fixed_step_rk4(attention: str, ff_type: str, share: int, interval: float) -> None:
    torch.manual_seed(0)
    model = build_model(config(kind="encoder", attention=attention, ff_type=ff_type, share_layers=share,
                               ode_interval=interval, ode_rtol=1e-8, ode_atol=1e-8)).double().eval()
    block = model.encoder.blocks[0]
    ids = ids_batch()
    pad = padding(ids)
    masks = AttentionMasks(pad, pad, causal=False)
    with torch.no_grad():
        x = model.embedding(ids)
        solved = block(x, None, masks, None)
        reference = rk4_reference(block, x, masks)
        assert (solved - reference).abs().max() < 1e-4
        assert block.last_function_evaluations is not None and block.last_function_evaluations > 20
        assert (solved - block.final_norm(x)).abs().max() > 0.1                # the block did move the state
        if len(block.layers) > 1:                                               # the layers' order matters
            swapped = rk4_reference(block, x, masks, 50, order=[1, 0])
            assert (solved - swapped).abs().max() > 1e-2


@pytest.mark.parametrize("attention", ["evolved", "softmax"])
@pytest.mark.parametrize("share", [1, 2])
def test_euler_with_unit_steps_is_the_parallel_scheme(attention: str, share: int) -> None:
    """Fixed-grid Euler with step 1 evaluates layer j at t = j (right side of each jump): parallel's layer."""
    torch.manual_seed(0)
    base = {"attention": attention, "ff_type": "random", "share_layers": share, "num_blocks": 2}
    parallel = build_model(config(**base, scheme="parallel")).double().eval()
    euler = build_model(config(**base, ode_method="euler", ode_step_size=1.0)).double().eval()
    euler.load_state_dict(parallel.state_dict())
    ids = ids_batch()
    torch.testing.assert_close(euler(ids), parallel(ids), rtol=0, atol=1e-12)
    assert euler.function_evaluations() == 4 and parallel.function_evaluations() is None


def test_nfe_reported_and_grows_as_tolerance_shrinks() -> None:
    torch.manual_seed(0)
    counts = []
    for rtol in (1e-2, 1e-4, 1e-6):
        model = build_model(config(num_blocks=2, ode_rtol=rtol, ode_atol=rtol * 0.1)).double().eval()
        with torch.no_grad():
            model(ids_batch())
        per_block = [block.last_function_evaluations for block in model.encoder.blocks]
        assert all(count is not None and count > 0 for count in per_block)
        assert model.function_evaluations() == sum(per_block)                 # type: ignore[arg-type]
        counts.append(model.function_evaluations())
    assert counts[0] < counts[1] < counts[2], counts


def test_training_dropout_keeps_the_field_deterministic() -> None:
    """Dropout masks are held fixed across a forward's field evaluations (seeded per block and layer): the NFE
    stays that of a deterministic field, and the global RNG stream moves as in any forward."""
    torch.manual_seed(0)
    model = build_model(config(dropout=0.3, attention="softmax")).train()
    with torch.no_grad():
        model(ids_batch())
    trained = model.function_evaluations()
    model.eval()
    with torch.no_grad():
        model(ids_batch())
    assert trained is not None and trained < 4 * model.function_evaluations()  # type: ignore[operator]


@pytest.mark.parametrize(("attention", "training"), [("evolved", True), ("softmax", False)])
def test_adjoint_gradients_match_backpropagation(attention: str, training: bool) -> None:
    torch.manual_seed(0)
    base = {"attention": attention, "dropout": 0.1, "ode_rtol": 1e-6, "ode_atol": 1e-6, "attention_impl": "reference"}
    direct = build_model(config(**base)).double().train(training)
    adjoint = build_model(config(**base, ode_adjoint=True)).double().train(training)
    adjoint.load_state_dict(direct.state_dict())
    gradients = []
    for model in (direct, adjoint):
        torch.manual_seed(1)                                                    # same dropout masks
        (model(ids_batch()) ** 2).sum().backward()
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    expected, actual = gradients
    assert expected.keys() == actual.keys()
    if attention == "evolved":                      # the block-level interaction reaches the adjoint as its state
        assert any("self_interaction.query_proj" in name for name in actual)
    flat_expected = torch.cat([g.flatten() for g in expected.values()])
    flat_actual = torch.cat([actual[name].flatten() for name in expected])
    assert (flat_actual - flat_expected).norm() < 1e-2 * flat_expected.norm()
    for name, gradient in expected.items():
        if gradient.norm() > 1e-3 * flat_expected.norm():
            assert (actual[name] - gradient).norm() < 5e-2 * gradient.norm(), name


@pytest.mark.parametrize("kind", ["decoder", "encoder_decoder"])
def test_config_rejects_causal_kinds_with_the_reason(kind: str) -> None:
    with pytest.raises(ValueError) as info:
        config(kind=kind)
    message = str(info.value)
    for phrase in ("scheme='adaptive'", "error norm couples all positions", "depend on future tokens",
                   "incremental decoding could not equal recomputation"):
        assert phrase in message


def test_config_validates_ode_fields() -> None:
    with pytest.raises(ValueError, match="ode_method='scipy_solver' is not one of"):
        config(ode_method="scipy_solver")
    with pytest.raises(ValueError, match=r"ode_rtol=0\.0 must be positive"):
        config(ode_rtol=0.0)
    with pytest.raises(ValueError, match=r"ode_interval=1\.0 must be 0 .* more than layers_per_block - share_layers"):
        config(ode_interval=1.0)
    with pytest.raises(ValueError, match="ode_adjoint"):
        config(ode_adjoint="yes")
    assert config(ode_interval=1.0, share_layers=2).ode_interval == 1.0         # one layer: any T > 0
    changed = apply_overrides(config(), ["ode_interval=3", "ode_method=rk4", "ode_adjoint=true"])
    assert (changed.ode_interval, changed.ode_method, changed.ode_adjoint) == (3.0, "rk4", True)
    assert changed == changed.replace(ode_adjoint=False)                        # an execution choice
    with pytest.raises(RuntimeError, match="no per-layer step"):
        get_scheme("adaptive")(16).step(None, torch.zeros(1), 0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(("attention", "ff_type", "share"), [("evolved", "full", 1), ("evolved", "random", 2),
                                                             ("softmax", "full", 2), ("softmax", "random", 1)])
def test_parameter_count_matches_the_built_model(attention: str, ff_type: str, share: int) -> None:
    adaptive = config(attention=attention, ff_type=ff_type, share_layers=share, num_blocks=2)
    assert count_parameters(adaptive).total == count_model_parameters(build_model(adaptive))
    assert count_parameters(adaptive) == count_parameters(adaptive.replace(scheme="parallel"))


def test_flops_scale_with_nfe() -> None:
    adaptive = config(width=64, time_dim=64, layers_per_block=3)
    parallel = adaptive.replace(scheme="parallel")
    assert flops_per_token(adaptive, 32, nfe=3) == flops_per_token(parallel, 32)
    per_evaluation = flops_per_evaluation(adaptive, 32)
    assert flops_per_token(adaptive, 32, nfe=10) == pytest.approx(flops_per_token(adaptive, 32, nfe=0)
                                                                  + 10 * per_evaluation)
    with pytest.raises(ValueError, match="nfe applies"):
        flops_per_token(parallel, 32, nfe=3)


def test_intermediates_record_block_outputs_not_attention_weights() -> None:
    torch.manual_seed(0)
    model = build_model(config(attention="softmax", ode_interval=2.5)).double().eval()
    ids = ids_batch()
    logits, intermediates = model(ids, return_intermediates=True)
    trace = intermediates.encoder
    assert set(trace.block_outputs) == {0} and not trace.self_attention
    assert list(trace.layer_outputs) == [(0, 0), (0, 1), (0, 2)]               # t = 1, 2, T = 2.5
    torch.testing.assert_close(logits, model(ids), rtol=1e-9, atol=1e-9)


def test_training_logs_nfe(tmp_path: Path) -> None:
    task = TaskConfig(name="max_digit", options={"train_size": 64, "validation_size": 16, "test_size": 16})
    model = {"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.1, "max_length": 16,
             "scheme": "adaptive"}
    run = RunConfig(task=task, model=model, train=TrainConfig(max_steps=3, batch_size=16, eval_every=0, log_every=1,
                                                              warmup_steps=1))
    train(run, tmp_path / "run", quiet=True)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    logged = [row["nfe"] for row in rows if row["split"] == "train"]
    assert len(logged) == 3 and all(isinstance(n, int) and n > 0 for n in logged)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["mean_nfe"] == pytest.approx(sum(logged) / 3)


def test_flops_with_measured_nfe_match_counted_matmuls() -> None:
    """``flops_per_token(nfe=model.function_evaluations())`` is the forward's matmul count (softmax attention's
    fused n x n part is invisible to the counter; the solver's own small combinations of stages add ~1/d)."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    adaptive = config(attention="softmax", width=64, num_heads=2, time_dim=32, num_blocks=2, max_length=32)
    model = build_model(adaptive).eval()
    ids = torch.randint(1, 20, (2, 24))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(ids)
    nfe = model.function_evaluations()
    parts = flop_breakdown(adaptive, 24, nfe=nfe)
    analytic = (sum(parts.values()) - parts["attention_n2"]) * ids.numel()
    assert float(counter.get_total_flops()) == pytest.approx(analytic, rel=1e-2)
