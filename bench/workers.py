"""Benchmark: the wall time of one sweep trained in process against N local worker processes
(hydra.launcher.executor=workers), the contenders alternating round by round.

    python bench/workers.py --data-root ../shared/data/mnist [--workers 2] [--rounds 2] [--passes 4]

The sweep: `--passes` vectorized passes (model.dropout differs between them)
of two seeds each, `--epochs` epochs, small enough to fit in memory N
times over. Contenders: the default in-process executor (torch's default
threads), the same with one torch thread (OMP_NUM_THREADS=1, what each of
two workers gets on two cores), and N workers. Not part of the test suite:
it prints the times and the ratios of the medians.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def contenders(workers: int) -> dict:
    """name -> (extra overrides, extra environment)"""
    return {
        "in process": ([], {}),
        "in process, 1 thread": ([], {"OMP_NUM_THREADS": "1"}),
        f"{workers} workers": (["hydra.launcher.executor=workers", f"hydra.launcher.workers={workers}"], {}),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("overrides", nargs="*", help="more Hydra overrides of the sweep")
    opts = parser.parse_args()
    dropouts = ",".join(str(round(0.05 * i, 2)) for i in range(opts.passes))
    sweep = ["train", "-m", f"data.root={opts.data_root}", "device=cpu", "diagnostics=off", "model.hidden=[128]",
             f"model.dropout={dropouts}", "seed=0,1", f"trainer.epochs={opts.epochs}", "trainer.batch_size=256",
             *opts.overrides]
    times = {name: [] for name in contenders(opts.workers)}
    tmp = Path(tempfile.mkdtemp(prefix="optbench-workers-"))
    try:
        for r in range(opts.rounds):
            order = list(contenders(opts.workers).items())
            for name, (extra, env) in order if r % 2 == 0 else order[::-1]:  # alternate who goes first
                sweep_dir = tmp / f"{r}-{len(times[name])}-{name.replace(' ', '_').replace(',', '')}"
                started = time.perf_counter()
                out = subprocess.run([sys.executable, "-m", "optbench", *sweep, *extra, f"hydra.sweep.dir={sweep_dir}"],
                                     capture_output=True, text=True, env={**os.environ, **env})
                seconds = time.perf_counter() - started
                if out.returncode != 0:
                    print(out.stderr[-3000:], file=sys.stderr)
                    return 1
                times[name].append(seconds)
                print(f"round {r + 1}: {name:22s} {seconds:7.2f} s", flush=True)
                shutil.rmtree(sweep_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(times["in process"])
    print(f"\n{opts.passes} passes x 2 seeds, {opts.epochs} epoch(s), {os.cpu_count()} cores, "
          f"median of {opts.rounds} round(s):")
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"  {name:22s} {median:7.2f} s   in process / this: {base / median:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
