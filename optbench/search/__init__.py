"""`optbench search`: random, TPE, CMA-ES or grid search over any config keys, on Optuna.

A command rather than a Hydra sweeper plugin: the released hydra-optuna-sweeper pins optuna < 3, and a sweeper
cannot run several seeds per trial and score their mean. Each trial composes its config with Hydra's compose API
(the same config `optbench train` would get) and trains with the same `trainer.fit`, one ordinary run directory per
seed, so `optbench report` and `plot` read searches like any sweep.

A search directory holds:
  search.yaml   the settings (space, sampler, seeds, fixed overrides, --storage's URL without its password); a
                rerun with --dir resumes them. Every setting is checked (the first trial's config composed) before
                it or any folder is written, so a typo leaves nothing and the corrected command uses the same --dir
  study.db      Optuna's study (SQLite): finished trials survive an interruption; with --storage URL the study is
                on a database or journal file that workers on several machines share (shared.py), named after the
                directory, and --workers N submits N workers
  runs/         one run directory per trial and seed: <trial>_<what varied>,seed=<s>, made by rundir.folder_name
                ('/' becomes '_'; a name over 120 bytes is cut and ends in a hash of it)
  trials.csv    one row per trial: state, parameters, mean/std validation accuracy, reason
  *.png         Optuna's history, slice and importance plots
  best/         (final_seeds > 0) the best trial's settings rerun with more seeds

With `schedules` (the crowded_valley preset) the directory holds one such search per schedule, <dir>/<schedule>/,
each with the one-shot runs of the optimizer's defaults in <schedule>/one_shot/, and valley.csv/.md/.png comparing
one-shot against the tuning budgets.

Trials are scored by the mean over seeds of each run's best validation accuracy; test accuracy is recorded beside
it and never chosen on. A run that diverges ends its trial as PRUNED with the reason; an interrupted run ends the
search (the trial is marked FAIL and does not count: resuming runs a new one). A search that ends with no completed
trial exits 1. A damaged study.db, search.yaml or summary.json is one line naming the file and the way out.

Passwords. Give --storage without one (postgresql://user@host:5432/db) and put it in the environment:
OPTBENCH_STORAGE_PASSWORD (any database), or for PostgreSQL ~/.pgpass (mode 0600) or PGPASSWORD, which libpq
reads itself. A password written in the URL (user:password@ or ?password=) is taken out of it before anything
is written or submitted: search.yaml, the workers' job files (.submitit/*.pkl) and every message hold the URL
without it (messages show ***), and the workers get it through the environment the submitting process hands
them (submitit's local processes inherit it; sbatch exports it to SLURM jobs unless the site sets
SBATCH_EXPORT, and SLURM's controller keeps a job's environment in its own state directory). A password on the
command line still shows in `ps` and in the shell's history: the environment variable or ~/.pgpass is the safe
form.

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
