"""Bible verse pairs World English Bible <-> Reina-Valera 1909, split by book.

Source: SWORD zText modules ``engWEB2015eb`` (Debian ``sword-text-web`` 426.0-1, 4.0 MB .deb) and
``spaRV1909eb`` (``sword-text-sparv`` 2.60-1, 2.7 MB), read with pysword 0.2.8 (its block inflation is memoised:
2.8 s instead of 2 minutes). Verse text: OSIS markup removed, footnotes dropped (treated as a word boundary),
whitespace tidied; canonical psalm titles are kept (both texts carry them). Both texts are public domain.

Pairs: verses present and non-empty in both modules (31,077; the WEB's deuterocanon has no Spanish side), minus
pairs whose character-length ratio is outside [1/3, 3] (misaligned verses, e.g. the WEB appends its whole glossary
to Revelation 22:21). Direction ``en-es`` (default) or ``es-en``.

Splits: by book (no book shared between splits), 5% / 5% of the verses for validation / test by default, then the
recipe of :mod:`transevolve.data.translation`. The verse corpus is cached as JSON under
``data_dir()/processed/translate_es/``.

Measured (seed 0, en-es, defaults): 37,457 WEB and 31,084 RV1909 verses, 31,077 aligned, 16 dropped by the ratio
filter; books 58 / 5 / 3; **27,027 / 2,020 / 1,831 pairs**; BPE 8000, source tokens p50 31, p90 51, max 115.
Fetch 2.7 + 2.7 s (4.0 + 2.7 MB). First load about 12 s (verse extraction 3 s, BPE training), later 3-6 s.
"""

from __future__ import annotations

from typing import Any

from transevolve.data import datasets as ds
from transevolve.data import translation as tr
from transevolve.data.packages import content_key, package_dir, package_files, require
from transevolve.data.readers import sword_verses
from transevolve.tasks.base import Task, TaskData, register_task

SWORD_ROOT = "usr/share/sword"
MAX_RATIO = 3.0
EXTRACTOR_VERSION = 1


def bible_corpus() -> list[list[Any]]:
    """``[book, chapter, verse, english, spanish]`` for every verse present in both modules, canonical order."""
    for name in ("sword-text-web", "sword-text-sparv"):
        package_files(name)  # every file checked against the manifest (pysword reads damaged data silently)
    english = {(b, c, v): t for b, c, v, t in sword_verses(package_dir("sword-text-web") / SWORD_ROOT,
                                                               "engWEB2015eb")}
    spanish = {(b, c, v): t for b, c, v, t in sword_verses(package_dir("sword-text-sparv") / SWORD_ROOT,
                                                               "spaRV1909eb")}
    rows = [[b, c, v, text, spanish[(b, c, v)]] for (b, c, v), text in english.items() if (b, c, v) in spanish]
    if not rows:
        raise ValueError("no verse is present in both Bible modules")
    return rows


@register_task
class TranslateEs(Task):
    """Bible WEB <-> RV1909; options: ``direction``, ``vocab_size``, ``max_length``, ``max_train_pairs``,
    ``max_eval_pairs``, ``validation_fraction``, ``test_fraction``."""

    name = "translate_es"
    kind = "seq2seq"
    metric = "bleu"
    description = "Bible verse pairs WEB <-> Reina-Valera 1909 (31k), split by book, joint BPE"
    data_packages = ("sword-text-web", "sword-text-sparv")

    def __init__(self, direction: str = "en-es", vocab_size: int = 8000, max_length: int = 160,
                 max_train_pairs: int | None = None, max_eval_pairs: int | None = None,
                 validation_fraction: float = 0.05, test_fraction: float = 0.05) -> None:
        if direction not in ("en-es", "es-en"):
            raise ValueError(f"direction must be 'en-es' or 'es-en', got {direction!r}")
        tr.check_options(vocab_size, max_length, max_train_pairs, max_eval_pairs)
        self.direction, self.vocab_size, self.max_length = direction, vocab_size, max_length
        self.max_train_pairs, self.max_eval_pairs = max_train_pairs, max_eval_pairs
        self.validation_fraction, self.test_fraction = ds.check_split_fractions(validation_fraction, test_fraction)

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        key = f"{content_key(self.data_packages)}-v{EXTRACTOR_VERSION}"
        rows, digest = ds.cached_json(ds.processed_dir(self.name) / f"corpus-{key}.json", bible_corpus)
        kept = [r for r in rows if 1 / MAX_RATIO <= len(r[3]) / len(r[4]) <= MAX_RATIO]
        if self.direction == "en-es":
            corpus = [(book, en, es) for book, _, _, en, es in kept]
        else:
            corpus = [(book, es, en) for book, _, _, en, es in kept]
        info: dict[str, Any] = {"source": ds.source_info(self.data_packages), "direction": self.direction,
                                "verses_aligned": len(rows), "ratio_dropped": len(rows) - len(kept),
                                "books": len({r[0] for r in kept}), "licence": "public domain"}
        return tr.build_translation(self.name, corpus, digest, seed=seed, variant=self.direction,
                                 fractions={"validation": self.validation_fraction, "test": self.test_fraction},
                                 vocab_size=self.vocab_size, max_length=self.max_length,
                                 max_train_pairs=self.max_train_pairs, max_eval_pairs=self.max_eval_pairs, info=info)
