"""Figures from a real multirun on MNIST: the files, and the matplotlib objects behind them."""

import pytest
from matplotlib.collections import PathCollection, PolyCollection
from PIL import Image

from conftest import optbench
from optbench import plots, results
from test_results import write_run

FIGURES = ("learning_curves", "gradient_norms", "learning_rates", "final_metrics", "activations", "histograms_act", "histograms_grad")
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
    assert _legend_texts(fig) == ["sgd", "adam"] and fig.legends[0].get_title().get_text() == "optimizer.name"
    # the training-loss line spans every step; the evaluation lines the 3 evaluations
    assert len(axes[0].get_lines()[0].get_xdata()) == 20 and list(axes[2].get_lines()[0].get_xdata()) == [0, 10, 20]


def test_x_axis_in_epochs_and_seconds(tables):
    runs, metrics, by = tables
    per_epoch = runs["steps_per_epoch"].iloc[0]
    epoch = plots.learning_curves(runs, metrics, by, x="epoch").axes[2]
    assert max(epoch.get_lines()[0].get_xdata()) == pytest.approx(20 / per_epoch)
    time = plots.learning_curves(runs, metrics, by, x="time").axes[2]
    assert time.get_xlabel() == "training time (s)"
    assert max(time.get_lines()[0].get_xdata()) == pytest.approx(runs[runs["optimizer.name"] == "sgd"].train_time.mean(), rel=0.01,
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
