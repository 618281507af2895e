"""Readers for the source formats: IDX (gz), CSV (gz / bz2), R lazy-load DBs, LibreOffice help HTML, SWORD.

Every reader validates what it reads (magic numbers, declared sizes, column counts, decompressed lengths) and
raises :class:`DataCorruptError` instead of returning a partial dataset.
"""

from __future__ import annotations

import bz2
import csv
import functools
import gzip
import io
import lzma
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np

from transevolve.data.errors import DataCorruptError

_DECOMPRESS_ERRORS = (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError)


def _decompress(path: Path, opener: Callable[[Path], bytes], what: str) -> bytes:
    try:
        return opener(path)
    except _DECOMPRESS_ERRORS as error:
        raise DataCorruptError(f"{path} is truncated or corrupt ({what}: {error})") from error


def read_gzip(path: Path) -> bytes:
    return _decompress(path, lambda p: gzip.decompress(p.read_bytes()), "gzip")


def read_bz2(path: Path) -> bytes:
    return _decompress(path, lambda p: bz2.decompress(p.read_bytes()), "bz2")


# ------------------------------------------------------------------------------------------------------ images

def read_idx(path: Path) -> np.ndarray:
    """An IDX file (``.gz``) as a uint8 array of its declared shape, e.g. ``(60000, 28, 28)``."""
    blob = read_gzip(path) if path.suffix == ".gz" else path.read_bytes()
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] != 0x08:
        raise DataCorruptError(f"{path} is not an unsigned-byte IDX file (magic {blob[:4].hex()})")
    ndim = blob[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(blob) < header:
        raise DataCorruptError(f"{path}: IDX header truncated")
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(blob) != expected:
        raise DataCorruptError(f"{path}: IDX body has {len(blob) - header} bytes, the header declares "
                               f"{expected - header} for shape {tuple(dims)}")
    return np.frombuffer(blob, np.uint8, offset=header).reshape(dims)


def read_numeric_csv(path: Path, columns: int, rows: int | None = None) -> np.ndarray:
    """A headerless numeric CSV (``.gz``) as an int64 ``(rows, columns)`` array; checks the shape."""
    text = read_gzip(path) if path.suffix == ".gz" else path.read_bytes()
    try:
        values = np.loadtxt(io.BytesIO(text), delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as error:
        raise DataCorruptError(f"{path}: malformed numeric CSV ({error})") from error
    array = values.astype(np.int64)
    if not np.array_equal(array, values):
        raise DataCorruptError(f"{path}: non-integer values in a numeric CSV")
    if array.ndim != 2 or array.shape[1] != columns or (rows is not None and array.shape[0] != rows):
        raise DataCorruptError(f"{path}: expected {rows or 'any'} x {columns} values, found {array.shape}")
    return array


# -------------------------------------------------------------------------------------------------------- text

def read_csv_records(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    """Rows of a CSV with a header (``.bz2`` / ``.gz`` / plain) as dicts; checks the required columns."""
    if path.suffix == ".bz2":
        blob = read_bz2(path)
    elif path.suffix == ".gz":
        blob = read_gzip(path)
    else:
        blob = path.read_bytes()
    try:
        reader = csv.DictReader(io.StringIO(blob.decode("utf-8")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataCorruptError(f"{path}: malformed CSV ({error})") from error
    missing = [c for c in required if c not in (reader.fieldnames or [])]
    if missing:
        raise DataCorruptError(f"{path}: CSV lacks columns {missing} (has {reader.fieldnames})")
    if any(None in row or any(row[c] is None for c in required) for row in rows):
        raise DataCorruptError(f"{path}: CSV has ragged rows (truncated?)")
    return rows


def _rdb_payload(blob: bytes, where: str) -> bytes:
    """Decompress one R lazy-load DB entry: 4-byte big-endian length, then a type byte and the stream."""
    if len(blob) < 5:
        raise DataCorruptError(f"{where}: entry of {len(blob)} bytes is truncated")
    length, kind = int.from_bytes(blob[:4], "big"), blob[4:5]
    try:
        if kind == b"Z":
            out = lzma.decompress(blob[5:], format=lzma.FORMAT_RAW,
                                  filters=[{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 26}])
        elif kind == b"2":
            out = bz2.decompress(blob[5:])
        elif kind == b"0":
            out = blob[5:]
        else:
            out = zlib.decompress(blob[4:])
    except _DECOMPRESS_ERRORS as error:
        raise DataCorruptError(f"{where}: entry is corrupt ({error})") from error
    if len(out) != length:
        raise DataCorruptError(f"{where}: entry decompresses to {len(out)} bytes, header says {length}")
    return out


def _r_convert(blob: bytes, where: str) -> Any:
    import rdata

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Unknown file type: assumed RDS", missing tbl_df constructor
            return rdata.conversion.convert(rdata.parser.parse_data(blob))
    except Exception as error:  # rdata raises many types on malformed input
        raise DataCorruptError(f"{where}: not a readable R serialization ({type(error).__name__}: {error})") from error


def r_lazyload(rdx: Path, rdb: Path, name: str) -> Any:
    """Object ``name`` of an R lazy-load DB (``Rdata.rdx`` index + ``Rdata.rdb``), converted by ``rdata``."""
    index = _r_convert(read_gzip(rdx), str(rdx))
    try:
        offset, length = (int(x) for x in index["variables"][name])
    except KeyError:
        raise DataCorruptError(f"{rdx}: no object {name!r} in the index") from None
    with open(rdb, "rb") as handle:
        handle.seek(offset)
        blob = handle.read(length)
    if len(blob) != length:
        raise DataCorruptError(f"{rdb}: truncated (object {name!r} needs bytes {offset}..{offset + length})")
    return _r_convert(_rdb_payload(blob, f"{rdb}[{name}]"), f"{rdb}[{name}]")


# ------------------------------------------------------------------------------------------ LibreOffice help

_UNIT_ID = re.compile(r"^(par|hd)_id")
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param", "source", "track",
         "wbr"}
_SKIP = {"script", "style", "head", "title", "noscript"}
_SPACE = re.compile(r"\s+")


class _HelpParser(HTMLParser):
    """Collects ``(id, text)`` for elements whose id starts with ``par_id`` / ``hd_id``.

    Text goes to the innermost open unit. Hidden platform variants inside ``switchinline`` spans (MAC, UNX, ...)
    are skipped; the ``default...`` variant is kept.
    """

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, int | None, bool]] = []  # (tag, unit index, skip)
        self.units: list[tuple[str, list[str]]] = []
        self.skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _VOID:
            return
        attributes = dict(attrs)
        element_id = attributes.get("id") or ""
        skip = tag in _SKIP or ("hidden" in attributes and not element_id.startswith("default"))
        unit = None
        if not skip and _UNIT_ID.match(element_id):
            unit = len(self.units)
            self.units.append((element_id, []))
        self.stack.append((tag, unit, skip))
        self.skip_depth += skip

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "br":
            self.handle_data(" ")

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, -1, -1):
            if self.stack[depth][0] == tag:
                for _, _, skip in self.stack[depth:]:
                    self.skip_depth -= skip
                del self.stack[depth:]
                return

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        for _, unit, _ in reversed(self.stack):
            if unit is not None:
                self.units[unit][1].append(data)
                return


def help_units(html: str) -> list[tuple[str, str]]:
    """``(id, text)`` of every paragraph / heading unit of a help page, whitespace collapsed, in page order."""
    parser = _HelpParser()
    parser.feed(html)
    parser.close()
    return [(uid, _SPACE.sub(" ", "".join(parts)).strip()) for uid, parts in parser.units]


def align_help_pages(source: str, target: str) -> list[tuple[str, str, str]]:
    """``(id, source text, target text)`` for units present in both pages (ids unique within each page).

    Ids that occur more than once in either page are dropped (their pairing would be ambiguous).
    """
    def by_id(units: list[tuple[str, str]]) -> dict[str, str]:
        seen: dict[str, int] = {}
        for uid, _ in units:
            seen[uid] = seen.get(uid, 0) + 1
        return {uid: text for uid, text in units if seen[uid] == 1}

    src_units = help_units(source)
    tgt = by_id(help_units(target))
    src = by_id(src_units)
    return [(uid, src[uid], tgt[uid]) for uid, _ in src_units if uid in src and uid in tgt]


# --------------------------------------------------------------------------------------------------------- SWORD

_NOTE = re.compile(r"<note\b[^>]*>.*?</note>", re.S)
_TAG = re.compile(r"<[^>]+>")
_SPACE_BEFORE_PUNCT = re.compile(r" +([,.;:!?’”»)\]])")


def clean_osis(raw: str) -> str:
    """Plain verse text from OSIS markup: footnotes dropped (as a word boundary), tags removed, spaces tidied."""
    text = _NOTE.sub(" ", raw)
    text = _TAG.sub("", text)
    import html as _html

    text = _SPACE.sub(" ", _html.unescape(text)).strip()
    return _SPACE_BEFORE_PUNCT.sub(r"\1", text)


def sword_verses(root: Path, module: str) -> Iterator[tuple[str, int, int, str]]:
    """``(book osis name, chapter, verse, text)`` of every non-empty verse of a SWORD zText module.

    ``root`` is the directory holding ``mods.d/`` and ``modules/``.
    """
    from pysword.modules import SwordModules

    try:
        modules = SwordModules(str(root))
        found = modules.parse_modules()
        if module not in found:
            raise DataCorruptError(f"{root}: SWORD module {module!r} not found (have {sorted(found)})")
        bible = modules.get_bible_from_module(module)
        uncompress = getattr(bible, "_decompressed_text", None)
        if callable(uncompress):  # pysword inflates a whole block per verse; memoise it (same results, ~50x faster)
            bible._decompressed_text = functools.lru_cache(maxsize=8)(uncompress)
        books = bible.get_structure().get_books()
        for testament in ("ot", "nt"):
            for book in books.get(testament, []):
                for chapter in range(1, book.num_chapters + 1):
                    count = book.chapter_lengths[chapter - 1]
                    texts = list(bible.get_iter(books=[book.osis_name], chapters=[chapter],
                                                verses=range(1, count + 1), clean=False))
                    if len(texts) != count:
                        raise DataCorruptError(f"{root}: {module} {book.osis_name} {chapter} has {len(texts)} verses, "
                                               f"the versification says {count}")
                    for verse, raw in enumerate(texts, start=1):
                        text = clean_osis(raw)
                        if text:
                            yield book.osis_name, chapter, verse, text
    except DataCorruptError:
        raise
    except Exception as error:  # pysword raises IndexError / struct / zlib errors on damaged modules
        raise DataCorruptError(f"{root}: SWORD module {module!r} is unreadable ({type(error).__name__}: "
                               f"{error})") from error
