"""``transevolve compare``: train several models on one task and tabulate what each costs and achieves.

Until the task registry and the training recipe land, the comparison runs on a small embedded synthetic task
(``max-digit``: predict the largest digit of a random digit sequence, 10 classes, chance 10%) with a plain
Adam loop. It is a smoke run of the whole trunk (forward, backward, optimizer, evaluation), not a benchmark.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from transevolve.config import ModelConfig
from transevolve.models import ClassifierModel, build_model
from transevolve.params import count_parameters

NUM_DIGITS = 10


@dataclass(frozen=True)
class CompareResult:
    name: str
    parameters: int
    accuracy: float
    train_seconds: float
    tokens_per_second: float
    final_loss: float


def max_digit_batch(batch: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Digits ``0..9`` as ids ``1..10`` with random trailing padding; label = the largest digit."""
    digits = torch.randint(0, NUM_DIGITS, (batch, length), generator=generator)
    lengths = torch.randint(length // 2, length + 1, (batch,), generator=generator)
    real = torch.arange(length)[None, :] < lengths[:, None]
    ids = torch.where(real, digits + 1, torch.zeros_like(digits))
    labels = torch.where(real, digits, torch.full_like(digits, -1)).amax(dim=1)
    return ids, labels


def default_models(width: int = 64, heads: int = 2, depth: int = 4) -> dict[str, ModelConfig]:
    """A Transformer, TransEvolve-fullFF and TransEvolve-randomFF of the same width and depth."""
    base = ModelConfig(kind="classifier", vocab_size=NUM_DIGITS + 1, width=width, num_heads=heads,
                       time_dim=width // heads, layers_per_block=depth, num_blocks=1, num_classes=NUM_DIGITS,
                       pooling="masked_mean", dropout=0.0, max_length=512)
    return {
        "transformer": base.replace(attention="softmax", name="transformer"),
        "transevolve-fullFF": base.replace(ff_type="full", name="transevolve-fullFF"),
        "transevolve-randomFF": base.replace(ff_type="random", name="transevolve-randomFF"),
    }


def train_and_evaluate(name: str, config: ModelConfig, steps: int, batch: int, length: int, seed: int,
                       learning_rate: float = 1e-3, device: str = "cpu") -> CompareResult:
    """Train one classifier on the embedded task and return its held-out accuracy and costs."""
    torch.manual_seed(seed)
    model = build_model(config).to(device)
    assert isinstance(model, ClassifierModel)
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    data = torch.Generator().manual_seed(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    start = time.perf_counter()
    for _ in range(steps):
        ids, labels = max_digit_batch(batch, length, data)
        loss = F.cross_entropy(model(ids.to(device)), labels.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    seconds = time.perf_counter() - start
    model.eval()
    held_out = torch.Generator().manual_seed(seed + 1_000_003)
    correct = total = 0
    with torch.no_grad():
        for _ in range(8):
            ids, labels = max_digit_batch(64, length, held_out)
            correct += int((model(ids.to(device)).argmax(-1).cpu() == labels).sum())
            total += labels.numel()
    return CompareResult(name, count_parameters(config).total, correct / total, seconds,
                         steps * batch * length / seconds, loss.item())


def run_compare(steps: int = 150, batch: int = 32, length: int = 32, seed: int = 0,
                device: str = "cpu") -> list[CompareResult]:
    return [train_and_evaluate(name, config, steps, batch, length, seed, device=device)
            for name, config in default_models().items()]
