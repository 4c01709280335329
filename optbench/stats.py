"""How sure a comparison of groups over seeds is: intervals, tests, and what a verdict would need.

Runs with the same seed share their initialisation and data order across
groups, so two groups that share seeds are compared by their per-seed
differences: a bootstrap interval of the mean difference and a sign-flip
permutation test (exact: every sign flip is enumerated up to 13 seeds).
Groups that share fewer than two seeds are compared unpaired: a two-sample
bootstrap interval and Welch's t-test. scipy.stats does the resampling and the
tests; what it does not do (Holm's correction, P(A > B), the seeds a verdict
would need, Dodge et al.'s expected best of n trials) is written out here.

Resampling is seeded, so the same runs always give the same report.
"""

import warnings

import numpy as np

LEVEL = 0.95  # confidence level of the intervals; 1 - LEVEL is the tests' alpha
RESAMPLES = 9999  # bootstrap resamples and random sign flips (2**13 = 8192 < 9999: up to 13 seeds, all flips)
POWER = 0.8  # the chance a study with the estimated number of seeds resolves the difference
MAX_SEEDS = 1000  # seeds_needed answers "more than this" beyond
SEED = 0


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)


def _mean_difference(x, y, axis=-1):
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def bootstrap_interval(samples: tuple, statistic, level: float = LEVEL) -> tuple[float, float, str]:
    """(low, high, method): scipy's BCa bootstrap interval, or the percentile one where BCa is not defined.

    BCa needs the jackknife to vary and the bootstrap distribution to lie on
    both sides of the estimate; with a few seeds or equal values it often does
    not (scipy then returns NaN), and the percentile interval still does.
    """
    from scipy import stats

    for method in ("BCa", "percentile"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DegenerateDataWarning: we fall back instead
            ci = stats.bootstrap(samples, statistic, n_resamples=RESAMPLES, vectorized=True, confidence_level=level,
                                 method=method, rng=np.random.default_rng(SEED)).confidence_interval
        if np.isfinite(ci.low) and np.isfinite(ci.high):
            return float(ci.low), float(ci.high), method
    return np.nan, np.nan, "none"


def mean_interval(values, level: float = LEVEL) -> tuple[float, float, str]:
    """Bootstrap interval of the mean of `values` (one per seed); NaN with fewer than two."""
    values = _finite(values)
    if len(values) < 2:
        return np.nan, np.nan, "none"
    return bootstrap_interval((values,), _mean, level)


def sign_flip_p(differences) -> float:
    """Two-sided p-value of the paired permutation test: the share of sign flips of the per-seed
    differences whose mean is at least as far from 0 as the observed one (scipy enumerates them all
    when there are at most RESAMPLES)."""
    from scipy import stats

    d = _finite(differences)
    if not d.any():
        return 1.0  # no seed differs: every flip gives the observed mean 0
    return float(stats.permutation_test((d,), _mean, permutation_type="samples", vectorized=True,
                                        n_resamples=RESAMPLES, rng=np.random.default_rng(SEED)).pvalue)


def welch_p(a, b) -> float:
    from scipy import stats

    a, b = _finite(a), _finite(b)
    if a.std() == 0 and b.std() == 0:
        return 1.0 if a.mean() == b.mean() else 0.0  # scipy gives NaN: no spread, the means are what they are
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def p_better(a, b, paired: bool) -> float:
    """P(A > B) (Bouthillier et al. 2021): over seeds when paired, over all pairs of runs when not;
    ties count half."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if paired:
        wins = np.sign(a - b)
    else:
        wins = np.sign(a[:, None] - b[None, :]).ravel()
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


def seeds_needed(difference: float, spread: float, alpha: float, paired: bool, power: float = POWER,
                 spread_b: float | None = None) -> float:
    """Seeds (per group) a study needs to resolve `difference` at `alpha` with probability `power`.

    The power of a two-sided t-test at that effect size, from the noncentral t:
    paired, the differences' standard deviation is `spread` and df = n - 1;
    unpaired, the groups' are `spread` and `spread_b`, df = 2n - 2 (equal
    seeds per group). A paired verdict also needs enough seeds for the
    sign-flip test to reach alpha at all: its smallest p-value is 2 / 2**n.
    Returns inf when there is no difference to resolve or more than MAX_SEEDS are needed.
    """
    from scipy import stats

    if not np.isfinite(difference) or difference == 0:
        return np.inf
    floor = int(np.ceil(np.log2(2 / alpha))) if paired else 2
    spread_b = spread if paired else (spread_b or 0.0)
    if spread == 0 and spread_b == 0:
        return float(floor)  # no spread: the smallest study that can reach alpha

    def powerful(n: int) -> bool:
        df, scale = (n - 1, spread / np.sqrt(n)) if paired else (2 * n - 2, np.sqrt((spread**2 + spread_b**2) / n))
        critical = stats.t.ppf(1 - alpha / 2, df)
        noncentral = abs(difference) / scale
        return stats.nct.sf(critical, df, noncentral) + stats.nct.cdf(-critical, df, noncentral) >= power

    # power grows with n: double until it suffices, then bisect
    low, high = 1, 2
    while not powerful(high):
        if high >= MAX_SEEDS:
            return np.inf
        low, high = high, min(2 * high, MAX_SEEDS)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if powerful(middle) else (middle, high)
    return float(max(high, floor))


def compare(a, b, level: float = LEVEL, comparisons: int = 1) -> dict:
    """Group a against group b, each a mapping seed -> value (pandas Series or dict).

    Paired over their shared seeds when they share at least two, else
    unpaired over all their runs. `comparisons` (the size of the family it is
    corrected within) sets the alpha of the seeds estimate to alpha / comparisons,
    the strictest step of Holm's correction.
    """
    import pandas as pd

    a, b = (pd.Series(x, dtype=float).dropna().groupby(level=0).mean() for x in (a, b))
    shared = a.index.intersection(b.index)
    paired = len(shared) >= 2
    out = {"n_a": len(a), "n_b": len(b), "paired": paired, "seeds": len(shared) if paired else 0}
    alpha = (1 - level) / max(comparisons, 1)
    if paired:
        d = (a[shared] - b[shared]).to_numpy()
        low, high, method = bootstrap_interval((d,), _mean, level)
        out.update(difference=float(d.mean()), low=low, high=high, interval=method, test="sign-flip",
                   p=sign_flip_p(d), p_a_better=p_better(a[shared], b[shared], True),
                   seeds_needed=seeds_needed(d.mean(), d.std(ddof=1), alpha, True))
    elif len(a) >= 2 and len(b) >= 2:
        x, y = a.to_numpy(), b.to_numpy()
        low, high, method = bootstrap_interval((x, y), _mean_difference, level)
        out.update(difference=float(x.mean() - y.mean()), low=low, high=high, interval=method, test="Welch",
                   p=welch_p(x, y), p_a_better=p_better(x, y, False),
                   seeds_needed=seeds_needed(x.mean() - y.mean(), x.std(ddof=1), alpha, False, spread_b=y.std(ddof=1)))
    else:
        out.update(difference=float(a.mean() - b.mean()) if len(a) and len(b) else np.nan, low=np.nan, high=np.nan,
                   interval="none", test="none", p=np.nan, p_a_better=np.nan, seeds_needed=np.nan)
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
    return _weights(len(v), n) @ v


def _weights(total: int, n) -> np.ndarray:
    """P(the best of n draws is the i-th smallest of `total`), one row per n."""
    i = np.arange(1, total + 1)
    n = np.asarray(n, float)[..., None]
    return (i / total) ** n - ((i - 1) / total) ** n


def _finite(values) -> np.ndarray:
    values = np.asarray(values, float)
    return values[np.isfinite(values)]
