"""Fashion-MNIST (LRA "Image" style): 28x28 images as length-784 intensity sequences, 10 classes.

Source: the original Zalando IDX files from Debian ``dataset-fashion-mnist`` 0.0~git20200523.55506a9-1
(30.9 MB .deb, 30.2 MB kept), 60,000 train / 10,000 test, 6000 / 1000 per class.

Options:
    levels: quantise intensities 0..255 to ids ``1..levels`` (default 256 = raw intensities + 1; vocabulary
        ``levels + 1``).
    validation_size: images held out of train for validation, stratified and deterministic from the seed
        (default 5000: 55,000 / 5,000 / 10,000). 0 gives an empty validation split.
    max_train: keep a stratified subset of this many training images (CPU runs), ``None`` keeps all.
    downsample: average ``k x k`` pixel blocks before quantising (default 1: 28x28, 784 tokens; 2: 14x14, 196
        tokens; 4: 7x7, 49 tokens). Pixel sequences at a length that 2 CPU cores can train many times over.

Measured (seed 0, defaults): 55,000 / 5,000 / 10,000 images, exactly 10% per class in every split; fetch 1.2-2.8 s
(30.9 MB download); ``load`` 1.5-2.1 s (gunzip, checksum, split and quantise 70k images; kept as int16, 110 MB).
"""

from __future__ import annotations

import numpy as np

from transevolve.data import datasets as ds
from transevolve.data.packages import package_file, require
from transevolve.data.readers import read_idx
from transevolve.tasks.base import Task, TaskData, register_task

_DIR = "usr/share/datasets/fashion-mnist/"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def _read(prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(package_file("dataset-fashion-mnist", f"{_DIR}{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(package_file("dataset-fashion-mnist", f"{_DIR}{prefix}-labels-idx1-ubyte.gz"))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise ValueError(f"fashion-mnist {prefix}: images {images.shape} and labels {labels.shape} do not match")
    return images.reshape(images.shape[0], -1), labels.astype(np.int64)


def block_mean(pixels: np.ndarray, factor: int, side: int = 28) -> np.ndarray:
    """``pixels (N, side * side)`` -> ``(N, (side // factor) ** 2)``: the mean of each ``factor x factor`` block,
    rounded to the nearest integer (ties to even), same dtype range 0..255."""
    if factor == 1:
        return pixels
    n, small = pixels.shape[0], side // factor
    blocks = pixels.reshape(n, small, factor, small, factor).astype(np.float64).mean(axis=(2, 4))
    return np.rint(blocks).astype(pixels.dtype).reshape(n, small * small)


@register_task
class FashionMnist(Task):
    """Fashion-MNIST 60k/10k, length ``(28 / downsample)**2``; options: ``levels``, ``validation_size``,
    ``max_train``, ``downsample``."""

    name = "fashion_mnist"
    kind = "classification"
    metric = "accuracy"
    description = "Fashion-MNIST 60k/10k as pixel sequences (784 tokens, or fewer: downsample), LRA Image, 10 classes"
    data_packages = ("dataset-fashion-mnist",)

    def __init__(self, levels: int = 256, validation_size: int = 5000, max_train: int | None = None,
                 downsample: int = 1) -> None:
        if not 2 <= levels <= 256:
            raise ValueError(f"levels must be in [2, 256], got {levels}")
        if not 0 <= validation_size < 60000:
            raise ValueError(f"validation_size must be in [0, 60000), got {validation_size}")
        if max_train is not None and max_train < 1:
            raise ValueError(f"max_train must be >= 1 or None, got {max_train}")
        if downsample not in (1, 2, 4, 7, 14):
            raise ValueError(f"downsample must divide 28 (1, 2, 4, 7 or 14), got {downsample}")
        self.levels, self.validation_size, self.max_train = levels, validation_size, max_train
        self.downsample = downsample

    def load(self, seed: int = 0) -> TaskData:
        require(self.data_packages, task=self.name)
        train_x, train_y = _read("train")
        test_x, test_y = _read("t10k")
        indices = ds.stratified_split(train_y.tolist(), {"validation": self.validation_size}, seed,
                                   salt="fashion_mnist")
        train_idx = indices["train"]
        if self.max_train is not None and self.max_train < len(train_idx):
            keep = ds.stratified_split(train_y[train_idx].tolist(), {"test": self.max_train}, seed,
                                    salt="fashion_mnist:cap")["test"]
            train_idx = [train_idx[i] for i in keep]
        pixels = block_mean(np.concatenate([train_x, test_x]), self.downsample)
        labels = np.concatenate([train_y, test_y])
        offset = len(train_y)
        splits = ds.image_splits(ds.quantise(pixels, self.levels), labels,
                              {"train": train_idx, "validation": indices["validation"],
                               "test": range(offset, offset + len(test_y))})
        return TaskData(name=self.name, kind=self.kind, metric=self.metric, vocab_size=self.levels + 1,
                        splits=splits, num_classes=10, max_length=ds.longest(splits),
                        info={"source": ds.source_info(self.data_packages), "levels": self.levels,
                              "downsample": self.downsample, "image_side": 28 // self.downsample,
                              "classes": list(CLASSES), "licence": "MIT (Zalando SE)"})
