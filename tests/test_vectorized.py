"""The vectorized sweep path: K models in one pass match K separate trainer.fit runs, and the launcher uses it."""

import json
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch

from optbench.errors import UserError
from optbench.trainer import fit, fit_pass
from optbench.vectorized import plan, why_not

from conftest import compose, optbench

STEPS = ["trainer.max_steps=8", "trainer.eval_every=4"]


def cfg_for(root, *overrides):
    # diagnostics off unless a case asks for them: most cases test the optimizers, and that is faster
    diagnostics = [] if any(o.startswith("diagnostics=") for o in overrides) else ["diagnostics=off"]
    return compose(f"data.root={root}", "device=cpu", *diagnostics, *STEPS, *overrides)


def metrics(run_dir):
    m = pd.read_csv(run_dir / "metrics.csv")
    return m[m.metric != "train_time"].reset_index(drop=True)  # wall-clock times differ by nature


@pytest.mark.parametrize(
    "runs",
    [
        # plain SGD, with one learning rate that diverges while the others go on
        [["optimizer=sgd", "seed=0"], ["optimizer=sgd", "seed=1", "optimizer.lr=0.05"],
         ["optimizer=sgd", "seed=2", "optimizer.lr=1e6"]],
        [["optimizer=momentum", "seed=0"], ["optimizer=momentum", "seed=3", "optimizer.lr=0.02"]],
        [["optimizer=adam", "seed=0"],
         ["optimizer=adam", "seed=1", "optimizer.lr=0.003", "optimizer.betas=[0.8,0.99]"]],
        # per-model batch-norm statistics
        # (SGD: Adam's first steps normalise gradients that batch norm makes ~0 to +-lr, amplifying rounding)
        [["model.batchnorm=pre", "optimizer=sgd", "seed=0"], ["model.batchnorm=pre", "optimizer=sgd", "seed=1"]],
        # the evaluation diagnostics (probe statistics, update sizes, histograms at every evaluation, flags)
        [["diagnostics=full", "optimizer=momentum", "seed=0"],
         ["diagnostics=full", "optimizer=momentum", "seed=1", "optimizer.lr=0.03"]],
        # features that once sent a sweep one run at a time: each acts on each run of the pass alone
        [["optimizer=sgd", "seed=0", "trainer.patience=1", "trainer.min_delta=10"],
         ["optimizer=sgd", "seed=1", "trainer.patience=1", "trainer.min_delta=10"]],
        [["optimizer=adam", "seed=0", "model.dropout=0.2", "data.augment_shift=2"],
         ["optimizer=adam", "seed=1", "model.dropout=0.2", "data.augment_shift=2"]],
        [["optimizer=sgd", "seed=0", "trainer.clip_grad_value=0.01", "trainer.l1=1e-4"],
         ["optimizer=momentum", "seed=1", "trainer.clip_grad_value=0.01", "trainer.l1=1e-4"]],
        [["optimizer=sgd", "seed=0", "trainer.amp=true"], ["optimizer=sgd", "seed=1", "trainer.amp=true"]],
    ],
    ids=["sgd+diverging", "momentum", "adam", "sgd+batchnorm", "momentum+diagnostics", "early-stopping",
         "dropout+shift", "clip-value+l1", "amp"],
)
def test_one_pass_matches_separate_runs(mnist_root, tmp_path, runs):
    cfgs = [cfg_for(mnist_root, *r) for r in runs]
    separate = [fit(c, tmp_path / f"separate{i}") for i, c in enumerate(cfgs)]
    together = fit_pass(cfgs, [tmp_path / f"vectorized{i}" for i in range(len(cfgs))])
    for b in together:  # each run's training time is its share of the pass: the pass's over its K models
        assert b["train_time"] == pytest.approx(b["vectorized"]["pass_train_time"] / len(cfgs), abs=1e-3)
    for i, (a, b) in enumerate(zip(separate, together)):
        one, many = tmp_path / f"separate{i}", tmp_path / f"vectorized{i}"
        assert {"config.yaml", "metrics.csv", "summary.json", "init.pt"} <= {p.name for p in many.iterdir()}
        ma, mb = metrics(one), metrics(many)
        pd.testing.assert_frame_equal(ma.drop(columns="value"), mb.drop(columns="value"))
        pd.testing.assert_series_equal(ma.value, mb.value, rtol=1e-5, atol=1e-6)
        assert set(b) - set(a) == {"vectorized"} and set(a) <= set(b)
        assert b.get("stopped_early") == a.get("stopped_early") and b.get("clipped_steps") == a.get("clipped_steps")
        assert ((b["status"], b.get("diverged_at_step"), b["step"])
                == (a["status"], a.get("diverged_at_step"), a["step"]))
        assert json.loads((many / "summary.json").read_text())["status"] == b["status"]
        assert b["flags"] == a["flags"] and b["diagnostics"] == a["diagnostics"]
        ha, hb = (pd.read_csv(d / "histograms.csv") for d in (one, many))
        pd.testing.assert_frame_equal(ha.drop(columns=["lo", "hi", "count"]), hb.drop(columns=["lo", "hi", "count"]))
        pd.testing.assert_frame_equal(ha[["lo", "hi"]], hb[["lo", "hi"]], rtol=1e-4)
        # rounding moves the odd value across a bin edge: at most 0.1% of the values change bins
        assert (ha["count"] - hb["count"]).abs().sum() <= 1e-3 * ha["count"].sum()
        assert (one / "checkpoint.pt").exists() == (many / "checkpoint.pt").exists()
        if a["status"] == "completed" and not a["stopped_early"]:
            wa = torch.load(one / "checkpoint.pt")["model"]
            wb = torch.load(many / "checkpoint.pt")["model"]
            assert wa.keys() == wb.keys()
            for key in wa:
                torch.testing.assert_close(wb[key], wa[key], rtol=1e-5, atol=1e-6, msg=key)
    statuses = [s["status"] for s in together]
    assert statuses.count("completed") >= len(runs) - 1


def test_plan_groups_what_can_share_a_pass(mnist_root):
    cfgs = [cfg_for(mnist_root, f"seed={s}") for s in range(3)]
    cfgs.append(cfg_for(mnist_root, "optimizer=sgd", "optimizer.lr=0.3"))  # other optimizer: same pass
    cfgs.append(cfg_for(mnist_root, "model.hidden=[64]"))  # other model: its own pass
    cfgs.append(cfg_for(mnist_root, "optimizer=lbfgs"))  # a line search per model: alone
    cfgs.append(cfg_for(mnist_root, "trainer.vectorize=off", "seed=9"))
    assert plan(cfgs) == [[0, 1, 2, 3], [4], [5], [6]]
    assert "L-BFGS" in why_not(cfgs[5])
    with pytest.raises(UserError, match="trainer.vectorize=on"):
        plan([cfg_for(mnist_root, "optimizer=lbfgs", "trainer.vectorize=on")])
    with pytest.raises(UserError, match="trainer.vectorize"):
        plan([cfg_for(mnist_root, "trainer.vectorize=sometimes")])


def test_multirun_trains_one_pass_into_ordinary_run_dirs(mnist_root, tmp_path):
    out = optbench("train", "-m", f"data.root={mnist_root}", "device=cpu", "diagnostics=off", "trainer.max_steps=3",
                   "seed=0,1", f"hydra.sweep.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    assert "1 vectorized pass" in out.stdout + out.stderr
    dirs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert len(dirs) == 2
    for d in dirs:
        assert {"config.yaml", "metrics.csv", "summary.json", "init.pt", "checkpoint.pt", "train.log", ".hydra"} <= {
            p.name for p in d.iterdir()}
        summary = json.loads((d / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["vectorized"]["models"] == 2
        assert "epoch 1 step 3" in (d / "train.log").read_text()


def test_sweep_that_cannot_be_vectorized_runs_as_with_the_basic_launcher(mnist_root, tmp_path):
    args = ["train", "-m", f"data.root={mnist_root}", "device=cpu", "data.train_eval_size=500", "trainer.max_steps=2",
            "optimizer=lbfgs",
            "optimizer.max_iter=2", "trainer.batch_size=2000", "seed=0,1"]
    ours = optbench(*args, f"hydra.sweep.dir={tmp_path / 'ours'}")
    basic = optbench(*args, "hydra/launcher=basic", f"hydra.sweep.dir={tmp_path / 'basic'}")
    assert ours.returncode == basic.returncode == 0, ours.stderr + basic.stderr

    def launcher_lines(out):
        # the one addition: why a job runs on its own (trainer.vectorize=auto says so); the runs' lines and the
        # end-of-sweep summary (times, folders) are optbench's own under either launcher
        lines = [line.split("]", 2)[-1] for line in out.stdout.splitlines() if "[HYDRA]" in line]
        lines = lines[: next(i for i, line in enumerate(lines) if line.startswith(" sweep of "))]
        return [line for line in lines if "runs on its own" not in line and "| best val acc" not in line]

    assert launcher_lines(ours) == launcher_lines(basic)
    for d in sorted(p.name for p in (tmp_path / "basic").iterdir() if p.is_dir()):
        a, b = tmp_path / "basic" / d, tmp_path / "ours" / d
        assert sorted(p.name for p in a.rglob("*")) == sorted(p.name for p in b.rglob("*"))
        pd.testing.assert_frame_equal(metrics(a), metrics(b))
        assert "vectorized" not in json.loads((b / "summary.json").read_text())


def test_a_pass_starts_over_what_a_killed_attempt_left(mnist_root, tmp_path):
    # a run killed by SIGKILL after its first evaluation leaves metrics rows and no checkpoint
    dirs = [tmp_path / "a", tmp_path / "b"]
    dirs[0].mkdir()
    (dirs[0] / "metrics.csv").write_text("step,epoch,split,metric,value\n0,0,val,acc,0.1\n0,0,val,loss,2.3\n")
    fit_pass([cfg_for(mnist_root, f"seed={s}") for s in (0, 1)], dirs)
    rows = metrics(dirs[0])
    assert not rows.duplicated(["step", "split", "metric"]).any()
    pd.testing.assert_frame_equal(rows.drop(columns="value"), metrics(dirs[1]).drop(columns="value"))


def test_a_pass_whose_models_all_diverge_ends_them_all_diverged(mnist_root, tmp_path):
    cfgs = [cfg_for(mnist_root, "optimizer=sgd", "optimizer.lr=1e6", f"seed={s}", "trainer.log_every=1")
            for s in (0, 1)]
    summaries = fit_pass(cfgs, [tmp_path / "a", tmp_path / "b"])
    assert [s["status"] for s in summaries] == ["diverged", "diverged"]
    assert all(s["diverged_at_step"] <= 4 for s in summaries)


def test_an_interrupted_pass_resumes_as_a_pass_to_the_same_metrics(mnist_root, tmp_path):
    # two epochs: the kill lands after the first one's checkpoints, and the pass resumes into the second
    args = ["train", "-m", f"data.root={mnist_root}", "device=cpu", "diagnostics=off", "model.hidden=[32]",
            "data.train_eval_size=1000", "trainer.batch_size=1000", "trainer.epochs=2", "model.dropout=0.1", "seed=0,1"]
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert optbench(*args, f"hydra.sweep.dir={whole}").returncode == 0  # in process: only the killed one needs its own
    command = [sys.executable, "-m", "optbench", *args, f"hydra.sweep.dir={killed}"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while len(list(killed.glob("*/checkpoint.pt"))) < 2 and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    dirs = sorted(p.name for p in whole.iterdir() if p.is_dir())
    assert all(json.loads((killed / d / "summary.json").read_text())["status"] == "running" for d in dirs)
    again = optbench(*args, f"hydra.sweep.dir={killed}")
    assert again.returncode == 0, again.stderr
    assert "1 vectorized pass" in again.stdout + again.stderr
    for d in dirs:
        assert "resuming from the checkpoint" in (killed / d / "train.log").read_text()
        pd.testing.assert_frame_equal(metrics(whole / d), metrics(killed / d))
        a, b = (json.loads((root / d / "summary.json").read_text()) for root in (whole, killed))
        assert b["status"] == "completed" and b["best_val_acc"] == a["best_val_acc"] and b["vectorized"]["models"] == 2


@pytest.mark.fast
def test_each_option_states_its_traits_in_its_own_yaml():
    from optbench.compose import group_options
    from optbench.optimizers import Traits, traits

    stated = {option: traits(compose(f"optimizer={option}").optimizer)
              for option in group_options("optimizer") if option != "custom"}
    # the options torch steps elementwise: before traits, vectorized.ROW_WISE listed their classes
    assert {o for o, t in stated.items() if t.row_wise} == {
        "adadelta", "adagrad", "adam", "adamax", "adamw", "amsgrad", "gd", "momentum", "momentum_ema", "nadam",
        "nadamw", "nesterov", "radam", "rmsprop", "sgd"}
    assert {o for o, t in stated.items() if t.closure} == {"lbfgs"}
    assert {o: t.library for o, t in stated.items() if t.extra == "optimizers"} == {
        "ademamix": "pytorch_optimizer", "adopt": "pytorch_optimizer", "lion": "pytorch_optimizer",
        "soap": "pytorch_optimizer", "schedulefree_adamw": "schedulefree", "schedulefree_sgd": "schedulefree"}
    # a user's optimizer says nothing (the defaults), or declares its traits the same way
    custom = ["optimizer=custom", "optimizer._target_=torch.optim.SGD", "+optimizer.lr=0.1"]
    assert traits(compose(*custom).optimizer) == Traits()
    assert traits(compose(*custom, "+optimizer.traits.row_wise=true").optimizer).row_wise
    with pytest.raises(UserError, match="optimizer.traits.rowwise is not a trait"):
        compose(*custom, "+optimizer.traits.rowwise=true")
