"""The training loop on the real MNIST files: splits, determinism, divergence, interruption."""

import json
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from optbench import data
from optbench.errors import UserError
from optbench.trainer import fit, make_splits

from conftest import compose, optbench


def cfg_for(root, *overrides):
    return compose(f"data.root={root}", "device=cpu", *overrides)


def test_split_sizes_and_training_statistics(mnist_root):
    arrays = data.load_arrays("mnist", mnist_root)
    split = make_splits(arrays, 10_000, torch.device("cpu"))
    assert [len(split[s][0]) for s in ("train", "val", "test")] == [50_000, 10_000, 10_000]
    train = arrays["train_images"][:50_000].astype(np.float64)
    assert split["mean"].item() == pytest.approx(train.mean(), rel=1e-5)
    assert split["std"].item() == pytest.approx(train.std(ddof=1), rel=1e-4)
    # validation is the tail of the training file, never the test file
    assert torch.equal(split["val"][1], torch.from_numpy(arrays["train_labels"][50_000:]).long())


def test_train_eval_size_evaluates_the_first_n_training_images(mnist_root, tmp_path):
    from optbench.models import build_mlp
    from optbench.trainer import evaluate

    cfg = cfg_for(mnist_root, "model.hidden=[16]", "trainer.max_steps=3", "data.train_eval_size=7")
    fit(cfg, tmp_path / "run")
    m = pd.read_csv(tmp_path / "run" / "metrics.csv")
    train = m[(m.split == "train") & (m.step == 3)].set_index("metric").value
    # the run's final weights, evaluated here on the first 7 training images, give the recorded numbers
    model = build_mlp(**cfg.model)
    model.load_state_dict(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"])
    split = make_splits(data.load_arrays("mnist", mnist_root), 10_000, torch.device("cpu"))
    loss, acc = evaluate(model, torch.nn.CrossEntropyLoss(), split["train"][0][:7], split["train"][1][:7],
                         split["mean"], split["std"]).tolist()
    assert train["loss"] == pytest.approx(loss, rel=1e-5) and train["acc"] == pytest.approx(acc)
    assert round(acc * 7) == pytest.approx(acc * 7)  # a share of 7 images
    full = m[(m.split == "val") & (m.step == 3)].set_index("metric").value  # val keeps its 10k images
    assert round(full["acc"] * 10_000) == pytest.approx(full["acc"] * 10_000, abs=1e-3)


def test_same_seed_gives_identical_metrics(mnist_root, tmp_path):
    cfg = cfg_for(mnist_root, "trainer.max_steps=40", "trainer.eval_every=20", "seed=7")
    fit(cfg, tmp_path / "a")
    fit(cfg, tmp_path / "b")
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in "ab")
    not_time = a.metric != "train_time"
    assert len(a) > 40 * 5
    pd.testing.assert_frame_equal(a[not_time], b[not_time])
    other = cfg_for(mnist_root, "trainer.max_steps=40", "trainer.eval_every=20", "seed=8")
    fit(other, tmp_path / "c")
    c = pd.read_csv(tmp_path / "c" / "metrics.csv")
    assert not np.allclose(a[a.metric == "loss"].value, c[c.metric == "loss"].value)


def test_run_directory_contents_and_per_step_metrics(mnist_root, tmp_path):
    summary = fit(cfg_for(mnist_root, "trainer.max_steps=30", "optimizer=sgd"), tmp_path, {"optimizer": "sgd"})
    assert {"config.yaml", "metrics.csv", "summary.json"} <= {p.name for p in tmp_path.iterdir()}
    m = pd.read_csv(tmp_path / "metrics.csv")
    steps = m[(m.split == "step") & (m.metric == "grad_norm")]
    assert list(steps.step) == list(range(1, 31))
    assert {"loss", "lr", "grad_norm/fc0", "grad_norm/fc1", "grad_norm/fc2"} <= set(m.metric)
    # the global norm is the norm of the per-layer norms
    layers = m[m.metric.str.fullmatch(r"grad_norm/fc\d") & (m.step == 30)].value
    assert len(layers) == 3
    assert steps.value.iloc[-1] == pytest.approx(np.sqrt((layers**2).sum()), rel=1e-4)
    evals = m[(m.metric == "acc")]
    assert set(evals.split) == {"train", "val", "test"} and set(evals.step) == {0, 30}
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk == json.loads(json.dumps(summary, default=str))
    assert on_disk["status"] == "completed" and on_disk["step"] == 30
    assert on_disk["choices"] == {"optimizer": "sgd"} and on_disk["optimizer_impl"] == "fused"
    assert on_disk["versions"]["torch"] == torch.__version__


def test_divergence_ends_the_run_with_status_diverged(mnist_root, tmp_path):
    summary = fit(cfg_for(mnist_root, "optimizer=sgd", "optimizer.lr=1e6", "trainer.max_steps=200"), tmp_path)
    assert summary["status"] == "diverged"
    assert 1 <= summary["diverged_at_step"] < 200
    assert summary["step"] < 200  # stopped early, not after all steps


@pytest.mark.parametrize(
    "override, words",
    [
        ("optimizer.lr=-1", "Invalid learning rate"),
        ("trainer.batch_size=0", "trainer.batch_size"),
        ("trainer.batch_size=50001", "trainer.batch_size"),
        ("model.hidden=[0]", "model.hidden"),
    ],
)
def test_bad_values_raise_user_errors(mnist_root, tmp_path, override, words):
    # set after composition, which refuses some of them itself: the trainer still checks a config it is handed
    cfg = cfg_for(mnist_root, "trainer.max_steps=1")
    key, value = override.split("=", 1)
    OmegaConf.update(cfg, key, yaml.safe_load(value))
    with pytest.raises(UserError, match=words):
        fit(cfg, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"


def test_real_mnist_two_epochs_of_adam_reach_97_percent(mnist_root, tmp_path):
    # batch norm makes 2 epochs enough; the plain default MLP needs ~4 (the README's run uses 10)
    summary = fit(cfg_for(mnist_root, "optimizer=adam", "trainer.epochs=2", "model.batchnorm=pre"), tmp_path)
    assert summary["status"] == "completed" and summary["epoch"] == 2
    assert summary["final"]["test_acc"] >= 0.97


def _start_run(mnist_root, run_dir, *overrides):
    return subprocess.Popen(
        [sys.executable, "-m", "optbench", "train", f"data.root={mnist_root}", "device=cpu",
         f"hydra.run.dir={run_dir}", "trainer.epochs=50", "trainer.eval_every=50", *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def _wait_for_rows(path, timeout=120, size=2000):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and path.stat().st_size > size:
            return
        time.sleep(0.2)
    raise AssertionError(f"{path} never grew")


def test_ctrl_c_ends_cleanly_with_status_interrupted(mnist_root, tmp_path):
    proc = _start_run(mnist_root, tmp_path)
    _wait_for_rows(tmp_path / "metrics.csv")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "Traceback" not in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    m = pd.read_csv(tmp_path / "metrics.csv")
    # the last step was finished, recorded and evaluated
    assert m.step.max() == summary["step"] and (m[m.metric == "acc"].step == summary["step"]).any()


def test_sigkill_keeps_the_metrics_written_so_far(mnist_root, tmp_path):
    proc = _start_run(mnist_root, tmp_path)
    _wait_for_rows(tmp_path / "metrics.csv")
    time.sleep(1.0)
    proc.kill()
    proc.communicate(timeout=60)
    m = pd.read_csv(tmp_path / "metrics.csv")  # still a readable table
    assert (m.metric == "acc").any() and m.step.max() > 0
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "running"  # never "completed"


def _train_cmd(mnist_root, run_dir, *overrides):
    own = any(o.startswith("data.train_eval_size=") for o in overrides)
    return [sys.executable, "-m", "optbench", "train", f"data.root={mnist_root}", "device=cpu",
            f"hydra.run.dir={run_dir}", *([] if own else ["data.train_eval_size=2000"]), *overrides]


def _train_here(mnist_root, run_dir, *overrides):
    """The same `optbench train` in this process (the same threads as the child's): the runs a test does not
    signal need no interpreter of their own."""
    out = optbench(*_train_cmd(mnist_root, run_dir, *overrides)[3:])
    assert out.returncode == 0, out.stderr[-3000:]
    return out


def test_a_killed_run_resumes_to_the_same_metrics_as_an_uninterrupted_one(mnist_root, tmp_path):
    # two epochs: the kill lands after the first one's checkpoint, and the resumed epoch draws its order, dropout
    # and shifts from restored generators as the uninterrupted one does (more epochs would repeat that)
    overrides = ("trainer.epochs=2", "trainer.batch_size=500", "model.hidden=[32]", "model.dropout=0.2",
                 "data.augment_shift=1", "data.train_eval_size=1000", "seed=5")
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _train_here(mnist_root, whole, *overrides)
    proc = subprocess.Popen(_train_cmd(mnist_root, killed, *overrides), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    assert (killed / "checkpoint.pt").exists(), "killed before its first checkpoint"
    assert json.loads((killed / "summary.json").read_text())["status"] == "running", "killed too late to test"
    _train_here(mnist_root, killed, *overrides)
    assert "resuming from the checkpoint" in (killed / "train.log").read_text()
    a, b = (pd.read_csv(d / "metrics.csv") for d in (whole, killed))
    keep = lambda m: m[m.metric != "train_time"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(keep(a), keep(b))  # no row lost, none twice, same numbers
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (whole, killed))
    assert sb["status"] == "completed" and sb["best_val_acc"] == sa["best_val_acc"]


def test_a_different_config_in_the_same_directory_starts_over(mnist_root, tmp_path):
    fit(cfg_for(mnist_root, "trainer.max_steps=20"), tmp_path)
    fit(cfg_for(mnist_root, "trainer.max_steps=10", "optimizer=sgd"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    train_loss = m[(m.metric == "loss") & (m.split == "step")]
    assert m.step.max() == 10 and (train_loss.groupby("step").size() == 1).all()


def test_diagnostics_flag_a_deep_sigmoid_with_unit_normal_init_and_not_he_relu(mnist_root, tmp_path):
    deep = "model.hidden=[64,64,64,64,64,64,64,64,64,64]"
    bad = fit(cfg_for(mnist_root, deep, "model.activation=sigmoid", "init=normal", "trainer.max_steps=20",
                      "trainer.eval_every=10"),
              tmp_path / "sigmoid")
    good = fit(cfg_for(mnist_root, deep, "model.activation=relu", "init=he_normal", "trainer.max_steps=20"),
               tmp_path / "relu")
    assert bad["flags"]["saturated"] == 0 or bad["flags"]["vanishing_gradients"] is not None
    assert good["flags"] == {k: None for k in good["flags"]}
    m = pd.read_csv(tmp_path / "sigmoid" / "metrics.csv")
    diag = m[m.split == "diag"]
    assert {"saturated/fc9", "act_std/fc0", "grad_std/fc5", "update_size/fc10", "distance/fc0"} <= set(diag.metric)
    assert {"grad_norm/fc3.weight", "grad_norm/fc3.bias", "grad_norm/fc3"} <= set(m.metric)
    hist = pd.read_csv(tmp_path / "sigmoid" / "histograms.csv")
    assert sorted(hist.step.unique()) == [0, 10, 20]  # start, middle, end
    assert (hist.groupby(["step", "layer", "kind"])["count"].sum() == 512 * 64).all()


def test_diagnostics_off_records_only_the_global_numbers(mnist_root, tmp_path):
    fit(cfg_for(mnist_root, "diagnostics=off", "trainer.max_steps=5"), tmp_path)
    m = pd.read_csv(tmp_path / "metrics.csv")
    assert set(m[m.split == "step"].metric) == {"loss", "lr", "grad_norm"} and "diag" not in set(m.split)


def test_clipping_counts_the_steps_it_changed(mnist_root, tmp_path):
    always = fit(cfg_for(mnist_root, "optimizer=sgd", "trainer.clip_grad_norm=1e-6", "trainer.max_steps=12"),
                 tmp_path / "always")
    never = fit(cfg_for(mnist_root, "optimizer=sgd", "trainer.clip_grad_norm=1e6", "trainer.max_steps=12"),
                tmp_path / "never")
    assert (always["clipped_steps"], never["clipped_steps"]) == (12, 0)


def test_a_non_finite_gradient_is_never_applied():
    from optbench.trainer import guard_and_clip
    from optbench.vectorized import norms

    w = torch.nn.Parameter(torch.ones(3))
    b = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([w, b], lr=0.1)
    counters = torch.zeros(1, 2, dtype=torch.int64)
    w.grad, b.grad = torch.tensor([1.0, float("nan"), 2.0]), torch.tensor([1.0, 1.0])
    guard_and_clip([w.grad, b.grad], norms([w.grad, b.grad], 1), None, None, counters)
    optimizer.step()
    assert torch.equal(w, torch.ones(3)) and torch.equal(b, torch.ones(2)) and counters.tolist() == [[0, 1]]
    w.grad, b.grad = torch.tensor([3.0, 0.0, 4.0]), torch.tensor([0.0, 0.0])
    guard_and_clip([w.grad, b.grad], norms([w.grad, b.grad], 1), 1.0, None, counters)
    assert torch.allclose(w.grad, torch.tensor([0.6, 0.0, 0.8])) and counters.tolist() == [[1, 1]]


def test_guard_and_clip_act_on_each_run_of_a_pass_alone():
    from optbench.trainer import guard_and_clip
    from optbench.vectorized import norms

    # three runs' stacked gradients: run 0 fine, run 1 non-finite, run 2 too large
    g = torch.tensor([[3.0, 4.0], [float("inf"), 1.0], [30.0, 40.0]])
    counters = torch.zeros(3, 2, dtype=torch.int64)
    guard_and_clip([g], norms([g], 3), 10.0, None, counters)
    assert torch.allclose(g, torch.tensor([[3.0, 4.0], [0.0, 0.0], [6.0, 8.0]]), atol=1e-5)
    assert counters.tolist() == [[0, 0], [0, 1], [1, 0]]
    guard_and_clip([g], norms([g], 3), None, 5.0, counters)
    assert torch.equal(g, torch.tensor([[3.0, 4.0], [0.0, 0.0], [5.0, 5.0]]))
    assert counters[:, 0].tolist() == [0, 0, 2]


def test_bf16_autocast_trains_close_to_float32(mnist_root, tmp_path):
    full = fit(cfg_for(mnist_root, "trainer.max_steps=60", "trainer.eval_every=30"), tmp_path / "fp32")
    half = fit(cfg_for(mnist_root, "trainer.max_steps=60", "trainer.eval_every=30", "trainer.amp=true"),
               tmp_path / "bf16")
    assert half["amp"] and full["amp"] is None
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("fp32", "bf16"))
    loss = lambda m: m[(m.split == "step") & (m.metric == "loss")].value.to_numpy()  # noqa: E731
    assert not np.array_equal(loss(a), loss(b))  # bf16 did change the arithmetic
    assert abs(half["final"]["val_loss"] - full["final"]["val_loss"]) < 0.1 * full["final"]["val_loss"]


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None,
                    reason="torch.compile on the CPU needs a C++ compiler")
def test_compiled_training_steps_match_eager_ones(mnist_root, tmp_path):
    common = ("model.hidden=[32]", "trainer.max_steps=5", "trainer.checkpoint_every=0", "optimizer=sgd")
    eager = fit(cfg_for(mnist_root, *common), tmp_path / "eager")
    compiled = fit(cfg_for(mnist_root, *common, "trainer.compile=default"), tmp_path / "compiled")
    assert compiled["status"] == "completed" and compiled["compile"] == "default" and eager["compile"] is None
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv") for d in ("eager", "compiled"))
    losses = [m[(m.split == "step") & (m.metric == "loss")].value.to_numpy() for m in (a, b)]
    assert len(losses[0]) == 5 and np.allclose(losses[0], losses[1], rtol=1e-4)
    from optbench.trainer import prepare

    assert hasattr(prepare(cfg_for(mnist_root, *common, "trainer.compile=default")).forward, "_orig_mod")  # compiled


def test_a_run_stopped_by_sigterm_mid_epoch_resumes_from_that_step(mnist_root, tmp_path):
    # SLURM sends SIGTERM at a time limit or preemption: the run checkpoints the step it finished, mid-epoch
    overrides = ("trainer.epochs=2", "trainer.batch_size=500", "model.hidden=[32]", "model.dropout=0.1",
                 "data.augment_shift=1", "trainer.eval_every=30", "data.train_eval_size=1000")
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    _train_here(mnist_root, whole, *overrides)
    proc = subprocess.Popen(_train_cmd(mnist_root, stopped, *overrides), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    _wait_for_rows(stopped / "metrics.csv", size=20_000)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    summary = json.loads((stopped / "summary.json").read_text())
    state = torch.load(stopped / "checkpoint.pt", weights_only=False)
    assert summary["status"] == "interrupted" and state["step"] == summary["step"] > 0
    _train_here(mnist_root, stopped, *overrides)
    a, b = (pd.read_csv(d / "metrics.csv") for d in (whole, stopped))
    keep = lambda m: m[m.metric != "train_time"].reset_index(drop=True)  # noqa: E731
    pd.testing.assert_frame_equal(keep(a), keep(b))  # the stop's own evaluation is cut, nothing else differs
