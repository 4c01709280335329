"""A run's files while it trains: open (resume or start over), summary, close; a run that could not open.

The run directory itself (names, atomic writes, ownership, damaged files) is
optbench.results.rundir's; this module decides what a run writes there and when.
"""

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING, cast

import torch
from omegaconf import DictConfig

from optbench import optimizers
from optbench.errors import UserError
from optbench.results import rundir

if TYPE_CHECKING:
    from optbench.trainer.setup import Stepper

log = logging.getLogger("optbench.trainer")

FLAGS = ("exploding_gradients", "vanishing_gradients", "dead_relu", "saturated")
# what a user does about a damaged file of a run that is to be resumed
START_AGAIN = "trainer.resume=false starts this run again from scratch, replacing what is there"


@dataclass
class Run:
    """One run of a pass: its config, its files, its model and how it ends. Everything else is the pass's."""

    cfg: DictConfig
    dir: Path
    summary: dict
    log: logging.Logger
    resume: dict | None = None  # the checkpoint it continues from
    # model, generator, stepper, writer and histogram_file are None until the pass builds them (setup.build_runs,
    # Pass.open_files), before any step reads them: typed as what they then always are
    model: torch.nn.Sequential = cast(torch.nn.Sequential, None)  # its own; in a pass its tensors are row k's
    generator: torch.Generator = cast(torch.Generator, None)  # its data order, shifts and dropout masks, as alone
    stepper: "Stepper" = cast("Stepper", None)
    row: int | None = None  # its row among the stepper's stacked rows (None: the stepper steps this run alone)
    history: list = field(default_factory=list)  # one dict per evaluation
    flags: dict = field(default_factory=lambda: dict.fromkeys(FLAGS))
    previous: tuple | None = None  # (step, per-layer parameters) one step before an evaluation
    initial: list | None = None  # per-layer parameters at step 0
    last_values: dict = field(default_factory=dict)  # the last step read back, for the health flags
    status: str = "running"
    writer: rundir.MetricsWriter = cast(rundir.MetricsWriter, None)
    histogram_file: IO[str] = cast(IO[str], None)


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
        summary = {**found, **summary, "finished_at": now()}
        rundir.write_json(run_dir / rundir.SUMMARY, summary)
    return summary


def open_run(cfg: DictConfig, run_dir: Path, choices: dict | None, n_runs: int) -> Run:
    resume, started_over = resumable(cfg, run_dir)
    if resume is None:  # a fresh start never appends to what an earlier, unfinished attempt left
        for stale in (rundir.METRICS, rundir.HISTOGRAMS, rundir.CHECKPOINT):
            (run_dir / stale).unlink(missing_ok=True)
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
               "started_at": now(), **rundir.provenance()}
    rundir.write_json(run_dir / rundir.SUMMARY, summary)
    return Run(cfg, run_dir, summary, run_log, resume)


def close(run: Run, status: str, reason: str | None, started: float) -> None:
    for file in (run.writer, run.histogram_file):
        if file is not None:
            file.close()
    run.status = status
    run.summary.update(status=status, reason=reason, finished_at=now())
    update_summary(run.summary, run.history, time.perf_counter() - started)
    rundir.write_json(run.dir / rundir.SUMMARY, run.summary)
    line = rundir.run_line(run.dir.name, run.summary)
    if run.log is not log:  # a run of a pass: its own train.log gets the line too
        run.log.info(line)
        for handler in list(run.log.handlers):
            run.log.removeHandler(handler)
            handler.close()
    rundir.sweep_log.info(line)  # the console, a single run's train.log, and a sweep's sweep.log


def finished_run(cfg: DictConfig, run_dir: Path) -> dict | None:
    """The summary of a run already finished in run_dir with this config, when it is to be kept: re-running a sweep
    with the same hydra.sweep.dir then trains only what is missing. Asked before a job starts, and again once
    fit_pass holds the directory (another process may have finished the run in between)."""
    try:
        summary = rundir.read_summary(run_dir)
    except rundir.DamagedFile:
        if cfg.trainer.resume:
            raise
        return None  # trainer.resume=false: the run starts again (trainer.resumable says so in its log)
    if summary is None or not cfg.trainer.skip_completed or summary.get("status") not in rundir.FINISHED:
        return None
    if rundir.config_differences(run_dir, cfg):
        return None  # trained again: resumable() names the changed keys in the run's log
    log.info("skipped: %s already %s with this config (trainer.skip_completed=false reruns it)",
             run_dir, summary["status"])
    return summary


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
        if status in rundir.FINISHED:  # not kept by finished_run: a rerun asked for, or another config
            changed = rundir.config_differences(run_dir, cfg) if cfg.trainer.skip_completed else []
            why = f"its config changed: {', '.join(changed[:5])}" if changed else "trainer.skip_completed=false"
            return None, f"the earlier run there {status} ({why})"
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


def update_summary(summary: dict, history: list, wall_time: float) -> None:
    summary["wall_time"] = round(wall_time, 3)
    if not history:
        return
    last = history[-1]
    finite = [h for h in history if math.isfinite(h["val_acc"])]
    best = max(finite, key=lambda h: h["val_acc"]) if finite else last
    summary.update(best_val_acc=best["val_acc"], best_step=best["step"], best_epoch=best["epoch"],
                   # test accuracy where validation chose: never used to choose anything
                   test_acc_at_best_val=best["test_acc"],
                   final={k: v for k, v in last.items() if k not in ("step", "epoch")},
                   train_time=round(last["train_time"], 3),
                   seconds_per_epoch=round(last["train_time"] / last["epoch"], 3) if last["epoch"] else None)


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")
