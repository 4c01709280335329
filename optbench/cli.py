"""`optbench <command>`: picks the subcommand and hands the rest over.

`train` goes to a Hydra app untouched, so every Hydra feature works
(overrides, -m, --cfg, --help, tab completion). Nothing here imports torch
at module level: `optbench --help` and `optbench list` answer at once.
"""

import difflib
import logging
import sys
from pathlib import Path

from optbench.errors import UserError

CONF = Path(__file__).parent / "conf"
log = logging.getLogger("optbench")

USAGE = """\
usage: optbench <command> [args]

commands:
  train [overrides]     train one model (Hydra app: `optbench train --help`; -m for sweeps)
  list                  every config group and its options, with what each is for
  data download|check   obtain MNIST and verify it, or verify what is on disk

examples:
  optbench train optimizer=adam
  optbench train optimizer=sgd optimizer.lr=0.05 trainer.epochs=5 seed=3
  optbench train -m optimizer=sgd,adam seed=0,1
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    commands = {"train": train, "list": list_options, "data": data_command}
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command not in commands:
        return _fail(f"unknown command {command!r}{_suggest(command, commands)}; see `optbench --help`")
    try:
        return commands[command](rest) or 0
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return 130


def _fail(message: str) -> int:
    print(f"optbench: error: {message}", file=sys.stderr)
    return 2


def _suggest(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def groups() -> list[str]:
    return sorted(p.name for p in CONF.iterdir() if p.is_dir())


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
                    f"{group}={value} is not an option{_suggest(value, options)}; choices: {', '.join(options)}"
                )


def train(args: list[str]) -> int:
    import hydra

    from optbench import schema

    check_group_choices(args)
    schema.register()
    # Hydra reads sys.argv itself; give it exactly what followed `train`
    sys.argv = [f"{Path(sys.argv[0]).name} train", *args]
    hydra.main(config_path="conf", config_name="config", version_base="1.3")(_train_task)()
    return 0


def _train_task(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from optbench.trainer import fit

    hydra_cfg = HydraConfig.get()
    choices = {k: v for k, v in hydra_cfg.runtime.choices.items() if not k.startswith("hydra")}
    try:
        summary = fit(cfg, hydra_cfg.runtime.output_dir, choices)
    except UserError as e:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            log.error("run failed: %s", e)  # the sweep goes on; the run's summary says failed
            return None
        print(f"optbench: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if summary["status"] == "interrupted":
        raise KeyboardInterrupt  # also ends a multirun instead of starting the next job
    return summary.get("best_val_acc")


def list_options(args: list[str]) -> int:
    """Print each group's options with the first comment line of its YAML file."""
    for group in groups():
        print(f"{group}:")
        for option in group_options(group):
            print(f"  {option:<16} {_describe(CONF / group / f'{option}.yaml')}")
    return 0


def _describe(path: Path) -> str:
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def data_command(args: list[str]) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="optbench data", description="Obtain or verify the dataset files.")
    parser.add_argument("action", choices=["download", "check"])
    parser.add_argument("--name", default="mnist", help="dataset (default: mnist)")
    parser.add_argument("--root", default=None, help="folder of the IDX files (default: $OPTBENCH_DATA/<name> or ~/.cache/optbench/<name>)")
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from optbench import data

    if opts.action == "download":
        print(f"{opts.name}: ready in {data.download(opts.name, opts.root)}")
        return 0
    rows = data.check(opts.name, opts.root)
    for file, ok, message in rows:
        print(f"{'ok ' if ok else 'BAD'} {file}: {message}")
    return 0 if all(ok for _, ok, _ in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
