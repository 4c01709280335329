"""Training: one loop for K >= 1 runs.

A single run is K = 1 and trains its plain `nn.Sequential`. A pass of K > 1
runs that differ only in seed, optimizer, schedule or init trains their
parameters stacked into [K, ...] tensors (optbench.vectorized), so one step
is one batched forward and backward for all of them. Either way the step
reads the same: learning rate, forward, backward, guard and clip, optimizer
step, log, evaluate, checkpoint, stop.

Every per-step number stays on the device and is read back in blocks (every
SYNC_EVERY steps and at each evaluation), so the host never waits on the
accelerator inside a step.
"""

import contextlib
import csv
import functools
import importlib.util
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from optbench import data, diagnostics, optimizers, vectorized
from optbench.results import rundir
from optbench.errors import UserError
from optbench.models import build_mlp, init_weights, linear_layers, set_dropout_generator
from optbench.schedules import warmup_factor

log = logging.getLogger(__name__)

# Steps between host reads of the buffered step metrics: bounds both the cost
# of the sync and how long a diverged run goes on before it is stopped.
SYNC_EVERY = 50
EVAL_CHUNK = 8192
# schedule lengths that, left null in the YAML, become the run's number of scheduler steps
SCHEDULE_LENGTHS = ("T_max", "total_iters", "total_steps")
INTERVALS = ("step", "epoch", "eval")
DIAGNOSTIC_LEVELS = ("off", "basic", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
FLAGS = ("exploding_gradients", "vanishing_gradients", "dead_relu", "saturated")
# what a user does about a damaged file of a run that is to be resumed
START_AGAIN = "trainer.resume=false starts this run again from scratch, replacing what is there"


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
    n_train = train_size(len(images), val_size)

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


def train_size(n_images: int, val_size: int) -> int:
    """Images left to train on once the last val_size images of the training file are held out."""
    if not 0 <= val_size < n_images:
        raise UserError(f"data.val_size={val_size} must be in [0, {n_images - 1}]")
    return n_images - val_size


def eval_splits(split: dict, train_eval_size: int | None) -> dict:
    """The (x, y) each evaluation runs over: train (its first train_eval_size images, or all), val, test."""
    x, y = split["train"]
    return {"train": (x[:train_eval_size], y[:train_eval_size]), "val": split["val"], "test": split["test"]}


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # in place on the fresh float copy: one allocation instead of three (large ones page-fault on the CPU)
    return x_uint8.float().sub_(mean).div_(std)


def random_shift(x: torch.Tensor, pixels: int, generators: list) -> torch.Tensor:
    """Each (h, w) uint8 image of x [K, n, h, w] moved by its own random (dy, dx) in [-pixels, pixels], zeros
    shifted in; run k's offsets drawn from generators[k], as that run alone draws them.

    One gather on x's device: no per-image loop and no host round trip.
    """
    k, n, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dy, dx = torch.stack([torch.randint(0, 2 * pixels + 1, (2, n, 1), device=x.device, generator=g)
                          for g in generators]).unbind(1)  # [K, n, 1] each
    rows = (torch.arange(h, device=x.device) + dy)[..., :, None]
    cols = (torch.arange(w, device=x.device) + dx)[..., None, :]
    run = torch.arange(k, device=x.device)[:, None, None, None]
    return padded[run, torch.arange(n, device=x.device)[None, :, None, None], rows, cols]


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


def build_optimizer(optimizer_cfg, params, model=None):
    """The optimizer over `params`; with optimizer.fallback, over `model`'s tensors split in two (optimizers.split)."""
    if "fallback" in optimizer_cfg or "fallback_for" in optimizer_cfg:
        optimizers.check_groups(optimizer_cfg)
        if model is None:
            raise UserError("optimizer.fallback splits a model's tensors; here there is no model")
        main, rest = optimizers.split(model, optimizer_cfg.get("fallback_for", []))
        own = OmegaConf.masked_copy(optimizer_cfg, [k for k in optimizer_cfg if k not in ("fallback", "fallback_for")])
        return optimizers.Combined([build_optimizer(cfg, part) for cfg, part in
                                    ((own, main), (optimizer_cfg.fallback, rest)) if part])
    optimizers.check_target(optimizer_cfg)
    target = optimizer_cfg._target_
    try:
        factory = instantiate(optimizer_cfg, _convert_="all")  # plain lists: torch indexes betas itself
    except InstantiationException as e:
        raise optimizers.missing_target(str(target), e.__cause__ or e) from None
    params = list(params)
    if optimizer_cfg.get("fused") and not fused_works(factory, params[0]):
        log.warning("fused %s kernel unavailable on %s; using torch's default implementation",
                    optimizer_cfg._target_, params[0].device)
        factory = functools.partial(factory, fused=False)
    try:
        return factory(params)
    except (TypeError, ValueError, IndexError) as e:  # torch's own checks, e.g. betas=[0.9] or lr=-1
        raise UserError(f"optimizer: {e}") from None


def fused_works(factory, like: torch.Tensor) -> bool:
    """Whether a fused kernel runs for tensors like `like`: torch checks only at the first step(), so try one
    on a one-element parameter of the same device and dtype."""
    probe = torch.zeros(1, device=like.device, dtype=like.dtype, requires_grad=True)
    probe.grad = torch.zeros_like(probe)
    try:
        factory([probe]).step()
    except (RuntimeError, NotImplementedError):
        return False
    except (TypeError, ValueError, IndexError):
        return True  # a wrong argument: the real construction reports it
    return True


def build_scheduler(schedule_cfg, optimizer, total_steps: int, steps_per_epoch: int):
    """(torch scheduler, interval, warmup_steps) from the schedule group.

    `interval` (step | epoch | eval) and `warmup_steps` are for the trainer; the
    rest are the scheduler's constructor arguments. A length left null
    (T_max, total_iters, total_steps) becomes the run's number of scheduler
    steps: optimisation steps, or epochs for interval=epoch.
    """
    args = OmegaConf.to_container(schedule_cfg, resolve=True)
    interval = args.pop("interval")
    warmup_steps = args.pop("warmup_steps")
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
    ("vectorize", lambda v: v in vectorized.MODES, f"one of {', '.join(vectorized.MODES)}"),
    ("progress_every", lambda v: v > 0, "> 0 seconds"),
)


def check_trainer(cfg: DictConfig, n_train: int) -> None:
    """The rules that need the training split's size."""
    t = cfg.trainer
    if t.batch_size is not None and not 1 <= t.batch_size <= n_train:
        raise UserError(f"trainer.batch_size={t.batch_size} must be between 1 and the training split's {n_train} "
                        "(or null for all of it)")
    batch_size = t.batch_size or n_train
    if cfg.model.batchnorm != "none" and (batch_size < 2 or n_train % batch_size == 1):
        # batch norm's statistics of one image are undefined: torch refuses such a batch mid-run
        raise UserError(f"model.batchnorm={cfg.model.batchnorm} needs every training batch to hold >= 2 images: "
                        f"trainer.batch_size={t.batch_size} leaves a batch of 1 of the {n_train} training images")


def run_lengths(cfg: DictConfig, n_train: int) -> tuple[int, int, int, int]:
    """(batch size, steps per epoch, total steps, steps between evaluations) of a run on n_train images."""
    check_trainer(cfg, n_train)
    t = cfg.trainer
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


def check(cfg: DictConfig) -> None:
    """Every rule a config must satisfy before data is loaded; a run and `--dry-run` both call it."""
    check_diagnostics(cfg.diagnostics)
    if cfg.data.augment_shift < 0:
        raise UserError(f"data.augment_shift={cfg.data.augment_shift} must be >= 0")
    if cfg.data.train_eval_size is not None and cfg.data.train_eval_size < 1:
        raise UserError(f"data.train_eval_size={cfg.data.train_eval_size} must be >= 1 or null (the whole training split)")
    t = cfg.trainer
    for key, allowed, rule in TRAINER_RULES:
        if t[key] is not None and not allowed(t[key]):
            raise UserError(f"trainer.{key}={t[key]} must be {rule}")
    if t.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise UserError("trainer.tensorboard=true needs the tensorboard package: pip install 'optbench[tensorboard]'")
    if vectorized.needs_closure(cfg) and (t.clip_grad_norm or t.clip_grad_value):
        # its line search compares losses with the gradient it is given: a clipped one misleads it
        raise UserError("optimizer=lbfgs does not support trainer.clip_grad_norm / trainer.clip_grad_value")


def check_setup(cfg: DictConfig, n_images: int) -> None:
    """Everything a run checks before its first step, without its data: the rules, the lengths, and the model,
    optimizer and schedule built on the CPU (torch's own checks, such as lr >= 0, happen there)."""
    check(cfg)
    lengths = run_lengths(cfg, train_size(n_images, cfg.data.val_size))
    model = build_model(cfg, torch.device("cpu"))
    build_training(cfg, model.parameters(), lengths, model)


@dataclass
class Run:
    """One run of a pass: its config, its files, its model and how it ends. Everything else is the pass's."""

    cfg: DictConfig
    dir: Path
    summary: dict
    log: logging.Logger
    resume: dict | None = None  # the checkpoint it continues from
    model: torch.nn.Module = None  # its own nn.Sequential; in a pass its tensors are views of row k of the stack
    generator: torch.Generator = None  # its data order, shifts and dropout masks, as if it trained alone
    group: "Group" = None
    row: int | None = None  # its row among the group's stacked rows (None: the group steps this run alone)
    history: list = field(default_factory=list)  # one dict per evaluation
    flags: dict = field(default_factory=lambda: dict.fromkeys(FLAGS))
    previous: tuple | None = None  # (step, per-layer parameters) one step before an evaluation
    initial: list | None = None  # per-layer parameters at step 0
    last_values: dict = field(default_factory=dict)  # the last step read back, for the health flags
    status: str = "running"
    writer: rundir.MetricsWriter = None
    histogram_file: object = None


@dataclass
class Group:
    """Runs stepped by one torch optimizer and scheduler: one run, or the rows of runs whose settings agree."""

    optimizer: torch.optim.Optimizer
    scheduler: object
    interval: str
    warmup_steps: int
    views: list  # (tensor the optimizer steps, stacked leaf, rows): its gradient is that leaf's gradient rows


@dataclass
class Setup:
    """One run built and checked from its config, trained nothing: what `optbench train --dry-run` reports."""

    device: torch.device
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    interval: str
    forward: object  # what a training step calls: the model, or torch.compile of it (trainer.compile)
    batch_size: int
    steps_per_epoch: int
    total_steps: int


def prepare(cfg: DictConfig) -> Setup:
    """Validate the config and build data, model, optimizer and schedule on the device, as a run does."""
    check(cfg)
    device = select_device(cfg.device)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    lengths = run_lengths(cfg, len(split["train"][0]))
    model = build_model(cfg, device)
    forward = torch.compile(model, mode=cfg.trainer.compile) if cfg.trainer.compile else model
    group = build_training(cfg, model.parameters(), lengths, model)
    return Setup(device, model, group.optimizer, group.interval, forward, *lengths[:3])


def fit(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Train one model as `cfg` says, writing config, metrics and summary into `run_dir`; a pass of one."""
    return fit_pass([cfg], [run_dir], [choices])[0]


def fit_pass(cfgs: list[DictConfig], run_dirs: list, choices: list | None = None, job: str | None = None) -> list[dict]:
    """Train the runs of `cfgs` (one `vectorized.group_key`) in one loop, each into its run dir; their summaries.

    Each run directory is held by this process while it trains (rundir.hold;
    `job` names the executor's job or worker). An unfinished run of the same
    config in its directory (killed, interrupted) continues from its last
    checkpoint when trainer.resume is on; anything else there is replaced.
    Status: completed, diverged (non-finite loss or gradient), interrupted
    (SIGINT/SIGTERM) or failed (an exception, re-raised). A single run's bad
    setting, damaged file or live holder raises UserError; in a pass that run
    fails (or, held elsewhere, is left alone) and the others go on.
    """
    if len({vectorized.group_key(c) for c in cfgs}) != 1:
        raise ValueError("fit_pass: the configs differ in more than seed/optimizer/schedule/init")
    started = time.perf_counter()
    outcome = {}  # run dir -> the summary of a run that could not be opened
    with contextlib.ExitStack() as held:
        runs = []
        for cfg, run_dir, chosen in zip(cfgs, map(Path, run_dirs), choices or [None] * len(cfgs)):
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(rundir.hold(run_dir, job))
                runs.append(_open_run(cfg, run_dir, chosen, len(cfgs)))
            except UserError as e:
                if len(cfgs) == 1:
                    raise
                outcome[run_dir] = unopened(run_dir, e)
        by_step = {}  # the runs that continue from a checkpoint at the same step train together; fresh ones too
        for r in runs:
            by_step.setdefault(r.resume["step"] if r.resume else None, []).append(r)
        try:
            reasons = {vectorized.why_not(c) for c in cfgs} - {None} if len(cfgs) > 1 else set()
            if reasons:  # each run's summary says failed, and why
                raise UserError(f"these runs cannot share a pass: {'; '.join(sorted(reasons))}")
            for part in by_step.values():
                _fit(part[0].cfg, part, started)
        except BaseException as e:
            for r in runs:
                if r.status == "running":
                    _close(r, "failed", f"{type(e).__name__}: {e}", started)
            raise
    opened = {r.dir: r.summary for r in runs}
    return [opened.get(Path(d)) or outcome[Path(d)] for d in run_dirs]


def unopened(run_dir: Path, error: BaseException) -> dict:
    """The outcome of a run that `error` kept from training: held by another live process (left alone,
    "skipped"), or failed: marked so where its summary can still be read and written, unless the trainer
    already ended it. Never "interrupted" or "running" from an earlier attempt: that would read as a stop."""
    log.error("%s: %s", run_dir.name, error)
    if isinstance(error, rundir.Held) or rundir.held_elsewhere(run_dir) is not None:
        return {"status": "skipped", "reason": str(error)}
    summary = {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    with contextlib.suppress(UserError, OSError):
        rundir.log_line(run_dir, f"run failed: {summary['reason']}")
        found = rundir.read_summary(run_dir) or {}
        if found.get("status") in ("failed", *rundir.FINISHED):
            return found
        summary = {**found, **summary, "finished_at": _now()}
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
    return summary


def _open_run(cfg: DictConfig, run_dir: Path, choices: dict | None, n_runs: int) -> Run:
    resume, started_over = resumable(cfg, run_dir)
    if resume is None:
        clear_run_files(run_dir)
    rundir.write_config(run_dir, cfg)
    if n_runs == 1:
        run_log = log  # a run of its own logs where its caller's logging goes (Hydra: the console and train.log)
    else:
        run_log = logging.getLogger(f"optbench.run.{run_dir.resolve()}")
        run_log.propagate = False  # each run's lines go to its own train.log, not to the others'
        run_log.handlers.clear()
        run_log.addHandler(rundir.log_handler(run_dir))
        run_log.setLevel(logging.INFO)
    if started_over:
        run_log.info("starting over: %s", started_over)
        if n_runs > 1:
            log.info("%s starts over: %s", run_dir.name, started_over)
    summary = {**(resume["summary"] if resume else {}), "status": "running",
               "choices": optimizers.named_choices(cfg, choices),  # optimizer=custom: named by its class
               "started_at": _now(), **rundir.provenance()}
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    return Run(cfg, run_dir, summary, run_log, resume)


def _close(r: Run, status: str, reason: str | None, started: float) -> None:
    if r.writer is not None:
        r.writer.close()
    if r.histogram_file is not None:
        r.histogram_file.close()
    r.status = status
    r.summary.update(status=status, reason=reason, finished_at=_now())
    _update_summary(r.summary, r.history, time.perf_counter() - started)
    rundir.write_json(r.dir / rundir.SUMMARY, r.summary)
    line = rundir.run_line(r.dir.name, r.summary)
    if r.log is not log:  # a run of a pass: its own train.log gets the line too
        r.log.info(line)
        for handler in list(r.log.handlers):
            r.log.removeHandler(handler)
            handler.close()
    rundir.sweep_log.info(line)  # the console, a single run's train.log, and a sweep's sweep.log


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Module:
    """The run's MLP with its init, from its own seed: the same draws in a pass as alone."""
    torch.manual_seed(cfg.seed)
    model = build_mlp(**cfg.model).to(device)
    init_weights(model, cfg.init)
    return model


def build_training(cfg: DictConfig, params, lengths, model=None) -> "Group":
    """The run's optimizer over `params` (`model`'s, for parameter groups) and its schedule (no views yet)."""
    _, steps_per_epoch, total_steps, _ = lengths
    optimizer = build_optimizer(cfg.optimizer, params, model)
    return Group(optimizer, *build_scheduler(cfg.schedule, optimizer, total_steps, steps_per_epoch), views=[])


def _build_runs(runs: list[Run], device: torch.device, lengths) -> list[Run]:
    """Each run's model, optimizer and schedule as it would be built alone; the runs whose settings are valid.

    A run alone raises its UserError; in a pass that run fails and the others go on.
    """
    built = []
    for r in runs:
        try:
            check(r.cfg)
            r.model = build_model(r.cfg, device)
            # the start point, for distance-from-init and landscapes (the same weights again on a resume: same seed)
            rundir.save_tensors(r.model.state_dict(), r.dir / rundir.INIT)
            r.initial = [diagnostics.flat_layer(layer).clone() for _, layer in linear_layers(r.model)]
            r.generator = torch.Generator(device=device).manual_seed(r.cfg.seed)
            set_dropout_generator(r.model, r.generator)
            r.group = build_training(r.cfg, r.model.parameters(), lengths, r.model)
            built.append(r)
        except UserError as e:
            if len(runs) == 1:
                raise
            r.log.error("run failed: %s", e)
            log.error("%s: run failed: %s", r.dir.name, e)
            _close(r, "failed", f"UserError: {e}", time.perf_counter())
    return built


def _share_optimizers(runs: list[Run], leaves: list, lengths) -> list["Group"]:
    """The pass's optimizers: runs with the same row-wise optimizer and schedule (contiguous rows) share one.

    Elementwise optimizers (vectorized.ROW_WISE) do the same arithmetic on a
    [k, ...] stack of rows as on each row alone, so a seed sweep costs one
    optimizer call per step, not one per run. Every other run keeps its own,
    whose parameters are its model's (views of its row).
    """
    groups, start = [], 0
    for members in vectorized.optimizer_groups([r.cfg for r in runs]):
        rows = slice(start, start + len(members))
        start += len(members)
        if len(runs) == 1:
            groups.append(runs[0].group)  # K = 1: the model's own parameters are the leaves
        elif len(members) == 1:
            r = runs[rows.start]
            r.group.views = [(p, leaf, rows.start) for p, leaf in zip(r.model.parameters(), leaves)]
            groups.append(r.group)
        else:
            params = [torch.nn.Parameter(leaf.data[rows]) for leaf in leaves]
            group = build_training(runs[rows.start].cfg, params, lengths)
            group.views = [(p, leaf, rows) for p, leaf in zip(params, leaves)]
            for j, r in enumerate(runs[rows]):
                r.group, r.row = group, j
            groups.append(group)
    return groups


def _run_state(r: Run) -> tuple[dict, dict]:
    """This run's optimizer and scheduler state, as its own optimizer would hold them (a row of a shared one)."""
    g = r.group
    state = g.optimizer.state_dict()
    if r.row is not None:
        state = vectorized.row_state(state, r.row)
    return state, g.scheduler.state_dict()


def _load_states(groups: list[Group], runs: list[Run]) -> None:
    for g in groups:
        members = [r for r in runs if r.group is g]
        states = [r.resume["optimizer"] for r in members]
        g.optimizer.load_state_dict(states[0] if len(members) == 1 else vectorized.stack_states(states))
        g.scheduler.load_state_dict(members[0].resume["scheduler"])


def _fit(cfg: DictConfig, runs: list[Run], started: float) -> None:
    device = select_device(cfg.device)
    check(cfg)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    train_x, train_y = split["train"]
    n_train = len(train_x)
    eval_sets = eval_splits(split, cfg.data.train_eval_size)
    lengths = batch_size, steps_per_epoch, total_steps, eval_every = run_lengths(cfg, n_train)
    t, diag = cfg.trainer, cfg.diagnostics
    loss_fn = instantiate(cfg.loss)
    runs = _build_runs(runs, device, lengths)
    if not runs:
        return
    # the runs that share an optimizer side by side: their rows of the stack are one slice
    runs = [runs[k] for members in vectorized.optimizer_groups([r.cfg for r in runs]) for k in members]
    K = len(runs)
    models = [r.model for r in runs]
    forward, leaves = vectorized.forward_of(models)
    if t.compile:
        forward = torch.compile(forward, mode=t.compile)
    groups = _share_optimizers(runs, leaves, lengths)
    grad_index = vectorized.grad_index(models[0], device)  # per-layer and per-parameter gradient norms
    per_layer = diag.level != "off"
    step_names = ["loss", "grad_norm"] + (grad_index.names if per_layer else [])
    l1_leaves = [leaves[i] for i in grad_index.linear_weights]
    probe_x = normalise(split["val"][0][: diag.probe_size], split["mean"], split["std"])
    probe_y = split["val"][1][: diag.probe_size]
    histogram_steps = diagnostics.histogram_schedule(diag.histogram_at, total_steps)
    counters = torch.zeros(K, 2, dtype=torch.int64, device=device)  # per run: clipped steps, skipped non-finite steps
    step, epoch, resumed_train_time = 0, 0, [0.0] * K
    resumed_order = None  # each run's data order of the epoch its checkpoint was taken in, when mid-epoch

    if runs[0].resume:
        _load_states(groups, runs)
        for k, r in enumerate(runs):
            state = r.resume
            r.model.load_state_dict(state["model"])
            r.generator.set_state(state["rng"]["generator"])
            step, epoch, resumed_train_time[k] = state["step"], state["epoch"], state["train_time"]
            r.history, r.flags = state["history"], state["flags"]
            counters[k] = state["counters"]
            rundir.truncate(r.dir / rundir.METRICS, state["metrics_bytes"])
            rundir.truncate(r.dir / rundir.HISTOGRAMS, state["histogram_bytes"])
            r.log.info("resuming from the checkpoint at epoch %d, step %d", epoch, step)
            if K > 1:
                log.info("%s resumes from its checkpoint at step %d", r.dir.name, step)
        torch.set_rng_state(runs[0].resume["rng"]["torch"])
        if runs[0].resume.get("order") is not None:
            resumed_order = torch.stack([r.resume["order"] for r in runs]).to(device)
        histogram_steps = [h for h in histogram_steps if h > step]
    for k, r in enumerate(runs):
        r.summary.update(
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            optimizer_impl=optimizer_impl(r.group.optimizer),
            n_params=sum(p.numel() for p in r.model.parameters()),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            torch_threads=torch.get_num_threads(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            amp="bf16 autocast (training steps)" if t.amp else None,
            compile=t.compile,
            diagnostics=diag.level,
            flags=r.flags,
        )
        if K > 1:
            # train_time and seconds_per_epoch are this run's share: the pass's training time / K
            r.summary["vectorized"] = {"models": K, "index": k, "optimizer_calls": len(groups)}
        r.writer = rundir.MetricsWriter(r.dir, t.tensorboard, resumed_at=step if r.resume else None)
        r.histogram_file = open(r.dir / rundir.HISTOGRAMS, "a", newline="")
        if r.histogram_file.tell() == 0:
            csv.writer(r.histogram_file).writerow(diagnostics.HISTOGRAM_COLUMNS)
        r.log.info("%s | %d parameters | %s (%s) | %d steps of batch %d%s", device, r.summary["n_params"],
                   type(r.group.optimizer).__name__, r.summary["optimizer_impl"], total_steps, batch_size,
                   f" | in a pass of {K} runs" if K > 1 else "")
    if K > 1:
        log.info("vectorized pass of %d runs on %s: %d steps of batch %d, %d optimizer call(s) per step",
                 K, device, total_steps, batch_size, len(groups))
    alive = list(range(K))
    pending = []  # (step, epoch, [lr per run], [len(step_names), K] tensor) not yet read back
    lrs = [0.0] * K

    def flush_steps() -> None:
        """Write the buffered step metrics (one host read); a run with a non-finite value has diverged."""
        nonlocal last_loss
        if not pending:
            return
        values = torch.stack([v for *_, v in pending]).tolist()  # [steps, metrics, K]
        for k in list(alive):
            r, rows, first_bad = runs[k], [], None
            for (st, ep, step_lrs, _), vals in zip(pending, values):
                mine = [v[k] for v in vals]
                rows.append((st, ep, "step", "lr", step_lrs[k]))
                rows.extend((st, ep, "step", name, v) for name, v in zip(step_names, mine))
                if first_bad is None and not all(math.isfinite(v) for v in mine):
                    first_bad = st
                diagnostics.update_flags(r.flags, st, dict(zip(step_names, mine)), diag.thresholds)
            r.writer.write_rows(rows)
            r.last_values = dict(zip(step_names, mine))
            if first_bad is not None:
                r.summary["diverged_at_step"] = first_bad
                end(k, "diverged", f"non-finite loss or gradient at step {first_bad}")
        pending.clear()
        last_loss = f"{min(values[-1][0]):.4f}" + (" (lowest of the pass)" if K > 1 else "")
        bar.set_postfix(loss=last_loss, refresh=False)

    def record_counters(k: int, counts: list) -> None:
        if t.clip_grad_norm or t.clip_grad_value:
            runs[k].summary["clipped_steps"] = counts[0]
        runs[k].summary.update(nonfinite_steps_skipped=counts[1], step=step, epoch=epoch)

    def end(k: int, status: str, reason: str | None, stopped_early: bool = False) -> None:
        r = runs[k]
        if status == "diverged" and K > 1:
            r.log.warning("run diverged: %s", reason)  # its train.log; the console gets _close's line
        r.summary["stopped_early"] = stopped_early
        record_counters(k, counters[k].tolist())
        alive.remove(k)
        _close(r, status, reason, started)

    def fail_group(g: Group, e: Exception) -> None:
        groups.remove(g)
        for k in [k for k in alive if runs[k].group is g]:
            runs[k].log.error("run failed", exc_info=True)  # the traceback in its own train.log
            end(k, "failed", f"{type(e).__name__}: {e}")

    def train_time(k: int) -> float:
        # a pass computes all K models at every step: each run's share of its time compares with a run alone
        return resumed_train_time[k] + (time.perf_counter() - train_started - eval_time) / K

    def run_eval(decide: bool = True) -> None:
        """Evaluate every run; with `decide`, also step eval-interval schedules and check early stopping."""
        nonlocal eval_time
        if not alive:  # every run diverged at the read-back just before
            return
        sync(device)
        times = {k: train_time(k) for k in alive}
        t0 = time.perf_counter()
        to_eval_point()
        out = torch.stack([torch.stack([evaluate(runs[k].model, loss_fn, *xy, split["mean"], split["std"])
                                        for xy in eval_sets.values()]) for k in alive]).tolist()
        counts = counters.tolist()
        histograms_now = per_layer and diagnostics.histograms_due(diag.level, histogram_steps, step)
        for k, ((tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc)) in zip(list(alive), out):
            r = runs[k]
            r.history.append(dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                                  val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=times[k]))
            for name, loss, acc in (("train", tr_loss, tr_acc), ("val", va_loss, va_acc), ("test", te_loss, te_acc)):
                r.writer.write(step, epoch, name, {"loss": loss, "acc": acc})
            r.writer.write(step, epoch, "run", {"train_time": times[k]})
            if per_layer:
                numbers, layers_seen = diagnostics.at_evaluation(r.model, loss_fn, probe_x, probe_y,
                                                                 cfg.model.activation, diag.saturation, step,
                                                                 r.previous, r.initial)
                r.writer.write(step, epoch, "diag", numbers)
                diagnostics.update_flags(r.flags, step, {**r.last_values, **numbers}, diag.thresholds)
                if histograms_now:
                    csv.writer(r.histogram_file).writerows(
                        diagnostics.histogram_rows(step, epoch, layers_seen, diag.histogram_bins))
                    r.histogram_file.flush()
            r.writer.flush()
            if K > 1:
                r.summary["vectorized"]["pass_train_time"] = round(times[k] * K, 3)
            r.log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                       epoch, step, tr_loss, va_loss, va_acc, te_acc, times[k])
            record_counters(k, counts[k])
            _update_summary(r.summary, r.history, time.perf_counter() - started)
            rundir.write_json(r.dir / rundir.SUMMARY, r.summary)
            if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
                r.summary.setdefault("diverged_at_step", step)
                end(k, "diverged", f"non-finite loss or gradient at step {r.summary['diverged_at_step']}")
                continue
            if not decide:
                continue
            if r.group.interval == "eval" and step > 0:
                r.group.scheduler.step(va_loss)  # the group of a run stepped on its own validation loss is its own
            if t.patience and evaluations_without_improvement([h["val_loss"] for h in r.history],
                                                              t.min_delta) >= t.patience:
                r.log.info("stopped early at epoch %d step %d", epoch, step)
                end(k, "completed", f"early stopping: validation loss did not improve by > {t.min_delta} "
                                    f"in {t.patience} evaluations", stopped_early=True)
        optimizers.set_mode([g.optimizer for g in groups], "train")
        eval_time += time.perf_counter() - t0

    def to_eval_point() -> None:
        """Optimizers with train()/eval() (schedule-free) move the weights to the point they evaluate at;
        batch norm's running statistics are then re-estimated there (on the train-evaluation images)."""
        for g in groups:
            if optimizers.set_mode([g.optimizer], "eval"):
                x_bn = eval_sets["train"][0]
                for k in alive:
                    if runs[k].group is g and optimizers.has_batchnorm(runs[k].model):
                        optimizers.recompute_batchnorm(runs[k].model, (
                            normalise(x_bn[i : i + batch_size], split["mean"], split["std"])
                            for i in range(0, len(x_bn), batch_size)))

    def checkpoint(order: torch.Tensor, epoch_step: int) -> None:
        """Each run's checkpoint after `epoch_step` steps of this epoch (its data order kept when mid-epoch)."""
        flush_steps()
        optimizers.set_mode([g.optimizer for g in groups], "eval")  # schedule-free: save the evaluated weights
        for k in alive:
            r = runs[k]
            r.writer.flush()
            r.histogram_file.flush()
            if K > 1:  # the stacked batch norm does not count batches: record what the run alone would have
                for bn in r.model.modules():
                    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                        bn.num_batches_tracked.fill_(step)
            optimizer_state, scheduler_state = _run_state(r)
            rundir.save_tensors({
                "model": {name: v.clone() for name, v in r.model.state_dict().items()},  # not the whole stack
                "optimizer": optimizer_state, "scheduler": scheduler_state, "step": step, "epoch": epoch,
                "rng": {"torch": torch.get_rng_state(), "generator": r.generator.get_state()},
                "epoch_step": epoch_step, "order": order[k].cpu() if epoch_step < steps_per_epoch else None,
                "train_time": train_time(k), "history": r.history, "flags": r.flags, "counters": counters[k].cpu(),
                "metrics_bytes": r.writer.tell(), "histogram_bytes": r.histogram_file.tell(),
                "summary": {key: r.summary.get(key) for key in ("clipped_steps", "nonfinite_steps_skipped")},
            }, r.dir / rundir.CHECKPOINT)
        optimizers.set_mode([g.optimizer for g in groups], "train")

    def forward_backward():
        """Every run's loss and gradient at the current weights: [K] losses, [n_params, K] gradient norms.

        The gradients are guarded (a non-finite one is zeroed, never applied)
        and clipped; the norms are those before clipping, what the loss
        surface gave. L-BFGS calls this again inside its line search.
        """
        for p in leaves:
            p.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
            losses = vectorized.losses(loss_fn, forward, x, y)
        objective = (losses + t.l1 * vectorized.l1_norms(l1_leaves, K) if t.l1 else losses).sum()
        objective.backward()  # d(sum)/d(loss_k) = 1: each run gets its own gradient
        grads = [p.grad for p in leaves]
        norms = vectorized.norms(grads, K)
        guard_and_clip(grads, norms, t.clip_grad_norm, t.clip_grad_value, counters)
        for g in groups:
            for param, leaf, rows in g.views:
                param.grad = leaf.grad[rows]
        return objective, losses.detach(), norms

    def progress() -> None:
        """Where the runs are, for a log without a terminal (a job's output file) in place of the bar."""
        rate = (step - first_step) / (time.perf_counter() - stepping_since)  # evaluations included: for the ETA
        left = f" | ~{(total_steps - step) / rate:.0f} s left" if rate else ""
        log.info("%sstep %d/%d (%.0f%%) | epoch %d/%d | loss %s | %.1f steps/s%s", label and f"{label}: ", step,
                 total_steps, 100 * step / max(total_steps, 1), epoch, n_epochs, last_loss, rate, left)

    eval_time = 0.0
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    # a pass's bar says how many runs it trains and what differs between them
    label = f"pass of {K} ({', '.join(rundir.differing_keys([r.cfg for r in runs])) or 'same config'})" if K > 1 else ""
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, disable=None, leave=False)
    first_step, last_loss = step, "n/a"
    train_started = time.perf_counter()
    status, reason = "completed", None
    try:
        with _stop_on_signals() as stop, logging_redirect_tqdm():  # log lines print above the bar, not onto it
            optimizers.set_mode([g.optimizer for g in groups], "train")  # schedule-free steps only in train mode
            if not runs[0].resume:
                run_eval()
            stepping_since = time.perf_counter()
            next_progress = stepping_since + t.progress_every
            while alive and step < total_steps and stop.signal is None:
                if resumed_order is None:  # a new epoch: each run's order drawn from its own generator
                    epoch += 1
                    order, first = torch.stack([torch.randperm(n_train, device=device, generator=r.generator)
                                                for r in runs]), 0
                else:  # the epoch a checkpoint was taken in, from the step after it
                    order, first, resumed_order = resumed_order, runs[0].resume["epoch_step"], None
                bar.set_description(f"{label + ' | ' if label else ''}epoch {epoch}/{n_epochs}")
                for i in range(first, steps_per_epoch):
                    idx = order[:, i * batch_size : (i + 1) * batch_size]
                    x_uint8 = train_x[idx]
                    if cfg.data.augment_shift:
                        x_uint8 = random_shift(x_uint8, cfg.data.augment_shift, [r.generator for r in runs])
                    x, y = normalise(x_uint8, split["mean"], split["std"]), train_y[idx]
                    evaluates_next = (step + 1) % eval_every == 0 or step + 1 == total_steps
                    if per_layer and evaluates_next:
                        for k in alive:  # the point one step back, for the update sizes at the evaluation
                            runs[k].previous = (step, [diagnostics.flat_layer(layer).clone()
                                                       for _, layer in linear_layers(runs[k].model)])
                    # warmup multiplies the rate the schedule set, for this step only
                    scheduled = [[pg["lr"] for pg in g.optimizer.param_groups] for g in groups]
                    for g in groups:
                        for pg in g.optimizer.param_groups:
                            pg["lr"] *= warmup_factor(step, g.warmup_steps)
                    for k, r in enumerate(runs):
                        lrs[k] = r.group.optimizer.param_groups[0]["lr"]
                    if vectorized.needs_closure(cfg):  # L-BFGS, one run: its line search evaluates again
                        evaluations = []

                        def closure():
                            evaluations.append(forward_backward())
                            return evaluations[-1][0]

                        groups[0].optimizer.step(closure)
                        _, losses, norms = evaluations[0]  # at the weights the step started from
                    else:
                        _, losses, norms = forward_backward()
                        for g in list(groups):
                            try:
                                g.optimizer.step()
                            except Exception as e:  # a user's optimizer that raises fails its runs, not the pass
                                if K == 1:
                                    raise
                                fail_group(g, e)
                    for g, g_lrs in zip(groups, scheduled):
                        for pg, lr in zip(g.optimizer.param_groups, g_lrs):
                            pg["lr"] = lr
                        if g.interval == "step":
                            g.scheduler.step()
                    step += 1
                    bar.update()
                    if bar.disable and time.perf_counter() >= next_progress:
                        progress()
                        next_progress = time.perf_counter() + t.progress_every
                    if step % t.log_every == 0 or step == total_steps:
                        pending.append((step, epoch, list(lrs), grad_index.step_values(losses, norms, per_layer)))
                    if len(pending) >= SYNC_EVERY:
                        flush_steps()
                    if evaluates_next:
                        flush_steps()
                        run_eval()
                    if i == steps_per_epoch - 1:
                        for g in groups:
                            if g.interval == "epoch":
                                g.scheduler.step()
                    end_of_epoch = i == steps_per_epoch - 1 or step == total_steps
                    if t.checkpoint_every and (stop.signal is not None or
                                               end_of_epoch and epoch % t.checkpoint_every == 0):
                        checkpoint(order, i + 1)  # on a stop too: resumed, the run goes on as if never stopped
                    if stop.signal is not None and not evaluates_next:
                        flush_steps()
                        run_eval(decide=False)  # where the interrupted run got to (a resume cuts these rows)
                    if not alive or step >= total_steps or stop.signal is not None:
                        break
            if stop.signal is not None:
                status, reason = "interrupted", f"{signal.Signals(stop.signal).name} received at step {step}"
            flush_steps()
    except KeyboardInterrupt:
        status, reason = "interrupted", f"KeyboardInterrupt at step {step}"
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        for k in list(alive):
            end(k, status, reason)


def guard_and_clip(grads: list, norms: torch.Tensor, clip_norm, clip_value, counters: torch.Tensor) -> None:
    """Per run: zero its gradients when any is NaN/inf, so none is ever applied; then clip by norm and/or value.

    `norms` [n_tensors, K] are the per-tensor gradient norms before clipping,
    K runs along dim 0 of each stacked gradient (K = 1: a plain gradient).
    counters[k, 0] counts the steps clipping changed, counters[k, 1] the
    steps zeroed; both stay on the device (no host sync). Clipping by norm
    is torch's clip_grads_with_norm_ formula (max_norm / (norm + 1e-6),
    at most 1), one factor per run.
    """
    total = norms.norm(dim=0)  # [K]
    bad = ~torch.isfinite(total)
    per_row = [(-1,) + (1,) * (g.dim() - 1) for g in grads]  # a [K] vector against each gradient's rows
    for g, shape in zip(grads, per_row):
        g.masked_fill_(bad.view(shape), 0.0)
    counters[:, 1] += bad
    hit = []
    if clip_norm:
        hit.append((total > clip_norm) & ~bad)  # a zeroed gradient was not clipped
        factor = (clip_norm / (total.nan_to_num(0.0) + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [factor.view(shape) for shape in per_row])
    if clip_value:
        hit.append(vectorized.norms(grads, len(total), math.inf).amax(0) > clip_value)
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    if hit:
        counters[:, 0] += torch.stack(hit).any(0)


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


def sync(device: torch.device) -> None:
    """Wait for queued work, so a time read afterwards includes it (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def resumable(cfg: DictConfig, run_dir: Path) -> tuple[dict | None, str | None]:
    """(the checkpoint to continue from: an unfinished run of this same config in run_dir, or None;
    why an earlier attempt found there is not continued, or None when there was none).

    A damaged summary, config or checkpoint there is a DamagedFile naming it, unless trainer.resume=false asks
    to start again: nothing the user might still want is replaced without being asked."""
    try:
        summary = rundir.read_summary(run_dir)
        if summary is None:
            return None, None
        status = summary.get("status")
        if status in rundir.FINISHED:
            return None, f"the earlier run there {status} (trainer.skip_completed=false, or its config changed)"
        if not cfg.trainer.resume:
            return None, f"trainer.resume=false (the earlier run there is {status})"
        changed = rundir.config_differences(run_dir, cfg)
        if changed:
            return None, f"the earlier, unfinished ({status}) run there had another config ({', '.join(changed[:5])})"
        if not (run_dir / rundir.CHECKPOINT).exists():
            return None, f"the earlier, unfinished ({status}) run there left no checkpoint"
        return rundir.read_tensors(run_dir / rundir.CHECKPOINT, START_AGAIN), None
    except rundir.DamagedFile as e:
        if not cfg.trainer.resume:
            return None, f"trainer.resume=false ({e.path.name} was damaged)"
        raise rundir.DamagedFile(e.path, e.what, START_AGAIN) from None


def clear_run_files(run_dir: Path) -> None:
    """Remove what an earlier, unfinished attempt left in run_dir, so a fresh start never appends to it."""
    for stale in (rundir.METRICS, rundir.HISTOGRAMS, rundir.CHECKPOINT):
        (run_dir / stale).unlink(missing_ok=True)


def _update_summary(summary: dict, history: list, wall_time: float) -> None:
    summary["wall_time"] = round(wall_time, 3)
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
