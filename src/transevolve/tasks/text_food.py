"""Amazon fine-food reviews ``small_fine_foods``, great / other, byte-level (LRA "Text" style).

Source: the R lazy-load DB of Debian ``r-cran-modeldata`` 1.1.0-1 (4.3 MB .deb, 4.1 MB kept), objects
``training_data`` (4000 reviews: 2600 great, 1400 other) and ``testing_data`` (1000: 658 / 342), read without R
through ``rdata``. McAuley & Leskovec (SNAP); package MIT.

Ids: UTF-8 bytes + 3 (vocabulary 259), truncated to ``max_length`` (default 1024) and optionally padded to it.
Labels: other = 0, great = 1. Split: the package's test set is the test split; ``validation_size`` reviews
(default 400) are held out of the training set, stratified and deterministic from the seed: 3600 / 400 / 1000.
The decoded reviews are cached as JSON under ``data_dir()/processed/text_food`` (the first load parses the R
data in about 1.5 s, later loads take 0.2-0.3 s). Measured: fetch 1.9-2.6 s; review length p50 277, p90 787, p99
1802, max 8055 bytes, so the default 1024 truncates 5.7% of the reviews; great 65% in every split.
"""

from __future__ import annotations

from typing import Any

from transevolve.data import datasets as ds
from transevolve.data.packages import content_key, package_file, require
from transevolve.data.readers import r_lazyload
from transevolve.tasks.base import Task, TaskData, register_task

_PREFIX = "usr/lib/R/site-library/modeldata/data/Rdata"
LABELS = {"other": 0, "great": 1}


def _reviews() -> dict[str, Any]:
    rdx = package_file("r-cran-modeldata", _PREFIX + ".rdx")
    rdb = package_file("r-cran-modeldata", _PREFIX + ".rdb")
    out: dict[str, Any] = {}
    for split, obj in (("train", "training_data"), ("test", "testing_data")):
        frame = r_lazyload(rdx, rdb, obj)
        if "review" not in frame or "score" not in frame:
            raise ValueError(f"modeldata {obj}: expected columns review and score, found {list(frame)}")
        texts = [str(x) for x in frame["review"]]
        scores = [str(x) for x in frame["score"]]
        unknown = sorted(set(scores) - set(LABELS))
        if unknown:
            raise ValueError(f"modeldata {obj}: unexpected scores {unknown}")
        out[split] = {"text": texts, "label": [LABELS[s] for s in scores]}
    return out


@register_task
class TextFood(Task):
    """Fine-food reviews great/other; options: ``max_length``, ``pad_to_length``, ``validation_size``."""

    name = "text_food"
    kind = "classification"
    metric = "accuracy"
    description = "Amazon fine-food reviews great/other (4k/1k), byte-level"
    data_packages = ("r-cran-modeldata",)

    def __init__(self, max_length: int = 1024, pad_to_length: bool = False, validation_size: int = 400) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        if not 0 <= validation_size < 4000:
            raise ValueError(f"validation_size must be in [0, 4000), got {validation_size}")
        self.max_length, self.pad_to_length, self.validation_size = max_length, pad_to_length, validation_size

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        key = content_key(self.data_packages)
        data, digest = ds.cached_json(ds.processed_dir(self.name) / f"reviews-{key}.json", _reviews)
        train, test = data["train"], data["test"]
        indices = ds.stratified_split(train["label"], {"validation": self.validation_size}, seed, salt="text_food")
        splits = {
            split: ds.byte_examples([train["text"][i] for i in indices[split]],
                                    [train["label"][i] for i in indices[split]], self.max_length,
                                    self.pad_to_length)
            for split in ("train", "validation")
        }
        splits["test"] = ds.byte_examples(test["text"], test["label"], self.max_length, self.pad_to_length)
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=ds.BYTE_VOCAB,
                        splits=splits, num_classes=2, tokenizer=ds.ByteTokenizer(), max_length=ds.longest(splits),
                        info={"source": ds.source_info(self.data_packages), "labels": ["other", "great"],
                              "corpus_sha256": digest, "licence": "MIT (R package); reviews from SNAP"})
