"""`optbench search`'s command line: the flags, the checks made before anything is written, and --workers."""

import argparse
import logging
import sys
from datetime import datetime
from pathlib import Path

import yaml

from optbench.compose import check_group_choices
from optbench.errors import UserError
from optbench.search.figures import save_plots
from optbench.search.running import budget_left, completed, run_search
from optbench.search.scoring import write_table
from optbench.search.settings import DEFAULTS, TRIALS, load_spec, read_saved, save_spec, settled
from optbench.search.shared import (
    HEARTBEAT,
    PASSWORD_ENV,
    WORKER_TIMEOUT_MIN,
    Shared,
    masked,
    open_study,
    password_in_environment,
    storage_url,
    submit_workers,
)
from optbench.search.spaces import SAMPLERS, parse_space
from optbench.search.valley import run_valley

NONE_COMPLETED = "no trial completed: every one diverged or failed (trials.csv gives each reason)"


def main(args: list[str]) -> int:
    """`optbench search ARGS`; the exit code. Every setting is checked before search.yaml or a folder is written."""
    opts = _parser().parse_intermixed_args(args)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("optbench search needs optuna: pip install 'optbench[search]'") from None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    search_dir = Path(opts.dir or f"searches/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    spec = _given(opts, search_dir)
    shared, secret = _shared(opts, search_dir)
    if shared is not None:
        spec["storage"] = shared.url  # without its password (split_password)
    spec = settled(search_dir, spec)
    check_workers(opts.workers, shared)
    if spec["schedules"] and (shared is not None or opts.workers):
        raise UserError("the crowded valley protocol runs on one machine (its one-shot runs are not shared "
                        "work): drop --storage and --workers")
    params = submitit_params(opts.submitit)
    save_spec(search_dir, spec)
    if spec["schedules"]:
        run_valley(search_dir, spec, opts.threads)
        print(f"search directory: {search_dir} (one search per schedule; comparison in valley.csv)")
        return 0
    with password_in_environment(secret):
        if opts.workers:
            return submit(search_dir, spec, opts.threads, shared, opts.workers, opts.cluster, params)
        study = run_search(search_dir, spec, opts.threads, shared)
    print(f"search directory: {search_dir} ({len(study.trials)} trials; table in trials.csv)")
    if not completed(study):
        print(f"optbench: error: {NONE_COMPLETED}", file=sys.stderr)
        return 1
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="optbench search", description="Search config keys with Optuna; every "
                                     "trial is an ordinary run directory. Overrides (e.g. optimizer=sgd "
                                     "trainer.epochs=1) are fixed for every trial.")
    parser.add_argument("--space", help="a preset in optbench/conf/search (see `optbench list`) or a YAML file")
    parser.add_argument("--sampler", choices=SAMPLERS, help=f"default {DEFAULTS['sampler']}")
    parser.add_argument("--trials", type=int,
                        help=f"finished trials wanted in the study (default {TRIALS}; grid: its size)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")],
                        help=f"seeds per trial, e.g. 0,1,2 (default {','.join(map(str, DEFAULTS['seeds']))})")
    parser.add_argument("--grid-points", type=int, dest="grid_points",
                        help=f"points per float range for --sampler grid (default {DEFAULTS['grid_points']})")
    parser.add_argument("--final-seeds", type=int, dest="final_seeds",
                        help="rerun the best trial with this many new seeds")
    parser.add_argument("--sampler-seed", type=int, dest="sampler_seed",
                        help=f"seed of the sampler (default {DEFAULTS['sampler_seed']})")
    parser.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")],
                        help="crowded_valley: trial budgets compared with one-shot, e.g. 25,50,75")
    parser.add_argument("--dir", help="search directory; an existing one is resumed (default searches/<time>)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_worker_flags(parser, "search", "every worker gives the same --dir, which names the study")
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT, metavar="S",
                        help="database storages: seconds between a running trial's heartbeats; a trial silent for "
                        f"twice that is rerun by another worker (default {HEARTBEAT})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides fixed for every trial")
    return parser


def _given(opts, search_dir: Path) -> dict:
    """The settings this command gives: the preset's, then the flags' and overrides (which win)."""
    spec = load_spec(opts.space) if opts.space else {}
    if spec.get("overrides") and opts.overrides:
        opts.overrides = [*spec["overrides"], *opts.overrides]  # the command line adds to (and wins over) the preset
    flags = ("sampler", "trials", "seeds", "grid_points", "final_seeds", "sampler_seed", "budgets")
    spec.update({k: getattr(opts, k) for k in flags if getattr(opts, k) is not None})
    if opts.overrides:
        spec["overrides"] = opts.overrides
    if "space" not in spec and read_saved(search_dir) is None:
        raise UserError("no search space: pass --space NAME (a preset: see `optbench list`) or --space FILE.yaml")
    if opts.trials is not None and opts.trials < 1:
        raise UserError(f"--trials={opts.trials} must be >= 1")
    check_group_choices(spec.get("overrides", []))
    return spec


def _shared(opts, search_dir: Path) -> tuple[Shared | None, str | None]:
    """--storage as a Shared study named after --dir (its URL without the password), and the password; None for
    the embedded SQLite study."""
    saved_storage = (read_saved(search_dir) or {}).get("storage")
    if opts.storage is None:
        if saved_storage:
            raise UserError(f"{search_dir} keeps its study in {masked(saved_storage)}: pass --storage URL "
                            "(every worker does)")
        return None, None
    url, secret = storage_url(opts.storage)  # first: every message after this may show the URL
    if opts.dir is None:
        raise UserError("--storage needs --dir: every worker gives the same search directory (on a shared file "
                        "system, for the run directories), and the study in the storage is named after it")
    if (search_dir / "study.db").exists():
        raise UserError(f"{search_dir} keeps its study in study.db (SQLite), not in --storage: pick a new --dir")
    if opts.heartbeat < 1:
        raise UserError(f"--heartbeat={opts.heartbeat} must be a whole number of seconds >= 1")
    return Shared(url, search_dir.resolve().name, opts.heartbeat), secret


def add_worker_flags(parser: argparse.ArgumentParser, what: str, naming: str) -> None:
    """--storage, --workers, --cluster, --submitit: where a study is kept and who runs its trials (search, race)."""
    parser.add_argument("--storage", metavar="URL",
                        help=f"keep the {what}'s studies where workers on other machines share them: "
                        "postgresql://user@host/db (optbench[postgres]), mysql+pymysql://... "
                        f"(optbench[mysql]) or /shared/PATH.log (a journal file); {naming}. The password: in "
                        f"${PASSWORD_ENV} or, for PostgreSQL, ~/.pgpass or $PGPASSWORD; one written in the URL is "
                        "taken out of it before anything is written or submitted, and reaches the workers through "
                        "their environment")
    parser.add_argument("--workers", type=int, help="submit this many workers with submitit: a SLURM job array "
                        "(local processes where there is no SLURM); needs --storage")
    parser.add_argument("--cluster", choices=("slurm", "local"), help="submitit's executor for --workers "
                        "(default: slurm where srun is found, else local)")
    parser.add_argument("--submitit", action="append", default=[], metavar="KEY=VALUE",
                        help="a submitit parameter for each worker, e.g. timeout_min=240 slurm_partition=gpu "
                        "gpus_per_node=1 cpus_per_task=4 mem_gb=16 (repeat the flag; "
                        f"default timeout_min={WORKER_TIMEOUT_MIN})")


def check_workers(workers: int | None, shared) -> None:
    if workers is not None and workers < 1:
        raise UserError(f"--workers={workers} must be >= 1")
    if workers and shared is None:
        raise UserError("--workers needs --storage, where the workers share the study (a journal file PATH.log on "
                        "a shared file system needs no server); SQLite over a network file system is not safe")


def submitit_params(pairs: list[str]) -> dict:
    """--submitit KEY=VALUE flags as submitit's parameters; values read as YAML (240 is a number)."""
    params = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UserError(f"--submitit {pair}: write KEY=VALUE, e.g. --submitit timeout_min=240")
        params[key] = yaml.safe_load(value)
    return params


def work(search_dir: Path, spec: dict, threads: int | None, shared: Shared) -> None:
    """One worker that `--workers` submits: the search loop on the shared study, in a submitit job."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    run_search(search_dir, spec, threads, shared)


def submit(search_dir: Path, spec: dict, threads: int | None, shared: Shared | None, workers: int,
           cluster: str | None, params: dict) -> int:
    """`workers` workers as one submitit job array, then (--final-seeds) one job for the best trial's reruns,
    then the table and plots here; non-zero when a job failed or the study is short of its trials."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    search_dir = search_dir.resolve()  # jobs may start in another folder
    # made here, before the workers race to create the study and queue the grid
    assert shared is not None  # --workers needs --storage (checked in main)
    study = open_study(shared, spec)
    done, todo = budget_left(study, parse_space(spec["space"]), spec)
    threads = threads or params.get("cpus_per_task")
    job = (search_dir, spec, threads, shared)
    failed = submit_workers(work, job, workers, search_dir / ".submitit", cluster, params)
    if not failed and spec["final_seeds"]:
        failed = submit_workers(work, job, 1, search_dir / ".submitit", cluster, params)  # finds the study finished
    write_table(study, search_dir)
    save_plots(study, search_dir)
    finished = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    if finished < done + todo:
        failed.append(f"the study has {finished} of {done + todo} trials finished: run the command again to finish it")
    elif not completed(study):
        failed.append(NONE_COMPLETED)
    for line in failed:
        print(f"optbench: error: {line}", file=sys.stderr)
    print(f"search directory: {search_dir} ({len(study.trials)} trials; table in trials.csv)")
    return 1 if failed else 0
