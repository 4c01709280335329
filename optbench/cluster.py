"""Passes as submitit jobs: a SLURM job array, or submitit's local processes; requeued when preempted.

Imported only for hydra.launcher.executor=slurm|submitit_local and the workers of `search`/`race --workers` (it needs
submitit: the `slurm` extra).

SLURM warns a job before its time limit with the signal submitit asks for (SIGUSR2, 90 s ahead) and preempts with
SIGTERM. Either one, while a pass trains, stops it after its current step with a checkpoint of every run (the trainer's
own stop, as on Ctrl-C); then the job asks submitit to requeue it: `PassJob.checkpoint` resubmits the same call, and the
requeued job's `fit_pass` resumes each run from its checkpoint, row for row. A pass that raised is never requeued,
whatever its runs' summaries say.
"""

import logging
import os
import signal
from contextlib import contextmanager

import submitit

from optbench import executors
from optbench.errors import UserError, first_line

log = logging.getLogger(__name__)


class PassJob(submitit.helpers.Checkpointable):
    """One pass (or lone run) as a submitit job: `train_pass` with preemption turned into stop and requeue.

    The inherited `checkpoint(*args)` returns DelayedSubmission(self, *args): the requeued job makes the same call, and
    fit_pass continues from the runs' checkpoints.
    """

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def __call__(self, cfgs: list, dirs: list, choices: list) -> list[dict]:
        executors.start_worker_process(self.threads)
        env = submitit.JobEnvironment()
        warning = getattr(signal, "SIG" + env.USR_SIG)  # SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL names another
        requeue = signal.getsignal(warning)  # submitit's: call checkpoint(), requeue the job, exit
        idle = signal.getsignal(signal.SIGTERM)  # submitit's while no pass trains: it logs the signal and goes on

        def stop(signum, frame):
            trainer_stop = signal.getsignal(signal.SIGTERM)
            if trainer_stop is not idle and callable(trainer_stop):
                trainer_stop(signum, frame)  # the training loop's stop request: it ends the step and checkpoints
            elif callable(requeue):
                requeue(signum, frame)  # not training yet (or any more): nothing to save, requeue at once

        signal.signal(warning, stop)
        with _signals_received() as received:
            try:
                summaries = executors.train_pass(cfgs, dirs, choices, job=f"submitit {env.job_id}")
            finally:
                signal.signal(warning, requeue)
        # only a stop this job was asked for: a pass that raised returns the summaries on disk, and one left
        # `interrupted` by an earlier attempt would requeue the same error for ever
        stopped = received & {warning, signal.SIGTERM}
        if stopped and any(s["status"] == "interrupted" for s in summaries) and callable(requeue):
            log.warning("the pass was stopped by %s and checkpointed: requeueing job %s",
                        "/".join(sorted(signal.Signals(s).name for s in stopped)), env.job_id)
            requeue(warning, None)  # exits this process; the requeued job resumes the pass
        return summaries


@contextmanager
def _signals_received():
    """The set of signals that reach any Python handler while the block runs, filled in as it ends.

    While it trains, the trainer's own handler takes SIGTERM (and a handler of ours would never run); Python's wakeup fd
    hears every signal whatever handles it.
    """
    received = set()
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    try:
        yield received
    finally:
        signal.set_wakeup_fd(previous)
        try:
            received.update(os.read(read_end, 4096))  # one byte, the signal's number, per signal
        except BlockingIOError:
            pass  # none came
        os.close(read_end)
        os.close(write_end)


def parameters(conf) -> dict:
    """submitit's parameters from the launcher's config (OptbenchLauncherConf): each setting has one name there."""
    named = {"name": "optbench-pass", "timeout_min": conf.timeout_min, "slurm_partition": conf.partition,
             "gpus_per_node": conf.gpus_per_job, "cpus_per_task": conf.cpus_per_job, "mem_gb": conf.mem_gb,
             "slurm_array_parallelism": conf.array_parallelism}
    return {**{k: v for k, v in named.items() if v is not None}, **dict(conf.submitit or {})}


def make_executor(cluster: str | None, folder, params: dict, settings: tuple[str, str]):
    """submitit's executor for `cluster` (slurm, local) with `params`; a cluster or parameter submitit refuses is a
    UserError led by `settings`: the names of the setting that chose the cluster and of the one that gave params."""
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # slurm where there is no srun
        raise UserError(f"{settings[0]}: {first_line(e)}") from None
    try:
        executor.update_parameters(**params)
    except (ValueError, AssertionError, TypeError, NameError) as e:  # submitit's ways of naming a bad parameter
        raise UserError(f"{settings[1]}: {first_line(e)}") from None
    return executor


def map_array(executor, function, columns: list, what: str) -> tuple[list, str]:
    """function(*row) for each row of `columns`, as one submitit job array: the jobs, and their ids for messages."""
    try:
        jobs = executor.map_array(function, *columns)
    except (submitit.core.utils.FailedSubmissionError, OSError) as e:  # sbatch refused the array, or is missing
        raise UserError(f"could not submit the {what}: {first_line(e)}") from None
    return jobs, ", ".join(sorted({job.job_id.split("_")[0] for job in jobs}))  # one id a SLURM array, one a process


def failure(job, error: Exception) -> str:
    """Why a job failed, in one line: submitit re-raises the job's error with its traceback; the last line, the log."""
    lines = [line for line in str(error).splitlines() if line.strip()]
    return f"{lines[-1] if lines else type(error).__name__} (log: {job.paths.stderr})"


def submit(executor, calls: list[tuple], threads: int | None) -> list:
    """Each call (cfgs, dirs, choices) as one job of a submitit array; waits for them all; each result or its error."""
    jobs, ids = map_array(executor, PassJob(threads), [list(column) for column in zip(*calls)], "passes")
    log.info("submitted %d job(s) to %s: %s; submitit's logs in %s", len(jobs), executor.cluster, ids, executor.folder)
    outcomes = []
    for job in jobs:
        try:
            outcomes.append(job.result())
        except Exception as e:
            outcomes.append(UserError(f"job {job.job_id} failed: {failure(job, e)}"))
    return outcomes
