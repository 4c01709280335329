"""AlgoPerf-style comparisons for `optbench report --profile`: time to a target and performance profiles.

Dolan-More performance profiles over problems (here: seeds) and solvers (here: optimizers), with AlgoPerf's r_max and
benchmark score (the area under the profile).
"""

from pathlib import Path

import numpy as np
import pandas as pd

from optbench import results
from optbench.errors import UserError
from optbench.results import plots


def performance_profile(costs, r_max: float = 4.0, taus=None):
    """Dolan-More performance profiles: rows are problems, columns solvers, values a cost (time or
    steps to the target; inf or NaN where the target was never reached).

    rho_s(tau) = share of problems where solver s is within a factor tau of the best solver;
    ratios above r_max count as never solved (AlgoPerf). Returns a DataFrame indexed by tau.
    """
    ratios = performance_ratios(costs, r_max)
    if taus is None:
        taus = np.unique(np.concatenate([[1.0, r_max], ratios.to_numpy()[np.isfinite(ratios.to_numpy())]]))
    return pd.DataFrame({s: [(ratios[s] <= t).mean() for t in taus] for s in ratios.columns},
                        index=pd.Index(taus, name="tau"))


def performance_ratios(costs, r_max: float = 4.0):
    costs = costs.astype(float).where(lambda c: c.notna(), np.inf)
    best = costs.min(axis=1)
    # a solver as fast as the best has ratio 1, also where the best is 0 (the target held at the step-0 evaluation:
    # 0/0), and any slower one is then beyond every r_max
    ratios = costs.div(best, axis=0).mask(costs.eq(best, axis=0), 1.0)
    ratios.loc[~np.isfinite(best)] = np.inf  # nobody reached the target: unsolved for all
    return ratios.where(ratios <= r_max, np.inf)


def profile_score(costs, r_max: float = 4.0):
    """AlgoPerf's benchmark score: the area under each solver's profile over tau in [1, r_max],
    divided by r_max - 1 (1 = fastest on every problem). Exact: the profile is a step function, so a
    problem solved at ratio r adds (r_max - r) / (r_max - 1) / n_problems."""
    ratios = performance_ratios(costs, r_max)
    return ((r_max - ratios).clip(lower=0) / (r_max - 1)).mean()


def algoperf(runs, metrics, by: list[str] | None = None, target: float = 0.97, r_max: float = 4.0):
    """AlgoPerf-style comparison of the groups of `by` (the optimizers): each seed is one problem.

    Swept keys other than `by` (a learning rate) are first tuned per group on validation (results.select_best). A
    problem's cost for a group is its run's steps (or training seconds) to reach validation accuracy `target`; a run
    that never reaches it, diverged or did not finish costs inf. Returns (score table, {"steps": costs, "time": costs})
    where the costs have one row per seed and one column per group, ready for performance_profile.
    """
    by = results.resolve_by(runs, by)
    chosen = results.select_best(runs, by).merge(results.to_target(metrics, target), left_on="run", right_index=True,
                                                 how="left")
    group = results.group_label(chosen, by)
    finished = chosen["status"].isin(results.FINISHED)
    costs = {}
    for name, column in (("steps", "steps_to_target"), ("time", "time_to_target")):
        cost = chosen[column].astype(float).where(finished).fillna(np.inf)
        table = pd.DataFrame({"seed": chosen["seed"], "group": group, "cost": cost})
        costs[name] = (table.pivot_table(index="seed", columns="group", values="cost", aggfunc="min", sort=False)
                       .reindex(columns=list(dict.fromkeys(group))).fillna(np.inf))  # a missing seed: unsolved
    steps, time = costs["steps"], costs["time"]
    scores = pd.DataFrame({
        "problems": len(steps),
        "reached": np.isfinite(steps).sum(),
        "score_steps": profile_score(steps, r_max),
        "score_time": profile_score(time, r_max),
        "median_steps_to_target": steps.replace(np.inf, np.nan).median(),
        "median_time_to_target": time.replace(np.inf, np.nan).median(),
    }).rename_axis(", ".join(by) or "group").reset_index()
    scores = scores.sort_values("score_time", ascending=False, ignore_index=True)
    scores.attrs.update(by=by, target=target, r_max=r_max)
    return scores, costs


RELAXATIONS = (0.0, 0.005, 0.01)  # the target, and targets 0.5 and 1 point of accuracy looser


def target_sensitivity(runs, metrics, by: list[str] | None, target: float, r_max: float = 4.0):
    """The ranking by steps and by time at the target and at slightly looser ones: one row per group,
    per target its step- and time-based scores and the ranks they give (1 = best score).

    A ranking that changes when the target moves by half a point of
    accuracy is a statement about the target, not about the optimizers.
    """
    table: pd.DataFrame | None = None
    for relaxation in RELAXATIONS:
        t = round(target - relaxation, 6)
        scores, _ = algoperf(runs, metrics, by, t, r_max)
        part = scores.set_index(scores.columns[0])[["score_steps", "score_time"]]
        part[["rank_steps", "rank_time"]] = part.rank(ascending=False, method="min").to_numpy()
        part.columns = [f"{c}@{t:g}" for c in part.columns]
        table = part if table is None else table.join(part)
    assert table is not None, "RELAXATIONS is empty"
    return table.reset_index()


def write_profile(runs, metrics, by: list[str] | None, target: float, out: Path, r_max: float = 4.0) -> Path:
    """`optbench report --profile`: print the AlgoPerf scores, save out/profile.csv and the profile figure."""
    scores, costs = algoperf(runs, metrics, by, target, r_max)
    if len(scores) < 2:
        raise UserError(f"--profile compares groups: these runs form {len(scores)} group(s); pass --by optimizer")
    scores.to_csv(out / "profile.csv", index=False)
    print(f"\nperformance profiles: each seed is a problem; cost = steps / training seconds to val acc >= {target}; "
          f"score = area under the profile over tau in [1, {r_max:g}], divided by {r_max - 1:g} (1 = always fastest)")
    print(scores.to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    labels = {"steps": "steps to target", "time": "training time to target"}
    title = f"Performance profiles: val acc >= {target}, {len(costs['steps'])} seeds (problems)"
    fig = plots.performance_profiles({labels[k]: performance_profile(c, r_max) for k, c in costs.items()},
                                     scores.attrs["by"], r_max, title)
    (out / "plots").mkdir(parents=True, exist_ok=True)
    path = out / "plots" / "performance_profile.png"
    fig.savefig(path, dpi=plots.DPI)
    sensitivity = target_sensitivity(runs, metrics, by, target, r_max)
    sensitivity.to_csv(out / "profile_targets.csv", index=False)
    ranks = sensitivity[[sensitivity.columns[0]] + [c for c in sensitivity.columns if c.startswith("rank")]]
    print("\nrank by step- and time-based score at the target and looser targets (1 = best; ties share a rank):")
    print(ranks.to_string(index=False, float_format=lambda x: f"{x:.0f}"))
    print(f"wrote {out / 'profile.csv'}, {out / 'profile_targets.csv'}, {path}")
    return path
