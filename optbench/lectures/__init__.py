"""`optbench lectures`: the lecture notes' claims, each with the experiment that tests it and a verdict.

The catalogue is conf/lectures/<claim>.yaml: the quotation and the lecture file it comes from, the groups to train
(each a list of `optbench train` overrides, on top of the claim's shared ones), the seeds and the budget, the
quantity that decides the claim and the predicted direction ("momentum > sgd": momentum's value is the higher). Each
group trains as one real `optbench train -m ... seed=0,...` multirun in its own folder (vectorized over the seeds by
the launcher, re-runs skip finished runs), in a fresh interpreter so that every claim gets Hydra as the command line
does. The verdict per prediction is stats.compare's paired test over the shared seeds.

A claim about searching (random against grid search) has a `search` block (an `optbench search` space and budget)
and groups that are search settings (`sampler: grid`) instead of overrides: each seed is one whole `optbench search`
per group, in its own folder and resumable, and the quantity is read at the trial the search chose on validation
accuracy.

The rooms: catalogue (claim files, the experiment at a scale), running (training and reading runs back), measures
(the deciding quantities), verdicts, figures, page, command (argparse). cli.py imports this package only when
`optbench lectures` is called, and `optbench lectures list` must not pay for torch, pandas or matplotlib: those are
imported inside the functions that use them, everything else at the top of each module.
"""

from optbench.errors import UserError
from optbench.lectures.catalogue import (
    CATALOGUE,
    SCALES,
    compositions,
    condition,
    experiment,
    load,
    merge_overrides,
    names,
    parse_prediction,
    untestable,
)
from optbench.lectures.command import main
from optbench.lectures.running import chosen_trial, group_of, load_claim_runs, measure, search_dir
from optbench.lectures.verdicts import (
    CONTRADICTED,
    SUPPORTED,
    UNRESOLVED,
    UNTESTABLE,
    comparison_text,
    judge,
    smallest_effect,
    verdict_text,
)

__all__ = ["CATALOGUE", "CONTRADICTED", "SCALES", "SUPPORTED", "UNRESOLVED", "UNTESTABLE", "UserError", "chosen_trial",
           "comparison_text", "compositions", "condition", "experiment", "group_of", "judge", "load", "load_claim_runs",
           "main", "measure", "merge_overrides", "names", "parse_prediction", "search_dir", "smallest_effect",
           "untestable", "verdict_text"]
