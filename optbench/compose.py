"""The config `optbench train <overrides>` runs, composed and checked in one place.

Every command that needs a config (train's checks, --dry-run, gradcheck,
search, trajectories, bench, the tests) composes it with `compose_config`.
Nothing here imports torch at module level: `optbench list` and `--help`
use `groups` and `group_options` and answer at once.
"""

import difflib
from pathlib import Path

from optbench import config_dirs
from optbench.errors import UserError

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
    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        overrides = OverridesParser.create().parse_overrides(get_args_parser().parse_args(args).overrides)
    except (Exception, SystemExit):  # argparse exits on a malformed line; Ctrl-C still interrupts
        return  # malformed command line: Hydra's own message explains it better
    known, extra = groups(), config_dirs.extra_option_dirs(args)  # the user's own folders' options count too
    for override in overrides:
        group = override.key_or_group
        if group not in known or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        options = list(config_dirs.options(group, CONF, extra))
        for value in values:
            if isinstance(value, str) and value not in options:
                raise UserError(
                    f"{group}={value} is not an option{suggest(value, options)}; choices: {', '.join(options)}"
                )


def validate_overrides(args: list[str]) -> list[tuple[str, object]]:
    """Compose the config for every value a sweep names, so a bad key or type fails now, in one line.

    Hydra would report it too, but over several lines, and in a sweep only
    when it reaches that job. Returns (the value's override, its config)
    per value of a sweep (-m), the first value of every key standing in for
    the others; [] for a single run.
    """
    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = get_args_parser().parse_args(args)
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
        variants = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in overrides]
    except (Exception, SystemExit):  # argparse exits on a malformed line; Ctrl-C still interrupts
        return []  # malformed command line or a sweep kind we cannot expand: Hydra explains it
    if parsed.help or parsed.hydra_help or parsed.shell_completion or parsed.info:
        return []

    def line(o, value: str) -> str:
        return value if not o.is_sweep_override() else f"{o.get_key_element()}={value}"

    # hydra.compose takes no --config-dir: the user's folders travel as one hydra.searchpath override
    search = config_dirs.searchpath_override(config_dirs.extra_option_dirs(args))
    kept = [(o, values) for o, values in zip(overrides, variants) if o.key_or_group != "hydra.searchpath"]
    base = [line(o, values[0]) for o, values in kept]
    composed = [(" ".join(base), compose_config(base + search))]
    for i, (o, values) in enumerate(kept):
        for value in values[1:]:
            composed.append((line(o, value), compose_config(base[:i] + [line(o, value)] + base[i + 1 :] + search)))
    return composed if parsed.multirun else []


def check_sweep(variants: list[tuple[str, object]]) -> None:
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
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(one_line(e)) from None
    return cfg


def check_arguments(name: str, node) -> None:
    """Each key of a `_target_` node against the target's own signature: a known argument, of its default's kind.

    torch checks values (lr >= 0) but not shapes: `betas=[0.9]` ends in
    "list index out of range". Its defaults say what is expected: a
    number, true/false, or a list as long as the default tuple.
    """
    import inspect

    from hydra._internal.utils import _locate  # hydra.utils.get_object would also log the failure
    from omegaconf import OmegaConf

    from optbench.optimizers import OWN_KEYS

    args = OmegaConf.to_container(node, resolve=True)
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
    import inspect

    from hydra.utils import get_object

    try:
        step = inspect.signature(get_object(schedule._target_).step).parameters.values()
    except Exception:  # noqa: BLE001 - no such target: instantiate says so in its own words
        return
    takes_loss = any(p.default is p.empty and p.name != "self" for p in step)
    if takes_loss != (schedule.interval == "eval"):
        wants = "eval (it steps with the validation loss)" if takes_loss else "step or epoch (eval is for schedule=plateau)"
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
