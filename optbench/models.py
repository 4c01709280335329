"""The MLP: h(l) = g(W(l) h(l-1) + b(l)), built from the `model` and `init` config groups."""

from collections.abc import Sequence

import torch
from hydra.utils import instantiate
from torch import nn

from optbench.compose import check_value

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": nn.LeakyReLU, "elu": nn.ELU,
               "gelu": nn.GELU, "identity": nn.Identity}
BATCHNORM = ("none", "pre", "post")


def build_mlp(hidden: Sequence[int], activation: str = "relu", batchnorm: str = "none", dropout: float = 0.0,
              n_in: int = 784, n_out: int = 10) -> nn.Sequential:
    """Linear layers with `activation` between them and 10 logits out.

    batchnorm="pre" puts BatchNorm1d between the linear layer and the
    activation, "post" after the activation. With "pre" the linear layer has
    no bias: batch norm subtracts the batch mean, so a bias there is dead.
    """
    for key, value in (("hidden", hidden), ("activation", activation), ("batchnorm", batchnorm), ("dropout", dropout)):
        check_value(f"model.{key}", value)  # composition checked them for a config; a direct caller too
    layers: list[nn.Module] = [nn.Flatten()]
    widths = [n_in, *hidden]
    for width, h in zip(widths, hidden):
        layers.append(nn.Linear(width, h, bias=batchnorm != "pre"))
        if batchnorm == "pre":
            layers.append(nn.BatchNorm1d(h))
        layers.append(ACTIVATIONS[activation]())
        if batchnorm == "post":
            layers.append(nn.BatchNorm1d(h))
        if dropout > 0:
            layers.append(Dropout(dropout))
    layers.append(nn.Linear(widths[-1], n_out))
    return nn.Sequential(*layers)


class Dropout(nn.Dropout):
    """nn.Dropout whose masks come from `generator` (the run's own; None: torch's global one).

    A run's masks then depend on its own seed alone, so it draws the same
    masks in a vectorized pass as it does alone.
    """

    generator: torch.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape, device=x.device, generator=self.generator) >= self.p
        return x * keep / (1 - self.p)


def set_dropout_generator(model: nn.Module, generator: torch.Generator) -> None:
    for m in model.modules():
        if isinstance(m, Dropout):
            m.generator = generator


def linear_layers(model: nn.Module) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of every Linear, in order: the "layers" of per-layer metrics."""
    return [(f"fc{i}", m) for i, m in enumerate(m for m in model.modules() if isinstance(m, nn.Linear))]


@torch.no_grad()
def init_weights(model: nn.Module, init_cfg) -> None:
    """Apply init.weight / init.bias (partial torch.nn.init functions) to every Linear; null keeps torch's default."""
    weight_fn = instantiate(init_cfg.weight) if init_cfg.weight is not None else None
    bias_fn = instantiate(init_cfg.bias) if init_cfg.bias is not None else None
    for _, layer in linear_layers(model):
        if weight_fn is not None:
            weight_fn(layer.weight)
        if bias_fn is not None and layer.bias is not None:
            bias_fn(layer.bias)


class SoftmaxMSELoss(nn.Module):
    """Squared error between softmax(logits) and the one-hot target, summed over classes, averaged over the batch.

    Lecture 004 compares it with cross-entropy, which "speeds up initial training":
    the softmax saturates and its gradient vanishes where cross-entropy's does not.
    """

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        one_hot = nn.functional.one_hot(target, logits.shape[1]).to(logits.dtype)
        return (logits.softmax(1) - one_hot).pow(2).sum(1).mean()
