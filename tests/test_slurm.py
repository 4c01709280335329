"""hydra.launcher.executor=slurm on a real one-node SLURM cluster (tests/slurm.py): the passes run as jobs of a SLURM
array, a job warned before its time limit checkpoints, is requeued and resumes to the uninterrupted metrics, and a
job whose pass raises is not requeued.

optbench runs in its own interpreter here (run_cli): submitit waits for a job's result file, and a job that died
without one would hang this process instead of timing out.
"""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import torch

from optbench.results import rundir

from conftest import optbench, run_cli

# tiny runs: the cluster, submitit and the requeue are under test, not the training
TINY = ("device=cpu", "diagnostics=off", "model.hidden=[32]", "data.train_eval_size=500", "data.val_size=1000")
# one core a job, as a pass's twin in process gets here; a time limit far away: the tests send SLURM's warning
# themselves
ON_SLURM = ("hydra.launcher.executor=slurm", "hydra.launcher.cpus_per_job=1", "hydra.launcher.timeout_min=10")
RUN_FILES = {"config.yaml", "metrics.csv", "summary.json", "train.log"}
TIMEOUT_S = 240


def run_dirs(sweep_dir):
    return sorted(p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def read(run_dir, name):
    return json.loads((run_dir / name).read_text())


def metrics(run_dir):
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.split != "run"].reset_index(drop=True)  # the `run` split holds wall-clock times


def job_state(job_id: str) -> dict:
    """`scontrol show job`'s fields of a job (slurmctld keeps an ended one for MinJobAge, 300 s)."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return dict(field.split("=", 1) for field in out.stdout.split() if "=" in field)


def submitit_job(run_dir) -> str:
    """The SLURM job (array task, e.g. 12_1) that trained a run, as the pass recorded it."""
    job = read(run_dir, "process.json")["job"]
    assert job.startswith("submitit "), job
    return job.split()[1]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The in-process twins on one torch thread, as the jobs' (cpus_per_job=1): the same sums in the same order."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_a_sweep_runs_its_passes_as_jobs_of_a_slurm_array(slurm_cluster, mnist_root, tmp_path):
    sweep_dir = tmp_path / "sweep"
    out = run_cli("train", "-m", f"data.root={mnist_root}", *TINY, "trainer.max_steps=20", "optimizer=sgd,adam",
                  "seed=0,1", *ON_SLURM, "hydra.launcher.max_runs_per_pass=2", f"hydra.sweep.dir={sweep_dir}",
                  timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    runs = run_dirs(sweep_dir)
    assert len(runs) == 4
    jobs = {}
    for run in runs:
        assert RUN_FILES <= {p.name for p in run.iterdir()}, run
        summary = read(run, "summary.json")
        assert summary["status"] == "completed", summary
        assert summary["torch_threads"] == 1  # cpus_per_job
        assert summary["vectorized"]["models"] == 2
        assert rundir.run_line(run.name, summary).rsplit(" | ", 1)[0] in (run / "train.log").read_text()
        jobs.setdefault(submitit_job(run), []).append(run.name)
    # two passes of two runs: two tasks of one array, each run by SLURM to completion on this cluster's node
    assert len(jobs) == 2 and all(len(names) == 2 for names in jobs.values())
    array_ids = {job.split("_")[0] for job in jobs}
    assert len(array_ids) == 1 and all(re.fullmatch(r"\d+_\d", job) for job in jobs)
    for job in jobs:
        state = job_state(job)
        assert state["JobState"] == "COMPLETED" and state["Restarts"] == "0", state
        assert state["ArrayJobId"] == next(iter(array_ids))
    assert f"submitted 2 job(s) to slurm: {next(iter(array_ids))}" in out.stdout + out.stderr


def evaluated_at(table, step: int) -> bool:
    """Whether a run's metrics.csv, which its pass is appending to, has its evaluation at `step` yet."""
    lines = table.read_text().splitlines() if table.is_file() else []
    return any(line.startswith(f"{step},") and ",val,acc," in line for line in lines)


def submitit_log(sweep_dir) -> str:
    """What the sweep's jobs wrote: submitit's own lines go to stdout, the pass's to stderr."""
    return "".join(p.read_text() for p in sorted((sweep_dir / ".submitit").rglob("*_log.*")))


def pending(pid: int, signum: int) -> bool:
    """Whether `signum` was sent to the process and waits for it to run again: /proc's shared-pending mask."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))
    return bool(mask >> (signum - 1) & 1)


def test_a_job_warned_before_its_time_limit_is_requeued_and_resumes_to_the_uninterrupted_metrics(
        slurm_cluster, mnist_root, tmp_path):
    # 1000 steps of a pass of two: the warning lands while it trains, after its first evaluation (step 250)
    args = ["train", "-m", f"data.root={mnist_root}", *TINY, "trainer.batch_size=20", "trainer.max_steps=1000",
            "trainer.eval_every=250", "trainer.log_every=50", "seed=0,1"]
    whole, warned = tmp_path / "whole", tmp_path / "warned"
    sent, ended = [], threading.Event()

    def warn_the_job_as_slurm_does():
        """SLURM's --signal=USR2@90 before the time limit, sent now: once both runs have evaluated at step 250.

        The job's process is stopped (SIGSTOP) the moment that is seen and continued once the warning waits for it, so
        the trip through slurmctld, slurmd and slurmstepd cannot let the pass train on to its end on a loaded machine.
        """
        while not ended.wait(0.02):
            runs = run_dirs(warned) if warned.is_dir() else []
            if len(runs) == 2 and all(evaluated_at(run / "metrics.csv", 250) for run in runs):
                pid = read(runs[0], "process.json")["pid"]  # the job's process, on this one node
                os.kill(pid, signal.SIGSTOP)
                try:
                    job = submitit_job(runs[0])
                    done = subprocess.run(["scancel", "--signal=USR2", job], capture_output=True, text=True,
                                          timeout=30)
                    deadline = time.monotonic() + 30
                    while done.returncode == 0 and not pending(pid, signal.SIGUSR2) and time.monotonic() < deadline:
                        time.sleep(0.01)
                    sent.append((job, done.returncode, done.stderr))
                finally:
                    os.kill(pid, signal.SIGCONT)
                return

    warner = threading.Thread(target=warn_the_job_as_slurm_does)
    warner.start()
    # run_cli's process, started first: the uninterrupted twin trains in process while the job starts and waits out
    # its requeue (the credential's lifetime), time the machine would otherwise spend idle
    sweep = subprocess.Popen([sys.executable, "-m", "optbench", *args, *ON_SLURM, f"hydra.sweep.dir={warned}"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        # the uninterrupted twin: tests/test_executors.py holds in process and submitit's jobs to the same rows
        twin = optbench(*args, f"hydra.sweep.dir={whole}")
        stdout, stderr = sweep.communicate(timeout=TIMEOUT_S)
    finally:
        if sweep.poll() is None:
            sweep.kill()
            sweep.communicate()
        ended.set()
        warner.join()
    assert twin.returncode == 0, twin.stderr[-3000:]
    assert sweep.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert sent, "the sweep ended before both runs had evaluated at step 250: no warning was sent"
    (job, code, error), = sent
    assert code == 0, error
    log = submitit_log(warned)
    assert "SIGUSR2 received: stopping after this step" in log and "Calling checkpoint method." in log
    assert f"Requeued job {job}" in log and log.count("Loading pickle:") == 2
    state = job_state(job)
    assert state["JobState"] == "COMPLETED" and state["Restarts"] == "1", state
    for run in run_dirs(whole):
        a, b = run, warned / run.name
        assert "resuming from the checkpoint at epoch" in (b / "train.log").read_text()
        pd.testing.assert_frame_equal(metrics(a), metrics(b))
        sa, sb = read(a, "summary.json"), read(b, "summary.json")
        assert sb["status"] == "completed", sb
        assert (sb["best_val_acc"], sb["test_acc_at_best_val"]) == (sa["best_val_acc"], sa["test_acc_at_best_val"])


def test_a_job_whose_pass_raises_is_not_requeued_and_its_damaged_run_fails_with_the_reason(
        slurm_cluster, mnist_root, tmp_path):
    args = ["train", "-m", f"data.root={mnist_root}", *TINY, "trainer.max_steps=20", "seed=0,1",
            f"hydra.sweep.dir={tmp_path}"]
    assert optbench(*args).returncode == 0
    # both runs as an earlier job left them when SLURM stopped it at its last step (the checkpoint is taken there):
    # one resumes and completes, the other's checkpoint is garbage
    damaged, sibling = run_dirs(tmp_path)
    for run in (damaged, sibling):
        summary = read(run, "summary.json")
        summary.update(status="interrupted", reason="SIGUSR2 received at step 20")
        (run / "summary.json").write_text(json.dumps(summary))
    (damaged / "checkpoint.pt").write_bytes(b"\x00not a checkpoint\xff" * 64)
    out = run_cli(*args, *ON_SLURM, timeout=TIMEOUT_S)
    # an error is not a preemption: the job ran once, and the summary an earlier attempt left `interrupted` did
    # not requeue it
    job = submitit_job(sibling)  # the damaged run may fail before its job starts
    assert job_state(job)["Restarts"] == "0", job_state(job)
    log = submitit_log(tmp_path)
    assert log.count("Loading pickle:") == 1 and "Requeued job" not in log, log[-3000:]
    assert out.returncode != 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = read(damaged, "summary.json")
    assert summary["status"] == "failed" and "checkpoint.pt" in summary["reason"], summary
    assert "checkpoint.pt" in (damaged / "train.log").read_text()
    assert read(sibling, "summary.json")["status"] == "completed"
