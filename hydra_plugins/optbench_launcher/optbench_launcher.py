"""Hydra launcher `hydra/launcher=optbench`: Hydra's basic launcher, plus vectorized passes for optbench sweeps;
and `hydra/sweeper=optbench`, Hydra's basic sweeper less a second composition of every job.

Jobs that `optbench.vectorized.plan` groups (same config but for seed, optimizer, schedule, init; trainer.vectorize
auto or on) train in one pass: each job still gets its own output directory, .hydra/ files and train.log through
Hydra's own `run_job`, whose task only records where the run goes; then `optbench.executors.train_pass`
(trainer.fit_pass) trains the group and writes every run directory. `hydra.launcher.executor` says where that call
runs: in this process (in_process, the default), in N local worker processes (workers), or as submitit jobs (slurm,
submitit_local); the run directories are set up here either way, so they are the same whatever trains them. In
process, a sweep with nothing to group is handed to the basic launcher untouched.

Every optbench module is imported inside the method that uses it, an exception to the package's rule
(optbench/__init__.py): Hydra imports every module under hydra_plugins/ when any Hydra app in this environment
starts, so this one must cost them nothing beyond Hydra itself.
"""

import copy
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper, BasicSweeperConf
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from hydra.types import HydraContext
from omegaconf import DictConfig, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class OptbenchLauncherConf:
    _target_: str = "hydra_plugins.optbench_launcher.optbench_launcher.OptbenchLauncher"
    # who trains each pass (or lone run): in_process (here, one after another) | workers (local processes)
    # | slurm (a SLURM job array through submitit) | submitit_local (the same jobs as local processes)
    executor: str = "in_process"
    # executor=workers: how many processes; null: one per GPU, else one per core (each gets its share of the cores)
    workers: Optional[int] = None
    # the most runs in one pass (null: optbench.vectorized.MAX_MODELS, 32); smaller passes make more, shorter jobs
    max_runs_per_pass: Optional[int] = None
    # slurm / submitit_local: each job's resources, as submitit names them in parentheses
    partition: Optional[str] = None  # (slurm_partition)
    gpus_per_job: Optional[int] = None  # (gpus_per_node)
    cpus_per_job: Optional[int] = None  # (cpus_per_task); also the job's torch threads
    mem_gb: Optional[int] = None
    timeout_min: int = 60  # a job at its time limit checkpoints its pass and is requeued
    array_parallelism: int = 256  # the most jobs of the array running at once (slurm_array_parallelism)
    # any other submitit parameter, e.g. {slurm_account: lab, slurm_qos: normal, slurm_constraint: a100}
    submitit: Dict[str, Any] = field(default_factory=dict)


ConfigStore.instance().store(group="hydra/launcher", name="optbench", node=OptbenchLauncherConf, provider="optbench")


@dataclass
class OptbenchSweeperConf(BasicSweeperConf):
    _target_: str = "hydra_plugins.optbench_launcher.optbench_launcher.OptbenchSweeper"


ConfigStore.instance().store(group="hydra/sweeper", name="optbench", node=OptbenchSweeperConf, provider="optbench")


class OptbenchSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch: Sequence[Sequence[str]]) -> None:
        """Hydra composes every job of a batch here, before the launch, for launchers that compose each job in
        another process; optbench's launcher composes them all in this one before it sets anything up, so with
        it that is a second composition of each job (a third of a small sweep's start-up)."""
        from optbench import jobs

        if not (isinstance(self.launcher, OptbenchLauncher) and self.launcher.task_function is jobs.train_task):
            super().validate_batch_is_legal(batch)


class OptbenchLauncher(BasicLauncher):
    # Optional in BasicLauncher only until Hydra calls setup(), which it does before launch()
    config: DictConfig
    hydra_context: HydraContext

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.settings = OptbenchLauncherConf(**settings)
        self.submitit = None  # executor=slurm|submitit_local: submitit's executor, made before any run is set up

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from optbench import executors, jobs, vectorized
        from optbench.errors import UserError

        if self.task_function is not jobs.train_task:
            return super().launch(job_overrides, initial_job_idx)
        try:
            executor = self._check_settings()
        except UserError as e:  # Hydra would print it with a traceback; nothing is set up yet
            print(f"optbench: error: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        passes = vectorized.plan([_without_hydra(c) for c in configs],
                                 self.settings.max_runs_per_pass or vectorized.MAX_MODELS)
        if executor == "in_process" and all(len(p) == 1 for p in passes):
            return super().launch(job_overrides, initial_job_idx)  # exactly Hydra's basic launcher

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        where = "locally" if executor == "in_process" else f"through executor {executor}"
        log.info(f"Launching {len(job_overrides)} jobs {where}, {sum(len(p) > 1 for p in passes)} vectorized pass(es)")
        runs: Dict[int, JobReturn] = {}  # config index -> its JobReturn; every pass fills its members'
        interrupted = False
        handed = []  # (JobReturns, what train_pass trains) of the passes an executor out of this process trains
        for members in passes:
            for i in members:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            if executor == "in_process" and len(members) == 1:
                runs[members[0]] = self._run(configs[members[0]], self.task_function)
                configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
                continue
            rets, prepared = self._prepare([configs[i] for i in members])
            runs.update(zip(members, rets))
            if prepared and executor == "in_process":
                interrupted |= _finish(rets, prepared, executors.train_pass(*_call(prepared)))
            elif prepared:
                handed.append((rets, prepared))
        if handed:
            outcomes = self._execute(executor, [_call(prepared) for _, prepared in handed])
            for (rets, prepared), outcome in zip(handed, outcomes):
                interrupted |= _finish(rets, prepared, outcome)
        if interrupted:
            raise KeyboardInterrupt  # ends the multirun, as the train task does
        return [runs[i] for i in range(len(configs))]

    def _check_settings(self) -> str:
        from optbench.errors import UserError
        from optbench.executors import EXECUTORS

        s = self.settings
        if s.executor not in EXECUTORS:
            raise UserError(f"hydra.launcher.executor={s.executor} is not one of {', '.join(EXECUTORS)}")
        for key in ("workers", "max_runs_per_pass"):
            if getattr(s, key) is not None and getattr(s, key) < 1:
                raise UserError(f"hydra.launcher.{key}={getattr(s, key)} must be >= 1 (or null)")
        if s.executor in ("slurm", "submitit_local"):  # checked before any run directory is set up
            try:
                from optbench import cluster
            except ImportError as e:
                if e.name != "submitit":
                    raise
                raise UserError(f"hydra.launcher.executor={s.executor} needs submitit: "
                                "pip install 'optbench[slurm]'") from None
            folder = Path(str(self.config.hydra.sweep.dir)) / ".submitit"
            self.submitit = cluster.make_executor("slurm" if s.executor == "slurm" else "local", folder,
                                                  cluster.parameters(s), (f"hydra.launcher.executor={s.executor}",
                                                                          "hydra.launcher"))
        return s.executor

    def _execute(self, executor: str, calls: list) -> list:
        from optbench import executors

        if executor == "workers":
            n = self.settings.workers or executors.default_workers(executors.visible_gpus(),
                                                                   len(os.sched_getaffinity(0)))
            return executors.in_workers(calls, min(n, len(calls)))
        from optbench import cluster

        return cluster.submit(self.submitit, calls, self.settings.cpus_per_job)

    def _run(self, config, task_function) -> JobReturn:
        return run_job(hydra_context=self.hydra_context, task_function=task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _prepare(self, configs) -> tuple[list, dict]:
        """Set up each job's directory with Hydra's run_job, training nothing: its JobReturn, and for each run
        still to train (by its position in `configs`) the task config, output dir and group choices."""
        from optbench import jobs
        from optbench.errors import UserError
        from optbench.trainer import finished_run

        prepared = {}

        def prepare(cfg):
            """What optbench's train task does before fit, without fit."""
            hydra_cfg = HydraConfig.get()
            try:
                previous = finished_run(cfg, Path(hydra_cfg.runtime.output_dir))
            except UserError as e:  # a damaged summary.json or config.yaml: this run fails, the others go on
                log.error("%s: %s", Path(hydra_cfg.runtime.output_dir).name, e)
                jobs.failed_runs.append(f"{Path(hydra_cfg.runtime.output_dir).name}: {e}")
                return None
            if previous is not None:  # trainer.skip_completed: this run is already done
                return previous.get("best_val_acc")
            prepared[len(rets)] = (cfg, hydra_cfg.runtime.output_dir, jobs.choices(hydra_cfg))

        rets = []
        for c in configs:
            rets.append(self._run(c, prepare))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return rets, prepared


def _call(prepared: dict) -> tuple:
    """train_pass's arguments for the runs `_prepare` left to train: lists of task configs, output dirs, choices."""
    return tuple(list(column) for column in zip(*prepared.values()))


def _finish(rets: list, prepared: dict, outcome) -> bool:
    """Each trained job's JobReturn from its summary; whether any run was interrupted.

    `outcome`: train_pass's summaries, or the error of the worker or job that died; then each run's summary on disk
    tells what became of it (one still `running`, or never started, is marked failed with that error here).
    """
    from optbench.trainer import unopened

    if isinstance(outcome, Exception):
        log.error("pass failed: %s: %s", type(outcome).__name__, outcome)
        outcome = [unopened(Path(d), outcome) for _, d, _ in prepared.values()]
    for i, summary in zip(prepared, outcome):
        # as optbench's train task returns: a failed run is None, told at the sweep's end (jobs.SweepSummary);
        # a FAILED job would make Hydra's sweeper end the sweep with a traceback
        rets[i].status = JobStatus.COMPLETED
        rets[i].return_value = summary.get("best_val_acc")
    return any(s.get("status") == "interrupted" for s in outcome)


def _without_hydra(config):
    """The config the task sees, as run_job makes it."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg
