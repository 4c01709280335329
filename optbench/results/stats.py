"""How sure a comparison of groups over seeds is: t-intervals and t-tests, a sign-flip check, what a verdict needs.

Runs with the same seed share their initialisation and data order across groups, so two groups that share at least two
seeds are compared by their per-seed differences: the paired t-test and its t-interval. Groups that share fewer are
compared unpaired: Welch's t-test and its interval (Welch-Satterthwaite degrees of freedom). Interval and test are one
calculation (estimate, standard error, degrees of freedom), so the interval at level 1 - alpha excludes 0 exactly when
p < alpha: the page cannot print an interval clear of zero beside "not resolved".

Why not the bootstrap: a bootstrap interval over n seeds cannot reach past their range, so it covers a symmetric
distribution's mean at most 1 - 2/2^n of the time (50%, 75%, 87.5% at 2, 3, 4 seeds), whatever its label. A t-interval
holds its label at every n >= 2 when the per-seed values are roughly normal (bench/stats_reference.py measures both).
The exact sign-flip test is reported beside the paired t-test as a check that assumes no normality; it cannot go below
2/2^n, so it cannot decide at the seed counts people use.
"""

from typing import Any

import numpy as np

LEVEL = 0.95  # confidence level of the intervals; 1 - LEVEL is the tests' alpha
RESAMPLES = 9999  # random sign flips (2**13 = 8192 < 9999: up to 13 seeds, all flips)
POWER = 0.8  # the chance a study with the estimated number of seeds resolves the difference
MAX_SEEDS = 1000  # seeds_needed answers "more than this" beyond
MARGIN = 0.005  # equivalence margin of the ranking (half a point of accuracy): "equivalent within +-0.005"
POWER_SETS = 20000  # simulated studies per seed count for Welch's power: its standard error is 0.003 at 80%
SIMULATE_UP_TO = 10  # Welch's power is simulated below this many seeds per group, from the noncentral t above
SEED = 0


def paired_t(differences, axis=-1):
    """(mean, standard error, degrees of freedom) of per-seed differences, along `axis` (arrays of data sets too)."""
    d = np.asarray(differences, float)
    n = d.shape[axis]
    return d.mean(axis), d.std(axis, ddof=1) / np.sqrt(n), np.full(d.mean(axis).shape, n - 1.0)


def welch_t(a, b, axis=-1):
    """(mean difference a - b, standard error, Welch-Satterthwaite degrees of freedom), along `axis`."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n_a, n_b = a.shape[axis], b.shape[axis]
    v_a, v_b = a.var(axis, ddof=1) / n_a, b.var(axis, ddof=1) / n_b
    with np.errstate(invalid="ignore", divide="ignore"):
        df = _welch_df(v_a, v_b, n_a, n_b)
    # no spread in either group: df is 0/0 and irrelevant (the standard error is 0); keep it finite
    return a.mean(axis) - b.mean(axis), np.sqrt(v_a + v_b), np.where(np.isfinite(df), df, n_a + n_b - 2.0)


def _welch_df(v_a, v_b, n_a, n_b):
    """Welch-Satterthwaite degrees of freedom from each group's squared standard error and size."""
    return (v_a + v_b) ** 2 / (v_a**2 / (n_a - 1) + v_b**2 / (n_b - 1))


def t_p(estimate, se, df):
    """Two-sided p-value of estimate / se against Student's t with `df`. No spread (se 0): the estimate is
    what it is, p = 0 when it differs from 0, else 1."""
    from scipy import stats

    estimate, se = np.asarray(estimate, float), np.asarray(se, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = 2 * stats.t.sf(np.abs(estimate) / se, df)
    return np.where(se > 0, p, np.where(estimate != 0, 0.0, 1.0))


def t_interval(estimate, se, df, alpha):
    """(low, high): estimate -+ the t quantile 1 - alpha/2 times se; excludes 0 exactly when t_p < alpha."""
    from scipy import stats

    half = stats.t.ppf(1 - np.asarray(alpha, float) / 2, df) * np.asarray(se, float)
    return estimate - half, estimate + half


def mean_interval(values, level: float = LEVEL) -> tuple[float, float, str]:
    """(low, high, "t"): the t-interval of the mean of `values` (one per seed); NaN with fewer than two."""
    values = _finite(values)
    if len(values) < 2:
        return np.nan, np.nan, "none"
    estimate, se, df = paired_t(values)
    low, high = t_interval(estimate, se, df, 1 - level)
    return float(low), float(high), "t"


def sign_flip_p(differences) -> float:
    """Two-sided p-value of the paired permutation test: the share of sign flips of the per-seed
    differences whose mean is at least as far from 0 as the observed one (scipy enumerates them all
    when there are at most RESAMPLES). Never below 2 / 2**n."""
    from scipy import stats

    d = _finite(differences)
    if not d.any():
        return 1.0  # no seed differs: every flip gives the observed mean 0
    return float(stats.permutation_test((d,), np.mean, permutation_type="samples", vectorized=True,
                                        n_resamples=RESAMPLES, rng=np.random.default_rng(SEED)).pvalue)


def p_better(a, b, paired: bool) -> float:
    """P(A > B) (Bouthillier et al. 2021): over seeds when paired, over all pairs of runs when not;
    ties count half."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    wins = np.sign(a - b) if paired else np.sign(a[:, None] - b[None, :]).ravel()
    return float(np.mean((wins + 1) / 2))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values: the k-th smallest of m is multiplied by m - k + 1, kept
    monotone and capped at 1. NaN (comparisons not made) stay NaN and do not count in m."""
    p = np.asarray(pvalues, float)
    adjusted = np.full(p.shape, np.nan)
    made = np.flatnonzero(np.isfinite(p))
    running = 0.0
    for k, i in enumerate(made[np.argsort(p[made], kind="stable")]):
        running = max(running, (len(made) - k) * p[i])
        adjusted[i] = min(running, 1.0)
    return adjusted


def holm_alphas(pvalues, alpha: float) -> np.ndarray:
    """The alpha Holm's step-down tests each p-value at: alpha / (m - k + 1) for the k-th smallest of m, and
    for every p-value after the first step that fails, that step's. An interval at 1 - this level excludes 0
    exactly when Holm resolves the comparison. NaN stay NaN."""
    p = np.asarray(pvalues, float)
    out = np.full(p.shape, np.nan)
    made = np.flatnonzero(np.isfinite(p))
    stopped, step = False, alpha
    for k, i in enumerate(made[np.argsort(p[made], kind="stable")]):
        if not stopped:
            step = alpha / (len(made) - k)
            stopped = p[i] > step
        out[i] = step
    return out


def seeds_needed(difference: float, spread: float, alpha: float, paired: bool, power: float = POWER,
                 spread_b: float | None = None) -> float:
    """Seeds (per group) at which the deciding test resolves `difference` at `alpha` with probability `power`,
    were `difference` and the spreads the truth.

    Paired: the paired t-test on differences of standard deviation `spread`; its power comes from the noncentral t,
    exact for normal differences. Unpaired: Welch's test, groups of `spread` and `spread_b` with equal seeds each
    (_welch_power: simulated at few seeds, where its estimated df matters). At least 2, the fewest a t-test can use; inf
    when there is no difference to resolve or more than MAX_SEEDS are needed.
    """
    if not np.isfinite(difference) or difference == 0:
        return np.inf
    spread_b = spread if paired else (spread_b or 0.0)
    if spread == 0 and spread_b == 0:
        return 2.0  # no spread: two seeds show the difference exactly

    def powerful(n: int) -> bool:
        return (_t_power(n - 1, abs(difference) / spread * np.sqrt(n), alpha) if paired else
                _welch_power(n, abs(difference), spread, spread_b, alpha)) >= power

    # power grows with n: double until it suffices, then bisect
    low, high = 1, 2
    while not powerful(high):
        if high >= MAX_SEEDS:
            return np.inf
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if powerful(middle) else (middle, high)
    return float(high)


def _t_power(df: float, noncentral: float, alpha: float) -> float:
    """P(|T| > t_{1-alpha/2, df}) for T noncentral t: a two-sided t-test's power."""
    from scipy import stats

    critical = stats.t.ppf(1 - alpha / 2, df)
    with np.errstate(invalid="ignore"):
        upper, lower = stats.nct.sf(critical, df, noncentral), stats.nct.cdf(-critical, df, noncentral)
    # scipy's noncentral t returns NaN far in a tail (scipy #25106, #25470): a probability there is 0 or 1,
    # never a reason to skip the seed count
    upper = float(noncentral > critical) if np.isnan(upper) else upper
    return upper + (0.0 if np.isnan(lower) else lower)


def _welch_power(n: int, difference: float, spread_a: float, spread_b: float, alpha: float) -> float:
    """Welch's power with n seeds per group. From SIMULATE_UP_TO seeds on, the noncentral t at the true
    Welch-Satterthwaite df; below, where the df the test estimates from 2 to 10 values often falls far
    short of that, the share of POWER_SETS simulated normal studies it resolves, drawn from the sufficient
    statistics (the mean difference and each group's variance)."""
    v_a, v_b = spread_a**2 / n, spread_b**2 / n
    if n >= SIMULATE_UP_TO:
        return _t_power(_welch_df(v_a, v_b, n, n), difference / np.sqrt(v_a + v_b), alpha)
    rng = np.random.default_rng([SEED, n])
    mean = difference + np.sqrt(v_a + v_b) * rng.standard_normal(POWER_SETS)
    s_a = v_a * rng.chisquare(n - 1, POWER_SETS) / (n - 1)
    s_b = v_b * rng.chisquare(n - 1, POWER_SETS) / (n - 1)
    return float(np.mean(t_p(mean, np.sqrt(s_a + s_b), _welch_df(s_a, s_b, n, n)) <= alpha))


def compare(a, b, level: float = LEVEL, comparisons: int = 1) -> dict:
    """Group a against group b, each a mapping seed -> value (pandas Series or dict).

    Paired over their shared seeds when they share at least two (paired t-test, and the sign-flip p as a
    check), else unpaired over all their runs (Welch). `se` and `df` give the interval at any other level
    (results.comparisons draws it at Holm's). `comparisons` (the size of the family it is corrected within)
    sets the alpha of the seeds estimate to alpha / comparisons, the strictest step of Holm's correction.
    """
    import pandas as pd

    a, b = (pd.Series(x, dtype=float).dropna().groupby(level=0).mean() for x in (a, b))
    shared = a.index.intersection(b.index)
    paired = len(shared) >= 2
    out: dict[str, Any] = {"n_a": len(a), "n_b": len(b), "paired": paired, "seeds": len(shared) if paired else 0,
           "interval_level": level, "p_sign_flip": np.nan}
    alpha = (1 - level) / max(comparisons, 1)
    if paired:
        d = (a[shared] - b[shared]).to_numpy()
        estimate, se, df = paired_t(d)
        out.update(test="paired t", p_sign_flip=sign_flip_p(d), p_a_better=p_better(a[shared], b[shared], True),
                   seeds_needed=seeds_needed(d.mean(), d.std(ddof=1), alpha, True))
    elif len(a) >= 2 and len(b) >= 2:
        x, y = a.to_numpy(), b.to_numpy()
        estimate, se, df = welch_t(x, y)
        out.update(test="Welch", p_a_better=p_better(x, y, False),
                   seeds_needed=seeds_needed(x.mean() - y.mean(), x.std(ddof=1), alpha, False, spread_b=y.std(ddof=1)))
    else:
        out.update(difference=float(a.mean() - b.mean()) if len(a) and len(b) else np.nan, low=np.nan, high=np.nan,
                   se=np.nan, df=np.nan, interval="none", test="none", p=np.nan, p_a_better=np.nan, seeds_needed=np.nan)
        return out
    low, high = t_interval(estimate, se, df, 1 - level)
    out.update(difference=float(estimate), se=float(se), df=float(df), low=float(low), high=float(high),
               interval="t", p=float(t_p(estimate, se, df)))
    return out


def iqm(values) -> float:
    """Interquartile mean (Agarwal et al. 2021): the mean of the middle half, a quarter cut from each end."""
    from scipy import stats

    values = _finite(values)
    return float(stats.trim_mean(values, 0.25)) if len(values) else np.nan


def expected_best(values, n) -> np.ndarray:
    """Dodge et al. 2019: expected best of n trials drawn (with replacement) from the observed ones.

    E[max_n] = sum_i v_(i) ((i/N)^n - ((i-1)/N)^n), the v_(i) sorted ascending;
    n = 1 gives the mean, growing n tends to the maximum. `n` may be an array.
    """
    v = np.sort(_finite(values))
    i, total, n = np.arange(1, len(v) + 1), len(v), np.asarray(n, float)[..., None]
    return ((i / total) ** n - ((i - 1) / total) ** n) @ v  # row per n: P(the best of n draws is the i-th smallest)


def _finite(values) -> np.ndarray:
    values = np.asarray(values, float)
    return values[np.isfinite(values)]
