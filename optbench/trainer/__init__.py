"""Training: `fit` one run, `fit_pass` K runs in one loop, `prepare` one run without training it.

The rooms: `setup` (the rules a config must satisfy, the run's `Lengths`, its
model, optimizer and schedule), `batches` (splits on the device,
normalisation, shifts, evaluation), `runs` (a run's files: open, resume,
close), `checkpoints` (what a run's checkpoint holds, saved and restored),
`loop` (fit, fit_pass, signals) and `training_pass` (the `Pass`: the state
K runs share while they train; its step, evaluation, read-back, checkpoint).
"""

from optbench.schedules import build_scheduler
from optbench.trainer.batches import (
    EVAL_CHUNK,
    eval_splits,
    evaluate,
    make_splits,
    normalise,
    random_shift,
    sync,
    train_size,
)
from optbench.trainer.loop import fit, fit_pass
from optbench.trainer.runs import finished_run, resumable, unopened
from optbench.trainer.setup import (
    Lengths,
    Setup,
    build_model,
    build_optimizer,
    check_setup,
    prepare,
    run_lengths,
    select_device,
)
from optbench.trainer.training_pass import SYNC_EVERY, Pass, evaluations_without_improvement
from optbench.vectorized import guard_and_clip

__all__ = [
    "EVAL_CHUNK", "SYNC_EVERY", "Lengths", "Pass", "Setup", "build_model", "build_optimizer", "build_scheduler",
    "check_setup", "eval_splits", "evaluate", "evaluations_without_improvement", "finished_run", "fit", "fit_pass",
    "guard_and_clip", "make_splits", "normalise", "prepare", "random_shift", "resumable", "run_lengths",
    "select_device", "sync", "train_size", "unopened",
]
