"""One owner per run directory: processes started together never share, restart or append to each other's runs."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from optbench.results import rundir

from conftest import compose, optbench

TINY = ("device=cpu", "model.hidden=[32]", "data.val_size=1000", "data.train_eval_size=500")


def start(mnist_root, cwd, *args):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    flags = [a for a in args if a == "-m"]  # Hydra's flags before the overrides
    overrides = [a for a in args if a != "-m"]
    return subprocess.Popen([sys.executable, "-m", "optbench", "train", *flags, f"data.root={mnist_root}", *TINY,
                             *overrides],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def no_repeated_rows(run_dir):
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert not metrics.duplicated(["step", "split", "metric"]).any(), run_dir


def test_four_runs_started_together_get_four_folders(mnist_root, tmp_path):
    optimizers = ["sgd", "adam", "momentum", "rmsprop"]
    procs = [start(mnist_root, tmp_path, f"optimizer={name}", "trainer.max_steps=20") for name in optimizers]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    runs = sorted((tmp_path / "outputs").iterdir())
    assert len(runs) == 4
    seen = []
    for run in runs:
        summary = json.loads((run / "summary.json").read_text())
        config = rundir.read_config(run)
        assert summary["status"] == "completed"
        assert summary["choices"]["optimizer"] in str(config.optimizer._target_).lower() or \
            (summary["choices"]["optimizer"] == "momentum" and config.optimizer.momentum > 0)
        no_repeated_rows(run)
        seen.append(summary["choices"]["optimizer"])
    assert sorted(seen) == sorted(optimizers)


def held_by(sweep, pid) -> int:
    """How many of the sweep's runs `pid` holds (a process.json is written whole before its run trains)."""
    held = 0
    for record in sweep.glob("*/process.json"):
        try:
            holder = json.loads(record.read_text())
        except ValueError:  # being written
            continue
        held += holder.get("pid") == pid and not holder.get("released")
    return held


def test_the_same_sweep_started_twice_trains_each_run_once(mnist_root, tmp_path):
    sweep = tmp_path / "sweep"
    args = ("optimizer=sgd,adam", "seed=0,1", "trainer.max_steps=20", "trainer.eval_every=10",
            f"hydra.sweep.dir={sweep}")
    first = start(mnist_root, tmp_path, "-m", *args)
    # the second starts while the first trains, whatever the machine's load: the first, once its pass holds all
    # four runs, is stopped (SIGSTOP) until the second has ended, so it cannot finish them first. The second is
    # this process (another pid, as a second interpreter's would be), which has torch and Hydra loaded already
    deadline = time.monotonic() + 300
    while held_by(sweep, first.pid) < 4 and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert first.poll() is None, "the first process ended before its pass held the sweep's four runs"
    os.kill(first.pid, signal.SIGSTOP)
    try:
        assert held_by(sweep, first.pid) == 4, "the first process never held the sweep's four runs"
        second = optbench("train", "-m", f"data.root={mnist_root}", *TINY, *args)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    outcomes = [(second.returncode, second.stdout, second.stderr)]
    out, err = first.communicate(timeout=300)
    outcomes.insert(0, (first.returncode, out, err))
    # the second met a run the first was training, and said so
    assert f"is being trained by process {first.pid}" in outcomes[1][1] + outcomes[1][2], outcomes[1][2][-2000:]
    runs = sorted(p.parent for p in sweep.rglob("summary.json"))
    assert len(runs) == 4
    for run in runs:
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
        no_repeated_rows(run)
        log = (run / "train.log").read_text()
        assert log.count("steps of batch") == 1, log  # trained once, by one of the two
    for code, out, err in outcomes:
        if code != 0:  # it found runs the other was training: it says which and leaves them alone
            assert "is being trained by process" in err or "is being trained by process" in out, err[-2000:]
    assert outcomes[0][0] == 0 or outcomes[1][0] == 0  # one of them trained its runs to the end


def test_a_live_holder_is_refused_in_one_line_and_a_dead_one_is_taken_over(mnist_root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rundir.write_json(run / rundir.PROCESS, {"host": os.uname().nodename, "pid": sleeper.pid})
        out = optbench("train", f"data.root={mnist_root}", *TINY, "trainer.max_steps=5", f"hydra.run.dir={run}")
        assert out.returncode == 2
        assert f"is being trained by process {sleeper.pid}" in out.stderr and out.stderr.count("\n") == 1
        assert not (run / "metrics.csv").exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    out = optbench("train", f"data.root={mnist_root}", *TINY, "trainer.max_steps=5", f"hydra.run.dir={run}")
    assert out.returncode == 0, out.stderr[-2000:]
    record = json.loads((run / rundir.PROCESS).read_text())
    assert record["pid"] == os.getpid() and record["released"]


@pytest.mark.fast
def test_a_holder_on_another_host_is_alive_until_its_heartbeat_is_old(tmp_path):
    rundir.write_json(tmp_path / rundir.PROCESS, {"host": "elsewhere", "pid": 1})
    assert rundir.holder(tmp_path)["host"] == "elsewhere"
    old = time.time() - rundir.STALE - 1
    os.utime(tmp_path / rundir.PROCESS, (old, old))
    assert rundir.holder(tmp_path) is None
    with rundir.hold(tmp_path, job="test") as record:
        assert rundir.holder(tmp_path)["pid"] == os.getpid() == record["pid"]
        with pytest.raises(rundir.Held):
            with rundir.hold(tmp_path):
                pass
    assert rundir.holder(tmp_path) is None


def test_a_run_another_process_finished_after_this_one_looked_is_kept_not_trained_again(mnist_root, tmp_path,
                                                                                        caplog):
    """A sweep decides which runs to skip before it starts; a run that another process (the same sweep started
    twice) finishes in between is found finished once fit_pass holds its folder, and kept as it is."""
    from optbench.trainer import fit_pass

    budget = (f"data.root={mnist_root}", *TINY, "trainer.max_steps=5", "trainer.eval_every=5")
    cfg = compose(*budget)
    run = tmp_path / "run"
    first = fit_pass([cfg], [run])[0]  # the other process's run, finished after this sweep looked
    files = {name: (run / name).read_bytes() for name in ("metrics.csv", "summary.json")}
    again = fit_pass([cfg], [run])[0]
    assert again["status"] == "completed" and again == first
    assert {name: (run / name).read_bytes() for name in files} == files  # not started over, nothing appended
    with caplog.at_level(logging.INFO, logger="optbench"):  # another config: trained again, and the log says why
        fit_pass([compose(*budget, "optimizer.lr=0.002")], [run])
    assert "starting over: the earlier run there completed (its config changed: optimizer.lr)" in caplog.text
