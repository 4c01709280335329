"""Every schedule and the warm-up, from one place: the schedule group built into a torch scheduler
(`build_scheduler`), what torch.optim.lr_scheduler lacks (the lectures' inverse-time decay, the Crowded Valley's
trapezoidal schedule), and a warmup that composes with any schedule (`warmup`)."""

import math
from contextlib import contextmanager
from typing import Any, cast

from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from optbench.errors import UserError

# schedule lengths that, left null in the YAML, become the run's number of scheduler steps
SCHEDULE_LENGTHS = ("T_max", "total_iters", "total_steps")


def build_scheduler(schedule_cfg, optimizer, total_steps: int, steps_per_epoch: int) -> tuple[LRScheduler, str, int]:
    """(torch scheduler, interval, warmup_steps) from the schedule group.

    `interval` (step | epoch | eval) and `warmup_steps` are for the trainer; the
    rest are the scheduler's constructor arguments. A length left null
    (T_max, total_iters, total_steps) becomes the run's number of scheduler
    steps: optimisation steps, or epochs for interval=epoch.
    """
    args = cast(dict[str, Any], OmegaConf.to_container(schedule_cfg, resolve=True))
    interval, warmup_steps = args.pop("interval"), args.pop("warmup_steps")
    length = total_steps if interval == "step" else math.ceil(total_steps / steps_per_epoch)
    for key in SCHEDULE_LENGTHS:
        if key in args and args[key] is None:
            args[key] = max(length, 1)
    try:
        return instantiate(args)(optimizer), interval, warmup_steps
    except (TypeError, ValueError) as e:
        raise UserError(f"schedule: {e}") from None


class InverseTime:
    """eta_k / eta = 1 / (1 + decay * k): lecture 004's "cooling".

    A class, not a lambda, so it pickles into checkpoints.
    """

    def __init__(self, decay: float):
        if decay < 0:
            raise ValueError(f"schedule.decay={decay} must be >= 0")
        self.decay = decay

    def __call__(self, k: int) -> float:
        return 1.0 / (1.0 + self.decay * k)


def inverse_time(optimizer, decay: float, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, InverseTime(decay), last_epoch=last_epoch)


class Trapezoidal:
    """eta_k / eta: up linearly over the first `warmup` fraction of the run, flat, down linearly over the last `decay`.

    The "trapezoidal" schedule of Schmidt et al. (2021), Descending through a
    Crowded Valley. The ramps never reach 0 inside the run: step 0 takes
    1/warmup_steps of the rate and the last step 1/decay_steps, so no step is wasted.
    """

    def __init__(self, total_steps: int, warmup: float, decay: float):
        if not (0 <= warmup <= 1 and 0 <= decay <= 1 and warmup + decay <= 1):
            raise ValueError(f"schedule.warmup={warmup} and schedule.decay={decay} must be fractions in [0, 1] "
                             "adding up to at most 1")
        self.total = total_steps
        self.up = max(round(warmup * total_steps), 1) if warmup else 0
        self.down = max(round(decay * total_steps), 1) if decay else 0

    def __call__(self, k: int) -> float:
        factor = 1.0
        if self.up:
            factor = min(factor, (k + 1) / self.up)
        if self.down:
            factor = min(factor, max(self.total - k, 0) / self.down)
        return factor


def trapezoidal(optimizer, total_steps: int, warmup: float = 0.1, decay: float = 0.2, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, Trapezoidal(total_steps, warmup, decay), last_epoch=last_epoch)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier on the scheduled rate at optimisation step `step` (0-based): linear from 1/warmup_steps to 1.

    A multiplier, not a SequentialLR stage: it composes with every schedule,
    whether that steps per optimisation step, per epoch or on a plateau of the
    validation loss, and the schedule runs on undisturbed underneath it.
    """
    return 1.0 if step >= warmup_steps else (step + 1) / warmup_steps


@contextmanager
def warmup(steppers, step: int):
    """Each stepper's scheduled rates multiplied by warmup_factor(step, stepper.warmup_steps) for the optimisation
    step taken inside, and set back after it: the schedule never sees the warmed-up rate."""
    scheduled = [(param_group, param_group["lr"])
                 for stepper in steppers for param_group in stepper.optimizer.param_groups]
    for stepper in steppers:
        factor = warmup_factor(step, stepper.warmup_steps)
        for param_group in stepper.optimizer.param_groups:
            param_group["lr"] *= factor
    try:
        yield
    finally:
        for param_group, lr in scheduled:
            param_group["lr"] = lr
