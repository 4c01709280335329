"""What torch.optim.lr_scheduler lacks: the lectures' inverse-time decay and a warmup that composes with any schedule."""

from torch.optim.lr_scheduler import LambdaLR


class InverseTime:
    """eta_k / eta = 1 / (1 + decay * k): lecture 004's "cooling". A class, not a lambda, so it pickles into checkpoints."""

    def __init__(self, decay: float):
        if decay < 0:
            raise ValueError(f"schedule.decay={decay} must be >= 0")
        self.decay = decay

    def __call__(self, k: int) -> float:
        return 1.0 / (1.0 + self.decay * k)


def inverse_time(optimizer, decay: float, last_epoch: int = -1) -> LambdaLR:
    return LambdaLR(optimizer, InverseTime(decay), last_epoch=last_epoch)


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Multiplier on the scheduled rate at optimisation step `step` (0-based): linear from 1/warmup_steps to 1.

    A multiplier, not a SequentialLR stage: it composes with every schedule,
    whether that steps per optimisation step, per epoch or on a plateau of the
    validation loss, and the schedule runs on undisturbed underneath it.
    """
    if step >= warmup_steps:
        return 1.0
    return (step + 1) / warmup_steps
