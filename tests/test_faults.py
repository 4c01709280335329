"""The fault catalogue: damaged, hostile and impossible run directories, each one line, a non-zero exit, and
nothing earlier lost; no code from a results folder runs (a planted checkpoint would create a file)."""

import json
import pickle
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from conftest import optbench, run_cli

TINY = ("device=cpu", "model.hidden=[32]", "trainer.max_steps=12", "trainer.eval_every=6", "data.val_size=1000",
        "data.train_eval_size=500")


class Planted:
    """Unpickling this creates a file: what a hostile checkpoint.pt could do with torch.load(weights_only=False)."""

    def __init__(self, target: Path):
        self.target = str(target)

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def one_line_error(out) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    errors = [line for line in lines if line.startswith("optbench: error:")]
    assert len(errors) == 1, out.stderr[-2000:]
    return errors[0]


@pytest.fixture(scope="module")
def sweep(mnist_root, tmp_path_factory):
    """A finished sweep of 4 runs (2 optimizers x 2 seeds), copied by each test that damages it."""
    folder = tmp_path_factory.mktemp("faults") / "sweep"
    out = optbench("train", "-m", f"data.root={mnist_root}", *TINY, "optimizer=sgd,adam", "seed=0,1",
                   f"hydra.sweep.dir={folder}")
    assert out.returncode == 0, out.stderr[-3000:]
    return folder


@pytest.fixture(scope="module")
def one_run(mnist_root, tmp_path_factory):
    """A finished single run, trained once for the module; `unfinished` copies it per test."""
    run = tmp_path_factory.mktemp("faults") / "run"
    assert optbench("train", f"data.root={mnist_root}", *TINY, f"hydra.run.dir={run}").returncode == 0
    return run


@pytest.fixture
def unfinished(one_run, mnist_root, tmp_path):
    """(a copy of the run whose summary says it was interrupted, so training it again resumes; that command)."""
    run = tmp_path / "run"
    shutil.copytree(one_run, run)
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    return run, ("train", f"data.root={mnist_root}", *TINY, f"hydra.run.dir={run}")


@pytest.fixture
def damaged(sweep, tmp_path):
    copy = tmp_path / "sweep"
    shutil.copytree(sweep, copy)
    runs = sorted(p.parent for p in copy.rglob("summary.json"))
    assert len(runs) == 4
    return copy, runs


@pytest.mark.parametrize("name, content", [
    ("summary.json", b'{"status": "compl'),  # half written
    ("summary.json", b""),
    ("summary.json", b"\x00\xff\xfe garbage"),
    ("config.yaml", b"optimizer: [unclosed\n  lr: {"),
    ("metrics.csv", bytes(range(256)) * 8),  # binary
])
def test_report_and_plot_skip_a_damaged_run_and_say_which(damaged, name, content):
    folder, runs = damaged
    (runs[1] / name).write_bytes(content)
    for command in (("report", str(folder)), ("plot", str(folder))):
        out = optbench(*command)
        assert out.returncode == 1, (command, out.stderr[-2000:])
        assert "Traceback" not in out.stderr
        warned = [line for line in out.stderr.splitlines() if str(runs[1] / name) in line]
        assert len(warned) == 1, out.stderr
    ranking = pd.read_csv(folder / "ranking.csv")
    assert ranking.runs.sum() == (4 if name == "metrics.csv" else 3)  # the other runs are all there


def test_half_a_row_and_rows_of_the_wrong_type_are_dropped_not_fatal(damaged):
    folder, runs = damaged
    with open(runs[0] / "metrics.csv", "a") as f:
        f.write("13,1,step,loss,0.5\n14,1,step,lo")  # what a kill mid-write leaves
    with open(runs[2] / "metrics.csv", "a") as f:
        f.write("fifteen,1,step,loss,0.5\n16,1,step,loss,not-a-number\n")
    out = optbench("report", str(folder), "--html")
    assert out.returncode == 0, out.stderr[-2000:]
    metrics = pd.read_csv(folder / "metrics.csv.gz")
    assert metrics.value.dtype == float and metrics.step.max() == 13


def test_a_damaged_checkpoint_is_one_line_and_resume_false_gets_past_it(unfinished):
    run, base = unfinished
    (run / "checkpoint.pt").write_bytes(b"not a checkpoint")
    metrics_before = (run / "metrics.csv").read_bytes()
    out = optbench(*base)
    assert out.returncode == 2
    line = one_line_error(out)
    assert "checkpoint.pt" in line and "trainer.resume=false" in line
    assert (run / "metrics.csv").read_bytes() == metrics_before  # nothing lost
    again = optbench(*base, "trainer.resume=false")
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


def test_a_planted_checkpoint_runs_no_code_in_resume_or_landscape(unfinished, tmp_path):
    run, base = unfinished
    created = tmp_path / "pwned"
    (run / "checkpoint.pt").write_bytes(pickle.dumps({"model": Planted(created)}, protocol=2))  # as torch.save writes
    out = optbench(*base)
    assert out.returncode == 2 and "checkpoint.pt" in one_line_error(out)
    assert "could run code" in one_line_error(out)
    out = optbench("landscape", str(run), "--points", "3", "--samples", "100")
    assert out.returncode == 2 and "checkpoint.pt" in one_line_error(out)
    assert not created.exists()


def test_landscape_never_calls_a_target_named_by_the_folder(unfinished, tmp_path):
    run, _ = unfinished
    copied = tmp_path / "copied"
    config = (run / "config.yaml").read_text()
    # a crafted config: its loss would copy a file if it were instantiated
    config = config.replace("_target_: torch.nn.CrossEntropyLoss",
                            f"_target_: shutil.copyfile\n  src: {run / 'config.yaml'}\n  dst: {copied}")
    assert "shutil.copyfile" in config
    (run / "config.yaml").write_text(config)
    out = optbench("landscape", str(run), "--points", "3", "--samples", "100", "--out", str(tmp_path / "plots"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert not copied.exists()


def test_a_metrics_file_shorter_than_its_checkpoint_is_never_grown(unfinished):
    run, base = unfinished
    with open(run / "metrics.csv", "r+b") as f:
        f.truncate(100)
    out = optbench(*base)
    assert out.returncode == 2 and "metrics.csv" in one_line_error(out)
    assert (run / "metrics.csv").stat().st_size == 100 and b"\x00" not in (run / "metrics.csv").read_bytes()


def test_a_damaged_config_is_one_line_and_keeps_the_checkpoint(unfinished):
    run, base = unfinished
    (run / "config.yaml").write_text("optimizer: {lr: [")
    out = optbench(*base)
    assert out.returncode == 2 and "config.yaml" in one_line_error(out)
    assert (run / "checkpoint.pt").exists()


def test_a_pass_with_one_damaged_checkpoint_fails_that_run_only(mnist_root, sweep, tmp_path):
    folder = tmp_path / "sweep"
    shutil.copytree(sweep, folder)
    runs = sorted(p.parent for p in folder.rglob("summary.json"))
    for run in runs:  # every run unfinished, so the sweep trains all again as one pass, resuming
        summary = json.loads((run / "summary.json").read_text())
        (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted"}))
    (runs[1] / "checkpoint.pt").write_bytes(b"garbage")
    out = optbench("train", "-m", f"data.root={mnist_root}", *TINY, "optimizer=sgd,adam", "seed=0,1",
                   f"hydra.sweep.dir={folder}")
    assert out.returncode == 1
    assert "interrupted" not in out.stderr.splitlines()[-1]
    statuses = {run.name: json.loads((run / "summary.json").read_text()) for run in runs}
    assert statuses[runs[1].name]["status"] == "failed" and "checkpoint.pt" in statuses[runs[1].name]["reason"]
    assert [s["status"] for name, s in statuses.items() if name != runs[1].name] == ["completed"] * 3


def test_paths_from_overrides_stay_inside_the_sweep(mnist_root, tmp_path):
    folder = tmp_path / "sweep"
    long = "x" * 300
    # the folder names are under test, not the training: 1 step (2 evaluations) instead of 12 (3)
    short = [o for o in TINY if not o.startswith(("trainer.max_steps=", "trainer.eval_every="))]
    out = optbench("train", "-m", f"data.root={mnist_root}", *short, "trainer.max_steps=1", "+note=../../escape,ok",
                   f"+tag={long}", f"hydra.sweep.dir={folder}")
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(p.parent for p in tmp_path.rglob("summary.json"))
    assert len(runs) == 2 and all(run.parent == folder for run in runs)
    assert all(len(run.name.encode()) <= 128 for run in runs)  # "<job number>_" and at most 120 bytes


def test_a_sweep_that_makes_no_run_exits_non_zero(mnist_root, tmp_path):
    out = optbench("train", "-m", f"data.root={mnist_root}", *TINY, "trainer.batch_size=0,-1",
                   f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert out.returncode != 0


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs: room for a run's first files, not for its checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.decode().strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)])


def test_a_disk_that_fills_during_a_run_ends_in_one_line_and_a_failed_summary(mnist_root, small_disk):
    run = small_disk / "run"
    out = run_cli("train", f"data.root={mnist_root}", "device=cpu", "trainer.max_steps=12", "data.val_size=1000",
                  "data.train_eval_size=500", f"hydra.run.dir={run}")
    assert out.returncode == 1, out.stderr[-2000:]
    line = one_line_error(out)
    assert "disk is full" in line and str(run) in line
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    assert not list(run.rglob("*.tmp"))


@pytest.fixture
def read_only(tmp_path):
    """A folder mounted read-only (root writes anywhere else: chmod is not enough)."""
    source, folder = tmp_path / "source", tmp_path / "ro"
    source.mkdir()
    folder.mkdir()
    for command in (["mount", "--bind", str(source), str(folder)], ["mount", "-o", "remount,ro,bind", str(folder)]):
        done = subprocess.run(command, capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot bind-mount read-only here (needs root): {done.stderr.decode().strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)])


def test_a_read_only_folder_is_one_line_in_train_and_report(mnist_root, read_only, sweep):
    out = run_cli("train", f"data.root={mnist_root}", *TINY, f"hydra.run.dir={read_only / 'run'}")
    assert out.returncode != 0
    assert "read-only" in one_line_error(out).lower()
    out = optbench("report", str(sweep), "--out", str(read_only))
    assert out.returncode == 2 and "--out" in one_line_error(out)
