"""Golden outputs: what a single run, a vectorized pass and a sweep's ranking wrote before the code was moved.

Recorded with `OPTBENCH_RECORD_GOLDEN=1 pytest tests/test_golden.py` by the code of commit cea0a57, once per CPU
(tests/golden/<cpu>/, its machine.txt says which); every later run of the same commands must write the same numbers,
bit for bit on a CPU with a recording. Another CPU's kernels sum in another order, and over 60 steps that moves the
numbers by up to 1% (gradient norms) and a dead fraction by 1 unit in 256, measured between the AMD EPYC and the Intel
Xeon recordings: a CPU with no recording is held to the first one within that spread (CROSS_CPU). Timing and
provenance fields are left out; a field the recording lacks (added since) is allowed, a recorded one that changed or
went missing is not.
"""

import json
import os
import platform
import re
from pathlib import Path

import pandas as pd
import pytest
import torch

from conftest import optbench

GOLDEN = Path(__file__).parent / "golden"
RECORD = os.environ.get("OPTBENCH_RECORD_GOLDEN") == "1"
SMALL = ("device=cpu", "data.val_size=2000", "data.train_eval_size=2000", "trainer.batch_size=64")
COMMANDS = {
    # one run: two layers, cosine schedule, shifted images, every diagnostic
    "single": ("train", *SMALL, "optimizer=sgd", "optimizer.lr=0.05", "schedule=cosine", "model.hidden=[64,32]",
               "diagnostics=full", "data.augment_shift=1", "trainer.max_steps=60", "trainer.eval_every=20", "seed=3"),
    # one pass of 4: batch norm, dropout, clipping, L1; a plateau schedule that cuts the rate at every evaluation
    # after a warm-up; schedule-free and Muon among the optimizers
    "pass": ("train", "-m", *SMALL, "optimizer=adam,sgd,schedulefree_adamw,muon", "schedule=plateau",
             "schedule.warmup_steps=10", "schedule.patience=0", "schedule.threshold=0.5", "model.batchnorm=pre",
             "model.dropout=0.1", "trainer.clip_grad_norm=1.0",
             "trainer.l1=1e-5", "trainer.max_steps=40", "trainer.eval_every=10", "seed=1"),
    # a sweep of 2 optimizers x 3 seeds, then its ranking
    "sweep": ("train", "-m", *SMALL, "optimizer=sgd,adam", "seed=0,1,2", "trainer.max_steps=30",
              "trainer.eval_every=10"),
}
# what depends on the clock, the machine or the software's version, not on the computation
UNCOMPARED = {"wall_time", "train_time", "seconds_per_epoch", "started_at", "finished_at", "versions", "host",
              "git_commit", "torch_threads", "device_name", "pass_train_time", "tf32_matmul", "cudnn_benchmark"}
# twice the largest difference between the two recorded CPUs (relative 0.9% on a gradient norm, 0.004 absolute on a
# dead fraction or a loss near zero): a changed schedule, rate or initialisation moves the numbers far more
CROSS_CPU = {"rtol": 0.02, "atol": 0.008}
RANKED = ["optimizer.name", "runs", "best_val_acc", "best_val_acc_std", "test_acc", "final_train_loss"]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu} | torch {torch.__version__}"


def recording() -> tuple[Path, bool]:
    """This CPU's recording and True (compared bit for bit), or the first recording and False (within CROSS_CPU)."""
    folders = sorted(p.parent for p in GOLDEN.glob("*/machine.txt"))
    mine = [f for f in folders if (f / "machine.txt").read_text().strip() == machine()]
    return (mine[0], True) if mine else (folders[0], False)


@pytest.fixture(scope="module")
def trained(mnist_root, tmp_path_factory):
    """Every command run once with one torch thread (sums in a fixed order); folder per command."""
    out = tmp_path_factory.mktemp("golden")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, command in COMMANDS.items():
            # folders by job number: the runs are compared by what trained them, whatever names folders get
            where = [f"hydra.sweep.dir={out / name}", "hydra.sweep.subdir=${hydra.job.num}"] if "-m" in command \
                else [f"hydra.run.dir={out / name}"]
            done = optbench(*command, f"data.root={mnist_root}", *where)
            assert done.returncode == 0, done.stderr[-3000:]
        done = optbench("report", str(out / "sweep"))
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        torch.set_num_threads(threads)
    return out


def runs_of(folder: Path) -> dict[str, Path]:
    return {str(p.parent.relative_to(folder)): p.parent for p in sorted(folder.rglob("summary.json"))}


def comparable(summary: dict) -> dict:
    out = {k: v for k, v in summary.items() if k not in UNCOMPARED}
    if isinstance(out.get("final"), dict):
        out["final"] = {k: v for k, v in out["final"].items() if k not in UNCOMPARED}
    if isinstance(out.get("vectorized"), dict):
        out["vectorized"] = {k: v for k, v in out["vectorized"].items() if k not in UNCOMPARED}
    return out


def metrics_of(run: Path) -> pd.DataFrame:
    m = pd.read_csv(run / "metrics.csv")
    return m[m.split != "run"].reset_index(drop=True)  # split run: train_time, the clock's


def same(want, have, exact: bool) -> bool:
    """Whether `have` holds every value of `want` (nested), exactly or within float rounding."""
    if isinstance(want, dict):
        return isinstance(have, dict) and all(k in have and same(v, have[k], exact) for k, v in want.items())
    if isinstance(want, list):
        return isinstance(have, list) and len(want) == len(have) and all(map(same, want, have, [exact] * len(want)))
    if isinstance(want, float) and isinstance(have, (int, float)) and not exact:
        return have == pytest.approx(want, rel=CROSS_CPU["rtol"], abs=CROSS_CPU["atol"], nan_ok=True)
    return want == have or (want != want and have != have)  # NaN == NaN here


def record(trained: Path) -> None:
    folder = GOLDEN / re.sub(r"[^a-z0-9]+", "-", machine().split(" | ")[0].lower()).strip("-")
    for name in COMMANDS:
        for rel, run in runs_of(trained / name).items():
            target = folder / name / rel
            target.mkdir(parents=True, exist_ok=True)
            metrics_of(run).to_csv(target / "metrics.csv", index=False)
            (target / "summary.json").write_text(json.dumps(comparable(json.loads((run / "summary.json").read_text())),
                                                            indent=1, sort_keys=True) + "\n")
    pd.read_csv(trained / "sweep" / "ranking.csv")[RANKED].to_csv(folder / "ranking.csv", index=False)
    (folder / "machine.txt").write_text(machine() + "\n")


@pytest.mark.fast
def test_golden_files_are_there():
    folders = [p.parent for p in GOLDEN.glob("*/machine.txt")]
    assert len(folders) >= 2 or RECORD  # the AMD EPYC and the Intel Xeon ones
    assert all(len(list(f.rglob("summary.json"))) == 1 + 4 + 6 for f in folders)


def test_runs_write_the_recorded_metrics_and_summaries(trained):
    if RECORD:
        record(trained)
    golden_dir, exact = recording()
    for name in COMMANDS:
        recorded = runs_of(golden_dir / name)
        now = runs_of(trained / name)
        assert sorted(now) == sorted(recorded), name
        for rel, golden in recorded.items():
            expected = pd.read_csv(golden / "metrics.csv")
            got = metrics_of(now[rel])
            pd.testing.assert_frame_equal(got[["step", "epoch", "split", "metric"]],
                                          expected[["step", "epoch", "split", "metric"]], obj=f"{name}/{rel} rows")
            pd.testing.assert_series_equal(got.value, expected.value, check_exact=exact, obj=f"{name}/{rel} values",
                                           **({} if exact else CROSS_CPU))
            want = json.loads((golden / "summary.json").read_text())
            have = comparable(json.loads((now[rel] / "summary.json").read_text()))
            assert same(want, have, exact), f"{name}/{rel}: {want} != {have}"


def test_the_sweep_ranks_as_recorded(trained):
    golden_dir, exact = recording()
    expected = pd.read_csv(golden_dir / "ranking.csv")
    got = pd.read_csv(trained / "sweep" / "ranking.csv")[RANKED]
    pd.testing.assert_frame_equal(got, expected, check_exact=exact, **({} if exact else CROSS_CPU))
