"""Run-to-run reproducibility on several intra-op threads: the same training twice gives identical parameters.

The source of run-to-run differences was the token embedding's backward: ``weight[ids]`` (advanced indexing)
accumulates the gradient of repeated ids with parallel atomic adds on CPU, so with 2+ threads the summation
order (and the float result) changed from run to run. ``F.embedding`` sums every row in index order.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
import torch.nn.functional as F
from conftest import random_ids, tiny_config

from transevolve import build_model
from transevolve.modules.embedding import TiedEmbedding
from transevolve.train import TrainConfig
from transevolve.train.loop import build_optimizer

THREADS = 2


@contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """Run the body with ``count`` intra-op threads (pytest-xdist workers use 1), then restore."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def test_embedding_gradient_is_deterministic() -> None:
    """Many repeated ids in a small vocabulary: the embedding gradient is bit-identical over repetitions."""
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 17, (64, 64), generator=generator)                  # (b, n), pads (0) included
    upstream = torch.randn(64, 64, 64, generator=generator)                   # (b, n, d)
    embedding = TiedEmbedding(17, 64, 64)
    with intra_op_threads(THREADS):
        grads = []
        for _ in range(20):
            embedding.zero_grad(set_to_none=True)
            embedding(ids).backward(upstream)
            grads.append(embedding.weight.grad.clone())
    assert all(torch.equal(grads[0], grad) for grad in grads[1:])


def _train(attention: str, steps: int = 4) -> list[torch.Tensor]:
    """``steps`` AdamW steps of a tiny causal LM (padding, dropout, gradient clipping) from seed 0; returns the
    parameters. Width 128 and 8 x 47 tokens: the indexing backward went parallel above 32,768 elements."""
    config = tiny_config(kind="decoder", attention=attention, dropout=0.1, vocab_size=17, width=128, num_heads=4,
                         num_blocks=1)
    assert config.attention_impl == "auto"
    torch.manual_seed(0)
    model = build_model(config)
    optimizer = build_optimizer(model, TrainConfig(learning_rate=3e-3, weight_decay=0.01))
    generator = torch.Generator().manual_seed(1)
    model.train()
    for _ in range(steps):
        ids = random_ids(8, 48, config.vocab_size, start_id=1, generator=generator)       # (b, n)
        logits = model(ids[:, :-1])                                                       # (b, n - 1, V)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), ignore_index=0)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["evolved", "softmax"])
def test_training_is_reproducible_on_several_threads(attention: str) -> None:
    """Two identical short trainings on 2 threads end with bit-identical parameters."""
    with intra_op_threads(THREADS):
        first = _train(attention)
        second = _train(attention)
    differing = [i for i, (a, b) in enumerate(zip(first, second, strict=True)) if not torch.equal(a, b)]
    assert not differing, f"{len(differing)} of {len(first)} parameter tensors differ between two runs"
