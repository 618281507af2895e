"""transevolve: Transformers seen as dynamical systems.

TransEvolve (Dutta et al., NeurIPS 2021), faithful to the official TensorFlow code, and a standard Transformer
built from the same trunk. Quick start::

    import torch
    from transevolve import ModelConfig, build_model, count_parameters

    config = ModelConfig(kind="classifier", vocab_size=256, width=128, num_heads=2, layers_per_block=3,
                         num_classes=10, pooling="masked_mean")
    model = build_model(config)
    logits = model(torch.randint(1, 256, (4, 100)))          # (4, 10)
"""

from transevolve.checkpoint import load_model, save_model
from transevolve.config import PRESETS, ModelConfig
from transevolve.models import (
    ClassifierModel,
    DecoderModel,
    EncoderDecoderModel,
    EncoderModel,
    Intermediates,
    build_model,
)
from transevolve.params import ParameterCount, count_parameters, dead_parameter_masks

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ClassifierModel",
    "DecoderModel",
    "EncoderDecoderModel",
    "EncoderModel",
    "Intermediates",
    "ModelConfig",
    "ParameterCount",
    "build_model",
    "count_parameters",
    "dead_parameter_masks",
    "load_model",
    "save_model",
]
