"""Bad input gets one clear line and a non-zero exit, never a traceback (issue 6)."""

import errno
import itertools
import json
import resource
import signal
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from optbench.cli import main

from conftest import optbench


def _dry(capsys, *overrides):
    code = main(["train", "--dry-run", *overrides])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.parametrize(
    "overrides, words",
    [
        (["optimizer=adamm"], "did you mean adam"),
        (["init=he"], "choices:"),
        (["optimizer.lrr=0.1"], "optimizer.lrr"),
        (["trainer.epochs=abc"], "trainer.epochs=abc"),
        (["optimizer.lr=-0.1"], "Invalid learning rate"),
        (["optimizer=momentum", "optimizer.momentum=-0.5"], "momentum"),
        (["optimizer.betas=[0.9,1.5]"], "beta"),
        (["optimizer.betas=[0.9]"], "optimizer.betas=[0.9] must be a list of 2 numbers"),
        (["optimizer.betas=7"], "optimizer.betas=7 must be a list of 2 numbers"),
        (["optimizer=momentum", "optimizer.momentum=[0.9]"], "optimizer.momentum=[0.9] must be a number"),
        (["optimizer=lbfgs", "optimizer.max_iter=true"], "optimizer.max_iter=true must be a number"),
        (["+optimizer.amsgrad=1"], "optimizer.amsgrad=1 must be true or false"),
        (["+optimizer.momentum=0.9"], "optimizer.momentum is not an argument of torch.optim.Adam"),
        (["schedule=plateau", "schedule.interval=step"], "schedule.interval=step cannot step"),
        (["schedule=cosine", "schedule.interval=eval"], "schedule.interval=eval cannot step"),
        (["model.dropout=1.0"], "model.dropout"),
        (["trainer.batch_size=0"], "trainer.batch_size"),
        (["trainer.batch_size=50001"], "trainer.batch_size"),
        (["model.hidden=[64,0]"], "model.hidden"),
        (["trainer.eval_every=0"], "trainer.eval_every"),
        (["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm"),
        (["optimizer=nesterov", "optimizer.momentum=0"], "Nesterov"),
        (["optimizer=lbfgs", "trainer.clip_grad_value=1"], "lbfgs"),
        (["device=cuda"] if not __import__("torch").cuda.is_available() else ["device=nonsense"], "device="),
        (["model.activation=relux"], "model.activation"),
        (["diagnostics.level=loud"], "diagnostics.level"),
        (["data.train_eval_size=0"], "data.train_eval_size"),
        (["trainer.compile=fast"], "trainer.compile"),
    ],
)
def test_each_bad_input_is_one_line_naming_the_problem(capsys, mnist_root, overrides, words):
    code, out, err = _dry(capsys, f"data.root={mnist_root}", *overrides)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("optbench: error: ") and words in err, err


def test_a_good_config_builds_in_a_dry_run(capsys, mnist_root):
    code, out, err = _dry(capsys, f"data.root={mnist_root}", "optimizer=gd")
    assert code == 0 and "1 per epoch" in out and err == ""


VALUES = {
    "optimizer": st.sampled_from(["sgd", "adam", "lbfgs", "gd", "nesterov", "rmsprop", "adamm", ""]),
    "optimizer.lr": st.sampled_from(["0.1", "-1", "0", "1e9", "abc", "null"]),
    "optimizer.momentum": st.sampled_from(["0.9", "-0.5", "0", "x"]),
    "optimizer.betas": st.sampled_from(["[0.9,0.999]", "[1.5,0.9]", "[0.9]", "7"]),
    "trainer.batch_size": st.sampled_from(["1", "128", "0", "-3", "50000", "60000", "null", "1.5"]),
    "trainer.epochs": st.sampled_from(["1", "0", "-1", "abc"]),
    "trainer.eval_every": st.sampled_from(["1", "0", "null", "-2"]),
    "trainer.clip_grad_norm": st.sampled_from(["1.0", "0", "-1", "null"]),
    "model.hidden": st.sampled_from(["[32]", "[]", "[0]", "[16,-4]", "abc", "[8,8]"]),
    "model.activation": st.sampled_from(["relu", "sigmoid", "tanh", "swish", "identity"]),
    "model.dropout": st.sampled_from(["0.5", "1.0", "-0.1", "x"]),
    "model.batchnorm": st.sampled_from(["none", "pre", "post", "middle"]),
    "schedule": st.sampled_from(["constant", "cosine", "plateau", "warmup", "one_cycle", "bogus"]),
    "init": st.sampled_from(["default", "zeros", "he_normal", "normal", "xavier"]),
    "loss": st.sampled_from(["cross_entropy", "mse", "hinge"]),
    "device": st.sampled_from(["cpu", "auto", "cuda", "tpu"]),
    "diagnostics": st.sampled_from(["off", "basic", "full", "loud"]),
    "nonsense.key": st.sampled_from(["1"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(VALUES)), st.none(), min_size=1, max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: VALUES[k] for k in keys})))
def test_random_overrides_either_build_or_fail_in_one_line(capsys, mnist_root, overrides):
    code, out, err = _dry(capsys, f"data.root={mnist_root}", *(f"{k}={v}" for k, v in overrides.items()))
    if code == 0:
        assert out.startswith("ok: ") and err == ""
    else:
        assert code == 2, err
        assert err.count("\n") == 1 and err.startswith("optbench: error: "), err


# what a few training steps can meet: every group, and the keys whose values steer the loop
TRAINING = {
    "optimizer": st.sampled_from(["sgd", "adam", "lbfgs", "gd", "momentum_ema", "nesterov", "rmsprop", "adagrad",
                                  "adadelta", "amsgrad"]),
    "optimizer.lr": st.sampled_from(["0.1", "1e9", "0", "-1"]),
    "model.hidden": st.sampled_from(["[]", "[8]", "[8,8]", "[0]"]),
    "model.activation": st.sampled_from(["relu", "sigmoid", "tanh", "identity", "gelu"]),
    "model.batchnorm": st.sampled_from(["none", "pre", "post"]),
    "model.dropout": st.sampled_from(["0.0", "0.5"]),
    "schedule": st.sampled_from(["constant", "cosine", "plateau", "warmup", "one_cycle", "cyclic", "step",
                                 "warm_restarts", "linear", "trapezoidal"]),
    "schedule.interval": st.sampled_from(["step", "epoch", "eval"]),
    "init": st.sampled_from(["default", "zeros", "he_normal", "orthogonal", "constant"]),
    "loss": st.sampled_from(["cross_entropy", "mse"]),
    "diagnostics": st.sampled_from(["off", "basic", "full"]),
    "trainer.batch_size": st.sampled_from(["1", "2", "5", "32"]),
    "trainer.eval_every": st.sampled_from(["1", "2", "null"]),
    "trainer.log_every": st.sampled_from(["1", "3"]),
    "trainer.clip_grad_norm": st.sampled_from(["null", "1.0", "1e-12"]),
    "trainer.clip_grad_value": st.sampled_from(["null", "0.01"]),
    "trainer.l1": st.sampled_from(["0.0", "0.01"]),
    "trainer.patience": st.sampled_from(["null", "1"]),
    "trainer.checkpoint_every": st.sampled_from(["0", "1"]),
    "trainer.amp": st.sampled_from(["false", "true"]),
    "data.augment_shift": st.sampled_from(["0", "2"]),
}


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(st.sampled_from(sorted(TRAINING)), st.none(), min_size=1, max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: TRAINING[k] for k in keys})))
# what these found: tracebacks from the diagnostics probe (no hidden layer) and a plateau schedule stepped per step
@example({"model.hidden": "[]"})
@example({"schedule": "plateau", "schedule.interval": "step"})
def test_a_few_training_steps_end_in_a_result_a_divergence_or_one_line(mnist_root, tmp_path, overrides):
    """`optbench train` on generated configurations, through the loop: never a traceback."""
    run_dir = tmp_path / str(next(RUN_NUMBERS))
    # a small model, 4 steps, 256-image evaluation subsets: what is under test is the loop, not the numbers
    out = optbench("train", f"data.root={mnist_root}", "device=cpu", "model.hidden=[16]", "trainer.max_steps=4",
                   "data.train_eval_size=256", "data.val_size=256", "diagnostics.probe_size=64",
                   *(f"{k}={v}" for k, v in overrides.items()), f"hydra.run.dir={run_dir}")
    assert "Traceback" not in out.stdout + out.stderr, out.stderr
    if out.returncode == 0:
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"] in ("completed", "diverged"), summary
        assert summary["status"] == "completed" or summary["reason"], summary  # a divergence says where
    else:
        assert out.returncode == 2, out.stderr
        assert out.stderr.startswith("optbench: error: ") and out.stderr.count("\n") == 1, out.stderr


RUN_NUMBERS = itertools.count()


def test_logistic_regression_trains_with_diagnostics(mnist_root, tmp_path):
    """model.hidden=[] (DeepOBS's mnist_logreg): no hidden layer for the probe, still every diagnostic it can give."""
    out = optbench("train", f"data.root={mnist_root}", "device=cpu", "model.hidden=[]", "diagnostics=full",
                   "trainer.max_steps=5", "trainer.eval_every=5", "data.train_eval_size=500",
                   f"hydra.run.dir={tmp_path}")
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["n_params"] == 784 * 10 + 10
    assert summary["best_val_acc"] > 0.25  # five Adam steps of a linear model already beat chance (0.1)
    import pandas as pd

    diag = pd.read_csv(tmp_path / "metrics.csv").query("split == 'diag'")
    assert set(diag.metric) >= {"weight_norm/fc0", "update_size/fc0", "distance/fc0"}  # no hidden layer to probe


def test_report_and_plot_on_a_directory_without_runs(tmp_path):
    for command in ("report", "plot"):
        out = optbench(command, str(tmp_path))
        assert out.returncode == 2 and out.stderr.count("\n") == 1 and "no runs" in out.stderr, out.stderr


def _limit_file_size():
    # every file the run writes may hold 100 kB: metrics.csv fills up like a full disk (EFBIG instead of ENOSPC)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


def test_a_full_disk_fails_the_run_in_one_line_and_keeps_the_rows_written(mnist_root, tmp_path):
    out = subprocess.run(
        # step 0's evaluation on 1000 validation and 500 training images, not 10,000 and all 50,000: the rows
        # that fill the file are the steps' (about 250 of them before 100 kB)
        [sys.executable, "-m", "optbench", "train", f"data.root={mnist_root}", "trainer.max_steps=3000",
         "model.hidden=[16]", "trainer.checkpoint_every=0", "data.val_size=1000", "data.train_eval_size=500",
         f"hydra.run.dir={tmp_path}"],
        capture_output=True, text=True, preexec_fn=_limit_file_size, timeout=300,
    )
    assert out.returncode != 0
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("optbench: error: ") and "disk" in last and "Traceback" not in out.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and f"Errno {errno.EFBIG}" in summary["reason"]
    import pandas as pd

    rows = pd.read_csv(tmp_path / "metrics.csv", on_bad_lines="skip")
    assert len(rows) > 100 and (rows.step == 0).any()


def test_report_and_plot_cope_with_half_written_runs_and_mixed_schemas(mnist_root, tmp_path):
    import pandas as pd
    from omegaconf import OmegaConf

    from optbench.trainer import fit

    from conftest import compose

    for name, extra in (("a", "optimizer=sgd"), ("b", "optimizer=adam"), ("c", "optimizer=adam")):
        # 1000 validation images, not 10,000: the files are under test, not the evaluation
        fit(compose(f"data.root={mnist_root}", "device=cpu", "trainer.max_steps=10", "data.train_eval_size=1000",
                    "data.val_size=1000", extra),
            tmp_path / name,
            {"optimizer": extra.split("=")[1]})
    # b: written by an older optbench whose config had other keys
    old = OmegaConf.load(tmp_path / "b" / "config.yaml")
    del old.diagnostics
    old.trainer.legacy_knob = 3
    OmegaConf.save(old, tmp_path / "b" / "config.yaml")
    # c: killed while writing: the last metrics row is cut in half, the summary still says running
    metrics = (tmp_path / "c" / "metrics.csv").read_text()
    (tmp_path / "c" / "metrics.csv").write_text(metrics[: len(metrics) - 7])
    summary = json.loads((tmp_path / "c" / "summary.json").read_text())
    (tmp_path / "c" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))

    out = optbench("report", str(tmp_path), "--target", "0.5")
    assert out.returncode == 0, out.stderr
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(runs.status) == ["completed", "completed", "incomplete"]
    assert "trainer.legacy_knob" in runs.columns and runs["trainer.legacy_knob"].notna().sum() == 1
    out = optbench("plot", str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "plots" / "learning_curves.png").stat().st_size > 10_000


def test_a_bad_value_is_refused_at_composition_before_any_run_folder(mnist_root, tmp_path):
    # before: the run started, made its folder, marked it failed and printed two lines
    out = optbench("train", f"data.root={mnist_root}", "model.batchnorm=middle", f"hydra.run.dir={tmp_path / 'run'}")
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("optbench: error: model.batchnorm=middle"), out.stderr
    assert not (tmp_path / "run").exists()
