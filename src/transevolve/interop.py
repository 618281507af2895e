"""Load weights exported from the official TensorFlow TransEvolve (``LCS2-IIITD/TransEvolve`` @ 1c9cddc).

The format is the one of ``tests/fixtures/official-tf/README.md``: ``NAME.npz`` (one array per Keras attribute
path, plus inputs, outputs and intermediates) and ``NAME.json`` beside it (the manifest: config, and the kind of
every array). :func:`from_official_npz` builds the matching model, in official fidelity and eval mode, from any
such pair: every size (width, heads, layers, blocks, vocabulary, classes, feed-forward type) comes from the
manifest. :func:`check_official_outputs` replays the stored inputs and reports the largest deviations.

Layout conventions of the official arrays: Keras kernels and ``WO`` are (in, out), so a ``Linear`` weight is the
transpose; ``WQ``/``WK`` are (D, D) with the token part used transposed, so ``Linear(d, D).weight = W[:, :d]`` and
the time part is ``W[:, d:].reshape(D, h, 64)``; ``svals`` is (in, 1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from transevolve.config import ModelConfig
from transevolve.models import ClassifierModel, EncoderDecoderModel, EncoderModel, Intermediates, build_model

FIXTURE_FORMAT = "transevolve-official-tf-fixture"

_MODEL_CLASSES = {
    "EncoderDecoderModel": "encoder_decoder",
    "EncoderModel": "encoder",
    "ClassificationModel": "classifier",
}


class OfficialFormatError(ValueError):
    """The files are not a readable official-weights fixture; the message says what is wrong."""


@dataclass
class OfficialFixture:
    """A parsed fixture: its manifest, its arrays and the model config it describes."""

    manifest: dict[str, Any]
    arrays: dict[str, np.ndarray]
    config: ModelConfig

    def of_kind(self, *kinds: str) -> dict[str, np.ndarray]:
        kinds_of = {key: meta.get("kind") for key, meta in self.manifest["arrays"].items()}
        return {key: value for key, value in self.arrays.items() if kinds_of.get(key) in kinds}


def _manifest_path(path: Path) -> Path:
    return path.with_suffix(".json")


def read_official_fixture(path: str | Path) -> OfficialFixture:
    """Read ``NAME.npz`` and ``NAME.json`` (the manifest beside it) without executing anything."""
    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".npz")
    manifest_path = _manifest_path(path)
    for p in (path, manifest_path):
        if not p.is_file():
            raise OfficialFormatError(f"{p} not found: an official fixture is a NAME.npz with its manifest "
                                      "NAME.json in the same folder")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise OfficialFormatError(f"{manifest_path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FIXTURE_FORMAT:
        raise OfficialFormatError(f"{manifest_path} is not a manifest of format {FIXTURE_FORMAT!r} "
                                  f"(found format={manifest.get('format') if isinstance(manifest, dict) else None!r})")
    if manifest.get("format_version") != 1:
        raise OfficialFormatError(f"{manifest_path}: format_version {manifest.get('format_version')!r} is not "
                                  "supported (only 1)")
    for key in ("config", "arrays"):
        if not isinstance(manifest.get(key), dict):
            raise OfficialFormatError(f"{manifest_path} has no {key!r} mapping")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except Exception as error:  # zipfile.BadZipFile, ValueError, OSError, EOFError: all mean unreadable
        raise OfficialFormatError(f"{path} is not a readable .npz archive ({type(error).__name__}: {error})"
                                  ) from error
    missing = sorted(set(manifest["arrays"]) - set(arrays))
    if missing:
        raise OfficialFormatError(f"{path} lacks arrays listed in its manifest: {missing[:5]}"
                                  + (" ..." if len(missing) > 5 else ""))
    return OfficialFixture(manifest, arrays, config_from_manifest(manifest["config"]))


def config_from_manifest(cfg: dict[str, Any]) -> ModelConfig:
    """The official-fidelity :class:`ModelConfig` described by a manifest's ``config`` section."""
    try:
        kind = _MODEL_CLASSES[cfg["model_class"]]
        kwargs = cfg.get("constructor_kwargs", {})
        num_classes = cfg.get("num_classes", kwargs.get("num_classes")) if kind == "classifier" else None
        time_dim = int(cfg.get("time_dim", 64))
        return ModelConfig(
            kind=kind,  # type: ignore[arg-type]
            vocab_size=int(cfg["vocab_V"]),
            width=int(cfg["hidden_dim_d"]),
            num_heads=int(cfg["num_head_H"]),
            layers_per_block=int(cfg["layers_per_block_L"]),
            num_blocks=int(cfg["blocks_N"]),
            ff_type=cfg["projection_type"],
            ff_multiplier=int(cfg.get("ffn_dim", 4 * int(cfg["hidden_dim_d"]))) // int(cfg["hidden_dim_d"]),
            dropout=float(kwargs.get("dropout", 0.1)),
            time_dim=time_dim,
            fidelity="official",
            num_classes=None if num_classes is None else int(num_classes),
            pooling="mean",
            name=str(cfg.get("name", "")),
        )
    except KeyError as error:
        raise OfficialFormatError(f"the manifest config lacks {error}; found keys {sorted(cfg)}") from error


# ---------------------------------------------------------------------------------------------------------
# Official attribute path -> our parameter names.

_PATH_RULES: list[tuple[str, str]] = [
    (r"^encoder\.tiedEmbedding\.shared_weights$", "embedding.weight"),       # classifier
    (r"^tiedEmbedding\.shared_weights$", "embedding.weight"),
    (r"^encoder\.encoder\.encoder\.(\d+)\.", r"encoder.blocks.\1."),         # classifier
    (r"^encoder\.encoder\.(\d+)\.", r"encoder.blocks.\1."),
    (r"^decoder\.decoder\.(\d+)\.", r"decoder.blocks.\1."),
    (r"\.(?:encoder|decoder)\.(\d+)\.", r".layers.\1."),
    (r"\.compute_(?:attention|decoder_attention)\.", ".self_interaction."),
    (r"\.compute_encdec_attention\.", ".cross_interaction."),
    (r"\.apply_(?:attention|decoder_attention)\.", ".self_attention."),
    (r"\.apply_encdec_attention\.", ".cross_attention."),
    (r"\.apply_projection\.", ".feed_forward."),
    (r"\.output_normalization\.", ".final_norm."),
    (r"(_attention)\.norm_layer\.", r"\1.value_norm."),
    (r"\.feed_forward\.norm_layer\.", ".feed_forward.norm."),
    (r"\.linear_1\.", ".expand."),
    (r"\.linear_2\.", ".contract."),
    (r"^out_norm\.", "pool_norm."),
    (r"^dense_layer\.", "head."),
    (r"\.gamma$", ".weight"),
    (r"\.beta$", ".bias"),
    (r"(_attention)\.coeffs$", r"\1.time_amplitudes"),
    (r"(_attention)\.WO$", r"\1.output_proj.weight"),
    (r"\.kernel$", ".weight"),
    (r"\.svals$", ".singular_values"),
]


def _translate(key: str) -> str:
    name = key
    for pattern, replacement in _PATH_RULES:
        name = re.sub(pattern, replacement, name)
    return name


def official_state_dict(fixture: OfficialFixture) -> dict[str, torch.Tensor]:
    """The fixture's ``param`` and ``const`` arrays under our names and layouts."""
    config = fixture.config
    d, h, t = config.width, config.num_heads, config.time_dim
    state: dict[str, torch.Tensor] = {}

    def put(name: str, value: np.ndarray, source: str) -> None:
        if name in state:
            raise OfficialFormatError(f"two official arrays map to {name!r} (the second is {source!r})")
        state[name] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))

    for key, value in fixture.of_kind("param", "const").items():
        name = _translate(key)
        if name.endswith((".WQ", ".WK")):
            prefix, which = name.rsplit(".", 1)
            role = "query" if which == "WQ" else "key"
            if value.ndim != 2 or value.shape[0] != value.shape[1] or value.shape[0] != d + h * t:
                raise OfficialFormatError(f"{key} has shape {value.shape}, expected ({d + h * t}, {d + h * t})")
            put(f"{prefix}.{role}_proj.weight", value[:, :d], key)
            put(f"{prefix}.{role}_time", value[:, d:].reshape(value.shape[0], h, t), key)
        elif name.endswith((".output_proj.weight", "head.weight")) or (
                name.endswith(".weight") and (".expand." in name or ".contract." in name)):
            put(name, value.T, key)                  # Keras (in, out) -> Linear (out, in)
        elif name.endswith(".singular_values"):
            put(name, value.reshape(-1), key)
        else:
            put(name, value, key)
    return state


def load_official_weights(model: nn.Module, fixture: OfficialFixture) -> None:
    """Copy the fixture's weights into ``model``; every parameter and buffer must get exactly one value."""
    state = official_state_dict(fixture)
    expected = model.state_dict()
    unused = sorted(set(state) - set(expected))
    unfilled = sorted(set(expected) - set(state))
    if unused or unfilled:
        raise OfficialFormatError(
            "the official arrays do not match the model built from the manifest:"
            + (f"\n  official arrays with no model parameter: {unused[:8]}" if unused else "")
            + (f"\n  model parameters with no official array: {unfilled[:8]}" if unfilled else ""))
    for name, value in state.items():
        if tuple(value.shape) != tuple(expected[name].shape):
            raise OfficialFormatError(f"{name}: official array has shape {tuple(value.shape)}, the model "
                                      f"expects {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=True)


def from_official_npz(path: str | Path) -> nn.Module:
    """Build the model an official fixture describes, load its weights, and return it in eval mode.

    Args:
        path: ``NAME.npz`` (or ``NAME.json``); the manifest ``NAME.json`` must sit beside it.

    Returns:
        An :class:`EncoderDecoderModel`, :class:`EncoderModel` or :class:`ClassifierModel` in float32, official
        fidelity. Call it on the fixture's inputs (int64, 0 = padding) to reproduce the official outputs; the
        classifier returns logits, ``model.probabilities(logits)`` gives the official probabilities.
    """
    fixture = read_official_fixture(path)
    model = build_model(fixture.config)
    load_official_weights(model, fixture)
    return model.eval()


def run_on_fixture(model: nn.Module, fixture: OfficialFixture) -> dict[str, torch.Tensor]:
    """Our outputs and intermediates on the fixture's inputs, under the fixture's key names."""
    arrays = fixture.arrays
    src = torch.from_numpy(arrays["input.src_ids"].astype(np.int64))
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        if isinstance(model, EncoderDecoderModel):
            tgt = torch.from_numpy(arrays["input.tgt_ids"].astype(np.int64))
            logits, inter = model(src, tgt, return_intermediates=True)
            out["output.logits"] = logits
        elif isinstance(model, ClassifierModel):
            logits, inter = model(src, return_intermediates=True)
            out["output.probs"] = _official_probabilities(logits)
            out["intermediate.logits"] = logits
            assert inter.pooled is not None
            out["intermediate.pooled"] = inter.pooled
            out["intermediate.pooled_normed"] = model.pool_norm(inter.pooled)
        elif isinstance(model, EncoderModel):
            hidden, inter = model(src, return_intermediates=True)
            for key in fixture.of_kind("output"):
                out[key] = hidden
        else:
            raise TypeError(f"no fixture replay for {type(model).__name__}")
    _add_intermediates(out, inter)
    return out


def _official_probabilities(logits: torch.Tensor) -> torch.Tensor:
    """The official head's activation: sigmoid of the single unit (shape (b, 1)), softmax otherwise."""
    return torch.sigmoid(logits) if logits.shape[-1] == 1 else torch.softmax(logits, dim=-1)


def _add_intermediates(out: dict[str, torch.Tensor], inter: Intermediates) -> None:
    for prefix, embedded, trace in (("enc", inter.encoder_input, inter.encoder),
                                    ("dec", inter.decoder_input, inter.decoder)):
        if embedded is None or trace is None:
            continue
        out[f"intermediate.{prefix}_in"] = embedded
        for (block, depth), state in trace.layer_outputs.items():
            out[f"intermediate.{prefix}_block{block}_layer{depth}_out"] = state
        for block, state in trace.block_outputs.items():
            out[f"intermediate.{prefix}_block{block}_out"] = state
        last = max(trace.block_outputs)
        out[f"intermediate.{'encoder' if prefix == 'enc' else 'decoder'}_output"] = trace.block_outputs[last]
        if prefix == "enc" and trace.block_scores:
            scores = trace.block_scores[0]
            out["intermediate.enc_block0_A0"] = scores.initial
            out["intermediate.enc_block0_A1K"] = scores.key_time
            if scores.query_time is not None and scores.time_time is not None:
                out["intermediate.enc_block0_A1Q"] = scores.query_time
                out["intermediate.enc_block0_A2"] = scores.time_time[None, :, None, :]


def check_official_outputs(path: str | Path, model: nn.Module | None = None) -> dict[str, float]:
    """Max absolute error of our model against every stored output and intermediate of a fixture."""
    fixture = read_official_fixture(path)
    if model is None:
        model = build_model(fixture.config)
        load_official_weights(model, fixture)
    model.eval()
    ours = run_on_fixture(model, fixture)
    errors: dict[str, float] = {}
    for key, expected in fixture.of_kind("output", "intermediate").items():
        if key in ours:
            actual = ours[key].detach().to(torch.float64)
            target = torch.from_numpy(expected.astype(np.float64))
            if actual.shape != target.shape:
                raise AssertionError(f"{key}: our shape {tuple(actual.shape)} != official {tuple(target.shape)}")
            errors[key] = float((actual - target).abs().max())
    return errors
