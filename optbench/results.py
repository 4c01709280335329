"""Reading many run directories back: one table of runs, one long table of metrics, a ranking.

One run directory's files, and how each is written and read, are optbench.rundir's.
"""

import logging
import os
from pathlib import Path

from optbench import rundir, stats
from optbench.errors import UserError
from optbench.rundir import COLUMNS, FINISHED, NOT_FACTORS, RUN_SETTINGS, SUMMARY, DamagedFile  # noqa: F401

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
    """Sort 2_... before 10_... (display order only; analysis never reads folder names)."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


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

    Runs that failed, diverged, were interrupted or never finished keep their
    row and their status. A run whose summary.json or config.yaml is damaged is
    left out with a warning (`runs.attrs["skipped"]`). `runs.attrs["config_columns"]`
    names the config part.
    """
    import pandas as pd
    from omegaconf import OmegaConf

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

    split "step" holds the per-step numbers (mini-batch loss, lr, gradient
    norms); train/val/test the evaluations; run and diag the rest. A half row
    (what a kill leaves) is dropped; a run whose metrics.csv is damaged beyond
    that is left out with a warning (added to `runs.attrs["skipped"]`).
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
    """Values as the text that labels and groups them: 32 not 32.0, null for a missing value.

    (pandas keeps NaN missing through astype(str), and a column holding a
    null turns its integers into floats.)
    """

    def text(v):
        if _missing(v):
            return "null"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return values.map(text)


def varied_keys(runs) -> list[str]:
    """The config columns that differ across runs (seed and machine keys excluded), minus redundant ones.

    A key whose value follows from the keys already kept (optimizer._target_
    and optimizer.lr when only the optimizer varied) adds nothing; choices
    (`optimizer.name`) are considered first so they are the ones kept.
    """
    columns = runs.attrs.get("config_columns") or [c for c in runs.columns if c not in ("run", "run_dir", "status")]
    columns = sorted(columns, key=lambda c: not c.endswith(".name"))
    kept = []
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
    factors = [k for k in varied if k not in TUNED]
    return factors or varied


def select_best(runs, by: list[str]):
    """Per group of `by`, only the runs of its configuration with the best mean validation accuracy.

    Means are over finished runs (completed or diverged): a killed run's
    partial curve is no result.

    The other varied keys (a swept learning rate) are tuned on validation
    only; a group's test figures then come from that choice alone.
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
    times = metrics[(metrics.split == "run") & (metrics.metric == "train_time")]
    times = times.set_index(["run", "step"]).value
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
    """summary.json's health flags as runs columns (flags.saturated, ...): each the first step it was raised, or null."""
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
    """label -> Series(seed -> metric) of each group's finished runs, in the configuration the ranking chose.

    Groups come in the order of the runs (the order of the plots' colours).
    """
    import pandas as pd

    chosen = select_best(runs, by)
    value = chosen[metric].astype(float).where(chosen["status"].isin(FINISHED))
    seed = chosen["seed"] if "seed" in chosen else chosen["run"]  # no seed recorded: nothing is shared
    label = group_label(chosen, by)
    return {g: pd.Series(value[label == g].to_numpy(), index=seed[label == g].to_numpy()).dropna()
            for g in dict.fromkeys(label)}


def comparisons(values: dict, pairs: list[tuple[str, str]], level: float = stats.LEVEL, margin: float | None = None):
    """One row per pair (a, b) of groups: the difference a - b over seeds, the test's p-value and Holm's
    adjusted p-value across these pairs (one family), whether that resolves it at `level`, and its
    t-interval at the level Holm tested it at (`interval_level`), so the interval excludes 0 exactly when
    the row is resolved. `equivalent`: that interval lies within +-`margin` (a TOST at half Holm's alpha
    per side); a difference can be resolved and still smaller than the margin."""
    import pandas as pd

    rows = [{"a": a, "b": b, **stats.compare(values[a], values[b], level, len(pairs))} for a, b in pairs]
    frame = pd.DataFrame(rows, columns=COMPARISON_COLUMNS[:-3])
    frame["p_holm"] = stats.holm(frame["p"]) if len(frame) else []
    frame["resolved"] = frame["p_holm"] <= 1 - level
    if len(frame):
        alphas = stats.holm_alphas(frame["p"], 1 - level)
        frame["interval_level"] = 1 - alphas
        frame["low"], frame["high"] = stats.t_interval(frame["difference"], frame["se"], frame["df"], alphas)
    frame["equivalent"] = (frame["low"] > -margin) & (frame["high"] < margin) if margin else False
    frame.attrs.update(level=level, margin=margin)
    return frame


def against_reference(values: dict, level: float = stats.LEVEL, baseline: str | None = None,
                      margin: float | None = None):
    """(reference, comparisons): the reference group (`baseline`, else the best mean) and every other
    group with finished runs compared with it, best first, as one family."""
    if baseline is not None and baseline not in values:
        raise UserError(f"--baseline {baseline}: no such group; groups: {', '.join(values)}")
    ranked = sorted((g for g in values if len(values[g])), key=lambda g: -values[g].mean())
    reference = baseline or (ranked[0] if ranked else None)
    pairs = [(g, reference) for g in ranked if g != reference] if reference else []
    return reference, comparisons(values, pairs, level, margin)


def comparison_families(table, values: dict, all_pairs: bool = False) -> dict:
    """name -> comparisons, each its own family for Holm: against the ranking's reference, the top three
    among themselves, and (`all_pairs`) every pair of groups."""
    level, reference = table.attrs.get("level", stats.LEVEL), table.attrs.get("reference")
    names = [g for g in values if len(values[g])]
    families = {f"vs {table.attrs.get('reference_kind', 'best')}": [(g, reference) for g in names if g != reference]
                if reference else [],
                "top three": top_pairs(table, values)}
    if all_pairs:
        families["all pairs"] = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return {name: comparisons(values, pairs, level, table.attrs.get("margin")) for name, pairs in families.items()
            if pairs}


def pair_lines(families: dict) -> list[str]:
    """P(A > B) for the top three, and every pair's verdict when all pairs were compared."""
    lines = []
    top = families.get("top three")
    if top is not None:
        lines.append("P(A > B) over seeds, top three: "
                     + ", ".join(f"P({a} > {b}) = {p:.2f}" for a, b, p in zip(top.a, top.b, top.p_a_better)))
    pairs = families.get("all pairs")
    if pairs is not None:
        lines.append(f"all pairs ({len(pairs)}), Holm's correction over all of them, each t-interval at the level "
                     "Holm tested it at:")
        lines += [f"  {row.a} - {row.b}: {row.difference:+.4f} [{row.low:+.4f}, {row.high:+.4f}] "
                  f"({100 * row.interval_level:.3g}%), {row.test} p = {row.p:.2g} (Holm {row.p_holm:.2g}): "
                  f"{_pair_word(row, pairs.attrs.get('margin'))}" for row in pairs.itertuples()]
    return lines


def _pair_word(row, margin) -> str:
    if row.resolved:
        return f"resolved: {row.a} {'better' if row.difference > 0 else 'worse'}" + (
            f", within +-{margin:g}" if row.equivalent else "")
    return f"equivalent within +-{margin:g}" if row.equivalent else "not resolved"


COMPARISON_COLUMNS = ("a", "b", "n_a", "n_b", "paired", "seeds", "difference", "se", "df", "low", "high", "interval",
                      "interval_level", "test", "p", "p_sign_flip", "p_a_better", "seeds_needed", "p_holm", "resolved",
                      "equivalent")


def rank(runs, metrics, by: list[str] | None = None, target: float = 0.97, level: float = stats.LEVEL,
         baseline: str | None = None, margin: float | None = stats.MARGIN):
    """One row per group, best mean validation accuracy first (means and stds over the seeds' finished runs).

    Beside the mean: its t-interval, median and interquartile mean, and the
    comparison with a reference group (`baseline`, else the best): the
    difference over seeds with its interval at Holm's level, Holm-adjusted
    p-value and verdict. `rank` follows the means; only the groups right
    below the best that are equivalent to it within +-`margin` share its 1,
    so a rank never puts a group above one with a higher mean.
    """
    by = resolve_by(runs, by)
    tuned = [k for k in varied_keys(runs) if k not in by]
    chosen = select_best(runs, by).merge(to_target(metrics, target), left_on="run", right_index=True, how="left")
    chosen = chosen.assign(final_train_loss=chosen.get("final.train_loss"), _all=0)
    # statistics over finished runs only; unfinished ones are counted, not averaged in
    values = ["best_val_acc", "test_acc_at_best_val", "final_train_loss", "steps_to_target", "time_to_target"]
    chosen[values] = chosen[values].astype(float).where(chosen["status"].isin(FINISHED), axis=0)
    keys = (by + tuned) or ["_all"]
    chosen[keys] = as_text(chosen[keys])
    table = chosen.groupby(keys).agg(
        runs=("run", "size"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        unfinished=("status", lambda s: int((~s.isin(FINISHED)).sum())),
        best_val_acc=("best_val_acc", "mean"),
        best_val_acc_std=("best_val_acc", "std"),
        best_val_acc_median=("best_val_acc", "median"),
        best_val_acc_iqm=("best_val_acc", stats.iqm),
        test_acc=("test_acc_at_best_val", "mean"),
        test_acc_std=("test_acc_at_best_val", "std"),
        final_train_loss=("final_train_loss", "mean"),
        final_train_loss_std=("final_train_loss", "std"),
        reached=("steps_to_target", "count"),
        steps_to_target=("steps_to_target", "mean"),
        time_to_target=("time_to_target", "mean"),
    )
    table["flags"] = chosen.groupby(keys).apply(group_flags, include_groups=False) if flag_columns(chosen) else ""
    if "optimizer_impl" in chosen:
        impl = chosen.groupby(keys)["optimizer_impl"]
        table["optimizer_impl"] = impl.agg(lambda s: "/".join(sorted(set(map(str, s.dropna())))))
    table = table.reset_index().drop(columns=["_all"], errors="ignore")
    table = table.sort_values("best_val_acc", ascending=False, na_position="last", ignore_index=True)

    seeds = group_values(runs, by)
    labels = list(group_label(table, by))
    intervals = [stats.mean_interval(seeds[g], level)[:2] for g in labels]
    table["best_val_acc_low"], table["best_val_acc_high"] = zip(*intervals) if labels else ([], [])
    best, vs_best = against_reference(seeds, level, margin=margin)
    reference, vs_reference = against_reference(seeds, level, baseline, margin) if baseline else (best, vs_best)
    found = vs_reference.set_index("a")
    for column in ("difference", "low", "high", "interval_level", "test", "seeds", "n_a", "n_b", "p", "p_holm",
                   "p_sign_flip", "p_a_better", "seeds_needed", "resolved", "equivalent"):
        table[f"vs_{column}"] = [found[column].get(g, None) for g in labels]
    kind = "baseline" if baseline else "best"
    table["verdict"] = [_verdict(g, reference, kind, found, margin) for g in labels]
    table["rank"] = _ranks(labels, best, set(vs_best.a[vs_best.equivalent]))
    table.loc[table["best_val_acc"].isna(), "rank"] = None
    table.attrs.update(by=by, tuned=tuned, target=target, level=level, reference=reference, margin=margin,
                       reference_kind=kind, comparisons=len(vs_reference))
    return table


def _ranks(labels: list[str], best: str | None, equivalent: set) -> list[int]:
    """Position by mean (labels come best first); the best and the unbroken run of groups after it that are
    equivalent to it share rank 1."""
    ranks, tied = [], True
    for i, g in enumerate(labels):
        tied = tied and (g == best or g in equivalent)
        ranks.append(1 if tied else i + 1)
    return ranks


def _verdict(group: str, reference: str | None, kind: str, found, margin: float | None) -> str:
    """'resolved: better' or 'resolved: worse' (than the reference; ', within +-margin' when the difference
    is also smaller than the margin), 'equivalent within +-margin', or 'not resolved at N seeds' (the seeds
    that would resolve it stand in their own column)."""
    if group == reference:
        return kind
    if group not in found.index:
        return "no finished runs"
    row = found.loc[group]
    if row["test"] == "none":
        return "too few runs"
    if row["resolved"]:
        return f"resolved: {'better' if row['difference'] > 0 else 'worse'}" + (
            f", within +-{margin:g}" if row["equivalent"] else "")
    if row["equivalent"]:
        return f"equivalent within +-{margin:g}"
    over = f"{row['seeds']:.0f} seeds" if row["test"] == "paired t" else f"{row['n_a']:.0f} vs {row['n_b']:.0f} runs"
    return f"not resolved at {over}"


MANY_RUNS = 5  # from this many runs in a group the ranking shows median and interquartile mean beside the mean


def format_ranking(table):
    """The ranking as text cells: mean ± std and its interval, the verdict against the reference, counts."""
    import pandas as pd

    pct = f"{100 * table.attrs.get('target', 0.97):g}%"
    level = table.attrs.get("level", stats.LEVEL)

    def pm(mean, std, fmt="{:.4f}", std_fmt="{:.4f}"):
        return [
            "" if pd.isna(m) else fmt.format(m) + ("" if pd.isna(s) else " ± " + std_fmt.format(s))
            for m, s in zip(table[mean], table[std])
        ]

    def interval(low, high, fmt="{:.4f}"):
        return ["" if pd.isna(lo) else f"[{fmt.format(lo)}, {fmt.format(hi)}]" for lo, hi in zip(low, high)]

    keys = table.attrs.get("by", []) + table.attrs.get("tuned", [])
    out = pd.DataFrame({k: table[k] for k in keys})
    out["rank"] = ["" if pd.isna(r) else f"{r:.0f}" for r in table["rank"]]
    out["runs"] = table["runs"]
    out["diverged"] = table["diverged"]
    if table["unfinished"].any():
        out["unfinished"] = table["unfinished"]
    out["health flags"] = [f or "none" for f in table["flags"]]  # summary.json's flags: runs that raised each
    out["best val acc"] = pm("best_val_acc", "best_val_acc_std")
    out[f"{100 * level:g}% CI (t)"] = interval(table["best_val_acc_low"], table["best_val_acc_high"])
    if table["runs"].max() >= MANY_RUNS:
        out["median"] = ["" if pd.isna(v) else f"{v:.4f}" for v in table["best_val_acc_median"]]
        out["IQM"] = ["" if pd.isna(v) else f"{v:.4f}" for v in table["best_val_acc_iqm"]]
    kind = table.attrs.get("reference_kind", "best")
    difference = [("" if pd.isna(d) else f"{d:+.4f} ") for d in table["vs_difference"]]
    out[f"vs {kind}"] = [d + i + ("" if pd.isna(lvl) or lvl == level else f" ({100 * lvl:.3g}%)") for d, i, lvl in
                         zip(difference, interval(table["vs_low"], table["vs_high"], "{:+.4f}"), table["vs_interval_level"])]
    out["test"] = [_test_text(t, s, n_a, n_b) for t, s, n_a, n_b in
                   zip(table["vs_test"], table["vs_seeds"], table["vs_n_a"], table["vs_n_b"])]
    out["p (Holm)"] = ["" if pd.isna(p) else f"{p:.2g}" for p in table["vs_p_holm"]]
    out["verdict"] = table["verdict"]
    out["seeds to resolve"] = [_seeds_text(n) if v.startswith("not resolved") else "" for n, v in
                               zip(table["vs_seeds_needed"], table["verdict"])]
    out["test acc @ best val"] = pm("test_acc", "test_acc_std")
    out["final train loss"] = pm("final_train_loss", "final_train_loss_std", "{:.4g}", "{:.2g}")  # diverged: 1e+07
    out[f"reached {pct}"] = [f"{r}/{n}" for r, n in zip(table["reached"], table["runs"])]
    out[f"steps to {pct}"] = ["" if pd.isna(v) else f"{v:.0f}" for v in table["steps_to_target"]]
    out[f"time to {pct} (s)"] = ["" if pd.isna(v) else f"{v:.2f}" for v in table["time_to_target"]]
    if "optimizer_impl" in table:
        out["impl"] = table["optimizer_impl"]
    return out


def _test_text(test, seeds, n_a, n_b) -> str:
    if test == "paired t":
        return f"paired t, {seeds:.0f} seeds"
    if test == "Welch":
        return f"Welch, {n_a:.0f} vs {n_b:.0f} runs"
    return ""


def _seeds_text(n) -> str:
    if n is None or n != n:
        return ""
    return f">{stats.MAX_SEEDS}" if n == float("inf") else f"{n:.0f}"


def verdict_lines(table) -> list[str]:
    """One line per comparison with the reference: difference, interval (at the level Holm tested it at),
    test, verdict; for a paired one the sign-flip p as a check that assumes no normality; for an unresolved
    one the seeds that would resolve a difference of that size at that spread."""
    import pandas as pd

    level, reference = table.attrs.get("level", stats.LEVEL), table.attrs.get("reference")
    kind, m = table.attrs.get("reference_kind", "best"), table.attrs.get("comparisons", 0)
    if reference is None or not m:
        return []
    labels = list(group_label(table, table.attrs.get("by", [])))
    lines = [f"against the {kind} ({reference}), best val acc, Holm's correction over {m} comparison{'s' * (m > 1)} "
             f"at alpha {1 - level:g}; each t-interval is at the level Holm tested that comparison at, so it excludes "
             "0 exactly when the comparison is resolved:"]
    for g, row in zip(labels, table.itertuples()):
        if g == reference or pd.isna(row.vs_difference):
            continue
        if row.vs_test == "none":
            lines.append(f"  {g} - {reference}: {row.vs_difference:+.4f}; too few runs to test")
            continue
        paired = row.vs_test == "paired t"
        line = (f"  {g} - {reference}: {row.vs_difference:+.4f} [{row.vs_low:+.4f}, {row.vs_high:+.4f}] "
                f"({100 * row.vs_interval_level:.3g}%), {row.vs_test} p = {row.vs_p:.2g} (Holm {row.vs_p_holm:.2g}), "
                f"P({g} > {reference}) = {row.vs_p_a_better:.2f} over "
                f"{f'{row.vs_seeds:.0f} paired seeds' if paired else 'unpaired runs'}: {row.verdict}")
        if row.verdict.startswith("not resolved"):
            needed = row.vs_seeds_needed
            line += ("; no difference to resolve" if needed == float("inf") and row.vs_difference == 0 else
                     f"; about {_seeds_text(needed)} {'seeds' if paired else 'runs per group'} would resolve this "
                     f"difference at this spread ({100 * stats.POWER:g}% power of the {row.vs_test} test at alpha "
                     f"{1 - level:g}/{m})")
        if paired:
            line += f"; {_sign_flip_text(row.vs_p_sign_flip, row.vs_seeds, (1 - level) / m)}"
        lines.append(line)
    return lines


def _sign_flip_text(p: float, seeds: float, alpha: float) -> str:
    """The sign-flip test as a check: its p, and when it cannot reach alpha at this many seeds, that it cannot."""
    smallest = 2 / 2**seeds
    text = f"sign-flip p = {p:.2g}"
    if smallest > alpha:
        text += f" (the smallest {seeds:.0f} seeds allow is 2/2^{seeds:.0f} = {smallest:.2g}: it cannot check this)"
    return text


def top_pairs(table, values: dict, top: int = 3) -> list[tuple[str, str]]:
    """Every pair among the first `top` groups of the ranking, the better-ranked one first."""
    labels = [g for g in group_label(table, table.attrs.get("by", [])) if len(values.get(g, ()))][:top]
    return [(a, b) for i, a in enumerate(labels) for b in labels[i + 1:]]


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
    import numpy as np
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

    The folder names carry what varied, so TensorBoard (and tbparse, W&B,
    Aim, which import these files) group the seeds of a configuration.
    Tags: `<split>/<metric>` per evaluation, `<split>_step/<metric>` per step.
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("export tensorboard needs the tensorboard package: pip install 'optbench[tensorboard]'") from None
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
                tag = f"{split}/{metric}"
                writer.add_scalar(tag, value, int(step))
        written.append(log_dir)
    return written


def _missing(value) -> bool:
    return value is None or value != value  # None or NaN
