"""Hydra launcher `hydra/launcher=optbench`: Hydra's basic launcher, plus vectorized passes for optbench sweeps.

Jobs that `optbench.vectorized.plan` groups (same config but for seed,
optimizer, schedule, init; trainer.vectorize auto or on) train in one pass:
each job still gets its own output directory, .hydra/ files and train.log
through Hydra's own `run_job`, whose task only records where the run goes;
then `trainer.fit_pass` trains the group and writes every run directory. A sweep with
nothing to group is handed to the basic launcher untouched.
"""

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class OptbenchLauncherConf:
    _target_: str = "hydra_plugins.optbench_launcher.optbench_launcher.OptbenchLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="optbench", node=OptbenchLauncherConf, provider="optbench")


class OptbenchLauncher(BasicLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from optbench import jobs, vectorized

        if self.task_function is not jobs.train_task:
            return super().launch(job_overrides, initial_job_idx)
        configs = []
        for idx, overrides in enumerate(job_overrides, start=initial_job_idx):
            sweep_config = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(sweep_config):
                sweep_config.hydra.job.id = idx
                sweep_config.hydra.job.num = idx
            configs.append(sweep_config)
        task_configs = [_without_hydra(c) for c in configs]
        passes = vectorized.plan(task_configs)
        if all(len(p) == 1 for p in passes):
            return super().launch(job_overrides, initial_job_idx)  # exactly Hydra's basic launcher

        setup_globals()
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        Path(str(self.config.hydra.sweep.dir)).mkdir(parents=True, exist_ok=True)
        log.info(f"Launching {len(job_overrides)} jobs locally, {sum(len(p) > 1 for p in passes)} vectorized pass(es)")
        runs: List[JobReturn] = [None] * len(configs)
        for members in passes:
            for i in members:
                log.info(f"\t#{initial_job_idx + i} : {' '.join(filter_overrides(job_overrides[i]))}")
            if len(members) == 1:
                runs[members[0]] = self._run(configs[members[0]], self.task_function)
            else:
                for i, ret in zip(members, self._run_pass([configs[i] for i in members])):
                    runs[i] = ret
            configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        return runs

    def _run(self, config, task_function) -> JobReturn:
        return run_job(hydra_context=self.hydra_context, task_function=task_function, config=config,
                       job_dir_key="hydra.sweep.dir", job_subdir_key="hydra.sweep.subdir")

    def _run_pass(self, configs) -> List[JobReturn]:
        """Set up each job's directory with Hydra's run_job, then train them all in one vectorized pass."""
        from optbench import jobs, results, trainer
        from optbench.errors import UserError

        prepared = {}  # job's position in `configs` -> (task config, output dir, choices)

        def prepare(cfg):
            """What optbench's train task does before fit, without fit."""
            hydra_cfg = HydraConfig.get()
            previous = jobs.finished_run(cfg, Path(hydra_cfg.runtime.output_dir))
            if previous is not None:  # trainer.skip_completed: this run is already done
                return previous.get("best_val_acc")
            results.write_process(hydra_cfg.runtime.output_dir)
            prepared[len(rets)] = (cfg, hydra_cfg.runtime.output_dir, jobs.choices(hydra_cfg))

        rets = []
        for c in configs:
            rets.append(self._run(c, prepare))
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        if not prepared:
            return rets
        cfgs, dirs, choices = zip(*prepared.values())
        try:
            summaries = trainer.fit_pass(list(cfgs), list(dirs), list(choices))
        except Exception as e:  # noqa: BLE001 - each run's summary says failed and why; the other passes go on
            log.error("vectorized pass failed: %s", e if isinstance(e, UserError) else f"{type(e).__name__}: {e}")
            if not isinstance(e, UserError):
                for d in dirs:
                    jobs.record_traceback(d)
            summaries = [results.read_summary(Path(d)) or {"status": "failed"} for d in dirs]
        for i, summary in zip(prepared, summaries):
            # as optbench's train task returns: a failed run is None, told at the sweep's end (jobs.SweepSummary);
            # a FAILED job would make Hydra's sweeper end the sweep with a traceback
            rets[i].status = JobStatus.COMPLETED
            rets[i].return_value = summary.get("best_val_acc")
        if any(s["status"] == "interrupted" for s in summaries):
            raise KeyboardInterrupt  # ends the multirun, as the train task does
        return rets


def _without_hydra(config):
    """The config the task sees, as run_job makes it."""
    task_cfg = copy.deepcopy(config)
    with read_write(task_cfg), open_dict(task_cfg):
        del task_cfg["hydra"]
    return task_cfg
