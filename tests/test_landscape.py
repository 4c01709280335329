"""`optbench landscape`: loss slices around a real (tiny) run's weights."""

import json

import matplotlib
import numpy as np
import pytest
import torch
from torch.func import functional_call

from optbench import landscape as ls
from optbench.trainer import fit

from conftest import compose, optbench

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def run_dir(mnist_root, tmp_path_factory):
    """30 steps on real MNIST, with batch norm so that its parameters must get zero directions."""
    path = tmp_path_factory.mktemp("run")
    cfg = compose(f"data.root={mnist_root}", "trainer.epochs=1", "trainer.max_steps=30", "model.hidden=[64,32]",
                  "model.batchnorm=pre", "device=cpu", "optimizer=adam", "optimizer.lr=0.01",
                  "data.train_eval_size=null")  # its recorded training loss is the whole split's, as the grid's centre
    assert fit(cfg, path)["status"] == "completed"
    return path


def test_grid_centre_is_the_runs_recorded_training_loss(run_dir):
    r = ls.landscape(run_dir, points=5, span=0.5, samples=50000)  # the whole training split, as recorded
    recorded = json.loads((run_dir / "summary.json").read_text())["final"]["train_loss"]
    assert r["surface"][2, 2] == pytest.approx(recorded, rel=1e-4)
    assert r["curve"][2] == pytest.approx(recorded, rel=1e-4)
    assert r["interp"][3] == pytest.approx(recorded, rel=1e-4)  # t = 1: the final weights
    assert not np.allclose(r["surface"], recorded)  # the other points are elsewhere


def test_centre_equals_the_loss_computed_directly_on_the_subset(run_dir):
    r = ls.landscape(run_dir, points=5, samples=3000, which="init")
    cfg, model, init, _ = ls.load_run(run_dir, "init")
    x, y = ls.training_subset(cfg, 3000, torch.device("cpu"))
    with torch.no_grad():
        direct = torch.nn.functional.cross_entropy(model(x), y).item()
    assert r["surface"][2, 2] == pytest.approx(direct, rel=1e-5)
    assert r["interp"][1] == pytest.approx(direct, rel=1e-5)  # t = 0 is the initial weights


def test_directions_are_filter_normalised(run_dir):
    _, model, _, _ = ls.load_run(run_dir)
    params = {n: p.detach() for n, p in model.named_parameters()}
    d = ls.filter_normalised_direction(params, torch.Generator().manual_seed(0))
    assert set(d) == set(params)
    for name, p in params.items():
        if p.dim() == 1:  # biases and batch-norm weight/bias
            assert torch.count_nonzero(d[name]) == 0, name
        else:
            torch.testing.assert_close(d[name].norm(dim=1), p.norm(dim=1))
            assert not torch.allclose(d[name], p)


def test_batched_slice_equals_one_model_at_a_time(run_dir):
    """The first-layer shortcut and vmap give what a plain forward pass gives at each point."""
    cfg, model, _, _ = ls.load_run(run_dir)
    x, y = ls.training_subset(cfg, 500, torch.device("cpu"))
    base = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator().manual_seed(1)
    dirs = [ls.filter_normalised_direction(base, gen) for _ in range(2)]
    coeffs = torch.tensor([[0.3, -0.7], [1.0, 0.2], [-0.5, 0.5]])
    batched = ls.losses_along(model, torch.nn.CrossEntropyLoss(), x, y, base, dirs, coeffs, chunk=2)
    for c, got in zip(coeffs, batched):
        params = {n: base[n] + c[0] * dirs[0][n] + c[1] * dirs[1][n] for n in base}
        with torch.no_grad():
            want = torch.nn.functional.cross_entropy(functional_call(model, params, (x,)), y)
        assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_cli_compares_two_runs_and_writes_figures(run_dir, tmp_path):
    out = optbench("landscape", str(run_dir), str(run_dir), "--points", "5", "--samples", "500", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for name in ("landscape_1d.png", "landscape_2d.png", "landscape.npz"):
        assert (tmp_path / name).stat().st_size > 1000
    default = optbench("landscape", str(run_dir), "--points", "3", "--samples", "200", "--init")
    assert default.returncode == 0, default.stderr
    assert (run_dir / "plots" / "landscape_init_2d.png").is_file()


def test_two_panels_share_one_colour_scale(run_dir):
    r = ls.landscape(run_dir, points=5, samples=500)
    r2 = dict(r, surface=r["surface"] * 3, name="other")
    fig = ls.plot_surfaces([r, r2])
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert len(panels) == 2
    norms = {(c.norm.vmin, c.norm.vmax) for ax in panels for c in ax.collections if getattr(c, "filled", False)}
    assert len(norms) == 1 and min(norms)[1] >= r2["surface"].max() * 0.999


def test_not_a_run_directory_is_a_one_line_error(tmp_path):
    out = optbench("landscape", str(tmp_path))
    assert out.returncode == 2 and "checkpoint.pt" in out.stderr and out.stderr.strip().count("\n") == 0


@pytest.fixture(scope="module")
def two_runs(run_dir, tmp_path_factory):
    """The run, and a copy whose config says batch size 32: two runs told apart by one setting."""
    import shutil

    from omegaconf import OmegaConf

    other = tmp_path_factory.mktemp("other") / "2026-12-01_17-59-38"  # a time stamp, as outputs/ names runs
    shutil.copytree(run_dir, other)
    cfg = OmegaConf.load(other / "config.yaml")
    cfg.trainer.batch_size = 32
    OmegaConf.save(cfg, other / "config.yaml")
    return [ls.landscape(d, points=7, samples=500) for d in (run_dir, other)]


def test_panels_are_titled_by_the_settings_that_differ_not_the_folder(two_runs):
    fig = ls.plot_surfaces(two_runs)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["batch size 128", "batch size 32"]
    assert "adam, learning rate 0.01" in fig.get_suptitle().lower() and "2026" not in fig.get_suptitle()
    curves = ls.plot_curves(two_runs)
    assert [t.get_text() for t in curves.axes[1].get_legend().get_texts()] == titles


def test_landscape_ticks_are_plain_numbers_and_the_colour_bar_reads_at_round_values(two_runs):
    from figure_checks import drawn, labelled_ticks, overlaps, pale_lines

    for fig in (ls.plot_surfaces(two_runs), ls.plot_curves(two_runs)):
        assert not overlaps(fig), overlaps(fig)
        assert not pale_lines(fig)
        for ax in fig.axes:
            for text in labelled_ticks(ax.xaxis) + labelled_ticks(ax.yaxis):
                assert "times" not in text and "^" not in text and "$" not in text, text  # not 6x10^-1
    bar = drawn(ls.plot_surfaces(two_runs)).axes[-1]  # the colour bar's axes
    ticks = labelled_ticks(bar.yaxis)
    assert len(ticks) >= 2
    for text in ticks:
        mantissa = float(text) / 10 ** np.floor(np.log10(float(text)))
        assert round(mantissa, 6) in (1.0, 2.0, 5.0), ticks
