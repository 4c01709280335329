"""How forgiving each optimizer is: the width of its good region and the trials it takes to land in it.

good region    the trials whose score is within `epsilon` of the optimizer's best trial.
  width        the span of their learning rates in decades, log10(max lr) - log10(min lr) over the good
               trials (a span: a bad trial between two good ones does not shorten it; 0 with one good trial).
  share        the share of the trials in it; the trials are quasi-random draws over the whole space, so
               this estimates the share of the space's volume that is good (every knob, not only the rate).
trials to eps  the smallest n at which the expected best of n trials (results.stats.expected_best: Dodge et al.
               2019, n drawn from the observed ones) reaches best - epsilon: HeavyBall's "trials to success"
               read from the expected-best curve instead of from one ordering of the trials.
"""

import numpy as np

from optbench.results import stats

EPSILON = 0.005  # half a point of accuracy: the ranking's equivalence margin (results.stats.MARGIN)
MAX_TRIALS = 10_000  # trials_to_epsilon answers "more than this" beyond


def good(scores, epsilon: float = EPSILON) -> np.ndarray:
    """Mask of the trials within epsilon of the best (NaN scores, diverged trials, are never good)."""
    s = np.asarray(scores, float)
    best = np.nanmax(s)
    with np.errstate(invalid="ignore"):
        return s >= best - epsilon


def width_decades(lrs, scores, epsilon: float = EPSILON) -> float:
    """Decades of learning rate spanned by the good trials."""
    lr = np.asarray(lrs, float)[good(scores, epsilon)]
    return float(np.log10(lr.max()) - np.log10(lr.min()))


def share(scores, epsilon: float = EPSILON) -> float:
    """Share of the trials (diverged ones count, as failures) within epsilon of the best."""
    return float(np.mean(good(scores, epsilon)))


def trials_to_epsilon(scores, epsilon: float = EPSILON) -> float:
    """Smallest n with expected_best(finite scores, n) >= best - epsilon; inf beyond MAX_TRIALS.

    A diverged trial (NaN) counts as the worst score, so an optimizer that often diverges needs more trials."""
    s = np.asarray(scores, float)
    finite = s[np.isfinite(s)]
    if not len(finite):
        return np.inf
    s = np.where(np.isfinite(s), s, finite.min() - 1.0)
    target = s.max() - epsilon
    # expected_best grows with n: double until it suffices, then bisect
    low, high = 0, 1
    while stats.expected_best(s, high) < target - 1e-12:
        if high >= MAX_TRIALS:
            return np.inf
        low, high = high, min(2 * high, MAX_TRIALS)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if stats.expected_best(s, middle) >= target - 1e-12 else (middle, high)
    return float(high)


def table(trials: dict, lr_key: str = "optimizer.lr", epsilon: float = EPSILON):
    """One row per optimizer from {optimizer: DataFrame of its trials (lr_key, score)}: best, width in decades,
    share within epsilon, trials to epsilon, and the lr range of the good region."""
    import pandas as pd

    rows = []
    for name, frame in trials.items():
        scores = frame["score"].to_numpy(float)
        lrs = frame[lr_key].to_numpy(float)
        mask = good(scores, epsilon)
        rows.append({"optimizer": name, "trials": len(frame), "best": float(np.nanmax(scores)),
                     "good_trials": int(mask.sum()), "width_decades": width_decades(lrs, scores, epsilon),
                     "share_within_eps": share(scores, epsilon), "trials_to_eps": trials_to_epsilon(scores, epsilon),
                     "good_lr_low": float(lrs[mask].min()), "good_lr_high": float(lrs[mask].max())})
    return pd.DataFrame(rows)
