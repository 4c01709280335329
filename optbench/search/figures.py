"""The search's figures: Optuna's history and importance plots restyled, and our own slice plot."""

import io
import logging
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from optbench.results import key_words, rundir

log = logging.getLogger(__name__)

TITLES = {"history": "objective per trial and best so far", "slice": "objective against each parameter",
          "importance": "parameter importance (fANOVA)"}
FEW_TRIALS = 10  # up to this many trials, the slice plot gives each its own colour and a legend entry


def plot_slice(study, target_name: str = "mean best val acc"):
    """The objective against each searched parameter, a panel per parameter, a point per finished trial.

    Optuna's own slice plot colours trials on a continuous white-to-blue bar (the first trial is a white dot on
    white) under two titles in ggplot's grey; this one colours a few trials apart with a legend, many along a
    colour bar that stays visible, and rings the best trial.
    """
    import pandas as pd
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator
    from optuna.distributions import CategoricalDistribution

    from optbench.results.plots import log_y, palette, visible  # matplotlib

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
        position = {v: i for i, v in enumerate(distribution.choices)} if categorical else {}
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
        cmap = ListedColormap([visible(colormaps["viridis"](0.85 * i / 255)) for i in range(256)])
        bar = fig.colorbar(ScalarMappable(Normalize(min(numbers), max(numbers)), cmap), ax=axes.tolist(),
                           label="trial number (ring: the best trial)")
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

    from optbench.results.plots import visible  # matplotlib

    complete = [t for t in study.trials if t.value is not None]
    if len(complete) < 2:
        return []
    plots: dict[str, Callable[..., Any]] = {"history": ovm.plot_optimization_history, "slice": plot_slice}
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
        rundir.write_bytes(path, png.getvalue())  # workers sharing a study write their plots at once
        plt.close(fig)
        saved.append(path)
    return saved

