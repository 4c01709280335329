"""Many run directories read back as tables: one row per run (config, summary, status), one long table of metrics.

One run directory's files, and how each is written and read, are `optbench.results.rundir`'s; the ranking over
these tables is `optbench.results.ranking`'s.
"""

import logging
import os
import re
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from optbench.errors import UserError
from optbench.results import rundir, stats
from optbench.results.rundir import COLUMNS, FINISHED, NOT_FACTORS, SUMMARY, DamagedFile

log = logging.getLogger(__name__)
# hyperparameters tuned per group: a group is represented by its best value, chosen on validation
TUNED = ("optimizer.lr",)
# summary fields the report and plots read
SUMMARY_COLUMNS = ("best_val_acc", "test_acc_at_best_val", "final.train_loss", "optimizer_impl",
                   "steps_per_epoch", "train_time", "wall_time")


def find_runs(dirs) -> list[Path]:
    """Every run directory (one holding summary.json) at or below each of `dirs`."""
    found = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d} is not a directory")
        found += [p.parent for p in d.rglob(SUMMARY)]
    found = sorted(set(p.resolve() for p in found), key=_natural)
    if not found:
        raise UserError(f"no runs (no {SUMMARY}) found under {', '.join(map(str, dirs))}")
    return found


def _natural(path: Path):
    """Sort 2_... before 10_... (display order only; analysis never reads folder names). Ties (0.01 and 0.001
    both read 1) fall back to the text, or the order would follow Python's hash seed from one process to the next."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))], str(path)


def _flat(d: dict) -> dict:
    import pandas as pd

    if not d:
        return {}
    flat = pd.json_normalize(d, sep=".").iloc[0].to_dict()
    # lists (hidden sizes, betas) as text, so they can be compared and grouped
    return {k: str(v) if isinstance(v, (list, tuple)) else v for k, v in flat.items()}


def skip(table, error: DamagedFile) -> None:
    """Leave a damaged run out of `table`'s analysis: table.attrs["skipped"] lists them (the command line prints
    one warning line each and ends non-zero once it has done the rest)."""
    log.debug("skipped: %s", error)
    table.attrs.setdefault("skipped", []).append(str(error))


def load_runs(*dirs):
    """One row per run below `dirs`: flattened config, `<group>.name` choices, summary fields, status.

    Runs that failed, diverged, were interrupted or never finished keep their row and their status. A run whose
    summary.json or config.yaml is damaged is left out with a warning (`runs.attrs["skipped"]`).
    `runs.attrs["config_columns"]` names the config part.
    """
    import pandas as pd

    paths = find_runs(dirs or ["."])
    root = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    rows, config_columns, skipped = [], {}, []
    for path in paths:
        try:
            summary = rundir.read_summary(path) or {}
            config = rundir.read_config(path)
        except DamagedFile as e:
            skipped.append(e)
            continue
        config = _flat(OmegaConf.to_container(config, resolve=True)) if config is not None else {}
        choices = {f"{g}.name": v for g, v in summary.get("choices", {}).items() if f"{g}.name" not in config}
        config = {**choices, **config}
        config_columns.update(dict.fromkeys(config))
        fields = _flat({k: v for k, v in summary.items() if k != "choices"})
        fields = {(f"summary.{k}" if k in config else k): v for k, v in fields.items()}
        fields["status"] = rundir.status(path, summary)
        rows.append({"run": str(path.relative_to(root)), **config, **fields, "run_dir": str(path)})
    if not rows:
        raise UserError(f"no readable runs under {', '.join(map(str, dirs))}: {skipped[0]}")
    runs = pd.DataFrame(rows)
    for error in skipped:
        skip(runs, error)
    for column in SUMMARY_COLUMNS:  # present even when no run got far enough to write them
        if column not in runs:
            runs[column] = None
    first = ["run", "status"] + [c for c in config_columns if c.endswith(".name")]
    runs = runs[first + [c for c in runs.columns if c not in first]]
    runs.attrs["config_columns"] = [c for c in config_columns if c in runs.columns]
    return runs


def load_metrics(runs):
    """The long metrics table of every run in `runs`, with a `run` column.

    split "step" holds the per-step numbers (mini-batch loss, lr, gradient norms); train/val/test the evaluations; run
    and diag the rest. A half row (what a kill leaves) is dropped; a run whose metrics.csv is damaged beyond that is
    left out with a warning (added to `runs.attrs["skipped"]`).
    """
    import pandas as pd

    tables = []
    for run, run_dir in zip(runs["run"], runs["run_dir"]):
        path = Path(run_dir) / rundir.METRICS
        if not path.exists() or path.stat().st_size == 0:
            continue
        try:
            tables.append(rundir.read_metrics(run_dir).assign(run=run))
        except DamagedFile as e:
            skip(runs, e)
    if not tables:
        return pd.DataFrame(columns=[*COLUMNS, "run"])
    return pd.concat(tables, ignore_index=True)


def load_histograms(runs):
    """histograms.csv of every run in `runs` that has one, with a `run` column (a damaged one is left out)."""
    import pandas as pd

    tables = []
    for run, d in zip(runs["run"], runs["run_dir"]):
        path = Path(d) / rundir.HISTOGRAMS
        if path.exists():
            try:
                tables.append(pd.read_csv(path, on_bad_lines="skip").assign(run=run))
            except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
                skip(runs, DamagedFile(path, f"cannot be read ({type(e).__name__})", "its run is drawn without "
                                       "histograms"))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def as_text(values):
    """Values as the text that labels and groups them: 32 not 32.0, null for a missing value (pandas keeps NaN
    missing through astype(str), and a column holding a null turns its integers into floats)."""

    def text(v):
        if _missing(v):
            return "null"
        return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)

    return values.map(text)


def varied_keys(runs) -> list[str]:
    """The config columns that differ across runs (seed and machine keys excluded), minus redundant ones.

    A key whose value follows from the keys already kept (optimizer._target_ and optimizer.lr when only the optimizer
    varied) adds nothing; choices (`optimizer.name`) are considered first so they are the ones kept.
    """
    columns = runs.attrs.get("config_columns") or [c for c in runs.columns if c not in ("run", "run_dir", "status")]
    columns = sorted(columns, key=lambda c: not c.endswith(".name"))
    kept: list[str] = []
    for c in columns:
        if c in NOT_FACTORS or as_text(runs[c]).nunique() < 2:
            continue
        if kept and as_text(runs[kept + [c]]).groupby(kept)[c].nunique().max() < 2:
            continue
        kept.append(c)
    return kept


def resolve_by(runs, by: list[str] | None) -> list[str]:
    """The grouping keys: `by` as given (checked), or what varied apart from tuned hyperparameters."""
    if by:
        out = []
        for key in by:
            name = key if key in runs.columns else f"{key}.name"
            if name not in runs.columns:
                options = ", ".join(varied_keys(runs) + ["seed"]) or "none (nothing varied)"
                raise UserError(f"--by {key}: no such config key in these runs; keys that varied: {options}")
            out.append(name)
        return out
    varied = varied_keys(runs)
    return [k for k in varied if k not in TUNED] or varied


def select_best(runs, by: list[str]):
    """Per group of `by`, only the runs of its configuration with the best mean validation accuracy.

    Means are over finished runs (completed or diverged): a killed run's partial curve is no result. The other varied
    keys (a swept learning rate) are tuned on validation only; a group's test figures then come from that choice alone.
    """
    import pandas as pd

    tuned = [k for k in varied_keys(runs) if k not in by]
    if not tuned:
        return runs
    text = as_text(runs[by + tuned])
    config = text.agg("|".join, axis=1)  # one label per configuration
    group = text[by].agg("|".join, axis=1) if by else pd.Series("", index=runs.index)
    configs = pd.DataFrame({"config": config, "group": group}).drop_duplicates("config").set_index("config")
    finished = runs["best_val_acc"].where(runs["status"].isin(FINISHED))
    configs["score"] = finished.groupby(config).mean().fillna(-1.0)
    best = configs.groupby("group")["score"].idxmax()
    return runs[config.isin(best)]


def to_target(metrics, target: float):
    """Per run: the first evaluation step with validation accuracy >= target, and the training time then."""
    import pandas as pd

    val = metrics[(metrics.split == "val") & (metrics.metric == "acc") & (metrics.value >= target)]
    first = val.groupby("run").step.min().rename("steps_to_target")
    times = metrics[(metrics.split == "run") & (metrics.metric == "train_time")].set_index(["run", "step"]).value
    out = first.to_frame()
    out["time_to_target"] = [times.get((r, s)) for r, s in first.items()]
    return out.reindex(pd.Index(metrics.run.unique(), name="run"))


# config keys as a lecturer would say them, for legend titles and axis labels; others: key_words' rule
KEY_WORDS = {
    "optimizer.name": "optimizer", "optimizer.lr": "learning rate", "optimizer.weight_decay": "weight decay",
    "optimizer.momentum": "momentum", "optimizer.betas": "betas (Adam's decay rates)", "init.name": "initialisation",
    "model.activation": "activation", "model.hidden": "hidden layer widths", "model.batchnorm": "batch norm",
    "model.dropout": "dropout", "trainer.batch_size": "batch size", "trainer.epochs": "epochs",
    "schedule.name": "learning-rate schedule", "loss.name": "loss", "data.name": "dataset",
    "diagnostics.name": "diagnostics", "trainer.clip_grad_norm": "gradient clipping (max norm)",
}


def key_words(key: str) -> str:
    """A config key in words: KEY_WORDS, else its last part with spaces (`schedule.warmup_steps`: warmup steps)."""
    if key in KEY_WORDS:
        return KEY_WORDS[key]
    parts = key.split(".")
    last = parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]
    return last.replace("_", " ")


def group_label(frame, by: list[str]):
    """Each row's group as text: the values of `by` ("adam", "sgd, 0.1"), or "all runs"."""
    import pandas as pd

    if not by:
        return pd.Series("all runs", index=frame.index)
    return as_text(frame[by]).agg(", ".join, axis=1)


def flag_columns(runs) -> list[str]:
    """summary.json's health flags as runs columns (flags.saturated, ...): each the first step raising it, or null."""
    return [c for c in runs.columns if c.startswith("flags.")]


def run_flags(runs):
    """Per run, the health flags it raised with the first step of each ("saturated at step 0"), or ""."""
    columns = flag_columns(runs)

    def text(row):
        return ", ".join(f"{c[len('flags.'):].replace('_', ' ')} at step {row[c]:.0f}" for c in columns
                         if not _missing(row[c]))

    return runs.apply(text, axis=1) if columns and len(runs) else runs["run"].map(lambda _: "")


def group_flags(runs):
    """Per group of `runs` (one group's rows), which flags how many of its runs raised: "saturated 2/2"."""
    return ", ".join(f"{c[len('flags.'):].replace('_', ' ')} {runs[c].notna().sum()}/{len(runs)}"
                     for c in flag_columns(runs) if runs[c].notna().any())


def group_values(runs, by: list[str], metric: str = "best_val_acc") -> dict:
    """label -> Series(seed -> metric) of each group's finished runs, in the configuration the ranking chose; groups
    in the order of the runs (the order of the plots' colours)."""
    import pandas as pd

    chosen = select_best(runs, by)
    value = chosen[metric].astype(float).where(chosen["status"].isin(FINISHED))
    seed = chosen["seed"] if "seed" in chosen else chosen["run"]  # no seed recorded: nothing is shared
    label = group_label(chosen, by)
    return {g: pd.Series(value[label == g].to_numpy(), index=seed[label == g].to_numpy()).dropna()
            for g in dict.fromkeys(label)}


def tuning_trials(runs, by: list[str], metric: str = "best_val_acc") -> dict:
    """label -> the metric of every finished run of the group, whatever its tuned values and seed: the
    trials a tuning budget draws from (Dodge et al. 2019)."""
    finished = runs[runs["status"].isin(FINISHED)]
    label = group_label(finished, by)
    return {g: finished.loc[label == g, metric].astype(float).dropna().to_numpy()
            for g in dict.fromkeys(group_label(runs, by))}


def tuning_cost(trials: dict, budgets=None):
    """Expected best validation accuracy after n trials per group, for n in `budgets` (default: 1, 2, 5,
    10, 20, 50, ... up to the most trials a group has); blank beyond a group's own trials."""
    import pandas as pd

    most = max((len(v) for v in trials.values()), default=0)
    if budgets is None:
        budgets = sorted({n for n in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if n < most} | {most})
    rows = []
    for group, v in trials.items():
        best = stats.expected_best(v, budgets) if len(v) else np.full(len(budgets), np.nan)
        rows.append({"group": group, "trials": len(v),
                     **{f"n={n}": (b if n <= len(v) else np.nan) for n, b in zip(budgets, best)}})
    return pd.DataFrame(rows)


def markdown(table) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = as_text(table)
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def export_tensorboard(runs, metrics, out: Path, by: list[str] | None = None) -> list[Path]:
    """Each run's metrics as TensorBoard event files in out/<key=value,...>/seed=<n>/.

    The folder names carry what varied, so TensorBoard (and tbparse, W&B, Aim, which import these files) group the seeds
    of a configuration. Tags: `<split>/<metric>`, the per-step values' split being `step` (`step/loss`).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("export tensorboard needs the tensorboard package: "
                        "pip install 'optbench[tensorboard]'") from None
    keys = resolve_by(runs, by) if by else varied_keys(runs)
    written = []
    for i, run in runs.iterrows():
        group = ",".join(f"{k}={run[k]}" for k in keys) or "runs"
        name = f"seed={run['seed']}" if "seed" in run and not _missing(run["seed"]) else run["run"]
        log_dir = Path(out) / group.replace("/", "_") / str(name)
        if log_dir in written:
            log_dir = log_dir.with_name(f"{log_dir.name}-{i}")
        rows = metrics[metrics.run == run["run"]]
        with SummaryWriter(log_dir=str(log_dir)) as writer:
            for split, metric, step, value in zip(rows.split, rows.metric, rows.step, rows.value):
                writer.add_scalar(f"{split}/{metric}", value, int(step))
        written.append(log_dir)
    return written


def _missing(value) -> bool:
    return value is None or value != value  # None or NaN

