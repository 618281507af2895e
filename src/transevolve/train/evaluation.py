"""Evaluation on a split: loss and the task's metrics (accuracy, token accuracy, exact match, BLEU)."""

from __future__ import annotations

import math

import torch
from torch import nn

from transevolve.tasks.base import EOS_ID, PAD_ID, ExampleDataset, TaskData, collate
from transevolve.train.batching import epoch_batches
from transevolve.train.objectives import forward_loss


def _batches(dataset: ExampleDataset, batch_size: int, max_batches: int) -> list[list[int]]:
    batches = epoch_batches(len(dataset), min(batch_size, len(dataset)), seed=0, epoch=0, shuffle=False,
                            drop_last=False)
    return batches[:max_batches] if max_batches else batches


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
             max_batches: int = 0, bleu: bool = False, beam_size: int = 1, alpha: float = 0.6,
             max_offset: int = 50) -> dict[str, float]:
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
        metrics["bleu"] = corpus_bleu(model, data, split, batch_size, device, max_batches, beam_size, alpha,
                                      max_offset)
    model.train(was_training)
    return metrics


def decode_batch(model: nn.Module, src: torch.Tensor, beam_size: int = 1, alpha: float = 0.6,
                 max_offset: int = 50) -> list[list[int]]:
    """Translate a padded batch ``src (b, s)``: greedy (beam 1) or beam search, cached; ids without BOS/EOS."""
    from transevolve.decoding import beam_search, greedy_search

    max_new = max(1, min(src.shape[1] + max_offset, model.config.max_length - 1))
    with torch.no_grad():
        if beam_size == 1:
            decoded = greedy_search(model, src, max_new_tokens=max_new)
        else:
            decoded = beam_search(model, src, beam_size=beam_size, alpha=alpha, max_new_tokens=max_new)
    return [_strip(row) for row in decoded.tokens.tolist()]


def _strip(ids: list[int]) -> list[int]:
    out = []
    for token in ids:
        if token in (EOS_ID, PAD_ID):
            break
        out.append(token)
    return out


def corpus_bleu(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
                max_batches: int = 0, beam_size: int = 1, alpha: float = 0.6, max_offset: int = 50) -> float:
    """sacrebleu corpus BLEU (default 13a tokenisation, cased) of decoded hypotheses on detokenized text."""
    import sacrebleu

    if data.tokenizer is None:
        raise ValueError(f"task {data.name!r} has no tokenizer to detokenize with; BLEU needs one")
    dataset = data.splits[split]
    hypotheses: list[str] = []
    references: list[str] = []
    for indices in _batches(dataset, batch_size, max_batches):
        batch = collate([dataset[i] for i in indices])
        src = batch["src"].to(device)
        outputs = decode_batch(model, src, beam_size, alpha, max_offset)
        hypotheses.extend(data.tokenizer.decode(ids) for ids in outputs)
        references.extend(data.tokenizer.decode(_strip(dataset[i]["tgt"][1:].tolist())) for i in indices)
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
