"""Parameter counts from the config alone: equal to the built models, and the official numbers."""

from __future__ import annotations

import pytest
import torch
from conftest import Variant, tiny_config, variant_params

from transevolve import ModelConfig, build_model, count_parameters
from transevolve.params import ParameterCount, count_model_parameters


@pytest.mark.parametrize("variant", variant_params())
def test_count_matches_built_model(variant: Variant) -> None:
    config = variant.config()
    model = build_model(config)
    counted = count_parameters(config)
    assert counted.total == count_model_parameters(model)
    assert counted.total == sum(p.numel() for p in model.parameters())
    assert counted.embedding == config.vocab_size * config.width
    # Per part: the parameters under each top-level module.
    parts = {"embedding": 0, "encoder": 0, "decoder": 0, "head": 0}
    for name, parameter in model.named_parameters():
        top = name.split(".", 1)[0]
        parts["head" if top in ("pool_norm", "head") else top] += parameter.numel()
    assert counted.to_dict() == {**parts, "total": counted.total, "non_embedding": counted.total - parts["embedding"]}


@pytest.mark.parametrize("kind", ["encoder_decoder", "encoder", "classifier", "decoder"])
def test_count_tracks_sizes(kind: str) -> None:
    """Counts move with every size field (guards against a count that ignores one)."""
    base = tiny_config(kind=kind, ff_type="random")
    for change in ({"num_blocks": 3}, {"layers_per_block": 3}, {"ff_multiplier": 2}, {"vocab_size": 40},
                   {"width": 128, "time_dim": 64}, {"fidelity": "lean"}, {"num_heads": 4, "time_dim": 16}):
        config = base.replace(**change)
        assert count_parameters(config).total == count_model_parameters(build_model(config)), change
        if "num_heads" not in change:     # h * tau = d is fixed for evolved attention: same count
            assert count_parameters(config).total != count_parameters(base).total, change


def test_binary_classifier_head_is_one_sigmoid_unit() -> None:
    three = count_parameters(tiny_config(kind="classifier", num_classes=3))
    two = count_parameters(tiny_config(kind="classifier", num_classes=2))
    d = 64
    assert two.head == 2 * d + d + 1
    assert three.head == 2 * d + 3 * d + 3
    assert two.encoder == three.encoder and two.decoder == 0
    model = build_model(tiny_config(kind="classifier", num_classes=2))
    assert model.head.weight.shape == (1, d)


# Official grid: width 512, 8 heads, FF x4, official fidelity, encoder-decoder (docs section 2).
OFFICIAL = [
    # name, ff_type, attention, layers_per_block, num_blocks, encoder, decoder, non_embedding
    ("fullFF-1x6", "full", "evolved", 6, 1, 16_284_672, 19_963_904, 36_248_576),
    ("fullFF-2x3", "full", "evolved", 3, 2, 18_382_848, 24_159_232, 42_542_080),
    ("randomFF-1x6", "random", "evolved", 6, 1, 3_717_120, 7_396_352, 11_113_472),
    ("randomFF-2x3", "random", "evolved", 3, 2, 5_815_296, 11_591_680, 17_406_976),
    ("transformer-base", "full", "softmax", 6, 1, 18_915_328, 25_225_216, 44_140_544),
]


@pytest.mark.parametrize(("name", "ff_type", "attention", "per_block", "blocks", "encoder", "decoder", "total"),
                         OFFICIAL, ids=[row[0] for row in OFFICIAL])
def test_official_encoder_decoder_counts(name: str, ff_type: str, attention: str, per_block: int, blocks: int,
                                         encoder: int, decoder: int, total: int) -> None:
    config = ModelConfig(kind="encoder_decoder", width=512, num_heads=8, ff_multiplier=4, ff_type=ff_type,
                         attention=attention, layers_per_block=per_block, num_blocks=blocks, fidelity="official")
    counted = count_parameters(config)
    assert counted.non_embedding == total
    assert counted.encoder == encoder
    assert counted.decoder == decoder
    assert counted.head == 0
    # With the authors' En-De vocabulary (33,719 lines), the shared embedding is added once.
    assert count_parameters(config.replace(vocab_size=33_719)).total == total + 33_719 * 512


def test_official_presets_match_the_grid() -> None:
    from transevolve import PRESETS

    expected = {"transevolve-full-1x6": 36_248_576, "transevolve-full-2x3": 42_542_080,
                "transevolve-random-1x6": 11_113_472, "transevolve-random-2x3": 17_406_976,
                "transformer-base": 44_140_544}
    for name, total in expected.items():
        assert count_parameters(PRESETS[name]).non_embedding == total, name


def test_official_building_blocks() -> None:
    """Docs section 2: Layer1 2*D^2, Layer2 d^2+3d, full FF 2,100,736, random FF 6,144, block LN 1,024."""
    def encoder(**kw) -> int:
        config = ModelConfig(kind="encoder", width=512, num_heads=8, layers_per_block=1, num_blocks=1, **kw)
        return count_parameters(config).encoder

    d, big = 512, 1024
    assert encoder(ff_type="full") == 2 * big * big + (d * d + 3 * d) + 2_100_736 + 1_024
    assert encoder(ff_type="random") == 2 * big * big + (d * d + 3 * d) + 6_144 + 1_024
    # Lean drops W_K's time columns (524,288 per Layer1) and 1,536 unread singular values per 4d->d projection.
    assert encoder(ff_type="random") - encoder(ff_type="random", fidelity="lean") == 524_288 + 1_536


ENCODER_ONLY = [
    ("fullFF-1", "full", "evolved", 6, 1, 4_079_104),
    ("fullFF-2", "full", "evolved", 3, 2, 4_603_904),
    ("randomFF-1", "random", "evolved", 6, 1, 941_056),
    ("randomFF-2", "random", "evolved", 3, 2, 1_465_856),
    ("softmax-6", "full", "softmax", 6, 1, 4_739_072),
]


@pytest.mark.parametrize(("name", "ff_type", "attention", "per_block", "blocks", "total"), ENCODER_ONLY,
                         ids=[row[0] for row in ENCODER_ONLY])
def test_encoder_only_d256_counts(name: str, ff_type: str, attention: str, per_block: int, blocks: int,
                                  total: int) -> None:
    """Docs section 2, encoder-only d=256, H=8, tau=32 (the official code would need d/H == tau)."""
    config = ModelConfig(kind="encoder", width=256, num_heads=8, time_dim=32, ff_type=ff_type, attention=attention,
                         layers_per_block=per_block, num_blocks=blocks)
    counted = count_parameters(config)
    assert counted.non_embedding == total
    assert counted.encoder == total and counted.decoder == 0 and counted.head == 0


def test_small_official_counts_match_built_models() -> None:
    """The same formulas on a built model at official-like head geometry (d/H = tau = 64), kept small."""
    for ff_type in ("full", "random"):
        for attention in ("evolved", "softmax"):
            config = ModelConfig(kind="encoder_decoder", vocab_size=50, width=128, num_heads=2, time_dim=64,
                                 layers_per_block=2, num_blocks=2, ff_type=ff_type, attention=attention,
                                 max_length=32)
            torch.manual_seed(0)
            assert count_parameters(config).total == count_model_parameters(build_model(config))


def test_parameter_count_properties() -> None:
    count = ParameterCount(embedding=10, encoder=20, decoder=30, head=4)
    assert count.total == 64
    assert count.non_embedding == 54
    assert count.to_dict() == {"embedding": 10, "encoder": 20, "decoder": 30, "head": 4, "total": 64,
                               "non_embedding": 54}
