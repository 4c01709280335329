"""optbench: compare neural-network optimizers on MNIST.

From Python (a notebook)::

    import optbench

    summary = optbench.train("adam", ["trainer.max_steps=200"], lr=1e-3)   # one run: its summary.json
    runs = optbench.sweep({"optimizer": ["adam", "sgd"], "seed": [0, 1, 2]})  # the runs table (a DataFrame)
    metrics = optbench.load_metrics(runs)                                   # every run's long metrics table
    print(optbench.format_ranking(optbench.rank(runs, metrics)).to_string())

`load_runs("multirun/...")` reads runs trained earlier (by the command line too); `optbench.results` has the rest
of the reading side (`verdict_lines`, `comparisons`, ...), `optbench.results.plots` the figures.

Imports, the one rule for every module of the package: at the top of the file, except the heavy ones, imported
inside the functions that use them:
- torch, pandas, matplotlib, optuna, scipy, sqlalchemy, submitit and tensorboard, everywhere;
- hydra, omegaconf, numpy and PyYAML (some 20-150 ms each) in the modules that `import optbench`, `optbench --help`
  and `optbench list` load: this one, api, cli, compose, config_dirs, errors, results.rundir;
- the package's modules that import any of these at their top (trainer, models, vectorized, data, landscape, jobs,
  search, results.stats and the reading side, ...).
So `import optbench`, `optbench --help` and a one-line error come without their start-up cost, and a missing extra
(submitit, a database driver) is an error where it is needed. The reading names here load their module on first
use, as `optbench.results` does.
"""

import importlib

from optbench.api import sweep, train

# the one place the version is written: pyproject.toml's [tool.setuptools.dynamic] reads it from here
__version__ = "0.1.0"

# name -> the module that defines it, imported when the name is first asked for (pandas comes with it)
_LAZY = {"load_runs": "optbench.results.table", "load_metrics": "optbench.results.table",
         "rank": "optbench.results.ranking", "format_ranking": "optbench.results.ranking"}
__all__ = ["__version__", "format_ranking", "load_metrics", "load_runs", "rank", "sweep", "train"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
