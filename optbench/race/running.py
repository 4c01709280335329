"""Running a race: one search per optimizer and study (the search package's, Sobol points queued into it), the
chosen configurations rerun with paired seeds in rounds, and on other model shapes (--shapes).

A race directory holds:
  race.yaml                  the settings; a rerun with the same --dir resumes them (a changed one is refused)
  tuning/<opt>/study<k>/     a search directory (search.yaml, study.db, runs/, trials.csv): its resume is the race's;
                             with --storage its study is kept there instead, named <race dir>/<opt>/study<k>
  tuning/<opt>/extra/        --extend-edges: the same extra budget for every optimizer (widened range if flagged)
  seeds/<opt>/seed=<s>/      the chosen configuration's runs on fresh seeds 1000, 1001, ... (the same for all)
  predictions/<opt>.npz      the first seed run's class for each test image, with the labels
  ledger.csv, verdicts.csv, looks.csv, testset.csv, sensitivity.csv, checkpoints.csv, targets.csv, race.md/.html
"""

import functools
import logging
from pathlib import Path

import numpy as np

from optbench.compose import compose_config
from optbench.race import sequential, spaces
from optbench.results import rundir
from optbench.search.running import enqueue_grid, run_one, run_search, sqlite_study
from optbench.search.settings import settle_spec
from optbench.search.shared import Shared, open_study, submit_workers
from optbench.search.spaces import trial_overrides

log = logging.getLogger(__name__)
FIRST_SEED = 1000  # fresh seeds: the tuning seed (0) chose the configurations
CHANCE = 0.1  # a diverged seed run scores as guessing among 10 classes (it is not left out: that would flatter it)


def search_spec(settings: dict, optimizer: str, space: dict, sampler_seed: int) -> dict:
    """The search package's settings for one optimizer's study. Sampler 'random' is never asked: every trial
    is a queued Sobol point (spaces.sobol_points), so the search runs them in order and resumes them."""
    return {"space": space, "sampler": "random", "trials": settings["trials"], "seeds": [0],
            "sampler_seed": sampler_seed, "overrides": run_overrides(settings, optimizer)}


def run_overrides(settings: dict, optimizer: str) -> list[str]:
    """optimizer=NAME and the race's fixed overrides; a schedule-free optimizer at schedule=constant, as its
    authors run it (its averaging replaces the decay the others get)."""
    fixed = settings["overrides"]
    if schedule_free(optimizer):
        fixed = [*(o for o in fixed if o.split("=", 1)[0].lstrip("+") != "schedule"), "schedule=constant"]
    return [f"optimizer={optimizer}", *fixed]


@functools.cache
def schedule_free(optimizer: str) -> bool:
    from optbench import optimizers  # imports torch: late, so that `optbench race --help` does not

    return optimizers.traits(compose_config([f"optimizer={optimizer}"]).optimizer).schedule_free


def run_study(search_dir: Path, spec: dict, threads: int | None, shared: Shared | None = None, queue: bool = True):
    """Queue the study's Sobol points not yet finished or queued (unless a submitting process did: queue=False),
    then run (or resume) the search; its study in DIR/study.db, or with `shared` on a storage workers share."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    spec = _queued(search_dir, spec, shared, queue)
    # run_search logs its sampler as 'random': it is never asked, every trial is one of these queued points
    log.info("race: %s: %d Sobol points (scramble seed %d)", search_dir, spec["trials"], spec["sampler_seed"])
    return run_search(search_dir, spec, threads, shared)


def _queued(search_dir: Path, spec: dict, shared: Shared | None, queue: bool = True) -> dict:
    """The study's settings settled (every setting checked, the folder made) and, with `queue`, its Sobol points
    (scrambled by its sampler_seed) not yet finished or queued put in its queue."""
    spec = settle_spec(search_dir, {**spec, "storage": shared and shared.url})
    if queue:
        study = open_study(shared, spec) if shared else sqlite_study(search_dir)
        enqueue_grid(study, spaces.sobol_points(spec["space"], spec["trials"], spec["sampler_seed"]))
    return spec


def shared_study(race_dir: Path, settings: dict, search_dir: Path) -> Shared | None:
    """With --storage, a study's place there: named after the race directory and the study's folder in it."""
    if not settings.get("storage"):
        return None
    return Shared(settings["storage"], f"{race_dir.resolve().name}/{search_dir.relative_to(race_dir).as_posix()}")


def finished_trials(study) -> list:
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


def plan(race_dir: Path, settings: dict) -> list[tuple[str, int, Path, dict]]:
    """(optimizer, k, folder, search settings) of every study: the i-th study of every optimizer draws the same
    Sobol cube (seed sampler_seed + i)."""
    return [(name, k, race_dir / "tuning" / name / f"study{k}",
             search_spec(settings, name, settings["spaces"][name], settings["sampler_seed"] + k))
            for name in settings["optimizers"] for k in range(settings["studies"])]


def tune(race_dir: Path, settings: dict, threads: int | None, queue: bool = True) -> dict:
    """Every optimizer's studies, run or resumed: {optimizer: [(study name, space, study)]}."""
    out: dict[str, list] = {name: [] for name in settings["optimizers"]}
    for name, k, directory, spec in plan(race_dir, settings):
        study = run_study(directory, spec, threads, shared_study(race_dir, settings, directory), queue)
        out[name].append((f"study{k}", spec["space"], study))
    return out


def work(race_dir: Path, settings: dict, threads: int | None) -> None:
    """One worker that --workers submits: every study of the race in turn, each shared with the other workers
    (their Sobol points queued by the submitting process)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    tune(race_dir, settings, threads, queue=False)


def submit(race_dir: Path, settings: dict, threads: int | None, workers: int, cluster: str | None,
           params: dict) -> list[str]:
    """The tuning as `workers` submitit jobs (a SLURM array, or local processes) on the shared studies; one line
    per failed job. The seed rounds then run in the submitting process."""
    race_dir = race_dir.resolve()  # jobs may start in another folder
    for _, _, directory, spec in plan(race_dir, settings):  # each point queued once, before workers start
        shared = shared_study(race_dir, settings, directory)
        assert shared is not None  # --workers needs --storage (command.check_workers)
        _queued(directory, spec, shared)
    threads = threads or params.get("cpus_per_task")
    return submit_workers(work, (race_dir, settings, threads), workers, race_dir / ".submitit", cluster, params)


def best_trial(studies: list):
    """(study name, space, trial) of the best COMPLETE trial over an optimizer's studies; None if none completed."""
    return max(((label, space, t) for label, space, study in studies for t in study.get_trials(deepcopy=False)
                if t.value is not None), key=lambda best: best[2].value, default=None)


def best_edges(best, trials: int) -> dict:
    """The edge flags of a best_trial (study name, space, trial) at the grid step of `trials` points; {} for None."""
    return spaces.edges(best[2].params, best[1], trials) if best else {}


def extend(race_dir: Path, settings: dict, studies: dict, threads: int | None) -> dict:
    """--extend-edges: every optimizer gets `trials` more trials (the same extra budget); a flagged one over its
    widened range, the others over their own (a new Sobol scramble, so no point repeats)."""
    seed = settings["sampler_seed"] + settings["studies"]
    for name in settings["optimizers"]:
        wide = spaces.widened(settings["spaces"][name], best_edges(best_trial(studies[name]), settings["trials"]))
        directory = race_dir / "tuning" / name / "extra"
        study = run_study(directory, search_spec(settings, name, wide, seed), threads,
                          shared_study(race_dir, settings, directory))
        studies[name].append(("extra", wide, study))
    return studies


def _run(run_dir: Path, overrides: list[str]) -> dict:
    """A run's summary: a finished run is read, an unfinished one resumed (trainer.resume)."""
    summary = rundir.read_summary(run_dir)
    if summary is None or summary["status"] not in rundir.FINISHED:
        summary = run_one(overrides, run_dir)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt
    return summary


def seed_run(race_dir: Path, settings: dict, name: str, params: dict, seed: int) -> dict:
    """The chosen configuration on one seed."""
    return _run(race_dir / "seeds" / name / f"seed={seed}",
                [*run_overrides(settings, name), *trial_overrides(params), f"seed={seed}"])


def verdict_value(summary: dict | None) -> float:
    """The test accuracy a seed run ends with (the end of the schedule: Wen et al. compare there, and the weights
    the test set's predictions use); a run that did not complete scores chance."""
    if summary is None:
        return CHANCE
    value = (summary.get("final") or {}).get("test_acc", np.nan) if summary["status"] == "completed" else np.nan
    return float(value) if np.isfinite(value) else CHANCE


def seed_rounds(race_dir: Path, settings: dict, chosen: dict) -> dict:
    """Seeds in rounds until every comparison with the leader is resolved or the cap (sequential.run)."""
    names = list(chosen)
    seeds = settings["seeds"]
    counts = sequential.looks(seeds["first"], seeds["step"], seeds["cap"])

    def draw(n: int) -> np.ndarray:
        log.info("seeds: %d per optimizer", n)
        return np.array([[verdict_value(seed_run(race_dir, settings, name, chosen[name], FIRST_SEED + s))
                          for s in range(n)] for name in names])

    return {**sequential.run(draw, counts, settings["alpha"]), "names": names, "counts": counts}


def shape_scores(race_dir: Path, settings: dict, chosen: dict) -> dict:
    """--shapes: each optimizer's chosen configuration (tuned on the race's model) trained on other hidden layer
    shapes with the first round's seeds: {shape: {optimizer: mean verdict value}}, the race's own model first
    (its seed runs, the same seeds). Whether a ranking carries over to another model is the question, so nothing
    is re-tuned there."""
    n = settings["seeds"]["first"]
    out = {"race's model": {name: float(np.mean([verdict_value(rundir.read_summary(path))
                                                 for path in seed_dirs(race_dir, name, n)])) for name in chosen}}
    for shape in settings["shapes"]:
        scores = {}
        for name, params in chosen.items():
            runs = [_run(race_dir / "shapes" / rundir.folder_name(shape) / name / f"seed={FIRST_SEED + s}",
                         [*run_overrides(settings, name), f"model.hidden={shape}", *trial_overrides(params),
                          f"seed={FIRST_SEED + s}"]) for s in range(n)]
            scores[name] = float(np.mean([verdict_value(summary) for summary in runs]))
        out[f"hidden={shape}"] = scores
    return out


def seed_dirs(race_dir: Path, name: str, n: int) -> list[Path]:
    return [race_dir / "seeds" / name / f"seed={FIRST_SEED + s}" for s in range(n)]
