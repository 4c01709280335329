"""The config `optbench train <overrides>` runs, composed and checked in one place.

Every command that needs a config (train's checks, --dry-run, gradcheck,
search, trajectories, bench, the tests) composes it with `compose_config`.
Nothing here imports torch at module level: `optbench list` and `--help`
use `groups` and `group_options` and answer at once.
"""

import difflib
from pathlib import Path

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
    except BaseException:
        return  # malformed command line: Hydra's own message explains it better
    known = groups()
    for override in overrides:
        group = override.key_or_group
        if group not in known or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.value()]
        options = group_options(group)
        for value in values:
            if isinstance(value, str) and value not in options:
                raise UserError(
                    f"{group}={value} is not an option{suggest(value, options)}; choices: {', '.join(options)}"
                )


def validate_overrides(args: list[str]) -> None:
    """Compose the config for every value a sweep names, so a bad key or type fails now, in one line.

    Hydra would report it too, but over several lines, and in a sweep only
    when it reaches that job.
    """
    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parsed = get_args_parser().parse_args(args)
        overrides = OverridesParser.create().parse_overrides(parsed.overrides)
        variants = [list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.input_line] for o in overrides]
    except BaseException:
        return  # malformed command line or a sweep kind we cannot expand: Hydra explains it
    if parsed.help or parsed.hydra_help or parsed.shell_completion or parsed.info:
        return

    def line(o, value: str) -> str:
        return value if not o.is_sweep_override() else f"{o.get_key_element()}={value}"

    base = [line(o, values[0]) for o, values in zip(overrides, variants)]
    compose_config(base)
    for i, (o, values) in enumerate(zip(overrides, variants)):
        for value in values[1:]:
            compose_config(base[:i] + [line(o, value)] + base[i + 1 :])


def compose_config(overrides: list[str], config_name: str = "config", hydra: bool = False):
    """The config `optbench train <overrides>` would run (config_name="trajectories": `optbench trajectories`'s).

    hydra=True keeps the `hydra` node (the group choices are in
    hydra.runtime.choices). A bad group option, key or type is a one-line
    UserError.
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
    except (HydraException, OmegaConfBaseException) as e:
        raise UserError(one_line(e)) from None
    return cfg


def one_line(error: BaseException) -> str:
    """Hydra's message, and its cause's first line (the actual reason), on one line."""
    parts = [str(error).strip().splitlines()[0]]
    if error.__cause__ is not None and str(error.__cause__).strip():
        parts.append(str(error.__cause__).strip().splitlines()[0])
    return ": ".join(" ".join(part.split()) for part in parts)
