"""Running a search on one machine: the study in DIR/study.db, the loop that asks for, runs and tells trials
(several processes of one machine share it under a lock), a trial's run directories, and the best trial's reruns."""

import logging
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import yaml
from omegaconf import OmegaConf, open_dict

from optbench import jobs
from optbench.compose import compose_config
from optbench.errors import first_line
from optbench.results import rundir
from optbench.search.figures import save_plots
from optbench.search.scoring import METRIC, score, write_table
from optbench.search.settings import budget, settle_spec
from optbench.search.shared import Shared, claim, fail_orphans, open_study, run_shared, worker_name
from optbench.search.spaces import grid, override_text, parse_space, seeded_sampler, suggest, trial_overrides

log = logging.getLogger(__name__)


def run_search(search_dir: Path, spec: dict, threads: int | None = None, shared: Shared | None = None):
    """Run (or resume) the search in `search_dir` until `trials` trials finished; return the study: DIR/study.db
    (SQLite), or with `shared` the named study on a storage that workers on other machines run too (shared.py)."""
    import optuna
    import torch

    search_dir = Path(search_dir)
    spec = settle_spec(search_dir, spec)  # checked before the folder is made
    space = parse_space(spec["space"])
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # optbench logs each trial itself
    lock = search_dir / "study.lock"
    # SQLite: processes sharing the study create its schema and queue the grid under the lock; a shared study's
    # workers may queue the grid at once (claim drops a doubled point)
    with _locked(lock) if shared is None else nullcontext():
        study = sqlite_study(search_dir) if shared is None else open_study(shared, spec)
        done, todo = budget_left(study, space, spec)
    target = done + todo
    objective = _objective(search_dir, space, spec, None if shared is None else target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if todo > 0:
                log.info("search %s: %d trials finished, %d to run (%s sampler)", search_dir, done, todo,
                         spec["sampler"])
            if shared is None:
                while (trial := next_trial(study, spec, target, lock)) is not None:
                    _run_trial(study, trial, objective)
            else:
                run_shared(study, spec, target, objective, shared)
            # on a shared study the workers still running would rerun the best at once: only a process
            # that found the study finished does (the one that submitted --workers, or the command run again)
            finisher = shared is None or todo <= 0
            rerun_done = (search_dir / "best" / "result.txt").exists()
            if spec["final_seeds"] and finisher and completed(study) and not rerun_done:
                rerun_best(study, search_dir, spec)
    finally:
        write_table(study, search_dir)
    save_plots(study, search_dir)
    return study


def sqlite_study(search_dir: Path):
    """The study of a search on one machine: DIR/study.db; a DamagedFile when it is not an Optuna study."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    path = (search_dir / "study.db").resolve()
    try:
        return optuna.create_study(study_name="optbench", storage=f"sqlite:///{path}", load_if_exists=True,
                                   direction="maximize")
    except (SQLAlchemyError, RuntimeError) as e:  # RuntimeError: Optuna's schema versions do not match
        raise rundir.DamagedFile(path, f"is not an Optuna study ({first_line(getattr(e, 'orig', None) or e)})",
                                 "move it away (with runs/ and trials.csv) or pick a new --dir") from None


def completed(study) -> list:
    """The study's COMPLETE trials (a diverged trial is PRUNED, a crashed or interrupted one FAIL)."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def budget_left(study, space: dict, spec: dict) -> tuple[int, int]:
    """(trials finished, trials still to run); queues the grid's points not yet finished or queued."""
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = budget(space, spec) - done
    if spec["sampler"] == "grid":
        todo = min(todo, enqueue_grid(study, grid(space, spec["grid_points"])))
    return done, todo


def next_trial(study, spec: dict, target: int, lock: Path):
    """A new trial, or None once the study has `target` trials finished or running.

    Several processes may run one search (same --dir): counting and asking happen under one lock, so together they
    run exactly `target` trials.
    """
    from optuna.trial import TrialState

    with _locked(lock):
        fail_orphans(study, unclaimed=True)
        counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        if len(study.get_trials(deepcopy=False, states=counted)) >= target:
            return None
        # seeded by trial number: any process, and a resumed search, draws trial n's point alike and never replays one
        study.sampler = seeded_sampler(spec, len(study.trials))
        trial = study.ask()
        trial.set_user_attr("worker", worker_name())
        return trial


def _run_trial(study, trial, objective) -> None:
    """Run the objective and tell the study: a value, PRUNED (diverged), or FAIL and re-raise (interrupted, crashed)."""
    import optuna
    from optuna.trial import TrialState

    try:
        value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
    except BaseException:
        study.tell(trial, state=TrialState.FAIL)
        raise
    else:
        study.tell(trial, value)


@contextmanager
def _locked(path: Path):
    """An exclusive lock on `path` for this process (released by the OS if the process dies)."""
    try:
        import fcntl
    except ImportError:  # Windows: parallel searches in one directory are not supported there
        yield
        return
    with open(path, "a") as f:  # closing the file releases the lock
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def enqueue_grid(study, points: list[dict]) -> int:
    """Queue the grid points not yet finished or queued (an interrupted point is queued again)."""
    from optuna.trial import TrialState

    seen = {_key(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    seen |= {_key(t.system_attrs.get("fixed_params", t.params)) for t in queued}  # no params until it runs
    new = [p for p in points if _key(p) not in seen]
    for params in new:
        study.enqueue_trial(params)
    log.info("grid: %d points, %d queued", len(points), len(queued) + len(new))
    return len(queued) + len(new)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _objective(search_dir: Path, space: dict, spec: dict, target: int | None = None):
    """The trial function; with `target` (a shared study's budget) it first claims the trial (shared.claim)."""
    import optuna

    def objective(trial) -> float:
        if target is not None:
            claim(trial, spec, target)
        params = {key: suggest(trial, key, d) for key, d in space.items()}
        overrides = spec["overrides"] + trial_overrides(params)
        summaries = []
        for seed in spec["seeds"]:
            run_dir = search_dir / "runs" / rundir.folder_name(f"{trial.number:03d}_{_dirname(params, seed)}")
            summary = run_one([*overrides, f"seed={seed}"], run_dir)
            summaries.append(summary)
            trial.set_user_attr("runs", [*trial.user_attrs.get("runs", []), str(run_dir.relative_to(search_dir))])
            if summary["status"] == "interrupted":
                trial.set_user_attr("reason", f"interrupted (seed {seed})")
                raise KeyboardInterrupt
            if summary["status"] != "completed":
                reason = f"seed {seed} {summary['status']}: {summary.get('reason')}"
                trial.set_user_attr("reason", reason)
                log.warning("trial %d: %s", trial.number, reason)
                raise optuna.TrialPruned(reason)
        mean, std = score(summaries)
        trial.set_user_attr("val_acc_std", std)
        # reported beside the objective, never optimised
        trial.set_user_attr("test_acc_mean", float(np.mean([s["test_acc_at_best_val"] for s in summaries])))
        log.info("trial %d %s: val acc %.4f +- %.4f over %d seed(s)", trial.number, params, mean, std, len(summaries))
        return mean

    return objective


def _dirname(params: dict, seed: int) -> str:
    values = [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={override_text(v)}" for k, v in params.items()]
    return ",".join([*values, f"seed={seed}"])


def run_one(overrides: list[str], run_dir: Path) -> dict:
    """One ordinary run directory: compose the config as `optbench train` would, then trainer.fit."""
    from optbench.trainer import fit  # torch

    cfg = compose_config(overrides, hydra=True)  # a bad key or value in the space or the overrides: one line
    choices = jobs.choices(cfg.hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    handler = rundir.log_handler(run_dir)
    logging.getLogger().addHandler(handler)
    try:
        return fit(cfg, run_dir, choices)
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()


def rerun_best(study, search_dir: Path, spec: dict) -> None:
    """DeepOBS's last step: the best trial's settings again with `final_seeds` seeds; mean and std."""
    best = study.best_trial
    seeds = range(1000, 1000 + spec["final_seeds"])  # fresh seeds: the search's own seeds chose this point
    summaries = []
    for s in seeds:  # after an interruption: keep completed reruns, never append to a half-written one
        run_dir = search_dir / "best" / f"seed={s}"
        summary = rundir.read_summary(run_dir)
        while summary is not None and summary["status"] != "completed":
            run_dir = run_dir.with_name(run_dir.name + "_again")
            summary = rundir.read_summary(run_dir)
        if summary is None:
            summary = run_one([*spec["overrides"], *trial_overrides(best.params), f"seed={s}"], run_dir)
        summaries.append(summary)
    ok = [s for s in summaries if s["status"] == "completed"]
    val = [s[METRIC] for s in ok]
    test = [s["test_acc_at_best_val"] for s in ok]
    line = (f"best trial {best.number} {best.params} rerun with {len(seeds)} seeds: "
            f"val acc {np.mean(val):.4f} +- {np.std(val):.4f}, test acc {np.mean(test):.4f} +- {np.std(test):.4f}"
            f" ({len(summaries) - len(ok)} not completed)")
    (search_dir / "best" / "result.txt").write_text(line + "\n")
    print(line)

