"""How much the ranking depends on the setup: relaxed targets (AlgoPerf's --target_relaxations), earlier
checkpoints (rankings that flip while the learning rate still decays, Wen et al. 2025), and other model shapes.

Every function reads `curves`: one row per evaluation of a chosen run, columns optimizer, seed, step, value
(validation accuracy), and ranks optimizers by the mean over their seeds. Two rankings are compared by
Kendall's tau-b (1: same order, -1: reversed; ties allowed) and by the leader: a new leader is a flip a reader
must hear about even when tau stays high.
"""

import numpy as np

RELAXATIONS = (0.0, 0.005, 0.01, 0.02)  # accuracy points below the base target
FRACTIONS = (0.25, 0.5, 0.75, 1.0)  # of the run's steps, where the ranking is read


def order(scores: dict, higher_is_better: bool = True) -> list[str]:
    """Names from best to worst (NaN last; ties keep the given order)."""
    names = list(scores)
    key = np.array([-scores[n] if higher_is_better else scores[n] for n in names], float)
    return [names[i] for i in np.argsort(np.where(np.isfinite(key), key, np.inf), kind="stable")]


def _ranked(scores: dict, higher_is_better: bool = True) -> dict:
    """The order's columns of a table: the names best first, and the leader."""
    names = order(scores, higher_is_better)
    return {"order": " > ".join(names), "leader": names[0]}


def kendall(scores_a: dict, scores_b: dict, higher_is_better: tuple[bool, bool] = (True, True)) -> float:
    """Kendall's tau-b between the orders two score mappings give (the names of the first)."""
    from scipy.stats import kendalltau

    names = list(scores_a)
    a = [scores_a[n] if higher_is_better[0] else -scores_a[n] for n in names]
    b = [scores_b[n] if higher_is_better[1] else -scores_b[n] for n in names]
    a, b = (np.nan_to_num(np.asarray(x, float), nan=-np.inf) for x in (a, b))
    if len(names) < 2 or len(set(a)) < 2 or len(set(b)) < 2:
        return float("nan")
    return round(float(kendalltau(a, b).statistic), 12)  # identical orders give 0.9999999999999999


def _mean_at(curves, step: int, names: list[str]) -> dict:
    """Mean over seeds of each optimizer's value at the last evaluation at or before `step` (NaN without one)."""
    rows = curves[curves["step"] <= step].sort_values("step").groupby(["optimizer", "seed"]).tail(1)
    return rows.groupby("optimizer")["value"].mean().reindex(names).to_dict()


def at_checkpoints(curves, fractions=FRACTIONS):
    """One row per fraction of the run: step read, the order there, Kendall's tau against the end's, leader."""
    import pandas as pd

    last = int(curves["step"].max())
    names = list(dict.fromkeys(curves["optimizer"]))
    final = _mean_at(curves, last, names)
    rows = []
    for f in fractions:
        step = int(round(f * last))
        scores = _mean_at(curves, step, names)
        rows.append({"fraction": f, "step": step, **_ranked(scores), "tau_vs_end": kendall(scores, final)})
    return pd.DataFrame(rows)


def steps_to(curves, target: float) -> dict:
    """Mean over seeds of the first step each run reaches `target` (inf when one of its runs never does)."""
    reached = curves["step"].where(curves["value"] >= target)
    firsts = reached.groupby([curves["optimizer"], curves["seed"]], sort=False).min().fillna(np.inf)
    return firsts.groupby(level=0, sort=False).mean().to_dict()


def relaxed_targets(curves, relaxations=RELAXATIONS):
    """AlgoPerf style: the base target is the highest accuracy every run reaches (the lowest of the runs' best
    values), then easier targets `relaxations` below it; optimizers ranked by mean steps to each target."""
    import pandas as pd

    base = float(curves.groupby(["optimizer", "seed"])["value"].max().min())
    first = steps_to(curves, base)
    rows = []
    for r in relaxations:
        steps = steps_to(curves, base - r)
        rows.append({"relaxation": r, "target": base - r, **_ranked(steps, higher_is_better=False),
                     "tau_vs_base": kendall(steps, first, (False, False)),
                     **{f"steps.{n}": v for n, v in steps.items()}})
    return pd.DataFrame(rows)


def across(rankings: dict):
    """Kendall's tau of each setting's final scores against the first setting's: {setting: {optimizer:
    score}} (e.g. model widths)."""
    import pandas as pd

    first = next(iter(rankings.values()))
    return pd.DataFrame([{"setting": setting, **_ranked(scores),
                          "tau_vs_first": kendall(first, {n: scores.get(n, np.nan) for n in first})}
                         for setting, scores in rankings.items()])


def words(table, tau_column: str, what: str) -> str:
    """One sentence: whether the leader or the order moves across the rows of `table`."""
    leaders = list(dict.fromkeys(table["leader"]))
    taus = table[tau_column].to_numpy(float)
    lowest = np.nanmin(taus) if np.isfinite(taus).any() else np.nan
    if len(leaders) > 1:
        return (f"The ranking depends on {what}: the leader changes ({' / '.join(leaders)}); "
                f"lowest Kendall tau {lowest:.2f}.")
    if np.isfinite(lowest) and lowest < 1:
        return (f"The leader ({leaders[0]}) holds across {what}, but the order below it moves "
                f"(lowest Kendall tau {lowest:.2f}).")
    return f"The ranking holds across {what} (same leader, {leaders[0]}, and the same order)."
