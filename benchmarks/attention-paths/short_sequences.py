"""Which evolved-attention path trains fastest on short sequences: the evidence for ``attention_impl="auto"``.

Two model shapes of the results suite (``results/suite.yaml``): the translation models (encoder-decoder, width 128,
2 heads, time_dim 64, 4 layers per block; source and target of the same length) and the classifiers of ListOps and
text_food (width 64, 2 heads, time_dim 32). For each shape and (length, batch) point, one process builds the
Transformer and TransEvolve-fullFF 1x4 on the ``reference`` and ``factorised`` paths (the same batch, a third of the
rows padded by 20%, dropout 0.1; batches of 4,096-6,144 tokens like the suite's, and a few smaller), warms them up,
then times one training step (forward, loss, backward, AdamW) per model and round, models in rotated order. It
writes the median step times and the median over rounds of the per-round ratios (adjacent steps: what survives a
loaded machine) as JSON and a markdown table, with the path ``attention_impl="auto"`` picks at each point.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/attention-paths/short_sequences.py [--rounds 7] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from transevolve.config import ModelConfig
from transevolve.models import build_model
from transevolve.modules.evolved_attention import resolve_impl

SHAPES: dict[str, dict[str, Any]] = {
    "translation": {"kind": "encoder_decoder", "vocab_size": 8000, "width": 128, "num_heads": 2, "time_dim": 64,
                    "max_length": 256, "points": ((32, 128), (64, 64), (128, 32), (256, 16))},
    "classifier": {"kind": "classifier", "vocab_size": 64, "width": 64, "num_heads": 2, "time_dim": 32,
                   "max_length": 1024, "num_classes": 2, "pooling": "masked_mean",
                   "points": ((64, 64), (128, 32), (192, 32), (256, 24), (384, 10), (384, 16), (512, 8), (768, 8))},
}
MODELS = {"transformer": {"attention": "softmax"},
          "transevolve/reference": {"attention": "evolved", "attention_impl": "reference"},
          "transevolve/factorised": {"attention": "evolved", "attention_impl": "factorised"}}


def _config(shape: dict[str, Any], model: dict[str, Any]) -> ModelConfig:
    fields = {k: v for k, v in shape.items() if k != "points"}
    return ModelConfig(**fields, layers_per_block=4, num_blocks=1, dropout=0.1, layer_norm_eps=1e-3,
                       fidelity="official", ff_type="full", **model)


def _step(config: ModelConfig, length: int, batch: int) -> Callable[[], None]:
    """One training step of a fresh model on a fixed padded batch ``(batch, length)``."""
    torch.manual_seed(0)
    model = build_model(config).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(4, config.vocab_size, (batch, length + 1), generator=generator)
    ids[: batch // 3, -max(1, length // 5):] = 0                                       # padded rows

    def step() -> None:
        if config.kind == "classifier":
            loss = model(ids[:, :-1]).pow(2).mean()
        else:
            logits = model(ids[:, :-1], ids[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=0)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(rounds: int) -> list[dict[str, Any]]:
    rows = []
    for shape_name, shape in SHAPES.items():
        for length, batch in shape["points"]:
            steps = {name: _step(_config(shape, model), length, batch) for name, model in MODELS.items()}
            for step in steps.values():
                step()
                step()                                                                  # warm-up
            times: dict[str, list[float]] = {name: [] for name in steps}
            names = list(steps)
            for round_index in range(rounds):
                for name in names[round_index % len(names):] + names[: round_index % len(names)]:
                    start = time.perf_counter()
                    steps[name]()
                    times[name].append(time.perf_counter() - start)
            ratio = [f / r for f, r in zip(times["transevolve/factorised"], times["transevolve/reference"],
                                           strict=True)]
            versus = [r / t for r, t in zip(times["transevolve/reference"], times["transformer"], strict=True)]
            entries = batch * shape["num_heads"] * length * length
            row = {"shape": shape_name, "length": length, "batch": batch, "logit_entries": entries,
                   "auto": resolve_impl("auto", batch, shape["num_heads"], length, length),
                   "median_ms": {name: 1000 * statistics.median(v) for name, v in times.items()},
                   "factorised_over_reference": statistics.median(ratio),
                   "reference_over_transformer": statistics.median(versus)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = ["| shape | length | batch | b h n^2 | auto picks | transformer ms | TE reference ms | TE factorised ms "
             "| factorised / reference | reference / transformer |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        ms = row["median_ms"]
        lines.append(f"| {row['shape']} | {row['length']} | {row['batch']} | {row['logit_entries'] / 2**20:.1f}M | "
                     f"{row['auto']} | {ms['transformer']:.0f} | "
                     f"{ms['transevolve/reference']:.0f} | {ms['transevolve/factorised']:.0f} | "
                     f"{row['factorised_over_reference']:.2f} | {row['reference_over_transformer']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    rows = measure(args.rounds)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.processor(),
            "rounds": args.rounds}
    (args.out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    (args.out / "results.md").write_text(f"Training step, median of {args.rounds} interleaved rounds "
                                         f"(torch {meta['torch']}, {meta['threads']} threads).\n\n" + table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
