"""Building a translation task from an aligned corpus: document-level splits, leak removal, size caps, a cached
joint subword vocabulary and ``{"src", "tgt"}`` examples.

Recipe (deterministic from the seed and the options):

1. Whole documents (help pages, Bible books) go to one split each (:func:`~transevolve.data.datasets.group_split`,
   weighted by pairs per document).
2. Exact duplicate pairs are dropped within each split; a validation pair whose source sentence also occurs in
   train is dropped, and a test pair whose source occurs in train or validation (boilerplate repeats across
   documents), so no evaluation source was seen in training.
3. Optional caps (``max_train_pairs``, ``max_eval_pairs``) keep a seeded random subset, in corpus order.
4. A joint BPE vocabulary is trained on the (capped) training sources and targets only and cached under
   ``data_dir()/processed/TASK/``.
5. ``src = ids + [EOS]``, ``tgt = [BOS] + ids + [EOS]``; pairs where either side exceeds ``max_length`` tokens are
   dropped in every split (the counts are in ``info["dropped_long"]``).

``tokenizer.decode(example["tgt"])`` gives the reference text back exactly (byte fallback, identity
normalisation), so BLEU can be computed with sacrebleu on detokenized strings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch

from transevolve.data import datasets as ds
from transevolve.data import subword as sw
from transevolve.tasks.base import BOS_ID, EOS_ID, Example, ExampleDataset, TaskData

Pair = tuple[str, str, str]  # (document, source, target)


def check_options(vocab_size: int, max_length: int, max_train_pairs: int | None, max_eval_pairs: int | None) -> None:
    """Raise ``ValueError`` naming the option when a translation task's size options are out of range."""
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300, got {vocab_size}")
    if max_length < 3:
        raise ValueError(f"max_length must be >= 3, got {max_length}")
    for option, value in (("max_train_pairs", max_train_pairs), ("max_eval_pairs", max_eval_pairs)):
        if value is not None and value < 1:
            raise ValueError(f"{option} must be >= 1 or None, got {value}")


def split_corpus(corpus: Sequence[Pair], fractions: dict[str, float], seed: int, salt: str
                 ) -> tuple[dict[str, list[tuple[str, str]]], dict[str, Any]]:
    """Steps 1-2 of the module recipe: ``{split: [(source, target), ...]}`` and facts for ``info``."""
    weights: dict[str, int] = {}
    for document, _, _ in corpus:
        weights[document] = weights.get(document, 0) + 1
    groups = ds.group_split([], fractions, seed, salt=salt, weights=weights)
    document_split = {doc: split for split, docs in groups.items() for doc in docs}
    raw: dict[str, list[tuple[str, str]]] = {s: [] for s in ds.SPLITS}
    for document, source, target in corpus:
        raw[document_split[document]].append((source, target))
    out: dict[str, list[tuple[str, str]]] = {}
    seen_sources: set[str] = set()
    duplicates, leaks = {}, {}
    for split in ds.SPLITS:
        unique = list(dict.fromkeys(raw[split]))
        duplicates[split] = len(raw[split]) - len(unique)
        kept = [(s, t) for s, t in unique if s not in seen_sources] if split != "train" else unique
        leaks[split] = len(unique) - len(kept)
        seen_sources.update(s for s, _ in kept)
        out[split] = kept
    facts = {"documents": {s: len(groups[s]) for s in ds.SPLITS}, "duplicates_dropped": duplicates,
             "seen_source_dropped": leaks}
    return out, facts


def cap(pairs: list[tuple[str, str]], limit: int | None, seed: int, salt: str) -> list[tuple[str, str]]:
    """A seeded random subset of ``limit`` pairs, in corpus order (all pairs when ``limit`` is None)."""
    if limit is None or limit >= len(pairs):
        return pairs
    keep = sorted(ds.rng(salt, seed).sample(range(len(pairs)), limit))
    return [pairs[i] for i in keep]


def build_translation(name: str, corpus: Sequence[Pair], corpus_sha256: str, *, seed: int,
                      fractions: dict[str, float], vocab_size: int, max_length: int, max_train_pairs: int | None,
                      max_eval_pairs: int | None, info: dict[str, Any], variant: str = "") -> TaskData:
    """The :class:`TaskData` of a translation task (see the module docstring for the recipe).

    ``variant`` (e.g. a translation direction) only keys the tokenizer cache; the splits depend on ``name``,
    ``seed`` and ``fractions``, so both directions of a corpus share their documents per split.
    """
    pairs, facts = split_corpus(corpus, fractions, seed, salt=name)
    pairs["train"] = cap(pairs["train"], max_train_pairs, seed, f"{name}:cap:train")
    for split in ("validation", "test"):
        pairs[split] = cap(pairs[split], max_eval_pairs, seed, f"{name}:cap:{split}")
    if not pairs["train"]:
        raise ValueError(f"{name}: the training split is empty (corpus of {len(corpus)} pairs)")
    options = json.dumps({"corpus": corpus_sha256, "seed": seed, "fractions": fractions, "vocab": vocab_size,
                          "max_train_pairs": max_train_pairs, "variant": variant}, sort_keys=True)
    key = hashlib.sha256(options.encode()).hexdigest()[:16]
    texts = [text for pair in pairs["train"] for text in pair]
    tokenizer = sw.cached_subword(ds.processed_dir(name) / f"spm-{key}.model", texts, vocab_size)
    splits: dict[str, ExampleDataset] = {}
    dropped: dict[str, int] = {}
    for split in ds.SPLITS:
        sources = tokenizer.encode_batch([s for s, _ in pairs[split]])
        targets = tokenizer.encode_batch([t for _, t in pairs[split]])
        examples: list[Example] = []
        for src, tgt in zip(sources, targets, strict=True):
            if len(src) + 1 > max_length or len(tgt) + 2 > max_length:
                continue
            examples.append({"src": torch.tensor([*src, EOS_ID], dtype=torch.long),
                             "tgt": torch.tensor([BOS_ID, *tgt, EOS_ID], dtype=torch.long)})
        dropped[split] = len(sources) - len(examples)
        splits[split] = ExampleDataset(examples)
    return TaskData(name=name, kind="seq2seq", metric="bleu", vocab_size=tokenizer.vocab_size, splits=splits,
                    tokenizer=tokenizer, max_length=ds.longest(splits),
                    info={**info, **facts, "dropped_long": dropped, "corpus_pairs": len(corpus),
                          "corpus_sha256": corpus_sha256, "tokenizer": f"sentencepiece bpe {tokenizer.vocab_size}",
                          "tokenizer_cache": f"spm-{key}.model"})
