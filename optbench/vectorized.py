"""What a pass of K > 1 runs is made of: which runs may share one, and their stacked model.

Each parameter of the K models is one stacked [K, ...] leaf, so a training
step is one batched forward/backward (torch.bmm) instead of K small ones.
The K models stay K ordinary `nn.Sequential`s whose tensors are views of
row k of the stack (`p.data = stacked.data[k]`): evaluation, diagnostics
and checkpoints are those of a run alone. Runs whose optimizer and schedule
settings agree, and whose optimizer is elementwise (traits.row_wise), share one
torch optimizer over their rows; every other run has its own, built exactly
as it would be alone. That is why a run in a pass matches the same run alone
to floating-point tolerance with no optimizer re-implemented here.

trainer.fit_pass trains a pass; the Hydra launcher plans them with `plan`.
"""

import functools
import json
import logging
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from optbench import optimizers
from optbench.compose import check_value
from optbench.errors import UserError
from optbench.models import Dropout, linear_layers

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# keys that may differ between the runs of one pass: each run builds its own from them
VARYING = ("seed", "optimizer", "schedule", "init")
# the runs of one pass share one memory budget: ~1 MB per model of parameters and Adam state
# for the default MLP, plus K x batch activations
MAX_MODELS = 32


def needs_closure(cfg: DictConfig) -> bool:
    """L-BFGS (traits.closure): its line search evaluates the loss a data-dependent number of times per step."""
    return optimizers.traits(cfg.optimizer).closure


def why_not(cfg: DictConfig) -> str | None:
    """Why `cfg` cannot train in a pass with others, or None when it can."""
    if needs_closure(cfg):
        return "optimizer L-BFGS evaluates each model a data-dependent number of times per step"
    return None


def pass_key(cfg: DictConfig) -> str:
    """Configurations with equal keys can share a pass: all but VARYING and trainer.vectorize agree."""
    c = cast(dict[str, Any], OmegaConf.to_container(cfg, resolve=True))
    for key in VARYING:
        c.pop(key, None)
    del c["trainer"]["vectorize"]
    return json.dumps(c, sort_keys=True, default=str)


def plan(cfgs: list[DictConfig], max_models: int = MAX_MODELS) -> list[list[int]]:
    """Indices of `cfgs` in passes of at most `max_models`: lists of more than one index train together, in order
    of first job."""
    filling: dict[str, list[int]] = {}  # pass key -> the pass of that key still taking runs
    passes: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        wanted = str(cfg.trainer.vectorize)
        check_value("trainer.vectorize", wanted)
        reason = why_not(cfg) if wanted != "off" else "trainer.vectorize=off"
        if reason is not None:
            if wanted == "on":
                raise UserError(f"trainer.vectorize=on, but this run cannot be vectorized: {reason} "
                                "(use trainer.vectorize=auto to run such runs one by one)")
            if wanted == "auto":
                log.info("job %d runs on its own: %s", i, reason)
            passes.append([i])
            continue
        key = pass_key(cfg)
        if key not in filling or len(filling[key]) >= max_models:
            filling[key] = []
            passes.append(filling[key])
        filling[key].append(i)
    return passes


def shared_steppers(cfgs: list[DictConfig]) -> list[list[int]]:
    """Indices of the runs of a pass, one list per Stepper: runs with the same row-wise optimizer and schedule
    share one optimizer.

    A schedule stepped with each run's own validation loss (interval=eval,
    plateau) keeps its run alone.
    """
    steppers: dict[str | int, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        # a fallback optimizer (Muon's parameter groups) makes a run's optimizer its own
        shareable = (optimizers.traits(cfg.optimizer).row_wise and "fallback" not in cfg.optimizer
                     and cfg.schedule.interval != "eval")
        key = json.dumps([OmegaConf.to_container(cfg.optimizer, resolve=True),
                          OmegaConf.to_container(cfg.schedule, resolve=True)], sort_keys=True) if shareable else i
        steppers.setdefault(key, []).append(i)
    return list(steppers.values())


def row_state(state: dict, row: int) -> dict:
    """Row `row` of a shared optimizer's state_dict: what the optimizer of that run alone would hold."""
    return {"state": {i: {key: v[row].clone() if _per_row(v) else v for key, v in s.items()}
                      for i, s in state["state"].items()},
            "param_groups": state["param_groups"]}


def stack_states(states: list[dict]) -> dict:
    """The shared optimizer's state_dict from its runs' own (row_state's inverse)."""
    first = states[0]
    return {"state": {i: {key: torch.stack([s["state"][i][key] for s in states]) if _per_row(v) else v
                          for key, v in s0.items()} for i, s0 in first["state"].items()},
            "param_groups": first["param_groups"]}


def _per_row(v) -> bool:
    # a step counter is a 0-dim tensor (the same for every row); moments and buffers have the parameter's rows
    return torch.is_tensor(v) and v.dim() > 0


# ---------------------------------------------------------------- the stacked model

def stack_models(models: list[nn.Sequential]) -> dict[str, torch.Tensor]:
    """One [K, ...] leaf per parameter (and per batch-norm statistic); model k's tensors become views of row k."""
    stacked = {}
    for name, _ in models[0].named_parameters():
        stacked[name] = torch.stack([m.get_parameter(name).detach() for m in models]).requires_grad_()
    for name, buf in models[0].named_buffers():
        if buf.is_floating_point():  # running mean/var; num_batches_tracked is set at checkpoint time
            stacked[name] = torch.stack([m.get_buffer(name) for m in models])
    for k, m in enumerate(models):
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if name in stacked:
                t.data = stacked[name].data[k]
    return stacked


def stacked_forward(models: list[nn.Sequential], stacked: dict, x: torch.Tensor) -> torch.Tensor:
    """Training-mode forward of all K models: x [K, B, ...] -> logits [K, B, n_out]."""
    for i, module in enumerate(models[0]):
        if isinstance(module, nn.Flatten):
            x = x.flatten(2)
        elif isinstance(module, nn.Linear):
            w, b = stacked[f"{i}.weight"], stacked.get(f"{i}.bias")
            x = torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        elif isinstance(module, nn.BatchNorm1d):
            # the K models' channels side by side: per-channel statistics are per-model statistics
            k, n, h = x.shape
            mean, var, weight, bias = (stacked[f"{i}.{name}"].view(-1)
                                       for name in ("running_mean", "running_var", "weight", "bias"))
            x = F.batch_norm(x.transpose(0, 1).reshape(n, k * h), mean, var, weight, bias, training=True,
                             momentum=cast(float, module.momentum), eps=module.eps).view(n, k, h).transpose(0, 1)
        elif isinstance(module, Dropout):
            # each model's mask from its own generator, drawn as that model alone draws it
            keep = torch.stack([torch.rand(x.shape[1:], device=x.device, generator=cast(Dropout, m[i]).generator)
                                for m in models])
            x = x * (keep >= module.p) / (1 - module.p)
        else:  # activations: elementwise, any shape
            x = module(x)
    return x


def forward_of(models: list[nn.Sequential]):
    """What a training step calls with x [K, B, ...]: the plain model for K = 1 (its bmm path would cost ~1.35x),
    else the stacked forward over views of the models' rows."""
    if len(models) == 1:
        return models[0], list(models[0].parameters())
    stacked = stack_models(models)
    return functools.partial(stacked_forward, models, stacked), [stacked[n] for n, _ in models[0].named_parameters()]


def losses(loss_fn, forward, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each model's mean loss over its own batch: [K]."""
    if len(x) == 1:
        return loss_fn(forward(x[0]), y[0]).view(1)
    logits = forward(x)
    if type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None and loss_fn.reduction == "mean":
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                     ignore_index=loss_fn.ignore_index, label_smoothing=loss_fn.label_smoothing)
        return per_sample.view(y.shape).mean(1)
    return torch.stack([loss_fn(logits[k], y[k]) for k in range(len(y))])


def norms(tensors: list[torch.Tensor], K: int, ord: float = 2.0) -> torch.Tensor:
    """[n_tensors, K]: each tensor's norm per model (its rows; K = 1: the whole tensor)."""
    if K == 1:
        return torch.stack(torch._foreach_norm(tensors, ord)).view(-1, 1)
    return torch.stack([torch.linalg.vector_norm(t.view(K, -1), ord, dim=1) for t in tensors])


def l1_norms(weights: list[torch.Tensor], K: int) -> torch.Tensor:
    """[K]: sum |W| over the Linear weights, per model."""
    return cast(torch.Tensor, sum(w.abs().view(K, -1).sum(1) for w in weights))


def guard_and_clip(grads: list, grad_norms: torch.Tensor, clip_norm, clip_value, counters: torch.Tensor) -> None:
    """Per run: zero its gradients when any is NaN/inf, so none is ever applied; then clip by norm and/or value.

    `grad_norms` [n_tensors, K] are the per-tensor gradient norms before clipping,
    K runs along dim 0 of each stacked gradient (K = 1: a plain gradient).
    counters[k, 0] counts the steps clipping changed, counters[k, 1] the
    steps zeroed; both stay on the device (no host sync). Clipping by norm
    is torch's clip_grads_with_norm_ formula (max_norm / (norm + 1e-6),
    at most 1), one factor per run.
    """
    total = grad_norms.norm(dim=0)  # [K]
    bad = ~torch.isfinite(total)
    per_row = [(-1,) + (1,) * (grad.dim() - 1) for grad in grads]  # a [K] vector against each gradient's rows
    for grad, shape in zip(grads, per_row):
        grad.masked_fill_(bad.view(shape), 0.0)
    counters[:, 1] += bad
    hit = []
    if clip_norm:
        hit.append((total > clip_norm) & ~bad)  # a zeroed gradient was not clipped
        factor = (clip_norm / (total.nan_to_num(0.0) + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [factor.view(shape) for shape in per_row])
    if clip_value:
        hit.append(norms(grads, len(total), math.inf).amax(0) > clip_value)
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    if hit:
        counters[:, 0] += torch.stack(hit).any(0)


@dataclass
class GradIndex:
    """Where each Linear layer's tensors sit among the model's parameters: for per-layer gradient norms and L1."""

    names: list[str]  # grad_norm/fc0, ... then grad_norm/fc0.weight, ...
    layer_matrix: torch.Tensor  # [n_layers, n_params]: 1 where the parameter belongs to the layer
    linear_params: torch.Tensor | None  # positions of the layers' tensors, in layer order (None: all, in order)
    linear_weights: list[int]

    def step_values(self, losses: torch.Tensor, norms: torch.Tensor, per_layer: bool) -> torch.Tensor:
        """[metrics, K]: loss, grad_norm and, per_layer, each layer's and each layer tensor's gradient norm."""
        rows = [losses.view(1, -1), norms.norm(dim=0, keepdim=True)]
        if per_layer:
            rows.append((self.layer_matrix @ norms.square()).sqrt())
            rows.append(norms if self.linear_params is None else norms[self.linear_params])
        return torch.cat(rows)


def grad_index(model: nn.Module, device) -> GradIndex:
    position = {id(p): i for i, p in enumerate(model.parameters())}
    layers = linear_layers(model)
    matrix = torch.zeros(len(layers), len(position), device=device)
    linear, names, weights = [], [], []
    for row, (name, layer) in enumerate(layers):
        for kind, p in layer.named_parameters():
            matrix[row, position[id(p)]] = 1.0
            linear.append(position[id(p)])
            names.append(f"grad_norm/{name}.{kind}")
        weights.append(position[id(layer.weight)])
    index = None if linear == list(range(len(position))) else torch.tensor(linear, device=device)
    return GradIndex([f"grad_norm/{name}" for name, _ in layers] + names, matrix, index, weights)
