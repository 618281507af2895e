"""Evaluation on a split: loss and the task's metrics (accuracy, token accuracy, exact match, BLEU)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from transevolve.tasks.base import BOS_ID, EOS_ID, PAD_ID, ExampleDataset, TaskData, collate
from transevolve.train.batching import epoch_batches
from transevolve.train.objectives import forward_loss


def _batches(dataset: ExampleDataset, batch_size: int, max_batches: int) -> list[list[int]]:
    batches = epoch_batches(len(dataset), min(batch_size, len(dataset)), seed=0, epoch=0, shuffle=False,
                            drop_last=False)
    return batches[:max_batches] if max_batches else batches


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
             max_batches: int = 0, bleu: bool = False, decode: Callable | None = None) -> dict[str, float]:
    """Teacher-forced loss and metrics on ``split``; BLEU (sacrebleu, detokenized) when ``bleu`` is set."""
    if split not in data.splits:
        raise ValueError(f"task {data.name!r} has no split {split!r}; splits: {sorted(data.splits)}")
    was_training = model.training
    model.eval()
    dataset = data.splits[split]
    totals: dict[str, float] = {}
    loss_sum = 0.0
    for indices in _batches(dataset, batch_size, max_batches):
        batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
        loss, stats = forward_loss(model, batch, data.kind)
        loss_sum += float(loss)
        for key, value in stats.items():
            totals[key] = totals.get(key, 0.0) + value
    units = max(totals.get("units", 0.0), 1.0)
    metrics = {"loss": loss_sum / units}
    if data.kind == "classification":
        metrics["accuracy"] = totals["correct"] / units
    else:
        metrics["token_accuracy"] = totals["correct"] / units
        metrics["perplexity"] = math.exp(min(metrics["loss"], 50.0))
        if "answered" in totals:
            metrics["exact_match"] = totals["exact"] / max(totals["answered"], 1.0)
    if bleu and data.kind == "seq2seq":
        metrics["bleu"] = corpus_bleu(model, data, split, batch_size, device, max_batches, decode)
    model.train(was_training)
    return metrics


@torch.no_grad()
def greedy_decode_uncached(model: nn.Module, src: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Reference greedy decoding: re-run the decoder on the whole prefix for every token."""
    memory = model.encode(src)
    b = src.shape[0]
    tgt = torch.full((b, 1), BOS_ID, dtype=torch.long, device=src.device)
    finished = torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(max_new_tokens):
        logits = model.decode(tgt, memory, src)[:, -1]
        next_token = logits.argmax(-1)
        next_token = torch.where(finished, torch.full_like(next_token, PAD_ID), next_token)
        tgt = torch.cat([tgt, next_token[:, None]], dim=1)
        finished |= next_token == EOS_ID
        if bool(finished.all()):
            break
    return [_strip(row) for row in tgt[:, 1:].tolist()]


def _strip(ids: list[int]) -> list[int]:
    out = []
    for token in ids:
        if token in (EOS_ID, PAD_ID):
            break
        out.append(token)
    return out


def corpus_bleu(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
                max_batches: int = 0, decode: Callable | None = None, max_offset: int = 50) -> float:
    """sacrebleu corpus BLEU of decoded hypotheses against the detokenized references."""
    import sacrebleu

    if data.tokenizer is None:
        raise ValueError(f"task {data.name!r} has no tokenizer to detokenize with; BLEU needs one")
    dataset = data.splits[split]
    hypotheses: list[str] = []
    references: list[str] = []
    for indices in _batches(dataset, batch_size, max_batches):
        batch = collate([dataset[i] for i in indices])
        src = batch["src"].to(device)
        max_new = min(src.shape[1] + max_offset, model.config.max_length - 1)
        outputs = decode(model, src, max_new) if decode is not None else greedy_decode_uncached(model, src,
                                                                                                  max_new)
        hypotheses.extend(data.tokenizer.decode(ids) for ids in outputs)
        references.extend(data.tokenizer.decode(_strip(dataset[i]["tgt"][1:].tolist())) for i in indices)
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
