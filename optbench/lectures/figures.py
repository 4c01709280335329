"""The figure beside each verdict: the deciding quantity per seed, and the curve (or trials) it is read from."""

import functools
import itertools
import textwrap
from typing import Any

import numpy as np

from optbench.lectures.measures import QUANTITIES, batch_size, evaluations, layer_series, summed_over_layers
from optbench.lectures.running import chosen_trials
from optbench.lectures.verdicts import verdict_text
from optbench.results import rundir


def figure(claim: dict, result: dict, runs: list[dict]):
    """Left: the quantity per group (each seed a dot, the mean and its interval); right: the curve it comes from.
    A claim read where curves cross a target gets a third panel, the crossing zoomed: on the whole curve the
    crossings crowd into a corner."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    _, label, (split, metric, x, log_y) = QUANTITIES[claim["quantity"]]
    x = claim.get("x", x)  # a claim compared at equal epochs draws its curves per epoch
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    zoomed = bool(claim.get("target")) and "search" not in claim
    fig, axes = plt.subplots(1, 2 + zoomed, figsize=(16 if zoomed else 12, 5.2),
                             gridspec_kw={"width_ratios": [1, 1.4, 1][: 2 + zoomed]})
    _values_panel(axes[0], claim, result, label, colours)
    if "search" in claim:
        _trials_panel(axes[1], claim, runs, colours)
    else:
        _curves_panel(axes[1], claim, runs, colours, split, metric, x, log_y)
    if zoomed:
        _curves_panel(axes[2], claim, runs, colours, split, metric, x, log_y)
        _zoom_to_rings(axes[2], metric == "acc" and 1 - claim["target"] or claim["target"])
    fig.suptitle(f"{claim['name']}: {verdict_text(result)}\n\u201c"
                 + textwrap.shorten(" ".join(claim["quote"].split()), 110) + f"\u201d ({claim['lecture'][:3]})\n"
                 + textwrap.fill(textwrap.shorten(f"condition: {result['condition']}", 480), 120), fontsize=11)
    fig.tight_layout()
    return fig


def _values_panel(left, claim: dict, result: dict, label: str, colours):
    for i, g in enumerate(result["groups"]):
        values = [v for v in g["values"] if v is not None]
        left.scatter(np.full(len(values), i) + np.linspace(-0.12, 0.12, len(values)), values,
                     color=colours[i % len(colours)], alpha=0.5, s=18, zorder=2)
        if np.isfinite(g["mean"]):
            err = [[g["mean"] - g["low"]], [g["high"] - g["mean"]]] if np.isfinite(g["low"]) else None
            left.errorbar([i + 0.3], [g["mean"]], yerr=err, fmt="o", color="black", capsize=5, zorder=3)
    left.set_xticks(range(len(result["groups"])), [g["group"] for g in result["groups"]])
    left.set_xlim(-0.5, len(result["groups"]) - 0.3)
    left.set_ylabel("\n".join(textwrap.wrap(label + (f" {claim['target']:g}" if claim.get("target") else ""), 38)))
    left.set_title(f"per seed (dots), mean and {100 * result['level']:g}% interval (black)", fontsize=10)
    left.grid(alpha=0.3)


def _zoom_to_rings(ax, level: float):
    """The view around the rings (where each seed is read) and the target `level`, as the curves are drawn."""
    rings = [c.get_offsets() for c in ax.collections if len(c.get_offsets()) and not c.get_facecolor().any()]
    points = np.vstack(rings) if rings else np.empty((0, 2))
    points = points[np.isfinite(points).all(axis=1)]
    if not len(points):
        return
    (x0, y0), (x1, y1) = points.min(axis=0), points.max(axis=0)
    pad = 0.15 * (x1 - x0) or 0.1 * max(abs(x1), 1)
    ax.set_xlim(max(x0 - pad, 0), x1 + pad)
    low, high = min(y0, level), max(y1, level)
    ax.set_ylim(low / 1.3, high * 1.3) if ax.get_yscale() == "log" else ax.set_ylim(low - 0.1 * (high - low or 1),
                                                                                   high + 0.1 * (high - low or 1))
    if ax.get_yscale() == "log":  # a zoom spans less than a decade: label every tenth of it
        from matplotlib.ticker import LogLocator

        ax.yaxis.set_major_locator(LogLocator(subs=np.arange(1.0, 10.0).tolist()))
    ax.set_title("zoomed: where each seed first reaches the target", fontsize=10)
    ax.get_legend().remove()


# per quantity, which evaluations (indices into a run's plotted curve, in the curve's own values) the verdict's
# quantity is read at: marked with a ring on the curve, so the figure shows where the number comes from
READ_AT = {
    "best_val_acc": lambda ys, claim: [int(np.nanargmax(ys))] if np.isfinite(ys).any() else [],
    "test_acc": lambda ys, claim: [int(np.nanargmax(ys))] if np.isfinite(ys).any() else [],
    "examples_to_target": lambda ys, claim: list(np.flatnonzero(ys >= claim["target"])[:1]),
    "gap_at_fit": lambda ys, claim: list(np.flatnonzero(ys >= claim["target"])[:1]),
    "loss_rise": lambda ys, claim: list(np.flatnonzero(np.diff(ys) > 0) + 1),
    "update_shrink": lambda ys, claim: [0, len(ys) - 1],
    "act_std_drift": lambda ys, claim: [0, len(ys) - 1],
    "saturated_at_init": lambda ys, claim: list(range(len(ys))),
}
READ_LAST = lambda ys, claim: [len(ys) - 1]  # noqa: E731 - the final training loss, the gap, the units: at the end
# what the ring means, in the legend
READ_WHERE = {"best_val_acc": "the evaluation validation chose", "test_acc": "the evaluation validation chose",
              "examples_to_target": "first evaluation at the target",
              "gap_at_fit": "first evaluation at the training target", "loss_rise": "each rise of the loss",
              "update_shrink": "the two update sizes compared", "act_std_drift": "the two layers compared",
              "saturated_at_init": "each layer averaged"}
# accuracies are drawn as errors (1 - accuracy) on a log axis: the whole curve from chance to the top is in
# view, and the differences at the top, where they decide, are as wide as those at the start
FLOOR = 1e-4


def _curves_panel(right, claim: dict, runs: list[dict], colours, split: str, metric: str, x: str, log_y: bool):
    """The learning curve (or per-layer diagnostic) the quantity comes from: each seed a thin line, the groups'
    median a thick one in a band from the lowest to the highest seed, a ring where the quantity is read."""
    import pandas as pd

    error = metric == "acc"
    read_at = READ_AT.get(claim["quantity"], READ_LAST)
    for group, colour in zip(claim["groups"], itertools.cycle(colours)):
        mine = [r for r in runs if r["group"] == group and r["status"] != "failed"]
        diverged = sum(r["status"] == "diverged" for r in mine)
        curves = {}
        for r in mine:
            xs, ys = _curve(r, split, metric, x)
            shown = np.clip(1 - ys, FLOOR, None) if error else ys
            shown = np.where(np.isfinite(shown), shown, np.nan)  # a diverged run's inf would stretch the band's axis
            right.plot(xs, shown, color=colour, alpha=0.45, lw=0.8, marker="o" if len(xs) == 1 else None, ms=3)
            read = [j for j in read_at(ys, claim) if 0 <= j < len(xs) and np.isfinite(shown[j])]
            # a ring on every rise of a 100-point curve would hide the curve: small rings where they are many
            size, width = (42, 1.4) if len(read) <= 12 else (10, 0.7)
            right.scatter(xs[read], shown[read], s=size, facecolors="none", edgecolors=colour, lw=width, zorder=3)
            curves[r["seed"]] = pd.Series(shown, index=np.round(xs, 9))
        if not curves:
            continue
        table = pd.DataFrame(curves).sort_index()
        if table.shape[1] > 1:
            right.fill_between(table.index, table.min(axis=1), table.max(axis=1), color=colour, alpha=0.18, lw=0)
        legend = f"{group}: median of {len(curves)} seeds" + (f", {diverged} diverged" if diverged else "")
        right.plot(table.index, table.median(axis=1), color=colour, lw=2.2, label=legend,
                   marker="o" if x == "layer" else None, ms=4)
    right.scatter([], [], s=42, facecolors="none", edgecolors="black", lw=1.4,
                  label=f"read here: {READ_WHERE.get(claim['quantity'], 'the last evaluation')}")
    if claim.get("target") and error:
        right.axhline(1 - claim["target"], color="black", ls="--", lw=1, label=f"target accuracy {claim['target']:g}")
    if log_y or error:
        _log_axis(right)
    _curve_labels(right, split, metric, x, error)


def _log_axis(ax):
    """A log y axis labelled 0.05, 0.1, 0.2, 0.5, ... in plain numbers: a projected 10^-1 is read by few."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _curve_labels(right, split: str, metric: str, x: str, error: bool):
    right.set_xlabel({"step": "optimisation step", "examples": "training examples seen", "epoch": "epoch",
                      "layer": "hidden layer (at initialisation)"}[x])
    names = {"act_std": "activation std", "saturated": "saturated fraction", "update_size": "update size (all layers)",
             "acc": "error (1 - accuracy), log scale", "loss": "loss, log scale"}
    right.set_ylabel(f"{ {'val': 'validation', 'train': 'training', 'diag': ''}.get(split, split)} "
                     f"{names.get(metric, metric)}".strip())
    if x == "layer":
        from matplotlib.ticker import MaxNLocator

        right.xaxis.set_major_locator(MaxNLocator(integer=True))
    right.set_title("thin: each seed; thick and band: median, lowest to highest seed", fontsize=10)
    if len(right.get_legend_handles_labels()[1]) >= 5:  # four groups' curves leave no corner free: below the axis
        right.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    else:
        right.legend(fontsize=9)
    right.grid(alpha=0.3, which="both" if error else "major")


def _trials_panel(right, claim: dict, runs: list[dict], colours):
    """Every trial of every search against the space's first key, the trial each search chose ringed: where
    a grid puts its few values of the key that matters, and where random search puts its many."""
    from optbench.search import parse_space

    key = next(iter(claim["search"]["space"]))
    chosen = {r["dir"] for r in chosen_trials(claim, [r for r in runs if r["status"] in rundir.FINISHED]).values() if r}
    for group, colour in zip(claim["groups"], itertools.cycle(colours)):
        mine = [r for r in runs if r["group"] == group and r["status"] != "failed"]
        xs = [_dotted(r["config"], key) for r in mine]
        ys = [r["summary"].get("best_val_acc", np.nan) for r in mine]
        searches = len({r["seed"] for r in mine})
        right.scatter(xs, ys, color=colour, alpha=0.45, s=16,
                      label=f"{group} ({searches} searches of {len(mine) // max(searches, 1)} trials)")
        ring = [(x, y) for r, x, y in zip(mine, xs, ys) if r["dir"] in chosen]
        if ring:
            right.scatter(*zip(*ring), facecolors="none", edgecolors=colour, s=90, lw=1.5)
    if getattr(parse_space({key: claim["search"]["space"][key]})[key], "log", False):
        right.set_xscale("log")
    right.set(ylim=(0, 1), xlabel=key, ylabel="best validation accuracy of the trial")
    right.set_title("each dot one trial, ringed: the trial each search chose", fontsize=10)
    right.legend(title="group", loc="lower left")
    right.grid(alpha=0.3)


def _dotted(config: Any, key: str):
    return functools.reduce(lambda value, part: (value or {}).get(part), key.split("."), config)


def _curve(run, split: str, metric: str, x: str):
    metrics = run["metrics"]
    if x == "layer":
        values = layer_series(metrics, metric)
        return np.arange(1, len(values) + 1), values
    series = summed_over_layers(metrics, metric) if split == "diag" else evaluations(metrics, split, metric)
    steps = series.index.to_numpy(float)
    if x == "epoch":
        steps = steps / run["summary"]["steps_per_epoch"]
    return (steps * batch_size(run) if x == "examples" else steps), series.to_numpy(float)

