"""UCI 8x8 optical digits as length-64 pixel sequences (the default dataset of ``transevolve compare``).

Source: ``sklearn/datasets/data/digits.csv.gz`` read out of the scikit-learn 1.9.1 wheel (data package
``scikit-learn``; scikit-learn itself is not installed): 1797 images x 64 intensities 0..16, label in the last
column, 10 classes (174-183 each). Ids are intensity + 1 (1..17, vocabulary 18; 0 stays padding).

Split: stratified and deterministic from the seed; by default 10% validation and 20% test, i.e.
1258 / 180 / 359 images (seed 0: 121-128 per class in train, 18 per class in validation, 35-37 in test).
Measured: fetch 0.7 s (9.3 MB wheel download, 57.5 KB kept); ``load`` 20-60 ms (CSV parse + checksum).
"""

from __future__ import annotations

from transevolve.data import datasets as ds
from transevolve.data.packages import package_file, require
from transevolve.data.readers import read_numeric_csv
from transevolve.tasks.base import Task, TaskData, register_task

DIGITS_CSV = "sklearn/datasets/data/digits.csv.gz"


@register_task
class Digits(Task):
    """8x8 digits, 10 classes, length 64; options: ``validation_fraction``, ``test_fraction``."""

    name = "digits"
    kind = "classification"
    metric = "accuracy"
    description = "UCI 8x8 handwritten digits (1797) as length-64 intensity sequences, 10 classes"
    data_packages = ("scikit-learn",)

    def __init__(self, validation_fraction: float = 0.1, test_fraction: float = 0.2) -> None:
        self.validation_fraction, self.test_fraction = ds.check_split_fractions(validation_fraction, test_fraction)

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        table = read_numeric_csv(package_file("scikit-learn", DIGITS_CSV), columns=65)
        pixels, labels = table[:, :64], table[:, 64]
        if pixels.min() < 0 or pixels.max() > 16 or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{DIGITS_CSV}: values out of range (pixels 0..16, labels 0..9 expected)")
        total = len(labels)
        held = {"validation": round(self.validation_fraction * total), "test": round(self.test_fraction * total)}
        indices = ds.stratified_split(labels.tolist(), held, seed, salt="digits")
        splits = ds.image_splits((pixels + 1).astype("int16"), labels, indices)
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=18, splits=splits,
                        num_classes=10, max_length=ds.longest(splits),
                        info={"source": ds.source_info(self.data_packages), "images": total, "levels": 17,
                              "licence": "BSD-3 (UCI ML repository data)"})
