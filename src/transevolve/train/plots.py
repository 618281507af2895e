"""Plots written into run directories (matplotlib, Agg backend, PNG)."""

from __future__ import annotations

import json
from pathlib import Path


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(run_dir: Path) -> Path | None:
    """``curves.png``: training and validation loss, and the validation metrics, against steps."""
    records = read_metrics(run_dir)
    if not records:
        return None
    plt = _matplotlib()
    train = [r for r in records if r["split"] == "train"]
    valid = [r for r in records if r["split"] == "validation"]
    metric_keys = [k for k in (valid[0] if valid else {}) if k not in ("step", "split", "loss", "perplexity")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    axes[0].plot([r["step"] for r in train], [r["loss"] for r in train], label="train")
    if valid:
        axes[0].plot([r["step"] for r in valid], [r["loss"] for r in valid], "o-", label="validation")
    axes[0].set(xlabel="step", ylabel="loss", title="loss")
    axes[0].legend()
    for key in metric_keys:
        axes[1].plot([r["step"] for r in valid], [r[key] for r in valid], "o-", label=key)
    axes[1].set(xlabel="step", title="validation metrics")
    if metric_keys:
        axes[1].legend()
    fig.tight_layout()
    out = Path(run_dir) / "curves.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
