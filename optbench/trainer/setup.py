"""What a run is built from and checked against before its first step: device, lengths, model, optimizer, schedule.

compose.check_config holds the rules a config must satisfy before any data is
read; the rules that need the training split's size (the batch size against it)
are in `run_lengths`. `prepare` builds one run as `optbench train --dry-run` shows it.
"""

import functools
import logging
import math
import time
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from optbench import compose, data, diagnostics, optimizers, vectorized
from optbench.errors import UserError
from optbench.models import build_mlp, init_weights, linear_layers, set_dropout_generator
from optbench.results import rundir
from optbench.schedules import build_scheduler
from optbench.trainer.batches import make_splits, train_size
from optbench.trainer.runs import Run, close

log = logging.getLogger("optbench.trainer")


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
    try:  # plain lists: torch indexes betas itself
        factory = instantiate(optimizers.constructor_args(optimizer_cfg), _convert_="all")
    except InstantiationException as e:
        raise optimizers.missing_target(str(target), e.__cause__ or e, optimizers.traits(optimizer_cfg)) from None
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


def optimizer_impl(optimizer) -> str:
    return next((impl for impl in ("fused", "foreach") if optimizer.defaults.get(impl)), "default")


@dataclass(frozen=True)
class Lengths:
    """How a run on its training split is cut into steps."""

    batch_size: int
    steps_per_epoch: int
    total_steps: int
    eval_every: int  # steps between evaluations


def run_lengths(cfg: DictConfig, n_train: int) -> Lengths:
    """The lengths of a run on n_train images, checked against that size."""
    settings, asked = cfg.trainer, cfg.trainer.batch_size
    if asked is not None and not 1 <= asked <= n_train:
        raise UserError(f"trainer.batch_size={asked} must be between 1 and the training split's {n_train} "
                        "(or null for all of it)")
    batch_size = asked or n_train  # null: the whole split (full-batch gradient descent)
    if cfg.model.batchnorm != "none" and (batch_size < 2 or n_train % batch_size == 1):
        # batch norm's statistics of one image are undefined: torch refuses such a batch mid-run
        raise UserError(f"model.batchnorm={cfg.model.batchnorm} needs every training batch to hold >= 2 images: "
                        f"trainer.batch_size={asked} leaves a batch of 1 of the {n_train} training images")
    steps_per_epoch = math.ceil(n_train / batch_size)
    total_steps = settings.epochs * steps_per_epoch
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)
    return Lengths(batch_size, steps_per_epoch, total_steps, settings.eval_every or steps_per_epoch)


def check_setup(cfg: DictConfig, n_images: int) -> None:
    """Everything a run checks before its first step, without its data: the rules, the lengths, and the model,
    optimizer and schedule built on the CPU (torch's own checks, such as lr >= 0, happen there)."""
    lengths = run_lengths(cfg, train_size(n_images, cfg.data.val_size))
    model = build_model(cfg, torch.device("cpu"))
    build_stepper(cfg, model.parameters(), lengths, model)


@dataclass
class Stepper:
    """One torch optimizer and its scheduler, and the runs they step: one run, or the rows of runs whose settings
    agree (a "group" elsewhere is a config group or a set of runs compared as one)."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
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
    """Build data, model, optimizer and schedule of a composed config on the device, as a run does."""
    device = select_device(cfg.device)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    lengths = run_lengths(cfg, len(split["train"][0]))
    model = build_model(cfg, device)
    forward = torch.compile(model, mode=cfg.trainer.compile) if cfg.trainer.compile else model
    stepper = build_stepper(cfg, model.parameters(), lengths, model)
    return Setup(device, model, stepper.optimizer, stepper.interval, forward, lengths.batch_size,
                 lengths.steps_per_epoch, lengths.total_steps)


def build_model(cfg: DictConfig, device: torch.device) -> torch.nn.Sequential:
    """The run's MLP with its init, from its own seed: the same draws in a pass as alone."""
    torch.manual_seed(cfg.seed)
    model = build_mlp(**cfg.model).to(device)
    init_weights(model, cfg.init)
    return model


def build_stepper(cfg: DictConfig, params, lengths: Lengths, model=None) -> "Stepper":
    """The run's optimizer over `params` (`model`'s, for parameter groups) and its schedule (no views yet)."""
    optimizer = build_optimizer(cfg.optimizer, params, model)
    return Stepper(optimizer, *build_scheduler(cfg.schedule, optimizer, lengths.total_steps, lengths.steps_per_epoch),
                 views=[])


def build_runs(runs: list[Run], device: torch.device, lengths: Lengths) -> list[Run]:
    """Each run's model, optimizer and schedule as it would be built alone; the runs whose settings are valid.

    A run alone raises its UserError; in a pass that run fails and the others go on.
    """
    built = []
    for run in runs:
        try:
            compose.check_config(run.cfg)  # a Hydra sweep's job or an API caller's config did not come through compose
            run.model = build_model(run.cfg, device)
            # the start point, for distance-from-init and landscapes (the same weights again on a resume: same seed)
            rundir.save_tensors(run.model.state_dict(), run.dir / rundir.INIT)
            run.initial = [diagnostics.flat_layer(layer).clone() for _, layer in linear_layers(run.model)]
            run.generator = torch.Generator(device=device).manual_seed(run.cfg.seed)
            set_dropout_generator(run.model, run.generator)
            run.stepper = build_stepper(run.cfg, run.model.parameters(), lengths, run.model)
            built.append(run)
        except UserError as e:
            if len(runs) == 1:
                raise
            run.log.error("run failed: %s", e)
            log.error("%s: run failed: %s", run.dir.name, e)
            close(run, "failed", f"UserError: {e}", time.perf_counter())
    return built


def share_optimizers(runs: list[Run], leaves: list, lengths: Lengths) -> list["Stepper"]:
    """The pass's optimizers: runs with the same row-wise optimizer and schedule (contiguous rows) share one.

    Elementwise optimizers (traits.row_wise) do the same arithmetic on a
    [k, ...] stack of rows as on each row alone, so a seed sweep costs one
    optimizer call per step, not one per run. Every other run keeps its own,
    whose parameters are its model's (views of its row).
    """
    steppers, start = [], 0
    for members in vectorized.shared_steppers([run.cfg for run in runs]):
        rows = slice(start, start + len(members))
        start += len(members)
        if len(runs) == 1:
            steppers.append(runs[0].stepper)  # K = 1: the model's own parameters are the leaves
        elif len(members) == 1:
            run = runs[rows.start]
            run.stepper.views = [(p, leaf, rows.start) for p, leaf in zip(run.model.parameters(), leaves)]
            steppers.append(run.stepper)
        else:
            params = [torch.nn.Parameter(leaf.data[rows]) for leaf in leaves]
            stepper = build_stepper(runs[rows.start].cfg, params, lengths)
            stepper.views = [(p, leaf, rows) for p, leaf in zip(params, leaves)]
            for j, run in enumerate(runs[rows]):
                run.stepper, run.row = stepper, j
            steppers.append(stepper)
    return steppers
