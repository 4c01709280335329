"""What runs inside a Hydra job: the task `optbench train` hands to Hydra, and the machine each job gets.

The launchers (Hydra's basic one, hydra/launcher=optbench, joblib,
submitit) call `train_task` with the composed config; it reads Hydra's
runtime (output directory, group choices, job number) and passes plain
values on to `trainer.fit`, which never reads Hydra itself.
"""

import errno
import logging
import sys
from pathlib import Path

from optbench.errors import UserError

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
log = logging.getLogger("optbench")


def choices(hydra_cfg) -> dict:
    """The config group options this job was composed from (optimizer: adam, ...), Hydra's own left out."""
    return {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}


def train_task(cfg) -> float | None:
    """Hydra's task for `optbench train`: train (or skip, or resume) the run in Hydra's output directory."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from optbench import results, schema
    from optbench.trainer import fit

    schema.register()  # a joblib or submitit worker process composes nothing, but resolves the config
    hydra_cfg = HydraConfig.get()
    share_machine(cfg, hydra_cfg)
    previous = finished_run(cfg, Path(hydra_cfg.runtime.output_dir))
    if previous is not None:
        return previous.get("best_val_acc")
    results.write_process(hydra_cfg.runtime.output_dir)
    try:
        summary = fit(cfg, hydra_cfg.runtime.output_dir, choices(hydra_cfg))
    except UserError as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("run failed: %s", e)  # the sweep goes on; the run's summary says failed
            return None
        print(f"optbench: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except OSError as e:
        if e.errno not in DISK_FULL:
            raise
        # what was written before stays readable; the summary says failed. Later jobs would fail the same way.
        print(f"optbench: error: the disk is full (or over quota) writing {e.filename or 'the run directory'}: "
              f"{e.strerror}; the run in {hydra_cfg.runtime.output_dir} is marked failed", file=sys.stderr)
        raise SystemExit(1)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt  # also ends a multirun instead of starting the next job
    return summary.get("best_val_acc")


def finished_run(cfg, run_dir: Path) -> dict | None:
    """The summary of a run already finished in run_dir with this config, when it is to be kept.

    Re-running a sweep with the same hydra.sweep.dir then trains only what
    is missing.
    """
    from optbench import results

    summary = results.read_summary(run_dir)
    if summary is None or not cfg.trainer.skip_completed or summary.get("status") not in results.FINISHED:
        return None
    changed = results.config_differences(run_dir, cfg)
    if not changed:
        log.info("skipped: %s already %s with this config (trainer.skip_completed=false reruns it)",
                 run_dir, summary["status"])
        return summary
    log.info("training %s again: its config changed (%s)", run_dir, ", ".join(changed[:5]))
    return None  # fit() resumes an unfinished run of this config, or starts over


def share_machine(cfg, hydra_cfg) -> None:
    """Parallel jobs split the machine instead of fighting over it: torch threads per job, GPU per job."""
    import os

    import torch
    from hydra.types import RunMode

    threads = job_threads(hydra_cfg.launcher, len(os.sched_getaffinity(0)))
    if threads:
        torch.set_num_threads(threads)  # the summary records torch_threads
    if hydra_cfg.mode == RunMode.MULTIRUN:
        cfg.device = job_device(cfg.device, hydra_cfg.job.num, torch.cuda.device_count())


def job_threads(launcher, cores: int) -> int | None:
    """Torch threads for one job: its share of the cores under joblib, cpus_per_task under submitit,
    None (torch's default) under the basic launcher, which runs one job at a time."""
    target = launcher.get("_target_", "")
    if "joblib" in target:
        n_jobs = launcher.get("n_jobs") or -1
        if n_jobs < 0:  # joblib's convention: -1 all cores, -2 all but one, ...
            n_jobs = max(cores + 1 + n_jobs, 1)
        return max(cores // n_jobs, 1)
    if "submitit" in target:
        return launcher.get("cpus_per_task") or None
    return None


def job_device(device: str, job_num: int, n_gpus: int) -> str:
    """With several GPUs sweep job k trains on GPU k mod n; with one GPU the jobs share it."""
    if device in ("auto", "cuda") and n_gpus > 1:
        return f"cuda:{job_num % n_gpus}"
    return device
