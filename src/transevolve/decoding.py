"""Greedy and beam-search decoding for the decoder models (encoder-decoder and decoder-only).

Both searches run batched and either recompute the whole prefix at every step (``use_cache=False``, what the
official code does) or feed only the new token through :meth:`decode_step` with a :class:`DecodeCache`
(``use_cache=True``); the two give the same tokens and logits up to float rounding.

Conventions (official setting): start id 1, EOS id 2, pad id 0; beam 4 with length penalty
``((5 + len) / 6) ** alpha``, ``alpha = 0.6``, where ``len`` counts generated tokens including EOS; at most
``source length + 50`` steps for an encoder-decoder (the padded source length of the batch). A decoder-only model
continues an unpadded ``prompt`` for at most ``length_offset`` new tokens unless ``max_new_tokens`` is given. After
a sequence ends (EOS) it is fed padding, which does not affect the other positions.

Beam search keeps ``beam_size`` alive hypotheses and up to ``beam_size`` finished ones, expanding the best
``2 * beam_size`` candidates each step. ``early_stopping=True`` (default) accepts an EOS candidate only within
the top ``beam_size`` of those and stops a sentence once it has ``beam_size`` finished hypotheses (fairseq's
rule; beam size 1 is then exactly greedy). ``early_stopping=False`` follows the official TF port: any EOS
candidate is a finished hypothesis, and the search continues while the best alive hypothesis, normalised by the
largest length penalty, could still beat the worst finished one.

Legend: ``b`` batch, ``k`` beam size, ``T`` generated length, ``V`` vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from transevolve.models import DecodeCache, DecoderModel, EncoderDecoderModel

START_ID = 1
EOS_ID = 2
PAD_ID = 0


@dataclass
class Decoded:
    """The result of a search.

    Attributes:
        tokens: ``(b, T)`` generated ids (start id and prompt excluded), EOS included, then padding.
        scores: ``(b,)`` greedy: the sum of the chosen tokens' log-probabilities; beam: that sum divided by
            the length penalty (the search's ranking score).
        lengths: ``(b,)`` generated tokens per row, EOS included.
        logits: greedy with ``return_logits=True``: the logits ``(b, T, V)`` each step chose from.
        hypotheses: beam: every final hypothesis ``(b, k, T)``, best first.
        hypothesis_scores: beam: their scores ``(b, k)``.
    """

    tokens: torch.Tensor
    scores: torch.Tensor
    lengths: torch.Tensor
    logits: torch.Tensor | None = None
    hypotheses: torch.Tensor | None = None
    hypothesis_scores: torch.Tensor | None = None


def length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """GNMT length penalty ``((5 + length) / 6) ** alpha``."""
    return ((5.0 + length) / 6.0) ** alpha


class _Session:
    """One batch of sequences being decoded: the prefix so far and, with a cache, the model state.

    ``rows`` copies of every input row are made (beam search) so that each hypothesis has its own row.
    """

    def __init__(self, model: nn.Module, src: torch.Tensor | None, prompt: torch.Tensor | None, use_cache: bool,
                 start_id: int, rows: int = 1) -> None:
        self.model = model
        device = next(model.parameters()).device
        self.memory = self.src = None
        if isinstance(model, EncoderDecoderModel):
            if src is None or prompt is not None:
                raise ValueError("an encoder-decoder model decodes from src (and takes no prompt)")
            self.src = src.to(device).repeat_interleave(rows, dim=0)
            self.memory = model.encode(self.src)
            self.tokens = torch.full((self.src.shape[0], 1), start_id, dtype=torch.long, device=device)
        elif isinstance(model, DecoderModel):
            if prompt is None or src is not None:
                raise ValueError("a decoder-only model continues a prompt (and takes no src)")
            if prompt.dim() != 2 or prompt.shape[1] == 0:
                raise ValueError(f"prompt must have shape (batch, length >= 1), got {tuple(prompt.shape)}")
            if bool((prompt == PAD_ID).any()):
                raise ValueError("prompts must not contain padding (id 0): decode equal-length prompts together")
            self.tokens = prompt.to(device).long().repeat_interleave(rows, dim=0)
        else:
            raise TypeError(f"decoding needs an EncoderDecoderModel or a DecoderModel, got {type(model).__name__}")
        self.prefix_length = self.tokens.shape[1]
        self.cache = DecodeCache() if use_cache else None

    @property
    def generated(self) -> torch.Tensor:
        return self.tokens[:, self.prefix_length:]

    def _logits(self, new: torch.Tensor) -> torch.Tensor:
        """Logits ``(rows, V)`` for the position after the last token."""
        model = self.model
        if isinstance(model, EncoderDecoderModel):
            assert self.memory is not None and self.src is not None
            if self.cache is not None:
                return model.decode_step(new, self.memory, self.src, self.cache)[:, -1]
            return model.decode(self.tokens, self.memory, self.src)[:, -1]
        if self.cache is not None:
            return model.decode_step(new, self.cache)[:, -1]
        return model(self.tokens)[:, -1]

    def first(self) -> torch.Tensor:
        return self._logits(self.tokens)

    def advance(self, token: torch.Tensor) -> torch.Tensor:
        """Append ``token (rows,)`` and return the next logits ``(rows, V)``."""
        self.tokens = torch.cat([self.tokens, token[:, None]], dim=1)
        return self._logits(self.tokens[:, -1:])

    def reorder(self, index: torch.Tensor) -> None:
        """Keep rows ``index`` (beam search: hypotheses of the same sentence only)."""
        self.tokens = self.tokens.index_select(0, index)
        if self.cache is not None:
            self.cache.reorder(index, keep_cross=True)


def _max_steps(model: nn.Module, src: torch.Tensor | None, prompt: torch.Tensor | None,
               max_new_tokens: int | None, length_offset: int) -> int:
    config = model.config
    if isinstance(model, EncoderDecoderModel):
        assert src is not None
        steps = src.shape[1] + length_offset if max_new_tokens is None else max_new_tokens
        room = config.max_length                         # the start token plus steps - 1 fed tokens
    else:
        assert prompt is not None
        steps = length_offset if max_new_tokens is None else max_new_tokens
        room = config.max_length - prompt.shape[1] + 1
    if steps < 1:
        raise ValueError(f"nothing to decode: {steps} steps")
    return min(steps, room)


@torch.inference_mode()
def greedy_search(model: nn.Module, src: torch.Tensor | None = None, *, prompt: torch.Tensor | None = None,
                  max_new_tokens: int | None = None, length_offset: int = 50, use_cache: bool = True,
                  start_id: int = START_ID, eos_id: int | None = EOS_ID, return_logits: bool = False) -> Decoded:
    """Pick the most likely token at every step.

    Args:
        model: an :class:`EncoderDecoderModel` (give ``src (b, s)``) or a :class:`DecoderModel` (give an
            unpadded ``prompt (b, p)``), normally in eval mode.
        max_new_tokens: steps at most; default ``s + length_offset`` (encoder-decoder) or ``length_offset``.
        use_cache: incremental decoding (True) or full recomputation of the prefix every step (False).
        eos_id: stop a row at this id; None never stops early (always ``max_new_tokens`` steps).
        return_logits: also return the logits of every step.
    """
    session = _Session(model, src, prompt, use_cache, start_id)
    steps = _max_steps(model, src, prompt, max_new_tokens, length_offset)
    rows = session.tokens.shape[0]
    device = session.tokens.device
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    scores = torch.zeros(rows, device=device)
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    chosen: list[torch.Tensor] = []
    seen: list[torch.Tensor] = []
    logits = session.first()
    for step in range(steps):
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        token = logits.argmax(-1).masked_fill(finished, PAD_ID)
        scores += log_probs.gather(1, token[:, None]).squeeze(1).masked_fill(finished, 0.0)
        lengths += (~finished).long()
        chosen.append(token)
        if return_logits:
            seen.append(logits)
        if eos_id is not None:
            finished = finished | (token == eos_id)
        if bool(finished.all()) or step + 1 == steps:
            break
        logits = session.advance(token)
    return Decoded(torch.stack(chosen, dim=1), scores, lengths,
                   torch.stack(seen, dim=1) if return_logits else None)


@torch.inference_mode()
def beam_search(model: nn.Module, src: torch.Tensor | None = None, *, prompt: torch.Tensor | None = None,
                beam_size: int = 4, alpha: float = 0.6, max_new_tokens: int | None = None, length_offset: int = 50,
                use_cache: bool = True, start_id: int = START_ID, eos_id: int | None = EOS_ID,
                early_stopping: bool = True) -> Decoded:
    """Batched beam search with the GNMT length penalty (see the module docstring for the stopping rules).

    Arguments as in :func:`greedy_search`, plus ``beam_size`` k, ``alpha`` and ``early_stopping``. Returns the
    best hypothesis per input row and every final hypothesis.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    k = beam_size
    session = _Session(model, src, prompt, use_cache, start_id, rows=k)
    steps = _max_steps(model, src, prompt, max_new_tokens, length_offset)
    device = session.tokens.device
    b = session.tokens.shape[0] // k
    neg_inf = float("-inf")
    alive = torch.full((b, k), neg_inf, device=device)
    alive[:, 0] = 0.0                                        # one live hypothesis per sentence to start
    finished_tokens = torch.zeros(b, k, steps, dtype=torch.long, device=device)
    finished_scores = torch.full((b, k), neg_inf, device=device)
    finished_lengths = torch.zeros(b, k, dtype=torch.long, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    rank = torch.arange(2 * k, device=device)
    offsets = torch.arange(b, device=device)[:, None] * k
    best_bound = length_penalty(steps, alpha)
    logits = session.first()
    for step in range(steps):
        length = step + 1
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(b, k, vocab) + alive[..., None]).view(b, k * vocab)
        candidate_scores, candidates = totals.topk(min(2 * k, k * vocab), dim=-1)            # (b, 2k)
        origin, token = candidates // vocab, candidates % vocab
        history = session.generated.view(b, k, step).gather(1, origin[..., None].expand(-1, -1, step))
        sequences = torch.cat([history, token[..., None]], dim=-1)                           # (b, 2k, length)
        is_eos = token == eos_id if eos_id is not None else torch.zeros_like(token, dtype=torch.bool)
        accepted = is_eos & (rank[: token.shape[1]] < k) if early_stopping else is_eos
        accepted = accepted & ~done[:, None] & torch.isfinite(candidate_scores)
        new_scores = torch.where(accepted, candidate_scores / length_penalty(length, alpha), neg_inf)
        pool_scores = torch.cat([finished_scores, new_scores], dim=1)
        padded = nn.functional.pad(sequences, (0, steps - length))
        pool_tokens = torch.cat([finished_tokens, padded], dim=1)
        pool_lengths = torch.cat([finished_lengths, torch.full_like(token, length)], dim=1)
        finished_scores, keep = pool_scores.topk(k, dim=-1)
        finished_tokens = pool_tokens.gather(1, keep[..., None].expand(-1, -1, steps))
        finished_lengths = pool_lengths.gather(1, keep)
        alive, survivors = candidate_scores.masked_fill(is_eos, neg_inf).topk(k, dim=-1)
        has_finished = torch.isfinite(finished_scores[:, 0])
        if early_stopping:
            done = done | torch.isfinite(finished_scores[:, -1])
        else:
            worst = torch.where(torch.isfinite(finished_scores), finished_scores, -neg_inf).amin(-1)
            done = done | (has_finished & (worst > alive[:, 0] / best_bound))
        done = done | ~torch.isfinite(alive[:, 0])
        if bool(done.all()) or step + 1 == steps:
            alive_tokens = sequences.gather(1, survivors[..., None].expand(-1, -1, length))
            break
        session.reorder((offsets + origin.gather(1, survivors)).view(-1))
        logits = session.advance(token.gather(1, survivors).view(-1))
    # Sentences without a finished hypothesis return their alive ones, scored the same way.
    fallback = ~torch.isfinite(finished_scores[:, 0])
    if bool(fallback.any()):
        length = alive_tokens.shape[-1]
        alive_scores = alive / length_penalty(length, alpha)
        finished_scores = torch.where(fallback[:, None], alive_scores, finished_scores)
        finished_tokens = torch.where(fallback[:, None, None], nn.functional.pad(alive_tokens, (0, steps - length)),
                                      finished_tokens)
        finished_lengths = torch.where(fallback[:, None], torch.full_like(finished_lengths, length),
                                       finished_lengths)
    width = int(finished_lengths.max())
    hypotheses = finished_tokens[..., :width]
    return Decoded(hypotheses[:, 0], finished_scores[:, 0], finished_lengths[:, 0],
                   hypotheses=hypotheses, hypothesis_scores=finished_scores)
