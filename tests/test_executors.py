"""hydra.launcher.executor: the passes of a sweep trained by local workers or submitit jobs land in the same run
directories, with the same metrics, as in process; a pass stopped by SIGTERM is requeued and resumes."""

import json
import os
import signal
import sys
import threading
import time

import pandas as pd
import pytest
from omegaconf import OmegaConf

import optbench as optbench_package
from optbench.executors import default_workers, worker_setup
from optbench.results import rundir
from optbench.vectorized import plan

from conftest import compose, optbench

# two passes (the hidden sizes differ) of two seeds each, a few steps on small subsets
SWEEP = ("device=cpu", "diagnostics=off", "trainer.max_steps=3", "data.train_eval_size=500", "data.val_size=500",
         "model.hidden=[16],[8]", "seed=0,1")
RUN_FILES = {".hydra", "config.yaml", "metrics.csv", "summary.json", "train.log", "init.pt", "checkpoint.pt",
             "process.json"}


def run_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def metrics(run_dir):
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.metric != "train_time"].reset_index(drop=True)  # wall-clock times differ by nature


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def assert_same_runs(expected, actual):
    """Every run directory of `actual` complete, and the same metrics and outcome as `expected`'s."""
    names = [d.name for d in run_dirs(expected)]
    assert [d.name for d in run_dirs(actual)] == names and len(names) == 4
    for name in names:
        a, b = expected / name, actual / name
        assert RUN_FILES <= {p.name for p in b.iterdir()}
        pd.testing.assert_frame_equal(metrics(a), metrics(b))
        sa, sb = read(a, "summary.json"), read(b, "summary.json")
        assert sb["status"] == "completed" and sb["best_val_acc"] == sa["best_val_acc"]
        assert sb["vectorized"]["models"] == 2
        # the run's closing line, as rundir.run_line writes it (but for its train time)
        assert rundir.run_line(name, sb).rsplit(" | ", 1)[0] in (b / "train.log").read_text()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Every run here on one torch thread, as the workers (cores // 2 on 2 cores) and hydra.launcher.cpus_per_job=1
    give theirs: two threads on a loaded 2-core machine spin against each other (0.7 ms a step became 170 ms)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def in_process(mnist_root, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("in_process")
    out = optbench("train", "-m", f"data.root={mnist_root}", *SWEEP, f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


@pytest.mark.parametrize("k, n, gpus, cores, env, threads", [
    (0, 2, [], 2, {}, 1),
    (1, 2, [], 16, {}, 8),
    (3, 4, ["0", "1"], 16, {"CUDA_VISIBLE_DEVICES": "1"}, 4),  # two workers per GPU
    (1, 2, ["4", "6"], 8, {"CUDA_VISIBLE_DEVICES": "6"}, 4),  # the GPUs the launcher itself was given
    (2, 3, [], 2, {}, 1),  # more workers than cores: one thread each
])
def test_worker_k_gets_its_gpu_and_its_share_of_the_cores(k, n, gpus, cores, env, threads):
    assert worker_setup(k, n, gpus, cores) == (env, threads)


def test_default_workers_one_per_gpu_else_one_per_core():
    assert default_workers(["0", "1", "2"], 16) == 3
    assert default_workers([], 4) == 4


def test_max_runs_per_pass_caps_the_passes():
    cfgs = [compose(f"optimizer={o}", f"seed={s}") for o in ("sgd", "adam") for s in range(5)]
    assert plan(cfgs, 4) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert plan(cfgs) == [list(range(10))]  # MAX_MODELS (32)


def test_two_passes_through_submitit_local_are_two_processes_with_the_in_process_results(
        mnist_root, tmp_path, in_process):
    sweep_dir = tmp_path / "submitit"
    out = optbench("train", "-m", f"data.root={mnist_root}", *SWEEP, "hydra.launcher.executor=submitit_local",
                   "hydra.launcher.cpus_per_job=1", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_runs(in_process, sweep_dir)
    by_pass = {}  # hidden size -> the processes that trained its runs
    for d in run_dirs(sweep_dir):
        record = read(d, "process.json")
        assert record["job"].startswith("submitit ")
        assert read(d, "summary.json")["torch_threads"] == 1  # cpus_per_job
        by_pass.setdefault(tuple(OmegaConf.load(d / "config.yaml").model.hidden), set()).add(record["pid"])
    assert len(by_pass) == 2 and all(len(pids) == 1 for pids in by_pass.values())  # one process per pass
    pids = set.union(*by_pass.values())
    assert len(pids) == 2 and os.getpid() not in pids
    assert len(list((sweep_dir / ".submitit").glob("*_result.pkl"))) == 2


def test_local_workers_share_the_passes_out_with_the_in_process_results(mnist_root, tmp_path, in_process):
    sweep_dir = tmp_path / "workers"
    out = optbench("train", "-m", f"data.root={mnist_root}", *SWEEP, "hydra.launcher.executor=workers",
                   "hydra.launcher.workers=2", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert_same_runs(in_process, sweep_dir)
    records = [read(d, "process.json") for d in run_dirs(sweep_dir)]
    assert {r["job"] for r in records} == {"worker 0", "worker 1"}  # each worker trained one pass
    assert len({r["pid"] for r in records}) == 2 and os.getpid() not in {r["pid"] for r in records}
    threads = max(len(os.sched_getaffinity(0)) // 2, 1)
    assert all(read(d, "summary.json")["torch_threads"] == threads for d in run_dirs(sweep_dir))


def test_a_pass_stopped_by_sigterm_is_requeued_and_resumes_to_the_uninterrupted_metrics(mnist_root, tmp_path):
    # 2 epochs of 250 small steps: the signal lands in epoch 2, after the end-of-epoch-1 checkpoints
    args = ["train", "-m", f"data.root={mnist_root}", "device=cpu", "diagnostics=off", "model.hidden=[8]",
            "trainer.batch_size=40", "trainer.epochs=2", "trainer.log_every=50", "data.val_size=50000",
            "data.train_eval_size=500", "seed=0,1"]
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    assert optbench(*args, f"hydra.sweep.dir={whole}").returncode == 0
    sent = []

    def stop_the_job_as_slurm_does():
        deadline = time.time() + 120
        while len(list(stopped.glob("*/checkpoint.pt"))) < 2 and time.time() < deadline:
            time.sleep(0.02)
        pid = read(run_dirs(stopped)[0], "process.json")["pid"]  # the job's process (the pass writes it first)
        os.kill(pid, signal.SIGTERM)
        sent.append(pid)

    killer = threading.Thread(target=stop_the_job_as_slurm_does)
    killer.start()
    out = optbench(*args, "hydra.launcher.executor=submitit_local", "hydra.launcher.cpus_per_job=1",
                   f"hydra.sweep.dir={stopped}")
    killer.join()
    assert out.returncode == 0, out.stderr[-3000:]
    assert sent
    job_log = "".join(p.read_text() for p in (stopped / ".submitit").glob("*_log.err"))
    assert "SIGTERM received: stopping after this step" in job_log and "Requeued job" in job_log
    for name in [d.name for d in run_dirs(whole)]:
        a, b = whole / name, stopped / name
        assert "resuming from the checkpoint at epoch" in (b / "train.log").read_text()
        assert read(b, "process.json")["pid"] != sent[0]  # the requeued job finished it
        pd.testing.assert_frame_equal(metrics(a), metrics(b))
        sa, sb = read(a, "summary.json"), read(b, "summary.json")
        assert sb["status"] == "completed" and sb["best_val_acc"] == sa["best_val_acc"]
        assert sb["test_acc_at_best_val"] == sa["test_acc_at_best_val"]


def test_a_bad_executor_setting_is_one_line_before_anything_is_set_up(tmp_path):
    out = optbench("train", "-m", "seed=0,1", "hydra.launcher.executor=gpus", f"hydra.sweep.dir={tmp_path / 's'}")
    assert out.returncode == 2
    assert out.stderr.strip() == ("optbench: error: hydra.launcher.executor=gpus is not one of in_process, workers, "
                                  "slurm, submitit_local")
    out = optbench("train", "-m", "seed=0,1", "hydra.launcher.executor=workers", "hydra.launcher.workers=0",
                   f"hydra.sweep.dir={tmp_path / 's'}")
    assert out.returncode == 2 and "hydra.launcher.workers=0 must be >= 1" in out.stderr
    assert not list((tmp_path / "s").glob("*/.hydra"))


def test_submitit_executors_without_submitit_name_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if it were not installed: import submitit fails
    monkeypatch.delitem(sys.modules, "optbench.cluster", raising=False)  # imported by an earlier test: again
    monkeypatch.delattr(optbench_package, "cluster", raising=False)
    out = optbench("train", "-m", "seed=0,1", "hydra.launcher.executor=slurm", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 2
    assert out.stderr.strip() == ("optbench: error: hydra.launcher.executor=slurm needs submitit: "
                                  "pip install 'optbench[slurm]'")
