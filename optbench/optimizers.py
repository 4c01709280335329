"""What the loop needs beyond `instantiate(cfg.optimizer)(params)`: parameter groups, train/eval modes, names.

Parameter groups: an optimizer config may hold `fallback` (another
optimizer config) and `fallback_for` (tensor kinds: first_layer,
output_layer, bias, norm); those tensors go to the fallback optimizer, the
rest to the main one. Muon needs it (torch's Muon takes only 2-D tensors,
and no reference gives it the output layer). The two optimizers are stepped
as one `Combined` optimizer, so the loop and its one scheduler see a single
torch optimizer whose param_groups are both optimizers' own.

Train/eval modes: optimizers with train()/eval() (the schedule-free family)
hold a different point for steps than for evaluation; `set_mode` switches
them, and `recompute_batchnorm` re-estimates batch-norm statistics at the
evaluation point, as the schedulefree README advises.
"""

from dataclasses import dataclass, fields
from typing import Any, cast

import torch
from omegaconf import DictConfig, OmegaConf

from optbench.errors import UserError
from optbench.models import Dropout, linear_layers

KINDS = ("first_layer", "output_layer", "bias", "norm")
# the config option for "any class by its dotted path"; its runs are named by the class
CUSTOM = "custom"


def tensor_kind(model: torch.nn.Module, param: torch.Tensor) -> str:
    """first_layer | output_layer | hidden (a Linear weight between them) | bias | norm (batch-norm gain or shift)."""
    layers = [layer for _, layer in linear_layers(model)]
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and any(param is p for p in m.parameters()):
            return "norm"
    for i, layer in enumerate(layers):
        if param is layer.bias:
            return "bias"
        if param is layer.weight:  # a model of one Linear layer: it is the output layer
            return "output_layer" if i == len(layers) - 1 else "first_layer" if i == 0 else "hidden"
    return "hidden"


# keys of an optimizer config that are optbench's, not the optimizer class's: popped before instantiate
OWN_KEYS = ("fallback", "fallback_for", "traits")


@dataclass(frozen=True)
class Traits:
    """What optbench must know of an optimizer that its constructor does not say: an option's `traits:` block.

    Each option states only what differs from these defaults (a torch
    optimizer, stepped without a closure, whose runs in a pass each get their
    own instance); a user's optimizer in their config folder does the same.
    Its parameter split is the option's `fallback` and `fallback_for`.
    """

    library: str = "torch"  # the package the class comes from
    extra: str | None = None  # the optbench extra that installs that package: pip install 'optbench[EXTRA]'
    # elementwise: a step over a [k, ...] stack of rows is each row's own step, so the runs of a pass share one
    row_wise: bool = False
    # step(closure) evaluates the loss again (L-BFGS's line search): it trains alone, and unclipped
    closure: bool = False
    # its iterate averaging replaces a decaying schedule: run at schedule=constant (a race does; the authors do)
    schedule_free: bool = False


TRAIT_NAMES = tuple(f.name for f in fields(Traits))


def traits(optimizer_cfg) -> Traits:
    """The option's traits: its `traits:` block over the defaults."""
    raw = optimizer_cfg.get("traits") or {}
    given = cast(dict[str, Any], OmegaConf.to_container(raw, resolve=True) if OmegaConf.is_config(raw) else dict(raw))
    unknown = sorted(set(given) - set(TRAIT_NAMES))
    if unknown:
        raise UserError(f"optimizer.traits.{unknown[0]} is not a trait; the traits: {', '.join(TRAIT_NAMES)}")
    for name in ("row_wise", "closure"):
        if not isinstance(given.get(name, False), bool):
            raise UserError(f"optimizer.traits.{name}={given[name]} must be true or false")
    return Traits(**given)


def constructor_args(optimizer_cfg):
    """The optimizer config without optbench's own keys: what instantiate passes to the class."""
    if not any(key in optimizer_cfg for key in OWN_KEYS):
        return optimizer_cfg
    return OmegaConf.masked_copy(optimizer_cfg, [key for key in optimizer_cfg if key not in OWN_KEYS])


def check_target(optimizer_cfg) -> None:
    """optimizer=custom leaves its class to the user: say how to give it, in one line."""
    if optimizer_cfg.get("_target_") is None:  # None when left ??? (get() reads a missing value as None)
        raise UserError(f"optimizer={CUSTOM} needs optimizer._target_=module.Class "
                        "(and +optimizer.KEY=VALUE for its arguments)")


def split(model: torch.nn.Module, fallback_for) -> tuple[list, list]:
    """The model's parameters as (main optimizer's, fallback optimizer's), each in model order."""
    unknown = set(fallback_for) - set(KINDS)
    if unknown:
        raise UserError(f"optimizer.fallback_for: {', '.join(sorted(unknown))} is not a tensor kind "
                        f"({', '.join(KINDS)})")
    main: list[torch.nn.Parameter] = []
    rest: list[torch.nn.Parameter] = []
    for p in model.parameters():
        (rest if tensor_kind(model, p) in fallback_for else main).append(p)
    return main, rest


def check_groups(optimizer_cfg: DictConfig) -> None:
    target = str(optimizer_cfg.get("_target_"))
    if target.endswith(".Muon") and "output_layer" not in optimizer_cfg.get("fallback_for", []):
        # Keller Jordan's, AlgoPerf's and pytorch-optimizer's Muon all keep the classifier out
        raise UserError("optimizer.fallback_for must hold output_layer: the output layer never goes to Muon")
    if "fallback_for" in optimizer_cfg and "fallback" not in optimizer_cfg:
        raise UserError("optimizer.fallback_for needs optimizer.fallback, the optimizer config for those tensors")


class Combined(torch.optim.Optimizer):
    """Optimizers over disjoint tensors stepped as one: one scheduler, one state_dict, one step() for the loop.

    param_groups are the inner optimizers' own dicts, so a scheduler (and the
    loop's warmup) setting a group's lr sets it where the inner one reads it.
    """

    def __init__(self, optimizers: list):
        self.optimizers = optimizers
        super().__init__([p for o in optimizers for g in o.param_groups for p in g["params"]], {})
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    @torch.no_grad()
    def step(self, closure=None):
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none)

    def state_dict(self):
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state_dict):
        for o, s in zip(self.optimizers, state_dict["optimizers"]):
            o.load_state_dict(s)
        self.param_groups = [g for o in self.optimizers for g in o.param_groups]

    def __repr__(self):
        return " + ".join(type(o).__name__ for o in self.optimizers)


def set_mode(optimizers, mode: str) -> bool:
    """Call train() or eval() on every optimizer that has it (inner ones of a Combined too); whether any had."""
    switched = False
    for optimizer in optimizers:
        for o in getattr(optimizer, "optimizers", [optimizer]):
            method = getattr(o, mode, None)
            if callable(method):
                method()
                switched = True
    return switched


@torch.no_grad()
def recompute_batchnorm(model: torch.nn.Sequential, batches) -> None:
    """Batch-norm running statistics averaged over `batches` at the model's current weights.

    For schedule-free optimizers the statistics gathered during training are
    those of the train-mode point y, not the evaluated x (schedulefree 1.4.1
    README, Caveats). torch's update_bn resets them and takes the exact
    average (momentum None); dropout stays off so that no run's random draws
    are spent and the statistics are those the evaluation's forward sees.
    """
    no_dropout = torch.nn.Sequential(*[torch.nn.Identity() if isinstance(m, Dropout) else m for m in model])
    was_training = model.training
    torch.optim.swa_utils.update_bn(batches, no_dropout)
    model.train(was_training)


def has_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())


def missing_target(target: str, error: BaseException, known: Traits = Traits()) -> UserError:
    """The one-line error for an optimizer class that cannot be imported: which extra installs it, if ours."""
    if known.extra and isinstance(error, ImportError):
        return UserError(f"optimizer {target} needs the {known.library} package: pip install 'optbench[{known.extra}]'")
    if target.startswith("torch.optim."):  # Muon came in torch 2.9, Adafactor in 2.5
        return UserError(f"optimizer {target} is not in torch {torch.__version__}: it needs a newer torch")
    return UserError(f"optimizer._target_={target} cannot be imported ({type(error).__name__}: {error})")


def named_choices(cfg: DictConfig, choices: dict | None) -> dict:
    """The run's choices with its optimizer named by its class when the option was `custom` (or none was made)."""
    choices = dict(choices or {})
    if choices.get("optimizer", CUSTOM) == CUSTOM:
        target = cfg.optimizer.get("_target_") if "optimizer" in cfg else None
        if isinstance(target, str):  # None when left ???
            choices["optimizer"] = target.rsplit(".", 1)[-1]
    return choices
