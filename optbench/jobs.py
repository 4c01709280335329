"""What runs inside a Hydra job: the task `optbench train` hands to Hydra, and the machine each job gets.

The launchers (Hydra's basic one, hydra/launcher=optbench, joblib, submitit) call `train_task` with the composed config;
it reads Hydra's runtime (output directory, group choices, job number) and passes plain values on to `trainer.fit`,
which never reads Hydra itself.
"""

import logging
import os
import sys
import traceback
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode

from optbench import results, schema
from optbench.errors import UserError
from optbench.results import rundir

log = logging.getLogger("optbench")


def choices(hydra_cfg) -> dict:
    """The config group options this job was composed from (optimizer: adam, ...), Hydra's own left out."""
    return {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}


def train_task(cfg) -> float | None:
    """Hydra's task for `optbench train`: train (or skip, or resume) the run in Hydra's output directory."""
    from optbench.trainer import finished_run, fit, unopened

    schema.register()  # a joblib or submitit worker process composes nothing, but resolves the config
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    share_machine(cfg, hydra_cfg)
    try:
        previous = finished_run(cfg, run_dir)
        if previous is not None:
            return previous.get("best_val_acc")
        summary = fit(cfg, hydra_cfg.runtime.output_dir, choices(hydra_cfg))
    except UserError as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # the sweep goes on; the run's summary says failed (a held or damaged run's is left alone), and the
            # sweep's end says so again
            unopened(run_dir, e)  # its summary says failed (not a stale "interrupted")
            failed_runs.append(f"{run_dir.name}: {e}")
            return None
        print(f"optbench: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except Exception as e:
        if isinstance(e, OSError) and e.errno in rundir.DISK_FULL:
            # what was written before stays readable; the summary says failed. Later jobs would fail the same way.
            print(f"optbench: error: the disk is full (or over quota) writing {e.filename or 'the run directory'}: "
                  f"{e.strerror}; the run in {run_dir} is marked failed", file=sys.stderr)
            raise SystemExit(1) from None
        if hydra_cfg.mode != RunMode.MULTIRUN:
            raise
        # a job that raises would end the whole sweep with a traceback once its batch is done: the others
        # go on, the traceback goes to this run's train.log, and the sweep exits non-zero at its end
        record_traceback(run_dir)
        return None
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt  # also ends a multirun instead of starting the next job
    return summary.get("best_val_acc")


def record_traceback(run_dir) -> None:
    """The exception being handled, in full, at the end of the run's train.log (the console gets one line)."""
    with open(Path(run_dir) / rundir.LOG, "a") as f:
        traceback.print_exc(file=f)


def share_machine(cfg, hydra_cfg) -> None:
    """Parallel jobs split the machine instead of fighting over it: torch threads per job, GPU per job."""
    import torch

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


failed_runs: list[str] = []  # "<run>: <why>" per run of the last sweep that failed or never finished; train's exit


class SweepSummary(Callback):
    """Hydra calls this in the launching process around a sweep, whatever launcher runs the jobs (conf/config.yaml).

    Each finished run's line and the summary at the end go to the console and to sweep.log in the sweep's folder; runs
    that failed are remembered for `optbench train`'s exit status.
    """

    def __init__(self):
        self.handler = None

    def __getstate__(self) -> dict:
        return {"handler": None}  # joblib and submitit pickle Hydra's callbacks for their workers: not the open file

    def on_multirun_start(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.handler = logging.FileHandler(sweep_dir / "sweep.log")
        self.handler.setFormatter(logging.Formatter(rundir.LOG_FORMAT))
        rundir.sweep_log.addHandler(self.handler)
        rundir.sweep_log.setLevel(logging.INFO)

    def on_multirun_end(self, config, **kwargs) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            lines, failed = summarise_sweep(sweep_dir)
            for line in lines:
                rundir.sweep_log.info(line)
            told = {line.split(":", 1)[0] for line in failed_runs}  # a job's own error, said when it happened
            failed_runs.extend(line for line in failed if line.split(":", 1)[0] not in told)
        finally:
            rundir.sweep_log.removeHandler(self.handler)
            self.handler.close()


def summarise_sweep(sweep_dir: Path) -> tuple[list[str], list[str]]:
    """(the lines that close a sweep: every run, the ranking, what to run next; "<run>: <why>" per failed run)."""
    try:
        runs = results.load_runs(sweep_dir)
    except UserError as e:
        return [f"sweep in {sweep_dir}: {e}"], [f"{sweep_dir}: no run finished ({e})"]
    summaries = {row.run: {**(rundir.read_summary(Path(row.run_dir)) or {}), "status": row.status}
                 for row in runs.itertuples()}
    for row in runs.itertuples():
        held = rundir.holder(Path(row.run_dir)) if row.status == "running" else None
        if held is not None:  # another optbench process trains it: this sweep left it alone
            summaries[row.run]["reason"] = (f"skipped here: process {held.get('pid')} on {held.get('host')} is "
                                            "training it")
    counts = ", ".join(f"{n} {status}" for status, n in runs["status"].value_counts().items())
    lines = [f"sweep of {len(runs)} runs in {sweep_dir}: {counts}"]
    lines += ["  " + rundir.run_line(name, summary) for name, summary in summaries.items()]
    if runs["status"].isin(rundir.FINISHED).any():
        table = results.rank(runs, results.load_metrics(runs))
        lines += ["ranking (as optbench report prints it):",
                  *results.format_ranking(table).to_string(index=False).splitlines(), *results.verdict_lines(table)]
    lines += [f"next: optbench report {sweep_dir} --html   # tables, ranking and one page with the figures",
              f"      optbench plot {sweep_dir}"]
    failed = [f"{name}: {summary.get('status')}: {summary.get('reason') or 'see its train.log'}"
              for name, summary in summaries.items() if summary["status"] not in rundir.FINISHED]
    failed += [f"skipped: {error}" for error in runs.attrs.get("skipped", [])]
    if failed:
        lines.append(f"{len(failed)} of {len(runs)} runs did not finish: rerun the same command to retry only those")
    return lines, failed
