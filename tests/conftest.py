"""Shared fixtures: the real MNIST folder beside the checkout, an isolated data cache, Hydra composition."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_MNIST = REPO.parent / "shared" / "data" / "mnist"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    if not (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {REAL_MNIST}")
    return REAL_MNIST


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory):
    """Every test caches decoded data in one temporary folder, never in the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("optbench-cache")
    old = os.environ.get("OPTBENCH_DATA")
    os.environ["OPTBENCH_DATA"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("OPTBENCH_DATA", None)
    else:
        os.environ["OPTBENCH_DATA"] = old


def compose(*overrides: str):
    """The config `optbench train <overrides>` would get, without Hydra's runtime."""
    from optbench.compose import compose_config

    return compose_config(list(overrides))


def run_cli(*args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`optbench <args>` in a fresh interpreter, as a user would run it."""
    return subprocess.run(
        [sys.executable, "-m", "optbench", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
