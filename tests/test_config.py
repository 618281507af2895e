"""Config validation and input validation: clear errors for invalid configs and invalid token ids."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from conftest import tiny_config

from transevolve import PRESETS, ModelConfig, build_model

# --------------------------------------------------------------------------------------------------------
# Valid configs


def test_tiny_config_and_presets_are_valid() -> None:
    config = tiny_config()
    assert config.depth == 4 and config.head_width == 32 and config.score_width == 64 + 2 * 32
    assert config.ff_width == 256
    for name, preset in PRESETS.items():
        assert preset.name == name
    assert PRESETS["transevolve-full-2x3"].depth == 6 == PRESETS["transevolve-full-1x6"].depth


def test_config_is_frozen_and_replace_validates() -> None:
    config = tiny_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 128  # type: ignore[misc]
    assert config.replace(num_blocks=3).num_blocks == 3
    with pytest.raises(ValueError, match="num_blocks"):
        config.replace(num_blocks=0)


@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder", "classifier", "decoder"])
def test_dict_and_json_round_trip(kind: str) -> None:
    config = tiny_config(kind=kind, ff_type="random", fidelity="lean", name="x")
    assert ModelConfig.from_dict(config.to_dict()) == config
    assert ModelConfig.from_dict(json.loads(config.to_json())) == config
    assert ModelConfig.from_dict(config.to_dict()).name == "x"


def test_kind_properties() -> None:
    assert tiny_config(kind="encoder_decoder").has_encoder and tiny_config(kind="encoder_decoder").has_decoder
    assert tiny_config(kind="classifier").has_encoder and not tiny_config(kind="classifier").has_decoder
    assert tiny_config(kind="decoder").has_decoder and not tiny_config(kind="decoder").has_encoder
    assert not tiny_config(kind="encoder").has_decoder


# --------------------------------------------------------------------------------------------------------
# Invalid configs


def test_width_not_divisible_by_heads() -> None:
    with pytest.raises(ValueError, match="not divisible by num_heads=3") as info:
        tiny_config(num_heads=3)
    assert "choose num_heads among" in str(info.value)


def test_evolved_needs_head_width_equal_to_time_dim() -> None:
    with pytest.raises(ValueError, match="time_dim") as info:
        tiny_config(num_heads=4)          # 64 / 4 = 16 != 32
    message = str(info.value)
    assert "evolved" in message and "16" in message and "32" in message
    # The softmax Transformer has no time signal: the same sizes are fine.
    assert tiny_config(num_heads=4, attention="softmax").num_heads == 4


@pytest.mark.parametrize(("field", "value"), [("kind", "seq2seq"), ("attention", "performer"), ("ff_type", "moe"),
                                              ("fidelity", "exact"), ("pooling", "max")])
def test_bad_literal_values(field: str, value: str) -> None:
    with pytest.raises(ValueError, match=f"{field}='{value}' is not one of") as info:
        tiny_config(**{field: value})
    assert str(info.value).count("'") >= 4   # the valid choices are listed


@pytest.mark.parametrize("field", ["vocab_size", "width", "num_heads", "layers_per_block", "num_blocks",
                                   "ff_multiplier", "max_length", "time_dim"])
@pytest.mark.parametrize("value", [0, -2, 2.5, True, "8"])
def test_sizes_must_be_positive_integers(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"{field}=.* must be a positive integer"):
        tiny_config(**{field: value})


def test_classifier_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes >= 2"):
        ModelConfig(kind="classifier", vocab_size=31, width=64, num_heads=2, time_dim=32)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        tiny_config(kind="classifier", num_classes=1)
    with pytest.raises(ValueError, match="only meaningful for kind='classifier'"):
        tiny_config(kind="encoder", num_classes=3)
    with pytest.raises(ValueError, match="pooling='masked_mean' is only meaningful"):
        tiny_config(kind="decoder", pooling="masked_mean")


@pytest.mark.parametrize("dropout", [-0.1, 1.0, 1.5])
def test_dropout_range(dropout: float) -> None:
    with pytest.raises(ValueError, match=r"dropout=.* must be in \[0, 1\)"):
        tiny_config(dropout=dropout)


def test_other_invalid_values() -> None:
    with pytest.raises(ValueError, match="vocab_size=1 must be at least 2"):
        tiny_config(vocab_size=1)
    with pytest.raises(ValueError, match="layer_norm_eps"):
        tiny_config(layer_norm_eps=0.0)
    with pytest.raises(ValueError, match="time_period"):
        tiny_config(time_period=-1.0)
    with pytest.raises(ValueError, match="width=63 must be even"):
        tiny_config(width=63, num_heads=1, attention="softmax")


def test_several_errors_are_reported_together() -> None:
    with pytest.raises(ValueError) as info:
        tiny_config(dropout=2.0, layer_norm_eps=-1.0)
    assert "dropout" in str(info.value) and "layer_norm_eps" in str(info.value)


def test_from_dict_unknown_keys_lists_valid_keys() -> None:
    data = {**tiny_config().to_dict(), "hidden_size": 64, "n_layers": 2}
    with pytest.raises(ValueError, match=r"unknown ModelConfig keys \['hidden_size', 'n_layers'\]") as info:
        ModelConfig.from_dict(data)
    message = str(info.value)
    for field in dataclasses.fields(ModelConfig):
        assert f"'{field.name}'" in message
    with pytest.raises(TypeError, match="mapping"):
        ModelConfig.from_dict([("width", 64)])  # type: ignore[arg-type]


def test_build_model_rejects_non_config() -> None:
    with pytest.raises(TypeError, match="ModelConfig"):
        build_model(tiny_config().to_dict())  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------------------
# Invalid inputs


@pytest.fixture(scope="module")
def models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {kind: build_model(tiny_config(kind=kind)).eval()
            for kind in ("encoder_decoder", "encoder", "classifier", "decoder")}


def _call(model: torch.nn.Module, ids: object) -> None:
    if model.config.kind == "encoder_decoder":
        good = torch.ones(2, 5, dtype=torch.long)
        model(ids, good)
    else:
        model(ids)


KINDS = ["encoder_decoder", "encoder", "classifier", "decoder"]


@pytest.mark.parametrize("kind", KINDS)
def test_ids_out_of_range(models, kind: str) -> None:
    with pytest.raises(ValueError, match=r"holds ids in \[1, 31\] but the vocabulary is \[0, 31\)"):
        _call(models[kind], torch.tensor([[1, 31, 2], [3, 4, 5]]))
    with pytest.raises(ValueError, match=r"ids in \[-1, "):
        _call(models[kind], torch.tensor([[1, -1, 2], [3, 4, 5]]))


@pytest.mark.parametrize("kind", KINDS)
def test_sequence_longer_than_max_length(models, kind: str) -> None:
    with pytest.raises(ValueError, match="length 65 > max_length=64"):
        _call(models[kind], torch.ones(2, 65, dtype=torch.long))
    _call(models[kind], torch.ones(2, 64, dtype=torch.long))   # the limit itself is fine


@pytest.mark.parametrize("kind", KINDS)
def test_float_and_bool_ids_rejected(models, kind: str) -> None:
    with pytest.raises(TypeError, match=r"integer token ids .*torch\.float32"):
        _call(models[kind], torch.ones(2, 5))
    with pytest.raises(TypeError, match=r"torch\.bool"):
        _call(models[kind], torch.ones(2, 5, dtype=torch.bool))


@pytest.mark.parametrize("kind", KINDS)
def test_wrong_rank_rejected(models, kind: str) -> None:
    with pytest.raises(ValueError, match=r"shape \(batch, length\), got shape \(5,\)"):
        _call(models[kind], torch.ones(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"got shape \(1, 2, 5\)"):
        _call(models[kind], torch.ones(1, 2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        _call(models[kind], torch.ones(2, 0, dtype=torch.long))


@pytest.mark.parametrize("kind", KINDS)
def test_non_tensor_rejected(models, kind: str) -> None:
    with pytest.raises(TypeError, match=r"must be a torch\.Tensor of token ids, got list"):
        _call(models[kind], [[1, 2, 3]])


def test_encoder_decoder_target_is_validated(models) -> None:
    model = models["encoder_decoder"]
    src = torch.ones(2, 5, dtype=torch.long)
    with pytest.raises(ValueError, match=r"tgt holds ids in \[1, 40\]"):
        model(src, torch.tensor([[1, 40], [1, 2]]))
    with pytest.raises(TypeError, match="tgt must hold integer"):
        model(src, torch.ones(2, 3))
    with pytest.raises(ValueError, match="tgt has batch 3 but the memory has batch 2"):
        model(src, torch.ones(3, 4, dtype=torch.long))


def test_int32_ids_are_accepted(models) -> None:
    ids = torch.tensor([[1, 2, 3, 0]], dtype=torch.int32)
    with torch.no_grad():
        torch.testing.assert_close(models["classifier"](ids), models["classifier"](ids.long()))
