"""The statistics against their labels: interval coverage, false resolutions and seeds-needed advice, measured.

    python bench/stats_reference.py                    # this checkout's optbench/stats.py
    python bench/stats_reference.py --rev facf4e0      # stats.py as it was at a commit (the "before" of issue #26)
    python bench/stats_reference.py --sets 2000        # more simulated data sets per seed count (slower)
    python bench/stats_reference.py --sweep DIR        # also the ranking and verdict lines of a sweep (this checkout)

Coverage: per seed count, `--sets` normal data sets (true mean 0); the share whose group interval
(`stats.mean_interval`) contains 0, and, taking each data set as paired per-seed differences with no true
difference, how often `stats.compare` resolves it (p <= alpha) and how often its interval excludes 0 while
its test leaves it unresolved. Seeds needed: `stats.seeds_needed` on a grid of effects (difference / spread,
spread 1, alpha 0.05 and 0.05 / 3, power 0.8) against statsmodels' power calculation for the t-test (ceil of
`solve_power`, nan where it does not converge) and the power that the deciding test reaches at the
returned count and one seed fewer, by simulation (`--power-sets` data sets).
"""

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (2, 3, 5, 10, 20)
EFFECTS = (0.2, 0.5, 1.0, 2.0, 3.0, 4.75, 8.25)  # 3, 4.75 and 8.25 hit scipy's NaN tail at some seed counts
ALPHAS = (0.05, 0.05 / 3)  # one comparison; the strictest Holm step of three


def load_stats(rev: str | None):
    """optbench.results.stats from this checkout, or its text at git revision `rev`."""
    if rev is None:
        from optbench.results import stats

        return stats
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:optbench/stats.py"], check=True,
                            capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader(f"stats_{rev}", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(source, f"{rev}:optbench/stats.py", "exec"), module.__dict__)
    return module


def coverage_table(stats, sets: int) -> None:
    rng = np.random.default_rng(26)
    alpha = 1 - stats.LEVEL
    print("| seeds | label | group interval covers the mean | paired, no difference: resolved | "
          "interval excludes 0 but not resolved | seconds |")
    print("|---|---|---|---|---|---|")
    for n in SIZES:
        start = time.perf_counter()
        covered = resolved = contradictions = 0
        for _ in range(sets):
            d = rng.standard_normal(n)
            low, high = stats.mean_interval(d)[:2]
            covered += low <= 0 <= high
            row = stats.compare(dict(enumerate(d)), dict.fromkeys(range(n), 0.0))
            resolved += row["p"] <= alpha
            contradictions += (not (row["low"] <= 0 <= row["high"])) and row["p"] > alpha
        print(f"| {n} | {100 * stats.LEVEL:g}% | {covered / sets:.1%} | {resolved / sets:.1%} | "
              f"{contradictions / sets:.1%} | {time.perf_counter() - start:.0f} |", flush=True)


def t_p(samples):
    """Two-sided one-sample t-test p-values of each row (the paired t-test on per-seed differences)."""
    from scipy import stats as sps

    return sps.ttest_1samp(samples, 0.0, axis=1).pvalue


def welch_p(x, y):
    from scipy import stats as sps

    return sps.ttest_ind(x, y, axis=1, equal_var=False).pvalue


def sign_flip_p(samples, rng):
    """Two-sided sign-flip p of each row: every flip enumerated up to 13 seeds, else 9999 random flips."""
    n = samples.shape[1]
    if n <= 13:
        flips = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
    else:
        flips = np.vstack([np.ones(n), rng.choice([-1.0, 1.0], size=(9999, n))])
    means = np.abs(samples @ flips.T) / n
    return np.mean(means >= np.abs(samples.mean(axis=1))[:, None] - 1e-12, axis=1)


def simulated_power(n, effect, paired: bool, test: str, sets: int, alpha: float) -> float:
    if not np.isfinite(n) or n < 2:
        return np.nan
    rng = np.random.default_rng(int(100 * effect) + int(n))
    n = int(n)
    if paired:
        d = effect + rng.standard_normal((sets, n))
        p = sign_flip_p(d, rng) if test == "sign-flip" else t_p(d)
    else:
        p = welch_p(effect + rng.standard_normal((sets, n)), rng.standard_normal((sets, n)))
    return float(np.mean(p <= alpha))


def statsmodels_n(effect, paired: bool, alpha: float) -> float:
    import warnings

    from statsmodels.stats.power import TTestIndPower, TTestPower

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            n = (TTestPower() if paired else TTestIndPower()).solve_power(effect_size=effect, alpha=alpha, power=0.8)
        except Exception:  # noqa: BLE001 - statsmodels' root finder gives up on huge effects
            return np.nan
    return float(np.ceil(n)) if np.isfinite(n) else np.nan


def seeds_table(stats, power_sets: int, deciding_paired: str) -> None:
    print(f"| effect (difference / spread) | design | alpha | seeds_needed | statsmodels t-test | "
          f"power at that n ({deciding_paired} paired, Welch unpaired) | power at n - 1 |")
    print("|---|---|---|---|---|---|---|")
    for paired in (True, False):
        for alpha in ALPHAS:
            for effect in EFFECTS:
                n = stats.seeds_needed(effect, 1.0, alpha, paired, spread_b=None if paired else 1.0)
                test = deciding_paired if paired else "Welch"
                power = simulated_power(n, effect, paired, test, power_sets, alpha)
                fewer = simulated_power(n - 1, effect, paired, test, power_sets, alpha)
                print(f"| {effect:g} | {'paired' if paired else 'unpaired'} | {alpha:.3g} | {n:.0f} | "
                      f"{statsmodels_n(effect, paired, alpha):.0f} | {power:.3f} | {fewer:.3f} |", flush=True)


def issue_example(stats) -> None:
    """Issue #26's sgd/adam case: 3 paired seeds, sgd 0.0886 below adam, spread such that a paired t-test
    gives p = 0.016."""
    from scipy import stats as sps

    spread = 0.0886 / sps.t.isf(0.008, 2) * np.sqrt(3)
    adam = {0: 0.9712, 1: 0.9695, 2: 0.9730}
    sgd = {s: v - 0.0886 + spread * k for (s, v), k in zip(adam.items(), (-1, 0, 1))}
    row = stats.compare(sgd, adam)
    print(f"sgd - adam over 3 paired seeds: {row['difference']:+.4f} [{row['low']:+.4f}, {row['high']:+.4f}] "
          f"({row['interval']}), {row['test']} p = {row['p']:.2g}, seeds_needed {row['seeds_needed']:.0f}")


def sweep_report(directory: str) -> None:
    from optbench import results

    runs = results.load_runs(directory)
    table = results.rank(runs, results.load_metrics(runs), target=0.5)
    print(results.format_ranking(table).to_string(index=False))
    print("\n".join(results.verdict_lines(table)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rev", help="git revision whose optbench/stats.py to measure (default: this checkout)")
    parser.add_argument("--sets", type=int, default=1000, help="simulated data sets per seed count")
    parser.add_argument("--power-sets", type=int, default=4000, help="simulated data sets per power estimate")
    parser.add_argument("--sweep", help="also print the ranking and verdicts of this sweep folder (this checkout)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    stats = load_stats(args.rev)
    print(f"## optbench/stats.py at {args.rev or 'this checkout'}\n")
    coverage_table(stats, args.sets)
    print()
    # the test that decides a paired verdict: the sign-flip test before issue #26, the paired t-test after
    deciding = "sign-flip" if "sign-flip" in stats.compare({0: 1.0, 1: 2.0, 2: 3.0}, {0: 0.0, 1: 0.0, 2: 0.0})["test"] \
        else "t"
    seeds_table(stats, args.power_sets, deciding)
    print()
    issue_example(stats)
    if args.sweep:
        print()
        sweep_report(args.sweep)


if __name__ == "__main__":
    main()
