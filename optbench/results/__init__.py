"""What runs leave behind, and reading it back.

- `rundir`: one run directory (its files, atomic writes, reads that name a damaged file, status, who holds it).
  The training path imports this module and nothing else of the package.
- `table`: many run directories as DataFrames (`load_runs`, `load_metrics`).
- `ranking`: groups of runs ranked with intervals and verdicts (`rank`, `format_ranking`, `verdict_lines`).
- `stats`: the intervals and tests the ranking uses; `plots`, `html`, `profiles`: figures, the offline report page,
  AlgoPerf performance profiles.

The names below are importable from `optbench.results` directly; each submodule is imported only when one of its
names is first asked for, so `import optbench.results.rundir` (the trainer's) loads no pandas.
"""

import importlib

# name -> the submodule that defines it
_WHERE = {
    **dict.fromkeys(("find_runs", "load_runs", "load_metrics", "load_histograms", "as_text", "varied_keys",
                     "resolve_by", "select_best", "to_target", "key_words", "group_label", "group_values",
                     "run_flags", "tuning_trials", "tuning_cost", "markdown", "export_tensorboard", "TUNED"), "table"),
    **dict.fromkeys(("rank", "format_ranking", "verdict_lines", "comparisons", "against_reference",
                     "comparison_families", "pair_lines"), "ranking"),
    **dict.fromkeys(("FINISHED", "RUN_SETTINGS", "NOT_FACTORS", "SUMMARY", "METRICS", "DamagedFile"), "rundir"),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
