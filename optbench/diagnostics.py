"""Why a network is or is not learning: per-layer statistics, histograms, health flags, gradient check.

Names follow Cockpit (Schneider et al. 2021) where it has one: `update_size`
is ||theta_t - theta_{t-1}||, `distance` is ||theta_t - theta_0||. Everything
returns device tensors; the trainer reads them back once per evaluation.
"""

import copy
from typing import cast

import torch
from torch import nn

from optbench.models import ACTIVATIONS, linear_layers

_ACTIVATION_TYPES = tuple(ACTIVATIONS.values())


def probe(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor) -> list[dict]:
    """Per hidden layer: its pre-activation, activation and dL/d(pre-activation) on one batch.

    Runs in eval mode (batch norm uses its running statistics, dropout is
    off) and uses autograd.grad, so neither the model's .grad nor its running
    statistics change.
    """
    was_training = model.training
    model.eval()
    layers, h = [], x
    with torch.enable_grad():
        for module in cast(nn.Sequential, model):  # models.build_mlp: an nn.Sequential
            out = module(h)
            if isinstance(module, _ACTIVATION_TYPES):
                layers.append({"pre": h, "act": out})
            h = out
        pres = [layer["pre"] for layer in layers]
        # no hidden layer (model.hidden=[], logistic regression): nothing to probe, and autograd.grad refuses no inputs
        grads = torch.autograd.grad(loss_fn(h, y), pres, allow_unused=True) if pres else []
    model.train(was_training)
    for layer, g in zip(layers, grads):
        layer["pre"] = layer["pre"].detach()
        layer["act"] = layer["act"].detach()
        layer["grad"] = torch.zeros_like(layer["pre"]) if g is None else g.detach()
    return layers


def _relative_derivative(activation: str, pre: torch.Tensor) -> torch.Tensor | None:
    """g'(z) / max g' for the saturating activations; None for the others."""
    if activation == "sigmoid":
        s = torch.sigmoid(pre)
        return s * (1 - s) / 0.25
    if activation == "tanh":
        return 1 - torch.tanh(pre) ** 2
    return None


def probe_metrics(layers: list[dict], activation: str, saturation: float) -> dict[str, torch.Tensor]:
    """Activation and gradient statistics per hidden layer (fc0 feeds the first activation).

    saturated: fraction of (sample, unit) pairs whose derivative is below
    `saturation` times its maximum (sigmoid, tanh); dead: fraction of units
    that are zero for every sample in the batch (relu).
    """
    out = {}
    for i, layer in enumerate(layers):
        pre, act, grad = layer["pre"], layer["act"], layer["grad"]
        name = f"fc{i}"
        out[f"preact_mean/{name}"] = pre.mean()
        out[f"preact_std/{name}"] = pre.std()
        out[f"act_mean/{name}"] = act.mean()
        out[f"act_std/{name}"] = act.std()
        out[f"grad_std/{name}"] = grad.std()
        derivative = _relative_derivative(activation, pre)
        if derivative is not None:
            out[f"saturated/{name}"] = (derivative < saturation).float().mean()
        if activation == "relu":
            out[f"dead/{name}"] = (act == 0).all(dim=0).float().mean()
    return out


def histograms(layers: list[dict], bins: int) -> list[tuple[str, str, torch.Tensor, float, float]]:
    """(layer, kind, counts, lo, hi) for activations and gradients of each hidden layer.

    Activations share one range across all layers, so layers compare on the
    same axis (the lectures' per-layer histogram figure). Gradients get a
    range per layer, symmetric around 0: their scales differ by orders of
    magnitude between layers (vanishing gradients are the story), and one
    shared range would put the small layers' every value into the middle bin
    or two. Values are clamped into the range, so the counts of a histogram
    always sum to the number of values.
    """
    rows = []
    for kind in ("act", "grad"):
        values = [layer[kind].flatten().float() for layer in layers]
        if not values:
            continue
        lo, hi = min(v.min() for v in values).item(), max(v.max() for v in values).item()
        for i, v in enumerate(values):
            if kind == "grad":  # the sign of a gradient carries no story here
                lo, hi = -v.abs().max().item(), v.abs().max().item()
            top = max(hi, lo + 1e-12)  # all values equal: one bin's width above them
            rows.append((f"fc{i}", kind, torch.histc(v.clamp(lo, top), bins=bins, min=lo, max=top), lo, top))
    return rows


def param_metrics(model: nn.Module, previous: list[torch.Tensor],
                  initial: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per Linear layer (weight and bias together): norm, last update size, distance from init, their ratio.

    `previous` and `initial` hold the layers' parameters, flattened and
    concatenated per layer, one step ago and at step 0.
    """
    out = {}
    for (name, layer), prev, init in zip(linear_layers(model), previous, initial):
        now = flat_layer(layer)
        norm = now.norm()
        update = (now - prev).norm()
        out[f"weight_norm/{name}"] = norm
        out[f"update_size/{name}"] = update
        out[f"distance/{name}"] = (now - init).norm()
        out[f"update_ratio/{name}"] = update / norm.clamp_min(1e-12)
    return out


def flat_layer(layer: nn.Linear) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in layer.parameters()])


def at_evaluation(model: nn.Module, loss_fn, probe_x: torch.Tensor, probe_y: torch.Tensor, activation: str,
                  saturation: float, step: int, previous: tuple | None, initial: list[torch.Tensor]):
    """The diag row of one evaluation, as floats (one host read), and the probed layers for histograms.

    Parameter metrics need `previous` = (step, per-layer parameters) taken one
    step before this evaluation; the probe statistics come from the fixed batch.
    """
    stats = {}
    if previous is not None and previous[0] == step - 1:
        stats.update(param_metrics(model, previous[1], initial))
    layers_seen = probe(model, loss_fn, probe_x, probe_y)
    stats.update(probe_metrics(layers_seen, activation, saturation))
    numbers = dict(zip(stats, torch.stack(list(stats.values())).tolist())) if stats else {}
    return numbers, layers_seen


HISTOGRAM_COLUMNS = ("step", "epoch", "layer", "kind", "bin", "lo", "hi", "count")


def histogram_schedule(fractions, total_steps: int) -> list[int]:
    """The steps at (or after) which histograms are stored: `fractions` of the run's steps."""
    return sorted({min(round(f * total_steps), total_steps) for f in fractions})


def histograms_due(level: str, pending_steps: list[int], step: int) -> bool:
    """Whether this evaluation stores histograms: every one at level full, else the first at or after each
    step of `pending_steps` (which it consumes)."""
    due = bool(pending_steps) and step >= pending_steps[0]
    while pending_steps and step >= pending_steps[0]:
        pending_steps.pop(0)
    return level == "full" or due


def histogram_rows(step: int, epoch: int, layers_seen: list[dict], bins: int):
    """histograms.csv rows: step, epoch, layer, kind, bin, lo, hi, count."""
    for layer, kind, counts, lo, hi in histograms(layers_seen, bins):
        width = (hi - lo) / len(counts)
        yield from ((step, epoch, layer, kind, b, lo + b * width, lo + (b + 1) * width, int(c))
                    for b, c in enumerate(counts.tolist()))


def update_flags(flags: dict, step: int, values: dict, thresholds) -> None:
    """Record the first step at which each health threshold was crossed.

    `values` maps metric names (as in metrics.csv) to floats at `step`;
    thresholds come from the diagnostics config.
    """

    def mark(flag: str, crossed: bool) -> None:
        if crossed and flags.get(flag) is None:
            flags[flag] = step

    grad = values.get("grad_norm")
    if grad is not None:
        mark("exploding_gradients", not grad < thresholds.exploding_grad_norm)  # NaN counts as exploding
    layer_norms = [v for k, v in values.items() if k.startswith("grad_norm/fc") and "." not in k]
    if len(layer_norms) >= 2 and max(layer_norms) > 0:
        mark("vanishing_gradients", min(layer_norms) / max(layer_norms) < thresholds.vanishing_ratio)
    for flag, prefix, limit in (("dead_relu", "dead/", thresholds.dead_fraction),
                                ("saturated", "saturated/", thresholds.saturated_fraction)):
        fractions = [v for k, v in values.items() if k.startswith(prefix)]
        mark(flag, bool(fractions) and max(fractions) > limit)


def gradcheck(model: nn.Module, loss_fn, x: torch.Tensor, y: torch.Tensor, samples: int = 5,
              eps: float = 1e-5, rtol: float = 1e-4, atol: float = 1e-7, seed: int = 0) -> list[dict]:
    """Autograd against central finite differences, in float64, on a few weights of each parameter.

    Lecture 000's numerical derivative: (L(w + eps) - L(w - eps)) / (2 eps).
    In float64 with eps = 1e-5 its own error is about 1e-10, far below a
    wrong backward's. An entry passes when |numeric - autograd| <= atol +
    rtol * |autograd|. One row per parameter tensor: the worst entry.
    """
    model = copy.deepcopy(model).double().eval()
    x = x.double()
    generator = torch.Generator().manual_seed(seed)

    def loss() -> float:
        with torch.no_grad():
            return loss_fn(model(x), y).item()

    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm1d)]
    modules = linear_layers(model) + [(f"bn{i}", m) for i, m in enumerate(norms)]
    names = {id(p): f"{module_name}.{kind}" for module_name, module in modules for kind, p in module.named_parameters()}
    rows = []
    for module_name, param in model.named_parameters():
        name = names.get(id(param), module_name)
        analytic = torch.autograd.grad(loss_fn(model(x), y), param)[0].view(-1)
        flat = param.data.view(-1)
        worst_abs = worst_rel = 0.0
        passed = True
        for index in torch.randperm(flat.numel(), generator=generator)[:samples].tolist():
            original = flat[index].item()
            flat[index] = original + eps
            plus = loss()
            flat[index] = original - eps
            minus = loss()
            flat[index] = original
            numeric, exact = (plus - minus) / (2 * eps), analytic[index].item()
            error = abs(numeric - exact)
            worst_abs = max(worst_abs, error)
            worst_rel = max(worst_rel, error / max(abs(numeric), abs(exact), 1e-12))
            passed &= error <= atol + rtol * abs(exact)
        rows.append({"param": name, "max_abs_error": worst_abs, "max_rel_error": worst_rel, "passed": passed})
    return rows
