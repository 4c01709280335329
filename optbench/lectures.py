"""`optbench lectures`: the lecture notes' claims, each with the experiment that tests it and a verdict.

The catalogue is conf/lectures/<claim>.yaml: the quotation and the lecture
file it comes from, the groups to train (each a list of `optbench train`
overrides, on top of the claim's shared ones), the seeds and the budget,
the quantity that decides the claim and the predicted direction
("momentum > sgd": momentum's value is the higher). Each group trains as
one real `optbench train -m ... seed=0,...` multirun in its own folder
(vectorized over the seeds by the launcher, re-runs skip finished runs),
in a fresh interpreter so that every claim gets Hydra as the command line
does. The verdict per prediction is stats.compare's paired test over the
shared seeds: supported (resolved in the predicted direction), not
supported (resolved the other way) or not resolved, with the seeds a study
would need.

A claim about searching (random against grid search) has a `search` block
(an `optbench search` space and budget) and groups that are search settings
(`sampler: grid`) instead of overrides: each seed is one whole
`optbench search` per group, in its own folder and resumable, and the
quantity is read at the trial the search chose on validation accuracy.

Nothing here imports torch at module level; cli.py imports this module
only when `optbench lectures` is called.
"""

import base64
import html
import json
import math
import re
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from optbench.compose import CONF
from optbench.errors import UserError

CATALOGUE = CONF / "lectures"
SCALES = ("default", "full")
OUT = "lectures"
KEYS = {"quote", "lecture", "condition", "overrides", "groups", "seeds", "quantity", "predict", "combine", "target",
        "x", "full", "search"}
# what a search claim's group may set: the rest of the search is the claim's (`search`, `overrides`, the seeds)
SEARCH_GROUP_KEYS = ("sampler", "grid_points", "trials", "space")
# quantities read from one run's summary, so that a search's chosen trial gives them
SEARCH_QUANTITIES = ("best_val_acc", "test_acc")
X_AXES = ("step", "epoch", "examples", "layer")
REQUIRED = ("quote", "lecture", "groups", "seeds", "quantity", "predict")
COMBINE = ("all", "any")
# outcome of one prediction, and what the claim's verdict reads
SUPPORTED, OPPOSITE, UNRESOLVED = "supported", "not supported", "not resolved"


# --- the catalogue ---------------------------------------------------------------------------------------------


def names(catalogue: Path = CATALOGUE) -> list[str]:
    return sorted(p.stem for p in Path(catalogue).glob("*.yaml"))


def load(name: str, catalogue: Path = CATALOGUE) -> dict:
    """One claim from `catalogue`, checked: every key known, every group the predictions name defined."""
    import yaml

    path = Path(catalogue) / f"{name}.yaml"
    if not path.is_file():
        from optbench.compose import suggest

        raise UserError(f"no claim {name!r} in {catalogue}{suggest(name, names(catalogue))}; "
                        "`optbench lectures list` shows them")
    try:
        claim = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise UserError(f"{path} is not valid YAML: {' '.join(str(e).split())}") from None
    unknown = set(claim) - KEYS
    missing = [k for k in REQUIRED if k not in claim]
    if unknown or missing:
        raise UserError(f"{path}: " + "; ".join(
            ([f"unknown keys {sorted(unknown)}"] if unknown else []) + ([f"missing keys {missing}"] if missing else [])))
    if claim["quantity"] not in QUANTITIES:
        raise UserError(f"{path}: quantity {claim['quantity']!r} is not one of {', '.join(QUANTITIES)}")
    if claim.get("x", "step") not in X_AXES:
        raise UserError(f"{path}: x {claim['x']!r} must be one of {', '.join(X_AXES)}")
    claim.setdefault("combine", "all")
    if claim["combine"] not in COMBINE:
        raise UserError(f"{path}: combine {claim['combine']!r} must be one of {', '.join(COMBINE)}")
    claim["predict"] = [parse_prediction(p, claim["groups"], path) for p in claim["predict"]]
    if "search" in claim:
        _check_search_claim(claim, path)
    claim.update(name=name, path=str(path), description=_first_comment(path))
    return claim


def parse_prediction(text: str, groups: dict, path) -> tuple[str, str, str]:
    """'a > b' -> ('a', '>', 'b'): group a's quantity is predicted higher than group b's."""
    found = re.fullmatch(r"\s*(\S+)\s*([<>])\s*(\S+)\s*", str(text))
    if not found or found[1] not in groups or found[3] not in groups:
        raise UserError(f"{path}: prediction {text!r} must read 'GROUP > GROUP' or 'GROUP < GROUP' "
                        f"with groups among {', '.join(groups)}")
    return found[1], found[2], found[3]


def _check_search_claim(claim: dict, path) -> None:
    if not isinstance(claim["search"], dict) or "space" not in claim["search"]:
        raise UserError(f"{path}: search must be a mapping with a space (as `optbench search --space` files hold)")
    if claim["quantity"] not in SEARCH_QUANTITIES:
        raise UserError(f"{path}: a search claim's quantity is read at the chosen trial: one of "
                        f"{', '.join(SEARCH_QUANTITIES)}")
    for group, settings in claim["groups"].items():
        unknown = set(settings or {}) - set(SEARCH_GROUP_KEYS) if isinstance(settings, dict) else None
        if unknown is None or unknown:
            raise UserError(f"{path}: group {group} of a search claim sets search settings among "
                            f"{', '.join(SEARCH_GROUP_KEYS)}" + (f", not {sorted(unknown)}" if unknown else ""))


def _first_comment(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def experiment(claim: dict, scale: str = "default", extra=()) -> tuple[dict, list[int]]:
    """(group -> its full override list, seeds) at `scale`; 'full' adds the claim's `full` block on top, and
    `extra` (the command line's overrides) wins over both. A search claim's group is its search's settings."""
    bigger = claim.get("full") or {} if scale == "full" else {}
    seeds = list(range(int(bigger.get("seeds", claim["seeds"]))))
    shared = [*(claim.get("overrides") or []), *(bigger.get("overrides") or [])]
    if "search" in claim:
        return {g: {**claim["search"], **(settings or {}), "overrides": merge_overrides(shared, list(extra))}
                for g, settings in claim["groups"].items()}, seeds
    return {g: merge_overrides(shared, list(o or []), list(extra)) for g, o in claim["groups"].items()}, seeds


def override_key(line: str) -> str:
    return line.split("=", 1)[0].lstrip("+~")


def merge_overrides(*lists) -> list[str]:
    """Later lists win per key: Hydra refuses the same key twice on one command line."""
    merged = {}
    for lines in lists:
        for line in lines:
            merged.pop(override_key(line), None)
            merged[override_key(line)] = line
    return list(merged.values())


# --- training -----------------------------------------------------------------------------------------------------


def multiruns(groups: dict) -> list[tuple[str, list[str]]]:
    """(folder below runs/, overrides) of each `optbench train -m` the groups need.

    Groups that differ in one key only train as one multirun sweeping it
    (`optimizer=sgd,momentum`): one process, and the launcher vectorizes
    across groups as well as seeds where it can. Otherwise one per group.
    """
    lists = list(groups.values())
    shared = [line for line in lists[0] if all(line in other for other in lists[1:])]
    rest = [[line for line in lines if line not in shared] for lines in lists]
    keys = {override_key(r[0]) for r in rest if len(r) == 1}
    values = [r[0].split("=", 1)[1] for r in rest if len(r) == 1]
    if all(len(r) == 1 for r in rest) and len(keys) == 1 and not any("," in v or "[" in v for v in values):
        return [("all", [*shared, f"{keys.pop()}={','.join(values)}"])]
    return list(groups.items())


def train(claim: dict, out: Path, scale: str = "default", extra=(), log=print) -> bool:
    """Train every group of `claim` below out/<claim>/runs/; False when a multirun (or a search) failed."""
    groups, seeds = experiment(claim, scale, extra)
    if "search" in claim:
        return all(_search(claim, out, scale, extra, group, spec, seed, log)
                   for group, spec in groups.items() for seed in seeds)
    ok = True
    for folder, overrides in multiruns(groups):
        sweep_dir = out / claim["name"] / "runs" / folder
        command = [sys.executable, "-m", "optbench", "train", "-m", *overrides,
                   f"seed={','.join(map(str, seeds))}", f"hydra.sweep.dir={sweep_dir}"]

        def multirun(stream, command=command):
            return subprocess.run(command, stdout=stream, stderr=subprocess.STDOUT).returncode

        ok &= _logged(" ".join(command), multirun, sweep_dir, f"{claim['name']}/{folder}: {len(seeds)} seeds", log)
    return ok


def _logged(command: str, run, folder: Path, what: str, log) -> bool:
    """run(stream) -> exit code, with `command` and then its output in folder/lectures.log; one line saying how
    long it took or that it failed."""
    folder.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with open(folder / "lectures.log", "w") as stream:
        stream.write(command + "\n")
        stream.flush()
        code = run(stream)
    log(f"  {what} in {time.perf_counter() - started:.1f} s"
        + ("" if code == 0 else f", FAILED (exit {code}; see {folder / 'lectures.log'})"))
    return code == 0


def search_dir(claim: dict, out: Path, scale: str, extra, group: str, seed: int) -> Path:
    """out/<claim>/runs/<group>[,full][,<extra overrides>]/seed=<s>: another scale or other command-line
    overrides are another search (a search directory refuses new settings), where-to-run settings are not."""
    from optbench.results import RUN_SETTINGS

    tags = ["full"] * (scale == "full") + [e for e in extra if override_key(e) not in RUN_SETTINGS]
    return out / claim["name"] / "runs" / ",".join([group, *tags]).replace("/", "-") / f"seed={seed}"


def _search(claim: dict, out: Path, scale: str, extra, group: str, spec: dict, seed: int, log) -> bool:
    """One whole `optbench search` of `group` as repeat `seed` (the training seed and the sampler's seed), in
    this process: a search composes each trial as the command line would, and a fresh interpreter per search
    cost 8 s of imports, more than its 16 short trials."""
    import yaml

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
                import traceback

                traceback.print_exc(file=sys.stdout)
                return 1

    return _logged(" ".join(["optbench", "search", *args]), in_process, folder,
                   f"{claim['name']}/{group} seed {seed}: {spec.get('trials')} trials", log)


@contextmanager
def _output_to(stream):
    """Print, tqdm and logging (at INFO, as the command line shows it) into `stream` for the duration."""
    import logging
    from contextlib import redirect_stderr, redirect_stdout

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

    from optbench.results import NOT_FACTORS

    parser = OverridesParser.create()

    def parsed(lines):
        return {(o.key_or_group, str(o.value())) for o in parser.parse_overrides(list(lines))
                if o.key_or_group not in NOT_FACTORS}

    have = parsed(run_overrides)
    found = [g for g, lines in groups.items() if parsed(lines) == have]
    return found[0] if len(found) == 1 else None


# --- the quantities ---------------------------------------------------------------------------------------------
# each: (run: summary, config and metrics of one run, claim) -> float; NaN where a run cannot give it


def _evaluations(metrics, split: str, metric: str):
    rows = metrics[(metrics.split == split) & (metrics.metric == metric)]
    return rows.groupby("step")["value"].last()


def _final(key):
    return lambda run, claim: float(run["summary"].get("final", {}).get(key, np.nan))


def _summary(key):
    return lambda run, claim: float(run["summary"].get(key) if run["summary"].get(key) is not None else np.nan)


def train_val_gap(run, claim) -> float:
    """Training minus validation accuracy at the last evaluation: how much of the fit does not carry over."""
    final = run["summary"].get("final", {})
    return float(final.get("train_acc", np.nan)) - float(final.get("val_acc", np.nan))


def batch_size(run) -> int:
    """The run's batch size; null is the whole training split (MNIST's 60k training images less validation)."""
    size = run["config"]["trainer"]["batch_size"]
    return int(size) if size else 60000 - int(run["config"]["data"]["val_size"])


def examples_to_target(run, claim) -> float:
    """Training examples seen (steps x batch size) at the first evaluation with validation accuracy >= target."""
    acc = _evaluations(run["metrics"], "val", "acc")
    reached = acc[acc >= claim["target"]]
    return float(reached.index[0] * batch_size(run)) if len(reached) else np.nan


def loss_rise(run, claim) -> float:
    """How far the learning curve climbs: the sum of the rises of log(training loss) from one evaluation to
    the next (the whole-split loss, free of mini-batch noise), up to a non-finite loss. A curve that only
    falls scores 0; each doubling on the way up adds log 2 = 0.69, however often the curve swings."""
    loss = _evaluations(run["metrics"], "train", "loss").to_numpy(float)
    if (~np.isfinite(loss)).any():
        loss = loss[: np.argmax(~np.isfinite(loss))]
    return float(np.clip(np.diff(np.log(loss)), 0, None).sum()) if len(loss) > 1 else np.nan


def _layer_series(metrics, prefix: str, step: int = 0) -> np.ndarray:
    """Per hidden layer, in order, the diagnostic `prefix`/fc<i> at `step` (0: the initial weights)."""
    rows = metrics[(metrics.split == "diag") & metrics.metric.str.startswith(prefix + "/") & (metrics.step == step)]
    by_layer = {int(m.rsplit("fc", 1)[1]): v for m, v in zip(rows.metric, rows.value)}
    return np.array([by_layer[i] for i in sorted(by_layer)])


def act_std_drift(run, claim) -> float:
    """|log2(std of the last hidden layer's activations / std of the first's)| at initialisation: 0 when
    the variance stays the same across layers (the lectures' rule), 1 per halving or doubling."""
    std = _layer_series(run["metrics"], "act_std")
    return float(abs(np.log2(std[-1] / std[0]))) if len(std) > 1 and std[0] > 0 and std[-1] > 0 else np.nan


def saturated_at_init(run, claim) -> float:
    """Mean over hidden layers of the fraction of (image, unit) pairs whose sigmoid/tanh is saturated, at step 0."""
    values = _layer_series(run["metrics"], "saturated")
    return float(values.mean()) if len(values) else np.nan


def update_shrink(run, claim) -> float:
    """Size of the last step's update at the last evaluation over that at the first one after step 0,
    summed over layers: 1 when the step size holds, near 0 when the learning rate vanishes."""
    rows = run["metrics"][(run["metrics"].split == "diag") & run["metrics"].metric.str.startswith("update_size/")]
    per_step = rows.groupby("step")["value"].sum()
    per_step = per_step[per_step.index > 0]
    return float(per_step.iloc[-1] / per_step.iloc[0]) if len(per_step) > 1 and per_step.iloc[0] > 0 else np.nan


# rows of a weight matrix this close (relative to its largest entry) count as one unit: float32 rounding
# separates units that started equal by ~1e-4 in 200 steps, random initial weights differ by O(1)
TOLERANCE = 1e-2


def distinct_units(run, claim) -> float:
    """Distinct hidden units in the first layer of the trained network: rows of its weights and bias that
    differ somewhere by more than TOLERANCE of the largest weight. Units that never broke symmetry count once."""
    import torch

    state = torch.load(Path(run["dir"]) / "checkpoint.pt", map_location="cpu", weights_only=False)["model"]
    weight = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 2)
    bias = next(v for k, v in state.items() if k.endswith("bias"))
    rows = torch.cat([weight, bias[:, None]], 1).double().numpy()
    tolerance = TOLERANCE * max(float(np.abs(rows).max()), 1e-12)
    kept = []  # one row per group of rows within the tolerance of each other (rounding would split near-ties)
    for row in rows:
        if not any(np.abs(row - other).max() <= tolerance for other in kept):
            kept.append(row)
    return float(len(kept))


# name -> (function, label on the figure, the learning curve drawn beside it: (split, metric, x, log y))
QUANTITIES = {
    "best_val_acc": (_summary("best_val_acc"), "best validation accuracy", ("val", "acc", "step", False)),
    "test_acc": (_summary("test_acc_at_best_val"), "test accuracy at the best validation",
                 ("val", "acc", "step", False)),
    "final_train_loss": (_final("train_loss"), "final training loss", ("train", "loss", "step", True)),
    "train_val_gap": (train_val_gap, "train - validation accuracy (last evaluation)", ("val", "acc", "step", False)),
    "examples_to_target": (examples_to_target, "training examples to reach the target validation accuracy",
                           ("val", "acc", "examples", False)),
    "loss_rise": (loss_rise, "total rise of log(training loss) between evaluations", ("train", "loss", "step", True)),
    "act_std_drift": (act_std_drift, "|log2(act std last layer / first layer)| at init", ("diag", "act_std", "layer", True)),
    "saturated_at_init": (saturated_at_init, "saturated fraction of sigmoid units at init",
                          ("diag", "saturated", "layer", False)),
    "update_shrink": (update_shrink, "update size at the end / after the first evaluation",
                      ("diag", "update_size", "step", True)),
    "distinct_units": (distinct_units, "distinct units in the first hidden layer after training",
                       ("val", "acc", "step", False)),
}


def load_claim_runs(claim: dict, out: Path, scale: str = "default", extra=()) -> list[dict]:
    """Every run below out/<claim>/runs/ that belongs to one of the claim's groups at `scale` with the command
    line's `extra` overrides: group, seed, status, summary, config and metrics. A search claim's runs are its
    searches' trials, each with the seed of its search and its trial number."""
    import yaml

    groups, seeds = experiment(claim, scale, extra)
    if "search" in claim:
        return [{**_read_run(run_dir), "group": group, "seed": seed, "trial": int(run_dir.name.split("_", 1)[0])}
                for group in groups for seed in seeds
                for run_dir in _run_dirs(search_dir(claim, out, scale, extra, group, seed) / "search" / "runs")]
    runs = []
    for run_dir in _run_dirs(out / claim["name"] / "runs"):
        overrides = run_dir / ".hydra" / "overrides.yaml"
        group = group_of(yaml.safe_load(overrides.read_text()) or [], groups) if overrides.exists() else None
        if group is not None:
            run = _read_run(run_dir)
            runs.append({**run, "group": group, "seed": run["config"].get("seed")})
    return runs


def _run_dirs(folder: Path) -> list[Path]:
    from optbench.results import SUMMARY

    return sorted(p.parent for p in folder.rglob(SUMMARY))


def _read_run(run_dir: Path) -> dict:
    import pandas as pd
    import yaml

    from optbench.results import rundir

    summary = rundir.read_summary(run_dir) or {}
    config = yaml.safe_load((run_dir / "config.yaml").read_text()) if (run_dir / "config.yaml").exists() else {}
    metrics = rundir.read_metrics(run_dir) if (run_dir / rundir.METRICS).exists() else pd.DataFrame(
        columns=rundir.COLUMNS)
    return {"dir": str(run_dir), "summary": summary, "config": config, "metrics": metrics,
            "status": rundir.status(run_dir, summary)}


def measure(claim: dict, runs: list[dict]) -> dict:
    """group -> Series(seed -> the claim's quantity) over the finished runs (completed or diverged); for a
    search claim, over the searches that finished their budget, each read at its chosen trial."""
    import pandas as pd

    from optbench.results import FINISHED

    function = QUANTITIES[claim["quantity"]][0]
    values = {}
    for group in claim["groups"]:
        mine = [r for r in runs if r["group"] == group and r["status"] in FINISHED]
        if "search" in claim:
            chosen = chosen_trials(claim, mine)
            seeds = sorted(seed for _, seed in chosen)
            values[group] = pd.Series([np.nan if chosen[group, s] is None else function(chosen[group, s], claim)
                                       for s in seeds], index=seeds, dtype=float)
        else:
            values[group] = pd.Series([function(r, claim) for r in mine], index=[r["seed"] for r in mine],
                                      dtype=float)
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


# --- the verdict -----------------------------------------------------------------------------------------------


def judge(claim: dict, values: dict, level: float | None = None) -> dict:
    """Per group: mean and t-interval; per prediction: the paired comparison and its outcome; the verdict.

    combine 'all': supported when every prediction is resolved as predicted, not supported when any is
    resolved the other way. 'any' (Holm-corrected over the predictions): supported when one is resolved as
    predicted, not supported when all are resolved the other way. Otherwise not resolved at this many seeds.
    """
    from optbench.results import stats

    level = stats.LEVEL if level is None else level
    groups = []
    for g, v in values.items():
        low, high, _ = stats.mean_interval(v, level)
        groups.append({"group": g, "n": int(v.notna().sum()), "mean": float(v.mean()) if v.notna().any() else np.nan,
                       "low": low, "high": high, "values": [None if math.isnan(x) else x for x in v.tolist()]})
    m = len(claim["predict"]) if claim["combine"] == "any" else 1
    rows = [{"a": a, "op": op, "b": b, **stats.compare(values[a], values[b], level, comparisons=m)}
            for a, op, b in claim["predict"]]
    pvalues = [r["p"] for r in rows]
    adjusted = stats.holm(pvalues) if claim["combine"] == "any" else np.asarray(pvalues, float)
    # each interval at the level its prediction is tested at, so it excludes 0 exactly when resolved
    alphas = stats.holm_alphas(pvalues, 1 - level) if claim["combine"] == "any" else np.full(len(rows), 1 - level)
    for row, p, alpha in zip(rows, adjusted, alphas):
        sign = 1 if row["op"] == ">" else -1
        resolved = bool(np.isfinite(p) and p <= 1 - level)
        row["p_adjusted"] = float(p)
        if np.isfinite(alpha):
            row["low"], row["high"] = map(float, stats.t_interval(row["difference"], row["se"], row["df"], alpha))
            row["interval_level"] = float(1 - alpha)
        row["outcome"] = (UNRESOLVED if not resolved or row["difference"] == 0 else
                          SUPPORTED if sign * row["difference"] > 0 else OPPOSITE)
    outcomes = [r["outcome"] for r in rows]
    if claim["combine"] == "all":
        verdict = SUPPORTED if all(o == SUPPORTED for o in outcomes) else OPPOSITE if OPPOSITE in outcomes else UNRESOLVED
    else:
        verdict = SUPPORTED if SUPPORTED in outcomes else OPPOSITE if all(o == OPPOSITE for o in outcomes) else UNRESOLVED
    needed = [r["seeds_needed"] for r in rows if r["outcome"] == UNRESOLVED]
    return {"groups": groups, "comparisons": rows, "verdict": verdict, "level": level,
            "seeds_needed": max(needed) if needed else None}


def verdict_text(result: dict) -> str:
    """'supported', 'not supported', or 'not resolved at 6 seeds (~14 would resolve it)'."""
    if result["verdict"] != UNRESOLVED:
        return result["verdict"]
    seeds = max((r["seeds"] or min(r["n_a"], r["n_b"]) for r in result["comparisons"]), default=0)
    needed = result["seeds_needed"]
    if needed is None or not np.isfinite(needed):
        would = "no difference to resolve" if needed is not None and all(
            r["difference"] == 0 for r in result["comparisons"]) else "more than 1000 seeds would be needed"
    else:
        would = f"~{needed:.0f} would resolve it"
    return f"not resolved at {seeds} seeds ({would})"


def comparison_text(row: dict, label: str) -> str:
    """'momentum > sgd (best val acc): difference +0.0123 [+0.0100, +0.0150], paired t p = 0.0021 (sign-flip
    0.031) over 6 paired seeds: supported'."""
    if row["test"] == "none":
        return f"{row['a']} {row['op']} {row['b']}: too few runs to compare"
    over = f"{row['seeds']} paired seeds" if row["paired"] else f"{row['n_a']} vs {row['n_b']} runs"
    return (f"{row['a']} {row['op']} {row['b']} ({label}): difference {_num(row['difference'], True)} "
            f"[{_num(row['low'], True)}, {_num(row['high'], True)}], {row['test']} p = {row['p']:.2g}"
            + (f" (Holm {row['p_adjusted']:.2g})" if row["p_adjusted"] != row["p"] else "")
            + (f" (sign-flip {row['p_sign_flip']:.2g})" if row["paired"] and "p_sign_flip" in row else "")
            + f" over {over}: {row['outcome']}")


def _num(x, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    text = f"{x:+.4g}" if signed else f"{x:.4g}"
    return text


# --- figure, page ------------------------------------------------------------------------------------------------


def figure(claim: dict, result: dict, runs: list[dict]):
    """Left: the quantity per group (each seed a dot, the mean and its interval); right: the curve it comes from."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, label, (split, metric, x, log_y) = QUANTITIES[claim["quantity"]]
    x = claim.get("x", x)  # a claim compared at equal epochs draws its curves per epoch
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [1, 1.4]})
    for i, g in enumerate(result["groups"]):
        colour = colours[i % len(colours)]
        values = [v for v in g["values"] if v is not None]
        left.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values, color=colour, alpha=0.5,
                     s=18, zorder=2)
        if np.isfinite(g["mean"]):
            low, high = g["low"], g["high"]
            err = [[g["mean"] - low], [high - g["mean"]]] if np.isfinite(low) else None
            left.errorbar([i + 0.3], [g["mean"]], yerr=err, fmt="o", color="black", capsize=5, zorder=3)
    left.set_xticks(range(len(result["groups"])), [g["group"] for g in result["groups"]])
    left.set_xlim(-0.5, len(result["groups"]) - 0.3)
    if claim.get("target"):
        label += f" {claim['target']:g}"
    left.set_ylabel("\n".join(textwrap.wrap(label, 38)))
    left.set_title(f"per seed (dots), mean and {100 * result['level']:g}% interval (black)", fontsize=10)
    left.grid(alpha=0.3)
    if "search" in claim:
        _trials_panel(right, claim, runs, colours)
    else:
        _curves_panel(right, claim, runs, colours, split, metric, x, log_y)
    verdict = verdict_text(result)
    fig.suptitle(f"{claim['name']}: {verdict}\n\u201c" + textwrap.shorten(" ".join(claim["quote"].split()), 110)
                 + f"\u201d ({claim['lecture'][:3]})", fontsize=11)
    fig.tight_layout()
    return fig


def _curves_panel(right, claim: dict, runs: list[dict], colours, split: str, metric: str, x: str, log_y: bool):
    """The learning curve (or per-layer diagnostic) the quantity comes from, one line per seed."""
    for i, group in enumerate(claim["groups"]):
        mine = [r for r in runs if r["group"] == group and r["status"] != "failed"]
        diverged = sum(r["status"] == "diverged" for r in mine)
        legend = f"{group} ({diverged} of {len(mine)} diverged)" if diverged else group
        for j, r in enumerate(mine):
            xs, ys = _curve(r, split, metric, x)
            right.plot(xs, ys, color=colours[i % len(colours)], alpha=0.6, lw=1.2,
                       marker="o" if x == "layer" or len(xs) == 1 else None, ms=3, label=legend if j == 0 else None)
    if log_y:
        right.set_yscale("log")
    if metric == "acc":  # from the first evaluation after the start: the differences are at the top
        later = []  # a run that diverged before its second evaluation keeps its one point in view
        for line in right.get_lines():
            xs, ys = (np.asarray(v, float) for v in line.get_data())
            later += [y for y in (ys[xs > 0] if (xs > 0).any() else ys) if np.isfinite(y)]
        if later:
            low = min(later)
            right.set_ylim(max(low - 0.05 * (1 - low), 0), min(1, max(later) + 0.1 * (1 - low)))
    right.set_xlabel({"step": "optimisation step", "examples": "training examples seen", "epoch": "epoch",
                      "layer": "hidden layer (at initialisation)"}[x])
    names = {"act_std": "activation std", "saturated": "saturated fraction", "update_size": "update size (all layers)",
             "acc": "accuracy"}
    right.set_ylabel(f"{ {'val': 'validation', 'train': 'training', 'diag': ''}.get(split, split)} "
                     f"{names.get(metric, metric)}".strip())
    if x == "layer":
        from matplotlib.ticker import MaxNLocator

        right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("each line one seed" + (", zoomed to the evaluations after step 0" if metric == "acc" else ""),
                    fontsize=10)
    right.legend(title="group")
    right.grid(alpha=0.3)


def _trials_panel(right, claim: dict, runs: list[dict], colours):
    """Every trial of every search against the space's first key, the trial each search chose ringed: where
    a grid puts its few values of the key that matters, and where random search puts its many."""
    from optbench.search import parse_space

    from optbench.results import FINISHED

    key = next(iter(claim["search"]["space"]))
    chosen = {r["dir"] for r in chosen_trials(claim, [r for r in runs if r["status"] in FINISHED]).values() if r}
    for i, group in enumerate(claim["groups"]):
        mine = [r for r in runs if r["group"] == group and r["status"] != "failed"]
        xs = [_dotted(r["config"], key) for r in mine]
        ys = [r["summary"].get("best_val_acc", np.nan) for r in mine]
        searches = len({r["seed"] for r in mine})
        right.scatter(xs, ys, color=colours[i % len(colours)], alpha=0.45, s=16,
                      label=f"{group} ({searches} searches of {len(mine) // max(searches, 1)} trials)")
        ring = [(x, y) for r, x, y in zip(mine, xs, ys) if r["dir"] in chosen]
        if ring:
            right.scatter(*zip(*ring), facecolors="none", edgecolors=colours[i % len(colours)], s=90, lw=1.5)
    if getattr(parse_space({key: claim["search"]["space"][key]})[key], "log", False):
        right.set_xscale("log")
    right.set_ylim(0, 1)
    right.set_xlabel(key)
    right.set_ylabel("best validation accuracy of the trial")
    right.set_title("each dot one trial, ringed: the trial each search chose", fontsize=10)
    right.legend(title="group", loc="lower left")
    right.grid(alpha=0.3)


def _dotted(config: dict, key: str):
    for part in key.split("."):
        config = (config or {}).get(part)
    return config


def _curve(run, split: str, metric: str, x: str):
    metrics = run["metrics"]
    if x == "layer":
        values = _layer_series(metrics, metric)
        return np.arange(1, len(values) + 1), values
    if split == "diag":
        rows = metrics[(metrics.split == "diag") & metrics.metric.str.startswith(metric + "/") & (metrics.step > 0)]
        series = rows.groupby("step")["value"].sum()
    else:
        series = _evaluations(metrics, split, metric)
    steps = series.index.to_numpy(float)
    if x == "epoch":
        steps = steps / run["summary"]["steps_per_epoch"]
    return (steps * batch_size(run) if x == "examples" else steps), series.to_numpy(float)


def markdown_section(claim: dict, result: dict) -> str:
    label = QUANTITIES[claim["quantity"]][1]
    lines = [f"## {claim['name']}: {verdict_text(result)}", "",
             f"> {' '.join(claim['quote'].split())}", "", f"Lecture file `{claim['lecture']}`. "
             + (f"Condition: {claim['condition']}. " if claim.get("condition") else "")
             + f"Quantity: {label}" + (f" (target {claim['target']:g})" if claim.get("target") else "") + ".", "",
             f"Command: `{result['command']}` ({_took(result)})", "",
             "| group | seeds | mean | interval |", "|---|---|---|---|"]
    lines += [f"| {g['group']} | {g['n']} | {_num(g['mean'])} | [{_num(g['low'])}, {_num(g['high'])}] |"
              for g in result["groups"]]
    lines += [""] + [f"- {comparison_text(r, label)}" for r in result["comparisons"]]
    if result.get("figure"):
        lines += ["", f"![{claim['name']}]({result['figure']})"]
    return "\n".join(lines) + "\n"


def _took(result: dict) -> str:
    load = result.get("load")
    return f"{result['seconds']:.0f} s" + (f", 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after" if load else "")


def summary_rows(claims: list[dict], results: list[dict]) -> list[dict]:
    """One row per claim for the summary table: claim, lecture, verdict, the deciding difference and interval."""
    rows = []
    for claim, result in zip(claims, results):
        c = result["comparisons"]
        rows.append({
            "claim": claim["name"], "lecture": claim["lecture"][:3],
            "prediction": ", ".join(f"{r['a']} {r['op']} {r['b']}" for r in c),
            "quantity": claim["quantity"],
            "difference [interval]": "; ".join(f"{_num(r['difference'], True)} [{_num(r['low'], True)}, "
                                               f"{_num(r['high'], True)}]" for r in c),
            "verdict": verdict_text(result), "seconds": round(result["seconds"]),
        })
    return rows


def write_page(claims: list[dict], results: list[dict], out: Path, title: str) -> list[Path]:
    """index.md and index.html (self-contained: figures as data URIs, html_report's CSS) for every claim given."""
    import pandas as pd

    from optbench.results import html as html_report

    table = pd.DataFrame(summary_rows(claims, results))
    md = [f"# {title}", "", _markdown_table(table), ""] + [markdown_section(c, r) for c, r in zip(claims, results)]
    (out / "index.md").write_text("\n".join(md))
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Verdicts</h2>", html_report._table(table)]
    for claim, result in zip(claims, results):
        label = QUANTITIES[claim["quantity"]][1]
        parts += [f'<h2 id="{claim["name"]}">{html.escape(claim["name"])}: {html.escape(verdict_text(result))}</h2>',
                  f"<blockquote>{html.escape(' '.join(claim['quote'].split()))}</blockquote>",
                  f"<p>Lecture file <code>{html.escape(claim['lecture'])}</code>. "
                  + (f"Condition: {html.escape(claim['condition'])}. " if claim.get("condition") else "")
                  + f"Quantity: {html.escape(label)}.</p>",
                  f"<pre>{html.escape(result['command'])}</pre><p>{html.escape(_took(result))}</p>",
                  html_report._table(pd.DataFrame(result["groups"]).drop(columns="values").round(5)),
                  "<ul>" + "".join(f"<li>{html.escape(comparison_text(r, label))}</li>"
                                   for r in result["comparisons"]) + "</ul>"]
        png = out / result["figure"] if result.get("figure") else None
        if png is not None and png.is_file():
            uri = "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")
            parts.append(f'<figure><img src="{uri}" alt="{html.escape(claim["name"])}">'
                         f"<figcaption>{html.escape(claim['name'])}</figcaption></figure>")
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{html.escape(title)}</title>\n'
            f"<style>{html_report.CSS} blockquote {{ border-left: 4px solid #ccc; margin: 0.5em 0; padding-left: 1em;"
            f" font-style: italic; }}</style>\n</head>\n<body>\n" + "\n".join(parts) + "\n</body>\n</html>\n")
    (out / "index.html").write_text(page, encoding="utf-8")
    return [out / "index.md", out / "index.html"]


def _markdown_table(table) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


# --- the command ------------------------------------------------------------------------------------------------


def run_claim(claim: dict, out: Path, scale: str, extra, level: float | None, log=print,
              train_first: bool = True) -> dict | None:
    """Train (what is missing; nothing with train_first=False), measure, judge, draw; the result saved as
    out/<claim>/verdict.json. None when a multirun failed or a group has no finished run to measure."""
    import os
    import shlex

    started, load = time.perf_counter(), os.getloadavg()[0]
    previous = out / claim["name"] / "verdict.json"
    previous = json.loads(previous.read_text()) if previous.is_file() else {}
    trained = train(claim, out, scale, extra, log) if train_first else True
    runs = load_claim_runs(claim, out, scale, extra)
    values = measure(claim, runs)
    empty = [g for g, v in values.items() if not v.notna().any()]
    if empty or not trained:
        log(f"{claim['name']}: could not be run" + (f" (no finished run in {', '.join(empty)})" if empty else ""))
        return None
    result = judge(claim, values, level)
    fig = figure(claim, result, runs)
    result["figure"] = f"{claim['name']}/{claim['name']}.png"
    from optbench.results.plots import DPI

    fig.savefig(out / result["figure"], dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    command = shlex.join(["optbench", "lectures", "run", claim["name"], *(["--scale", scale] * (scale != "default")),
                          *extra])
    if train_first or not previous:  # what the training took, and the 1-minute load average before and after it
        result.update(seconds=time.perf_counter() - started, load=[load, os.getloadavg()[0]], command=command)
    else:  # a report of runs trained before: their time and command stay
        result.update({k: previous[k] for k in ("seconds", "load", "command") if k in previous})
    result["scale"] = scale
    (out / claim["name"] / "verdict.json").write_text(json.dumps(result, indent=1, default=_json))
    return result


def check(claim: dict, scale: str, extra) -> None:
    """Compose every group's config as its multirun (or its search's first grid point) will: a bad override in
    a claim file, its space or on the command line is one line before anything trains."""
    from optbench.compose import compose_config

    if "search" in claim:
        try:
            import optuna  # noqa: F401
        except ImportError:
            raise UserError(f"claim {claim['name']} runs optbench search, which needs optuna: "
                            "pip install 'optbench[search]'") from None
    for group, overrides in compositions(claim, scale, extra).items():
        try:
            compose_config(overrides)
        except UserError as e:
            raise UserError(f"claim {claim['name']}, group {group}: {e}") from None


def compositions(claim: dict, scale: str = "default", extra=()) -> dict:
    """group -> the overrides of one of its runs, less the seed: a search claim's first grid point of its space."""
    groups = experiment(claim, scale, extra)[0]
    if "search" not in claim:
        return groups
    from optbench import search

    def first_point(spec):
        space = search.parse_space(spec["space"])
        return search.trial_overrides(search.grid(space, 2)[0])

    return {g: [*spec["overrides"], *first_point(spec)] for g, spec in groups.items()}


def _json(x):
    return float(x) if isinstance(x, (np.floating, np.integer)) else bool(x) if isinstance(x, np.bool_) else str(x)


def main(args: list[str]) -> int:
    import argparse

    from optbench.results.stats import LEVEL

    parser = argparse.ArgumentParser(
        prog="optbench lectures",
        description="The lecture notes' claims (conf/lectures/), each tested by an experiment on MNIST: "
                    "`list` shows them, `run NAME... | --all` trains what they need and writes verdicts, "
                    "figures and one page (index.md, index.html) into --out.")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "run", "report"],
                        help="list the claims; run: train and judge them; report: judge and draw the runs already "
                             "in --out again, training nothing")
    parser.add_argument("claims", nargs="*", metavar="NAME", help="claims to run (then any train overrides: key=value)")
    parser.add_argument("--all", action="store_true", help="run every claim in the catalogue")
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="default: minutes on a laptop CPU; full: more seeds and longer runs, for a GPU")
    parser.add_argument("--out", default=OUT, help=f"folder for the runs, figures and the page (default: ./{OUT})")
    parser.add_argument("--level", type=float, default=LEVEL, help=f"confidence level (default: {LEVEL:g})")
    parser.add_argument("--catalogue", default=str(CATALOGUE),
                        help="folder of claim files (default: optbench's own conf/lectures/)")
    opts = parser.parse_intermixed_args(args)
    catalogue = Path(opts.catalogue)
    if not catalogue.is_dir():
        raise UserError(f"--catalogue {catalogue}: no such folder")
    if opts.action == "list":
        for name in names(catalogue):
            claim = load(name, catalogue)
            print(f"{name:<28} {claim['lecture'][:3]}  {claim['description']}")
        return 0
    if not 0.5 <= opts.level < 1:
        raise UserError(f"--level {opts.level} must be a confidence level in [0.5, 1), e.g. 0.95")
    extra = [c for c in opts.claims if "=" in c]
    wanted = names(catalogue) if opts.all else [c for c in opts.claims if "=" not in c]
    if not wanted:
        raise UserError(f"lectures {opts.action}: name the claims (`optbench lectures list`) or give --all")
    claims = [load(n, catalogue) for n in wanted]  # every name checked before anything trains
    for claim in claims:
        check(claim, opts.scale, extra)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    done, failed, started = [], [], time.perf_counter()
    for claim in claims:
        print(f"{claim['name']}: {claim['description']}")
        result = run_claim(claim, out, opts.scale, extra, opts.level, train_first=opts.action == "run")
        if result is None:
            failed.append(claim["name"])
            continue
        done.append((claim, result))
        print(f"{claim['name']}: {verdict_text(result)} ({result['seconds']:.0f} s)")
        for row in result["comparisons"]:
            print("  " + comparison_text(row, QUANTITIES[claim["quantity"]][1]))
    page = collect(out, catalogue)
    if page:
        for path in write_page(*page, out, title="The lectures, tested: optbench on MNIST"):
            print(f"wrote {path}")
    print(f"{len(done)} claim{'s' * (len(done) != 1)} in {time.perf_counter() - started:.0f} s"
          + (f"; could not be run: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def collect(out: Path, catalogue: Path = CATALOGUE):
    """(claims, results) of every claim with a verdict.json below `out`, in catalogue order: the page covers
    every claim run into this folder so far, not only those of the last command."""
    claims, results = [], []
    for name in names(catalogue):
        path = out / name / "verdict.json"
        if path.is_file():
            claims.append(load(name, catalogue))
            results.append(json.loads(path.read_text()))
    return (claims, results) if claims else None
