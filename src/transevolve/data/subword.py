"""A joint subword vocabulary for translation: sentencepiece BPE with the project's special ids.

The trainer is told ``pad_id=0, bos_id=1, eos_id=2, unk_id=3``, so sentencepiece's own ids already follow the
project convention (no remapping table is needed); pieces start at 4. Normalisation is ``identity`` and
``byte_fallback`` is on, so ``decode(encode(text)) == text`` for any text whose whitespace is already single
spaces without leading/trailing blanks (the corpora are normalised that way). Training uses 2 threads, no
sentence sampling and no shuffling, and is deterministic: the same texts give the same model bytes.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from transevolve.data.cache import atomic_write_bytes
from transevolve.data.errors import DataCorruptError
from transevolve.tasks.base import BOS_ID, EOS_ID, PAD_ID

UNK_ID = 3


class SubwordTokenizer:
    """Encode text to ids in ``[4, vocab_size)`` (3 = unknown) and decode ids back to detokenized text."""

    def __init__(self, model: bytes) -> None:
        import sentencepiece as spm

        self.model_bytes = model
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(model)
        except Exception as error:  # sentencepiece raises RuntimeError / OSError on a bad proto
            raise DataCorruptError(f"not a sentencepiece model ({error})") from error
        if (self._sp.pad_id(), self._sp.bos_id(), self._sp.eos_id()) != (PAD_ID, BOS_ID, EOS_ID):
            raise DataCorruptError("sentencepiece model does not use pad=0, bos=1, eos=2")
        self.vocab_size = int(self._sp.get_piece_size())

    @classmethod
    def load(cls, path: Path) -> SubwordTokenizer:
        return cls(path.read_bytes())

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text`` (no BOS / EOS)."""
        return list(self._sp.encode(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids of each text (no BOS / EOS)."""
        return [list(x) for x in self._sp.encode(list(texts))] if texts else []

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenized text: padding and a leading BOS are dropped, decoding stops at the first EOS."""
        out: list[int] = []
        for i in (int(x) for x in ids):
            if i == EOS_ID:
                break
            if i not in (PAD_ID, BOS_ID):
                out.append(i)
        return self._sp.decode(out)

    def pieces(self, text: str) -> list[str]:
        return list(self._sp.encode(text, out_type=str))


def train_subword(texts: Iterable[str], vocab_size: int) -> SubwordTokenizer:
    """Train a BPE model on ``texts`` (quietly, 2 threads). Small corpora may give fewer pieces than asked; the
    vocabulary must hold every distinct character plus 256 byte pieces and 4 specials (else ``ValueError``)."""
    import sentencepiece as spm

    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 byte-fallback pieces + specials), got {vocab_size}")
    buffer = io.BytesIO()
    with open(os.devnull, "w") as devnull:
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(list(texts)), model_writer=buffer, logstream=devnull,
                model_type="bpe", vocab_size=vocab_size, hard_vocab_limit=False, character_coverage=1.0,
                byte_fallback=True, normalization_rule_name="identity", pad_id=PAD_ID, bos_id=BOS_ID,
                eos_id=EOS_ID, unk_id=UNK_ID, num_threads=2, input_sentence_size=0, shuffle_input_sentence=False,
                minloglevel=2)
        except RuntimeError as error:  # e.g. fewer pieces than distinct characters + 256 byte pieces + specials
            raise ValueError(f"cannot train a {vocab_size}-piece vocabulary on this corpus: {error}") from error
    return SubwordTokenizer(buffer.getvalue())


def cached_subword(path: Path, texts: Iterable[str], vocab_size: int) -> SubwordTokenizer:
    """Load the model at ``path`` or train it on ``texts`` and store it atomically there."""
    if path.is_file():
        try:
            return SubwordTokenizer.load(path)
        except DataCorruptError:
            pass  # rebuilt below
    tokenizer = train_subword(texts, vocab_size)
    atomic_write_bytes(path, tokenizer.model_bytes)
    return tokenizer
