"""Training a claim's groups (one `optbench train -m` per multirun, one `optbench search` per search seed) and
reading its runs back, grouped and measured."""

import itertools
import logging
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path

import numpy as np
import yaml

from optbench.errors import UserError
from optbench.lectures.catalogue import experiment, override_key
from optbench.lectures.measures import QUANTITIES, WAY_OUT
from optbench.results import rundir


def multiruns(groups: dict) -> list[tuple[str, list[str]]]:
    """(folder below runs/, overrides) of each `optbench train -m` the groups need. Groups that differ in one key
    only train as one multirun sweeping it (`optimizer=sgd,momentum`): one process, and the launcher vectorizes
    across groups as well as seeds where it can. Otherwise one per group."""
    lists = list(groups.values())
    shared = [line for line in lists[0] if all(line in other for other in lists[1:])]
    rest = [[line for line in lines if line not in shared] for lines in lists]
    keys = {override_key(r[0]) for r in rest if len(r) == 1}
    values = [r[0].split("=", 1)[1] for r in rest if len(r) == 1]
    if all(len(r) == 1 for r in rest) and len(keys) == 1 and not any("," in v or "[" in v for v in values):
        return [("all", [*shared, f"{keys.pop()}={','.join(values)}"])]
    return list(groups.items())


def train(claim: dict, out: Path, scale: str = "default", extra=()) -> bool:
    """Train every group of `claim` below out/<claim>/runs/; False when a multirun (or a search) failed."""
    groups, seeds = experiment(claim, scale, extra)
    if "search" in claim:
        # a list, not a generator: one failed search must not keep the others from running
        return all([_search(claim, out, scale, extra, group, spec, seed)
                    for group, spec in groups.items() for seed in seeds])
    ok = True
    for folder, overrides in multiruns(groups):
        sweep_dir = out / claim["name"] / "runs" / folder
        command = [sys.executable, "-m", "optbench", "train", "-m", *overrides,
                   f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={sweep_dir}"]

        def multirun(stream, command=command):
            return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode

        ok &= _logged(" ".join(command), multirun, sweep_dir, f"{claim['name']}/{folder}: {len(seeds)} seeds")
    return ok


def _logged(command: str, run, folder: Path, what: str) -> bool:
    """run(stream) -> exit code, with `command` and then its output in folder/lectures.log; one line saying how
    long it took or that it failed."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(folder / "lectures.log", "w") as stream:
        stream.write(command + "\n")
        stream.flush()
        code = run(stream)
    print(f"  {what} in {time.perf_counter() - started:.1f} s"
          + ("" if code == 0 else f", FAILED (exit {code}; see {folder / 'lectures.log'})"))
    return code == 0


def search_dir(claim: dict, out: Path, scale: str, extra, group: str, seed: int) -> Path:
    """out/<claim>/runs/<group>[,<scale>][,<extra overrides>]/seed=<s>: another scale or other command-line
    overrides are another search (a search directory refuses new settings), where-to-run settings are not."""
    tags = [scale] * (scale != "default") + [e for e in extra if override_key(e) not in rundir.RUN_SETTINGS]
    return out / claim["name"] / "runs" / rundir.folder_name(",".join([group, *tags])) / f"seed={seed}"


def _search(claim: dict, out: Path, scale: str, extra, group: str, spec: dict, seed: int) -> bool:
    """One whole `optbench search` of `group` as repeat `seed` (the training seed and the sampler's seed), in
    this process: a search composes each trial as the command line would, and a fresh interpreter per search
    cost 8 s of imports, more than its 16 short trials."""
    from optbench import search

    folder = search_dir(claim, out, scale, extra, group, seed)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "space.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    args = ["--space", str(folder / "space.yaml"), "--dir", str(folder / "search"), "--seeds", str(seed),
            "--sampler-seed", str(seed)]

    def in_process(stream) -> int:
        with _output_to(stream):
            try:
                return search.main(args)
            except UserError as e:
                print(f"optbench: error: {e}")
                return 2
            except Exception:  # noqa: BLE001 - the traceback goes to the search's log, the claim is reported failed
                traceback.print_exc(file=sys.stdout)
                return 1

    return _logged(" ".join(["optbench", "search", *args]), in_process, folder,
                   f"{claim['name']}/{group} seed {seed}: {spec.get('trials')} trials")


@contextmanager
def _output_to(stream):
    """Print, tqdm and logging (at INFO, as the command line shows it) into `stream` for the duration."""
    root = logging.getLogger()
    handler, level = logging.StreamHandler(stream), root.level
    root.addHandler(handler)  # before search.main's logging.basicConfig, which then adds nothing
    root.setLevel(logging.INFO)
    try:
        with redirect_stdout(stream), redirect_stderr(stream):
            yield
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


def group_of(run_overrides: list[str], groups: dict) -> str | None:
    """The group whose overrides are the run's, its seed and where it ran aside (compared as Hydra parses them:
    1e-3 is 0.001): a run trained with other command-line overrides belongs to no group of this command."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def parsed(lines):
        return {(o.key_or_group, str(o.value())) for o in parser.parse_overrides(list(lines))
                if o.key_or_group not in rundir.NOT_FACTORS}

    have = parsed(run_overrides)
    found = [g for g, lines in groups.items() if parsed(lines) == have]
    return found[0] if len(found) == 1 else None


def load_claim_runs(claim: dict, out: Path, scale: str = "default", extra=(),
                    damaged: list | None = None) -> list[dict]:
    """Every run below out/<claim>/runs/ that belongs to one of the claim's groups at `scale` with the command
    line's `extra` overrides: group, seed, status, summary, config and metrics. A search claim's runs are its
    searches' trials, each with the seed of its search and its trial number. A run with a damaged file is
    left out, one warning naming the file, and its message appended to `damaged`."""
    groups, seeds = experiment(claim, scale, extra)
    runs = []
    if "search" in claim:
        for group, seed in itertools.product(groups, seeds):
            for run_dir in _run_dirs(search_dir(claim, out, scale, extra, group, seed) / "search" / "runs"):
                run = _unless_damaged(damaged, read_run, run_dir)
                if run is not None:
                    runs.append({**run, "group": group, "seed": seed, "trial": int(run_dir.name.split("_", 1)[0])})
        return runs
    for run_dir in _run_dirs(out / claim["name"] / "runs"):
        group = _unless_damaged(damaged, lambda d: group_of(_overrides(d), groups), run_dir)
        run = _unless_damaged(damaged, read_run, run_dir) if group is not None else None
        if run is not None:
            runs.append({**run, "group": group, "seed": run["config"].get("seed")})
    return runs


def _unless_damaged(damaged: list | None, read, *args):
    """read(*args), or None with a one-line warning (its message appended to `damaged`) when a file of a run is
    damaged."""
    try:
        return read(*args)
    except rundir.DamagedFile as e:
        if damaged is not None:
            damaged.append(str(e))
        print(f"optbench: warning: skipped a damaged run: {e}", file=sys.stderr)
        return None


def _overrides(run_dir: Path) -> list[str]:
    """The overrides Hydra saved for the run ([] when there is no such file)."""
    path = run_dir / ".hydra" / "overrides.yaml"
    try:
        lines = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return []
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise rundir.DamagedFile(path, f"cannot be read ({type(e).__name__})", WAY_OUT) from None
    if lines is not None and not (isinstance(lines, list) and all(isinstance(x, str) for x in lines)):
        raise rundir.DamagedFile(path, "is not a list of overrides", WAY_OUT)
    return lines or []


def _run_dirs(folder: Path) -> list[Path]:
    return sorted(p.parent for p in folder.rglob(rundir.SUMMARY))


def read_run(run_dir: Path) -> dict:
    """One run's summary, config (plain dicts), metrics and status; DamagedFile when one of them is damaged."""
    import pandas as pd
    from omegaconf import OmegaConf

    summary = rundir.read_summary(run_dir) or {}
    config = rundir.read_config(run_dir)
    metrics = rundir.read_metrics(run_dir) if (run_dir / rundir.METRICS).exists() else pd.DataFrame(
        columns=rundir.COLUMNS)
    return {"dir": str(run_dir), "summary": summary, "metrics": metrics, "status": rundir.status(run_dir, summary),
            "config": OmegaConf.to_container(config) if config is not None else {}}


def measure(claim: dict, runs: list[dict], damaged: list | None = None) -> dict:
    """group -> Series(seed -> the claim's quantity) over the finished runs (completed or diverged); for a
    search claim, over the searches that finished their budget, each read at its chosen trial. A run whose
    quantity needs a damaged file (a checkpoint) is left out with a warning, as load_claim_runs does."""
    import pandas as pd

    function = QUANTITIES[claim["quantity"]][0]
    values = {}
    for group in claim["groups"]:
        mine = [r for r in runs if r["group"] == group and r["status"] in rundir.FINISHED]
        if "search" in claim:  # chosen_trials is in seed order; an unfinished search is NaN
            found = {seed: np.nan if trial is None else _unless_damaged(damaged, function, trial, claim)
                     for (_, seed), trial in chosen_trials(claim, mine).items()}
        else:
            found = {r["seed"]: _unless_damaged(damaged, function, r, claim) for r in mine}
        found = {s: v for s, v in found.items() if v is not None}
        values[group] = pd.Series(list(found.values()), index=list(found), dtype=float)
    return values


def chosen_trials(claim: dict, runs: list[dict]) -> dict:
    """(group, seed) -> the trial run that search chose, or None (chosen_trial); the budget is the same at every
    scale, so the default scale's settings tell it."""
    specs = experiment(claim)[0]
    return {(g, s): chosen_trial([r for r in runs if (r["group"], r["seed"]) == (g, s)], specs[g])
            for g, s in sorted({(r["group"], r["seed"]) for r in runs})}


def chosen_trial(trials: list[dict], spec: dict) -> dict | None:
    """The trial run a finished search chose (the highest best validation accuracy of its completed trials, as
    `optbench search` scores one seed per trial); None while the search has fewer finished trials than its
    budget. A diverged trial counts to the budget, as the search prunes it."""
    from optbench import search

    completed = [t for t in trials if t["status"] == "completed"]
    if len({t["trial"] for t in trials}) < search.budget(search.parse_space(spec["space"]),
                                                         {**search.DEFAULTS, **spec}) or not completed:
        return None
    return max(completed, key=lambda t: t["summary"]["best_val_acc"])

