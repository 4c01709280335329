"""`optbench search`: random, TPE, CMA-ES or grid search over any config keys, on Optuna.

A command rather than a Hydra sweeper plugin: the released
hydra-optuna-sweeper pins optuna < 3, and a sweeper cannot run several seeds
per trial and score their mean. Each trial composes its config with Hydra's
compose API (the same config `optbench train` would get) and trains with the
same `trainer.fit`, one ordinary run directory per seed, so `optbench report`
and `plot` read searches like any sweep.

A search directory holds:
  search.yaml   the settings (space, sampler, seeds, fixed overrides); a rerun with --dir resumes them
  study.db      Optuna's study (SQLite): finished trials survive an interruption; with --storage URL
                the study is on a database or journal file that workers on several machines share
                (shared.py), named after the directory, and --workers N submits N workers
  runs/         one run directory per trial and seed: <trial>_<what varied>,seed=<s>
  trials.csv    one row per trial: state, parameters, mean/std validation accuracy, reason
  *.png         Optuna's history, slice and importance plots
  best/         (final_seeds > 0) the best trial's settings rerun with more seeds

With `schedules` (the crowded_valley preset) the directory holds one such
search per schedule, <dir>/<schedule>/, each with the one-shot runs of the
optimizer's defaults in <schedule>/one_shot/, and valley.csv/.md/.png comparing
one-shot against the tuning budgets.

Trials are scored by the mean over seeds of each run's best validation
accuracy; test accuracy is recorded beside it and never chosen on. A run that
diverges ends its trial as PRUNED with the reason; an interrupted run ends the
search (the trial is marked FAIL and does not count: resuming runs a new one).

The package, one module per concern:
  spaces.py    ranges -> Optuna distributions, grids, a point's overrides, seeded samplers
  settings.py  presets, defaults, search.yaml and what a resumed search may change, the budget
  scoring.py   a trial's score (validation only) and trials.csv
  running.py   the loop on one machine (DIR/study.db under a lock), a trial's run directories, the best's reruns
  shared.py    a study on a database or journal file that workers on several machines share; --workers
  figures.py   history, slice and importance plots
  valley.py    the Crowded Valley protocol
  command.py   the command line

Imports: at the top of each module, except torch, optuna (with SQLAlchemy), matplotlib and pandas, and the
optbench modules that import them at their top (trainer, plots): those are imported inside the functions that
use them, so `optbench search --help` and a one-line error come without their start-up cost, and a missing
extra (submitit, a database driver) is a one-line error where it is needed.
"""

from optbench.search.command import main
from optbench.search.running import run_one, run_search
from optbench.search.settings import DEFAULTS, budget
from optbench.search.spaces import grid, parse_space, trial_overrides
from optbench.search.valley import valley_rows

__all__ = ["DEFAULTS", "budget", "grid", "main", "parse_space", "run_one", "run_search", "trial_overrides",
           "valley_rows"]
