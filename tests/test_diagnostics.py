"""Diagnostics: exact statistics on handmade layers, health flags on lecture cases, gradient check."""

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from optbench import diagnostics
from optbench.models import build_mlp, linear_layers

THRESHOLDS = OmegaConf.create(
    {"exploding_grad_norm": 1e3, "vanishing_ratio": 1e-3, "dead_fraction": 0.5, "saturated_fraction": 0.5}
)


def test_dead_relu_fraction_is_exact_on_a_handmade_layer():
    model = build_mlp([4], activation="relu")
    first = linear_layers(model)[0][1]
    with torch.no_grad():
        first.weight.zero_()
        first.bias.copy_(torch.tensor([-1.0, -2.0, 0.5, -0.1]))  # units 0, 1, 3 never fire
        first.weight[3, 0] = 1.0  # ... except unit 3 fires when pixel 0 > 0.1
    x = torch.zeros(6, 784)
    x[0, 0] = 5.0
    layers = diagnostics.probe(model, nn.CrossEntropyLoss(), x, torch.zeros(6, dtype=torch.long))
    metrics = diagnostics.probe_metrics(layers, "relu", saturation=0.05)
    assert metrics["dead/fc0"].item() == pytest.approx(0.5)


def test_saturation_counts_units_with_small_derivative():
    pre = torch.tensor([[0.0, 10.0, -10.0, 1.0]])
    layers = [{"pre": pre, "act": torch.sigmoid(pre), "grad": torch.zeros_like(pre)}]
    metrics = diagnostics.probe_metrics(layers, "sigmoid", saturation=0.05)
    assert metrics["saturated/fc0"].item() == pytest.approx(0.5)
    assert "dead/fc0" not in metrics


def test_histograms_sum_to_the_number_of_values():
    torch.manual_seed(0)
    model = build_mlp([32, 16], activation="tanh")
    x = torch.randn(50, 784) * 3
    layers = diagnostics.probe(model, nn.CrossEntropyLoss(), x, torch.randint(0, 10, (50,)))
    rows = diagnostics.histograms(layers, bins=20)
    assert {(layer, kind) for layer, kind, *_ in rows} == {(f"fc{i}", k) for i in range(2) for k in ("act", "grad")}
    for layer, _kind, counts, lo, hi in rows:
        width = 32 if layer == "fc0" else 16
        assert counts.sum().item() == 50 * width and len(counts) == 20 and lo < hi
    act_ranges = {(lo, hi) for _, kind, _, lo, hi in rows if kind == "act"}
    assert len(act_ranges) == 1  # one shared axis for all layers


def test_gradient_histograms_span_each_layers_own_values():
    """Vanishing gradients: the first layer's are ~1000x smaller than the last's; a range of their own keeps them
    spread over the bins instead of all in the middle one or two."""
    torch.manual_seed(0)
    model = _deep("sigmoid", nn.init.xavier_uniform_)
    x = torch.randn(64, 784)
    layers = diagnostics.probe(model, nn.CrossEntropyLoss(), x, torch.randint(0, 10, (64,)))
    rows = [r for r in diagnostics.histograms(layers, bins=40) if r[1] == "grad"]
    his = [hi for *_, lo, hi in rows]
    assert max(his) / min(his) > 100  # scales this far apart share no useful axis
    for (layer, _, counts, lo, hi), seen in zip(rows, layers):
        assert lo == -hi and hi == pytest.approx(seen["grad"].abs().max().item())
        assert (counts > 0).sum() >= 10 and counts.max() < 0.5 * counts.sum(), layer


def _deep(activation, init):
    torch.manual_seed(0)
    model = build_mlp([256] * 10, activation=activation)
    for _, layer in linear_layers(model):
        init(layer.weight)
        nn.init.zeros_(layer.bias)
    return model


def _flags(model, activation):
    x, y = torch.randn(256, 784), torch.randint(0, 10, (256,))
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    values = {k: v.item() for k, v in diagnostics.probe_metrics(
        diagnostics.probe(model, nn.CrossEntropyLoss(), x, y), activation, 0.05).items()}
    for name, layer in linear_layers(model):
        values[f"grad_norm/{name}"] = torch.cat([p.grad.flatten() for p in layer.parameters()]).norm().item()
    values["grad_norm"] = torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item()
    flags = {}
    diagnostics.update_flags(flags, 0, values, THRESHOLDS)
    return flags


def test_deep_sigmoid_with_unit_normal_init_is_flagged_and_he_relu_is_not():
    sigmoid = _flags(_deep("sigmoid", lambda w: nn.init.normal_(w, 0.0, 1.0)), "sigmoid")
    assert sigmoid.get("saturated") == 0 or sigmoid.get("vanishing_gradients") == 0
    relu = _flags(_deep("relu", lambda w: nn.init.kaiming_normal_(w, nonlinearity="relu")), "relu")
    assert relu == {}


def test_zeros_init_keeps_every_hidden_unit_identical_while_training():
    torch.manual_seed(0)
    model = build_mlp([8, 8], activation="sigmoid")
    for _, layer in linear_layers(model):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(64, 784), torch.randint(0, 10, (64,))
    for _ in range(5):
        optimizer.zero_grad()
        nn.CrossEntropyLoss()(model(x), y).backward()
        optimizer.step()
    assert linear_layers(model)[1][1].weight.abs().sum() > 0  # it did learn something
    for layer in diagnostics.probe(model, nn.CrossEntropyLoss(), x, y):
        for kind in ("act", "grad"):
            t = layer[kind]
            assert torch.allclose(t, t[:, :1].expand_as(t)), kind  # symmetry never breaks


def test_update_and_distance_metrics():
    model = build_mlp([3])
    layers = linear_layers(model)
    initial = [diagnostics.flat_layer(layer).clone() for _, layer in layers]
    with torch.no_grad():
        layers[0][1].bias += 1.0  # 3 entries moved by 1
    metrics = diagnostics.param_metrics(model, initial, initial)
    assert metrics["update_size/fc0"].item() == pytest.approx(3**0.5)
    assert metrics["distance/fc0"].item() == pytest.approx(3**0.5)
    assert metrics["update_size/fc1"].item() == 0.0


class _DoubledReLUGrad(torch.autograd.Function):
    """ReLU whose backward is wrong on purpose (twice the true gradient)."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return 2 * grad * (x > 0)


class BrokenReLU(nn.Module):
    def forward(self, x):
        return _DoubledReLUGrad.apply(x)


def test_gradcheck_passes_on_the_mlp_and_catches_a_broken_backward():
    torch.manual_seed(0)
    x, y = torch.randn(16, 784), torch.randint(0, 10, (16,))
    good = build_mlp([32, 32], activation="tanh", batchnorm="pre")
    rows = diagnostics.gradcheck(good, nn.CrossEntropyLoss(), x, y)
    assert rows and all(r["passed"] for r in rows), rows
    assert {"fc0.weight", "fc2.bias"} <= {r["param"] for r in rows}
    broken = build_mlp([32], activation="relu")
    broken[2] = BrokenReLU()
    rows = {r["param"]: r for r in diagnostics.gradcheck(broken, nn.CrossEntropyLoss(), x, y)}
    assert not rows["fc0.weight"]["passed"] and rows["fc0.weight"]["max_rel_error"] > 0.3
    assert rows["fc1.weight"]["passed"]  # above the broken module the gradient is right


def test_diagnostics_figures_show_each_layer_for_each_group(mnist_root, tmp_path):
    from optbench import results
    from optbench.results import plots
    from optbench.trainer import fit

    from conftest import compose

    for init in ("normal", "xavier_uniform"):
        cfg = compose(f"data.root={mnist_root}", "device=cpu", "model.activation=sigmoid", "model.hidden=[32,32,32]",
                      f"init={init}", "trainer.max_steps=20", "trainer.eval_every=10",
                      "data.train_eval_size=1000", "data.val_size=1000")  # figures under test, not the evaluation
        fit(cfg, tmp_path / init, {"init": init})
    runs = results.load_runs(tmp_path)
    metrics = results.load_metrics(runs)
    by = ["init.name"]
    fig = plots.activation_stats(runs, metrics, by)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 4 * 2  # act mean, act std, grad std, saturated x two groups
    assert all(len(ax.get_lines()) == 3 for ax in axes)  # one line per hidden layer
    assert {ax.get_title() for ax in axes} >= {"initialisation = normal", "initialisation = xavier_uniform"}
    hist = plots.histograms(runs, results.load_histograms(runs), by, "act")
    cells = [ax for ax in hist.axes if ax.get_visible()]
    assert len(cells) == 3 * 3  # hidden layers x (start, middle, end)
    assert all(len(ax.patches) == 2 for ax in cells)  # one outline per group
    out = tmp_path / "activations.png"
    fig.savefig(out, dpi=plots.DPI)
    assert out.stat().st_size > 20_000
