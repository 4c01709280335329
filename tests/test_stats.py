"""How sure a ranking is: intervals, tests and estimators against hand-computed cases, scipy and simulation,
and the report on a real sweep, paired and unpaired."""

import itertools
import shutil

import numpy as np
import pandas as pd
import pytest
from omegaconf import OmegaConf
from scipy import stats as sps

from optbench import results
from optbench.errors import UserError
from optbench.results import stats

from conftest import optbench

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
    # the comparison of two groups decides by the paired t-test and reports the sign-flip p beside it
    b = {seed: 0.9 for seed in range(4)}
    a = {seed: 0.9 + d for seed, d in enumerate(DIFFERENCES)}
    out = stats.compare(a, b)
    assert out["paired"] and out["seeds"] == 4 and out["test"] == "paired t"
    assert out["p_sign_flip"] == pytest.approx(P_BY_HAND) and out["difference"] == pytest.approx(np.mean(DIFFERENCES))


# by hand, d = (0.5, -1, 2, 3): mean 1.125, sum of squared deviations 0.390625 + 4.515625 + 0.765625 + 3.515625
# = 9.1875, s^2 = 3.0625, s = 1.75, se = 0.875, t = 1.2857 on 3 df; t_0.975,3 = 3.182446
T_BY_HAND, SE_BY_HAND, T_CRITICAL_3 = 1.125 / 0.875, 0.875, 3.182446305284263


def test_paired_t_and_its_interval_by_hand():
    out = stats.compare({s: 0.9 + d for s, d in enumerate(DIFFERENCES)}, dict.fromkeys(range(4), 0.9))
    assert (out["se"], out["df"]) == (pytest.approx(SE_BY_HAND), 3)
    assert out["p"] == pytest.approx(2 * sps.t.sf(T_BY_HAND, 3))
    assert (out["low"], out["high"]) == pytest.approx((1.125 - T_CRITICAL_3 * 0.875, 1.125 + T_CRITICAL_3 * 0.875))
    assert stats.mean_interval(DIFFERENCES)[:2] == pytest.approx((out["low"], out["high"]))
    assert stats.mean_interval(DIFFERENCES)[2] == "t"
    # the level reaches the interval: at 0.8 a narrower one, t_0.9,3 = 1.637744
    assert stats.mean_interval(DIFFERENCES, 0.8)[1] == pytest.approx(1.125 + 1.6377443572159062 * 0.875)


def test_intervals_at_the_edges_of_their_domain():
    # no spread: the interval is the value itself, and a constant nonzero difference is resolved (p 0)
    assert stats.mean_interval([0.01, 0.01, 0.01]) == (pytest.approx(0.01), pytest.approx(0.01), "t")
    constant = stats.compare(dict.fromkeys(range(3), 0.95), dict.fromkeys(range(3), 0.9))
    assert constant["p"] == 0 and constant["low"] == constant["high"] == pytest.approx(0.05)
    assert constant["seeds_needed"] == 2
    unpaired = stats.compare({0: 0.95, 1: 0.95}, {5: 0.9, 6: 0.9, 7: 0.9})  # Welch's df is 0/0 here: no NaN out
    assert unpaired["test"] == "Welch" and unpaired["p"] == 0 and unpaired["low"] == pytest.approx(0.05)
    # identical groups: nothing to resolve, p 1, the interval [0, 0], no seed count would resolve it
    same = stats.compare(dict.fromkeys(range(3), 0.9), dict.fromkeys(range(3), 0.9))
    assert same["p"] == 1 and same["low"] == same["high"] == 0 and same["seeds_needed"] == np.inf
    # one seed: no interval; one run per group: no test
    assert np.isnan(stats.mean_interval([0.5])[0]) and stats.mean_interval([0.5])[2] == "none"
    assert stats.compare({0: 0.9}, {1: 0.8})["test"] == "none"
    # a diverged or unfinished run (NaN) is left out, not averaged in: the seed it belongs to is not shared
    diverged = stats.compare({0: 0.9, 1: np.nan, 2: 0.92, 3: 0.91}, {0: 0.8, 1: 0.8, 2: 0.83, 3: 0.8})
    assert diverged["seeds"] == 3 and diverged["n_a"] == 3
    assert diverged["difference"] == pytest.approx(np.mean([0.1, 0.09, 0.11]))


def test_unpaired_uses_welch_test_and_interval():
    a, b = {0: 0.91, 1: 0.93, 2: 0.92}, {10: 0.95, 11: 0.97, 12: 0.96, 13: 0.955}
    out = stats.compare(a, b)
    assert not out["paired"] and out["test"] == "Welch" and np.isnan(out["p_sign_flip"])
    x, y = np.array(list(a.values())), np.array(list(b.values()))
    welch = sps.ttest_ind(x, y, equal_var=False)
    assert out["p"] == pytest.approx(welch.pvalue) and out["df"] == pytest.approx(welch.df)
    low, high = welch.confidence_interval(0.95)
    assert (out["low"], out["high"]) == pytest.approx((low, high))
    assert out["p_a_better"] == 0.0  # every run of a is below every run of b


def test_holm_and_p_better_by_hand():
    # sorted 0.01, 0.03, 0.04 of m = 3: 0.03, 0.06, max(0.06, 0.04); the missing comparison does not count
    assert list(stats.holm([0.01, 0.04, 0.03, np.nan])[:3]) == pytest.approx([0.03, 0.06, 0.06])
    # the levels Holm tests at (alpha 0.05): 0.01 <= 0.05/3 passes, 0.03 > 0.05/2 stops there: 0.04 keeps 0.025
    assert list(stats.holm_alphas([0.01, 0.04, 0.03, np.nan], 0.05)[:3]) == pytest.approx([0.05 / 3, 0.025, 0.025])
    assert list(stats.holm_alphas([0.001, 0.02, 0.04], 0.05)) == pytest.approx([0.05 / 3, 0.025, 0.05])
    assert np.isnan(stats.holm_alphas([np.nan, 0.2], 0.05)[0]) and stats.holm_alphas([np.nan, 0.2], 0.05)[1] == 0.05
    assert np.isnan(stats.holm([0.01, np.nan])[1]) and stats.holm([0.6, 0.7])[0] == 1.0
    assert stats.p_better([1, 2, 3], [0, 2, 4], paired=True) == 0.5  # win, tie (half), loss
    assert stats.p_better([1, 3], [2], paired=False) == 0.5


def test_iqm_is_the_mean_of_the_middle_half():
    assert stats.iqm([1, 2, 3, 4, 100, 5, 6, 7]) == pytest.approx(np.mean([3, 4, 5, 6]))


# --- verdicts over repetitions: unresolved as often as the level promises, a clear shift resolved ---------

REPEATS = 300
SEEDS = 9  # 2**9 sign flips: the sign-flip check, enumerated even with RESAMPLES 999


@pytest.fixture
def fast(monkeypatch):
    """999 random sign flips instead of 9999 (every flip is still enumerated at 9 seeds) and fewer simulated
    studies for Welch's seeds estimate: the verdict is the t-test's and does not change."""
    monkeypatch.setattr(stats, "RESAMPLES", 999)
    monkeypatch.setattr(stats, "POWER_SETS", 1000)


def _groups(rng, shift: float, paired: bool):
    """Two groups' values per seed: a seed effect shared by both when paired (same init and data order)."""
    seed_effect = rng.normal(0, 0.01, SEEDS)
    a = 0.97 + seed_effect + rng.normal(0, 0.002, SEEDS)
    b = 0.97 + (seed_effect if paired else rng.normal(0, 0.01, SEEDS)) + rng.normal(0, 0.002, SEEDS) - shift
    seeds_b = range(SEEDS) if paired else range(SEEDS, 2 * SEEDS)
    return {"a": pd.Series(a, index=range(SEEDS)), "b": pd.Series(b, index=seeds_b)}


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "welch"])
def test_same_distribution_is_unresolved_at_least_as_often_as_the_level(paired, fast):
    rng = np.random.default_rng(2024)
    unresolved = [not results.comparisons(_groups(rng, 0.0, paired), [("a", "b")]).resolved.iloc[0]
                  for _ in range(REPEATS)]
    # at least LEVEL in expectation; three binomial standard errors of slack for this seeded sample
    slack = 3 * np.sqrt(stats.LEVEL * (1 - stats.LEVEL) / REPEATS)
    assert np.mean(unresolved) >= stats.LEVEL - slack, np.mean(unresolved)


@pytest.mark.parametrize("paired", [True, False], ids=["paired", "welch"])
def test_a_clear_shift_is_resolved(paired, fast):
    rng = np.random.default_rng(7)
    for _ in range(20):
        row = results.comparisons(_groups(rng, 0.03, paired), [("a", "b")]).iloc[0]
        assert row.resolved and row.difference > 0 and row.test == ("paired t" if paired else "Welch")
        assert row.low > 0  # the interval beside a resolved row excludes 0


def test_seeds_needed_matches_the_textbook_power_tables():
    # one-sample / paired t, two-sided alpha 0.05, power 0.8 (Cohen 1988; G*Power): d = 0.5 -> 34, 0.8 -> 15, 1 -> 10
    assert [stats.seeds_needed(d, 1.0, 0.05, paired=True) for d in (0.5, 0.8, 1.0)] == [34, 15, 10]
    # two-sample, 64 per group for the pooled t-test; Welch's (simulated) within a seed of it
    assert abs(stats.seeds_needed(0.5, 1.0, 0.05, paired=False, spread_b=1.0) - 64) <= 1
    # a huge effect needs the fewest seeds a t-test can use: 2
    assert stats.seeds_needed(1.0, 1e-6, 0.05, paired=True) == 2
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
    assert "95% CI (t)" in out.stdout and "verdict" in out.stdout and "Holm" in out.stdout
    ranking = pd.read_csv(sweep / "ranking.csv")
    best, other = ranking.iloc[0], ranking.iloc[1]
    assert best["verdict"] == "best" and best["rank"] == 1
    for row in (best, other):
        assert row["best_val_acc_low"] <= row["best_val_acc"] <= row["best_val_acc_high"]
    # the seeds are shared: paired. sgd is ~0.66 below adam in each of 3 seeds: the paired t-test resolves it,
    # its interval excludes 0, and the sign-flip check says it cannot go below 2/2^3 at 3 seeds
    assert other["vs_test"] == "paired t" and other["vs_seeds"] == 3 and other["vs_p"] < 0.05
    assert other["vs_high"] < 0 and other["vs_p_sign_flip"] == 0.25
    assert other["verdict"] == "resolved: worse" and other["rank"] == 2
    assert "sign-flip p = 0.25 (the smallest 3 seeds allow is 2/2^3 = 0.25: it cannot check this)" in out.stdout
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
    assert table.loc[worse, "verdict"] == "resolved: worse" and table.loc[worse, "rank"] == 2
    with pytest.raises(UserError, match="--baseline nope: no such group; groups: "):
        results.rank(runs, results.load_metrics(runs), target=0.5, baseline="nope")
    against = results.rank(runs, results.load_metrics(runs), target=0.5, baseline=worse).set_index("optimizer.name")
    assert against.loc[worse, "verdict"] == "baseline"
    assert against.loc[best["optimizer.name"], "verdict"] == "resolved: better"


def test_figures_and_page_show_the_comparisons(sweep):
    from matplotlib.colors import to_rgba

    from optbench.results import html as html_report
    from optbench.results import plots

    runs = results.load_runs(sweep)
    values = results.group_values(runs, ["optimizer.name"])
    reference, vs = results.against_reference(values)
    assert reference == "adam" and list(vs.a) == ["sgd"]
    ax = plots.forest(vs).axes[0]
    interval, point = ax.lines[:2]
    assert list(interval.get_xdata()) == pytest.approx([vs.low[0], vs.high[0]])
    assert point.get_xdata()[0] == pytest.approx(vs.difference[0]) and vs.difference[0] < 0
    assert to_rgba(point.get_markerfacecolor()) == to_rgba(plots.RESOLVED)  # filled: resolved, the interval below 0
    assert vs.high[0] < 0
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
    assert "Differences with their intervals" in page and "resolved: worse" in page and "Tuning cost" in page
    assert "95% CI (t)" in page and "sgd - adam: " in page


def test_time_to_target_ranking_at_looser_targets(tmp_path):
    from test_results import write_run

    from optbench.results import profiles

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
        study.add_trial(optuna.trial.create_trial(params={"optimizer.lr": lr},
                                                  distributions={"optimizer.lr": distribution},
                                                  value=value, user_attrs={"test_acc_mean": value - 0.01}))
    one_shot = [{"status": "completed", "best_val_acc": 0.6, "test_acc_at_best_val": 0.59}]
    rows = search.valley_rows("constant", one_shot, {"optimizer.lr": 0.1}, study, [1, 2, 3])
    assert [r["val_acc"] for r in rows] == [0.6, 0.9, 0.9, 0.9]  # the drawn budgets: trial 0 happened to be best
    assert np.isnan(rows[0]["expected_val_acc"])
    assert [r["expected_val_acc"] for r in rows[1:]] == pytest.approx(list(EXPECTED.values()))
