"""The results table, the ranking and skip-completed, on a real multirun and on constructed run directories."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
from omegaconf import OmegaConf

from optbench import results
from optbench.compose import compose_config
from optbench.errors import UserError
from optbench.results import rundir

from conftest import SWEEP, compose, optbench


def sweep(mnist_root, sweep_dir, *extra):
    out = optbench("train", "-m", f"data.root={mnist_root}", *SWEEP, *extra, f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def write_run(run_dir, optimizer, lr, seed, val, test, status="completed", steps=30, evals=(0, 10, 20, 30)):
    """A run directory in optbench's format whose validation accuracy rises linearly to `val`."""
    run_dir.mkdir(parents=True)
    config = {"optimizer": {"_target_": f"torch.optim.{optimizer.upper()}", "lr": lr},
              "model": {"hidden": [8, 8]}, "trainer": {"epochs": 1}, "seed": seed, "device": "cpu"}
    OmegaConf.save(OmegaConf.create(config), run_dir / "config.yaml")
    rows = []
    for step in range(1, steps + 1):
        rows += [(step, 1, "step", "lr", lr), (step, 1, "step", "loss", 2.0 / step),
                 (step, 1, "step", "grad_norm", 1.0 + seed)]
        rows += [(step, 1, "step", f"grad_norm/fc{i}", 0.5 + i) for i in range(3)]
    eval_rows = []
    for step in evals:
        frac = step / evals[-1]
        eval_rows += [(step, 1, "train", "loss", 1.0 - 0.5 * frac), (step, 1, "train", "acc", 0.1 + (val - 0.1) * frac),
                      (step, 1, "val", "loss", 1.0 - 0.4 * frac), (step, 1, "val", "acc", 0.1 + (val - 0.1) * frac),
                      (step, 1, "test", "loss", 1.0), (step, 1, "test", "acc", 0.1 + (test - 0.1) * frac),
                      (step, 1, "run", "train_time", 0.01 * step)]
    metrics = pd.DataFrame(rows + eval_rows, columns=rundir.COLUMNS).sort_values("step", kind="stable")
    metrics.to_csv(run_dir / rundir.METRICS, index=False)
    summary = {"status": status, "choices": {"optimizer": optimizer}, "best_val_acc": val,
               "test_acc_at_best_val": test, "final": {"train_loss": 0.5}, "steps_per_epoch": steps,
               "optimizer_impl": "foreach", "train_time": 0.01 * steps, "wall_time": 1.0}
    rundir.write_json(run_dir / rundir.SUMMARY, summary)


@pytest.fixture
def constructed(tmp_path):
    """Optimizer x gets its best validation score at lr 0.1, but its best test score at lr 0.01."""
    for seed in (0, 1):
        write_run(tmp_path / f"x_0.1_{seed}", "x", 0.1, seed, val=0.95 + 0.01 * seed, test=0.90)
        write_run(tmp_path / f"x_0.01_{seed}", "x", 0.01, seed, val=0.93, test=0.99)
        write_run(tmp_path / f"y_0.1_{seed}", "y", 0.1, seed, val=0.90, test=0.91)
        write_run(tmp_path / f"y_0.01_{seed}", "y", 0.01, seed, val=0.97, test=0.96,
                  status="diverged" if seed else "completed")
    write_run(tmp_path / "y_0.01_2", "y", 0.01, 2, val=0.20, test=0.20, status="running")  # killed: no live process
    return tmp_path


def test_table_has_one_row_per_run_with_config_columns(shared_sweep):
    runs = results.load_runs(shared_sweep)
    assert len(runs) == 4 and set(runs.status) == {"completed"}
    assert sorted(zip(runs["optimizer.name"], runs["seed"])) == [("adam", 0), ("adam", 1), ("sgd", 0), ("sgd", 1)]
    assert dict(zip(runs["optimizer.name"], runs["optimizer.lr"])) == {"sgd": 0.1, "adam": 0.001}
    for column in ("trainer.max_steps", "model.hidden", "best_val_acc", "test_acc_at_best_val", "optimizer_impl",
                   "wall_time", "final.train_loss", "run_dir"):
        assert column in runs, column
    assert (runs["trainer.max_steps"] == 20).all()
    assert results.varied_keys(runs) == ["optimizer.name"]  # seed excluded, lr and _target_ follow the optimizer

    metrics = results.load_metrics(runs)
    assert set(metrics.run) == set(runs.run)
    assert (metrics.groupby("run").step.max() == 20).all()
    evals = metrics[(metrics.split == "train") & (metrics.metric == "loss")]
    assert sorted(evals.step.unique()) == [0, 10, 20]  # the whole-split loss, apart from the mini-batch one
    assert len(metrics[(metrics.split == "step") & (metrics.metric == "loss")]) == 4 * 20


def test_report_writes_tables_pandas_reads_in_one_line(shared_sweep):
    out = optbench("report", str(shared_sweep), "--target", "0.5")
    assert out.returncode == 0, out.stderr
    assert "grouped by optimizer.name" in out.stdout and "adam" in out.stdout and "sgd" in out.stdout
    assert len(pd.read_csv(shared_sweep / "runs.csv")) == 4
    metrics = pd.read_csv(shared_sweep / "metrics.csv.gz")
    assert {"run", "step", "split", "metric", "value"} <= set(metrics.columns)
    ranking = pd.read_csv(shared_sweep / "ranking.csv")
    assert sorted(ranking["optimizer.name"]) == ["adam", "sgd"] and (ranking.runs == 2).all()
    assert ranking.best_val_acc.is_monotonic_decreasing
    md = (shared_sweep / "ranking.md").read_text().splitlines()
    assert md[0].startswith("| optimizer.name |") and len(md) == 4


def test_report_margin_sets_which_groups_share_the_best_rank(shared_sweep, tmp_path):
    ranks = {}
    for margin in ("0", "0.9"):  # none; wider than any accuracy difference of two tiny runs
        out = optbench("report", str(shared_sweep), "--target", "0.5", "--margin", margin,
                       "--out", str(tmp_path / margin))
        assert out.returncode == 0, out.stderr
        ranking = pd.read_csv(tmp_path / margin / "ranking.csv")
        ranks[margin] = sorted(ranking["rank"])
    assert ranks["0.9"] == [1, 1] and ranks["0"] == [1, 2]
    out = optbench("report", str(shared_sweep), "--margin", "2")
    assert out.returncode == 2 and "--margin 2.0 must be" in out.stderr and len(out.stderr.splitlines()) == 1


def test_rerun_skips_completed_and_false_forces(mnist_root, shared_sweep, tmp_path):
    sweep_dir = tmp_path / "sweep"
    shutil.copytree(shared_sweep, sweep_dir)  # this test retrains a run: its own copy, the others read the original
    runs = sorted(sweep_dir.glob("*/metrics.csv"))
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs}
    out = sweep(mnist_root, sweep_dir)
    assert (out.stdout + out.stderr).count("skipped:") == 4
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs} == before

    # the data in another folder, another device setting, a forced resume setting: still the same runs, still skipped
    moved = tmp_path / "elsewhere" / "mnist"
    moved.parent.mkdir()
    moved.symlink_to(mnist_root, target_is_directory=True)
    out = optbench("train", "-m", f"data.root={moved}", *SWEEP, "device=cpu", "trainer.resume=false",
                   f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert (out.stdout + out.stderr).count("skipped:") == 4, out.stdout[-3000:]
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in runs} == before
    assert sorted(sweep_dir.glob("*/metrics.csv")) == runs  # and in the same folders

    # forcing one configuration retrains that one, in its folder, and leaves the others alone
    out = optbench("train", "-m", f"data.root={mnist_root}", "optimizer=sgd", "seed=0", *SWEEP[2:],
                   "trainer.skip_completed=false", f"hydra.sweep.dir={sweep_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(sweep_dir.glob("*/metrics.csv")) == runs
    changed = [p for p in runs if p.stat().st_mtime_ns != before[p][0]]
    assert [p.parent.name for p in changed] == [
        "0_data.train_eval_size=2000,data.val_size=2000,optimizer=sgd,seed=0,trainer.eval_every=10,trainer.max_steps=20"]
    steps = pd.read_csv(changed[0]).query("split == 'step' and metric == 'lr'").step
    assert steps.is_unique and steps.max() == 20  # started over, not appended
    assert json.loads((changed[0].parent / "summary.json").read_text())["status"] == "completed"


def test_same_config_notices_a_changed_default(tmp_path):
    cfg = OmegaConf.create({"optimizer": {"lr": 0.1}, "trainer": {"skip_completed": True}})
    OmegaConf.save(cfg, tmp_path / "config.yaml")
    assert not rundir.config_differences(tmp_path, OmegaConf.create({"optimizer": {"lr": 0.1},
                                                                     "trainer": {"skip_completed": False}}))
    assert rundir.config_differences(tmp_path, OmegaConf.create({"optimizer": {"lr": 0.2}, "trainer": {}}))


def test_where_and_how_a_run_ran_is_not_what_it_computed(tmp_path):
    ran = compose("data.root=/data/here", "device=auto")
    OmegaConf.save(ran, tmp_path / "config.yaml", resolve=True)
    elsewhere = compose("data.root=/mnt/other", "device=cpu", "trainer.resume=false", "trainer.vectorize=off",
                        "trainer.skip_completed=false")
    assert rundir.config_differences(tmp_path, elsewhere) == []
    assert rundir.config_differences(tmp_path, compose("data.root=/data/here", "seed=1")) == ["seed"]
    # the one list: run folders leave out exactly these keys, and reports do not group by them
    hydra = compose_config([], hydra=True).hydra
    assert list(hydra.job.config.override_dirname.exclude_keys) == list(rundir.RUN_SETTINGS)
    assert set(rundir.NOT_FACTORS) == {"seed", *rundir.RUN_SETTINGS}


def test_ranking_chooses_on_validation_even_when_test_disagrees(constructed):
    runs = results.load_runs(constructed)
    assert len(runs) == 9  # diverged and killed runs are rows too
    assert dict(runs.status.value_counts()) == {"completed": 7, "diverged": 1, "incomplete": 1}
    table = results.rank(runs, results.load_metrics(runs), target=0.94)
    assert table.attrs["by"] == ["optimizer.name"] and table.attrs["tuned"] == ["optimizer.lr"]
    assert list(table["optimizer.name"]) == ["y", "x"]  # one row per optimizer, best validation first
    x, y = table.iloc[1], table.iloc[0]
    assert x["optimizer.lr"] == "0.1"  # best validation (0.955), not best test (0.99 at lr 0.01)
    assert x["best_val_acc"] == pytest.approx(0.955) and x["test_acc"] == pytest.approx(0.90)
    # y at lr 0.01: the killed seed 2 (val 0.20) is counted but not averaged in
    assert y["optimizer.lr"] == "0.01" and y["best_val_acc"] == pytest.approx(0.97)
    assert (y["runs"], y["diverged"], y["unfinished"]) == (3, 1, 1)


def test_ranking_counts_diverged_and_unfinished_and_time_to_target(constructed):
    runs = results.load_runs(constructed)
    table = results.rank(runs, results.load_metrics(runs), by=["optimizer"], target=0.94)
    x = table.set_index("optimizer.name").loc["x"]
    assert x["reached"] == 2 and x["runs"] == 2 and x["diverged"] == 0
    # val acc rises linearly from 0.1 at step 0 to 0.95/0.96 at step 30: first evaluation >= 0.94 is step 30
    assert x["steps_to_target"] == 30 and x["time_to_target"] == pytest.approx(0.30)
    text = results.format_ranking(table)
    assert "reached 94%" in text.columns and text.loc[1, "best val acc"].startswith("0.9550 ± ")


def test_report_on_empty_or_missing_dir_is_one_line(tmp_path):
    for target in (tmp_path, tmp_path / "nope"):
        out = optbench("report", str(target))
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and out.stderr.startswith("optbench: error:")
    with pytest.raises(UserError, match="no runs"):
        results.load_runs(tmp_path)


def test_unknown_by_key_names_the_keys_that_varied(constructed):
    out = optbench("report", str(constructed), "--by", "optimiser")
    assert out.returncode == 2 and "optimizer.name" in out.stderr and "Traceback" not in out.stderr


def test_live_running_run_is_running_and_killed_one_incomplete(tmp_path):
    write_run(tmp_path / "a", "x", 0.1, 0, 0.5, 0.5, status="running")
    rundir.write_json(tmp_path / "a" / rundir.PROCESS, {"host": os.uname().nodename, "pid": os.getpid()})  # alive
    write_run(tmp_path / "b", "x", 0.1, 1, 0.5, 0.5, status="running")
    rundir.write_json(tmp_path / "b" / rundir.PROCESS, {"host": os.uname().nodename, "pid": 2**22 + 1})
    runs = results.load_runs(tmp_path)
    assert dict(zip(runs.run, runs.status)) == {"a": "running", "b": "incomplete"}


def test_export_tensorboard_reads_back(shared_sweep, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = optbench("export", "tensorboard", str(shared_sweep), "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    runs = sorted(p.parent for p in tmp_path.glob("*/*/events.out.tfevents.*"))
    assert [p.relative_to(tmp_path).as_posix() for p in runs] == [
        "optimizer.name=adam/seed=0", "optimizer.name=adam/seed=1",
        "optimizer.name=sgd/seed=0", "optimizer.name=sgd/seed=1"]
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    metrics = pd.read_csv(next(shared_sweep.glob("*optimizer=adam,seed=0*/metrics.csv")))
    val = metrics.query("split == 'val' and metric == 'acc'")
    scalars = events.Scalars("val/acc")
    assert [e.step for e in scalars] == list(val.step) and [e.value for e in scalars] == pytest.approx(list(val.value))
    assert len(events.Scalars("step/loss")) == 20 and len(events.Scalars("train/loss")) == 3
    assert "step/grad_norm/fc0" in events.Tags()["scalars"]


def test_runs_whose_names_sort_alike_come_in_the_same_order_in_every_process(tmp_path):
    """0.001, 0.01 and 0.1 all read as the number 1 to the natural sort: their order must not follow the hash seed."""
    for lr in ("0.1", "0.001", "0.01", "1e-4"):
        (tmp_path / f"lr_{lr}_0").mkdir()
        (tmp_path / f"lr_{lr}_0" / "summary.json").write_text("{}")
    code = f"from optbench import results; print([p.name for p in results.find_runs([{str(tmp_path)!r}])])"
    orders = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout for seed in range(6)}
    assert len(orders) == 1, orders
