"""The Crowded Valley protocol (Schmidt et al. 2021): per schedule, the optimizer's defaults run once against
random search with growing budgets, and the table and figures that compare them."""

import logging
import textwrap
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from optbench.results import markdown, rundir
from optbench.results.stats import expected_best
from optbench.search.running import run_one, run_search
from optbench.search.scoring import METRIC
from optbench.search.spaces import parse_space

log = logging.getLogger(__name__)

BUDGET_NAMES = ("small", "medium", "large")


def run_valley(search_dir: Path, spec: dict, threads: int | None = None):
    """Crowded Valley (Schmidt et al. 2021): per schedule, the optimizer's defaults once ("one-shot")
    against random search with growing budgets; returns the comparison table.

    A budget of N trials is the first N finished trials of one search per schedule: for random search that is
    distributed exactly as a fresh N-trial search, so budgets 25/50/75 cost 75 trials, not 150. As in the paper, a
    budget's score is the test accuracy of the trial validation picked.
    """
    import pandas as pd

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
    summary = rundir.read_summary(run_dir)
    if summary is not None and summary["status"] in rundir.FINISHED:
        return summary
    return run_one(overrides, run_dir)


def valley_rows(schedule: str, one_shot: list[dict], defaults: dict, study, budgets: list[int]) -> list[dict]:
    """One row for one-shot (at `defaults`, the searched keys' values in the one-shot config), one per budget:
    the trial validation picks among the first N, its point, and its test accuracy."""
    from optuna.trial import TrialState

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
        best = max(scored, key=lambda t: t.value, default=None)
        rows.append({"schedule": schedule, "budget": f"{label} ({n})" if label in BUDGET_NAMES else label,
                     "trials": min(n, len(finished)), **{k: best.params[k] if best else np.nan for k in defaults},
                     "val_acc": best.value if best else np.nan,
                     "test_acc": best.user_attrs.get("test_acc_mean", np.nan) if best else np.nan,
                     "expected_val_acc": float(expected_best(values, n)) if values else np.nan})
    return rows


def write_valley(table, search_dir: Path, spec: dict, trials: dict | None = None) -> None:
    """valley.csv and valley.md (the table), valley.png (test accuracy against budget, a line per schedule),
    valley_tuning_cost.png (expected best validation accuracy against n, from `trials`: schedule -> values)."""
    from optbench.results import plots  # matplotlib

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

