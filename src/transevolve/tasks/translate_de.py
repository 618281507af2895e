"""LibreOffice help En->De: paragraph pairs aligned by ``par_id`` / ``hd_id``, split by help page.

Source: Debian ``libreoffice-help-en-us`` and ``libreoffice-help-de`` (4:7.4.7-1+deb12u14 when measured; 1.75 +
3.3 MB .debs). Every paragraph or heading of a help page carries the same ``par_id...`` / ``hd_id...`` in both
languages, so the alignment is exact by construction. Per page: collect the text of elements with such an id
(nested markup flattened, hidden platform variants dropped except the ``default`` one, whitespace collapsed),
pair by id (ids repeated within a page are dropped), keep pairs with both sides non-empty and EN != DE.
Human translations, MPL-2.0.

Version drift: Debian point releases replace ``+deb12uNN`` and the old .deb leaves the mirror, so the packages
are not pinned; the fetch checks each .deb against the apt index and records the version and the checksum of
every page. The aligned corpus is a deterministic function of those pages (sorted paths, page order), is cached
as JSON under ``data_dir()/processed/translate_de/`` keyed by the page checksums, and its sha256 is reported in
``info["corpus_sha256"]``: two machines with the same ``corpus_sha256`` train and test on identical data.

Splits: by page (no page shared between splits), 5% / 5% of the pairs for validation / test by default, then the
leak removal, caps, joint BPE vocabulary and length filter of :mod:`transevolve.data.translation`.

Measured (4:7.4.7-1+deb12u14, seed 0, defaults): 2560 pages per language (23.4 + 24.4 MB kept), 50,926 aligned
pairs with EN != DE from 2538 pages (34,415 unique; corpus sha256 e30bc86f...); pages 2282 / 123 / 133; after
de-duplication, leak removal (756 validation and 822 test pairs whose English also occurs in train) and the
128-token filter (81 / 5 / 6 dropped): **31,349 / 1,477 / 1,419 pairs**; BPE 8000, source tokens p50 13, p90 41,
max 124, target p50 16, p90 46. Fetch 1.9 + 2.3 s (1.8 + 3.3 MB). First load 12-21 s (alignment about 9 s, BPE
training about 3 s), later loads 2-4 s.
"""

from __future__ import annotations

from typing import Any

from transevolve.data import datasets as ds
from transevolve.data import translation as tr
from transevolve.data.packages import content_key, package_files, require
from transevolve.data.readers import align_help_pages
from transevolve.tasks.base import Task, TaskData, register_task

EN_DIR = "usr/share/libreoffice/help/en-US/text/"
DE_DIR = "usr/share/libreoffice/help/de/text/"
EXTRACTOR_VERSION = 1


def help_corpus() -> list[list[str]]:
    """``[page, id, en, de]`` for every aligned unit with EN != DE, pages sorted, units in page order."""
    english = package_files("libreoffice-help-en-us", EN_DIR)
    german = package_files("libreoffice-help-de", DE_DIR)
    rows: list[list[str]] = []
    for rel_en, path_en in english.items():
        page = rel_en[len(EN_DIR):]
        path_de = german.get(DE_DIR + page)
        if path_de is None:
            continue
        source = path_en.read_text(encoding="utf-8")
        target = path_de.read_text(encoding="utf-8")
        for unit, en, de in align_help_pages(source, target):
            if en and de and en != de:
                rows.append([page, unit, en, de])
    if not rows:
        raise ValueError("no aligned paragraphs found in the LibreOffice help pages")
    return rows


@register_task
class TranslateDe(Task):
    """LibreOffice help En->De; options: ``vocab_size``, ``max_length``, ``max_train_pairs``, ``max_eval_pairs``,
    ``validation_fraction``, ``test_fraction``."""

    name = "translate_de"
    kind = "seq2seq"
    metric = "bleu"
    description = "LibreOffice help En->De paragraph pairs (par_id aligned), split by page, joint BPE"
    data_packages = ("libreoffice-help-en-us", "libreoffice-help-de")

    def __init__(self, vocab_size: int = 8000, max_length: int = 128, max_train_pairs: int | None = None,
                 max_eval_pairs: int | None = None, validation_fraction: float = 0.05,
                 test_fraction: float = 0.05) -> None:
        tr.check_options(vocab_size, max_length, max_train_pairs, max_eval_pairs)
        self.vocab_size, self.max_length = vocab_size, max_length
        self.max_train_pairs, self.max_eval_pairs = max_train_pairs, max_eval_pairs
        self.validation_fraction, self.test_fraction = ds.check_split_fractions(validation_fraction, test_fraction)

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        key = f"{content_key(self.data_packages)}-v{EXTRACTOR_VERSION}"
        rows, digest = ds.cached_json(ds.processed_dir(self.name) / f"corpus-{key}.json", help_corpus)
        corpus = [(page, en, de) for page, _, en, de in rows]
        info: dict[str, Any] = {"source": ds.source_info(self.data_packages), "direction": "en-de",
                                "pages": len({r[0] for r in rows}), "licence": "MPL-2.0 (LibreOffice help)"}
        return tr.build_translation(self.name, corpus, digest, seed=seed,
                                 fractions={"validation": self.validation_fraction, "test": self.test_fraction},
                                 vocab_size=self.vocab_size, max_length=self.max_length,
                                 max_train_pairs=self.max_train_pairs, max_eval_pairs=self.max_eval_pairs, info=info)
