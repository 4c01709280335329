"""`optbench bench`: seconds per epoch of optbench's training path beside the usual DataLoader loop and the GEMM floor.

All contenders run in one process on the same data, model and device, in
alternating order (warm-up round first, then rounds that reverse the order), so
machine drift hits them alike. Figures are printed, never asserted.
"""

import argparse
import math
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import pandas as pd
import torch
from omegaconf import OmegaConf

from optbench import data, results
from optbench.models import build_mlp
from optbench.trainer import fit, make_splits, select_device
from optbench.cli import compose_config as compose
from optbench.vectorized import fit_many


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (RSS)"  # Linux: KiB


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- (a) the usual loop

class MnistDataset(torch.utils.data.Dataset):
    """The per-sample Dataset most tutorials write: one normalised image and its label per __getitem__."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (self.images[i].float() - self.mean) / self.std, self.labels[i]


def dataloader_epochs(cfg, split, device, epochs: int, max_steps: int | None = None) -> list[float]:
    """Seconds per epoch of the usual DataLoader loop (workers=0, torch.optim.Adam's default implementation)."""
    cpu = torch.device("cpu")
    x, y = (t.to(cpu) for t in split["train"])
    ds = MnistDataset(x, y, split["mean"].to(cpu), split["std"].to(cpu))
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.trainer.batch_size, shuffle=True, num_workers=0,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    model = build_mlp(**cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.get("lr", 1e-3))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        for step, (xb, yb) in enumerate(loader):
            if max_steps is not None and step >= max_steps:
                break
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            optimizer.zero_grad()
            loss_fn(model(xb), yb).backward()
            optimizer.step()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- (b) optbench's path

def optbench_epochs(cfg, run_dir: Path) -> list[float]:
    """Seconds per epoch of trainer.fit, from its `train_time` rows (evaluation excluded)."""
    fit(cfg, run_dir)
    m = results.read_metrics(run_dir)
    t = m[(m.split == "run") & (m.metric == "train_time")].groupby("epoch").value.max().sort_index()
    return list(t.diff().dropna())


# ---------------------------------------------------------------- (c) the GEMM floor

def gemm_floor(dims: list[int], batch: int, n_train: int, device: torch.device, repeats: int = 20) -> float:
    """Seconds per epoch of the forward and backward matmuls alone: 3 torch.mm per layer per step.

    (x @ W^T forward, dY @ W for the input gradient, dY^T @ x for the weight
    gradient; the first layer's input gradient is not needed in training, so
    the floor is slightly generous to the contenders.)
    """
    def step_seconds(b: int) -> float:
        total = 0.0
        for n_in, n_out in zip(dims[:-1], dims[1:]):
            for (m, k), (k2, n) in (((b, n_in), (n_in, n_out)), ((b, n_out), (n_out, n_in)), ((n_out, b), (b, n_in))):
                a, w = torch.randn(m, k, device=device), torch.randn(k2, n, device=device)
                out = torch.empty(m, n, device=device)
                for _ in range(3):
                    torch.mm(a, w, out=out)
                samples = []
                for _ in range(repeats):
                    _sync(device)
                    t0 = time.perf_counter()
                    torch.mm(a, w, out=out)
                    _sync(device)
                    samples.append(time.perf_counter() - t0)
                total += statistics.median(samples)
        return total

    full, rest = divmod(n_train, batch)
    return full * step_seconds(batch) + (step_seconds(rest) if rest else 0.0)


# ---------------------------------------------------------------- start-up times

def _optbench_command() -> list[str]:
    script = Path(sys.executable).parent / "optbench"  # the console script of this environment
    return [str(script)] if script.exists() else [sys.executable, "-m", "optbench"]


def help_seconds(n: int = 3) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([*_optbench_command(), "--help"], capture_output=True, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def time_to_first_step(overrides: list[str], tmp: Path) -> tuple[float | None, float | None]:
    """(command start -> training loop ready, command start -> first step done), from the run's train.log.

    The loop-ready line is the trainer's last log line before the loop; the first
    step ends at the step-0 evaluation's log time plus step 1's train_time.
    """
    run_dir = tmp / "startup"
    t0 = time.time()
    subprocess.run([*_optbench_command(), "train", *overrides, "trainer.max_steps=1", "trainer.eval_every=1",
                    "trainer.checkpoint_every=0", f"hydra.run.dir={run_dir}"], capture_output=True, check=True)
    stamps = []
    for line in (run_dir / "train.log").read_text().splitlines():
        match = re.match(r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[optbench\.trainer\]\[INFO\] - (.*)", line)
        if match:
            stamps.append((datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), match[2]))
    ready = next((t for t, msg in stamps if "parameters" in msg), None)
    eval0 = next((t for t, msg in stamps if msg.startswith("epoch 0 step 0")), None)
    m = results.read_metrics(run_dir)
    step1 = m[(m.metric == "train_time") & (m.step == 1)].value
    first = eval0 + float(step1.iloc[0]) if eval0 is not None and len(step1) else None
    return (ready - t0 if ready else None), (first - t0 if first else None)


# ---------------------------------------------------------------- main

def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench bench",
        description="Seconds per epoch of optbench's training path next to the usual DataLoader loop and the "
                    "GEMM floor, in one process on the same data and model; then a vectorized sweep against "
                    "the same runs one after another.",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the workload (default: the train defaults)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per contender per round (default: 2)")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after the warm-up round (default: 2)")
    parser.add_argument("--sweep", type=int, default=8, help="runs in the sweep comparison; 0 skips it (default: 8)")
    parser.add_argument("--sweep-epochs", type=int, default=1, help="epochs per sweep run (default: 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every optbench run at N steps (smoke tests)")
    opts = parser.parse_intermixed_args(args)

    base = list(opts.overrides)
    cfg = compose(base)
    device = select_device(cfg.device)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    n_train, bs = len(split["train"][0]), cfg.trainer.batch_size or len(split["train"][0])
    dims = [784, *cfg.model.hidden, 10]
    capped = [f"trainer.max_steps={opts.max_steps}"] if opts.max_steps else []
    variants = {"optbench": base}
    if "diagnostics" in cfg:  # speed with diagnostics off and with the default ones
        variants = {"optbench diagnostics=off": [*base, "diagnostics=off"],
                    "optbench diagnostics=basic": [*base, "diagnostics=basic"]}
    print(f"workload: MLP {'-'.join(map(str, dims))}, {cfg.optimizer._target_.split('.')[-1]}, "
          f"batch {bs}, {n_train} samples per epoch, device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}")
    print("contenders alternate; each round reverses their order; round 0 is a warm-up and not counted")

    times: dict[str, list[float]] = {"DataLoader loop (workers=0)": [], **{k: [] for k in variants}, "GEMM floor": []}
    memory = {k: "" for k in times}
    with tempfile.TemporaryDirectory(prefix="optbench-bench-") as tmp:
        tmp = Path(tmp)
        for rnd in range(opts.rounds + 1):
            epochs = 1 if rnd == 0 else opts.epochs
            order = list(times) if rnd % 2 == 0 else list(times)[::-1]
            for name in order:
                _reset_peak(device)
                if name.startswith("DataLoader"):
                    t = dataloader_epochs(cfg, split, device, epochs, opts.max_steps)
                elif name == "GEMM floor":
                    t = [gemm_floor(dims, bs, n_train, device)]
                else:
                    run_cfg = compose([*variants[name], f"trainer.epochs={epochs}", *capped])
                    t = optbench_epochs(run_cfg, tmp / f"{name.replace(' ', '_')}_{rnd}")
                if rnd > 0:
                    times[name].extend(t)
                memory[name] = peak_memory(device)

        loader = statistics.median(times["DataLoader loop (workers=0)"])
        floor = statistics.median(times["GEMM floor"])
        print()
        print(f"| {'approach':<30} | {'s/epoch':>8} | {'samples/s':>10} | {'vs DataLoader':>13} | {'of floor':>8} | peak memory after |")
        print(f"| {'-' * 30} | {'-' * 8} | {'-' * 10} | {'-' * 13} | {'-' * 8} | {'-' * 17} |")
        for name, ts in times.items():
            if not ts:
                continue
            s = statistics.median(ts)
            print(f"| {name:<30} | {s:>8.3f} | {n_train / s:>10.0f} | {loader / s:>12.2f}x | {floor / s:>8.0%} | {memory[name]} |")
        print(f"(median of {len(times['GEMM floor'])} floor and {len(times['DataLoader loop (workers=0)'])} "
              "loop measurements; RSS is the process peak so far, CUDA the peak of that contender)")

        ready, first = time_to_first_step([*base], tmp)
        print()
        print(f"`optbench --help`: {help_seconds():.2f} s; `optbench train`: command start -> training loop ready "
              f"{_s(ready)}, -> first step done {_s(first)} (includes the step-0 evaluation)")

        if opts.sweep > 1:
            sweep(base, opts, tmp)
    return 0


def sweep(base: list[str], opts, tmp: Path) -> None:
    """The same K runs (seed=0..K-1) one after another in this process, then in one vectorized pass."""
    K = opts.sweep
    capped = [f"trainer.max_steps={opts.max_steps}"] if opts.max_steps else []
    if "diagnostics" in compose(base):
        capped.append("diagnostics=off")  # what the vectorized loop records; separate runs record the same
    cfgs = [compose([*base, f"seed={s}", f"trainer.epochs={opts.sweep_epochs}", *capped]) for s in range(K)]
    t0 = time.perf_counter()
    separate = [fit(c, tmp / "separate" / str(i)) for i, c in enumerate(cfgs)]
    t_separate = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = fit_many(cfgs, [tmp / "vectorized" / str(i) for i in range(K)])
    t_vectorized = time.perf_counter() - t0
    gap = max(abs(a["final"]["train_loss"] - b["final"]["train_loss"]) for a, b in zip(separate, together))
    print()
    print(f"sweep of {K} runs (seed=0..{K - 1}, {opts.sweep_epochs} epoch(s) each, {' '.join(capped) or 'defaults'}, evaluation and checkpoints "
          f"included): one after another {t_separate:.1f} s, vectorized {t_vectorized:.1f} s: "
          f"{t_separate / t_vectorized:.2f}x faster (largest final train-loss difference {gap:.1e})")


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.2f} s"
