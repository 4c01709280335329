"""Figures from a real multirun on MNIST: the files, and the matplotlib objects behind them."""

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection
from PIL import Image
from test_results import write_run

from optbench import results
from optbench.results import plots, rundir

from conftest import optbench
from figure_checks import drawn, labelled_ticks, overlaps, pale_lines

FIGURES = ("learning_curves", "gradient_norms", "learning_rates", "final_metrics", "activations", "histograms_act",
           "histograms_grad")
COMPARED = ("differences", "rank_over_seeds")  # two groups sharing seeds (tests/test_stats.py checks what they say)


@pytest.fixture(scope="module")
def tables(shared_sweep):
    runs = results.load_runs(shared_sweep)
    return runs, results.load_metrics(runs), results.resolve_by(runs, None)


def test_plot_command_writes_every_figure_as_a_real_image(shared_sweep):
    out = optbench("plot", str(shared_sweep))
    assert out.returncode == 0, out.stderr
    for name in FIGURES + COMPARED:
        path = shared_sweep / "plots" / f"{name}.png"
        assert path.stat().st_size > 20_000, name
        with Image.open(path) as image:
            image.verify()  # a whole, decodable PNG
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= 1000
            assert round(image.info["dpi"][0]) >= 150
    assert not (shared_sweep / "plots" / "lr_sensitivity.png").exists()  # lr only followed the optimizer


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_other_formats(shared_sweep, tmp_path, fmt, magic):
    out = optbench("plot", str(shared_sweep), "--format", fmt, "--x", "epoch", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{n}.{fmt}" for n in FIGURES + COMPARED)
    assert all(p.read_bytes().startswith(magic) for p in tmp_path.iterdir())


def _legend_texts(fig):
    return [t.get_text() for t in fig.legends[0].get_texts()]


def test_learning_curves_one_line_and_band_per_group(tables):
    runs, metrics, by = tables
    fig = plots.learning_curves(runs, metrics, by)
    axes = fig.axes
    assert len(axes) == 4
    for ax in axes:
        assert len(ax.get_lines()) == 2  # mean of sgd, mean of adam
        assert sum(isinstance(c, PolyCollection) for c in ax.collections) == 2  # min-max over the 2 seeds
        assert ax.get_title() and ax.get_ylabel()
    assert [ax.get_yscale() for ax in axes] == ["log", "log", "linear", "linear"]
    assert axes[2].get_xlabel() == "optimisation step"
    assert _legend_texts(fig) == ["sgd", "adam"] and fig.legends[0].get_title().get_text() == "optimizer"
    # the training-loss line spans every step; the evaluation lines the 3 evaluations
    assert len(axes[0].get_lines()[0].get_xdata()) == 20 and list(axes[2].get_lines()[0].get_xdata()) == [0, 10, 20]


def test_x_axis_in_epochs_and_seconds(tables):
    runs, metrics, by = tables
    per_epoch = runs["steps_per_epoch"].iloc[0]
    epoch = plots.learning_curves(runs, metrics, by, x="epoch").axes[2]
    assert max(epoch.get_lines()[0].get_xdata()) == pytest.approx(20 / per_epoch)
    time = plots.learning_curves(runs, metrics, by, x="time").axes[2]
    assert time.get_xlabel() == "training time (s)"
    sgd_time = runs[runs["optimizer.name"] == "sgd"].train_time.mean()
    assert max(time.get_lines()[0].get_xdata()) == pytest.approx(sgd_time, rel=0.01,
                                                                  abs=1e-3)  # summaries round to 1 ms


def test_gradient_norms_global_and_one_panel_per_layer(tables):
    runs, metrics, by = tables
    fig = plots.gradient_norms(runs, metrics, by)
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["all parameters", "layer fc0", "layer fc1", "layer fc2"]
    assert all(len(ax.get_lines()) == 2 and ax.get_yscale() == "log" for ax in fig.axes)


def test_learning_rate_curves_are_the_recorded_rates(tables):
    runs, metrics, by = tables
    (ax,) = plots.learning_rates(runs, metrics, by).axes
    sgd, adam = ax.get_lines()
    assert set(sgd.get_ydata()) == {0.1} and set(adam.get_ydata()) == {0.001}


def test_final_metrics_one_box_and_strip_per_group(tables):
    runs, metrics, by = tables
    fig = plots.final_metrics(runs, by)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert [t.get_text() for t in ax.get_xticklabels()] == ["sgd", "adam"]
        strips = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert [len(c.get_offsets()) for c in strips] == [2, 2]  # one dot per run


def test_lr_sensitivity_one_line_per_optimizer(tmp_path):
    for opt in ("x", "y"):
        for lr in (0.001, 0.01, 0.1):
            for seed in (0, 1):
                write_run(tmp_path / f"{opt}_{lr}_{seed}", opt, lr, seed, val=0.9 + lr, test=0.9)
    runs = results.load_runs(tmp_path)
    by = results.resolve_by(runs, None)
    assert by == ["optimizer.name"]
    (ax,) = plots.lr_sensitivity(runs, by).axes
    assert ax.get_xscale() == "log" and len(ax.containers) == 2
    assert [list(c.lines[0].get_xdata()) for c in ax.containers] == [[0.001, 0.01, 0.1]] * 2
    out = optbench("plot", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "plots" / "lr_sensitivity.png").stat().st_size > 20_000


def test_single_run_directory(shared_sweep, tmp_path):
    run_dir = next(shared_sweep.glob("2_*optimizer=adam*"))
    out = optbench("plot", str(run_dir), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert all((tmp_path / f"{name}.png").exists() for name in FIGURES)
    runs = results.load_runs(run_dir)
    fig = plots.learning_curves(runs, results.load_metrics(runs), results.resolve_by(runs, None))
    assert all(len(ax.get_lines()) == 1 and not ax.collections for ax in fig.axes)
    (label,) = _legend_texts(fig)  # the run's name, broken at commas into lines that leave room for the panels
    assert label.replace("\n", ",") == run_dir.name and max(map(len, label.splitlines())) <= 40


# --- Figures fit for a slide, on tiny constructed runs (no training) ---

LAYERS = 6


def write_diagnostics(run_dir, seed, flags=None, steps=(0, 15, 30), bins=40):
    """Add what diagnostics=basic records to a write_run folder: per-layer probe statistics (split diag), histograms
    at start, middle and end (gradients 10x smaller per layer down the net), and health flags in summary.json."""
    rng = np.random.default_rng(seed)
    rows = [(step, 1, "diag", f"{stat}/fc{i}", value) for step in steps for i in range(LAYERS)
            for stat, value in (("act_mean", 0.5 + 0.02 * i), ("act_std", 0.2 - 0.01 * i),
                                ("grad_std", 10.0 ** (i - LAYERS)), ("saturated", 0.1 * i))]
    metrics = pd.concat([pd.read_csv(run_dir / rundir.METRICS), pd.DataFrame(rows, columns=rundir.COLUMNS)])
    metrics.to_csv(run_dir / rundir.METRICS, index=False)
    hist = []
    for step in steps:
        for i in range(LAYERS):
            for kind, values in (("act", rng.beta(2, 2, 5000)), ("grad", rng.laplace(0, 10.0 ** (i - LAYERS), 5000))):
                lo, hi = (0.0, 1.0) if kind == "act" else (-np.abs(values).max(), np.abs(values).max())
                counts, edges = np.histogram(values, bins, (lo, hi))
                hist += [(step, 1, f"fc{i}", kind, b, edges[b], edges[b + 1], c) for b, c in enumerate(counts)]
    pd.DataFrame(hist, columns=["step", "epoch", "layer", "kind", "bin", "lo", "hi", "count"]).to_csv(
        run_dir / "histograms.csv", index=False)
    summary = json.loads((run_dir / rundir.SUMMARY).read_text())
    summary["flags"] = {"exploding_gradients": None, "vanishing_gradients": None, "dead_relu": None, "saturated": None,
                        **(flags or {})}
    rundir.write_json(run_dir / rundir.SUMMARY, summary)


@pytest.fixture(scope="module")
def lr_sweep(tmp_path_factory):
    """Two optimizers x two learning rates x two seeds with diagnostics: x is best at lr 0.1, y at lr 0.01."""
    root = tmp_path_factory.mktemp("lr_sweep")
    for opt, best in (("x", 0.1), ("y", 0.01)):
        for lr in (0.1, 0.01):
            for seed in (0, 1):
                run = root / "sweep" / f"{opt}_{lr}_{seed}"
                write_run(run, opt, lr, seed, val=0.95 if lr == best else 0.90, test=0.9)
                write_diagnostics(run, seed, {"saturated": 0, "vanishing_gradients": 10} if opt == "x" else None)
    return root / "sweep"


@pytest.fixture(scope="module")
def lr_figures(lr_sweep):
    runs = results.load_runs(lr_sweep)
    return plots.figures(runs, results.load_metrics(runs), results.resolve_by(runs, None))


def test_legends_say_in_words_what_varied_and_which_rate_each_curve_used(lr_figures):
    for name in ("learning_curves", "gradient_norms", "learning_rates", "histograms_act", "histograms_grad"):
        legend = lr_figures[name].legends[0]
        assert legend.get_title().get_text() == "optimizer, learning rate", name
        assert _legend_texts(lr_figures[name]) == ["x, 0.1", "y, 0.01"], name  # each group's rate, chosen on val
    assert lr_figures["lr_sensitivity"].legends[0].get_title().get_text() == "optimizer"


def test_every_line_stands_out_from_the_background(lr_figures):
    assert set(lr_figures) >= {"learning_curves", "activations", "histograms_grad", "lr_sensitivity"}
    for name, fig in lr_figures.items():
        assert not pale_lines(fig), (name, pale_lines(fig))
    (ax, *_) = lr_figures["activations"].axes
    assert len(ax.get_lines()) == LAYERS  # the last layer's line is among those checked


@pytest.mark.parametrize("groups", [2, 10, 14])
def test_palette_is_distinct_and_visible(groups):
    from figure_checks import wcag_contrast

    colours = plots.palette(groups)
    assert len(set(colours)) == groups
    assert min(wcag_contrast(c, "white") for c in colours) >= 3.0


def test_no_label_overlaps_another(lr_figures):
    for name, fig in lr_figures.items():
        found = overlaps(fig)
        assert not found, (name, found[:5])


def test_gradient_histograms_have_their_own_scales_and_a_fraction_axis(lr_figures):
    fig = drawn(lr_figures["histograms_grad"])
    cells = [ax for ax in fig.axes if ax.get_visible()]
    assert len(cells) == LAYERS * 3
    first, last = cells[0], cells[-3]  # fc0 and fc5 at step 0: scales 1e5 apart, each filling its panel
    assert abs(last.get_xlim()[1] / first.get_xlim()[1]) > 1e4
    assert all(len(labelled_ticks(ax.xaxis)) >= 2 for ax in cells)  # every panel says its own scale
    assert first.get_yscale() == "log" and len(labelled_ticks(first.yaxis)) >= 2
    assert all(len(ax.patches) == 2 for ax in cells)  # one outline per group
    act = drawn(lr_figures["histograms_act"])
    assert len(labelled_ticks(act.axes[0].yaxis)) >= 2  # fractions readable off the axis


def test_plot_and_report_read_several_folders_and_say_where_they_wrote(lr_sweep, tmp_path):
    import shutil

    first, second = tmp_path / "first", tmp_path / "second"
    for folder, opt in ((first, "x"), (second, "y")):
        for run in lr_sweep.glob(f"{opt}_*"):
            shutil.copytree(run, folder / run.name)
    chosen = tmp_path / "figures"
    out = optbench("plot", str(first), str(second), "--out", str(chosen))
    assert out.returncode == 0, out.stderr
    assert f"8 runs from {first}, {second}; wrote 11 figures into {chosen}:" in out.stdout
    assert (chosen / "learning_curves.png").stat().st_size > 20_000 and not any(tmp_path.glob("*/plots"))
    runs = results.load_runs(first, second)
    legend = _legend_texts(plots.learning_curves(runs, results.load_metrics(runs), ["optimizer.name"]))
    assert legend == ["x", "y"]  # both folders on one figure
    out = optbench("report", str(first), str(second), "--out", str(tmp_path / "tables"))
    assert out.returncode == 0, out.stderr
    assert f"into {tmp_path / 'tables'}:" in out.stdout and (tmp_path / "tables" / "ranking.md").exists()
    out = optbench("report", str(first), str(second))
    assert f"into {first} (the first DIR; --out DIR to choose)" in out.stdout


def test_ranking_has_a_column_of_health_flags(lr_sweep, tmp_path):
    out = optbench("report", str(lr_sweep), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    ranking = (tmp_path / "ranking.md").read_text().splitlines()
    header = [c.strip() for c in ranking[0].strip("|").split("|")]
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.strip("|").split("|")] for line in ranking[2:]}
    flags = header.index("health flags")
    assert rows["x"][flags] == "vanishing gradients 2/2, saturated 2/2"
    assert rows["y"][flags] == "none"
    assert "vanishing gradients 2/2, saturated 2/2" in out.stdout
