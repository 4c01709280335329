"""A trial's score (validation only) and the table of every trial's score."""

from pathlib import Path

import numpy as np

from optbench.results import rundir

METRIC = "best_val_acc"  # the objective: validation only, maximised


def score(summaries: list[dict]) -> tuple[float, float]:
    """Mean and std over seeds of the best validation accuracy: the trial's objective (test never enters)."""
    values = [s[METRIC] for s in summaries]
    return float(np.mean(values)), float(np.std(values))


def trials_table(study):
    """One row per trial: number, state, parameters, val_acc_mean (the objective), std, test, reason."""
    df = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    if df.empty:
        return df
    df = df.rename(columns={"value": "val_acc_mean"})
    df = df.rename(columns=lambda c: c.removeprefix("params_").removeprefix("user_attrs_"))
    df["duration"] = df["duration"].dt.total_seconds().round(1)
    front = ["number", "state", *study.trials[0].params.keys(), "val_acc_mean", "val_acc_std", "test_acc_mean"]
    front = [c for c in front if c in df.columns]
    return df[front + [c for c in df.columns if c not in front]]


def write_table(study, search_dir: Path) -> None:
    """trials.csv, and the table and best trial printed."""
    import pandas as pd

    df = trials_table(study)
    if df.empty:
        return
    rundir.write_bytes(search_dir / "trials.csv", df.to_csv(index=False).encode())  # parallel searches rewrite it
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.max_colwidth", 60):
        print(df.drop(columns=["runs"], errors="ignore").to_string(index=False, float_format=lambda x: f"{x:.4g}"))
    best = max((t for t in study.trials if t.value is not None), key=lambda t: t.value, default=None)
    if best is not None:
        print(f"best trial {best.number}: {best.params}: mean val acc {best.value:.4f} "
              f"(test acc {best.user_attrs.get('test_acc_mean', float('nan')):.4f}, reported only)")

