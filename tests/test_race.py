"""The race's pure pieces on made-up numbers against hand computations: the sequential seed procedure (with its
simulated error rate), the test set's limit, sensitivity, boundary flags, the ledger and the robustness tables."""

import math

import numpy as np
import pandas as pd
import pytest

from optbench.errors import UserError
from optbench.race import budget, robustness, sensitivity, sequential, spaces, testset


# ---- the sequential seed procedure
def test_spending_is_obrien_fleming_type_and_the_looks_spend_exactly_alpha():
    # alpha(t) = 2 - 2 Phi(z / sqrt(t)); at t = 1/2: z / sqrt(1/2) = 1.959964 * 1.414214 = 2.771808
    phi = 0.5 * (1 + math.erf(2.771808 / math.sqrt(2)))
    assert sequential.spending(0.5, 0.05) == pytest.approx(2 - 2 * phi, rel=1e-5)
    assert sequential.spending(1.0, 0.05) == pytest.approx(0.05)
    counts = sequential.looks(3, 2, 10)
    assert counts == [3, 5, 7, 9, 10]
    levels = sequential.look_levels(counts, 0.05)
    assert levels.sum() == pytest.approx(0.05)
    assert levels[0] < 0.001 and np.all(levels > 0)  # O'Brien-Fleming: almost nothing spent at 3 of 10 seeds


def _race(rng, effects, noise=0.01, seed_noise=0.02):
    """Per-seed values of len(effects) optimizers: a shared per-seed offset (paired), own noise, the effect."""
    shared = seed_noise * rng.standard_normal(10)
    own = noise * rng.standard_normal((len(effects), 10))
    values = 0.95 + np.asarray(effects)[:, None] + shared + own
    return lambda n: values[:, :n]


def test_a_known_difference_stops_early_and_resolves():
    rng = np.random.default_rng(1)
    result = sequential.run(_race(rng, [0.03, 0.0, -0.01]), sequential.looks(3, 2, 10), 0.05)
    assert result["stopped_resolved"]
    last = result["looks"][-1]
    assert last["seeds"] < 10 and last["leader"] == 0
    assert all(c["resolved"] and c["low"] > 0 for c in last["comparisons"])


def _false_rate(levels, groups=3, races=2000):
    rng = np.random.default_rng(0)
    counts = sequential.looks(3, 2, 10)
    false = 0
    for _ in range(races):
        result = sequential.run(_race(rng, [0.0] * groups), counts, 0.05, levels=levels)
        false += bool(result["resolved"])
    return false / races


def test_with_no_difference_false_resolutions_stay_at_or_below_alpha_and_naive_looks_exceed_it():
    counts = sequential.looks(3, 2, 10)
    honest = _false_rate(sequential.look_levels(counts, 0.05))
    assert honest <= 0.05
    # the same looks each tested at the full alpha: the inflation the spending rule prevents (this test can fail)
    naive = _false_rate([0.05] * len(counts))
    assert naive > 0.05 and naive > 1.5 * honest


def test_an_unresolved_comparison_says_the_difference_it_could_hide():
    values = np.array([[0.95, 0.96, 0.94], [0.951, 0.955, 0.945]])
    decision = sequential.decide(values, 0.05)
    (c,) = decision["comparisons"]
    assert not c["resolved"] and c["low"] < 0 < c["high"]
    assert sequential.hidden_difference(c) == pytest.approx(max(-c["low"], c["high"]))


# ---- the test set's limit
def test_mcnemar_and_the_smallest_resolvable_difference_match_hand_computations():
    a = np.array([True] * 82 + [True] * 8 + [False] * 3 + [False] * 7)
    b = np.array([True] * 82 + [False] * 8 + [True] * 3 + [False] * 7)
    out = testset.compare(a, b, 0.05)
    assert (out["only_a"], out["only_b"]) == (8, 3)
    assert out["difference"] == pytest.approx(0.05)
    # 2 P(Binom(11, 1/2) <= 3) = 2 (1 + 11 + 55 + 165) / 2048
    assert out["p_mcnemar"] == pytest.approx(2 * 232 / 2048)
    # 11 discordant: (9, 2) has p = 2 * 67 / 2048 = 0.065, (10, 1) has 2 * 12 / 2048 = 0.012: 9 of 100 images
    assert out["resolvable"] == pytest.approx(0.09)
    # 10 discordant: (8, 2) p = 0.109, (9, 1) p = 2 * 11 / 1024 = 0.021: 8 images
    assert testset.smallest_resolvable(10, 100, 0.05) == pytest.approx(0.08)
    assert testset.smallest_resolvable(4, 100, 0.05) == math.inf  # (4, 0): p = 2/16 = 0.125


# ---- sensitivity
def test_good_region_width_share_and_trials_to_epsilon_match_hand_computations():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1]
    scores = [0.90, 0.97, 0.975, 0.80]
    assert sensitivity.width_decades(lrs, scores, 0.01) == pytest.approx(1.0)
    assert sensitivity.share(scores, 0.01) == pytest.approx(0.5)
    # target 0.965; sorted 0.80, 0.90, 0.97, 0.975; E[best of 3] = (0.8 + 7*0.9 + 19*0.97 + 37*0.975) / 64 = 0.96258
    # E[best of 4] = (0.8 + 15*0.9 + 65*0.97 + 175*0.975) / 256 = 0.96865
    assert sensitivity.trials_to_epsilon(scores, 0.01) == 4
    assert sensitivity.trials_to_epsilon(scores, 0.02) == 3
    # a diverged trial (NaN) counts as the worst: it can only make landing in the good region rarer
    assert sensitivity.trials_to_epsilon([*scores, np.nan], 0.01) > 4
    table = sensitivity.table({"a": pd.DataFrame({"optimizer.lr": lrs, "score": scores})}, epsilon=0.01)
    assert table.loc[0, "good_lr_low"] == 1e-3 and table.loc[0, "good_trials"] == 2


# ---- boundary flags
def test_a_chosen_value_in_the_outer_five_percent_or_on_the_last_grid_step_is_flagged():
    space = {"optimizer.lr": "log(1e-4, 1e-1)", "optimizer.precondition_frequency": "int(1, 20)",
             "optimizer.momentum": "uniform(0.5, 1.0)"}
    # log10(1.2e-4) is 0.026 of the way from 1e-4 to 1e-1; 0.09 is 0.985 of it
    assert spaces.edges({"optimizer.lr": 1.2e-4}, space) == {"optimizer.lr": "low"}
    assert spaces.edges({"optimizer.lr": 0.09}, space) == {"optimizer.lr": "high"}
    assert spaces.edges({"optimizer.lr": 1e-2, "optimizer.precondition_frequency": 19,
                         "optimizer.momentum": 0.7}, space) == {}
    assert spaces.edges({"optimizer.precondition_frequency": 20, "optimizer.momentum": 0.99}, space) == {
        "optimizer.precondition_frequency": "high", "optimizer.momentum": "high"}
    # 8 quasi-random points: the outer eighth is one grid step (0.90 of the way up the range: 10 ** -1.3)
    assert spaces.edges({"optimizer.lr": 10 ** -1.3}, space) == {}
    assert spaces.edges({"optimizer.lr": 10 ** -1.3}, space, trials=8) == {"optimizer.lr": "high"}
    assert spaces.edges({"optimizer.lr": 10 ** -1.3}, space, trials=40) == {}
    wider = spaces.widened(space, {"optimizer.lr": "high", "optimizer.momentum": "high"})
    assert wider["optimizer.lr"]["high"] == pytest.approx(1.0) and wider["optimizer.lr"]["low"] == 1e-4
    assert wider["optimizer.momentum"] == "uniform(0.5, 1.0)"  # a linear range's bounds mean something


def test_sobol_points_are_the_same_cube_for_every_optimizer():
    a = spaces.sobol_points({"optimizer.lr": "log(1e-4, 1e-1)"}, 4, seed=0)
    b = spaces.sobol_points({"optimizer.lr": "log(1e-5, 1e-2)"}, 4, seed=0)
    assert [p["optimizer.lr"] / 10 for p in a] == pytest.approx([p["optimizer.lr"] for p in b])
    assert all(1e-4 <= p["optimizer.lr"] <= 1e-1 for p in a)
    # scrambled Sobol: the 4 points fall one in each quarter of the (log) range
    quarters = sorted(int((math.log10(p["optimizer.lr"]) + 4) / 0.75) for p in a)
    assert quarters == [0, 1, 2, 3]


# ---- the ledger
def test_the_ledger_counts_flops_from_the_shape_and_steps():
    assert budget.mlp_params([32]) == 784 * 32 + 32 + 32 * 10 + 10 == 25450
    assert budget.train_flops(25450, 128, 20) == 6 * 25450 * 128 * 20
    runs = pd.DataFrame({"optimizer": ["a", "a", "b", "b", "b"], "phase": ["tuning"] * 5, "trial": [0, 1, 0, 1, 1],
                         "seed": [0, 0, 0, 0, 1], "steps": [20, 20, 20, 20, 20], "params": [25450] * 5,
                         "batch_size": [128] * 5, "wall_time": [1.0, 2.0, 1.5, 1.5, 1.0]})
    table = budget.ledger(runs)
    a, b = table.iloc[0], table.iloc[1]
    assert (a.trials, a.runs, a.steps, a.seeds, a.wall_time_s) == (2, 2, 40, 1, 3.0)
    assert a.flops == 2 * 6 * 25450 * 128 * 20 and b.runs == 3
    assert budget.unequal(table) == ["tuning steps differ: a 40, b 60"]


# ---- robustness
def _curves():
    steps = [0, 10, 20, 30, 40]
    a = [0.5, 0.9, 0.92, 0.93, 0.94]
    b = [0.5, 0.8, 0.90, 0.94, 0.96]
    return pd.DataFrame([{"optimizer": n, "seed": 0, "step": s, "value": v}
                         for n, values in (("a", a), ("b", b)) for s, v in zip(steps, values)])


def test_the_ranking_read_at_earlier_checkpoints_shows_the_flip():
    table = robustness.at_checkpoints(_curves(), (0.5, 1.0))
    assert list(table["leader"]) == ["a", "b"]
    assert list(table["tau_vs_end"]) == [-1.0, 1.0]
    assert "depends on" in robustness.words(table, "tau_vs_end", "the checkpoint")


def test_relaxed_targets_rank_by_steps_to_each_target():
    table = robustness.relaxed_targets(_curves(), (0.0, 0.02))
    # base target 0.94 (a's best, the lowest best): a reaches it at 40, b at 30; 0.92: a at 20, b at 30
    assert list(table["target"]) == pytest.approx([0.94, 0.92])
    assert list(table["steps.a"]) == [40, 20] and list(table["steps.b"]) == [30, 30]
    assert list(table["leader"]) == ["b", "a"]
    same = robustness.across({"[32]": {"a": 0.9, "b": 0.8, "c": 0.7}, "[64]": {"a": 0.91, "b": 0.85, "c": 0.6}})
    assert same["tau_vs_first"].tolist() == [1.0, 1.0]
    assert "holds" in robustness.words(same, "tau_vs_first", "the model width")


def test_a_verdict_is_reported_as_the_look_that_resolved_it():
    from optbench.race import tables

    def comparison(other, resolved, difference, low, high):
        return {"other": other, "resolved": resolved, "difference": difference, "low": low, "high": high,
                "p": 0.01 if resolved else 0.2, "p_holm": 0.02 if resolved else 0.3, "alpha": 0.01}

    result = {"names": ["a", "b", "c"], "resolved": {(0, 1), (0, 2)}, "looks": [
        {"seeds": 3, "level": 0.001, "leader": 0,
         "comparisons": [comparison(1, True, 0.05, 0.01, 0.09), comparison(2, False, 0.02, -0.01, 0.05)]},
        {"seeds": 5, "level": 0.02, "leader": 0,
         "comparisons": [comparison(1, False, 0.03, -0.01, 0.07), comparison(2, True, 0.02, 0.005, 0.035)]}]}
    rows = tables.verdicts(result).set_index("other")
    assert rows.loc["b", "seeds"] == 3 and rows.loc["b", "difference"] == 0.05 and rows.loc["b", "look_alpha"] == 0.001
    assert rows.loc["c", "seeds"] == 5 and rows.loc["c", "low"] == 0.005
    assert rows["resolved"].all() and rows["could_hide"].isna().all()
    result["looks"][1]["comparisons"][1]["resolved"] = False  # c never resolved: the last look, and what it may hide
    rows = tables.verdicts(result).set_index("other")
    assert not rows.loc["c", "resolved"] and rows.loc["c", "could_hide"] == pytest.approx(0.035)


def test_every_declared_space_names_an_optimizer_and_composes_with_it():
    from optbench.compose import compose_config, group_options
    from optbench.search.settings import check_spec

    declared = spaces.default_spaces()
    assert set(declared) - {"default"} <= set(group_options("optimizer"))
    for name, space in declared.items():
        assert "optimizer.lr" in space and "log(" in str(space["optimizer.lr"]), name
        overrides = [] if name == "default" else [f"optimizer={name}"]
        check_spec({"space": space, "overrides": overrides, "seeds": [0]})
        # a trial sets optimizer keys with ++, which would add a misspelt one: each must be one its YAML file sets
        optimizer = compose_config(overrides).optimizer
        assert all(key.removeprefix("optimizer.") in optimizer for key in space), name


def test_a_resumed_race_keeps_its_experiment_and_runs_where_this_command_says():
    from optbench.race.command import _resumed_overrides

    saved = ["model.hidden=[32]", "data.root=/old", "trainer.max_steps=20"]
    assert _resumed_overrides(saved, None) == saved
    assert _resumed_overrides(saved, ["data.root=/new"]) == ["model.hidden=[32]", "trainer.max_steps=20",
                                                              "data.root=/new"]
    # a run setting the command does not name stays as the race saved it
    saved = ["model.hidden=[32]", "trainer.vectorize=off", "device=cpu"]
    assert _resumed_overrides(saved, ["device=cuda"]) == ["model.hidden=[32]", "trainer.vectorize=off", "device=cuda"]


def test_an_epsilon_of_zero_is_kept_and_a_negative_one_refused(tmp_path):
    from optbench.race.command import _fill, _given, _parser

    given = _given(_parser().parse_args(["--optimizers", "adamw,sgd", "--epsilon", "0"]))
    assert _fill({**given, "storage": None})["epsilon"] == 0
    with pytest.raises(UserError, match="--epsilon=-0.01 must be"):
        _given(_parser().parse_args(["--optimizers", "adamw,sgd", "--epsilon", "-0.01"]))


def test_a_schedule_free_optimizer_races_at_a_constant_rate_and_the_others_decay():
    from optbench.race.command import SCALE
    from optbench.race.running import run_overrides

    settings = {"overrides": [*SCALE, "trainer.max_steps=20"]}
    assert run_overrides(settings, "adamw")[-2:] == ["schedule=cosine", "trainer.max_steps=20"]
    free = run_overrides(settings, "schedulefree_adamw")
    assert free[-1] == "schedule=constant" and "schedule=cosine" not in free


def test_five_optimizers_in_the_same_order_on_every_model_read_as_the_same_order():
    scores = {"muon": 0.9768, "schedulefree_adamw": 0.9708, "radam": 0.9686, "adamw": 0.9665, "lion": 0.9561}
    shifted = {name: value - 0.0123 for name, value in scores.items()}
    table = robustness.across({"race's model": scores, "hidden=[64]": shifted, "hidden=[128,128]": scores})
    assert (table["tau_vs_first"] == 1.0).all()
    assert robustness.words(table, "tau_vs_first", "the model") == (
        "The ranking holds across the model (same leader, muon, and the same order).")
