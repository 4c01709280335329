"""`optbench trajectories`: the real torch.optim objects from conf/optimizer/ on 2-D surfaces."""

import matplotlib
import numpy as np
import pytest
import torch

from optbench import trajectories as tr

from conftest import optbench

matplotlib.use("Agg")


def test_momentum_reaches_the_quadratics_minimum_in_fewer_steps_than_sgd_at_the_same_lr():
    reached = {}
    for name in ("sgd", "momentum"):
        cfg = tr.compose(name, "quadratic", ["optimizer.lr=0.01", "steps=600"])
        assert cfg.optimizer.lr == 0.01 and cfg.surface.condition == 100
        reached[name] = tr.steps_to_reach(tr.run(cfg), cfg.surface.minimum, 0.05)
    assert reached["momentum"] is not None and reached["sgd"] is not None
    assert reached["momentum"] < reached["sgd"] / 2, reached


def test_adam_path_equals_torch_adam_stepped_by_hand():
    cfg = tr.compose("adam", "rosenbrock", ["steps=60"])
    result = tr.run(cfg)
    assert result["optimizer"] == "Adam" and result["lr"] == cfg.surface.lr.adam

    xy = torch.tensor(list(cfg.surface.start), requires_grad=True)
    adam = torch.optim.Adam([xy], lr=cfg.surface.lr.adam, betas=(0.9, 0.999), eps=1e-8)
    expected = [xy.detach().clone()]
    for _ in range(60):
        adam.zero_grad()
        ((1 - xy[0]) ** 2 + 100 * (xy[1] - xy[0] ** 2) ** 2).backward()
        adam.step()
        expected.append(xy.detach().clone())
    np.testing.assert_allclose(result["path"], torch.stack(expected).numpy(), rtol=1e-5, atol=1e-6)


def test_gradient_descent_on_the_saddles_stable_manifold_stalls_at_the_saddle():
    on = tr.run(tr.compose("sgd", "saddle", ["surface.start=[-1.0,0.0]", "steps=200"]))
    end = on["path"][-1]
    assert np.linalg.norm(end) < 1e-6 and on["stopped"] is None  # the gradient 2(x, -y) vanished there
    # a hair off the manifold, the same optimizer leaves: the test can tell the two apart
    off = tr.run(tr.compose("sgd", "saddle", ["surface.start=[-1.0,0.001]", "steps=200"]))
    assert abs(off["path"][-1][1]) > 1


def test_lr_override_applies_to_every_optimizer_and_surface_rates_otherwise():
    assert tr.compose("adam", "saddle", []).optimizer.lr == 0.05  # the surface's rate for adam
    for name in ("sgd", "adam"):
        assert tr.compose(name, "saddle", ["optimizer.lr=0.002"]).optimizer.lr == 0.002
    assert tr.compose("sgd", "saddle", ["surface.lr.sgd=0.3"]).optimizer.lr == 0.3
    assert tr.expand(["optimizer=sgd,adam", "surface=saddle", "steps=5"]) == (["sgd", "adam"], ["saddle"], ["steps=5"])


def test_noisy_gradients_are_seeded():
    runs = [tr.run(tr.compose("sgd", "beale", ["surface.noise=0.5", f"seed={s}", "steps=30"])) for s in (0, 0, 1)]
    clean = tr.run(tr.compose("sgd", "beale", ["steps=30"]))
    np.testing.assert_array_equal(runs[0]["path"], runs[1]["path"])
    assert not np.allclose(runs[0]["path"], runs[2]["path"]) and not np.allclose(runs[0]["path"], clean["path"])


@pytest.mark.parametrize("name", ["gd", "lbfgs", "momentum_ema", "adadelta", "nadam"])
def test_other_optimizer_configs_step_on_a_surface(name):
    if not (tr.Path(tr.__file__).parent / "conf" / "optimizer" / f"{name}.yaml").is_file():
        pytest.skip(f"no optimizer/{name}.yaml yet")
    result = tr.run(tr.compose(name, "quadratic", ["steps=20"]))
    assert np.isfinite(result["path"]).all() and result["f"][-1] < result["f"][0]


def test_figures_have_one_line_per_optimizer():
    cfgs = [tr.compose(n, "rosenbrock", ["steps=20"]) for n in ("sgd", "adam")]
    results = [tr.run(c) for c in cfgs]
    for fig in (tr.plot_paths(cfgs[0].surface, results), tr.plot_values(cfgs[0].surface, results)):
        labels = [line.get_label() for line in fig.axes[0].get_lines()]
        assert [lab.split()[0] for lab in labels if not lab.startswith(("start", "minimum", "_"))] == ["sgd", "adam"]


def test_cli_writes_pngs_and_gif(tmp_path):
    out = optbench("trajectories", "optimizer=sgd,adam", "surface=saddle,quadratic", "steps=10", "--gif",
                  "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    for stem in ("saddle", "quadratic"):
        for suffix in ("_paths.png", "_values.png", "_paths.gif"):
            assert (tmp_path / f"{stem}{suffix}").stat().st_size > 1000
    noisy = optbench("trajectories", "optimizer=sgd", "surface=beale", "surface.noise=1", "steps=5",
                     "--out", str(tmp_path))
    assert noisy.returncode == 0 and (tmp_path / "beale_noisy_paths.png").is_file()


@pytest.mark.parametrize("args, words", [
    (["surface=banana"], ["surface=banana", "rosenbrock"]),
    (["optimizer=adamm"], ["did you mean adam"]),
    (["optimizer.lrr=1"], ["lrr"]),
    (["steps=0"], ["steps=0"]),
])
def test_user_mistakes_are_one_line_errors(tmp_path, args, words):
    out = optbench("trajectories", *args, "--out", str(tmp_path))
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert all(w in out.stderr for w in words), out.stderr


# --- Figures fit for a slide ---

def _paths_figure(surface, names, overrides=()):
    cfgs = [tr.compose(n, surface, list(overrides)) for n in names]
    results = [tr.run(c) for c in cfgs]
    return cfgs[0].surface, results, tr.plot_paths(cfgs[0].surface, results)


def _path_lines(fig, results):
    ax = fig.axes[0]
    labels = {tr._label(r) for r in results}
    return [line for line in ax.get_lines() if line.get_label() in labels]


@pytest.mark.parametrize("surface, names", [("quadratic", ["sgd", "momentum", "nesterov", "adam"]),
                                            ("rosenbrock", list(tr.DEFAULT_OPTIMIZERS))])
def test_each_path_shows_even_where_paths_coincide(surface, names):
    """SGD and Nesterov share the quadratic's valley floor, six optimizers Rosenbrock's: each path's own colour must
    still show along most of it (measured on the drawn pixels)."""
    from figure_checks import visible_share

    _, results, fig = _paths_figure(surface, names)
    fig.set_dpi(100)
    lines = _path_lines(fig, results)
    assert len(lines) == len(names)
    shares = {line.get_label().split()[0]: visible_share(fig, line) for line in lines}
    assert min(shares.values()) > 0.3, shares


def test_paths_are_visible_on_white_and_over_the_contours():
    from figure_checks import pale_lines, wcag_contrast

    _, results, fig = _paths_figure("rosenbrock", list(tr.DEFAULT_OPTIMIZERS), ["steps=50"])
    assert not pale_lines(fig)
    contour_grey = fig.axes[0].collections[0].get_edgecolor()[0]
    for line in _path_lines(fig, results):  # the paths stand out from the contours they follow, too
        assert wcag_contrast(line.get_color(), contour_grey) > 1.5, line.get_label()


def test_view_is_where_the_paths_went_and_the_plot_fills_the_figure():
    """Noisy Beale: the paths stay in a corner of the +-4.5 window; the figure shows that corner, with little margin."""
    from figure_checks import drawn

    surface, results, fig = _paths_figure("beale", list(tr.DEFAULT_OPTIMIZERS), ["surface.noise=2"])
    ax = fig.axes[0]
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert (x1 - x0) * (y1 - y0) < 0.25 * 9.0 * 9.0  # a quarter of the window at most
    xy = np.concatenate([r["path"] for r in results])
    inside = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
    assert inside.mean() > 0.99  # and every path is in it
    renderer = drawn(fig).canvas.get_renderer()
    plot = ax.get_window_extent(renderer)
    assert plot.width * plot.height > 0.45 * fig.bbox.width * fig.bbox.height  # no wide empty margins
    legend = fig.legends[0].get_window_extent(renderer)
    assert legend.y1 <= plot.y0 and plot.x0 < legend.x0 + legend.width / 2 < plot.x1  # under the plot, centred
