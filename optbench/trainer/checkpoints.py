"""A run's checkpoint: what it holds, written during a pass and read back when a pass resumes.

Both directions are here, so the format is written down once. A run of a
pass is saved as that run alone would be: its own model (not the stack), its
optimizer's state (its row of a shared one), its own random state.
"""

import logging
from typing import TYPE_CHECKING

import torch

from optbench import optimizers, vectorized
from optbench.results import rundir
from optbench.trainer.runs import Run

if TYPE_CHECKING:
    from optbench.trainer.training_pass import Pass

log = logging.getLogger("optbench.trainer")


def save(training: "Pass", order: torch.Tensor, epoch_step: int) -> None:
    """Each running run's checkpoint after `epoch_step` steps of this epoch (its data order kept when mid-epoch)."""
    training.flush_steps()
    optimizers.set_mode(training.optimizers(), "eval")  # schedule-free: save the evaluated weights
    for k in training.alive:
        run = training.runs[k]
        run.writer.flush()
        run.histogram_file.flush()
        if training.K > 1:  # the stacked batch norm does not count batches: record what the run alone would have
            for bn in run.model.modules():
                if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                    assert bn.num_batches_tracked is not None  # models.build_mlp's batch norm tracks its statistics
                    bn.num_batches_tracked.fill_(training.step)
        optimizer_state = run.stepper.optimizer.state_dict()  # a shared one: this run's row, as its own would hold
        rundir.save_tensors({
            "model": {name: v.clone() for name, v in run.model.state_dict().items()},  # not the whole stack
            "optimizer": optimizer_state if run.row is None else vectorized.row_state(optimizer_state, run.row),
            "scheduler": run.stepper.scheduler.state_dict(),
            "step": training.step, "epoch": training.epoch,
            "rng": {"torch": torch.get_rng_state(), "generator": run.generator.get_state()},
            "epoch_step": epoch_step,
            "order": order[k].cpu() if epoch_step < training.lengths.steps_per_epoch else None,
            "train_time": training.train_time(k), "history": run.history, "flags": run.flags,
            "counters": training.counters[k].cpu(),
            "metrics_bytes": run.writer.tell(), "histogram_bytes": run.histogram_file.tell(),
            "summary": {key: run.summary.get(key) for key in ("clipped_steps", "nonfinite_steps_skipped")},
        }, run.dir / rundir.CHECKPOINT)
    optimizers.set_mode(training.optimizers(), "train")


def restore(training: "Pass") -> None:
    """Every run's weights, optimizer, schedule, random state, history and files as its checkpoint left them."""
    for stepper in training.steppers:  # a shared optimizer: its runs' rows stacked
        members = [run for run in training.runs if run.stepper is stepper]
        states = [resumed(run)["optimizer"] for run in members]
        stepper.optimizer.load_state_dict(states[0] if len(members) == 1 else vectorized.stack_states(states))
        stepper.scheduler.load_state_dict(resumed(members[0])["scheduler"])
    for k, run in enumerate(training.runs):
        state = resumed(run)
        run.model.load_state_dict(state["model"])
        run.generator.set_state(state["rng"]["generator"])
        training.step, training.epoch = state["step"], state["epoch"]
        training.resumed_train_time[k] = state["train_time"]
        run.history, run.flags = state["history"], state["flags"]
        training.counters[k] = state["counters"]
        rundir.truncate(run.dir / rundir.METRICS, state["metrics_bytes"])
        rundir.truncate(run.dir / rundir.HISTOGRAMS, state["histogram_bytes"])
        run.log.info("resuming from the checkpoint at epoch %d, step %d", training.epoch, training.step)
        if training.K > 1:
            log.info("%s resumes from its checkpoint at step %d", run.dir.name, training.step)
    torch.set_rng_state(resumed(training.runs[0])["rng"]["torch"])
    if resumed(training.runs[0]).get("order") is not None:
        training.resumed_order = torch.stack([resumed(run)["order"] for run in training.runs]).to(training.device)
    training.histogram_steps = [h for h in training.histogram_steps if h > training.step]


def resumed(run: Run) -> dict:
    """The checkpoint `run` continues from: a pass restores only runs that all have one."""
    assert run.resume is not None, f"{run.dir.name} has no checkpoint to resume from"
    return run.resume
