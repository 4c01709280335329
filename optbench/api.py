"""optbench from Python (a notebook): `optbench.train(...)` one configuration, `optbench.sweep(...)` several.

The configs are composed exactly as `optbench train` composes them (the
same conf/ tree, overrides and checks), and train in this process: a
sweep's runs that may share a pass train in one (trainer.fit_pass), as
the Hydra launcher does. An optimizer may be an option name ("adam") or a
class object; a class goes in as optimizer=custom with its dotted name as
_target_ (a class defined in the notebook is `__main__.Name`, which Hydra
finds in this process), and the run is named by the class.

Nothing here imports torch until a function is called: `import optbench`
stays light for `optbench --help`.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from optbench import results
from optbench.compose import compose_config
from optbench.errors import UserError
from optbench.results import rundir

if TYPE_CHECKING:  # for the annotations only: pandas loads when sweep() reads its runs back
    import pandas as pd

__all__ = ["sweep", "train"]


def train(optimizer: str | type = "adam", overrides: Sequence[str] = (), run_dir: str | os.PathLike | None = None,
          **optimizer_args: Any) -> dict:
    """Train one configuration into `run_dir` (default outputs/<time>); its summary (summary.json as a dict).

    optimizer: an option name ("adam", "muon") or an optimizer class (a
    torch.optim.Optimizer subclass); optimizer_args: its keyword arguments
    (lr=0.01, betas=(0.9, 0.99)); overrides: any other `optbench train`
    overrides ("trainer.max_steps=100", "model.hidden=[64]").
    """
    from optbench import trainer

    cfg, choices = _compose([*optimizer_overrides(optimizer, optimizer_args), *overrides])
    return trainer.fit(cfg, Path(run_dir or _new_folder("outputs")), choices)


def sweep(grid: Mapping[str, Sequence[Any]], overrides: Sequence[str] = (),
          sweep_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Train every combination of `grid` below `sweep_dir` (default multirun/<time>); the runs table (DataFrame).

    grid: config key -> values, e.g. {"optimizer": [MyOpt, "adam"],
    "optimizer.lr": [0.01, 0.001], "seed": [0, 1]}; "optimizer" takes option
    names and classes, optimizer.KEY is that optimizer's keyword argument.
    Runs that differ only in seed, optimizer, schedule or init train in one
    vectorized pass (trainer.vectorize=auto), each into its own folder.
    """
    from optbench import trainer, vectorized

    keys = list(grid)
    sweep_dir = Path(sweep_dir or _new_folder("multirun"))
    cfgs, choices, dirs = [], [], []
    for i, values in enumerate(itertools.product(*(list(grid[k]) for k in keys))):
        point = dict(zip(keys, values))
        optimizer = point.pop("optimizer", "adam")
        args = {k.removeprefix("optimizer."): v for k, v in point.items() if k.startswith("optimizer.")}
        rest = [f"{k}={hydra_value(v)}" for k, v in point.items() if not k.startswith("optimizer.")]
        cfg, chosen = _compose([*optimizer_overrides(optimizer, args), *rest, *overrides])
        cfgs.append(cfg)
        choices.append(chosen)
        name = ",".join(f"{k}={_name(v)}" for k, v in zip(keys, values) if len(grid[k]) > 1)
        dirs.append(sweep_dir / f"{i}_{rundir.folder_name(name)}".rstrip("_"))
    for members in vectorized.plan(cfgs):
        trainer.fit_pass([cfgs[i] for i in members], [dirs[i] for i in members], [choices[i] for i in members])
    return results.load_runs(sweep_dir)


def optimizer_overrides(optimizer: str | type, args: Mapping[str, Any]) -> list[str]:
    """The overrides that choose `optimizer` (a name or a class) with keyword arguments `args`."""
    if isinstance(optimizer, str):
        lines = [f"optimizer={optimizer}"]
    elif isinstance(optimizer, type):
        lines = ["optimizer=custom", f"optimizer._target_={dotted_name(optimizer)}"]
    else:
        raise UserError(f"optimizer={optimizer!r}: give an option name (\"adam\") or an optimizer class")
    # ++: set the key whether or not the option's YAML has it (a class's arguments are all new)
    return lines + [f"++optimizer.{k}={hydra_value(v)}" for k, v in args.items()]


def dotted_name(cls: type) -> str:
    """module.QualName of `cls`, checked to find this very class again (what instantiate will look up)."""
    from hydra.utils import get_class

    name = f"{cls.__module__}.{cls.__qualname__}"
    try:
        found = get_class(name)
    except Exception:
        found = None
    if found is not cls:
        raise UserError(f"optimizer class {cls.__qualname__}: {name} does not find it; define it at the top level "
                        "of a module or of the notebook")
    return name


def hydra_value(v: Any) -> str:
    """A Python value as Hydra override text: true, null, [0.9,0.99], 'text', 0.001."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(hydra_value(x) for x in v) + "]"
    if isinstance(v, str):
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return repr(v)


def _name(v: Any) -> str:
    return v.__name__ if isinstance(v, type) else str(v)


def _compose(overrides: list[str]) -> tuple[Any, dict[str, Any]]:
    """(config, the group choices Hydra made) for `overrides`, composed as `optbench train` composes them."""
    from omegaconf import open_dict

    cfg = compose_config(overrides, hydra=True)  # the checks and one-line errors of the command line
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):  # what hydra.compose does without return_hydra_config
        del cfg["hydra"]
    return cfg, choices


def _new_folder(parent: str) -> str:
    """parent/<time stamp>, made now: the same name as the command line's, -2, -3, ... when it is taken."""
    rundir.new_folders()  # each call its own folder, also twice in one second
    return rundir.new_folder(f"{parent}/{datetime.now():%Y-%m-%d_%H-%M-%S}")
