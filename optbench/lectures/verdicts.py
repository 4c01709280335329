"""The verdict: per prediction stats.compare's paired test, combined over the claim's predictions."""

import math

import numpy as np

# outcome of one prediction, and what the claim's verdict reads
SUPPORTED, OPPOSITE, UNRESOLVED = "supported", "not supported", "not resolved"


def judge(claim: dict, values: dict, level: float | None = None) -> dict:
    """Per group: mean and bootstrap interval; per prediction: the paired comparison and its outcome; the verdict.

    combine 'all': supported when every prediction is resolved as predicted, not supported when any is
    resolved the other way. 'any' (Holm-corrected over the predictions): supported when one is resolved as
    predicted, not supported when all are resolved the other way. Otherwise not resolved at this many seeds.
    """
    from optbench import stats

    level = stats.LEVEL if level is None else level
    groups = []
    for g, v in values.items():
        low, high, _ = stats.mean_interval(v, level)
        groups.append({"group": g, "n": int(v.notna().sum()), "mean": float(v.mean()) if v.notna().any() else np.nan,
                       "low": low, "high": high, "values": [None if math.isnan(x) else x for x in v.tolist()]})
    m = len(claim["predict"]) if claim["combine"] == "any" else 1
    rows = [{"a": a, "op": op, "b": b, **stats.compare(values[a], values[b], level, comparisons=m)}
            for a, op, b in claim["predict"]]
    pvalues = [r["p"] for r in rows]
    adjusted = stats.holm(pvalues) if claim["combine"] == "any" else np.asarray(pvalues, float)
    for row, p in zip(rows, adjusted):
        sign = 1 if row["op"] == ">" else -1
        resolved = bool(np.isfinite(p) and p <= 1 - level)
        row["p_adjusted"] = float(p)
        row["outcome"] = (UNRESOLVED if not resolved or row["difference"] == 0 else
                          SUPPORTED if sign * row["difference"] > 0 else OPPOSITE)
    outcomes = [r["outcome"] for r in rows]
    if claim["combine"] == "all":
        verdict = SUPPORTED if all(o == SUPPORTED for o in outcomes) else OPPOSITE if OPPOSITE in outcomes else UNRESOLVED
    else:
        verdict = SUPPORTED if SUPPORTED in outcomes else OPPOSITE if all(o == OPPOSITE for o in outcomes) else UNRESOLVED
    needed = [r["seeds_needed"] for r in rows if r["outcome"] == UNRESOLVED]
    return {"groups": groups, "comparisons": rows, "verdict": verdict, "level": level,
            "seeds_needed": max(needed) if needed else None}


def verdict_text(result: dict) -> str:
    """'supported', 'not supported', or 'not resolved at 6 seeds (~14 would resolve it)'."""
    if result["verdict"] != UNRESOLVED:
        return result["verdict"]
    seeds = max((r["seeds"] or min(r["n_a"], r["n_b"]) for r in result["comparisons"]), default=0)
    needed = result["seeds_needed"]
    if needed is None or not np.isfinite(needed):
        would = "no difference to resolve" if needed is not None and all(
            r["difference"] == 0 for r in result["comparisons"]) else "more than 1000 seeds would be needed"
    else:
        would = f"~{needed:.0f} would resolve it"
    return f"not resolved at {seeds} seeds ({would})"


def comparison_text(row: dict, label: str) -> str:
    """'momentum - sgd: +0.0123 [+0.0100, +0.0150], sign-flip p = 0.031 over 6 seeds: supported'."""
    if row["test"] == "none":
        return f"{row['a']} {row['op']} {row['b']}: too few runs to compare"
    over = f"{row['seeds']} paired seeds" if row["paired"] else f"{row['n_a']} vs {row['n_b']} runs"
    return (f"{row['a']} {row['op']} {row['b']} ({label}): difference {number(row['difference'], True)} "
            f"[{number(row['low'], True)}, {number(row['high'], True)}], {row['test']} p = {row['p']:.2g}"
            + (f" (Holm {row['p_adjusted']:.2g})" if row["p_adjusted"] != row["p"] else "")
            + f" over {over}: {row['outcome']}")


def number(x, signed: bool = False) -> str:
    if x is None or not np.isfinite(x):
        return "n/a"
    text = f"{x:+.4g}" if signed else f"{x:.4g}"
    return text

