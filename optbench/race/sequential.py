"""Seeds in rounds until every comparison with the best is resolved, with an error rate that stays honest
although the verdict is looked at after every round.

The procedure (declared before the first seed runs):
  looks     seed counts n_1 < n_2 < ... < n_K = the cap (`looks`): the first round, then `step` more per
            round. Every optimizer's chosen configuration runs the same seeds, so comparisons are paired.
  spending  Lan-DeMets' O'Brien-Fleming-type spending function alpha(t) = 2 - 2 Phi(z_{1-alpha/2} / sqrt(t)),
            t = n_k / n_K the share of the cap's seeds seen. Look k may spend alpha(t_k) - alpha(t_{k-1}).
  test      at look k every pair of optimizers is compared by the paired t-test (results.stats), Holm-corrected
            over all k(k-1)/2 pairs at look k's level; the verdicts reported are the leader's comparisons.
  stop      when every comparison with the leader is resolved, or at the cap. A comparison resolved at a look
            stays resolved (its claim was made at a level already paid for).

Why this, and not the exact group-sequential boundaries: the exact O'Brien-Fleming boundaries come from the
joint normal law of the z-statistics across looks; with 3-10 seeds the statistics are Student t with few
degrees of freedom and that recursion no longer holds. Spending the increments as separate levels is a union
bound over the looks (Bonferroni): P(any false claim) <= sum of the increments = alpha(1) = alpha, exact t or
not, only conservative. The O'Brien-Fleming shape spends almost nothing at the early looks (0.0003 of 0.05 at
3 of 10 seeds), so the last look tests at nearly the full alpha: little is lost against one fixed-size study,
while a large difference still stops early. Holm over all pairs, not only the leader's: the leader is chosen by
the same data, and under no difference its comparisons are the largest ones; correcting over the leader's k - 1
would let the range of k means through more often than alpha (tests/test_race.py measures both).
"""

from itertools import combinations

import numpy as np

from optbench.results import stats

ALPHA = 0.05


def spending(t, alpha: float = ALPHA):
    """Lan-DeMets O'Brien-Fleming-type alpha spent by information fraction t (0 at t=0, alpha at t=1)."""
    from scipy.stats import norm

    t = np.asarray(t, float)
    with np.errstate(divide="ignore"):
        return np.where(t > 0, 2 - 2 * norm.cdf(norm.ppf(1 - alpha / 2) / np.sqrt(np.maximum(t, 1e-300))), 0.0)


def looks(first: int, step: int, cap: int) -> list[int]:
    """Seed counts at which the verdict is looked at: first, first + step, ..., and the cap."""
    if first < 2 or step < 1 or cap < first:
        raise ValueError(f"looks need first >= 2 (a t-test's fewest), step >= 1 and cap >= first; "
                         f"got {first}, {step}, {cap}")
    return sorted({*range(first, cap, step), cap})


def look_levels(counts: list[int], alpha: float = ALPHA) -> np.ndarray:
    """The alpha each look tests at: the increments of `spending` at n_k / n_K (they sum to alpha)."""
    cumulative = spending(np.asarray(counts, float) / counts[-1], alpha)
    return np.diff(np.concatenate([[0.0], cumulative]))


def decide(values: np.ndarray, level: float) -> dict:
    """One look: `values` [optimizers, seeds] (paired by column). The leader (highest mean) against each other
    optimizer: difference, p, Holm's p over all pairs, resolved at `level`, and the interval at the level
    Holm tested that pair at (it excludes 0 exactly when resolved)."""
    values = np.asarray(values, float)
    leader = int(np.argmax(values.mean(1)))
    pairs = list(combinations(range(len(values)), 2))
    d = np.stack([values[i] - values[j] for i, j in pairs])
    estimate, se, df = stats.paired_t(d)
    p = stats.t_p(estimate, se, df)
    holm_p, holm_alpha = stats.holm(p), stats.holm_alphas(p, level)
    rows = []
    for index, (i, j) in enumerate(pairs):
        if leader not in (i, j):
            continue
        sign = 1.0 if i == leader else -1.0  # leader minus other
        low, high = stats.t_interval(estimate[index], se[index], df[index], holm_alpha[index])
        low, high = sorted((sign * low, sign * high))
        rows.append({"other": j if i == leader else i, "difference": float(sign * estimate[index]),
                     "p": float(p[index]), "p_holm": float(holm_p[index]), "alpha": float(holm_alpha[index]),
                     "resolved": bool(holm_p[index] <= level), "low": float(low), "high": float(high)})
    return {"leader": leader, "comparisons": rows}


def run(draw, counts: list[int], alpha: float = ALPHA, levels=None) -> dict:
    """The whole procedure on `draw(n)` -> values [optimizers, n] (the first n seeds; a later call extends an
    earlier one). Returns the looks made, the last look's decision, whether it stopped resolved, and the
    comparisons ever resolved ({(leader, other)})."""
    levels = look_levels(counts, alpha) if levels is None else np.asarray(levels, float)
    resolved, history = set(), []
    for n, level in zip(counts, levels):
        decision = decide(draw(n), level)
        resolved |= {(decision["leader"], c["other"]) for c in decision["comparisons"] if c["resolved"]}
        history.append({"seeds": n, "level": float(level), **decision})
        if all((decision["leader"], c["other"]) in resolved for c in decision["comparisons"]):
            return {"looks": history, "stopped_resolved": True, "resolved": resolved}
    return {"looks": history, "stopped_resolved": False, "resolved": resolved}


def hidden_difference(comparison: dict) -> float:
    """The largest difference an unresolved comparison could still hide: the far end of its interval."""
    return float(max(abs(comparison["low"]), abs(comparison["high"])))
