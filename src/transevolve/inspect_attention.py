"""``transevolve inspect``: how attention evolves over depth.

For a TransEvolve model it plots, per head, ``softmax(A0)`` (the block-level interaction alone) and then the
attention each layer actually uses (``A0`` plus that layer's per-key time bias), block by block; for a softmax
Transformer, the attention of every layer. Two runs side by side compare the families on the same input. It also
reports how much the attention moves between consecutive layers (mean total-variation distance per query row),
which tells whether depth changes the attention pattern (TransEvolve can only move it through a per-key bias).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from transevolve.models import StackTrace


@dataclass
class AttentionMaps:
    """Attention of one example: ``maps[i]`` is ``(h, q, k)``; ``labels[i]`` names it."""

    labels: list[str]
    maps: list[torch.Tensor]
    tokens: int

    def layer_shift(self) -> list[float]:
        """Mean total-variation distance between consecutive layer maps (A0 maps excluded)."""
        layers = [m for label, m in zip(self.labels, self.maps, strict=True) if not label.startswith("A0")]
        return [float(0.5 * (b - a).abs().sum(-1).mean()) for a, b in itertools.pairwise(layers)]


def check_same_task(runs: list[tuple[str, str, int]]) -> None:
    """``runs``: (run directory, task name, vocabulary size); raises ``UserError`` unless all runs share one task
    and vocabulary (the maps are computed on one example, which every model must read the same way)."""
    from transevolve.errors import UserError

    first_dir, first_task, first_vocab = runs[0]
    for run_dir, task, vocab in runs[1:]:
        if task != first_task:
            raise UserError(f"inspect compares runs of one task: {first_dir} is {first_task!r} but {run_dir} is "
                            f"{task!r}")
        if vocab != first_vocab:
            raise UserError(f"{first_dir} and {run_dir} are both {task!r} runs but use different vocabularies "
                            f"({first_vocab} vs {vocab} tokens; other task options?), so they cannot read the same "
                            "example")


def _stack_trace(model: nn.Module, inputs: dict[str, torch.Tensor]) -> StackTrace:
    with torch.no_grad():
        if "src" in inputs:
            _, inter = model(inputs["src"], inputs["tgt"][:, :-1], return_intermediates=True)
            trace = inter.encoder
        else:
            _, inter = model(inputs["ids"], return_intermediates=True)
            trace = inter.encoder if inter.encoder is not None else inter.decoder
    assert trace is not None
    return trace


def attention_maps(model: nn.Module, inputs: dict[str, torch.Tensor]) -> AttentionMaps:
    """Self-attention maps of the first example in ``inputs`` (pads cut off)."""
    model.eval()
    trace = _stack_trace(model, inputs)
    ids = inputs.get("src", inputs.get("ids"))
    assert ids is not None
    n = int((ids[0] != 0).sum())
    labels, maps = [], []
    shown_blocks: set[int] = set()
    for (block, layer, stage), weights in trace.self_attention.items():
        scores = trace.block_scores.get(block)
        if block not in shown_blocks and getattr(scores, "initial", None) is not None:
            labels.append(f"A0 block {block}")
            maps.append(torch.softmax(scores.initial[0, :, :n, :n], dim=-1))
        shown_blocks.add(block)
        label = f"block {block} layer {layer}" + (f" stage {stage}" if stage else "")
        labels.append(label)
        maps.append(weights[0, :, :n, :n])
    return AttentionMaps(labels, maps, n)


def plot_attention(panels: list[tuple[str, AttentionMaps]], path: Path) -> Path:
    """One row per (model, head), one column per map."""
    from transevolve.train.plots import _matplotlib

    plt = _matplotlib()
    rows = [(name, head) for name, maps in panels for head in range(maps.maps[0].shape[0])]
    columns = max(len(maps.maps) for _, maps in panels)
    fig, axes = plt.subplots(len(rows), columns, figsize=(2.1 * columns, 2.2 * len(rows)), squeeze=False)
    for row, (name, head) in enumerate(rows):
        maps = dict(panels)[name]
        for column in range(columns):
            ax = axes[row][column]
            ax.set_xticks([])
            ax.set_yticks([])
            if column >= len(maps.maps):
                ax.axis("off")
                continue
            ax.imshow(maps.maps[column][head].cpu().numpy(), cmap="viridis", vmin=0)
            if row == 0 or rows[row - 1][0] != name:
                ax.set_title(maps.labels[column], fontsize=8)
            if column == 0:
                ax.set_ylabel(f"{name}\nhead {head}", fontsize=8)
    fig.suptitle("self-attention over depth (rows: queries, columns: keys)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
