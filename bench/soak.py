"""Soak test: a sweep of 120 short runs, some diverging, interrupted twice (SIGINT, then SIGKILL), resumed.

Then every configuration must appear exactly once in the report, with the
right status, and no metric row may be missing or written twice.

    python bench/soak.py --data-root ../shared/data/mnist [--dir /tmp/soak] [--seeds 30]

Not part of the test suite (it takes minutes); prints its figures and exits
non-zero when anything was lost.
"""

import argparse
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

LRS = (0.01, 0.1, 1.0, 1e5)  # the last one diverges at once
STEPS_PER_EPOCH, EPOCHS = 50, 3  # batch 1000 of 50k; a checkpoint at each epoch's end


def sweep_command(sweep_dir: Path, data_root: str, seeds: int) -> list[str]:
    return [
        sys.executable, "-m", "optbench", "train", "-m", "optimizer=sgd",
        f"optimizer.lr={','.join(map(str, LRS))}", f"seed=range(0,{seeds})", "model.hidden=[32]",
        f"trainer.batch_size={50_000 // STEPS_PER_EPOCH}", f"trainer.epochs={EPOCHS}", f"data.root={data_root}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def run_until(command: list[str], seconds: float, sig: int | None, log: Path) -> int:
    """Run the sweep, its output into `log`; after `seconds` send `sig` (None: let it finish). Returns its exit code."""
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    if sig is not None:
        try:
            proc.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            proc.send_signal(sig)
    return proc.wait()


def check(sweep_dir: Path, seeds: int) -> dict:
    from optbench.results import load_metrics, load_runs

    runs = load_runs(sweep_dir)
    metrics = load_metrics(runs)
    expected = {(lr, seed) for lr in LRS for seed in range(seeds)}
    seen = list(zip(runs["optimizer.lr"].astype(float), runs["seed"].astype(int)))
    problems = []
    if sorted(seen) != sorted(expected):
        problems.append(f"configurations: {len(seen)} rows for {len(expected)} configs")
    lost = duplicated = 0
    for run, lr, status in zip(runs["run"], runs["optimizer.lr"].astype(float), runs["status"]):
        want = "diverged" if lr == LRS[-1] else "completed"
        if status != want:
            problems.append(f"{run}: status {status}, expected {want}")
        m = metrics[metrics.run == run]
        steps = m[(m.split == "step") & (m.metric == "loss")].step
        evals = m[(m.split == "val") & (m.metric == "acc")].step
        duplicated += int(steps.duplicated().sum() + evals.duplicated().sum())
        if want == "completed":
            lost += len(set(range(1, EPOCHS * STEPS_PER_EPOCH + 1)) - set(steps))
            lost += len({0, *range(STEPS_PER_EPOCH, EPOCHS * STEPS_PER_EPOCH + 1, STEPS_PER_EPOCH)} - set(evals))
    logs = [(Path(d) / "train.log").read_text() for d in runs["run_dir"]]
    resumed = sum("resuming from the checkpoint" in log for log in logs)
    restarted = sum(log.count("epoch 0 step 0") > 1 for log in logs)
    return {"runs": len(runs), "rows": len(metrics), "lost": lost, "duplicated": duplicated, "problems": problems,
            "resumed": resumed, "restarted": restarted}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dir", default="/tmp/optbench-soak")
    parser.add_argument("--seeds", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0, help="for the interruption times")
    opts = parser.parse_args()
    sweep_dir = Path(opts.dir)
    shutil.rmtree(sweep_dir, ignore_errors=True)
    command = sweep_command(sweep_dir, opts.data_root, opts.seeds)
    when = random.Random(opts.seed)
    started = time.perf_counter()
    logs = [sweep_dir.with_name(f"{sweep_dir.name}_pass{i}.log") for i in range(3)]  # kept beside the sweep
    codes = [run_until(command, when.uniform(10, 30), signal.SIGINT, logs[0]),
             run_until(command, when.uniform(10, 30), signal.SIGKILL, logs[1]),
             run_until(command, 0, None, logs[2])]
    wall = time.perf_counter() - started
    result = check(sweep_dir, opts.seeds)
    print(f"runs: {result['runs']} (expected {len(LRS) * opts.seeds}); interruptions: SIGINT (exit {codes[0]}), "
          f"SIGKILL (exit {codes[1]}); final pass exit {codes[2]}; metric rows checked: {result['rows']}; "
          f"lost: {result['lost']}; duplicated: {result['duplicated']}; runs resumed from a checkpoint: "
          f"{result['resumed']}, restarted from scratch: {result['restarted']}; wall time {wall:.0f} s")
    for problem in result["problems"]:
        print("PROBLEM:", problem)
    if codes[2] != 0:
        print(f"the final pass failed; its output: {logs[2]}")
    return 0 if codes[2] == 0 and not result["problems"] and not (result["lost"] or result["duplicated"]) else 1


if __name__ == "__main__":
    sys.exit(main())
