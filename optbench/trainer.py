"""Training: build everything from the config, then one plain loop.

The loop keeps every per-step number on the device and reads them back in
blocks (every SYNC_EVERY steps and at each evaluation), so the host never
waits on the accelerator inside a step.
"""

import csv
import io
import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from optbench import data, diagnostics, results
from optbench.errors import UserError
from optbench.models import build_mlp, init_weights, linear_layers
from optbench.schedules import warmup_factor

log = logging.getLogger(__name__)

# Steps between host reads of the buffered step metrics: bounds both the cost
# of the sync and how long a diverged run goes on before it is stopped.
SYNC_EVERY = 50
EVAL_CHUNK = 8192
CHECKPOINT = "checkpoint.pt"
HISTOGRAMS = "histograms.csv"
# schedule lengths that, left null in the YAML, become the run's number of scheduler steps
SCHEDULE_LENGTHS = ("T_max", "total_iters", "total_steps")
INTERVALS = ("step", "epoch", "eval")
DIAGNOSTIC_LEVELS = ("off", "basic", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but torch sees no CUDA GPU (use device=auto or device=cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps asked for, but this machine has no MPS backend (use device=auto or device=cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device torch knows (auto, cpu, cuda, cuda:N, mps)") from None


def make_splits(arrays: dict, val_size: int, device: torch.device) -> dict:
    """uint8 images and int64 labels on `device`, plus the training split's pixel mean and std.

    Images stay uint8 (a quarter of float32's memory traffic); `normalise`
    turns a gathered batch into floats with the training statistics.
    """
    images, labels = arrays["train_images"], arrays["train_labels"]
    n_train = len(images) - val_size
    if not 0 <= val_size < len(images):
        raise UserError(f"data.val_size={val_size} must be in [0, {len(images) - 1}]")

    def to(x, dtype):
        return torch.from_numpy(x).to(device=device, dtype=dtype)

    split = {
        "train": (to(images[:n_train], torch.uint8), to(labels[:n_train], torch.int64)),
        "val": (to(images[n_train:], torch.uint8), to(labels[n_train:], torch.int64)),
        "test": (to(arrays["test_images"], torch.uint8), to(arrays["test_labels"], torch.int64)),
    }
    train_x = split["train"][0].float()
    split["mean"], split["std"] = train_x.mean(), train_x.std()
    return split


def eval_splits(split: dict, train_eval_size: int | None) -> dict:
    """The (x, y) each evaluation runs over: train (its first train_eval_size images, or all), val, test."""
    if train_eval_size is not None and train_eval_size < 1:
        raise UserError(f"data.train_eval_size={train_eval_size} must be >= 1 or null (the whole training split)")
    x, y = split["train"]
    return {"train": (x[:train_eval_size], y[:train_eval_size]), "val": split["val"], "test": split["test"]}


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # in place on the fresh float copy: one allocation instead of three (large ones page-fault on the CPU)
    return x_uint8.float().sub_(mean).div_(std)


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each (n, h, w) uint8 image moved by its own random (dy, dx) in [-pixels, pixels], zeros shifted in.

    One gather on x's device: no per-image loop and no host round trip.
    """
    n, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dy, dx = torch.randint(0, 2 * pixels + 1, (2, n, 1), device=x.device, generator=generator)
    rows = (torch.arange(h, device=x.device) + dy)[:, :, None]
    cols = (torch.arange(w, device=x.device) + dx)[:, None, :]
    return padded[torch.arange(n, device=x.device)[:, None, None], rows, cols]


@torch.no_grad()
def evaluate(model, loss_fn, x, y, mean, std) -> torch.Tensor:
    """[mean loss, accuracy] over a whole split, as a device tensor (no host sync)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        logits = model(normalise(x[i : i + EVAL_CHUNK], mean, std))
        target = y[i : i + EVAL_CHUNK]
        total[0] += loss_fn(logits, target) * len(target)
        total[1] += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return total / max(len(x), 1)


def build_optimizer(optimizer_cfg, params):
    factory = instantiate(optimizer_cfg, _convert_="all")  # plain lists: torch indexes betas itself
    try:
        return factory(params)
    except (TypeError, ValueError, IndexError) as e:  # torch's own checks, e.g. betas=[0.9] or lr=-1
        raise UserError(f"optimizer: {e}") from None
    except RuntimeError as e:
        # fused kernels exist only for some devices and dtypes: fall back to torch's default
        if not optimizer_cfg.get("fused"):
            raise
        log.warning("fused optimizer unavailable here (%s); using torch's default implementation", e)
        return factory(params, fused=False)


def build_scheduler(schedule_cfg, optimizer, total_steps: int, steps_per_epoch: int):
    """(torch scheduler, interval, warmup_steps) from the schedule group.

    `interval` (step | epoch | eval) and `warmup_steps` are for the trainer; the
    rest are the scheduler's constructor arguments. A length left null
    (T_max, total_iters, total_steps) becomes the run's number of scheduler
    steps: optimisation steps, or epochs for interval=epoch.
    """
    args = OmegaConf.to_container(schedule_cfg, resolve=True)
    interval = args.pop("interval", "step")
    warmup_steps = args.pop("warmup_steps", 0) or 0
    if interval not in INTERVALS:
        raise UserError(f"schedule.interval={interval!r} is not one of {', '.join(INTERVALS)}")
    if warmup_steps < 0:
        raise UserError(f"schedule.warmup_steps={warmup_steps} must be >= 0")
    length = total_steps if interval == "step" else math.ceil(total_steps / steps_per_epoch)
    for key in SCHEDULE_LENGTHS:
        if key in args and args[key] is None:
            args[key] = max(length, 1)
    try:
        return instantiate(args)(optimizer), interval, warmup_steps
    except (TypeError, ValueError) as e:
        raise UserError(f"schedule: {e}") from None


def evaluations_without_improvement(val_losses: list[float], min_delta: float) -> int:
    """Evaluations since the validation loss last fell below the best so far minus min_delta (early stopping)."""
    best, stale = math.inf, 0
    for loss in val_losses:
        if loss < best - min_delta:
            best, stale = loss, 0
        else:
            stale += 1
    return stale


def optimizer_impl(optimizer) -> str:
    if optimizer.defaults.get("fused"):
        return "fused"
    if optimizer.defaults.get("foreach"):
        return "foreach"
    return "default"


# (key, allowed values, the rule as the error message states it); null always means "off" for these keys
TRAINER_RULES = (
    ("epochs", lambda v: v >= 0, ">= 0"),
    ("max_steps", lambda v: v >= 0, ">= 0 (or null: epochs decide)"),
    ("eval_every", lambda v: v >= 1, ">= 1 (or null for once per epoch)"),
    ("log_every", lambda v: v >= 1, ">= 1"),
    ("checkpoint_every", lambda v: v >= 0, ">= 0 (0: no checkpoints)"),
    ("clip_grad_norm", lambda v: v > 0, "> 0 (or null for no clipping)"),
    ("clip_grad_value", lambda v: v > 0, "> 0 (or null for no clipping)"),
    ("l1", lambda v: v >= 0, ">= 0"),
    ("patience", lambda v: v >= 1, ">= 1 (or null for no early stopping)"),
    ("min_delta", lambda v: v >= 0, ">= 0"),
    ("compile", lambda v: v in COMPILE_MODES, f"one of {', '.join(COMPILE_MODES)} (or null: eager)"),
)


def check_trainer(t: DictConfig, n_train: int) -> None:
    if t.batch_size is not None and not 1 <= t.batch_size <= n_train:
        raise UserError(f"trainer.batch_size={t.batch_size} must be between 1 and the training split's {n_train} "
                        "(or null for all of it)")
    for key, allowed, rule in TRAINER_RULES:
        if t[key] is not None and not allowed(t[key]):
            raise UserError(f"trainer.{key}={t[key]} must be {rule}")


def run_lengths(t: DictConfig, n_train: int) -> tuple[int, int, int, int]:
    """(batch size, steps per epoch, total steps, steps between evaluations) of a run on n_train images."""
    check_trainer(t, n_train)
    batch_size = t.batch_size or n_train  # null: the whole split (full-batch gradient descent)
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = t.epochs * steps_per_epoch
    if t.max_steps is not None:
        total_steps = min(total_steps, t.max_steps)
    return batch_size, steps_per_epoch, total_steps, t.eval_every or steps_per_epoch


def check_diagnostics(d: DictConfig) -> None:
    if d.level not in DIAGNOSTIC_LEVELS:
        raise UserError(f"diagnostics.level={d.level!r} is not one of {', '.join(DIAGNOSTIC_LEVELS)}")
    if d.probe_size < 1 or d.histogram_bins < 1:
        raise UserError("diagnostics.probe_size and diagnostics.histogram_bins must be >= 1")
    if not all(0.0 <= p <= 1.0 for p in d.histogram_at):
        raise UserError(f"diagnostics.histogram_at={list(d.histogram_at)} must hold fractions in [0, 1]")


@dataclass
class Setup:
    """Everything a run is made of, built and checked from the config before any training step."""

    device: torch.device
    split: dict
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: object
    interval: str
    warmup_steps: int
    loss_fn: torch.nn.Module
    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int
    eval_sets: dict  # what each evaluation runs over: {"train": (x, y), "val": ..., "test": ...}
    forward: object  # what a training step calls: the model, or torch.compile of it (trainer.compile)


def prepare(cfg: DictConfig) -> Setup:
    """Validate the config and build data, model, optimizer and schedule on the device; train nothing.

    `optbench train --dry-run` stops here; `fit` goes on from here.
    """
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    t = cfg.trainer
    if cfg.data.get("augment_shift", 0) < 0:
        raise UserError(f"data.augment_shift={cfg.data.augment_shift} must be >= 0")
    check_diagnostics(cfg.diagnostics)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    batch_size, steps_per_epoch, total_steps, eval_every = run_lengths(t, len(split["train"][0]))
    model = build_mlp(**cfg.model).to(device)
    init_weights(model, cfg.init)
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    if isinstance(optimizer, torch.optim.LBFGS) and (t.clip_grad_norm or t.clip_grad_value):
        # its line search compares losses with the gradient it is given: a clipped one misleads it
        raise UserError("optimizer=lbfgs does not support trainer.clip_grad_norm / trainer.clip_grad_value")
    scheduler, interval, warmup_steps = build_scheduler(cfg.schedule, optimizer, total_steps, steps_per_epoch)
    return Setup(device, split, model, optimizer, scheduler, interval, warmup_steps, instantiate(cfg.loss),
                 batch_size, steps_per_epoch, total_steps, eval_every,
                 eval_splits(split, cfg.data.get("train_eval_size")),
                 torch.compile(model, mode=t.compile) if t.get("compile") else model)


def guard_and_clip(params: list, norms: torch.Tensor, clip_norm, clip_value, counters: torch.Tensor) -> None:
    """Zero the gradients when any is NaN/inf, so none is ever applied; then clip by norm and/or value.

    `norms` are the per-tensor gradient norms before clipping. counters[0]
    counts the steps clipping changed, counters[1] the steps zeroed; both
    stay on the device (no host sync).
    """
    total = norms.norm()
    bad = ~torch.isfinite(total)
    for p in params:
        p.grad.masked_fill_(bad, 0.0)
    counters[1] += bad
    hit = []
    if clip_norm:
        hit.append(total > clip_norm)
        torch.nn.utils.clip_grads_with_norm_(params, clip_norm, total.nan_to_num(0.0), foreach=True)
    if clip_value:
        hit.append(torch.stack(torch._foreach_norm([p.grad for p in params], math.inf)).max() > clip_value)
        torch.nn.utils.clip_grad_value_(params, clip_value, foreach=True)
    if hit:
        counters[0] += torch.stack(hit).any()


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step and ends cleanly.

    A second Ctrl-C raises KeyboardInterrupt at once, for a step that hangs.
    """

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)


@contextmanager
def _stop_on_signals():
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, epoch: int, shuffle: torch.Generator,
                    extra: dict | None = None) -> None:
    """Everything needed to continue the run, written atomically (temp file + rename)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()},
        **(extra or {}),
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    save_tensors(state, path)


def save_tensors(obj, path: Path) -> None:
    """torch.save, atomically; serialised in memory first so a full disk raises a plain OSError."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    results.write_bytes_atomic(path, buffer.getvalue())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resumable(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The checkpoint to continue from: an unfinished run of this same config in run_dir."""
    summary = results.read_summary(run_dir)
    if not (cfg.trainer.resume and summary and (run_dir / CHECKPOINT).exists()):
        return None
    if summary.get("status") in results.FINISHED or not results.same_config(run_dir, cfg):
        return None
    state = torch.load(run_dir / CHECKPOINT, map_location="cpu", weights_only=False)
    return state if "history" in state else None  # a vectorized pass's checkpoint holds weights only


def clear_run_files(run_dir: Path) -> None:
    """Remove what an earlier, unfinished attempt left in run_dir, so a fresh start never appends to it."""
    for stale in (results.METRICS, HISTOGRAMS, CHECKPOINT):
        (run_dir / stale).unlink(missing_ok=True)


def fit(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Train one model as `cfg` says, writing config, metrics and summary into `run_dir`.

    An unfinished run of the same config in `run_dir` (killed, interrupted)
    continues from its last checkpoint when trainer.resume is on; anything
    else there is replaced. Returns the summary. Status is completed,
    diverged (non-finite loss or gradient), interrupted (SIGINT/SIGTERM) or
    failed (an exception, re-raised).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resume = resumable(cfg, run_dir)
    if resume is None:
        clear_run_files(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    started = time.perf_counter()
    summary = {
        **(resume["summary"] if resume else {}),
        "status": "running",
        "choices": dict(choices or {}),
        "started_at": _now(),
        **results.provenance(),
    }
    results.write_json_atomic(run_dir / results.SUMMARY, summary)
    try:
        return _fit(cfg, run_dir, summary, started, resume)
    except BaseException as e:
        if summary["status"] == "running":  # failed while setting up, before the loop took over
            summary.update(status="failed", reason=f"{type(e).__name__}: {e}", finished_at=_now())
            results.write_json_atomic(run_dir / results.SUMMARY, summary)
        raise


def _fit(cfg: DictConfig, run_dir: Path, summary: dict, started: float, resume: dict | None) -> dict:
    s = prepare(cfg)
    model, optimizer, scheduler, device = s.model, s.optimizer, s.scheduler, s.device
    train_x, train_y = s.split["train"]
    n_train = len(train_x)
    t, diag = cfg.trainer, cfg.diagnostics
    # the start point, for distance-from-init and landscapes (the same weights again on a resume: same seed)
    save_tensors(model.state_dict(), run_dir / "init.pt")
    layers = linear_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # entries of `params` per Linear layer, and a name for each, for per-layer gradient norms
    param_index = {id(p): i for i, p in enumerate(params)}
    layer_params = [[param_index[id(p)] for p in layer.parameters()] for _, layer in layers]
    layer_param_names = [f"{name}.{kind}" for name, layer in layers for kind, _ in layer.named_parameters()]
    layer_param_index = [param_index[id(p)] for _, layer in layers for p in layer.parameters()]
    per_layer = diag.level != "off"
    step_names = ["loss", "grad_norm"]
    if per_layer:
        step_names += [f"grad_norm/{name}" for name, _ in layers] + [f"grad_norm/{n}" for n in layer_param_names]
    clip_norm, clip_value = t.clip_grad_norm, t.clip_grad_value
    l1_weights = [layer.weight for _, layer in layers]
    shift = cfg.data.get("augment_shift", 0)
    shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
    # diagnostics: a fixed probe batch of validation images, the start point, the point one step back
    probe_x = normalise(s.split["val"][0][: diag.probe_size], s.split["mean"], s.split["std"])
    probe_y = s.split["val"][1][: diag.probe_size]
    initial = [diagnostics.flat_layer(layer).clone() for _, layer in layers]
    previous = None  # (step, per-layer parameters) taken just before a step that ends in an evaluation
    histogram_steps = diagnostics.histogram_schedule(diag.histogram_at, s.total_steps)
    counters = torch.zeros(2, dtype=torch.int64, device=device)  # clipped steps, skipped non-finite steps

    history = []  # one dict per evaluation: step, epoch, val_acc, ...
    step, epoch, train_time = 0, 0, 0.0
    flags = {name: None for name in ("exploding_gradients", "vanishing_gradients", "dead_relu", "saturated")}
    if resume:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        torch.set_rng_state(resume["rng"]["torch"])
        shuffle.set_state(resume["rng"]["shuffle"])
        if "cuda" in resume["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resume["rng"]["cuda"])
        step, epoch, train_time = resume["step"], resume["epoch"], resume["train_time"]
        history, flags = resume["history"], resume["flags"]
        histogram_steps = [h for h in histogram_steps if h > step]
        counters.copy_(resume["counters"])
        results.truncate(run_dir / results.METRICS, resume["metrics_bytes"])
        results.truncate(run_dir / HISTOGRAMS, resume["histogram_bytes"])
        log.info("resuming from the checkpoint at epoch %d, step %d", epoch, step)

    summary.update(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        optimizer_impl=optimizer_impl(optimizer),
        n_params=sum(p.numel() for p in params),
        steps_per_epoch=s.steps_per_epoch,
        total_steps=s.total_steps,
        torch_threads=torch.get_num_threads(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
        cudnn_benchmark=torch.backends.cudnn.benchmark,
        amp="bf16 autocast (training steps)" if t.amp else None,
        compile=t.get("compile"),
        diagnostics=diag.level,
        flags=flags,
    )
    log.info("%s | %d parameters | %s (%s) | %d steps of batch %d", device, summary["n_params"],
             type(optimizer).__name__, summary["optimizer_impl"], s.total_steps, s.batch_size)

    writer = results.MetricsWriter(run_dir)
    histogram_file = open(run_dir / HISTOGRAMS, "a", newline="")
    histogram_csv = csv.writer(histogram_file)
    if histogram_file.tell() == 0:
        histogram_csv.writerow(diagnostics.HISTOGRAM_COLUMNS)
    pending = []  # (step, epoch, lr, tensor of step_names values) not yet read back
    status, reason = "completed", None
    stopped_early = False

    def flush_steps() -> bool:
        """Write buffered step metrics; False when one of them is not finite."""
        if not pending:
            return True
        values = torch.stack([v for *_, v in pending]).tolist()
        rows = []
        first_bad = None
        for (st, ep, lr, _), vals in zip(pending, values):
            rows.append((st, ep, "step", "lr", lr))
            rows.extend((st, ep, "step", name, v) for name, v in zip(step_names, vals))
            if first_bad is None and not all(math.isfinite(v) for v in vals):
                first_bad = st
            diagnostics.update_flags(flags, st, dict(zip(step_names, vals)), diag.thresholds)
        writer.write_rows(rows)
        last_step_values.clear()
        last_step_values.update(zip(step_names, values[-1]))
        pending.clear()
        bar.set_postfix(loss=f"{values[-1][0]:.4f}", refresh=False)
        if first_bad is not None:
            summary["diverged_at_step"] = first_bad
            return False
        return True

    def write_diagnostics(values: dict) -> None:
        """Per-layer parameter and probe-batch statistics, histograms when due, health flags."""
        numbers, layers_seen = diagnostics.at_evaluation(model, s.loss_fn, probe_x, probe_y, cfg.model.activation,
                                                         diag.saturation, step, previous, initial)
        writer.write(step, epoch, "diag", numbers)
        diagnostics.update_flags(flags, step, {**values, **numbers}, diag.thresholds)
        if diagnostics.histograms_due(diag.level, histogram_steps, step):
            histogram_csv.writerows(diagnostics.histogram_rows(step, epoch, layers_seen, diag.histogram_bins))
            histogram_file.flush()

    def run_eval() -> bool:
        nonlocal train_time, stopped_early
        _sync(device)
        train_time = time.perf_counter() - train_started - eval_time[0] + resumed_train_time
        t0 = time.perf_counter()
        split = s.split
        out = torch.stack([evaluate(model, s.loss_fn, *xy, split["mean"], split["std"]) for xy in s.eval_sets.values()])
        (tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc) = out.tolist()
        history.append(dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                            val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=train_time))
        for k, (loss, acc) in zip(("train", "val", "test"), out.tolist()):
            writer.write(step, epoch, k, {"loss": loss, "acc": acc})
        writer.write(step, epoch, "run", {"train_time": train_time})
        if per_layer:
            write_diagnostics(last_step_values)
        writer.flush()
        eval_time[0] += time.perf_counter() - t0
        bar.set_postfix(val_acc=f"{va_acc:.4f}", refresh=False)
        log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                 epoch, step, tr_loss, va_loss, va_acc, te_acc, train_time)
        clipped, skipped = counters.tolist()
        if clip_norm or clip_value:
            summary["clipped_steps"] = clipped
        summary["nonfinite_steps_skipped"] = skipped
        _update_summary(summary, history, step, epoch, time.perf_counter() - started)
        results.write_json_atomic(run_dir / results.SUMMARY, summary)
        if not all(math.isfinite(v) for v in (tr_loss, va_loss)):
            summary.setdefault("diverged_at_step", step)
            return False
        if s.interval == "eval" and step > 0:
            scheduler.step(va_loss)
        if t.patience and evaluations_without_improvement([h["val_loss"] for h in history], t.min_delta) >= t.patience:
            stopped_early = True
        return True

    def checkpoint() -> None:
        flush_steps()
        writer.flush()
        histogram_file.flush()
        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, scheduler, step, epoch, shuffle, {
            "train_time": train_time, "history": history, "flags": flags, "counters": counters.cpu(),
            "metrics_bytes": writer.tell(), "histogram_bytes": histogram_file.tell(),
            "summary": {k: summary.get(k) for k in ("clipped_steps", "nonfinite_steps_skipped")},
        })

    eval_time = [0.0]
    resumed_train_time = train_time
    last_step_values = {}  # the last step read back (flush_steps), for the health flags at evaluation
    train_started = time.perf_counter()
    bar = tqdm(total=s.total_steps, initial=step, unit="step", dynamic_ncols=True, disable=None, leave=False)
    try:
        with _stop_on_signals() as stop:
            ok = run_eval() if resume is None else True
            while ok and step < s.total_steps and stop.signal is None and not stopped_early:
                epoch += 1
                bar.set_description(f"epoch {epoch}/{t.epochs}")
                order = torch.randperm(n_train, device=device, generator=shuffle)
                for i in range(s.steps_per_epoch):
                    idx = order[i * s.batch_size : (i + 1) * s.batch_size]
                    x_uint8 = random_shift(train_x[idx], shift, shuffle) if shift else train_x[idx]
                    x, y = normalise(x_uint8, s.split["mean"], s.split["std"]), train_y[idx]
                    log_this = (step + 1) % t.log_every == 0 or step + 1 == s.total_steps
                    evaluates_next = (step + 1) % s.eval_every == 0 or step + 1 == s.total_steps
                    if per_layer and evaluates_next:
                        previous = (step, [diagnostics.flat_layer(layer).clone() for _, layer in layers])
                    first = {}  # loss and pre-clip gradient norms of the step's first evaluation

                    def closure():
                        optimizer.zero_grad(set_to_none=True)
                        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
                            loss = s.loss_fn(s.forward(x), y)
                        objective = loss + t.l1 * sum(w.abs().sum() for w in l1_weights) if t.l1 else loss
                        objective.backward()
                        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
                        first.setdefault("loss", loss.detach())
                        first.setdefault("norms", norms)  # before clipping: what the loss surface gave
                        guard_and_clip(params, norms, clip_norm, clip_value, counters)
                        return objective

                    # warmup multiplies the rate the schedule set, for this step only
                    scheduled = [g["lr"] for g in optimizer.param_groups]
                    scale = warmup_factor(step, s.warmup_steps)
                    for g, g_lr in zip(optimizer.param_groups, scheduled):
                        g["lr"] = g_lr * scale
                    lr = optimizer.param_groups[0]["lr"]
                    optimizer.step(closure)
                    for g, g_lr in zip(optimizer.param_groups, scheduled):
                        g["lr"] = g_lr
                    if s.interval == "step":
                        scheduler.step()
                    step += 1
                    bar.update()
                    if log_this:
                        norms = first["norms"]
                        values = [first["loss"], norms.norm()]
                        if per_layer:
                            values += [norms[ix].norm() for ix in layer_params] + [norms[ix] for ix in layer_param_index]
                        pending.append((step, epoch, lr, torch.stack(values)))
                    if len(pending) >= SYNC_EVERY and not flush_steps():
                        ok = False
                        break
                    if evaluates_next or stop.signal is not None:
                        if not (flush_steps() and run_eval()):
                            ok = False
                            break
                        if stopped_early:
                            break
                    end_of_epoch = i == s.steps_per_epoch - 1 or step == s.total_steps
                    if s.interval == "epoch" and i == s.steps_per_epoch - 1:
                        scheduler.step()
                    if end_of_epoch and t.checkpoint_every and epoch % t.checkpoint_every == 0:
                        checkpoint()
                    if step >= s.total_steps or stop.signal is not None:
                        break
            if not ok:
                status = "diverged"
                reason = f"non-finite loss or gradient at step {summary['diverged_at_step']}"
                log.warning("run diverged: %s", reason)
            elif stop.signal is not None:
                status, reason = "interrupted", f"{signal.Signals(stop.signal).name} received at step {step}"
            elif stopped_early:
                reason = f"early stopping: validation loss did not improve by > {t.min_delta} in {t.patience} evaluations"
                log.info("stopped early at epoch %d step %d", epoch, step)
            summary["stopped_early"] = stopped_early
            flush_steps()
    except KeyboardInterrupt:
        status, reason = "interrupted", f"KeyboardInterrupt at step {step}"
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        writer.close()
        histogram_file.close()
        summary.update(status=status, reason=reason, finished_at=_now())
        _update_summary(summary, history, step, epoch, time.perf_counter() - started)
        results.write_json_atomic(run_dir / results.SUMMARY, summary)
    raised = [name for name, at in flags.items() if at is not None]
    log.info("%s: best val acc %s, test acc at that epoch %s%s", status, _fmt(summary.get("best_val_acc")),
             _fmt(summary.get("test_acc_at_best_val")), f" | flags: {', '.join(raised)}" if raised else "")
    return summary


def _update_summary(summary: dict, history: list, step: int, epoch: int, wall_time: float) -> None:
    summary.update(step=step, epoch=epoch, wall_time=round(wall_time, 3))
    if not history:
        return
    last = history[-1]
    finite = [h for h in history if math.isfinite(h["val_acc"])]
    best = max(finite, key=lambda h: h["val_acc"]) if finite else last
    summary.update(
        best_val_acc=best["val_acc"],
        best_step=best["step"],
        best_epoch=best["epoch"],
        # test accuracy where validation chose: never used to choose anything
        test_acc_at_best_val=best["test_acc"],
        final={k: v for k, v in last.items() if k not in ("step", "epoch")},
        train_time=round(last["train_time"], 3),
        seconds_per_epoch=round(last["train_time"] / last["epoch"], 3) if last["epoch"] else None,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
