"""Training runs: `fit` one run, `fit_pass` the runs of one pass, each in its own run directory.

fit_pass holds each run directory (rundir.hold), opens its runs (resumed or
started over), trains them as one Pass (training_pass) and closes each with
its status. SIGINT/SIGTERM stop the loop after the current step.
"""

import contextlib
import logging
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm.contrib.logging import logging_redirect_tqdm

from optbench import data, vectorized
from optbench.errors import UserError
from optbench.results import rundir
from optbench.trainer.batches import make_splits
from optbench.trainer.runs import Run, close, finished_run, open_run, unopened
from optbench.trainer.setup import build_runs, run_lengths, select_device
from optbench.trainer.training_pass import Pass

log = logging.getLogger("optbench.trainer")


def fit(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Train one model as `cfg` says, writing config, metrics and summary into `run_dir`; a pass of one."""
    return fit_pass([cfg], [run_dir], [choices])[0]


def fit_pass(cfgs: list[DictConfig], run_dirs: list, choices: list | None = None, job: str | None = None) -> list[dict]:
    """Train the runs of `cfgs` (one `vectorized.pass_key`) in one loop, each into its run dir; their summaries.

    Each run directory is held by this process while it trains (rundir.hold;
    `job` names the executor's job or worker). An unfinished run of the same
    config in its directory (killed, interrupted) continues from its last
    checkpoint when trainer.resume is on; a finished one of this config is
    kept (trainer.skip_completed); anything else there is replaced.
    Status: completed, diverged (non-finite loss or gradient), interrupted
    (SIGINT/SIGTERM) or failed (an exception, re-raised). A single run's bad
    setting, damaged file or live holder raises UserError; in a pass that run
    fails (or, held elsewhere, is left alone) and the others go on.
    """
    if len({vectorized.pass_key(c) for c in cfgs}) != 1:
        raise ValueError("fit_pass: the configs differ in more than seed/optimizer/schedule/init")
    started = time.perf_counter()
    outcome = {}  # run dir -> the summary of a run that could not be opened
    with contextlib.ExitStack() as held:
        runs = []
        for cfg, run_dir, chosen in zip(cfgs, map(Path, run_dirs), choices or [None] * len(cfgs)):
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(rundir.hold(run_dir, job))
                if (done := finished_run(cfg, run_dir)) is not None:  # by another process since this job was planned
                    outcome[run_dir] = done
                    continue
                runs.append(open_run(cfg, run_dir, chosen, len(cfgs)))
            except UserError as e:
                if len(cfgs) == 1:
                    raise
                outcome[run_dir] = unopened(run_dir, e)
        # the runs that continue from a checkpoint at the same step train together; fresh ones too
        by_step: dict[int | None, list[Run]] = {}
        for run in runs:
            by_step.setdefault(run.resume["step"] if run.resume else None, []).append(run)
        try:
            reasons = {why for c in cfgs if (why := vectorized.why_not(c)) is not None} if len(cfgs) > 1 else set()
            if reasons:  # each run's summary says failed, and why
                raise UserError(f"these runs cannot share a pass: {'; '.join(sorted(reasons))}")
            for part in by_step.values():
                train_runs(part[0].cfg, part, started)
        except BaseException as e:
            for run in runs:
                if run.status == "running":
                    close(run, "failed", f"{type(e).__name__}: {e}", started)
            raise
    opened = {run.dir: run.summary for run in runs}
    return [opened.get(Path(d)) or outcome[Path(d)] for d in run_dirs]


def train_runs(cfg: DictConfig, runs: list[Run], started: float) -> None:
    """Train `runs` (opened, all at the same step) as one pass on `cfg`'s data; each ends with its status."""
    device = select_device(cfg.device)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    lengths = run_lengths(cfg, len(split["train"][0]))
    loss_fn = instantiate(cfg.loss)
    runs = build_runs(runs, device, lengths)
    if not runs:
        return
    training = Pass(cfg, runs, split, lengths, loss_fn, device, started)
    status, reason = "completed", None
    try:
        with stop_on_signals() as stop, logging_redirect_tqdm():  # log lines print above the bar, not onto it
            training.train(stop)
            if stop.signal is not None:
                status, reason = "interrupted", f"{signal.Signals(stop.signal).name} received at step {training.step}"
            training.flush_steps()
    except KeyboardInterrupt:
        status, reason = "interrupted", f"KeyboardInterrupt at step {training.step}"
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        training.finish(status, reason)


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
def stop_on_signals():
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return
    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
