"""Checkpoints: config.json + model.safetensors round trips and clear errors on bad checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ALL_VARIANTS, Variant, model_inputs, tiny_config, variant_params

from transevolve import build_model, load_model, save_model
from transevolve.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    UnverifiedCheckpointWarning,
    load_state,
    load_weights,
    read_config,
    tensor_sha256,
    verify_weights,
)

ROUND_TRIP = [v for v in ALL_VARIANTS if v.fidelity == "official" and v.num_classes != 2] + [
    v for v in ALL_VARIANTS if v.kind == "encoder_decoder" and v.fidelity == "lean" and v.ff_type == "random"]


def _built(config, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(config)


@pytest.mark.parametrize("variant", variant_params(ROUND_TRIP))
def test_round_trip_identical_outputs(tmp_path: Path, variant: Variant) -> None:
    config = variant.config(name="round-trip")
    model = _built(config).eval()
    directory = save_model(model, tmp_path / "ckpt")
    assert (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()
    torch.manual_seed(123)                       # loading must not depend on the global RNG
    loaded = load_model(directory)
    assert not loaded.training
    assert type(loaded) is type(model)
    assert loaded.config == config and loaded.config.name == "round-trip"
    saved_state, loaded_state = model.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    for name in saved_state:
        assert torch.equal(saved_state[name], loaded_state[name]), name
    inputs = model_inputs(config)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))


def test_random_ff_buffers_come_from_the_file(tmp_path: Path) -> None:
    """The fixed random tensors are stored: editing random_ff_seed in config.json does not change them."""
    config = tiny_config(kind="decoder", ff_type="random")
    model = _built(config).eval()
    save_model(model, tmp_path)
    buffers = {n: b for n, b in model.state_dict().items() if n.endswith((".coeffs", ".phases"))}
    assert buffers
    payload = json.loads((tmp_path / CONFIG_FILE).read_text())
    payload["model"]["random_ff_seed"] = 99
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    loaded = load_model(tmp_path)
    assert loaded.config.random_ff_seed == 99
    fresh = build_model(config.replace(random_ff_seed=99))
    for name, buffer in buffers.items():
        assert torch.equal(loaded.state_dict()[name], buffer), name
        assert not torch.equal(fresh.state_dict()[name], buffer), name
    inputs = model_inputs(config)
    with torch.no_grad():
        assert torch.equal(loaded(*inputs), model(*inputs))


def test_loading_into_a_different_config_names_the_keys(tmp_path: Path) -> None:
    model = _built(tiny_config(kind="encoder", num_blocks=2))
    save_model(model, tmp_path)
    payload = json.loads((tmp_path / CONFIG_FILE).read_text())
    payload["model"]["num_blocks"] = 3
    (tmp_path / CONFIG_FILE).write_text(json.dumps(payload))
    with pytest.raises(CheckpointError, match="does not match the model") as info:
        load_model(tmp_path)
    message = str(info.value)
    assert "missing" in message and "encoder.blocks.2." in message


def test_load_state_reports_unexpected_and_mis_shaped_keys() -> None:
    source = _built(tiny_config(kind="encoder", ff_type="random"))
    target = _built(tiny_config(kind="encoder", ff_type="full"))
    with pytest.raises(CheckpointError) as info:
        load_state(target, source.state_dict(), source="their checkpoint")
    message = str(info.value)
    assert message.startswith("their checkpoint does not match")
    assert "unexpected" in message and "singular_values" in message
    assert "missing" in message and "expand.weight" in message
    wide = _built(tiny_config(kind="encoder", ff_multiplier=2))
    with pytest.raises(CheckpointError, match=r"wrong shape .*expand.weight: \(128, 64\) vs model \(256, 64\)"):
        load_state(_built(tiny_config(kind="encoder")), wide.state_dict())


@pytest.mark.parametrize("keep", [0.5, 0.9, 16, 4])
def test_truncated_weights(tmp_path: Path, keep: float) -> None:
    save_model(_built(tiny_config(kind="classifier")), tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    data = weights.read_bytes()
    weights.write_bytes(data[: int(len(data) * keep) if keep < 1 else int(keep)])
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_model(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_model(tmp_path)
    save_model(_built(tiny_config(kind="encoder")), tmp_path)
    (tmp_path / CONFIG_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"config\.json not found"):
        load_model(tmp_path)
    save_model(_built(tiny_config(kind="encoder")), tmp_path)
    (tmp_path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors not found"):
        load_model(tmp_path)


def test_bad_config_json(tmp_path: Path) -> None:
    save_model(_built(tiny_config(kind="encoder")), tmp_path)
    path = tmp_path / CONFIG_FILE
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        read_config(tmp_path)
    path.write_text(json.dumps({"format": "something-else", "model": {}}))
    with pytest.raises(CheckpointError, match="not a transevolve model config"):
        read_config(tmp_path)
    path.write_text(json.dumps({"format": "transevolve-model", "model": {"width": 63}}))
    with pytest.raises(CheckpointError, match="invalid model config"):
        load_model(tmp_path)
    path.write_text(json.dumps({"format": "transevolve-model", "model": {"colour": "red"}}))
    with pytest.raises(CheckpointError, match="unknown ModelConfig keys"):
        load_model(tmp_path)


def test_save_model_rejects_foreign_modules(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="transevolve model"):
        save_model(torch.nn.Linear(2, 2), tmp_path)


def test_checkpoint_error_is_a_value_error() -> None:
    assert issubclass(CheckpointError, ValueError)


# --------------------------------------------------------------------------------------------------------
# Checksums: overwritten tensor bytes fail to load, naming the tensor


def _tensor_region(path: Path, name: str) -> tuple[int, int]:
    """Absolute byte range of tensor ``name`` in a safetensors file."""
    blob = path.read_bytes()
    header_size = int.from_bytes(blob[:8], "little")
    begin, end = json.loads(blob[8:8 + header_size])[name]["data_offsets"]
    return 8 + header_size + begin, 8 + header_size + end


def test_flipped_tensor_bytes_are_detected(tmp_path: Path) -> None:
    model = _built(tiny_config(kind="classifier"))
    save_model(model, tmp_path)
    weights = tmp_path / WEIGHTS_FILE
    name = sorted(model.state_dict())[3]
    begin, end = _tensor_region(weights, name)
    data = bytearray(weights.read_bytes())
    data[begin + (end - begin) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_model(tmp_path)
    message = str(info.value)
    assert name in message and "1 tensor(s)" in message and str(weights) in message
    with pytest.raises(CheckpointError, match=name.replace(".", r"\.")):
        load_weights(weights)


def test_load_weights_returns_the_verified_tensors(tmp_path: Path) -> None:
    model = _built(tiny_config(kind="decoder", ff_type="random"))
    save_model(model, tmp_path)
    state = load_weights(tmp_path / WEIGHTS_FILE, "cpu")
    assert state.keys() == model.state_dict().keys()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert verify_weights(tmp_path / WEIGHTS_FILE) is True


def test_checksums_cover_every_dtype(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    tensors = {"bf16": torch.randn(3, 5).to(torch.bfloat16), "bool": torch.rand(7) > 0.5,
               "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 4), "long": torch.arange(6)}
    path = tmp_path / "t.safetensors"
    save_file(tensors, str(path), metadata={"sha256": json.dumps({k: tensor_sha256(v) for k, v in tensors.items()})})
    assert verify_weights(path) is True
    begin, _ = _tensor_region(path, "long")
    data = bytearray(path.read_bytes())
    data[begin] ^= 1
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="long"):
        verify_weights(path)


def test_files_without_checksums_load_with_a_warning(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    model = _built(tiny_config(kind="encoder"))
    save_model(model, tmp_path)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp_path / WEIGHTS_FILE), metadata={"format": "transevolve-model"})  # the old format
    with pytest.warns(UnverifiedCheckpointWarning, match="no checksums"):
        loaded = load_model(tmp_path)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items())
