"""Figures of a set of runs: pure functions from the results tables to a matplotlib Figure.

Every function takes the runs table and (where curves are drawn) the long metrics table from `optbench.results`, plus
the grouping keys; runs of one group (the seeds of a configuration) are drawn as their mean with a min-max band, one
colour per group. Figures are built without pyplot, so no GUI backend is involved and nothing global changes; the CLI
saves them.
"""

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator

from optbench import results
from optbench.results import group_label, key_words, stats

DPI = 150
X_LABELS = {"step": "optimisation step", "epoch": "epoch", "time": "training time (s)"}


def group_labels(runs: pd.DataFrame, by: list[str]) -> pd.Series:
    """run -> the label of its group: the values of `by` ("adam", "sgd, 0.1"), or the run's name."""
    label = runs["run"].map(_wrap) if not by and len(runs) == 1 else group_label(runs, by)
    return pd.Series(label.values, index=runs["run"].values)


def _wrap(name: str, width: int = 40) -> str:
    """A run folder's name (0_optimizer=adam,seed=0,...) on lines of at most `width` characters, broken at commas:
    one long line in a legend or under a box squeezes every panel of the figure."""
    lines = [""]
    for part in name.split(","):
        if lines[-1] and len(lines[-1]) + 1 + len(part) > width:
            lines.append(part)
        else:
            lines[-1] = f"{lines[-1]},{part}" if lines[-1] else part
    return "\n".join(lines)


def _legend_title(by: list[str]) -> str:
    """What varied, in words (`optimizer, learning rate`), not as config keys."""
    return ", ".join(map(key_words, by)) if by else "run"


MIN_CONTRAST = 3.0  # WCAG's ratio for graphics against their background: what stays visible when projected


def luminance(colour) -> float:
    """WCAG 2 relative luminance of a matplotlib colour."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in to_rgb(colour)]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


def contrast(colour, background="white") -> float:
    """WCAG 2 contrast ratio of two colours, 1 (same) to 21 (black on white)."""
    a, b = sorted((luminance(colour), luminance(background)), reverse=True)
    return (a + 0.05) / (b + 0.05)


def visible(colour, ratio: float = MIN_CONTRAST) -> tuple:
    """`colour` darkened (same hue) until it has `ratio` contrast against white: tab10's orange, olive and cyan,
    viridis' yellow, are too pale on a projected white slide."""
    rgb = np.array(to_rgb(colour))
    return next((tuple(rgb * scale) for scale in np.linspace(1.0, 0.0, 101) if contrast(rgb * scale) >= ratio),
                (0.0, 0.0, 0.0))


def palette(n: int) -> list:
    """n colours for lines on white: tab10 (tab20 beyond 10), each darkened where it is too pale."""
    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [visible(cmap(i % cmap.N)) for i in range(n)]


def _colours(labels: Iterable) -> dict:
    """One colour per group, in the order they first come, stable across every figure of a report."""
    groups = list(dict.fromkeys(labels))
    return dict(zip(groups, palette(len(groups))))


def with_x(metrics: pd.DataFrame, runs: pd.DataFrame, x: str) -> pd.DataFrame:
    """metrics plus an `x` column: the step, the epoch (fractional, from steps_per_epoch) or the training time
    (recorded at each evaluation; the steps in between get it by linear interpolation)."""
    m = metrics.copy()
    if x == "step":
        m["x"] = m["step"]
    elif x == "epoch":
        per_epoch = runs.set_index("run")["steps_per_epoch"].astype(float)
        m["x"] = m["step"] / m["run"].map(per_epoch)
    elif x == "time":
        m["x"] = np.nan
        times = m[(m.split == "run") & (m.metric == "train_time")]
        for run, t in times.groupby("run"):
            rows = m["run"] == run
            m.loc[rows, "x"] = np.interp(m.loc[rows, "step"], t["step"], t["value"])
    else:
        raise ValueError(f"x must be step, epoch or time, not {x!r}")
    return m


def _series(m: pd.DataFrame, split: str, metric: str) -> pd.DataFrame:
    rows = m[(m.split == split) & (m.metric == metric)]
    return rows[np.isfinite(rows["value"])]


SMOOTH = 100  # per-step curves are averaged over 1/SMOOTH of each run's recorded steps


def _smooth(rows: pd.DataFrame) -> pd.DataFrame:
    """A centred moving average over 1% of each run's rows (per-step mini-batch values are noisy); per run, because
    runs of different batch sizes record very different numbers of steps."""
    return rows.assign(value=rows.groupby("run")["value"].transform(
        lambda v: v.rolling(max(1, len(v) // SMOOTH), min_periods=1, center=True).mean()))


def _draw_groups(ax, rows: pd.DataFrame, labels: pd.Series, colours: dict) -> None:
    """Mean over the runs of each group per step as a line, their min-max as a band."""
    rows = rows.assign(group=rows["run"].map(labels))
    for group, colour in colours.items():
        g = rows[rows.group == group]
        if g.empty:
            continue
        agg = g.groupby("step").agg(x=("x", "mean"), mean=("value", "mean"), lo=("value", "min"), hi=("value", "max"))
        ax.plot(agg["x"], agg["mean"], color=colour, lw=1.4, label=group, marker="o" if len(agg) == 1 else None)
        if g["run"].nunique() > 1:
            ax.fill_between(agg["x"], agg["lo"], agg["hi"], color=colour, alpha=0.2, lw=0)


def _legend(fig: Figure, colours: dict, by: list[str], labels: list[str] | None = None, title: str = "") -> None:
    handles = [Line2D([], [], color=c, lw=2) for c in colours.values()]
    fig.legend(handles, labels or list(colours), title=title or _legend_title(by), loc="outside right upper",
               fontsize="small")


def _records(frame: pd.DataFrame) -> Iterator[Any]:
    """frame.itertuples(): the rows of a table whose columns the caller knows (pandas-stubs types every field as
    any scalar, which no arithmetic or format accepts)."""
    return iter(frame.itertuples())


def _new_figure(width: float, height: float, title: str) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    fig.suptitle(title)
    return fig


def log_y(ax, values: pd.Series, which: str = "y") -> None:
    """Log y (or x) axis labelled with plain numbers (0.3, 2), enough of them to read values off."""
    axis = ax.yaxis if which == "y" else ax.xaxis
    (ax.set_yscale if which == "y" else ax.set_xscale)("log")
    positive = values[values > 0]
    span = positive.max() / positive.min() if len(positive) else np.inf
    # within a factor of 3: label every in-between tick; under three decades: the 2s and 5s; wider: only the powers
    # of 10 (a whole decade's 0.6, 0.7, 0.8, 0.9 crowd into each other near its top)
    leading = {2, 3, 4, 5, 6, 7, 8, 9} if span < 3 else {2, 5} if span < 1000 else set()

    def minor(v, _):
        return f"{v:g}" if round(v / 10 ** np.floor(np.log10(v) + 1e-9)) in leading else ""

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(FuncFormatter(minor))


def _window_text(rows: pd.DataFrame) -> str:
    longest = rows.groupby("run").size().max() if len(rows) else 0
    return "per step" if longest < 2 * SMOOTH else "moving average over 1% of each run"


def _accuracy_limits(ax, rows: pd.DataFrame) -> None:
    """Start the accuracy axis near where the curves are after step 0 (the untrained ~10% hides the rest)."""
    later = rows[rows.step > 0]["value"]
    if len(later):
        ax.set_ylim(max(0.0, min(later.quantile(0.05), later.max() - 0.02) - 0.01), min(1.0, later.max() + 0.01))


def learning_curves(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], x: str = "step") -> Figure:
    """Training loss per step (smoothed), validation loss and accuracy and test accuracy per evaluation."""
    labels, colours = group_labels(runs, by), _colours(group_labels(runs, by))
    m = with_x(metrics, runs, x)
    train = _series(m, "step", "loss")
    panels = [
        (_smooth(train), f"training loss (mini-batch, {_window_text(train)})", "cross-entropy (log)", True),
        (_series(m, "val", "loss"), "validation loss", "cross-entropy (log)", True),
        (_series(m, "val", "acc"), "validation accuracy", "accuracy", False),
        (_series(m, "test", "acc"), "test accuracy (never used to choose)", "accuracy", False),
    ]
    fig = _new_figure(11, 7.5, "Learning curves: mean over seeds, band = min-max")
    axes = fig.subplots(2, 2, sharex=True)
    for ax, (rows, title, ylabel, log) in zip(axes.flat, panels):
        _draw_groups(ax, rows, labels, colours)
        ax.set_title(title, fontsize="medium")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log and (rows["value"] > 0).any():
            log_y(ax, rows["value"])
        if not log:
            _accuracy_limits(ax, rows)
    for ax in axes[1]:
        ax.set_xlabel(X_LABELS[x])
    _legend(fig, colours, by)
    return fig


def gradient_norms(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], x: str = "step") -> Figure:
    """The global gradient norm per step, then one small panel per layer (grad_norm/fc<i>)."""
    labels, colours = group_labels(runs, by), _colours(group_labels(runs, by))
    m = with_x(metrics, runs, x)
    names = {n for n in m.metric.unique() if n.startswith("grad_norm/")}
    # per layer (fc0), not per parameter tensor (fc0.weight), when both are recorded
    layers = sorted({n for n in names if "." not in n} or names, key=_layer_number)
    global_norm = _smooth(_series(m, "step", "grad_norm"))
    cols = min(len(layers), 4)
    rows = -(-len(layers) // cols) if layers else 0
    fig = _new_figure(11, 4.5 + 2.4 * rows,
                      f"Gradient norms (L2, {_window_text(global_norm)}; mean over seeds, band = min-max)")
    if layers:
        top, bottom = fig.subfigures(2, 1, height_ratios=[4.5, 2.4 * rows], squeeze=False)[:, 0]
    else:
        top, bottom = fig, None
    ax = top.subplots()
    _draw_groups(ax, global_norm, labels, colours)
    ax.set(title="all parameters", ylabel="||g|| (log)", xlabel=X_LABELS[x])
    log_y(ax, global_norm["value"])
    ax.grid(alpha=0.3)
    if layers:
        small = bottom.subplots(rows, cols, sharex=True, sharey=True, squeeze=False).ravel()
        values = []
        for ax, name in zip(small, layers):
            curves = _smooth(_series(m, "step", name))
            values.append(curves["value"])
            _draw_groups(ax, curves, labels, colours)
            ax.set_title(f"layer {name.split('/', 1)[1]}", fontsize="medium")
            ax.grid(alpha=0.3)
        for ax in small[len(layers):]:
            ax.set_visible(False)
        log_y(small[0], pd.concat(values))
        bottom.supylabel("||g_layer|| (log)", fontsize="medium")
        bottom.supxlabel(X_LABELS[x], fontsize="medium")
    _legend(fig, colours, by)
    return fig


def _layer_number(name: str) -> tuple:
    tail = name.rsplit("/", 1)[-1]
    digits = "".join(ch for ch in tail if ch.isdigit())
    return (int(digits) if digits else 0, tail)


def learning_rates(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], x: str = "step") -> Figure:
    """The learning rate each step actually used, as recorded (not recomputed from the schedule)."""
    labels, colours = group_labels(runs, by), _colours(group_labels(runs, by))
    m = with_x(metrics, runs, x)
    lr = _series(m, "step", "lr")
    fig = _new_figure(9, 4.5, "Learning rate used at each step (first parameter group)")
    ax = fig.subplots()
    _draw_groups(ax, lr, labels, colours)
    positive = lr["value"][lr["value"] > 0]
    if len(positive) and positive.max() / positive.min() > 20:
        log_y(ax, positive)
    ax.set(xlabel=X_LABELS[x], ylabel="learning rate")
    ax.grid(alpha=0.3)
    _legend(fig, colours, by)
    return fig


def lr_sensitivity(runs: pd.DataFrame, by: list[str], lr_key: str = "optimizer.lr") -> Figure:
    """Best validation accuracy against the learning rate (log x), one line per group of `by`.

    Points are the mean over seeds, bars their min-max; diverged runs count
    with the accuracy they reached before diverging.
    """
    by = [k for k in by if k != lr_key]
    labels = group_labels(runs, by)
    colours = _colours(labels)
    data = runs.assign(group=runs["run"].map(labels), lr=runs[lr_key].astype(float))
    fig = _new_figure(9, 5, "Learning-rate sensitivity: mean over seeds, bars = min-max")
    ax = fig.subplots()
    for group, colour in colours.items():
        agg = data[data.group == group].groupby("lr")["best_val_acc"].agg(["mean", "min", "max"])
        ax.errorbar(agg.index, agg["mean"], yerr=[agg["mean"] - agg["min"], agg["max"] - agg["mean"]],
                    color=colour, marker="o", ms=4, capsize=3, label=group)
    ax.set(xscale="log", xlabel=f"learning rate ({lr_key}, log scale)", ylabel="best validation accuracy")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, colours, by)
    return fig


def final_metrics(runs: pd.DataFrame, by: list[str],
                  metrics=(("best_val_acc", "best validation accuracy"),
                           ("test_acc_at_best_val", "test accuracy at the best-validation evaluation"))) -> Figure:
    """Per group, the distribution over runs of each final metric: a box plot and the runs as dots."""
    labels = group_labels(runs, by)
    colours = _colours(labels)
    groups = list(colours)
    fig = _new_figure(max(7.0, 1.0 + 0.6 * len(groups)) * len(metrics) / 1.6, 5, "Final metrics per run")
    axes = np.atleast_1d(fig.subplots(1, len(metrics)))
    data = runs.assign(group=runs["run"].map(labels))
    rng = np.random.default_rng(0)  # fixed jitter: the same figure every time
    for ax, (column, title) in zip(axes, metrics):
        values = [data.loc[data.group == g, column].astype(float).dropna().to_numpy() for g in groups]
        ax.boxplot(values, tick_labels=groups, widths=0.5, showfliers=False, medianprops={"color": "black"})
        for i, (v, g) in enumerate(zip(values, groups), start=1):
            ax.scatter(i + rng.uniform(-0.12, 0.12, len(v)), v, s=14, color=colours[g], zorder=3)
        ax.set_title(title, fontsize="medium")
        ax.set(xlabel=_legend_title(by), ylabel="accuracy")
        ax.tick_params(axis="x", labelrotation=45 if len(groups) > 4 else 0)
        ax.grid(alpha=0.3, axis="y")
    return fig


# --- Diagnostics: the lectures' per-layer activation and gradient pictures ---

DIAG_PANELS = (("act_mean", "activation mean"), ("act_std", "activation std"),
               ("grad_std", "std of dL/d(pre-activation), log"), ("saturated", "saturated fraction (sigmoid/tanh)"),
               ("dead", "dead ReLU fraction"))


def _layer_colours(n: int) -> list:
    """Input layer dark blue to output layer orange (plasma, stopped before its pale yellow end), each visible on
    white: the last layer's line must show on a projected slide too."""
    return [visible(colormaps["plasma"](0.8 * i / max(n - 1, 1))) for i in range(n)]


def activation_stats(runs: pd.DataFrame, metrics: pd.DataFrame, by: list[str], x: str = "step") -> Figure:
    """Per-layer statistics on the probe batch over training: a column per group, a row per statistic.

    One line per hidden layer, coloured from the input (dark blue) to the output (orange): the lecture's "mean and
    standard deviation of activation values" figure, side by side for the groups compared (mean over seeds).
    """
    labels = group_labels(runs, by)
    m = with_x(metrics[metrics.split == "diag"], runs, x)
    m = m.assign(stat=m.metric.str.split("/").str[0], layer=m.metric.str.split("/").str[1], group=m.run.map(labels))
    m = m[m.stat.isin([stat for stat, _ in DIAG_PANELS])]  # the probe's statistics: hidden layers only
    panels = [(stat, title) for stat, title in DIAG_PANELS if (m.stat == stat).any()]
    groups = list(dict.fromkeys(labels))
    fig = _new_figure(3.6 * len(groups) + 1.5, 2.3 * len(panels) + 0.6,
                      "Hidden layers on a fixed batch of validation images (mean over seeds)")
    axes = fig.subplots(len(panels), len(groups), sharex=True, sharey="row", squeeze=False)
    layers = sorted(m.layer.dropna().unique(), key=lambda name: int(name[2:]))
    colours = dict(zip(layers, _layer_colours(len(layers))))
    for col, group in enumerate(groups):
        axes[0, col].set_title(f"{_legend_title(by)} = {group}" if by else group, fontsize="medium")
        for row, (stat, title) in enumerate(panels):
            ax = axes[row, col]
            rows = m[(m.group == group) & (m.stat == stat)]
            for layer, g in rows.groupby("layer"):
                mean = g.groupby("step").agg(x=("x", "mean"), value=("value", "mean"))
                ax.plot(mean["x"], mean["value"], color=colours[layer], lw=1.4, marker=".", ms=3)
            if stat == "grad_std" and (rows.value > 0).any():
                ax.set_yscale("log")
            if col == 0:
                ax.set_ylabel(title, fontsize="small")
            ax.grid(alpha=0.3)
        axes[-1, col].set_xlabel(X_LABELS[x])
    _legend(fig, colours, [], [f"{layer} (hidden {i + 1})" for i, layer in enumerate(layers)], "layer")
    return fig


def _short(value: float, _=None) -> str:
    """A tick label in as few characters as it takes: 0, 0.5, 2e-05 -> 2e-5."""
    text = f"{value:.2g}"
    mantissa, _, exponent = text.partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else text


def histograms(runs: pd.DataFrame, tables: pd.DataFrame, by: list[str], kind: str = "act") -> Figure:
    """Histograms of each hidden layer (rows) at the recorded points of training (columns), one outline per group.

    `tables` is histograms.csv of one run per group (with a `run` column); counts are normalised to fractions so groups
    compare. Activations share one x range (as recorded); gradients have a range per layer and a log fraction axis, so
    both a spike at 0 (saturated units pass no gradient) and the tails show.
    """
    labels, colours = group_labels(runs, by), _colours(group_labels(runs, by))
    h = tables[tables.kind == kind].assign(group=lambda t: t.run.map(labels))
    layers = sorted(h.layer.unique(), key=lambda name: int(name[2:]))
    steps = sorted(h.step.unique())
    grad = kind == "grad"
    what = "gradients dL/d(pre-activation) per hidden layer\n(each panel on its own x scale)" if grad else \
        "activation values per hidden layer"
    fig = _new_figure(3.3 * len(steps) + 2.0, 1.3 * len(layers) + 1.2, f"Histograms of {what}")
    axes = fig.subplots(len(layers), len(steps), sharex=False if grad else "col", sharey=True, squeeze=False)
    for col, step in enumerate(steps):
        axes[0, col].set_title(f"step {step}", fontsize="medium")
        for row, layer in enumerate(layers):
            ax = axes[row, col]
            for group, g in h[(h.step == step) & (h.layer == layer)].groupby("group"):
                edges = np.append(g["lo"].to_numpy(), g["hi"].to_numpy()[-1])
                fraction = (g["count"] / g["count"].sum()).to_numpy()
                ax.stairs(np.where(fraction > 0, fraction, np.nan) if grad else fraction, edges,
                          color=colours[group], lw=1.4, baseline=None if grad else 0)
            ax.xaxis.set_major_locator(MaxNLocator(nbins=4 if not grad else 2, symmetric=grad))
            ax.xaxis.set_major_formatter(FuncFormatter(_short))
            ax.tick_params(labelsize="small")
            ax.grid(alpha=0.3)
            if col == len(steps) - 1:
                ax.yaxis.set_label_position("right")
                ax.set_ylabel(f"{layer}\n(hidden {row + 1})", rotation=0, ha="left", va="center", fontsize="small")
        axes[-1, col].set_xlabel("value")
    if grad:
        axes[0, 0].set_yscale("log")
        axes[0, 0].yaxis.set_major_formatter(FuncFormatter(_short))
    else:
        axes[0, 0].yaxis.set_major_locator(MaxNLocator(nbins=3))
    fig.supylabel("fraction of values" + (" (log)" if grad else ""), fontsize="medium")
    _legend(fig, colours, by)
    return fig


def performance_profiles(profiles: dict, by: list[str], r_max: float = 4.0,
                         title: str = "Performance profiles") -> Figure:
    """Dolan-More profiles, one panel per cost ({"steps to target": profile, ...}): rho(tau) against tau.

    Each profile is profiles.performance_profile's table (index tau, one column per group); a group's line is a step
    function rising where it solves another problem within tau times the fastest group's cost.
    """
    colours = _colours(c for p in profiles.values() for c in p.columns)
    fig = _new_figure(5 * len(profiles) + 2, 4.5, title)
    axes = np.atleast_1d(fig.subplots(1, len(profiles), sharey=True))
    for ax, (name, profile) in zip(axes, profiles.items()):
        # extend to r_max so every line ends at the right edge at its final share
        profile = profile.reindex(profile.index.union([1.0, r_max])).ffill().fillna(0.0)
        profile = profile[profile.index <= r_max]
        for group, colour in colours.items():
            if group in profile:
                ax.step(profile.index, profile[group], where="post", color=colour, lw=2, label=group)
        ax.set(xlim=(1.0, r_max), ylim=(-0.03, 1.03), xlabel=f"tau: ratio to the fastest ({name}; 1 = fastest)",
               title=name)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("rho(tau): share of problems (seeds) solved within tau")
    _legend(fig, colours, by)
    return fig


def valley(table: pd.DataFrame, title: str) -> Figure:
    """Crowded Valley: test accuracy (at the trial validation picked) against the tuning budget, a line per schedule;
    `table` is search.valley_rows' rows: schedule, budget (one-shot first), val_acc, test_acc."""
    budgets = list(dict.fromkeys(table["budget"]))
    colours = _colours(table["schedule"])
    fig = _new_figure(7.5, 4.5, title)
    ax = fig.subplots()
    for schedule, colour in colours.items():
        rows = table[table["schedule"] == schedule].set_index("budget").reindex(budgets)
        ax.plot(range(len(budgets)), rows["test_acc"], "o-", color=colour, lw=2, label=schedule)
    ax.set_xticks(range(len(budgets)), budgets)
    ax.set(xlabel="tuning budget (one-shot: the optimizer's defaults)",
           ylabel="test accuracy of the trial validation picked")
    ax.grid(alpha=0.3)
    _legend(fig, colours, ["schedule"])
    return fig


# --- How sure a ranking is ---

RESOLVED, TIED = "tab:blue", "0.45"


def forest(comparisons: pd.DataFrame, kind: str = "best", metric: str = "best validation accuracy") -> Figure:
    """Each group's difference from the reference with its interval (results.comparisons' rows, a - b).

    Filled: resolved at the level (Holm-adjusted); open: not resolved. Each interval is at the level Holm tested its
    comparison at, so it crosses 0 exactly when the marker is open. The right margin says which test, at which level,
    and what it found.
    """
    rows = comparisons[comparisons["test"] != "none"].reset_index(drop=True)
    level = comparisons.attrs.get("level", stats.LEVEL)
    reference = rows["b"].iloc[0] if rows["b"].nunique() == 1 else None
    fig = _new_figure(10, 1.6 + 0.55 * len(rows),
                      f"Difference in {metric} against the {kind}" + (f" ({reference})" if reference else "")
                      + f": mean over seeds, t-interval at Holm's level for {100 * level:g}% overall")
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]
    for yi, row in zip(y, _records(rows)):
        colour = RESOLVED if row.resolved else TIED
        ax.plot([row.low, row.high], [yi, yi], color=colour, lw=2.2, solid_capstyle="butt")
        ax.plot(row.difference, yi, "o", ms=8, color=colour, markerfacecolor=colour if row.resolved else "white",
                markeredgewidth=2)
    ax.axvline(0, color="black", lw=1, ls="--")
    ax.set_yticks(y, [f"{a} - {b}" if reference is None else a for a, b in zip(rows["a"], rows["b"])])
    ax.set_ylim(-0.7, len(rows) - 0.3)
    ax.set_xlabel(f"difference in {metric}" + (f" (group - {reference})" if reference else " (a - b)")
                  + "; 0 = no difference")
    ax.grid(alpha=0.3, axis="x")
    notes = ax.twinx()
    notes.set_ylim(ax.get_ylim())
    # int(): the counts may arrive as floats (a column with a gap), which %d printed truncated and :d refuses
    notes.set_yticks(y, [(f"paired t, {int(row.seeds)} seeds" if row.paired
                          else f"Welch, {int(row.n_a)} vs {int(row.n_b)} runs")
                         + f", {100 * row.interval_level:.3g}% interval; p (Holm) = {row.p_holm:.2g}: "
                         f"{'resolved' if row.resolved else 'not resolved'}" for row in _records(rows)],
                     fontsize="small")
    notes.tick_params(length=0)
    handles = [Line2D([], [], color=RESOLVED, marker="o", lw=2.2, ms=8),
               Line2D([], [], color=TIED, marker="o", markerfacecolor="white", markeredgewidth=2, lw=2.2, ms=8)]
    fig.legend(handles, [f"resolved (p <= {1 - level:.2g} after Holm)", f"not resolved against the {kind}"],
               loc="outside lower center", ncols=2, fontsize="small")
    return fig


def rank_table(values: dict) -> pd.DataFrame:
    """Seeds x groups: each group's value on the seeds every group with finished runs has (empty with
    fewer than two groups or two such seeds)."""
    groups = {g: v for g, v in values.items() if len(v)}
    if len(groups) < 2:
        return pd.DataFrame()
    table = pd.DataFrame({g: v.groupby(level=0).mean() for g, v in groups.items()}).dropna()
    return table if len(table) >= 2 else pd.DataFrame()


def rank_over_seeds(values: dict, by: Sequence[str] = (), metric: str = "best validation accuracy") -> Figure:
    """How often each group takes each rank within a seed (1 = best on that seed): a ranking that holds
    up has its mass on the diagonal; spread rows are groups whose place depends on the seed."""
    table = rank_table(values)
    ranks = table.rank(axis=1, ascending=False, method="min").astype(int)
    order = ranks.mean().sort_values(kind="stable").index
    k, n = len(order), len(table)
    share = np.array([[(ranks[g] == r).mean() for r in range(1, k + 1)] for g in order])
    fig = _new_figure(max(7.0, 3.5 + 0.9 * k), 2.0 + 0.5 * k,
                      f"Rank within each seed by {metric}\n({n} seeds shared by all groups; cell = seeds at that rank)")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i in range(k):
        for j in range(k):
            if share[i, j] > 0:
                ax.text(j, i, f"{round(share[i, j] * n)}/{n}", ha="center", va="center", fontsize="small",
                        color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(k), [str(r) for r in range(1, k + 1)])
    ax.set_yticks(range(k), [f"{g} (mean rank {ranks[g].mean():.1f})" for g in order])
    ax.set(xlabel="rank within a seed (1 = best; ties share the better rank)", ylabel=_legend_title(list(by)))
    fig.colorbar(image, ax=ax, label="share of seeds", shrink=0.9)
    return fig


ZOOM_FROM = 5  # the tuning-cost figure's second panel: n from here on, where the curves bunch near the top


def tuning_cost(trials: dict, by: list[str], trial: str = "runs over the swept values and seeds",
                metric: str = "best validation accuracy") -> Figure:
    """Dodge et al.'s expected best of n trials against n, a line per group.

    `trials` is results.tuning_trials' label -> the metric of every finished run; a line ends at the group's own number
    of trials. With more than ZOOM_FROM trials a second panel zooms in on n >= ZOOM_FROM, where the curves bunch near
    the top and the groups' order at large budgets shows.
    """
    colours = _colours(trials)
    most = max((len(v) for v in trials.values()), default=1)
    firsts = (1, ZOOM_FROM) if most > ZOOM_FROM else (1,)
    fig = _new_figure(4 + 4.5 * len(firsts), 5, "Tuning cost: expected best of n trials (Dodge et al. 2019)")
    axes = np.atleast_1d(fig.subplots(1, len(firsts)))
    for ax, first in zip(axes, firsts):
        for group, colour in colours.items():
            n = np.arange(first, len(trials[group]) + 1)
            if len(n):
                ax.plot(n, stats.expected_best(trials[group], n), color=colour, lw=2, label=group,
                        marker="o" if most <= 10 else None, ms=4)
        if most > 10:
            ax.set_xscale("log")
            ticks = [t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if first <= t <= most]
            ax.set_xticks(ticks, [str(t) for t in ticks])
            ax.xaxis.set_minor_formatter("")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(firsts) > 1:
            ax.set_title("every n" if first == 1 else f"zoom: n >= {first}", fontsize="medium")
        ax.set(xlabel="n: trials" + (" (log scale)" if most > 10 else ""), ylabel=f"expected {metric}")
        ax.grid(alpha=0.3, which="both")
    fig.supxlabel(f"trials drawn at random from the {trial}", fontsize="medium")
    _legend(fig, colours, by)
    return fig


# --- What `optbench plot` saves and `optbench report --html` embeds ---

def figures(runs, metrics, by: list[str], x: str = "step", level: float | None = None,
            baseline: str | None = None) -> dict:
    """name -> matplotlib figure: what `optbench plot` saves and `optbench report --html` embeds."""
    level = stats.LEVEL if level is None else level
    chosen = results.select_best(runs, by)  # with a swept lr: each group's best lr, as in the ranking
    curves = metrics[metrics.run.isin(chosen.run)]
    tuned = [k for k in results.varied_keys(runs) if k not in by]
    shown = by + tuned  # one tuned value per group: the legend says which (adam, 0.001)
    out = {
        "learning_curves": learning_curves(chosen, curves, shown, x),
        "gradient_norms": gradient_norms(chosen, curves, shown, x),
        "learning_rates": learning_rates(chosen, curves, shown, x),
        "final_metrics": final_metrics(chosen, shown),
    }
    if (curves.split == "diag").any():
        out["activations"] = activation_stats(chosen, curves, shown, x)
    # histograms: the first run (seed) of each group, so outlines of groups compare
    first = chosen.groupby(by, sort=False).head(1) if by else chosen.head(1)
    tables = results.load_histograms(first)
    for kind in ("act", "grad"):
        if len(tables) and (tables.kind == kind).any():
            out[f"histograms_{kind}"] = histograms(first, tables, shown, kind)
    lr_key = "optimizer.lr"
    if lr_key in results.varied_keys(runs) and runs[lr_key].nunique() > 1:
        out["lr_sensitivity"] = lr_sensitivity(runs, by, lr_key)
    # how sure the ranking is: differences with their intervals, ranks within seeds
    values = results.group_values(runs, by)
    _, vs = results.against_reference(values, level, baseline)
    if (vs.test != "none").any():
        out["differences"] = forest(vs, "baseline" if baseline else "best")
    if len(rank_table(values)) > 1:
        out["rank_over_seeds"] = rank_over_seeds(values, by)
    if tuned:
        out["tuning_cost"] = tuning_cost(results.tuning_trials(runs, by), by, f"runs over {', '.join(tuned)} and seeds")
    return out
