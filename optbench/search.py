"""`optbench search`: random, TPE, CMA-ES or grid search over any config keys, on Optuna.

A command rather than a Hydra sweeper plugin: the released
hydra-optuna-sweeper pins optuna < 3, and a sweeper cannot run several seeds
per trial and score their mean. Each trial composes its config with Hydra's
compose API (the same config `optbench train` would get) and trains with the
same `trainer.fit`, one ordinary run directory per seed, so `optbench report`
and `plot` read searches like any sweep.

A search directory holds:
  search.yaml   the settings (space, sampler, seeds, fixed overrides); a rerun with --dir resumes them
  study.db      Optuna's study (SQLite): finished trials survive an interruption; with --storage URL
                the study is on a database or journal file that workers on several machines share
                (optbench.storage), named after the directory, and --workers N submits N workers
  runs/         one run directory per trial and seed: <trial>_<what varied>,seed=<s>
  trials.csv    one row per trial: state, parameters, mean/std validation accuracy, reason
  *.png         Optuna's history, slice and importance plots
  best/         (final_seeds > 0) the best trial's settings rerun with more seeds

With `schedules` (the crowded_valley preset) the directory holds one such
search per schedule, <dir>/<schedule>/, each with the one-shot runs of the
optimizer's defaults in <schedule>/one_shot/, and valley.csv/.md/.png comparing
one-shot against the tuning budgets.

Trials are scored by the mean over seeds of each run's best validation
accuracy; test accuracy is recorded beside it and never chosen on. A run that
diverges ends its trial as PRUNED with the reason; an interrupted run ends the
search (the trial is marked FAIL and does not count: resuming runs a new one).
"""

import argparse
import io
import logging
import os
import re
import socket
import sys
import textwrap
import time
import warnings
import zlib
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from optbench.compose import CONF, check_group_choices, compose_config, groups
from optbench.errors import UserError
from optbench.results import RUN_SETTINGS
from optbench.rundir import read_summary, write_bytes as write_bytes_atomic
from optbench.storage import HEARTBEAT, WORKER_TIMEOUT_MIN, Shared, is_journal, masked, open_storage, submit_workers

log = logging.getLogger(__name__)

SAMPLERS = ("random", "tpe", "cmaes", "grid")
SPEC_KEYS = ("space", "sampler", "trials", "seeds", "grid_points", "overrides", "final_seeds", "sampler_seed",
             "budgets", "schedules")
DEFAULTS = {"sampler": "tpe", "trials": None, "seeds": [0], "grid_points": 5, "overrides": [], "final_seeds": 0,
            "sampler_seed": 0, "budgets": None, "schedules": None, "storage": None}
TRIALS = 20  # finished trials wanted when neither --trials nor a grid says how many
# keys a resumed search may change: a larger budget does not change what the finished trials mean
GROWABLE = ("trials", "budgets")
# search.yaml's record of --storage (password hidden) is not compared: workers may name one server differently
UNCOMPARED = (*GROWABLE, "storage")
METRIC = "best_val_acc"  # the objective: validation only, maximised
# seconds between a waiting worker's looks at a shared study: a heartbeat apart (30 s) it sat idle for up to
# that long after the last trial had finished elsewhere
POLL = 2
FORMS = "log(low, high), uniform(low, high), int(low, high), choice(a, b, ...), a YAML list, or {type, low, high, log, step, choices}"


# --- search spaces --------------------------------------------------------------------------------


def parse_space(space: dict) -> dict:
    """{config key: optuna distribution} from the YAML forms in FORMS."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if not isinstance(space, dict) or not space:
        raise UserError(f"search space must be a non-empty mapping of config keys to ranges ({FORMS})")
    out = {}
    for key, value in space.items():
        try:
            if isinstance(value, list):
                value = {"type": "categorical", "choices": value}
            elif isinstance(value, str):
                value = _parse_short(value)
            if not isinstance(value, dict):
                raise ValueError(f"{value!r} is not a range")
            kind = value.get("type")
            if kind == "categorical":
                out[key] = CategoricalDistribution([_choice(c) for c in value["choices"]])
            elif kind in ("float", "int"):
                cast = float if kind == "float" else int
                log_scale = bool(value.get("log", False))
                step = value.get("step")
                low, high = cast(float(value["low"])), cast(float(value["high"]))
                dist = FloatDistribution if kind == "float" else IntDistribution
                step = None if step is None else cast(float(step))
                out[key] = dist(low, high, log=log_scale, step=step if kind == "float" else (step or 1))
            else:
                raise ValueError(f"type {kind!r} is not float, int or categorical")
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(f"search space key {key}: {e}; write one of {FORMS}") from None
    return out


def _parse_short(text: str) -> dict:
    """`log(1e-5, 1e1)` and friends; the arguments are parsed as Hydra parses override values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    match = re.fullmatch(r"\s*(\w+)\((.*)\)\s*", text)
    if not match or match[1] not in ("log", "uniform", "int", "choice"):
        raise ValueError(f"{text!r} is not a range")
    try:
        args = OverridesParser.create().parse_override(f"x=[{match[2]}]").value()
    except Exception:
        raise ValueError(f"cannot read the arguments of {text!r}") from None
    if match[1] == "choice":
        return {"type": "categorical", "choices": args}
    if len(args) != 2:
        raise ValueError(f"{text!r} needs exactly two numbers, low and high")
    kind = "int" if match[1] == "int" else "float"
    return {"type": kind, "low": args[0], "high": args[1], "log": match[1] == "log"}


def _choice(value):
    # optuna stores str/int/float/bool/None; a list (model.hidden=[256,256]) travels as its override text
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return _override_text(value)


def _override_text(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ",".join(_override_text(v) for v in value) + "]"
    return str(value)


def grid(space: dict, points: int) -> list[dict]:
    """Every combination: categorical choices, ints (thinned to `points` if more), `points` floats per range."""
    from optuna.distributions import CategoricalDistribution

    axes = {}
    for key, d in space.items():
        if isinstance(d, CategoricalDistribution):
            axes[key] = list(d.choices)
            continue
        if d.step is not None and (d.high - d.low) / d.step + 1 <= points:
            values = np.arange(d.low, d.high + d.step / 2, d.step)
        elif d.log:
            values = np.geomspace(d.low, d.high, points)
        else:
            values = np.linspace(d.low, d.high, points)
        values = np.clip(values, d.low, d.high)  # geomspace may round just outside
        is_int = isinstance(d.low, int)
        axes[key] = sorted({int(round(v)) if is_int else float(v) for v in values})
    keys = list(axes)
    combos = [[]]
    for key in keys:
        combos = [c + [v] for c in combos for v in axes[key]]
    return [dict(zip(keys, c)) for c in combos]


def suggest(trial, key: str, d):
    from optuna.distributions import CategoricalDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return trial.suggest_categorical(key, d.choices)
    if isinstance(d, IntDistribution):
        return trial.suggest_int(key, d.low, d.high, step=d.step, log=d.log)
    return trial.suggest_float(key, d.low, d.high, step=d.step, log=d.log)


def trial_overrides(params: dict) -> list[str]:
    """Hydra overrides for a trial: `group=option` for config groups, `++key=value` (set or add) for keys."""
    return [f"{'' if k in groups() else '++'}{k}={_override_text(v)}" for k, v in params.items()]


# --- scoring --------------------------------------------------------------------------------------


def score(summaries: list[dict]) -> tuple[float, float]:
    """Mean and std over seeds of the best validation accuracy: the trial's objective (test never enters)."""
    values = [s[METRIC] for s in summaries]
    return float(np.mean(values)), float(np.std(values))


# --- running --------------------------------------------------------------------------------------


def load_spec(name: str | None) -> dict:
    """A preset under conf/search/ by name, or a YAML file by path; None gives the defaults with no space."""
    if name is None:
        return {}
    path = Path(name)
    if not path.is_file():
        path = CONF / "search" / f"{name}.yaml"
    if not path.is_file():
        options = sorted(p.stem for p in (CONF / "search").glob("*.yaml"))
        raise UserError(f"--space {name}: no such file or preset; presets: {', '.join(options)}")
    spec = yaml.safe_load(path.read_text()) or {}
    unknown = set(spec) - set(SPEC_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(SPEC_KEYS)}")
    return spec


def make_sampler(name: str, seed: int):
    import optuna

    if name == "random" or name == "grid":  # grid points are enqueued; the sampler is never asked
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)
    if name == "cmaes":
        # the cmaes package does the work; categorical keys fall back to random sampling
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    raise UserError(f"sampler={name} is not a sampler; choices: {', '.join(SAMPLERS)}")


def seeded_sampler(spec: dict, *trial: int):
    """The sampler for one trial, seeded by the search's sampler_seed and the trial's number (and worker).

    Hashed, not added: with seed + number, sampler seed 1's trial n drew seed 0's trial n + 1, and two
    searches meant as independent repeats shared all but one point.
    """
    seed = np.random.SeedSequence([spec["sampler_seed"], *trial]).generate_state(1)[0]
    return make_sampler(spec["sampler"], int(seed))


def run_search(search_dir: Path, spec: dict, threads: int | None = None, shared: Shared | None = None):
    """Run (or resume) the search in `search_dir` until `trials` trials finished; return the study.

    The study is DIR/study.db (SQLite), or with `shared` the named study on a
    storage that workers on other machines run too (optbench.storage).
    """
    import optuna
    import torch

    search_dir = Path(search_dir)
    search_dir.mkdir(parents=True, exist_ok=True)
    spec = _settle_spec(search_dir, spec)
    space = parse_space(spec["space"])
    if threads:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # optbench logs each trial itself
    lock = search_dir / "study.lock"
    if shared is None:
        with _locked(lock):  # processes sharing the study: creating the SQLite schema, queueing the grid
            study = _sqlite_study(search_dir)
            done, todo = _budget(study, space, spec)
    else:
        study = open_study(shared, spec)
        done, todo = _budget(study, space, spec)  # workers queueing the grid at once: _claim drops a doubled point
    target = done + todo
    objective = _objective(search_dir, space, spec, None if shared is None else target)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            if todo > 0:
                log.info("search %s: %d trials finished, %d to run (%s sampler)", search_dir, done, todo, spec["sampler"])
            if shared is None:
                while (trial := _next_trial(study, spec, target, lock)) is not None:
                    _run_trial(study, trial, objective)
            else:
                _run_shared(study, spec, target, objective, shared)
            # on a shared study the workers still running would rerun the best at once: only a process
            # that found the study finished does (the one that submitted --workers, or the command run again)
            finisher = shared is None or todo <= 0
            if spec["final_seeds"] and finisher and not (search_dir / "best" / "result.txt").exists():
                rerun_best(study, search_dir, spec)
    finally:
        write_table(study, search_dir)
    save_plots(study, search_dir)
    return study


def _sqlite_study(search_dir: Path):
    import optuna

    return optuna.create_study(study_name="optbench", storage=f"sqlite:///{(search_dir / 'study.db').resolve()}",
                               load_if_exists=True, direction="maximize")


def _budget(study, space: dict, spec: dict) -> tuple[int, int]:
    """(trials finished, trials still to run); queues the grid's points not yet finished or queued."""
    from optuna.trial import TrialState

    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
    todo = budget(space, spec) - done
    if spec["sampler"] == "grid":
        todo = min(todo, _enqueue_grid(study, grid(space, spec["grid_points"])))
    return done, todo


def budget(space: dict, spec: dict) -> int:
    """Trials the search runs in all: `trials`, or a grid's size (a grid never runs more than its points)."""
    if spec["sampler"] == "grid":
        points = len(grid(space, spec["grid_points"]))
        return min(spec["trials"] or points, points)
    return spec["trials"] or TRIALS


def open_study(shared: Shared, spec: dict):
    """The shared study, created by whichever worker comes first; refused when it holds another search."""
    import json

    import optuna

    study = optuna.create_study(study_name=shared.study, storage=open_storage(shared), load_if_exists=True,
                                direction="maximize")
    mine = json.loads(json.dumps({k: _comparable(k, spec[k]) for k in SPEC_KEYS if k not in GROWABLE}))
    theirs = study.user_attrs.get("search")
    if theirs is None:
        study.set_user_attr("search", mine)
    elif theirs != mine:
        clash = ", ".join(k for k in mine if theirs.get(k) != mine[k])
        raise UserError(f"study {shared.study} in {masked(shared.url)} holds a search with other {clash}; "
                        "pick another --dir (the study is named after it)")
    return study


def _run_shared(study, spec: dict, target: int, objective, shared: Shared) -> None:
    """Ask for and run trials of a study other machines share until it has `target` finished trials.

    No lock spans machines: the storage numbers trials in the order it creates
    them, and a trial runs only when fewer than `target` trials numbered below
    it are finished or running (_claim), so all workers together run `target`.
    While the rest of the budget is running elsewhere a worker waits, as a
    heartbeat storage may yet find one of those trials' workers dead and
    queue it again; a journal storage cannot tell, so its workers stop.
    (Optuna finds a trial stale only once it has a heartbeat: a worker killed
    in the milliseconds between asking and its first heartbeat leaves a trial
    that keeps the others waiting until one of them is stopped.)
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    heartbeat = not is_journal(shared.url)
    while True:
        if heartbeat:
            fail_stale_trials(study)  # FAIL, and queued again with the same point (storage.RETRIES)
        else:
            _fail_orphans(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        if finished >= target:
            return
        if finished + states.count(TrialState.RUNNING) >= target:
            if not heartbeat:
                return
            time.sleep(min(shared.heartbeat, POLL))  # the last trials' end, or a dead worker's, is seen soon
            continue
        # workers asking at once see the same count: mix in the worker, or they would draw one point
        # (only CMA-ES draws at ask; _claim reseeds the others by trial number)
        study.sampler = seeded_sampler(spec, len(states), zlib.crc32(_worker().encode()))
        study.optimize(objective, n_trials=1, catch=(NotClaimed,))  # Optuna's loop: it keeps the heartbeat


class NotClaimed(Exception):
    """A trial asked for beyond the study's budget, or a grid point another worker queued first: FAIL, never run."""


def _claim(trial, spec: dict, target: int) -> None:
    """Raise NotClaimed unless `trial` is one of the study's `target` trials; then seed the sampler by its number.

    The trials numbered below it are decided already or being decided by the
    same rule, so every worker agrees which trials run.
    """
    from optuna.trial import TrialState

    trials = trial.study.get_trials(deepcopy=False)
    below = [t for t in trials if t.number < trial.number]
    live = [t for t in below if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
    # a queued grid point (also when a dead worker's grid trial is queued again)
    point = next(t for t in trials if t.number == trial.number).system_attrs.get("fixed_params")
    reason = None
    if len(live) >= target:
        reason = f"the study had its {target} trials when this one was asked for"
    elif point and any(t.system_attrs.get("fixed_params") == point for t in below
                       if t.state != TrialState.FAIL):
        reason = "another worker queued the same grid point first"
    trial.set_user_attr("worker", _worker())
    if reason:
        trial.set_user_attr("reason", f"not run: {reason}")
        raise NotClaimed(reason)
    # trial n draws the same point whichever worker runs it, as in a search on one machine
    trial.study.sampler = seeded_sampler(spec, trial.number)


def _next_trial(study, spec: dict, target: int, lock: Path):
    """A new trial, or None once the study has `target` trials finished or running.

    Several processes may run one search (same --dir): counting and asking
    happen under one lock, so together they run exactly `target` trials.
    """
    from optuna.trial import TrialState

    with _locked(lock):
        _fail_orphans(study, unclaimed=True)
        if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))) >= target:
            return None
        # seeded by trial number: any process, and a resumed search, draws trial n's point alike and never replays one
        study.sampler = seeded_sampler(spec, len(study.trials))
        trial = study.ask()
        trial.set_user_attr("worker", _worker())
        return trial


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _fail_orphans(study, unclaimed: bool = False) -> None:
    """Trials left RUNNING by a killed process of this machine become FAIL, so they do not count and are rerun.

    unclaimed: also a trial with no worker yet. Under the study's lock a trial is asked for and claimed in one
    step, so one left unclaimed belongs to a process stopped inside that step (Ctrl-C right after ask()).
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        if (name == host and pid.isdigit() and not _alive(int(pid))) or (unclaimed and "worker" not in t.user_attrs):
            try:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # a shared study: another worker was first
                continue
            log.warning("trial %d: its process %s is gone; marked FAIL", t.number, pid or "(stopped before claiming it)")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


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
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _settle_spec(search_dir: Path, spec: dict) -> dict:
    """Fill defaults; a directory that already holds a search keeps its settings (only GROWABLE ones may grow)."""
    saved_path = search_dir / "search.yaml"
    full = {**DEFAULTS, **{k: v for k, v in spec.items() if v is not None}}
    if saved_path.exists():
        saved = yaml.safe_load(saved_path.read_text())
        given = {k: v for k, v in spec.items() if v is not None and k not in UNCOMPARED}
        clash = [k for k, v in given.items() if _comparable(k, saved.get(k)) != _comparable(k, v)]
        if clash:
            raise UserError(f"{search_dir} holds a search with other {', '.join(clash)}; "
                            "resume it without changing them, or pick a new --dir")
        full = {**DEFAULTS, **saved, **{k: spec[k] for k in UNCOMPARED if spec.get(k) is not None}}
        if spec.get("overrides") is not None:  # the saved experiment, run where and how this command says
            ours = [str(o) for o in spec["overrides"]]
            full["overrides"] = [*_factors(saved["overrides"]), *(o for o in ours if o not in _factors(ours))]
    if full["sampler"] not in SAMPLERS:
        raise UserError(f"sampler={full['sampler']} is not a sampler; choices: {', '.join(SAMPLERS)}")
    if "space" not in full:
        raise UserError("no search space: pass --space NAME (a preset in conf/search) or --space FILE.yaml")
    full["seeds"] = [int(s) for s in full["seeds"]]
    full["overrides"] = [str(o) for o in full["overrides"]]
    if full["budgets"] is not None:
        if not full["schedules"]:
            raise UserError("budgets compare one-shot runs with tuning budgets per schedule: they need a space with "
                            "`schedules` (--space crowded_valley)")
        full["budgets"] = sorted({int(b) for b in full["budgets"]})
        if full["budgets"][0] < 1:
            raise UserError(f"budgets {full['budgets']} must be trial counts >= 1")
        full["trials"] = max(full["trials"] or 0, full["budgets"][-1])  # the largest budget needs that many trials
    search_dir.mkdir(parents=True, exist_ok=True)
    # atomic: a parallel process of the same search may be reading it
    write_bytes_atomic(saved_path, yaml.safe_dump(full, sort_keys=False).encode())
    return full


def _factors(overrides) -> list[str]:
    """The overrides that make the experiment: where and how it runs (data.root, device: RUN_SETTINGS) may
    differ from one machine, or one resume, to the next."""
    return [str(o) for o in overrides or [] if str(o).split("=", 1)[0].lstrip("+~") not in RUN_SETTINGS]


def _comparable(key: str, value):
    return _factors(value) if key == "overrides" else value


def _enqueue_grid(study, points: list[dict]) -> int:
    """Queue the grid points not yet finished or queued (an interrupted point is queued again)."""
    from optuna.trial import TrialState

    seen = {_key(t.params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))}
    queued = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    seen |= {_key(t.system_attrs.get("fixed_params", t.params)) for t in queued}  # no params until it runs
    waiting = len(queued)
    new = [p for p in points if _key(p) not in seen]
    for params in new:
        study.enqueue_trial(params)
    log.info("grid: %d points, %d queued", len(points), waiting + len(new))
    return waiting + len(new)


def _key(params: dict) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in params.items()))


def _objective(search_dir: Path, space: dict, spec: dict, claim: int | None = None):
    """The trial function; with `claim` (a shared study's budget) it first checks the trial is one to run."""
    import optuna

    def objective(trial) -> float:
        if claim is not None:
            _claim(trial, spec, claim)
        params = {key: suggest(trial, key, d) for key, d in space.items()}
        overrides = spec["overrides"] + trial_overrides(params)
        summaries = []
        for seed in spec["seeds"]:
            run_dir = search_dir / "runs" / f"{trial.number:03d}_{_dirname(params, seed)}"
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
    def short(v):
        return f"{v:.4g}" if isinstance(v, float) else _override_text(v)

    return ",".join([*(f"{k}={short(v)}" for k, v in params.items()), f"seed={seed}"]).replace("/", "-")


def run_one(overrides: list[str], run_dir: Path) -> dict:
    """One ordinary run directory: compose the config as `optbench train` would, then trainer.fit."""
    from omegaconf import OmegaConf, open_dict

    from optbench import jobs
    from optbench.trainer import fit

    cfg = compose_config(overrides, hydra=True)  # a bad key or value in the space or the overrides: one line
    choices = jobs.choices(cfg.hydra)
    with open_dict(cfg):
        del cfg["hydra"]
    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / ".hydra" / "config.yaml")
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(list(overrides)))
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
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
        summary = read_summary(run_dir)
        while summary is not None and summary["status"] != "completed":
            run_dir = run_dir.with_name(run_dir.name + "_again")
            summary = read_summary(run_dir)
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


def trials_table(study):
    """One row per trial: number, state, parameters, val_acc_mean (the objective), std, test, reason."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    if df.empty:
        return df
    df = df.rename(columns={"value": "val_acc_mean"}).rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    df["duration"] = df["duration"].dt.total_seconds().round(1)
    front = ["number", "state", *study.trials[0].params.keys(), "val_acc_mean", "val_acc_std", "test_acc_mean"]
    front = [c for c in front if c in df.columns]
    return df[front + [c for c in df.columns if c not in front]]


def write_table(study, search_dir: Path) -> None:
    import pandas as pd

    df = trials_table(study)
    if df.empty:
        return
    write_bytes_atomic(search_dir / "trials.csv", df.to_csv(index=False).encode())  # parallel searches rewrite it
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 60):
        print(df.drop(columns=["runs"], errors="ignore").to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    complete = [t for t in study.trials if t.value is not None]
    if complete:
        best = max(complete, key=lambda t: t.value)
        print(f"best trial {best.number}: {best.params}: mean val acc {best.value:.4f} "
              f"(test acc {best.user_attrs.get('test_acc_mean', float('nan')):.4f}, reported only)")


TITLES = {"history": "objective per trial and best so far", "slice": "objective against each parameter",
          "importance": "parameter importance (fANOVA)"}
FEW_TRIALS = 10  # up to this many trials, the slice plot gives each its own colour and a legend entry


def plot_slice(study, target_name: str = "mean best val acc"):
    """The objective against each searched parameter, a panel per parameter, a point per finished trial.

    Optuna's own slice plot colours trials on a continuous white-to-blue bar (the first trial is a white dot on
    white) under two titles in ggplot's grey; this one colours a few trials apart with a legend, many along a
    colour bar that stays visible, and rings the best trial.
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from optuna.distributions import CategoricalDistribution

    import pandas as pd

    from optbench.plots import log_y, palette, visible
    from optbench.results import key_words

    trials = [t for t in study.trials if t.value is not None]
    names = list(dict.fromkeys(name for t in trials for name in t.params))
    best = max(trials, key=lambda t: t.value)
    few = len(trials) <= FEW_TRIALS
    numbers = [t.number for t in trials]
    span = max(max(numbers) - min(numbers), 1)
    colours = palette(len(trials)) if few else [visible(colormaps["viridis"](0.85 * (n - min(numbers)) / span))
                                                for n in numbers]
    fig = Figure(figsize=(4.3 * len(names) + (2.2 if few else 1.5), 4.3), dpi=150, layout="constrained")
    axes = fig.subplots(1, len(names), sharey=True, squeeze=False)[0]
    for ax, name in zip(axes, names):
        shown = [(t, c) for t, c in zip(trials, colours) if name in t.params]
        distribution = shown[0][0].distributions[name]
        categorical = isinstance(distribution, CategoricalDistribution)
        position = {v: i for i, v in enumerate(distribution.choices)} if categorical else None
        x = [position[t.params[name]] if categorical else t.params[name] for t, _ in shown]
        for (t, c), xi in zip(shown, x):
            ax.scatter(xi, t.value, s=55, color=c, edgecolor="black", linewidth=0.6, zorder=3,
                       label=f"trial {t.number}" if few else None)
        if name in best.params:
            xb = position[best.params[name]] if categorical else best.params[name]
            ax.scatter(xb, best.value, s=220, facecolor="none", edgecolor="black", linewidth=1.6, zorder=4,
                       label="best trial" if ax is axes[0] else None)
        log = getattr(distribution, "log", False)
        if categorical:
            ax.set_xticks(range(len(position)), [str(v) for v in position])
        elif log:
            log_y(ax, pd.Series(x, dtype=float), "x")
        ax.set_xlabel(f"{key_words(name)} ({name}{', log scale' if log else ''})")
        ax.grid(alpha=0.3, which="major")
    axes[0].set_ylabel(f"objective: {target_name}")
    if few:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize="small")
    else:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import ListedColormap, Normalize

        cmap = ListedColormap([visible(colormaps["viridis"](0.85 * i / 255)) for i in range(256)])
        bar = fig.colorbar(ScalarMappable(Normalize(min(numbers), max(numbers)), cmap), ax=axes.tolist(),
                           label="trial number (ring: the best trial)")
        from matplotlib.ticker import MaxNLocator

        bar.ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    return axes


def save_plots(study, search_dir: Path) -> list[Path]:
    """Optuna's matplotlib plots: history, and per-parameter slices; importance when >= 2 parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import MaxNLocator, NullFormatter
    from optuna.visualization import matplotlib as ovm

    from optbench.plots import visible

    complete = [t for t in study.trials if t.value is not None]
    if len(complete) < 2:
        return []
    plots = {"history": ovm.plot_optimization_history, "slice": plot_slice}
    if len(complete[0].params) >= 2:
        plots["importance"] = ovm.plot_param_importances  # fANOVA built into optuna, no scikit-learn
    saved = []
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                with plt.style.context("default"):  # optuna sets ggplot's grey style for the whole process
                    axes = plot(study, target_name="mean best val acc")
            except (ValueError, RuntimeError) as e:
                log.warning("no %s plot: %s", name, e)
                continue
        fig = np.ravel(axes)[0].figure
        fig.set_facecolor("white")
        for ax in fig.axes:
            ax.set_facecolor("white")  # optuna's ggplot grey, on a slide: white, as every other figure
            if name != "slice" and ax is fig.axes[0]:
                ax.grid(True, color="0.85")
                for line in ax.get_lines():
                    line.set(color=visible(line.get_color()), lw=2)
                if ax.get_legend():
                    ax.get_legend().get_frame().set_facecolor("white")
            if ax.get_xscale() == "log" and name != "slice":
                ax.xaxis.set_minor_formatter(NullFormatter())  # minor labels collide on short log ranges
        if name == "history":
            fig.axes[0].set_xlabel("trial number")
            fig.axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
        title = f"{search_dir.name}: {TITLES[name]}"
        if name == "slice":  # ours: one figure title, no axes titles
            fig.suptitle(title)
        else:
            for loc in ("left", "right"):  # optuna puts some titles on the left: one title only
                fig.axes[0].set_title("", loc=loc)
            fig.axes[0].set_title(title)
            fig.set_size_inches(8.0, 4.5)
            fig.tight_layout()
        path = search_dir / f"{name}.png"
        png = io.BytesIO()
        fig.savefig(png, format="png", dpi=150, bbox_inches="tight")
        write_bytes_atomic(path, png.getvalue())  # workers sharing a study write their plots at once
        plt.close(fig)
        saved.append(path)
    return saved


# --- the Crowded Valley protocol ------------------------------------------------------------------

BUDGET_NAMES = ("small", "medium", "large")


def run_valley(search_dir: Path, spec: dict, threads: int | None = None):
    """Crowded Valley (Schmidt et al. 2021): per schedule, the optimizer's defaults once ("one-shot")
    against random search with growing budgets; returns the comparison table.

    A budget of N trials is the first N finished trials of one search per
    schedule: for random search that is distributed exactly as a fresh N-trial
    search, so budgets 25/50/75 cost 75 trials, not 150. As in the paper, a
    budget's score is the test accuracy of the trial validation picked.
    """
    import pandas as pd
    from omegaconf import OmegaConf

    rows, trials = [], {}
    for name in spec["schedules"]:
        sub = {k: v for k, v in spec.items() if k not in ("budgets", "schedules")}
        sub["overrides"] = [*spec["overrides"], f"schedule={name}"]
        log.info("crowded valley: schedule %s", name)
        study = run_search(search_dir / name, sub, threads)
        one_shot_dirs = [search_dir / name / "one_shot" / f"seed={seed}" for seed in spec["seeds"]]
        one_shot = [_run_unless_done([*sub["overrides"], f"seed={seed}"], d)
                    for seed, d in zip(spec["seeds"], one_shot_dirs)]
        config = OmegaConf.load(one_shot_dirs[0] / "config.yaml")
        defaults = {key: OmegaConf.select(config, key) for key in parse_space(spec["space"])}  # the one-shot point
        rows += valley_rows(name, one_shot, defaults, study, spec["budgets"])
        trials[name] = [t.value for t in study.get_trials(deepcopy=False) if t.value is not None]
    table = pd.DataFrame(rows)
    write_valley(table, search_dir, spec, trials)
    return table


def _run_unless_done(overrides: list[str], run_dir: Path) -> dict:
    """The run's summary: from disk when it completed before (a resumed protocol), else trained now."""
    summary = read_summary(run_dir)
    if summary is not None and summary["status"] in ("completed", "diverged"):
        return summary
    return run_one(overrides, run_dir)


def valley_rows(schedule: str, one_shot: list[dict], defaults: dict, study, budgets: list[int]) -> list[dict]:
    """One row for one-shot (at `defaults`, the searched keys' values in the one-shot config), one per budget:
    the trial validation picks among the first N, its point, and its test accuracy."""
    from optuna.trial import TrialState

    from optbench.stats import expected_best

    ok = [s for s in one_shot if s["status"] == "completed"]
    rows = [{"schedule": schedule, "budget": "one-shot", "trials": 1, **defaults,
             "val_acc": np.mean([s[METRIC] for s in ok]) if ok else np.nan,
             "test_acc": np.mean([s["test_acc_at_best_val"] for s in ok]) if ok else np.nan,
             "expected_val_acc": np.nan}]
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    finished.sort(key=lambda t: t.number)
    # the budget's validation score is one draw of its best trial; Dodge et al.'s estimator over every
    # finished trial says what that budget gives on average
    values = [t.value for t in finished if t.value is not None]
    names = BUDGET_NAMES if len(budgets) == len(BUDGET_NAMES) else [f"{b} trial{'s' * (b > 1)}" for b in budgets]
    for label, n in zip(names, budgets):
        scored = [t for t in finished[:n] if t.value is not None]
        best = max(scored, key=lambda t: t.value) if scored else None
        rows.append({"schedule": schedule, "budget": f"{label} ({n})" if label in BUDGET_NAMES else label,
                     "trials": min(n, len(finished)), **{k: best.params[k] if best else np.nan for k in defaults},
                     "val_acc": best.value if best else np.nan,
                     "test_acc": best.user_attrs.get("test_acc_mean", np.nan) if best else np.nan,
                     "expected_val_acc": float(expected_best(values, n)) if values else np.nan})
    return rows


def write_valley(table, search_dir: Path, spec: dict, trials: dict | None = None) -> None:
    """valley.csv and valley.md (the table), valley.png (test accuracy against budget, a line per schedule),
    valley_tuning_cost.png (expected best validation accuracy against n, from `trials`: schedule -> values)."""
    from optbench import plots
    from optbench.results import markdown

    table.to_csv(search_dir / "valley.csv", index=False)
    (search_dir / "valley.md").write_text(markdown(table.map(lambda v: f"{v:.4g}" if isinstance(v, float) else v)))
    print(f"\ncrowded valley: {' '.join(spec['overrides']) or 'defaults'}; seeds {spec['seeds']}; "
          "val acc picks the trial, test acc is reported at it; expected_val_acc: the expected best val acc "
          "of a budget of that many trials, from all of the schedule's trials (Dodge et al. 2019)")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    shown = [o for o in spec["overrides"] if not o.startswith(("data.root", "hydra."))]  # paths make titles unreadable
    fig = plots.valley(table, textwrap.fill(f"Crowded Valley: {' '.join(shown) or 'defaults'}", 90))
    fig.savefig(search_dir / "valley.png", dpi=plots.DPI)
    written = ["valley.md", "valley.png"]
    if trials and any(trials.values()):
        fig = plots.tuning_cost({k: np.asarray(v) for k, v in trials.items()}, ["schedule"],
                               "search's trials (each the mean over its seeds)")
        fig.savefig(search_dir / "valley_tuning_cost.png", dpi=plots.DPI)
        written.append("valley_tuning_cost.png")
    print(f"wrote {search_dir / 'valley.csv'}, {', '.join(written)}")


# --- command line ---------------------------------------------------------------------------------


def main(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench search",
        description="Search config keys with Optuna; every trial is an ordinary run directory. "
        "Overrides (e.g. optimizer=sgd trainer.epochs=1) are fixed for every trial.",
    )
    parser.add_argument("--space", help="a preset in optbench/conf/search (see `optbench list`) or a YAML file")
    parser.add_argument("--sampler", choices=SAMPLERS, help=f"default {DEFAULTS['sampler']}")
    parser.add_argument("--trials", type=int, help=f"finished trials wanted in the study (default {TRIALS}; grid: its size)")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help=f"seeds per trial, e.g. 0,1,2 (default {','.join(map(str, DEFAULTS['seeds']))})")
    parser.add_argument("--grid-points", type=int, dest="grid_points", help=f"points per float range for --sampler grid (default {DEFAULTS['grid_points']})")
    parser.add_argument("--final-seeds", type=int, dest="final_seeds", help="rerun the best trial with this many new seeds")
    parser.add_argument("--sampler-seed", type=int, dest="sampler_seed", help=f"seed of the sampler (default {DEFAULTS['sampler_seed']})")
    parser.add_argument("--budgets", type=lambda s: [int(x) for x in s.split(",")],
                        help="crowded_valley: trial budgets compared with one-shot, e.g. 25,50,75")
    parser.add_argument("--dir", help="search directory; an existing one is resumed (default searches/<time>)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--storage", metavar="URL",
                        help="keep the study where workers on other machines share it: "
                        "postgresql://user:password@host/db (optbench[postgres]), mysql+pymysql://... "
                        "(optbench[mysql]) or /shared/PATH.log (a journal file); every worker gives the same --dir, "
                        "which names the study")
    parser.add_argument("--heartbeat", type=int, default=HEARTBEAT, metavar="S",
                        help="database storages: seconds between a running trial's heartbeats; a trial silent for "
                        f"twice that is rerun by another worker (default {HEARTBEAT})")
    parser.add_argument("--workers", type=int, help="submit this many workers with submitit: a SLURM job array "
                        "(local processes where there is no SLURM)")
    parser.add_argument("--cluster", choices=("slurm", "local"), help="submitit's executor for --workers "
                        "(default: slurm where srun is found, else local)")
    parser.add_argument("--submitit", action="append", default=[], metavar="KEY=VALUE",
                        help="a submitit parameter for each worker, e.g. timeout_min=240 slurm_partition=gpu "
                        "gpus_per_node=1 cpus_per_task=4 mem_gb=16 (repeat the flag; "
                        f"default timeout_min={WORKER_TIMEOUT_MIN})")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides fixed for every trial")
    opts = parser.parse_intermixed_args(args)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise UserError("optbench search needs optuna: pip install 'optbench[search]'") from None
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    search_dir = Path(opts.dir or f"searches/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    spec = load_spec(opts.space) if opts.space else {}
    if spec.get("overrides") and opts.overrides:
        opts.overrides = [*spec["overrides"], *opts.overrides]  # the command line adds to (and wins over) the preset
    cli = {k: getattr(opts, k) for k in ("sampler", "trials", "seeds", "grid_points", "final_seeds", "sampler_seed",
                                         "budgets")}
    spec.update({k: v for k, v in cli.items() if v is not None})
    if opts.overrides:
        spec["overrides"] = opts.overrides
    if "space" not in spec and not (search_dir / "search.yaml").exists():
        raise UserError("no search space: pass --space NAME (a preset: see `optbench list`) or --space FILE.yaml")
    if opts.trials is not None and opts.trials < 1:
        raise UserError(f"--trials={opts.trials} must be >= 1")
    check_group_choices(spec.get("overrides", []))
    shared = _shared(opts, search_dir)
    if shared is not None:
        spec["storage"] = masked(shared.url)
    spec = _settle_spec(search_dir, spec)
    if spec["schedules"]:
        if shared is not None or opts.workers:
            raise UserError("the crowded valley protocol runs on one machine (its one-shot runs are not shared "
                            "work): drop --storage and --workers")
        check_group_choices([f"schedule={name}" for name in spec["schedules"]])
        run_valley(search_dir, spec, opts.threads)
        print(f"search directory: {search_dir} (one search per schedule; comparison in valley.csv)")
        return 0
    if opts.workers:
        return submit(search_dir, spec, opts.threads, shared, opts.workers, opts.cluster, _params(opts.submitit))
    study = run_search(search_dir, spec, opts.threads, shared)
    print(f"search directory: {search_dir} ({len(study.trials)} trials; table in trials.csv)")
    return 0


def _shared(opts, search_dir: Path) -> Shared | None:
    """--storage as a Shared study named after --dir; None for the embedded SQLite study."""
    saved = search_dir / "search.yaml"
    saved_storage = (yaml.safe_load(saved.read_text()) or {}).get("storage") if saved.exists() else None
    if opts.storage is None:
        if saved_storage:
            raise UserError(f"{search_dir} keeps its study in {saved_storage}: pass --storage URL (every worker does)")
        return None
    if opts.dir is None:
        raise UserError("--storage needs --dir: every worker gives the same search directory (on a shared file "
                        "system, for the run directories), and the study in the storage is named after it")
    if (search_dir / "study.db").exists():
        raise UserError(f"{search_dir} keeps its study in study.db (SQLite), not in --storage: pick a new --dir")
    if opts.heartbeat < 1:
        raise UserError(f"--heartbeat={opts.heartbeat} must be a whole number of seconds >= 1")
    url = str(Path(opts.storage).resolve()) if is_journal(opts.storage) else opts.storage  # workers in other folders
    return Shared(url, search_dir.resolve().name, opts.heartbeat)


def _params(pairs: list[str]) -> dict:
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

    if workers < 1:
        raise UserError(f"--workers={workers} must be >= 1")
    if shared is None:
        raise UserError("--workers needs --storage, where the workers share the study (a journal file PATH.log on "
                        "a shared file system needs no server); SQLite over a network file system is not safe")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    search_dir = search_dir.resolve()  # jobs may start in another folder
    # made here, before the workers race to create the study and queue the grid
    study = open_study(shared, spec)
    done, todo = _budget(study, parse_space(spec["space"]), spec)
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
    for line in failed:
        print(f"optbench: error: {line}", file=sys.stderr)
    print(f"search directory: {search_dir} ({len(study.trials)} trials; table in trials.csv)")
    return 1 if failed else 0
