"""Who trains a sweep's passes: this process, N local worker processes, or submitit jobs (optbench.cluster).

hydra/launcher=optbench plans the passes and sets up every run directory (Hydra's .hydra files, train.log, the skip
rule) in its own process; only `train_pass`, the trainer's call, goes to the executor. So a run trained by a worker
or on another machine has the same files, status and resume rules as one trained in process. A lone run (one that
cannot join a pass) goes as a pass of one.
"""

import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from optbench import jobs, schema
from optbench.errors import UserError
from optbench.results import rundir

EXECUTORS = ("in_process", "workers", "slurm", "submitit_local")
log = logging.getLogger(__name__)
_worker = None  # this process's name as a worker of `in_workers` ("worker 0", ...); None elsewhere


def train_pass(cfgs: list, dirs: list, choices: list, job: str | None = None) -> list[dict]:
    """trainer.fit_pass in whichever process executes the pass: one summary per run.

    A pass that raises (a setting its runs share is wrong, ...) leaves each run's summary failed with the reason, its
    traceback in train.log, and the sweep goes on, as in process.
    """
    from optbench import trainer

    schema.register()  # a worker process composed nothing, but resolves the configs with optbench's resolvers
    handler = None
    if len(cfgs) == 1:
        # a pass of one logs through the trainer's own logger; in process Hydra's job log sends that to train.log
        handler = rundir.log_handler(dirs[0])
        logging.getLogger("optbench").addHandler(handler)
    try:
        return trainer.fit_pass(list(cfgs), list(dirs), list(choices), job=job or _worker)
    except Exception as e:  # noqa: BLE001 - each run's summary says failed and why; the other passes go on
        log.error("vectorized pass failed: %s", e if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
        if not isinstance(e, UserError):
            for d in dirs:
                jobs.record_traceback(d)  # here, in the process that has the traceback
        return [trainer.unopened(Path(d), e) for d in dirs]
    finally:
        if handler is not None:
            logging.getLogger("optbench").removeHandler(handler)
            handler.close()


def start_worker_process(threads: int | None) -> None:
    """What a process that trains passes for a launcher sets up: console logging, its torch threads."""
    import torch

    logging.basicConfig(level=logging.INFO, format=rundir.LOG_FORMAT)
    if threads:
        torch.set_num_threads(threads)  # the summary records torch_threads


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (indices when it is unset)."""
    import torch

    n = torch.cuda.device_count()
    named = [s.strip() for s in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if s.strip()]
    return (named or [str(i) for i in range(n)])[:n]


def worker_setup(k: int, n_workers: int, gpus: list[str], cores: int) -> tuple[dict, int]:
    """Worker k's environment and torch threads: GPU k mod the GPUs when there are any, and its share of the cores."""
    env = {"CUDA_VISIBLE_DEVICES": gpus[k % len(gpus)]} if gpus else {}
    return env, max(cores // n_workers, 1)


def default_workers(gpus: list[str], cores: int) -> int:
    """executor=workers without hydra.launcher.workers: one worker per GPU, else one per core."""
    return len(gpus) or cores


def in_workers(calls: list[tuple], n_workers: int) -> list:
    """train_pass(*call) for each call, spread over `n_workers` local processes; each result or its error.

    Each worker takes the next pass when it finishes one. Ctrl-C reaches the workers too (one process group): a training
    pass stops after its step and checkpoints, as in process; passes not started are dropped.
    """
    gpus, cores = visible_gpus(), len(os.sched_getaffinity(0))
    context = multiprocessing.get_context("spawn")  # CUDA does not survive fork
    slots = context.SimpleQueue()
    for k in range(n_workers):
        slots.put(k)
    each = f"GPUs {', '.join(gpus)}" if gpus else f"{worker_setup(0, n_workers, gpus, cores)[1]} torch thread(s) each"
    log.info("%d worker processes, %s", n_workers, each)
    pool = ProcessPoolExecutor(n_workers, mp_context=context, initializer=_start_worker,
                               initargs=(slots, n_workers, gpus, cores))
    futures = [pool.submit(train_pass, *call) for call in calls]
    try:
        # the pass's summaries, or its own error, or BrokenProcessPool for a worker that died
        outcomes = [future.exception() or future.result() for future in futures]
    except KeyboardInterrupt:
        pool.shutdown(wait=True, cancel_futures=True)  # the passes in training stop and checkpoint first
        raise
    pool.shutdown()
    return outcomes


def _start_worker(slots, n_workers: int, gpus: list[str], cores: int) -> None:
    global _worker
    k = slots.get()
    env, threads = worker_setup(k, n_workers, gpus, cores)
    os.environ.update(env)  # before anything touches CUDA in this process
    _worker = f"worker {k}"
    # Ctrl-C goes to every process of the terminal: the trainer's own handler stops a training pass; an idle
    # worker leaves it to the launcher, which cancels what has not started
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    start_worker_process(threads)
