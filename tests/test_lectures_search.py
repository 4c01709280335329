"""`optbench lectures` with a search claim: each seed one real `optbench search` per group, read at its chosen trial."""

import json

import pandas as pd
import pytest
from PIL import Image

from optbench import lectures

from conftest import optbench

pytest.importorskip("optuna")

# each run evaluated at its first and last step only (trainer.eval_every unset): an evaluation reads the whole
# 10,000-image test split, and one every step (11 a run) was most of the claim's time
TINY_SEARCH = """\
# Random against grid search over the learning rate, 2 trials each: a tiny search claim
quote: "better than grid method if hyper-parameter number is higher"
lecture: 002_dec716290824bb7e.txt
overrides: [diagnostics=off, optimizer=sgd, "model.hidden=[16]", trainer.max_steps=10, data.train_eval_size=500,
            data.val_size=1000, device=cpu, trainer.checkpoint_every=0]
search:
  space: {optimizer.lr: "log(0.01, 0.3)"}
  trials: 2
groups:
  grid: {sampler: grid, grid_points: 2}
  random: {sampler: random}
seeds: 2
quantity: best_val_acc
predict: ["random > grid"]
"""


@pytest.fixture(scope="module")
def searched(mnist_root, tmp_path_factory):
    catalogue, out = tmp_path_factory.mktemp("catalogue"), tmp_path_factory.mktemp("lectures")
    (catalogue / "tiny_search.yaml").write_text(TINY_SEARCH)
    args = ("lectures", "run", "tiny_search", f"data.root={mnist_root}", "--catalogue", str(catalogue),
            "--out", str(out))
    first = optbench(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    return out, args, first.stdout


def _trials(out, group, seed) -> pd.DataFrame:
    return pd.read_csv(out / "tiny_search" / "runs" / group / f"seed={seed}" / "search" / "trials.csv")


def test_each_seed_is_one_search_per_group_scored_at_the_trial_it_chose(searched):
    out, _, stdout = searched
    result = json.loads((out / "tiny_search" / "verdict.json").read_text())
    # two seeds decide nothing here, and the page says what they could have resolved
    assert "tiny_search: not resolved (at 2 seeds" in stdout and result["verdict"] == "not resolved"
    for group in result["groups"]:
        # the search's own table of its trials: the value of each seed is its best trial's validation accuracy
        best = [_trials(out, group["group"], seed).val_acc_mean.max() for seed in (0, 1)]
        assert group["n"] == 2 and group["values"] == pytest.approx(best)
    row = result["comparisons"][0]
    assert row["paired"] and row["seeds"] == 2
    grid = [sorted(_trials(out, "grid", seed)["optimizer.lr"]) for seed in (0, 1)]
    assert grid[0] == grid[1] == pytest.approx([0.01, 0.3])  # the grid is the range's ends, whatever the seed
    random = [set(_trials(out, "random", seed)["optimizer.lr"]) for seed in (0, 1)]
    assert all(len(r) == 2 for r in random) and not random[0] & random[1]  # two independent random searches
    with Image.open(out / result["figure"]) as image:
        assert image.size[0] > 1000


def test_running_a_search_claim_again_trains_nothing(searched):
    out, args, _ = searched
    runs = sorted((out / "tiny_search" / "runs").rglob("summary.json"))
    before = {p: p.stat().st_mtime_ns for p in runs}
    again = optbench(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(runs) == 8 and {p: p.stat().st_mtime_ns for p in runs} == before
    assert sorted((out / "tiny_search" / "runs").rglob("summary.json")) == runs


def test_an_unfinished_search_gives_no_value():
    spec = {"space": {"optimizer.lr": "log(0.01, 0.3)"}, "sampler": "random", "trials": 3}
    trials = [{"trial": i, "status": "completed", "summary": {"best_val_acc": v}} for i, v in enumerate([0.5, 0.9])]
    assert lectures.chosen_trial(trials, spec) is None  # 2 of 3 trials: the search has not chosen yet
    diverged = {"trial": 2, "status": "diverged", "summary": {"best_val_acc": 0.95}}
    assert lectures.chosen_trial([*trials, diverged], spec)["trial"] == 1  # a diverged trial counts, is not chosen


def test_a_failed_search_does_not_keep_the_claims_other_searches_from_running(monkeypatch, tmp_path):
    import yaml

    from optbench.lectures import running

    ran = []
    monkeypatch.setattr(running, "_search", lambda claim, out, scale, extra, group, spec, seed:
                        ran.append((group, seed)) or group != "grid")  # every grid search fails
    assert running.train({"name": "tiny_search", **yaml.safe_load(TINY_SEARCH)}, tmp_path) is False
    assert sorted(ran) == [("grid", 0), ("grid", 1), ("random", 0), ("random", 1)]
