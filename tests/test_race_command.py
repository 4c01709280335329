"""`optbench race` end to end at a tiny scale on real MNIST: equal budgets, an edge flagged, the page, a refused
change on resume, and a killed race that resumes to the same ledger as an uninterrupted one."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from conftest import optbench

# 2 optimizers x 4 trials x 20 steps; seeds 2 then 3; [32] hidden units on 500/1000-image evaluation subsets,
# evaluated at steps 0, 10 and 20 (the race's own cadence, every tenth of the steps, would evaluate the full test set
# 11 times a run: most of a tiny race's time)
TINY = ("--optimizers", "adamw,sgd", "--trials", "4", "--steps", "20", "--seeds", "2,1,3", "--threads", "1",
        "data.train_eval_size=500", "data.val_size=1000", "model.hidden=[32]", "trainer.eval_every=10")
# sgd's rates 1e-5..1e-4 are far too small for 20 steps: its best is the largest choice, the range's edge
SGD_SPACE = "optimizer.lr: choice(0.00001, 0.00003, 0.0001)\n"
LEDGER = ["optimizer", "phase", "trials", "runs", "steps", "seeds", "flops"]


def _args(tmp_path, mnist_root, race_dir):
    space = tmp_path / "sgd_space.yaml"
    space.write_text(SGD_SPACE)
    return [*TINY, "--space", f"sgd:{space}", "--dir", str(race_dir), f"data.root={mnist_root}"]


@pytest.fixture(scope="module")
def race(tmp_path_factory, mnist_root):
    tmp = tmp_path_factory.mktemp("race")
    out = optbench("race", *_args(tmp, mnist_root, tmp / "race"))
    assert out.returncode == 0, out.stderr[-3000:]
    return tmp, tmp / "race"


def test_every_optimizer_gets_the_same_tuning_budget_and_the_edge_is_flagged(race):
    _, race_dir = race
    ledger = pd.read_csv(race_dir / "ledger.csv")
    tuning = ledger[ledger.phase == "tuning"].set_index("optimizer")
    assert list(tuning.index) == ["adamw", "sgd"]
    assert tuning["trials"].tolist() == [4, 4] and tuning["steps"].tolist() == [80, 80]
    assert tuning["flops"].tolist() == [6 * 25450 * 128 * 80] * 2
    seeds = ledger[ledger.phase == "seeds"]
    assert seeds["seeds"].nunique() == 1 and seeds["steps"].tolist() == [20 * seeds["seeds"].iloc[0]] * 2
    chosen = pd.read_csv(race_dir / "chosen_table.csv").set_index("optimizer")
    assert chosen.loc["sgd", "edges"] == "optimizer.lr high"
    assert chosen.loc["sgd", "optimizer.lr"] == pytest.approx(1e-4)
    page = (race_dir / "race.md").read_text()
    assert "sgd: optimizer.lr = 0.0001 at the high edge of its range" in page
    assert "Equal in trials and steps." in page


def test_the_page_states_verdicts_the_test_sets_limit_and_the_command(race):
    _, race_dir = race
    page = (race_dir / "race.md").read_text()
    verdicts = pd.read_csv(race_dir / "verdicts.csv")
    assert verdicts.loc[0, "leader"] == "adamw" and verdicts.loc[0, "other"] == "sgd"
    assert bool(verdicts.loc[0, "resolved"])  # sgd at 1e-4 for 20 steps barely moves: resolved at once
    limits = pd.read_csv(race_dir / "limits.csv")
    assert limits.loc[0, "images"] == 10000 and 0 < limits.loc[0, "resolvable"] < 0.05
    assert "this test set resolves differences of" in page
    assert f"--dir {race_dir}" in page and (race_dir / "race.html").read_text().count("data:image/png;base64,") == 1


def test_a_resumed_race_refuses_changed_settings(race, mnist_root):
    tmp, race_dir = race
    args = _args(tmp, mnist_root, race_dir)
    args[args.index("--trials") + 1] = "5"
    out = optbench("race", *args)
    assert out.returncode == 2 and "holds a race with other trials" in out.stderr


def test_a_killed_race_resumes_to_the_ledger_of_an_uninterrupted_one(race, mnist_root, tmp_path):
    _, whole = race
    race_dir = tmp_path / "killed"
    command = [sys.executable, "-m", "optbench", "race", *_args(tmp_path, mnist_root, race_dir)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    runs = race_dir / "tuning" / "adamw" / "study0" / "runs"
    deadline = time.monotonic() + 120
    while not (runs.is_dir() and len(list(runs.glob("*/summary.json"))) >= 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)  # mid-search: a trial RUNNING in the study, a run half written
    process.wait()
    assert not (race_dir / "race.md").exists()
    out = optbench("race", "--dir", str(race_dir), f"data.root={mnist_root}")
    assert out.returncode == 0, out.stderr[-3000:]
    # the killed trial was rerun, not counted: the study holds it as FAIL beside 4 finished trials
    states = pd.read_csv(race_dir / "tuning" / "adamw" / "study0" / "trials.csv")["state"].tolist()
    assert states.count("COMPLETE") == 4 and "FAIL" in states
    resumed, uninterrupted = (pd.read_csv(d / "ledger.csv")[LEDGER] for d in (race_dir, whole))
    pd.testing.assert_frame_equal(resumed, uninterrupted)


def test_workers_sharing_a_journal_storage_run_the_same_race(race, mnist_root, tmp_path):
    _, whole = race
    race_dir = tmp_path / "shared"
    journal = tmp_path / "studies.log"
    out = optbench("race", *_args(tmp_path, mnist_root, race_dir), "--storage", str(journal), "--workers", "2",
                   "--cluster", "local")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "submitted 2 workers to local" in out.stdout and not list(race_dir.glob("tuning/*/*/study.db"))
    # the studies live in the journal, named after the race and the study's folder; two workers ran them
    for optimizer in ("adamw", "sgd"):
        trials = pd.read_csv(race_dir / "tuning" / optimizer / "study0" / "trials.csv")
        assert trials["state"].tolist().count("COMPLETE") == 4
    workers = {w for f in race_dir.glob("tuning/*/study0/trials.csv") for w in pd.read_csv(f)["worker"].dropna()}
    assert len(workers) == 2, workers
    assert f"--storage {journal}" in (race_dir / "race.md").read_text()
    shared, alone = (pd.read_csv(d / "ledger.csv")[LEDGER] for d in (race_dir, whole))
    pd.testing.assert_frame_equal(shared, alone)
    chosen = [pd.read_csv(d / "chosen_table.csv")[["optimizer", "optimizer.lr"]] for d in (race_dir, whole)]
    pd.testing.assert_frame_equal(*chosen)


def test_a_race_resumed_with_storage_it_was_not_started_with_is_refused(race, mnist_root, tmp_path):
    tmp, race_dir = race
    out = optbench("race", "--dir", str(race_dir), "--storage", str(tmp_path / "s.log"), f"data.root={mnist_root}")
    assert out.returncode == 2 and "keeps its studies in study.db" in out.stderr
    out = optbench("race", "--optimizers", "adamw,sgd", "--workers", "2", "--dir", str(tmp_path / "w"))
    assert out.returncode == 2 and "--workers needs --storage" in out.stderr and not (tmp_path / "w").exists()


@pytest.mark.parametrize("args, message", [
    (("--optimizers", "adamw"), "a race needs two or more different optimizers"),
    (("--optimizers", "adamw,nosuch"), "nosuch"),
    (("--optimizers", "adamw,sgd", "--seeds", "1,1,3"), "FIRST >= 2"),
    (("--optimizers", "adamw,sgd", "--trials", "0"), "--trials=0 must be >= 1"),
    (("--optimizers", "adamw,sgd", "--shapes", "[0]"), "positive widths"),
    (("--optimizers", "adamw,sgd", "--space", "sgd"), "write OPTIMIZER:FILE.yaml"),
    ((), "--optimizers is needed"),
    (("--optimizers", "adamw,sgd", "trainer.nosuch=1"), "nosuch"),
])
def test_a_mistake_is_one_line_and_leaves_no_race_directory(tmp_path, args, message):
    out = optbench("race", *args, "--dir", str(tmp_path / "race"))
    assert out.returncode == 2 and message in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "race").exists()
