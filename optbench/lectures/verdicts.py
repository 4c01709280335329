"""The verdict: per prediction stats.compare's paired test, combined over the claim's predictions, in four words
that cannot be misread: supported, contradicted, not resolved (with the smallest difference this experiment
could have resolved) and not testable at this scale (with the reason). Each verdict carries its condition."""

import math

import numpy as np

# the verdicts; a prediction's outcome is one of the first three
SUPPORTED, CONTRADICTED, UNRESOLVED, UNTESTABLE = ("supported", "contradicted", "not resolved",
                                                   "not testable at this scale")


def judge(claim: dict, values: dict, level: float | None = None) -> dict:
    """Per group: mean and t-interval; per prediction: the paired comparison, its outcome and the smallest effect
    it could have resolved; the verdict.

    combine 'all': supported when every prediction is resolved as predicted, contradicted when any is resolved the
    other way. 'any' (Holm-corrected over the predictions): supported when one is resolved as predicted,
    contradicted when all are resolved the other way. Otherwise not resolved."""
    from optbench.results import stats

    level = stats.LEVEL if level is None else level
    groups = []
    for g, v in values.items():
        low, high, _ = stats.mean_interval(v, level)
        groups.append({"group": g, "n": int(v.notna().sum()), "mean": float(v.mean()) if v.notna().any() else np.nan,
                       "low": low, "high": high, "values": [None if math.isnan(x) else x for x in v.tolist()],
                       "seeds": [int(s) for s in v.index]})
    m = len(claim["predict"]) if claim["combine"] == "any" else 1
    rows = [{"a": a, "op": op, "b": b, **stats.compare(values[a], values[b], level, comparisons=m)}
            for a, op, b in claim["predict"]]
    pvalues = [r["p"] for r in rows]
    adjusted = stats.holm(pvalues) if claim["combine"] == "any" else np.asarray(pvalues, float)
    # each interval at the level its prediction is tested at, so it excludes 0 exactly when resolved
    alphas = stats.holm_alphas(pvalues, 1 - level) if claim["combine"] == "any" else np.full(len(rows), 1 - level)
    for (a, _, b), row, p, alpha in zip(claim["predict"], rows, adjusted, alphas):
        sign = 1 if row["op"] == ">" else -1
        resolved = bool(np.isfinite(p) and p <= 1 - level)
        row["p_adjusted"] = float(p)
        if np.isfinite(alpha) and "se" in row:
            row["low"], row["high"] = map(float, stats.t_interval(row["difference"], row["se"], row["df"], alpha))
            row["interval_level"] = float(1 - alpha)
        row["outcome"] = (UNRESOLVED if not resolved or row["difference"] == 0 else
                          SUPPORTED if sign * row["difference"] > 0 else CONTRADICTED)
        row["smallest_effect"] = smallest_effect(values[a], values[b], 1 - (1 - level) / m, row["paired"], row["test"])
    outcomes = [r["outcome"] for r in rows]
    # the rules above: 'any' swaps the quantifiers of 'all'
    to_support, to_contradict = (all, any) if claim["combine"] == "all" else (any, all)
    verdict = (SUPPORTED if to_support(o == SUPPORTED for o in outcomes) else
               CONTRADICTED if to_contradict(o == CONTRADICTED for o in outcomes) else UNRESOLVED)
    needed = [r["seeds_needed"] for r in rows if r["outcome"] == UNRESOLVED]
    return {"groups": groups, "comparisons": rows, "verdict": verdict, "level": level,
            "seeds_needed": max(needed) if needed else None}


def smallest_effect(a, b, level: float, paired: bool, test: str = "") -> float:
    """The smallest difference of means this experiment could have resolved: the half-width of the t-interval
    of the difference at `level`, from the experiment's own spread and seed count.

    Paired (the same seeds on both sides): d_i = a_i - b_i over the n shared seeds,
        smallest = t_{(1+level)/2, n-1} * sd(d) / sqrt(n),  sd with n - 1 in the denominator.
    Unpaired: smallest = t_{(1+level)/2, df} * sqrt(s_a^2/n_a + s_b^2/n_b), df by Welch-Satterthwaite.
    A true difference below it leaves 0 inside the interval. inf where nothing can be resolved: fewer than 2
    values a side, or a sign-flip test over n seeds whose smallest p, 2 / 2^n, is above 1 - level."""
    import pandas as pd
    from scipy import stats as scipy_stats

    a, b = pd.Series(a, dtype=float), pd.Series(b, dtype=float)
    q = (1 + level) / 2
    if paired:
        d = (a - b).dropna()  # aligned on the seed
        n = len(d)
        if n < 2 or test == "sign-flip" and 2 / 2 ** n > 1 - level:
            return math.inf
        return float(scipy_stats.t.ppf(q, n - 1) * d.std(ddof=1) / math.sqrt(n))
    a, b = a.dropna(), b.dropna()
    if min(len(a), len(b)) < 2:
        return math.inf
    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    if va + vb == 0:
        return 0.0
    df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    return float(scipy_stats.t.ppf(q, df) * math.sqrt(va + vb))


def verdict_text(result: dict) -> str:
    """'supported', 'contradicted', 'not resolved (it could resolve differences beyond 0.0148 at 6 seeds)' or
    'not testable at this scale: <why>'."""
    if result["verdict"] == UNTESTABLE:
        return f"{UNTESTABLE}: {result.get('reason', '')}".rstrip(": ")
    if result["verdict"] != UNRESOLVED:
        return result["verdict"]
    rows = [r for r in result["comparisons"] if r["outcome"] == UNRESOLVED]
    seeds = max((r["seeds"] or min(r["n_a"], r["n_b"]) for r in rows), default=0)
    smallest = [r.get("smallest_effect", math.nan) for r in rows]
    if not smallest or not all(np.isfinite(s) for s in smallest):
        return f"{UNRESOLVED} (at {seeds} seeds this test cannot resolve any difference)"
    beyond = " and ".join(number(s) for s in smallest)
    return f"{UNRESOLVED} (at {seeds} seeds it could resolve differences beyond {beyond})"


def comparison_text(row: dict, label: str) -> str:
    """'momentum > sgd (label): difference +0.0123 [+0.0100, +0.0150], paired t p = 0.0021 (sign-flip 0.031)
    over 6 paired seeds: supported'."""
    if row["test"] == "none":
        return f"{row['a']} {row['op']} {row['b']}: too few runs to compare"
    over = f"{row['seeds']} paired seeds" if row["paired"] else f"{row['n_a']} vs {row['n_b']} runs"
    smallest = row.get("smallest_effect")
    return (f"{row['a']} {row['op']} {row['b']} ({label}): difference {number(row['difference'], True)} "
            f"[{number(row['low'], True)}, {number(row['high'], True)}], {row['test']} p = {row['p']:.2g}"
            + (f" (Holm {row['p_adjusted']:.2g})" if row["p_adjusted"] != row["p"] else "")
            + (f" (sign-flip {row['p_sign_flip']:.2g})" if row["paired"] and "p_sign_flip" in row else "")
            + f" over {over}: {row['outcome']}"
            + (f" (smallest resolvable difference {number(smallest)})" if row["outcome"] == UNRESOLVED
               and smallest is not None and np.isfinite(smallest) else ""))


def number(x, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    return f"{x:+.4g}" if signed else f"{x:.4g}"
