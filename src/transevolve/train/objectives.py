"""Per-kind model inputs, losses and metrics.

Losses are *sums* over loss units (examples for classification, target tokens for sequences) so that the loop
can normalise by the units of the whole global batch (exact under accumulation and data parallelism).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from transevolve.tasks.base import PAD_ID


def loss_units(batch: dict[str, torch.Tensor], kind: str) -> int:
    """Examples (classification) or graded target tokens (sequence kinds) in a batch."""
    if kind == "classification":
        return int(batch["label"].numel())
    if kind == "seq2seq":
        return int((batch["tgt"][:, 1:] != PAD_ID).sum())
    return int(batch["loss_mask"][:, 1:].sum())


def forward_loss(model: nn.Module, batch: dict[str, torch.Tensor], kind: str, label_smoothing: float = 0.0
                 ) -> tuple[torch.Tensor, dict[str, float]]:
    """Summed loss of a batch and summed statistics (``correct``, ``units``) for metrics."""
    if kind == "classification":
        logits = model(batch["ids"])
        labels = batch["label"]
        if logits.shape[-1] == 1:                       # official binary head: one sigmoid unit
            logits = logits.float()                     # float32 loss (and an unrounded target) under bf16
            target = labels.to(logits.dtype) * (1 - label_smoothing) + 0.5 * label_smoothing
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(-1), target, reduction="sum")
            predicted = (logits.squeeze(-1) > 0).long()
        else:
            loss = F.cross_entropy(logits.float(), labels, reduction="sum", label_smoothing=label_smoothing)
            predicted = logits.argmax(-1)
        return loss, {"correct": float((predicted == labels).sum()), "units": float(labels.numel())}
    if kind == "seq2seq":
        tgt = batch["tgt"]
        logits = model(batch["src"], tgt[:, :-1])
        targets = tgt[:, 1:]
        mask = targets != PAD_ID
    else:
        ids = batch["ids"]
        logits = model(ids[:, :-1])
        targets = ids[:, 1:]
        mask = batch["loss_mask"][:, 1:].bool()
    flat_logits = logits.float().reshape(-1, logits.shape[-1])
    per_token = F.cross_entropy(flat_logits, targets.reshape(-1), reduction="none", label_smoothing=label_smoothing)
    loss = (per_token * mask.reshape(-1)).sum()
    correct = (logits.argmax(-1) == targets) & mask
    stats = {"correct": float(correct.sum()), "units": float(mask.sum())}
    if kind == "language_modeling" and "answer_mask" in batch:
        answer = batch["answer_mask"][:, 1:].bool()
        wrong = (~correct & answer).any(dim=1)
        has_answer = answer.any(dim=1)
        stats["exact"] = float((has_answer & ~wrong).sum())
        stats["answered"] = float(has_answer.sum())
    return loss, stats
