"""Evaluation on a split: loss and the task's metrics (accuracy, token accuracy, exact match, BLEU)."""

from __future__ import annotations

import math

import torch
from torch import nn

from transevolve.tasks.base import EOS_ID, PAD_ID, ExampleDataset, TaskData, collate
from transevolve.train.batching import epoch_batches
from transevolve.train.objectives import forward_loss


def _batches(dataset: ExampleDataset, batch_size: int, max_batches: int, max_examples: int = 0) -> list[list[int]]:
    """Batches of indices in a fixed order over the first ``max_examples`` examples (0 = all)."""
    size = min(len(dataset), max_examples) if max_examples else len(dataset)
    batches = epoch_batches(size, min(batch_size, size), seed=0, epoch=0, shuffle=False, drop_last=False)
    return batches[:max_batches] if max_batches else batches


def evaluated_examples(size: int, batch_size: int, max_batches: int = 0, max_examples: int = 0) -> int:
    """How many examples of a split of ``size`` an evaluation with these limits reads."""
    size = min(size, max_examples) if max_examples else size
    return min(size, max_batches * min(batch_size, size)) if max_batches else size


@torch.no_grad()
def evaluate(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
             max_batches: int = 0, bleu: bool = False, beam_size: int = 1, alpha: float = 0.6,
             max_offset: int = 50, max_examples: int = 0, bleu_max_sentences: int = 0,
             progress: bool = False) -> dict[str, float]:
    """Teacher-forced loss and metrics on ``split``; BLEU (sacrebleu, detokenized) when ``bleu`` is set.

    ``max_batches`` and ``max_examples`` (0 = no limit) bound the examples read (the first ones, in a fixed
    order); ``bleu_max_sentences`` further bounds the sentences decoded for BLEU. ``progress`` shows the
    examples done, the rate and the ETA on stderr (see :class:`~transevolve.train.progress.Progress`).
    """
    from transevolve.train.progress import Progress

    if split not in data.splits:
        raise ValueError(f"task {data.name!r} has no split {split!r}; splits: {sorted(data.splits)}")
    was_training = model.training
    model.eval()
    dataset = data.splits[split]
    totals: dict[str, float] = {}
    loss_sum = 0.0
    batches = _batches(dataset, batch_size, max_batches, max_examples)
    bar = Progress(sum(map(len, batches)), enabled=progress, title=f"evaluate {data.name}/{split}",
                   unit="examples")
    done = 0
    try:
        for indices in batches:
            batch = {k: v.to(device) for k, v in collate([dataset[i] for i in indices]).items()}
            loss, stats = forward_loss(model, batch, data.kind)
            loss_sum += float(loss)
            for key, value in stats.items():
                totals[key] = totals.get(key, 0.0) + value
            done += len(indices)
            bar.update(done)
    finally:
        bar.close()
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
        sentences = evaluated_examples(len(dataset), batch_size, max_batches, max_examples)
        if bleu_max_sentences:
            sentences = min(sentences, bleu_max_sentences)
        metrics["bleu"] = corpus_bleu(model, data, split, batch_size, device, 0, beam_size, alpha, max_offset,
                                      max_sentences=sentences, progress=progress)
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
                max_batches: int = 0, beam_size: int = 1, alpha: float = 0.6, max_offset: int = 50,
                max_sentences: int = 0, progress: bool = False) -> float:
    """sacrebleu corpus BLEU (default 13a tokenisation, cased) of decoded hypotheses on detokenized text.

    Decodes the first ``max_sentences`` sentences of ``split`` (0 = all; ``max_batches`` also bounds them);
    ``progress`` shows sentences done / total, the rate and the ETA on stderr.
    """
    import sacrebleu

    from transevolve.train.progress import Progress

    if data.tokenizer is None:
        raise ValueError(f"task {data.name!r} has no tokenizer to detokenize with; BLEU needs one")
    dataset = data.splits[split]
    hypotheses: list[str] = []
    references: list[str] = []
    batches = _batches(dataset, batch_size, max_batches, max_sentences)
    search = "greedy" if beam_size == 1 else f"beam {beam_size}"
    bar = Progress(sum(map(len, batches)), enabled=progress, title=f"BLEU {data.name}/{split} ({search})",
                   unit="sentences", summary=True)
    try:
        for indices in batches:
            batch = collate([dataset[i] for i in indices])
            src = batch["src"].to(device)
            outputs = decode_batch(model, src, beam_size, alpha, max_offset)
            hypotheses.extend(data.tokenizer.decode(ids) for ids in outputs)
            references.extend(data.tokenizer.decode(_strip(dataset[i]["tgt"][1:].tolist())) for i in indices)
            bar.update(len(hypotheses))
    finally:
        bar.close()
    return float(sacrebleu.corpus_bleu(hypotheses, [references]).score)
