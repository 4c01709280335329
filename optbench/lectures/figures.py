"""The figure beside each verdict: the deciding quantity per seed, and the curve (or trials) it is read from."""

import textwrap

import numpy as np

from optbench import rundir
from optbench.lectures.measures import QUANTITIES, batch_size, evaluations, layer_series
from optbench.lectures.running import chosen_trials
from optbench.lectures.verdicts import verdict_text

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

    key = next(iter(claim["search"]["space"]))
    chosen = {r["dir"] for r in chosen_trials(claim, [r for r in runs if r["status"] in rundir.FINISHED]).values() if r}
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
        values = layer_series(metrics, metric)
        return np.arange(1, len(values) + 1), values
    if split == "diag":
        rows = metrics[(metrics.split == "diag") & metrics.metric.str.startswith(metric + "/") & (metrics.step > 0)]
        series = rows.groupby("step")["value"].sum()
    else:
        series = evaluations(metrics, split, metric)
    steps = series.index.to_numpy(float)
    if x == "epoch":
        steps = steps / run["summary"]["steps_per_epoch"]
    return (steps * batch_size(run) if x == "examples" else steps), series.to_numpy(float)

