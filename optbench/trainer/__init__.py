"""Training: `fit` one run, `fit_pass` K runs in one loop, `prepare` one run without training it.

The rooms: `setup` (the rules a config must satisfy, the run's lengths, its
model, optimizer and schedule), `batches` (splits on the device,
normalisation, shifts, evaluation), `runs` (a run's files: open, resume,
close), `loop` (fit, fit_pass, signals) and the training pass itself.
"""

from optbench.trainer.batches import (EVAL_CHUNK, eval_splits, evaluate, make_splits, normalise, random_shift, sync,
                                      train_size)
from optbench.trainer.loop import SYNC_EVERY, evaluations_without_improvement, fit, fit_pass, guard_and_clip
from optbench.trainer.runs import resumable, unopened
from optbench.trainer.setup import (Setup, build_model, build_optimizer, build_scheduler, check, check_setup,
                                    prepare, run_lengths, select_device)

__all__ = [
    "EVAL_CHUNK", "SYNC_EVERY", "Setup", "build_model", "build_optimizer", "build_scheduler", "check", "check_setup",
    "eval_splits", "evaluate", "evaluations_without_improvement", "fit", "fit_pass", "guard_and_clip", "make_splits",
    "normalise", "prepare", "random_shift", "resumable", "run_lengths", "select_device", "sync", "train_size",
    "unopened",
]
