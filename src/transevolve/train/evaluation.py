"""Evaluation on a split: loss and the task's metrics (accuracy, token accuracy, BLEU, generated-solution accuracy).

Tasks graded by generation (``TaskData.checker``: the dynamic-programming tasks) are scored on what the model
writes from the problem alone: the model greedily continues each example's prompt (``[BOS] problem SEP``; the
reference chain and answer are never fed) and the task's oracle grades the result. Their metrics, headline first:

- ``generated_accuracy``: fraction of examples whose generated final answer equals the oracle's answer;
- ``chain_valid``: fraction whose whole generated derivation is valid (chain of thought and answer);
- ``parse_error``: fraction whose final answer could not be read (no EOS, or not ``... SEP number EOS``);

then the teacher-forced diagnostics ``loss``, ``token_accuracy`` (targets right given the reference prefix),
``perplexity`` and ``teacher_forced_exact`` (every answer token right given the reference prefix, chain of
thought included: with a chain of thought it mostly measures copying the answer out of the given chain).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transevolve.tasks.base import EOS_ID, PAD_ID, ExampleDataset, TaskData, collate
from transevolve.train.batching import epoch_batches
from transevolve.train.objectives import forward_loss

#: Metrics of generated solutions (tasks with a ``checker``), in report order; ``generated_accuracy`` is the headline.
GENERATED_METRICS = ("generated_accuracy", "chain_valid", "parse_error")


def headline_metric(data: TaskData) -> str:
    """The metric that ranks checkpoints and runs: ``generated_accuracy`` for tasks graded by generation,
    ``accuracy`` for classification, ``token_accuracy`` otherwise (BLEU is only computed at the end)."""
    if data.checker is not None:
        return "generated_accuracy"
    return "accuracy" if data.kind == "classification" else "token_accuracy"


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
             progress: bool = False, generate: bool = True, generate_max_examples: int = 0) -> dict[str, float]:
    """Teacher-forced loss and metrics on ``split``; BLEU (sacrebleu, detokenized) when ``bleu`` is set; for tasks
    graded by generation (``data.checker``), the generated-solution metrics first (see the module docstring)
    unless ``generate`` is False.

    ``max_batches`` and ``max_examples`` (0 = no limit) bound the examples read (the first ones, in a fixed
    order); ``bleu_max_sentences`` further bounds the sentences decoded for BLEU and ``generate_max_examples``
    the examples solved by generation. ``progress`` shows the examples done, the rate and the ETA on stderr (see
    :class:`~transevolve.train.progress.Progress`).
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
            metrics["teacher_forced_exact"] = totals["exact"] / max(totals["answered"], 1.0)
    if generate and data.checker is not None:
        examples = evaluated_examples(len(dataset), batch_size, max_batches, max_examples)
        if generate_max_examples:
            examples = min(examples, generate_max_examples)
        metrics = generated_solution_metrics(model, data, split, batch_size, device, examples, progress) | metrics
    if bleu and data.kind == "seq2seq":
        sentences = evaluated_examples(len(dataset), batch_size, max_batches, max_examples)
        if bleu_max_sentences:
            sentences = min(sentences, bleu_max_sentences)
        metrics["bleu"] = corpus_bleu(model, data, split, batch_size, device, 0, beam_size, alpha, max_offset,
                                      max_sentences=sentences, progress=progress)
    model.train(was_training)
    return metrics


def generated_solution_metrics(model: nn.Module, data: TaskData, split: str, batch_size: int, device: torch.device,
                               max_examples: int = 0, progress: bool = False) -> dict[str, float]:
    """Solve the first ``max_examples`` examples of ``split`` (0 = all) by cached greedy decoding and grade them
    with ``data.checker``: ``{"generated_accuracy", "chain_valid", "parse_error"}`` (fractions of the examples).

    Each prompt is ``[BOS] problem SEP`` (:meth:`~transevolve.tasks.base.SolutionChecker.generation_prompt`);
    prompts of equal length are decoded together, ``batch_size`` at a time (positions must match training, so
    prompts are never padded). A row stops at EOS or after ``checker.max_new_tokens`` tokens.
    """
    from transevolve.decoding import greedy_search
    from transevolve.train.progress import Progress

    checker = data.checker
    if checker is None:
        raise ValueError(f"task {data.name!r} is not graded by generation (it has no solution checker)")
    if data.kind != "language_modeling":
        raise ValueError(f"task {data.name!r}: generated solutions need a language-modelling task")
    dataset = data.splits[split]
    size = min(len(dataset), max_examples) if max_examples else len(dataset)
    prompts = [checker.generation_prompt(dataset[i]["ids"].tolist()) for i in range(size)]
    by_length: dict[int, list[int]] = {}
    for index, prompt in enumerate(prompts):
        by_length.setdefault(len(prompt), []).append(index)
    was_training = model.training
    model.eval()
    counts = dict.fromkeys(GENERATED_METRICS, 0)
    bar = Progress(size, enabled=progress, title=f"generate {data.name}/{split} (greedy)", unit="examples",
                   summary=True)
    done = 0
    try:
        for length in sorted(by_length):
            group = by_length[length]
            for start in range(0, len(group), batch_size):
                rows = group[start:start + batch_size]
                prompt = torch.tensor([prompts[i] for i in rows], dtype=torch.long, device=device)
                decoded = greedy_search(model, prompt=prompt, max_new_tokens=checker.max_new_tokens)
                for index, generated in zip(rows, decoded.tokens.tolist(), strict=True):
                    check = checker.check_generation(prompts[index], generated)
                    counts["generated_accuracy"] += check.answer_correct
                    counts["chain_valid"] += check.chain_valid
                    counts["parse_error"] += not check.parsed
                done += len(rows)
                bar.update(done, stats=f"accuracy {counts['generated_accuracy'] / done:.3f}")
    finally:
        bar.close()
        model.train(was_training)
    return {name: count / max(size, 1) for name, count in counts.items()}


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
