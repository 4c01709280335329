"""`optbench bench`: seconds per epoch of optbench's training path beside the usual DataLoader loops and the GEMM floor.

Rows: a DataLoader loop over a per-sample tensor Dataset; the torchvision-style
loop most MNIST tutorials write (a PIL image per sample, ToTensor, Normalize;
emulated without torchvision); optbench's trainer with diagnostics off, basic,
basic under bf16 autocast (where the device runs bf16) and basic with live
TensorBoard files (where tensorboard is installed); the GEMM floor in
fp32 and in bf16. All contenders run in one process on the same data, model and
device, in alternating order (warm-up round first, then rounds that reverse the
order), so machine drift hits them alike. A vectorized sweep follows, against
the same runs one after another and against the GEMM floor of their work.
Figures are printed, never asserted.
"""

import argparse
import contextlib
import copy
import importlib.util
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode

from optbench import data
from optbench.compose import compose_config as compose
from optbench.models import build_mlp
from optbench.results import rundir
from optbench.trainer import EVAL_CHUNK, eval_splits, fit, fit_pass, make_splits, select_device, sync

TENSOR_LOOP = "DataLoader loop (workers=0)"
PIL_LOOP = "torchvision-style loop (PIL, workers=0)"
AMP = "optbench diagnostics=basic trainer.amp=true"
TENSORBOARD = "optbench diagnostics=basic trainer.tensorboard=true"  # live event files: the cost of watching
FLOOR = "GEMM floor"
BF16_FLOOR = "GEMM floor (bf16)"


def peak_memory(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA)"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB (RSS)"  # Linux: KiB


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def bf16_autocast_ok(device: torch.device) -> bool:
    """Whether bf16 runs natively here: torch's CPU autocast always takes it; CUDA needs a GPU with bf16 units."""
    if device.type == "cuda":
        # emulated bf16 (pre-Ampere GPUs) would time the emulation, not the format
        return torch.cuda.is_bf16_supported(including_emulation=False)
    return device.type == "cpu"


# ---------------------------------------------------------------- (a) the usual loops

class MnistDataset(torch.utils.data.Dataset):
    """The per-sample Dataset most tutorials write: one normalised image and its label per __getitem__."""

    def __init__(self, images, labels, mean, std):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return (self.images[i].float() - self.mean) / self.std, self.labels[i]


class PilMnistDataset(torch.utils.data.Dataset):
    """What torchvision.datasets.MNIST with ToTensor() and Normalize((0.1307,), (0.3081,)) does per sample.

    torchvision is not a dependency, so its per-sample path is copied: a PIL
    image from the uint8 array, back to a [1, 28, 28] float tensor over 255 as
    ToTensor does, normalised; the label a Python int as torchvision returns it.
    """

    MEAN, STD = 0.1307, 0.3081

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        img = Image.fromarray(self.images[i], mode="L")
        x = torch.from_numpy(np.array(img, np.uint8, copy=True)).view(img.size[1], img.size[0], 1)
        x = x.permute(2, 0, 1).contiguous().float().div(255)
        return (x - self.MEAN) / self.STD, int(self.labels[i])


def dataloader_epochs(cfg, ds, device, epochs: int, max_steps: int | None) -> list[float]:
    """Seconds per epoch of the DataLoader loop over `ds` (workers=0, torch.optim.Adam's default implementation)."""
    loader = torch.utils.data.DataLoader(ds, batch_size=cfg.trainer.batch_size, shuffle=True, num_workers=0,
                                         pin_memory=device.type == "cuda")
    torch.manual_seed(cfg.seed)
    model = build_mlp(**cfg.model).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.optimizer.lr)
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
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- (b) optbench's path

def optbench_epochs(cfg, run_dir: Path) -> list[float]:
    """Seconds per epoch of trainer.fit, from its `train_time` rows (evaluation excluded)."""
    fit(cfg, run_dir)
    m = rundir.read_metrics(run_dir)
    t = m[(m.split == "run") & (m.metric == "train_time")].groupby("epoch").value.max().sort_index()
    return list(t.diff().dropna())


# ---------------------------------------------------------------- (c) the GEMM floor

def mm_seconds(m: int, k: int, n: int, device: torch.device, dtype: torch.dtype, repeats: int = 20) -> float:
    """Fastest of `repeats` timings of one torch.mm of an (m, k) by a (k, n) matrix, after a warm-up.

    The minimum, not the median: a floor is what the hardware can do, and a
    busy neighbour only ever makes a timing slower.
    """
    a, w = torch.randn(m, k, device=device, dtype=dtype), torch.randn(k, n, device=device, dtype=dtype)
    out = torch.empty(m, n, device=device, dtype=dtype)
    for _ in range(3):
        torch.mm(a, w, out=out)
    samples = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.mm(a, w, out=out)
        sync(device)
        samples.append(time.perf_counter() - t0)
    return min(samples)


def gemm_step_seconds(dims: list[int], b: int, device: torch.device, dtype: torch.dtype = torch.float32,
                      forward_only: bool = False) -> float:
    """Seconds of one batch's matmuls: 3 torch.mm per layer, or only the forward one (evaluation).

    (x @ W^T forward, dY @ W for the input gradient, dY^T @ x for the weight
    gradient; the first layer's input gradient is not needed in training, so
    the floor is slightly generous to the contenders.)
    """
    total = 0.0
    for n_in, n_out in zip(dims[:-1], dims[1:]):
        shapes = [(b, n_in, n_out)] if forward_only else [(b, n_in, n_out), (b, n_out, n_in), (n_out, b, n_in)]
        total += sum(mm_seconds(m, k, n, device, dtype) for m, k, n in shapes)
    return total


def gemm_floor(dims: list[int], batch: int, n_train: int, device: torch.device, dtype: torch.dtype) -> float:
    """Seconds per training epoch of the forward and backward matmuls alone, with `dtype` operands."""
    full, rest = divmod(n_train, batch)
    rest_seconds = gemm_step_seconds(dims, rest, device, dtype) if rest else 0.0
    return full * gemm_step_seconds(dims, batch, device, dtype) + rest_seconds


def eval_floor(dims: list[int], split_sizes: list[int], device: torch.device) -> float:
    """Seconds of one evaluation's matmuls: each split's forward pass in EVAL_CHUNK chunks, as trainer.evaluate."""
    chunks = [min(EVAL_CHUNK, n - i) for n in split_sizes for i in range(0, n, EVAL_CHUNK)]
    per_size = {b: gemm_step_seconds(dims, b, device, forward_only=True) for b in set(chunks)}
    return sum(per_size[b] for b in chunks)


def runs_floor(dims: list[int], batch: int, split: dict, train_eval_size: int | None, run_dirs: list[Path],
               summaries: list[dict], device: torch.device) -> float:
    """fp32 GEMM floor of finished runs: each one's training steps plus the forward passes of its evaluations."""
    rest = len(split["train"][0]) % batch
    full_step = gemm_step_seconds(dims, batch, device)
    rest_step = gemm_step_seconds(dims, rest, device) if rest else 0.0
    one_eval = eval_floor(dims, [len(x) for x, _ in eval_splits(split, train_eval_size).values()], device)
    total = 0.0
    for run_dir, summary in zip(run_dirs, summaries):
        steps = summary["step"]
        short = steps // summary["steps_per_epoch"] if rest else 0  # every finished epoch ends on the short batch
        m = rundir.read_metrics(run_dir)
        evaluations = int(((m.split == "val") & (m.metric == "loss")).sum())
        total += (steps - short) * full_step + short * rest_step + evaluations * one_eval
    return total


# ---------------------------------------------------------------- start-up times

def _optbench_command() -> list[str]:
    script = Path(sys.executable).parent / "optbench"  # the console script of this environment
    return [str(script)] if script.exists() else [sys.executable, "-m", "optbench"]


def help_seconds(n: int = 3) -> float:
    command = [*_optbench_command(), "--help"]
    return statistics.median(timeit.repeat(lambda: subprocess.run(command, capture_output=True, check=True),
                                           number=1, repeat=n))


def time_to_first_step(overrides: list[str], tmp: Path) -> tuple[float | None, float | None]:
    """(command start -> training loop ready, command start -> first step done), from the run's train.log.

    The loop-ready line is the trainer's last log line before the loop; the first
    step ends at the step-0 evaluation's log time plus step 1's train_time.
    """
    run_dir = tmp / "startup"
    t0 = time.time()
    subprocess.run([*_optbench_command(), "train", *overrides, "trainer.max_steps=1", "trainer.eval_every=1",
                    "trainer.checkpoint_every=0", f"hydra.run.dir={run_dir}"], capture_output=True, check=True)
    line = r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\]\[optbench\.trainer\]\[INFO\] - (.*)"
    stamps = [(datetime.strptime(match[1], "%Y-%m-%d %H:%M:%S,%f").timestamp(), match[2])
              for match in re.finditer(line, (run_dir / "train.log").read_text(), re.M)]
    ready = next((t for t, msg in stamps if "parameters" in msg), None)
    eval0 = next((t for t, msg in stamps if msg.startswith("epoch 0 step 0")), None)
    m = rundir.read_metrics(run_dir)
    step1 = m[(m.metric == "train_time") & (m.step == 1)].value
    first = eval0 + float(step1.iloc[0]) if eval0 is not None and len(step1) else None
    return (ready - t0 if ready else None), (first - t0 if first else None)


# ---------------------------------------------------------------- main

def contenders(cfg, base: list[str], opts, split: dict, dims: list[int], bs: int, device: torch.device,
               tmp: Path) -> dict[str, Callable[[int, int], list[float]]]:
    """Each row's name -> a function (epochs, round) -> its seconds per epoch, in table order."""
    capped = [f"trainer.max_steps={opts.max_steps}"] if opts.max_steps else []
    bf16 = bf16_autocast_ok(device)

    def loop(ds):
        return lambda epochs, rnd: dataloader_epochs(cfg, ds, device, epochs, opts.max_steps)

    def trainer(name, overrides):
        return lambda epochs, rnd: optbench_epochs(compose([*overrides, f"trainer.epochs={epochs}", *capped]),
                                                   tmp / f"{name.replace(' ', '_')}_{rnd}")

    def floor(dtype):
        return lambda epochs, rnd: [gemm_floor(dims, bs, len(split["train"][0]), device, dtype)]

    variants = {"optbench": base}
    if "diagnostics" in cfg:  # speed with diagnostics off and with the default ones
        variants = {"optbench diagnostics=off": [*base, "diagnostics=off"],
                    "optbench diagnostics=basic": [*base, "diagnostics=basic"]}
        if bf16:
            variants[AMP] = [*base, "diagnostics=basic", "trainer.amp=true"]
        if importlib.util.find_spec("tensorboard") is not None:
            variants[TENSORBOARD] = [*base, "diagnostics=basic", "trainer.tensorboard=true"]
    x, y = (t.cpu() for t in split["train"])
    rows = {TENSOR_LOOP: loop(MnistDataset(x, y, split["mean"].cpu(), split["std"].cpu())),
            PIL_LOOP: loop(PilMnistDataset(x.numpy(), y.numpy()))}
    rows.update({name: trainer(name, overrides) for name, overrides in variants.items()})
    rows[FLOOR] = floor(torch.float32)
    if bf16:
        rows[BF16_FLOOR] = floor(torch.bfloat16)
    return rows


def measure(rows: dict, opts, device: torch.device) -> tuple[dict, dict]:
    """Seconds per epoch and peak memory of every row; round 0 warms up and is dropped."""
    times: dict[str, list[float]] = {name: [] for name in rows}
    memory = {name: "" for name in rows}
    for rnd in range(opts.rounds + 1):
        epochs = 1 if rnd == 0 else opts.epochs
        for name in list(rows) if rnd % 2 == 0 else list(rows)[::-1]:
            _reset_peak(device)
            t = rows[name](epochs, rnd)
            if rnd > 0:
                times[name].extend(t)
            memory[name] = peak_memory(device)
    return times, memory


def print_table(times: dict, memory: dict, n_train: int) -> None:
    med = {name: statistics.median(ts) for name, ts in times.items() if ts}
    loader, pil, floor = med[TENSOR_LOOP], med[PIL_LOOP], med[FLOOR]
    w = max(map(len, med))
    print()
    print(f"| {'approach':<{w}} | {'s/epoch':>8} | {'samples/s':>10} | {'vs DataLoader':>13} | {'vs PIL loop':>11} "
          f"| {'of floor':>8} | peak memory after |")
    print(f"| {'-' * w} | {'-' * 8} | {'-' * 10} | {'-' * 13} | {'-' * 11} | {'-' * 8} | {'-' * 17} |")
    for name, s in med.items():
        print(f"| {name:<{w}} | {s:>8.3f} | {n_train / s:>10.0f} | {loader / s:>12.2f}x | {pil / s:>10.2f}x "
              f"| {floor / s:>8.0%} | {memory[name]} |")
    print(f"(median of {len(times[FLOOR])} floor and {len(times[TENSOR_LOOP])} loop measurements; "
          "RSS is the process peak so far, CUDA the peak of that contender)")
    if AMP in med and BF16_FLOOR in med:
        # "of floor" compares with fp32 matmuls; bf16 autocast is bounded by the bf16 ones instead
        print(f"(`{AMP}` is {med[BF16_FLOOR] / med[AMP]:.0%} of the bf16 GEMM floor)")
    if TENSORBOARD in med:
        basic = med["optbench diagnostics=basic"]
        print(f"(live TensorBoard costs {med[TENSORBOARD] / basic - 1:+.1%} over diagnostics=basic, "
              "median against median)")


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench bench",
        description="Seconds per epoch of optbench's training path (diagnostics off, basic, and basic with bf16 "
                    "autocast where the device runs bf16) next to a DataLoader loop over a tensor Dataset, the "
                    "torchvision-style PIL loop of MNIST tutorials, and the GEMM floor in fp32 and bf16, in one "
                    "process on the same data and model; then a vectorized sweep against the same runs one after "
                    "another and against the GEMM floor of their work.")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the workload (default: the train defaults)")
    parser.add_argument("--epochs", type=int, default=2, help="epochs per contender per round (default: 2)")
    parser.add_argument("--rounds", type=int, default=2, help="measured rounds after the warm-up round (default: 2)")
    parser.add_argument("--sweep", type=int, default=8, help="runs in the sweep comparison; 0 skips it (default: 8)")
    parser.add_argument("--sweep-epochs", type=int, default=1, help="epochs per sweep run (default: 1)")
    parser.add_argument("--max-steps", type=int, default=None, help="cap every optbench run at N steps (smoke tests)")
    parser.add_argument("--pass-size", type=int, default=32,
                        help="runs in the per-step comparison of a seed pass with a single run; 0 skips it "
                             "(default: 32)")
    opts = parser.parse_intermixed_args(args)

    base = list(opts.overrides)
    cfg = compose(base)
    device = select_device(cfg.device)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    n_train, bs = len(split["train"][0]), cfg.trainer.batch_size or len(split["train"][0])
    dims = [784, *cfg.model.hidden, 10]
    print(f"workload: MLP {'-'.join(map(str, dims))}, {cfg.optimizer._target_.split('.')[-1]}, "
          f"batch {bs}, {n_train} samples per epoch, device {device} ({torch.get_num_threads()} threads), "
          f"torch {torch.__version__}")
    print("contenders alternate; each round reverses their order; round 0 is a warm-up and not counted")

    with tempfile.TemporaryDirectory(prefix="optbench-bench-") as tmp_name:
        tmp = Path(tmp_name)
        times, memory = measure(contenders(cfg, base, opts, split, dims, bs, device, tmp), opts, device)
        print_table(times, memory, n_train)

        ready, first = time_to_first_step(base, tmp)
        print()
        print(f"`optbench --help`: {help_seconds():.2f} s; `optbench train`: command start -> training loop ready "
              f"{_s(ready)}, -> first step done {_s(first)} (includes the step-0 evaluation)")

        if opts.pass_size > 1:
            per_step(base, opts.pass_size, tmp, device, *((1, 1 + opts.max_steps) if opts.max_steps else (20, 120)))
        if opts.sweep > 1:
            sweep(base, opts, tmp, split, dims, bs, device)
    return 0


class OpCounter(TorchDispatchMode):
    """Counts the ATen operations dispatched: on a GPU each one that is not a view is a kernel launch."""

    def __init__(self):
        super().__init__()
        self.ops = self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        self.kernels += not func.is_view
        return func(*args, **(kwargs or {}))


def per_step(base: list[str], K: int, tmp: Path, device: torch.device, short: int = 20, long: int = 120) -> None:
    """ATen operations and seconds per training step of a single run and, per model, of a K-seed pass.

    Each figure is the difference between runs of `long` and `short` steps,
    over long - short: setup and the two evaluations cancel out.
    """
    plain = ["trainer.eval_every=1000000", "trainer.checkpoint_every=0"]
    # composed once per run: 16 trainings of K + 1 runs composed afresh spent longer composing than training
    composed = {k: [compose([*base, *plain, f"seed={s}"]) for s in range(k)] for k in (1, K)}

    def train(k: int, steps: int, count: bool):
        cfgs = [copy.deepcopy(c) for c in composed[k]]
        for c in cfgs:
            c.trainer.max_steps = steps
        dirs = [tmp / f"step-{k}-{steps}-{count}" / str(s) for s in range(k)]
        counter = OpCounter()
        with counter if count else contextlib.nullcontext():
            sync(device)
            t0 = time.perf_counter()
            fit_pass(cfgs, dirs)
            sync(device)
        return time.perf_counter() - t0, counter

    counters = {k: (train(k, short, True)[1], train(k, long, True)[1]) for k in (1, K)}
    ops = {k: (b.ops - a.ops) / (long - short) / k for k, (a, b) in counters.items()}
    kernels = {k: (b.kernels - a.kernels) / (long - short) / k for k, (a, b) in counters.items()}
    seconds: dict[int, list[float]] = {1: [], K: []}
    for order in ((1, K), (K, 1), (1, K)):  # alternating, the first round a warm-up
        for k in order:
            seconds[k].append((train(k, long, False)[0] - train(k, short, False)[0]) / (long - short) / k)
    ms = {k: 1000 * statistics.median(seconds[k][1:]) for k in (1, K)}
    print()
    print(f"per training step ({long} - {short} steps, evaluation and checkpoints cancel out; "
          "seconds alternate, median of 2):")
    for k, name in ((1, "single run"), (K, f"per model in a {K}-seed pass")):
        print(f"  {name:<28} {ops[k]:7.1f} ATen ops ({kernels[k]:.1f} not views: kernel launches on a GPU), "
              f"{ms[k]:.3f} ms")
    print(f"  pass / single: {kernels[K] / kernels[1]:.3f}x the launches, {ms[K] / ms[1]:.2f}x the time per model")


def sweep(base: list[str], opts, tmp: Path, split: dict, dims: list[int], batch: int, device: torch.device) -> None:
    """The same K runs (seed=0..K-1) one after another in this process, then in one vectorized pass."""
    K = opts.sweep
    capped = [f"trainer.max_steps={opts.max_steps}"] if opts.max_steps else []
    cfgs = [compose([*base, f"seed={s}", f"trainer.epochs={opts.sweep_epochs}", *capped]) for s in range(K)]
    separate_dirs = [tmp / "separate" / str(i) for i in range(K)]
    t0 = time.perf_counter()
    separate = [fit(c, d) for c, d in zip(cfgs, separate_dirs)]
    t_separate = time.perf_counter() - t0
    t0 = time.perf_counter()
    together = fit_pass(cfgs, [tmp / "vectorized" / str(i) for i in range(K)])
    t_vectorized = time.perf_counter() - t0
    gap = max(abs(a["final"]["train_loss"] - b["final"]["train_loss"]) for a, b in zip(separate, together))
    print()
    print(f"sweep of {K} runs (seed=0..{K - 1}, {opts.sweep_epochs} epoch(s) each, {' '.join(capped) or 'defaults'}, "
          f"evaluation and checkpoints included): one after another {t_separate:.1f} s, "
          f"vectorized {t_vectorized:.1f} s: {t_separate / t_vectorized:.2f}x faster "
          f"(largest final train-loss difference {gap:.1e})")
    # measured after both passes, so neither pass runs beside it
    floor = runs_floor(dims, batch, split, cfgs[0].data.train_eval_size, separate_dirs, separate, device)
    print(f"GEMM floor of these {K} runs: {floor:.2f} s; one after another is {t_separate / floor:.1f}x the floor, "
          f"so no schedule of the same fp32 GEMMs can be faster than {t_separate / floor:.1f}x "
          f"(vectorized: {t_vectorized / floor:.1f}x the floor)")


def _s(x) -> str:
    return "n/a" if x is None else f"{x:.2f} s"
