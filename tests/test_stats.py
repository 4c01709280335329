"""How sure a ranking is: intervals, tests and estimators against hand-computed cases, scipy and simulation,
and the report on a real sweep, paired and unpaired."""

import itertools
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from conftest import optbench
from optbench import results, stats
from optbench.errors import UserError

# --- the paired test and interval, small enough to enumerate -------------------------------------------

# by hand, d = (0.5, -1, 2, 3): |mean| = 4.5 / 4. A sign flip of a subset S of the magnitudes {0.5, 1, 2, 3}
# gives sum 6.5 - 2 s(S); |6.5 - 2 s| >= 4.5 when s <= 1 ({}, {0.5}, {1}) or s >= 5.5 ({0.5, 2, 3}, {1, 2, 3},
# all): 6 of the 16 flips.
DIFFERENCES = [0.5, -1.0, 2.0, 3.0]
P_BY_HAND = 6 / 16


def test_sign_flip_p_is_the_share_of_the_16_flips():
    flips = [np.mean(np.array(signs) * DIFFERENCES) for signs in itertools.product((1, -1), repeat=4)]
    enumerated = np.mean(np.abs(flips) >= abs(np.mean(DIFFERENCES)) - 1e-12)
    assert enumerated == P_BY_HAND
    assert stats.sign_flip_p(DIFFERENCES) == pytest.approx(P_BY_HAND)
    direct = sps.permutation_test((np.array(DIFFERENCES),), np.mean, permutation_type="samples").pvalue
    assert stats.sign_flip_p(DIFFERENCES) == pytest.approx(direct)
    assert stats.sign_flip_p([0.0, 0.0, 0.0]) == 1.0
    # the comparison of two groups runs the same test on their per-seed differences
    b = {seed: 0.9 for seed in range(4)}
    a = {seed: 0.9 + d for seed, d in enumerate(DIFFERENCES)}
    out = stats.compare(a, b)
    assert out["paired"] and out["seeds"] == 4 and out["test"] == "sign-flip"
    assert out["p"] == pytest.approx(P_BY_HAND) and out["difference"] == pytest.approx(np.mean(DIFFERENCES))


def exact_bca(d, level=0.95):
    """BCa over the exact bootstrap distribution (all 4**4 resamples, equally likely), in scipy's conventions:
    z0 from the mid-rank of the estimate, a from the jackknife, linear quantiles."""
    d = np.asarray(d, float)
    means = np.sort(d[np.array(list(itertools.product(range(len(d)), repeat=len(d))))].mean(axis=1))
    z0 = sps.norm.ppf((np.sum(means < d.mean()) + np.sum(means <= d.mean())) / (2 * len(means)))
    jack = np.array([np.delete(d, i).mean() for i in range(len(d))])
    u = jack.mean() - jack
    a = (u**3).sum() / (6 * (u**2).sum() ** 1.5)
    z = sps.norm.ppf([(1 - level) / 2, (1 + level) / 2])
    return np.quantile(means, sps.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))), np.quantile(means, [0.025, 0.975])


def test_bootstrap_interval_matches_the_enumerated_bca_and_scipy():
    # skewed differences: BCa moves the interval right of the percentile one, (0, 3.75) -> (0.25, 4)
    d = [0.0, 0.0, 1.0, 5.0]
    bca, percentile = exact_bca(d)
    assert list(bca) == pytest.approx([0.25, 4.0]) and list(percentile) == pytest.approx([0.0, 3.75])
    low, high, method = stats.mean_interval(d)
    assert method == "BCa" and (low, high) == pytest.approx(tuple(bca))
    direct = sps.bootstrap((np.array(d),), np.mean, method="BCa", rng=np.random.default_rng(stats.SEED))
    assert (low, high) == (direct.confidence_interval.low, direct.confidence_interval.high)
    # the paired comparison's interval is that of the per-seed differences
    out = stats.compare({s: 1 + x for s, x in enumerate(d)}, {s: 1.0 for s in range(4)})
    assert (out["low"], out["high"]) == pytest.approx((0.25, 4.0))
    # the level reaches scipy: at 0.8 a narrower interval, scipy's own
    narrow = sps.bootstrap((np.array(d),), np.mean, method="BCa", confidence_level=0.8,
                           rng=np.random.default_rng(stats.SEED)).confidence_interval
    assert stats.mean_interval(d, 0.8)[:2] == (narrow.low, narrow.high) and narrow.high < high


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # scipy's BCa on equal values
def test_bca_undefined_falls_back_to_percentile():
    same = [0.01, 0.01, 0.01]
    with pytest.warns(sps.DegenerateDataWarning):
        assert np.isnan(sps.bootstrap((np.array(same),), np.mean, method="BCa").confidence_interval.low)
    assert stats.mean_interval(same) == (pytest.approx(0.01), pytest.approx(0.01), "percentile")
    assert np.isnan(stats.mean_interval([0.5])[0])  # one seed: no interval


def test_unpaired_uses_welch_and_a_two_sample_bootstrap():
    a, b = {0: 0.91, 1: 0.93, 2: 0.92}, {10: 0.95, 11: 0.97, 12: 0.96, 13: 0.955}
    out = stats.compare(a, b)
    assert not out["paired"] and out["test"] == "Welch"
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    assert out["p"] == pytest.approx(sps.ttest_ind(x, y, equal_var=False).pvalue)
    direct = sps.bootstrap((x, y), lambda x, y, axis: x.mean(axis) - y.mean(axis), method="BCa",
                           rng=np.random.default_rng(stats.SEED)).confidence_interval
    assert (out["low"], out["high"]) == (direct.low, direct.high)
    assert out["p_a_better"] == 0.0  # every run of a is below every run of b
    assert stats.compare({0: 0.9}, {1: 0.8})["test"] == "none"


def test_holm_and_p_better_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, 0.06, max(0.06, 0.04); the missing comparison does not count
    assert list(stats.holm([0.01, 0.04, 0.03, np.nan])[:3]) == pytest.approx([0.03, 0.06, 0.06])
    assert np.isnan(stats.holm([0.01, np.nan])[1]) and stats.holm([0.6, 0.7])[0] == 1.0
    assert stats.p_better([1, 2, 3], [0, 2, 4], paired=True) == 0.5  # win, tie (half), loss
    assert stats.p_better([1, 3], [2], paired=False) == 0.5


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([1, 2, 3, 4, 100, 5, 6, 7]) == pytest.approx(np.mean([3, 4, 5, 6]))


# --- verdicts over repetitions: tied as often as the level promises, a clear shift resolved ---------------

REPEATS = 300
SEEDS = 9  # 2**9 sign flips: p-values as small as 0.004, all flips enumerated even with RESAMPLES 999


@pytest.fixture
def fast(monkeypatch):
    """999 resamples instead of 9999: the verdict comes from the test, which stays exact; the intervals are
    only not shown."""
    monkeypatch.setattr(stats, "RESAMPLES", 999)


def _groups(rng, shift: float, paired: bool):
    """Two groups' values per seed: a seed effect shared by both when paired (same init and data order)."""
    seed_effect = rng.normal(0, 0.01, SEEDS)
    a = 0.97 + seed_effect + rng.normal(0, 0.002, SEEDS)
    b = 0.97 + (seed_effect if paired else rng.normal(0, 0.01, SEEDS)) + rng.normal(0, 0.002, SEEDS) - shift
    seeds_b = range(SEEDS) if paired else range(SEEDS, 2 * SEEDS)
    return {"a": pd.Series(a, index=range(SEEDS)), "b": pd.Series(b, index=seeds_b)}


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "welch"])
def test_same_distribution_is_tied_at_least_as_often_as_the_level(paired, fast):
    rng = np.random.default_rng(2024)
    tied = [not results.comparisons(_groups(rng, 0.0, paired), [("a", "b")]).resolved.iloc[0] for _ in range(REPEATS)]
    # at least LEVEL in expectation; three binomial standard errors of slack for this seeded sample
    slack = 3 * np.sqrt(stats.LEVEL * (1 - stats.LEVEL) / REPEATS)
    assert np.mean(tied) >= stats.LEVEL - slack, np.mean(tied)


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "welch"])
def test_a_clear_shift_is_resolved(paired, fast):
    rng = np.random.default_rng(7)
    for _ in range(20):
        row = results.comparisons(_groups(rng, 0.03, paired), [("a", "b")]).iloc[0]
        assert row.resolved and row.difference > 0 and row.test == ("sign-flip" if paired else "Welch")


def test_seeds_needed_matches_the_textbook_power_tables():
    # one-sample / paired t, two-sided alpha 0.05, power 0.8 (Cohen 1988; G*Power): d = 0.5 -> 34, 0.8 -> 15, 1 -> 10
    assert [stats.seeds_needed(d, 1.0, 0.05, paired=True) for d in (0.5, 0.8, 1.0)] == [34, 15, 10]
    assert stats.seeds_needed(0.5, 1.0, 0.05, paired=False, spread_b=1.0) == 64  # two-sample: 64 per group
    # a huge effect still needs the seeds a sign-flip test needs to reach alpha: 2 / 2**6 < 0.05 < 2 / 2**5
    assert stats.seeds_needed(1.0, 1e-6, 0.05, paired=True) == 6
    assert stats.seeds_needed(1.0, 1e-6, 0.01, paired=True) == 8
    assert stats.seeds_needed(0.0, 1.0, 0.05, paired=True) == np.inf


# --- Dodge et al.'s expected best of n -----------------------------------------------------------------

# by hand for the trials (0.9, 0.1, 0.5), sorted 0.1, 0.5, 0.9:
#   n = 1: weights 1/3 each -> the mean 0.5
#   n = 2: weights 1/9, 4/9 - 1/9, 1 - 4/9 -> (0.1 + 1.5 + 4.5) / 9
#   n = 3: weights 1/27, 8/27 - 1/27, 1 - 8/27 -> (0.1 + 3.5 + 17.1) / 27
EXPECTED = {1: 0.5, 2: 6.1 / 9, 3: 20.7 / 27}


def test_expected_best_of_n_against_the_hand_computed_table():
    trials = [0.9, 0.1, 0.5]
    assert list(stats.expected_best(trials, list(EXPECTED))) == pytest.approx(list(EXPECTED.values()))
    assert stats.expected_best(trials, 1) == pytest.approx(np.mean(trials))
    assert stats.expected_best(trials, 60) == pytest.approx(0.9, abs=1e-9)  # 0.9 - 0.4 (2/3)^60 - 0.4 (1/3)^60
    best = stats.expected_best(trials, np.arange(1, 30))
    assert np.all(np.diff(best) > 0) and best[-1] < 0.9
    assert stats.expected_best([0.7, np.nan, 0.7], 5) == pytest.approx(0.7)  # unfinished trials left out


def test_tuning_cost_table_stops_at_each_groups_trials():
    table = results.tuning_cost({"x": np.array([0.9, 0.1, 0.5]), "y": np.array([0.2, 0.4])})
    assert list(table.columns) == ["group", "trials", "n=1", "n=2", "n=3"]
    x, y = table.set_index("group").loc["x"], table.set_index("group").loc["y"]
    assert [x["n=1"], x["n=2"], x["n=3"]] == pytest.approx(list(EXPECTED.values()))
    assert y["n=2"] == pytest.approx(0.2 / 4 + 0.4 * 3 / 4) and np.isnan(y["n=3"])


# --- the report on a real sweep, paired and then unpaired --------------------------------------------------


@pytest.fixture(scope="module")
def sweep(mnist_root, tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("stats-sweep")
    # one learning rate for both: at 0.001 sgd barely moves in 30 steps (val acc ~0.15), adam reaches ~0.8
    out = optbench("train", "-m", f"data.root={mnist_root}", "optimizer=sgd,adam", "optimizer.lr=0.001", "seed=0,1,2",
                  "trainer.max_steps=30", "trainer.eval_every=30", "model.hidden=[32]", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return sweep_dir


def test_report_shows_intervals_and_verdicts_and_unpairing_changes_them(sweep, tmp_path):
    out = optbench("report", str(sweep), "--target", "0.5")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "95% CI" in out.stdout and "verdict" in out.stdout and "Holm" in out.stdout
    ranking = pd.read_csv(sweep / "ranking.csv")
    best, other = ranking.iloc[0], ranking.iloc[1]
    assert best["verdict"] == "best" and best["rank"] == 1
    for row in (best, other):
        assert row["best_val_acc_low"] <= row["best_val_acc"] <= row["best_val_acc_high"]
    # the seeds are shared: paired, and 3 seeds cannot resolve anything (smallest sign-flip p 2/2^3)
    assert other["vs_test"] == "sign-flip" and other["vs_seeds"] == 3 and other["vs_p"] >= 0.25
    assert other["verdict"] == "tied with best" and other["rank"] == 1
    assert "3 seeds no difference can be resolved" in out.stdout
    assert "| optimizer.name | rank |" in (sweep / "ranking.md").read_text()
    comparisons = pd.read_csv(sweep / "comparisons.csv")
    assert set(comparisons.family) == {"vs best", "top three"}

    # the same runs, but the worse optimizer's seeds relabelled so no seed is shared: Welch's test instead
    unpaired = tmp_path / "unpaired"
    shutil.copytree(sweep, unpaired)
    worse = other["optimizer.name"]
    for config in unpaired.glob(f"*optimizer={worse},*/config.yaml"):
        cfg = OmegaConf.load(config)
        cfg.seed = int(cfg.seed) + 100
        OmegaConf.save(cfg, config)
    runs = results.load_runs(unpaired)
    table = results.rank(runs, results.load_metrics(runs), target=0.5).set_index("optimizer.name")
    assert table.loc[worse, "vs_test"] == "Welch" and table.loc[worse, "vs_seeds"] == 0
    assert table.loc[worse, "best_val_acc"] == pytest.approx(other["best_val_acc"])  # same numbers, other pairing
    assert table.loc[worse, "verdict"] == "below best" and table.loc[worse, "rank"] == 2
    with pytest.raises(UserError, match="--baseline nope: no such group; groups: "):
        results.rank(runs, results.load_metrics(runs), target=0.5, baseline="nope")
    against = results.rank(runs, results.load_metrics(runs), target=0.5, baseline=worse).set_index("optimizer.name")
    assert against.loc[worse, "verdict"] == "baseline" and against.loc[best["optimizer.name"], "verdict"] == "above baseline"


def test_figures_and_page_show_the_comparisons(sweep):
    from matplotlib.colors import to_rgba

    from optbench import html_report, plots

    runs = results.load_runs(sweep)
    values = results.group_values(runs, ["optimizer.name"])
    reference, vs = results.against_reference(values)
    assert reference == "adam" and list(vs.a) == ["sgd"]
    ax = plots.forest(vs).axes[0]
    interval, point = ax.lines[:2]
    assert list(interval.get_xdata()) == pytest.approx([vs.low[0], vs.high[0]])
    assert point.get_xdata()[0] == pytest.approx(vs.difference[0]) and vs.difference[0] < 0
    assert to_rgba(point.get_markerfacecolor()) == to_rgba("white")  # open: tied (3 seeds cannot resolve)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["sgd"]

    # adam beats sgd on each of the 3 seeds: all of adam's mass at rank 1, sgd's at rank 2
    fig = plots.rank_over_seeds(values, ["optimizer.name"])
    assert fig.axes[0].images[0].get_array().tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert fig.axes[0].get_yticklabels()[0].get_text() == "adam (mean rank 1.0)"

    ax = plots.tuning_cost({"x": np.array([0.9, 0.1, 0.5])}, ["group"]).axes[0]
    assert list(ax.lines[0].get_ydata()) == pytest.approx(list(EXPECTED.values()))

    table = results.rank(runs, results.load_metrics(runs), target=0.5)
    lines = results.verdict_lines(table)
    page = html_report.build(runs, table, {"differences": plots.forest(vs)}, [], notes=lines,
                             tuning=results.tuning_cost({"adam": values["adam"].to_numpy()}))
    assert "Differences with their intervals" in page and "tied with best" in page and "Tuning cost" in page
    assert "95% CI" in page and "sgd - adam: " in page


def test_time_to_target_ranking_at_looser_targets(tmp_path):
    from optbench import profiles
    from test_results import write_run

    # validation accuracy rises linearly to its last evaluation (step 30): a ends at 0.97, b at 0.965.
    # At 0.97 only a arrives (b never: score 0); at 0.965 and 0.96 both first arrive at step 30: tied.
    for seed in (0, 1):
        write_run(tmp_path / f"a_{seed}", "a", 0.1, seed, val=0.97, test=0.9)
        write_run(tmp_path / f"b_{seed}", "b", 0.1, seed, val=0.965, test=0.9)
    runs = results.load_runs(tmp_path)
    table = profiles.target_sensitivity(runs, results.load_metrics(runs), None, 0.97).set_index("optimizer.name")
    assert list(table.columns) == [f"{c}@{t}" for t in ("0.97", "0.965", "0.96")
                                   for c in ("score_steps", "score_time", "rank_steps", "rank_time")]
    assert table["rank_steps@0.97"].to_dict() == {"a": 1, "b": 2} and table["score_steps@0.97"]["b"] == 0
    assert table["rank_steps@0.965"].to_dict() == {"a": 1, "b": 1} == table["rank_time@0.96"].to_dict()


def test_crowded_valley_rows_carry_the_expected_best_of_each_budget():
    import optuna

    from optbench import search

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distribution = optuna.distributions.FloatDistribution(1e-3, 1.0, log=True)
    for lr, value in ((0.5, 0.9), (0.01, 0.1), (0.1, 0.5)):
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": lr}, distributions={"optimizer.lr": distribution},
                                                  value=value, user_attrs={"test_acc_mean": value - 0.01}))
    one_shot = [{"status": "completed", "best_val_acc": 0.6, "test_acc_at_best_val": 0.59}]
    rows = search.valley_rows("constant", one_shot, {"optimizer.lr": 0.1}, study, [1, 2, 3])
    assert [r["val_acc"] for r in rows] == [0.6, 0.9, 0.9, 0.9]  # the drawn budgets: trial 0 happened to be best
    assert np.isnan(rows[0]["expected_val_acc"])
    assert [r["expected_val_acc"] for r in rows[1:]] == pytest.approx(list(EXPECTED.values()))
