"""The ranking of groups of runs: means over seeds, intervals, comparisons with the best (or a baseline), verdicts.

How sure each comparison is comes from `optbench.results.stats`; the tables it reads from `optbench.results.table`.
"""

from optbench.errors import UserError
from optbench.results import stats
from optbench.results.rundir import FINISHED
from optbench.results.table import (
    as_text,
    flag_columns,
    group_flags,
    group_label,
    group_values,
    resolve_by,
    select_best,
    to_target,
    varied_keys,
)


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
                  f"{_word(row, pairs.attrs.get('margin'), 'not resolved', f'{row.a} ')}" for row in pairs.itertuples()]
    return lines


def _word(row, margin, otherwise: str, who: str = "") -> str:
    """A comparison's verdict: 'resolved: [who ]better' or '... worse' (', within +-margin' when it is also
    equivalent), 'equivalent within +-margin', or `otherwise`."""
    if row.resolved:
        return f"resolved: {who}{'better' if row.difference > 0 else 'worse'}" + (
            f", within +-{margin:g}" if row.equivalent else "")
    return f"equivalent within +-{margin:g}" if row.equivalent else otherwise


COMPARISON_COLUMNS = ("a", "b", "n_a", "n_b", "paired", "seeds", "difference", "se", "df", "low", "high", "interval",
                      "interval_level", "test", "p", "p_sign_flip", "p_a_better", "seeds_needed", "p_holm", "resolved",
                      "equivalent")


def rank(runs, metrics, by: list[str] | None = None, target: float = 0.97, level: float = stats.LEVEL,
         baseline: str | None = None, margin: float | None = stats.MARGIN):
    """One row per group, best mean validation accuracy first (means and stds over the seeds' finished runs).

    Beside the mean: its t-interval, median and interquartile mean, and the comparison with a reference group
    (`baseline`, else the best): the difference over seeds with its interval at Holm's level, Holm-adjusted p-value and
    verdict. `rank` follows the means; only the groups right below the best that are equivalent to it within +-`margin`
    share its 1, so a rank never puts a group above one with a higher mean.
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
    over = f"{row['seeds']:.0f} seeds" if row["test"] == "paired t" else f"{row['n_a']:.0f} vs {row['n_b']:.0f} runs"
    return _word(row, margin, f"not resolved at {over}")


MANY_RUNS = 5  # from this many runs in a group the ranking shows median and interquartile mean beside the mean


def format_ranking(table):
    """The ranking as text cells: mean ± std and its interval, the verdict against the reference, counts."""
    import pandas as pd

    pct = f"{100 * table.attrs.get('target', 0.97):g}%"
    level = table.attrs.get("level", stats.LEVEL)

    def pm(mean, std, fmt="{:.4f}", std_fmt="{:.4f}"):
        return ["" if pd.isna(m) else fmt.format(m) + ("" if pd.isna(s) else " ± " + std_fmt.format(s))
                for m, s in zip(table[mean], table[std])]

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
    intervals = interval(table["vs_low"], table["vs_high"], "{:+.4f}")
    out[f"vs {kind}"] = [d + i + ("" if pd.isna(lvl) or lvl == level else f" ({100 * lvl:.3g}%)") for d, i, lvl in
                         zip(difference, intervals, table["vs_interval_level"])]
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


