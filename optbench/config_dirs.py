"""The user's own config folders: where options beyond the package's conf/ come from.

Hydra adds a folder to its search path for `--config-dir DIR` (`-cd DIR`)
and for every entry of `hydra.searchpath=[file://DIR, pkg://module]`. An
option file there (DIR/optimizer/signsgd.yaml) is then as good as one in
conf/ (the package's own file wins a name both have, as in Hydra, whose
primary config folder comes first). The option check and `optbench list`
read these folders too. No torch here: `optbench list` must answer at once.
"""

import importlib.util
from pathlib import Path


def parse_command_line(args: list[str], strict: bool = True) -> tuple | None:
    """(Hydra's parsed command line, its overrides); None for a malformed one. strict=False skips unknown flags."""
    try:
        from hydra._internal.utils import get_args_parser
        from hydra.core.override_parser.overrides_parser import OverridesParser

        parser = get_args_parser()
        parsed = parser.parse_args(args) if strict else parser.parse_known_args(args)[0]
        return parsed, OverridesParser.create().parse_overrides(parsed.overrides)
    except (Exception, SystemExit):  # argparse exits on a malformed line; Ctrl-C still interrupts
        return None


def extra_option_dirs(args: list[str]) -> list[Path]:
    """The config folders a command line adds, in Hydra's search order (--config-dir first, then searchpath)."""
    if (line := parse_command_line(args, strict=False)) is None:
        return []  # a malformed command line: Hydra's own message explains it
    parsed, overrides = line
    dirs: list[Path | None] = [Path(parsed.config_dir).expanduser().resolve()] if parsed.config_dir else []
    for o in overrides:
        if o.key_or_group == "hydra.searchpath" and not o.is_delete():
            value = o.value()
            dirs += [_folder(str(entry)) for entry in (value if isinstance(value, list) else [value])]
    return list(dict.fromkeys(d for d in dirs if d is not None))


def compose_overrides(args: list[str]) -> list[str]:
    """The overrides for hydra.compose (which takes no --config-dir) that find the same options as `args`:
    the command line's overrides, its hydra.searchpath ones replaced by one naming every extra folder."""
    if (line := parse_command_line(args, strict=False)) is None:
        return list(args)
    _, overrides = line
    # input_line is Optional in Hydra's Override, set for every override parsed from text
    kept = [o.input_line for o in overrides if o.key_or_group != "hydra.searchpath" and o.input_line is not None]
    return kept + searchpath_override(extra_option_dirs(args))


def searchpath_override(dirs: list[Path]) -> list[str]:
    """[hydra.searchpath=[file://DIR,...]] naming every folder, or [] for none."""
    return [f"hydra.searchpath=[{','.join(f'file://{d}' for d in dirs)}]"] if dirs else []


def _folder(entry: str) -> Path | None:
    scheme, _, rest = entry.rpartition("://")
    if scheme == "pkg":  # pkg://my_package.conf: the package's folder, without importing it
        spec = importlib.util.find_spec(rest.replace("/", "."))
        locations = list(spec.submodule_search_locations or []) if spec else []
        return Path(locations[0]) if locations else None
    if scheme in ("file", ""):
        return Path(rest).expanduser().resolve()
    return None  # another provider (structured://): not a folder of YAML files


def options(group: str, package_conf: Path, extra_dirs: list[Path]) -> dict[str, Path]:
    """Option name -> its YAML file, for one group: the package's conf/ first, then each extra folder."""
    found: dict[str, Path] = {}
    for folder in [package_conf, *extra_dirs]:
        for path in sorted((folder / group).glob("*.yaml")):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items()))
