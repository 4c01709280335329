"""optbench search: spaces, validation-only scoring, performance profiles, and real searches that resume."""

import json
import math
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from optbench.errors import UserError

from conftest import optbench

optuna = pytest.importorskip("optuna")
from optbench import search  # noqa: E402
from optbench.results import profiles  # noqa: E402
from optbench.search import figures, running, scoring, settings, shared, spaces  # noqa: E402


def test_space_forms_become_optuna_distributions():
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space = search.parse_space({
        "optimizer.lr": "log(1e-5, 1e1)",
        "optimizer.momentum": "uniform(0, 0.99)",
        "trainer.batch_size": "choice(32, 128)",
        "model.hidden": "choice([128], [256,256])",
        "optimizer": ["sgd", "adam"],
        "trainer.epochs": "int(1, 5)",
        "optimizer.weight_decay": {"type": "float", "low": "1e-6", "high": 1e-2, "log": True},
    })
    assert space["optimizer.lr"] == FloatDistribution(1e-5, 10.0, log=True)
    assert space["optimizer.momentum"] == FloatDistribution(0.0, 0.99)
    assert space["trainer.batch_size"] == CategoricalDistribution([32, 128])
    assert space["model.hidden"] == CategoricalDistribution(["[128]", "[256,256]"])
    assert space["optimizer"] == CategoricalDistribution(["sgd", "adam"])
    assert space["trainer.epochs"] == IntDistribution(1, 5)
    assert space["optimizer.weight_decay"] == FloatDistribution(1e-6, 1e-2, log=True)
    assert search.trial_overrides({"optimizer": "sgd", "optimizer.lr": 0.5, "model.hidden": "[256,256]"}) == [
        "optimizer=sgd", "++optimizer.lr=0.5", "++model.hidden=[256,256]"]


@pytest.mark.parametrize("bad", ["log(1, 0.1)", "log(0, 1)", "lognormal(1, 2)", "uniform(1)", 3, {"type": "gauss"}])
def test_bad_range_is_a_user_error_naming_the_key(bad):
    with pytest.raises(UserError, match="optimizer.lr"):
        search.parse_space({"optimizer.lr": bad})


def test_grid_is_log_spaced_inside_the_range_and_crosses_choices():
    points = search.grid(search.parse_space({"optimizer.lr": "log(1e-5, 1e2)"}), 36)
    lrs = [p["optimizer.lr"] for p in points]
    assert len(lrs) == 36 and lrs[0] == 1e-5 and lrs[-1] == 1e2
    assert np.allclose(np.diff(np.log10(lrs)), 7 / 35)
    both = search.grid(search.parse_space({"optimizer.lr": "log(0.01, 1)", "trainer.batch_size": [32, 128]}), 3)
    assert len(both) == 6 and {p["trainer.batch_size"] for p in both} == {32, 128}
    epochs = search.parse_space({"trainer.epochs": "int(1, 3)"})
    assert search.grid(epochs, 5) == [{"trainer.epochs": v} for v in (1, 2, 3)]


def _drawn(tmp_path, name: str, sampler_seed: int, trials: int = 4) -> list[float]:
    """The learning rates a random search's first `trials` trials draw, asked as the search asks them."""
    space = search.parse_space({"optimizer.lr": "log(1e-4, 1)"})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / name}.db")
    spec = {"sampler": "random", "sampler_seed": sampler_seed}
    drawn = []
    for _ in range(trials):
        trial = running.next_trial(study, spec, target=trials, lock=tmp_path / f"{name}.lock")
        drawn.append(spaces.suggest(trial, "optimizer.lr", space["optimizer.lr"]))
        study.tell(trial, 0.5)
    return drawn


def test_searches_with_neighbouring_sampler_seeds_draw_different_points(tmp_path):
    # repeats of a search (the lectures' random-vs-grid claim) must be independent samples, and one seed reproducible
    first = _drawn(tmp_path, "a", 0)
    assert _drawn(tmp_path, "again", 0) == first
    assert not set(first) & set(_drawn(tmp_path, "b", 1))


def test_a_search_resumes_and_is_shared_with_its_data_elsewhere(tmp_path):
    # where the data is and what runs it are not the experiment: a resume, or a worker on another machine,
    # may name them differently (the study's settings compared before were every override, data.root too)
    from optbench.search.shared import Shared

    spec = {"space": {"optimizer.lr": "log(1e-3, 1)"}, "overrides": ["optimizer=sgd", "data.root=/a"]}
    settings.settle_spec(tmp_path / "s", spec)
    moved = settings.settle_spec(tmp_path / "s", {**spec, "overrides": ["optimizer=sgd", "data.root=/b", "device=cpu"]})
    assert moved["overrides"] == ["optimizer=sgd", "data.root=/b", "device=cpu"]
    with pytest.raises(UserError, match="other overrides"):
        settings.settle_spec(tmp_path / "s", {**spec, "overrides": ["optimizer=adam", "data.root=/b"]})
    journal = str(tmp_path / "study.log")
    shared.open_study(Shared(journal, "j"), settings.settle_spec(tmp_path / "one", {**spec, "storage": journal}))
    elsewhere = {**spec, "overrides": ["optimizer=sgd", "data.root=/mnt/mnist"], "storage": journal}
    shared.open_study(Shared(journal, "j"), settings.settle_spec(tmp_path / "two", elsewhere))
    with pytest.raises(UserError, match="holds a search with other overrides"):
        other = {**spec, "overrides": ["optimizer=adam"], "storage": journal}
        shared.open_study(Shared(journal, "j"), settings.settle_spec(tmp_path / "three", other))


def test_trial_score_is_mean_validation_accuracy_and_ignores_test():
    # trial A wins on validation, trial B would win on test: the objective must pick A
    a = [{"best_val_acc": 0.90, "test_acc_at_best_val": 0.50}, {"best_val_acc": 0.92, "test_acc_at_best_val": 0.52}]
    b = [{"best_val_acc": 0.80, "test_acc_at_best_val": 0.99}, {"best_val_acc": 0.82, "test_acc_at_best_val": 0.99}]
    assert scoring.score(a) == pytest.approx((0.91, 0.01))
    assert scoring.score(b) == pytest.approx((0.81, 0.01))
    assert scoring.score(a)[0] > scoring.score(b)[0]
    # changing the test figures changes nothing
    assert scoring.score([{**s, "test_acc_at_best_val": 0.0} for s in a]) == scoring.score(a)


def test_performance_profile_matches_a_hand_computed_table():
    # seconds to the target; inf: never reached; problem p4 nobody solved
    costs = pd.DataFrame({"sgd": [10, 20, 30, np.inf], "adam": [5, 40, 30, np.inf], "lbfgs": [50, np.nan, 15, np.inf]},
                         index=["p1", "p2", "p3", "p4"])
    # ratios to the fastest per problem (> r_max = 4 counts as unsolved):
    #        sgd  adam  lbfgs
    #   p1   2    1     inf (10 > 4)
    #   p2   1    2     inf
    #   p3   2    2     1
    #   p4   inf  inf   inf
    profile = profiles.performance_profile(costs, r_max=4, taus=[1, 1.5, 2, 4])
    expected = pd.DataFrame({"sgd": [1 / 4, 1 / 4, 3 / 4, 3 / 4], "adam": [1 / 4, 1 / 4, 3 / 4, 3 / 4],
                             "lbfgs": [1 / 4, 1 / 4, 1 / 4, 1 / 4]}, index=pd.Index([1, 1.5, 2, 4], name="tau"))
    pd.testing.assert_frame_equal(profile, expected, check_index_type=False)
    # area under each profile over [1, 4] / 3: sum over problems of (4 - r) / 3 / 4
    score = profiles.profile_score(costs, r_max=4)
    assert score["sgd"] == pytest.approx(((4 - 2) + (4 - 1) + (4 - 2)) / 3 / 4)  # 7/12
    assert score["adam"] == pytest.approx(7 / 12)
    assert score["lbfgs"] == pytest.approx((4 - 1) / 3 / 4)  # 1/4
    # the exact area equals a fine numerical integral of the step function
    # the trapezoid rule is off by h/2 x each jump: at h = 1e-3 under 1e-4, well inside the tolerance (30001 points
    # made this pure-function test take seconds: a pandas comparison per point and solver)
    taus = np.linspace(1, 4, 3001)
    fine = profiles.performance_profile(costs, r_max=4, taus=taus)
    assert np.trapezoid(fine["sgd"], taus) / 3 == pytest.approx(7 / 12, abs=1e-3)


def _trials(search_dir):
    with sqlite3.connect(search_dir / "study.db") as db:
        return db.execute("select number, state from trials order by number").fetchall()


def _completed_any(search_dir) -> bool:
    try:
        return any(st == "COMPLETE" for _, st in _trials(search_dir))
    except sqlite3.Error:  # not created yet, or busy
        return False


def _second_trial_started(search_dir) -> bool:
    """From the run directories, not the study: a reader of study.db can be locked out while the search writes,
    and was, until every trial had finished and the Ctrl-C came too late. The second trial's folder, not the
    first's summary: a Ctrl-C between a run's end and the study hearing of it fails that trial too."""
    return len(list(search_dir.glob("runs/*"))) >= 2


def _calm_space(tmp_path):
    """A space of rates SGD does not diverge at in 10 steps: every trial completes."""
    space = tmp_path / "space.yaml"
    space.write_text("space:\n  optimizer.lr: log(1e-3, 0.3)\n")
    return str(space)


def _params(search_dir):
    with sqlite3.connect(search_dir / "study.db") as db:
        return db.execute("select t.number, p.param_value from trial_params p "
                          "join trials t using (trial_id)").fetchall()


# every trial: 10 SGD steps of a small MLP without diagnostics, evaluated on 1000-image subsets (searching is under
# test, not the training: the default [256,256] model made each run's two evaluations its largest cost)
TRIAL = ("optimizer=sgd", "trainer.max_steps=10", "trainer.checkpoint_every=0", "model.hidden=[32]", "diagnostics=off",
         "data.train_eval_size=1000", "data.val_size=1000")


def _search(tmp_path, mnist_root, *args):
    return optbench("search", "--dir", str(tmp_path / "s"), *args, *TRIAL, f"data.root={mnist_root}")


def test_random_search_writes_run_dirs_scores_validation_and_resumes(mnist_root, tmp_path):
    out = _search(tmp_path, mnist_root, "--space", _calm_space(tmp_path), "--sampler", "random", "--trials", "2",
                  "--seeds", "0,1")
    assert out.returncode == 0, out.stderr[-3000:]
    s = tmp_path / "s"
    assert _trials(s) == [(0, "COMPLETE"), (1, "COMPLETE")]
    runs = sorted(p.parent for p in s.glob("runs/*/summary.json"))
    assert len(runs) == 4  # 2 trials x 2 seeds, each an ordinary run directory
    assert all({"config.yaml", "metrics.csv", "train.log", ".hydra"} <= {p.name for p in r.iterdir()} for r in runs)
    first = {r.name: (r / "summary.json").read_text() for r in runs}
    table = pd.read_csv(s / "trials.csv")
    for _, row in table.iterrows():  # the objective is the mean of the runs' best validation accuracy
        summaries = [json.loads((s / r / "summary.json").read_text()) for r in eval(row["runs"])]
        assert row["val_acc_mean"] == pytest.approx(np.mean([x["best_val_acc"] for x in summaries]))
        assert row["test_acc_mean"] == pytest.approx(np.mean([x["test_acc_at_best_val"] for x in summaries]))
    assert (s / "history.png").stat().st_size > 0 and (s / "slice.png").stat().st_size > 0

    # same directory, a larger budget: the two finished trials are kept, one more runs
    out = _search(tmp_path, mnist_root, "--trials", "3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert _trials(s) == [(0, "COMPLETE"), (1, "COMPLETE"), (2, "COMPLETE")]
    runs = sorted(p.parent for p in s.glob("runs/*/summary.json"))
    assert len(runs) == 6 and all((r / "summary.json").read_text() == first[r.name] for r in runs if r.name in first)
    lrs = [v for _, v in _params(s)]
    assert len(set(lrs)) == 3  # the resumed sampler does not replay the first points

    # asking again for a different space in the same directory is refused in one line
    out = _search(tmp_path, mnist_root, "--space", "lr_batch")
    assert out.returncode == 2 and "pick a new --dir" in out.stderr


def test_tpe_search_interrupted_by_ctrl_c_resumes_without_repeating_trials(mnist_root, tmp_path):
    s = tmp_path / "s"
    n_trials = 4  # enough that the trials left once the second one started cannot all finish before the Ctrl-C
    cmd = [sys.executable, "-m", "optbench", "search", "--dir", str(s), "--space", "lr", "--sampler", "tpe",
           "--trials", str(n_trials), *TRIAL, f"data.root={mnist_root}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Ctrl-C once the first trial finished
    deadline = time.time() + 120
    while time.time() < deadline and not _second_trial_started(s):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, output[-3000:]
    # finished: COMPLETE, or PRUNED when the lr drawn diverged (which points are drawn depends on when Ctrl-C came)
    before = _trials(s)
    finished = [n for n, st in before if st in ("COMPLETE", "PRUNED")]
    assert 1 <= len(finished) < n_trials
    summaries = {p.parent.name: p.read_text() for p in s.glob("runs/*/summary.json")}

    out = optbench("search", "--dir", str(s), "--trials", str(n_trials))
    assert out.returncode == 0, out.stderr[-3000:]
    after = _trials(s)
    assert [n for n, st in after if st in ("COMPLETE", "PRUNED")][: len(finished)] == finished
    assert sum(st in ("COMPLETE", "PRUNED") for _, st in after) == n_trials
    assert len(after) - len(before) == n_trials - len(finished)  # only the missing trials ran
    for name, text in summaries.items():  # finished runs untouched
        if json.loads(text)["status"] == "completed":
            assert (s / "runs" / name / "summary.json").read_text() == text


def test_a_killed_search_resumes_and_reruns_the_trial_it_left_running(mnist_root, tmp_path):
    s = tmp_path / "s"
    cmd = [sys.executable, "-m", "optbench", "search", "--dir", str(s), "--space", _calm_space(tmp_path),
           "--sampler", "random", "--trials", "2", *TRIAL, f"data.root={mnist_root}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not _completed_any(s):
        time.sleep(0.05)
    proc.kill()  # SIGKILL: no handler runs, the second trial stays RUNNING in the study
    proc.wait(timeout=60)
    out = optbench("search", "--dir", str(s))
    assert out.returncode == 0, out.stderr[-3000:]
    states = [st for _, st in _trials(s)]
    assert states.count("COMPLETE") == 2 and "RUNNING" not in states
    assert states.count("FAIL") == (len(states) - 2)  # the killed trial, if it had started, is FAIL and not counted


def test_grid_search_records_a_diverged_trial_as_pruned_with_its_reason(mnist_root, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("# two learning rates, one far too large\nspace:\n  optimizer.lr: [0.05, 1.0e+6]\n")
    out = _search(tmp_path, mnist_root, "--space", str(space), "--sampler", "grid")
    assert out.returncode == 0, out.stderr[-3000:]
    table = pd.read_csv(tmp_path / "s" / "trials.csv").set_index("optimizer.lr")
    assert table.loc[0.05, "state"] == "COMPLETE" and table.loc[0.05, "val_acc_mean"] > 0.3
    assert table.loc[1e6, "state"] == "PRUNED" and "diverged" in table.loc[1e6, "reason"]
    assert math.isnan(table.loc[1e6, "val_acc_mean"])


def test_parallel_searches_share_one_study_without_extra_or_lost_trials(mnist_root, tmp_path):
    s = tmp_path / "s"
    cmd = [sys.executable, "-m", "optbench", "search", "--dir", str(s), "--space", "lr", "--sampler", "random",
           "--trials", "3", "--threads", "1", *TRIAL, f"data.root={mnist_root}"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(o[-2000:] for o in outputs)
    trials = _trials(s)
    # the study as a whole got its 3 trials (two separate budgets would have made 6), each trained once
    assert [st for _, st in trials] == ["COMPLETE"] * 3
    runs = sorted(p.parent.name for p in s.glob("runs/*/summary.json"))
    assert [r[:3] for r in runs] == ["000", "001", "002"]
    assert all(json.loads((s / "runs" / r / "summary.json").read_text())["status"] == "completed" for r in runs)
    assert sorted(pd.read_csv(s / "trials.csv")["number"]) == [0, 1, 2]


def test_crowded_valley_compares_one_shot_with_budgets_chosen_on_validation(mnist_root, tmp_path):
    preset = settings.load_spec("crowded_valley")
    assert preset["schedules"] == ["constant", "cosine", "warm_restarts", "trapezoidal"]
    assert preset["sampler"] == "random" and preset["budgets"] == sorted(preset["budgets"])
    space = tmp_path / "valley.yaml"
    space.write_text("space:\n  optimizer.lr: log(1e-3, 1)\nsampler: random\nbudgets: [1, 2]\n"
                     "schedules: [constant, trapezoidal]\n")
    out = _search(tmp_path, mnist_root, "--space", str(space))
    assert out.returncode == 0, out.stderr[-3000:]
    s = tmp_path / "s"
    table = pd.read_csv(s / "valley.csv")
    assert list(table["budget"]) == ["one-shot", "1 trial", "2 trials"] * 2
    for schedule in ("constant", "trapezoidal"):
        rows = table[table.schedule == schedule].set_index("budget")
        trials = pd.read_csv(s / schedule / "trials.csv").sort_values("number")
        assert _trials(s / schedule) == [(0, "COMPLETE"), (1, "COMPLETE")]
        # a budget of N: the best of the first N trials by validation, reported with that trial's test accuracy
        for budget, n in (("1 trial", 1), ("2 trials", 2)):
            best = trials.head(n).loc[trials.head(n)["val_acc_mean"].idxmax()]
            assert rows.loc[budget, "val_acc"] == pytest.approx(best["val_acc_mean"])
            assert rows.loc[budget, "test_acc"] == pytest.approx(best["test_acc_mean"])
            assert rows.loc[budget, "optimizer.lr"] == pytest.approx(best["optimizer.lr"])
        one_shot = json.loads((s / schedule / "one_shot" / "seed=0" / "summary.json").read_text())
        assert rows.loc["one-shot", "val_acc"] == pytest.approx(one_shot["best_val_acc"])
        assert rows.loc["one-shot", "optimizer.lr"] == pytest.approx(0.1)  # optimizer=sgd's default
        config = (s / schedule / "one_shot" / "seed=0" / "config.yaml").read_text()
        assert f"optbench.schedules.{schedule}" in config or schedule == "constant"
    assert (s / "valley.png").stat().st_size > 0 and "| schedule |" in (s / "valley.md").read_text()

    # a larger budget later: one more trial per schedule; finished trials and one-shot runs are kept
    one_shot = (s / "constant" / "one_shot" / "seed=0" / "summary.json").read_text()
    out = _search(tmp_path, mnist_root, "--budgets", "1,2,3")
    assert out.returncode == 0, out.stderr[-3000:]
    assert [len(_trials(s / name)) for name in ("constant", "trapezoidal")] == [3, 3]
    assert (s / "constant" / "one_shot" / "seed=0" / "summary.json").read_text() == one_shot
    assert list(pd.read_csv(s / "valley.csv")["budget"]) == ["one-shot", "small (1)", "medium (2)", "large (3)"] * 2


def _toy_study(trials: int):
    """A study of `trials` quick trials of a made-up objective: the figures are under test, not training."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: 0.9 - 0.01 * abs(np.log10(t.suggest_float("optimizer.lr", 1e-4, 1, log=True)) + 2)
                   + 0.005 * (t.suggest_categorical("trainer.batch_size", [32, 128]) == 32), n_trials=trials)
    return study


def test_slice_plot_is_white_with_one_title_and_a_colour_per_trial(tmp_path):
    from matplotlib.colors import to_rgba

    from figure_checks import overlaps, wcag_contrast
    axes = figures.plot_slice(_toy_study(2))
    fig = axes[0].figure
    assert [ax.get_title() for ax in fig.axes] == ["", ""]  # the figure's title is the only one (save_plots sets it)
    assert all(to_rgba(ax.get_facecolor()) == to_rgba("white") for ax in fig.axes)
    assert len(fig.axes) == 2  # a panel per parameter, no colour bar for two trials
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["trial 0", "trial 1", "best trial"]
    points = [c for c in axes[0].collections if len(c.get_facecolor()) and c.get_facecolor()[0][3] > 0]
    assert len(points) == 2 and all(wcag_contrast(c.get_facecolor()[0], "white") >= 3 for c in points)
    assert axes[0].get_xlabel().startswith("learning rate") and not overlaps(fig)

    many = figures.plot_slice(_toy_study(15))[0].figure
    assert len(many.axes) == 3 and not many.legends  # two panels and a colour bar of trial numbers
    assert "trial number" in many.axes[-1].get_ylabel()
    saved = figures.save_plots(_toy_study(2), tmp_path)
    assert [p.name for p in saved] == ["history.png", "slice.png", "importance.png"]
