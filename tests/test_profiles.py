"""AlgoPerf performance profiles in `optbench report --profile`, against a hand-computed table."""

import math

import pandas as pd
import pytest
from test_results import write_run

from optbench import results
from optbench.results import profiles, rundir

from conftest import optbench

TARGET = 0.9
# steps at which each optimizer's run of each seed first reaches TARGET; None: never (its accuracy stops at 0.5)
REACHED = {"a": {0: 10, 1: 30, 2: None},
           "b": {0: 20, 1: 10, 2: None},
           "c": {0: 50, 1: None, 2: None}}


@pytest.fixture
def profiled(tmp_path):
    """Each run's validation accuracy rises linearly to its last evaluation, where it reaches TARGET (or 0.5)."""
    for optimizer, seeds in REACHED.items():
        for seed, steps in seeds.items():
            n = steps or 40
            write_run(tmp_path / f"{optimizer}_{seed}", optimizer, 0.1, seed, val=TARGET if steps else 0.5,
                      test=0.8, steps=n, evals=(0, n))
    return tmp_path


# by hand, r_max = 4: ratios to the fastest per seed
#   seed 0: a 10/10 = 1, b 20/10 = 2, c 50/10 = 5 > r_max -> unsolved
#   seed 1: a 30/10 = 3, b 1, c never
#   seed 2: nobody reaches the target: unsolved for all
# score = mean over seeds of (4 - r) / 3:  a (1 + 1/3 + 0) / 3 = 4/9,  b (2/3 + 1 + 0) / 3 = 5/9,  c 0
SCORES = {"a": 4 / 9, "b": 5 / 9, "c": 0.0}
# rho(tau) at tau = 1, 2, 3, 4
PROFILE = {"a": [1 / 3, 1 / 3, 2 / 3, 2 / 3], "b": [1 / 3, 2 / 3, 2 / 3, 2 / 3], "c": [0, 0, 0, 0]}


def test_scores_and_profile_match_the_hand_computed_table(profiled):
    runs = results.load_runs(profiled)
    scores, costs = profiles.algoperf(runs, results.load_metrics(runs), None, TARGET)
    assert scores.columns[0] == "optimizer.name"
    got = scores.set_index("optimizer.name")
    for optimizer, expected in SCORES.items():
        assert got.loc[optimizer, "score_steps"] == pytest.approx(expected)
        assert got.loc[optimizer, "score_time"] == pytest.approx(expected)  # write_run's time is 0.01 s per step
        assert got.loc[optimizer, "reached"] == sum(s is not None for s in REACHED[optimizer].values())
    assert list(got.index) == ["b", "a", "c"]  # best score first
    assert (got["problems"] == 3).all()
    steps = costs["steps"]
    assert steps.loc[0, "a"] == 10 and steps.loc[1, "b"] == 10 and math.isinf(steps.loc[1, "c"])
    assert costs["time"].loc[0, "c"] == pytest.approx(0.5)
    profile = profiles.performance_profile(steps, 4.0, taus=[1.0, 2.0, 3.0, 4.0])
    for optimizer, expected in PROFILE.items():
        assert list(profile[optimizer]) == pytest.approx(expected)


def test_an_unfinished_run_counts_as_never_reaching_the_target(profiled):
    summary = rundir.read_summary(profiled / "a_0")
    rundir.write_json(profiled / "a_0" / rundir.SUMMARY, {**summary, "status": "failed"})
    runs = results.load_runs(profiled)
    scores, costs = profiles.algoperf(runs, results.load_metrics(runs), None, TARGET)
    assert math.isinf(costs["steps"].loc[0, "a"])
    # seed 0: b is now fastest (ratio 1), c 50/20 = 2.5; seed 1 as before
    got = scores.set_index("optimizer.name")["score_steps"]
    assert got["a"] == pytest.approx((0 + 1 / 3 + 0) / 3)
    assert got["b"] == pytest.approx((1 + 1 + 0) / 3)
    assert got["c"] == pytest.approx((4 - 2.5) / 3 / 3)


def test_report_profile_writes_the_table_and_the_figure(profiled):
    out = optbench("report", str(profiled), "--profile", "--target", str(TARGET))
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(profiled / "profile.csv")
    assert table.set_index("optimizer.name")["score_steps"].to_dict() == pytest.approx(SCORES)
    figure = profiled / "plots" / "performance_profile.png"
    assert figure.stat().st_size > 10_000
    assert "score = area under the profile" in out.stdout


def test_report_profile_needs_two_groups(profiled):
    out = optbench("report", str(profiled / "a_0"), "--profile")
    assert out.returncode == 2
    assert "optbench: error: --profile compares groups" in out.stderr
