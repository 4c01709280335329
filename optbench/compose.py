"""The config `optbench train <overrides>` runs, composed and checked in one place.

Every command that needs a config (train's checks, --dry-run, gradcheck,
search, trajectories, bench, the tests) composes it with `compose_config`.
Nothing here imports torch at module level: `optbench list` and `--help`
use `groups` and `group_options` and answer at once.
"""

import difflib
import importlib.util
import inspect
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from optbench import config_dirs
from optbench.errors import UserError

if TYPE_CHECKING:  # omegaconf stays off the `optbench list` / --help path
    from omegaconf import DictConfig

CONF = Path(__file__).parent / "conf"


def groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir())


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def check_group_choices(args: list[str]) -> None:
    """Fail in one line on `optimizer=adamm`, before Hydra prints its longer account."""
    if (line := config_dirs.parse_command_line(args)) is None:
        return  # malformed command line: Hydra's own message explains it better
    _, overrides = line
    known, extra = groups(), config_dirs.extra_option_dirs(args)  # the user's own folders' options count too
    for override in overrides:
        group = override.key_or_group
        if group not in known or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        options = list(config_dirs.options(group, CONF, extra))
        for value in values:
            if isinstance(value, str) and value not in options:
                raise UserError(f"{group}={value} is not an option{suggest(value, options)}; "
                                f"choices: {', '.join(options)}")


def validate_overrides(args: list[str]) -> list[tuple[str, "DictConfig"]]:
    """Compose the config for every value a sweep names, so a bad key or type fails now, in one line.

    Hydra would report it too, but over several lines, and in a sweep only
    when it reaches that job. Returns (the value's override, its config)
    per value of a sweep (-m), the first value of every key standing in for
    the others; [] for a single run.
    """
    if (line := config_dirs.parse_command_line(args)) is None:
        return []
    parsed, overrides = line
    if parsed.help or parsed.hydra_help or parsed.shell_completion or parsed.info:
        return []
    try:  # each value as an override line; str(): Hydra sets input_line for every override parsed from text
        variants = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
                    else [str(o.input_line)] for o in overrides if o.key_or_group != "hydra.searchpath"]
    except Exception:  # noqa: BLE001 - a sweep kind we cannot expand: Hydra explains it
        return []
    # hydra.compose takes no --config-dir: the user's folders travel as one hydra.searchpath override
    search = config_dirs.searchpath_override(config_dirs.extra_option_dirs(args))
    base = [values[0] for values in variants]
    composed = [(" ".join(base), compose_config(base + search))]
    for i, values in enumerate(variants):
        for value in values[1:]:
            try:
                composed.append((value, compose_config(base[:i] + [value] + base[i + 1 :] + search)))
            except UserError as e:  # which value of the sweep it is
                raise UserError(f"{value}: {e}") from None
    return composed if parsed.multirun else []


def check_sweep(variants: list[tuple[str, "DictConfig"]]) -> None:
    """Build each value's run (model, optimizer, schedule, lengths) on the CPU before the first job starts,
    so `optimizer.lr=0.1,-1` or `trainer.batch_size=64,0` fails in one line instead of as job 2 of 50."""
    from optbench import data, trainer

    sizes = {}  # (data.name, data.root) -> images in the training file: the data is read once per sweep
    for override, cfg in variants:
        where = (cfg.data.name, cfg.data.root)
        try:
            if where not in sizes:
                sizes[where] = len(data.load_arrays(*where)["train_labels"])
            trainer.check_setup(cfg, sizes[where])
        except UserError as e:
            raise UserError(f"{override}: {e}") from None


def compose_config(overrides: list[str], config_name: str = "config", hydra: bool = False):
    """The config `optbench train <overrides>` would run (config_name="trajectories": `optbench trajectories`'s).

    hydra=True keeps the `hydra` node (the group choices are in
    hydra.runtime.choices). A bad group option, key, type or optimizer
    argument is a one-line UserError.
    """
    from hydra import compose, initialize_config_module
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from optbench import schema

    check_group_choices(overrides)
    schema.register()
    try:
        # restores whatever Hydra state was there before: works inside a Hydra app or another compose
        with initialize_config_module("optbench.conf", version_base="1.3"):
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=hydra)
        if "optimizer" in cfg:
            from optbench.optimizers import check_target, traits

            check_target(cfg.optimizer)
            traits(cfg.optimizer)  # a misspelt trait fails here, not when a pass is planned
            check_arguments("optimizer", cfg.optimizer)
        if "schedule" in cfg:
            check_interval(cfg.schedule)
        check_config(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(one_line(e)) from None
    return cfg


# ------------------------------------------------------------------ every rule a composed config satisfies

def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


def _finite(value) -> bool:
    return _number(value) and math.isfinite(value)


def _one_of(owner: str, name: str) -> tuple:
    """The rule for a value that must be one of module owner's `name`, read when checked (the owner imports torch)."""
    def names():
        return tuple(getattr(importlib.import_module(owner), name))
    return (lambda v: v in names()), False, (lambda: f"one of {', '.join(names())}")


DIAGNOSTIC_LEVELS = ("off", "basic", "full")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
INTERVALS = ("step", "epoch", "eval")
_FRACTION = (lambda v: _finite(v) and 0 <= v <= 1, False, "a fraction in [0, 1]")

# key -> (allowed, whether null is allowed (it means "off" or "all"), the rule as the error message states it):
# each value against its whole domain (finite where it must be, its sign, its range). The rules that need the
# data's size (the batch size against the training split) are the trainer's, at setup.
RULES = {
    "data.val_size": (lambda v: v >= 0, False, ">= 0"),
    "data.augment_shift": (lambda v: v >= 0, False, ">= 0"),
    "data.train_eval_size": (lambda v: v >= 1, True, ">= 1 or null (the whole training split)"),
    "model.hidden": (lambda v: all(h >= 1 for h in v), False, "a list of sizes >= 1"),
    "model.activation": _one_of("optbench.models", "ACTIVATIONS"),
    "model.batchnorm": _one_of("optbench.models", "BATCHNORM"),
    "model.dropout": (lambda v: _finite(v) and 0 <= v < 1, False, "in [0, 1)"),
    "trainer.epochs": (lambda v: v >= 0, False, ">= 0"),
    "trainer.max_steps": (lambda v: v >= 0, True, ">= 0 (or null: epochs decide)"),
    "trainer.batch_size": (lambda v: v >= 1, True, ">= 1 and at most the training split (or null for all of it)"),
    "trainer.eval_every": (lambda v: v >= 1, True, ">= 1 (or null for once per epoch)"),
    "trainer.log_every": (lambda v: v >= 1, False, ">= 1"),
    "trainer.checkpoint_every": (lambda v: v >= 0, False, ">= 0 (0: no checkpoints)"),
    "trainer.clip_grad_norm": (lambda v: _finite(v) and v > 0, True, "finite and > 0 (or null for no clipping)"),
    "trainer.clip_grad_value": (lambda v: _finite(v) and v > 0, True, "finite and > 0 (or null for no clipping)"),
    "trainer.l1": (lambda v: _finite(v) and v >= 0, False, "finite and >= 0"),
    "trainer.patience": (lambda v: v >= 1, True, ">= 1 (or null for no early stopping)"),
    "trainer.min_delta": (lambda v: _finite(v) and v >= 0, False, "finite and >= 0"),
    "trainer.compile": (lambda v: v in COMPILE_MODES, True, f"one of {', '.join(COMPILE_MODES)} (or null: eager)"),
    "trainer.vectorize": _one_of("optbench.vectorized", "MODES"),
    "trainer.progress_every": (lambda v: _number(v) and v > 0, False, "> 0 seconds"),
    "diagnostics.level": (lambda v: v in DIAGNOSTIC_LEVELS, False, f"one of {', '.join(DIAGNOSTIC_LEVELS)}"),
    "diagnostics.probe_size": (lambda v: v >= 1, False, ">= 1"),
    "diagnostics.histogram_bins": (lambda v: v >= 1, False, ">= 1"),
    "diagnostics.histogram_at": (lambda v: all(_FRACTION[0](p) for p in v), False, "a list of fractions in [0, 1]"),
    "diagnostics.saturation": _FRACTION,
    "diagnostics.thresholds.exploding_grad_norm": (lambda v: _number(v) and v > 0, False, "> 0"),
    "diagnostics.thresholds.vanishing_ratio": _FRACTION,
    "diagnostics.thresholds.dead_fraction": _FRACTION,
    "diagnostics.thresholds.saturated_fraction": _FRACTION,
    "schedule.interval": (lambda v: v in INTERVALS, False, f"one of {', '.join(INTERVALS)}"),
    "schedule.warmup_steps": (lambda v: v >= 0, False, ">= 0"),
}


def check_value(key: str, value) -> None:
    """`key`'s value against its rule in RULES: a one-line UserError naming the key, the value and the rule."""
    allowed, null_ok, rule = RULES[key]
    if value is None and null_ok:
        return
    try:
        ok = value is not None and bool(allowed(value))
    except TypeError:  # a value of another kind than the rule's (a config not composed against the schema)
        ok = False
    if not ok:
        shown = list(value) if isinstance(value, (list, tuple)) or type(value).__name__ == "ListConfig" else value
        raise UserError(f"{key}={_text(shown)} must be {rule() if callable(rule) else rule}")


def check_config(cfg) -> None:
    """Every rule of RULES on the keys `cfg` has, then the rules between keys; the trainer calls it too, for a
    config that was not composed here (a Hydra sweep's job, an API caller's own)."""
    from omegaconf import OmegaConf

    for key in RULES:
        if OmegaConf.select(cfg, key, default="???missing") != "???missing":
            check_value(key, OmegaConf.select(cfg, key))
    if "trainer" not in cfg or "optimizer" not in cfg:
        return
    # .get: a trajectories config has a trainer node with only what an optimizer option sets (gd's batch size)
    if cfg.trainer.get("tensorboard") and importlib.util.find_spec("tensorboard") is None:
        raise UserError("trainer.tensorboard=true needs the tensorboard package: pip install 'optbench[tensorboard]'")
    from optbench.optimizers import traits

    if traits(cfg.optimizer).closure and (cfg.trainer.get("clip_grad_norm") or cfg.trainer.get("clip_grad_value")):
        # its line search compares losses with the gradient it is given: a clipped one misleads it
        raise UserError("optimizer=lbfgs does not support trainer.clip_grad_norm / trainer.clip_grad_value")


def check_arguments(name: str, node) -> None:
    """Each key of a `_target_` node against the target's own signature: a known argument, of its default's kind.

    torch checks values (lr >= 0) but not shapes: `betas=[0.9]` ends in
    "list index out of range". Its defaults say what is expected: a
    number, true/false, or a list as long as the default tuple.
    """
    from hydra._internal.utils import _locate  # hydra.utils.get_object would also log the failure
    from omegaconf import OmegaConf

    from optbench.optimizers import OWN_KEYS

    # a `_target_` node is a mapping, so its container is a dict with string keys
    args = cast(dict[str, Any], OmegaConf.to_container(node, resolve=True))
    try:
        target = _locate(args["_target_"])
        parameters = inspect.signature(target).parameters
    except Exception:  # noqa: BLE001 - no such target, or no signature: the run's build says so in one line
        return
    open_ended = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    where = args["_target_"]
    for key, value in args.items():
        if key.startswith("_") or key in OWN_KEYS:  # optbench's own keys (parameter groups), not the target's
            continue
        if key not in parameters:
            if open_ended:
                continue
            known = [k for k, p in parameters.items() if p.default is not p.empty]
            raise UserError(f"{name}.{key} is not an argument of {where}{suggest(key, known)}; "
                            f"its arguments: {', '.join(known)}")
        default = parameters[key].default
        expected = None if default is None or default is inspect.Parameter.empty else _kind(default)
        if expected is not None and _kind(value) != expected:
            raise UserError(f"{name}.{key}={_text(value)} must be {expected}, as {where}'s default {_text(default)}")


def check_interval(schedule) -> None:
    """schedule.interval=eval exactly for a scheduler whose step() takes the validation loss (ReduceLROnPlateau).

    Any other scheduler would take the loss for an epoch number, and a
    plateau scheduler stepped without one raises a TypeError mid-run.
    """
    from hydra.utils import get_object

    try:
        step = inspect.signature(get_object(schedule._target_).step).parameters.values()
    except Exception:  # noqa: BLE001 - no such target: instantiate says so in its own words
        return
    takes_loss = any(p.default is p.empty and p.name != "self" for p in step)
    if takes_loss != (schedule.interval == "eval"):
        wants = ("eval (it steps with the validation loss)" if takes_loss
                 else "step or epoch (eval is for schedule=plateau)")
        raise UserError(f"schedule.interval={schedule.interval} cannot step {schedule._target_}: use {wants}")


def _kind(value) -> str | None:
    """What a value is, in the words of an error message; None for what check_arguments leaves to torch."""
    if isinstance(value, bool):
        return "true or false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} numbers" if all(_kind(v) == "a number" for v in value) else None
    if value is None:
        return "null"
    return "text" if isinstance(value, str) else None


def _text(value) -> str:
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_text(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def one_line(error: BaseException) -> str:
    """Hydra's message, and its cause's first line (the actual reason), on one line."""
    parts = [str(error).strip().splitlines()[0]]
    if error.__cause__ is not None and str(error.__cause__).strip():
        parts.append(str(error.__cause__).strip().splitlines()[0])
    return ": ".join(" ".join(part.split()) for part in parts)
