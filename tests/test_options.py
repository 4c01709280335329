"""Every lecture knob does what it says: formulas, counts and invariants checked on real runs."""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from hydra.utils import instantiate

from optbench.errors import UserError
from optbench.models import SoftmaxMSELoss, build_mlp, init_weights, linear_layers
from optbench.trainer import build_optimizer, build_scheduler, evaluations_without_improvement, fit, random_shift

from conftest import compose

CONF = Path(__file__).resolve().parents[1] / "optbench" / "conf"


def train_groups() -> list[str]:
    """The groups `optbench train` composes: those named in config.yaml's defaults list."""
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    return [next(iter(d)) for d in defaults if isinstance(d, dict)]


OPTION_FILES = sorted(p for group in train_groups() for p in (CONF / group).glob("*.yaml"))


def run(root, tmp_path, *overrides, name="run"):
    """fit() on real MNIST with a tiny model, on the CPU; returns (summary, metrics DataFrame, run dir).

    Training-set evaluations cover the first 1000 images: no test here is about them."""
    cfg = compose(f"data.root={root}", "device=cpu", "model.hidden=[16]", "data.train_eval_size=1000", *overrides)
    run_dir = tmp_path / name
    summary = fit(cfg, run_dir)
    return summary, pd.read_csv(run_dir / "metrics.csv"), run_dir


def step_series(metrics: pd.DataFrame, metric: str) -> np.ndarray:
    """Per-step values of a train metric, steps 1, 2, ... (an evaluation's train loss comes after its step's row)."""
    rows = metrics[(metrics.split == "step") & (metrics.metric == metric) & (metrics.step > 0)]
    return rows.drop_duplicates("step", keep="first").sort_values("step").value.to_numpy()


def lrs(schedule_overrides, steps, *, interval_steps=1, total_steps=100, steps_per_epoch=10, lr=0.1):
    """Learning rates a schedule gives at scheduler steps 0..steps-1 (SGD, one parameter)."""
    cfg = compose("optimizer=sgd", f"optimizer.lr={lr}", *schedule_overrides)
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    scheduler, interval, warmup = build_scheduler(cfg.schedule, optimizer, total_steps, steps_per_epoch)
    out = []
    for _ in range(steps):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return np.array(out), interval


# ------------------------------------------------------------------ every option trains

def test_the_schema_holds_types_and_the_yaml_files_every_default():
    from dataclasses import MISSING as NO_DEFAULT
    from dataclasses import fields, is_dataclass

    from omegaconf import MISSING

    from optbench import schema

    def leaves(cls, prefix=""):
        for f in fields(cls):
            if f.default_factory is not NO_DEFAULT and is_dataclass(f.default_factory):
                yield from leaves(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", f.default

    defaults = {key: value for key, value in leaves(schema.Config) if value != MISSING}
    assert defaults == {}, "defaults belong in conf/*.yaml, once"


@pytest.mark.parametrize("path", OPTION_FILES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_option_composes_and_trains_three_steps(path, mnist_root, tmp_path):
    from omegaconf import OmegaConf

    group, option = path.parent.name, path.stem
    # optimizer=custom names no class of its own: any class by its dotted path
    custom = (group, option) == ("optimizer", "custom")
    own = ["optimizer._target_=torch.optim.SGD", "+optimizer.lr=0.1"] if custom else []
    # its YAML (or what it extends) sets every key
    assert not OmegaConf.missing_keys(compose(f"{group}={option}", *own))
    root = mnist_root
    if group == "data" and option != "mnist":
        root = "null"  # the dataset's own lookup: cache, system folder, mirrors, then its Debian package
    summary, metrics, _ = run(root, tmp_path, f"{group}={option}", *own, "trainer.max_steps=3",
                              "trainer.checkpoint_every=0")
    assert summary["status"] == "completed", summary.get("reason")
    assert summary["step"] == 3
    assert np.isfinite(step_series(metrics, "loss")).all() and len(step_series(metrics, "loss")) == 3


# ------------------------------------------------------------------ schedules

def test_linear_schedule_is_the_lecture_formula_then_constant():
    values, interval = lrs(["schedule=linear", "schedule.end_factor=0.05"], 150, total_steps=100)
    assert interval == "step"
    a0, a_tau, tau = 0.1, 0.1 * 0.05, 100  # total_iters null: the run's 100 steps
    for t in (0, 1, 25, 50, 99, 100, 149):
        expected = (1 - t / tau) * a0 + (t / tau) * a_tau if t <= tau else a_tau
        assert values[t] == pytest.approx(expected, rel=1e-6), t


def test_inverse_time_schedule_is_eta_over_one_plus_eps_k():
    values, _ = lrs(["schedule=inverse_time", "schedule.decay=0.01"], 1001, total_steps=1001)
    for k in (0, 1, 10, 100, 1000):
        assert values[k] == pytest.approx(0.1 / (1 + 0.01 * k), rel=1e-6), k


def test_warm_restarts_return_to_the_base_rate_at_each_restart():
    values, interval = lrs(["schedule=warm_restarts"], 15)
    assert interval == "epoch"  # T_0=2 epochs, T_mult=2: restarts at epochs 2, 6, 14
    for restart in (2, 6, 14):
        assert values[restart] == pytest.approx(0.1)
        assert values[restart - 1] < values[restart]
    # in between, SGDR's cosine: 0.1 * (1 + cos(pi * T_cur / T_i)) / 2
    for epoch, t_cur, t_i in ((1, 1, 2), (3, 1, 4), (5, 3, 4), (13, 7, 8)):
        assert values[epoch] == pytest.approx(0.1 * (1 + math.cos(math.pi * t_cur / t_i)) / 2), epoch


def test_trapezoidal_ramps_up_holds_and_ramps_down_over_the_run():
    values, interval = lrs(["schedule=trapezoidal", "schedule.warmup=0.1", "schedule.decay=0.2"], 100, total_steps=100)
    assert interval == "step"
    np.testing.assert_allclose(values[:10], 0.1 * np.arange(1, 11) / 10)  # up over the first 10%
    np.testing.assert_allclose(values[10:80], 0.1)
    np.testing.assert_allclose(values[80:], 0.1 * np.arange(20, 0, -1) / 20)  # down over the last 20%
    with pytest.raises(UserError, match="warmup"):
        lrs(["schedule=trapezoidal", "schedule.warmup=0.9", "schedule.decay=0.2"], 1)


def test_null_lengths_become_the_run_length():
    values, _ = lrs(["schedule=cosine"], 101, total_steps=100)
    assert values[50] == pytest.approx(0.05) and values[100] == pytest.approx(0.0, abs=1e-12)
    epochs, interval = lrs(["schedule=cosine", "schedule.interval=epoch"], 11, total_steps=100, steps_per_epoch=10)
    assert interval == "epoch" and epochs[10] == pytest.approx(0.0, abs=1e-12)  # T_max = 10 epochs


def test_warmup_multiplies_any_schedule_in_the_trainer(mnist_root, tmp_path):
    _, metrics, _ = run(mnist_root, tmp_path, "optimizer=sgd", "optimizer.lr=0.1", "schedule=linear",
                        "schedule.warmup_steps=4", "trainer.max_steps=8", "trainer.checkpoint_every=0")
    lr = step_series(metrics, "lr")
    linear = [(1 - t / 8) * 0.1 + (t / 8) * 0.001 for t in range(8)]
    warm = [min(1, (t + 1) / 4) for t in range(8)]
    np.testing.assert_allclose(lr, np.multiply(linear, warm), rtol=1e-6)


def test_plateau_lowers_the_rate_only_when_validation_loss_stops_improving(mnist_root, tmp_path):
    common = ("optimizer=sgd", "optimizer.lr=0.1", "schedule=plateau", "schedule.patience=0", "trainer.eval_every=2",
              "trainer.max_steps=6", "trainer.checkpoint_every=0")
    # early training: every evaluation improves the validation loss, the rate stays
    _, metrics, _ = run(mnist_root, tmp_path, *common, name="improving")
    assert (metrics[(metrics.split == "val") & (metrics.metric == "loss")].value.diff().dropna() < 0).all()
    np.testing.assert_allclose(step_series(metrics, "lr"), [0.1] * 6)
    # a relative threshold of 10 makes no evaluation an improvement: the rate drops by factor after each one
    _, metrics, _ = run(mnist_root, tmp_path, *common, "schedule.threshold=10", name="stalled")
    np.testing.assert_allclose(step_series(metrics, "lr"), [0.1] * 2 + [0.01] * 2 + [0.001] * 2)


# ------------------------------------------------------------------ initialisation

def trained_model(root, tmp_path, *overrides):
    _, _, run_dir = run(root, tmp_path, *overrides, "trainer.max_steps=5", name="_".join(overrides))
    return torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]


def test_zeros_init_keeps_hidden_units_identical_and_lecun_normal_does_not(mnist_root, tmp_path):
    for init, identical in (("zeros", True), ("lecun_normal", False)):
        # sigmoid(0) = 0.5, so with zeros the units do learn (unlike relu(0) = 0), but all alike
        state = trained_model(mnist_root, tmp_path, f"init={init}", "model.hidden=[16,16]",
                              "model.activation=sigmoid", "optimizer=sgd", "optimizer.lr=1.0")
        for key in ("1.weight", "3.weight"):  # hidden layers: each row is one unit's incoming weights
            w = state[key]
            assert torch.count_nonzero(w) > 0, (init, key)  # it moved
            assert torch.allclose(w, w[:1].expand_as(w)) == identical, (init, key)


@pytest.mark.parametrize("init, variance", [("he_normal", lambda n_in, n_out: 2 / n_in),
                                            ("lecun_normal", lambda n_in, n_out: 1 / n_in),
                                            ("xavier_normal", lambda n_in, n_out: 2 / (n_in + n_out)),
                                            ("xavier_uniform", lambda n_in, n_out: 2 / (n_in + n_out)),
                                            ("he_uniform", lambda n_in, n_out: 2 / n_in)])
def test_init_variance_matches_the_formula(init, variance):
    torch.manual_seed(0)
    model = build_mlp([512, 256])
    init_weights(model, compose(f"init={init}").init)
    for _, layer in linear_layers(model):
        n_out, n_in = layer.weight.shape
        assert layer.weight.var().item() == pytest.approx(variance(n_in, n_out), rel=0.05), (init, n_in)
        assert layer.weight.mean().item() == pytest.approx(0, abs=0.05 * math.sqrt(variance(n_in, n_out)))
        assert torch.count_nonzero(layer.bias) == 0


# ------------------------------------------------------------------ batch size

def test_gd_takes_one_step_per_epoch(mnist_root, tmp_path):
    summary, _, _ = run(mnist_root, tmp_path, "optimizer=gd", "trainer.epochs=2", "trainer.checkpoint_every=0")
    assert summary["status"] == "completed"
    assert (summary["steps_per_epoch"], summary["epoch"], summary["step"]) == (1, 2, 2)


def test_batch_size_one_takes_50000_steps_per_epoch(mnist_root, tmp_path):
    summary, _, _ = run(mnist_root, tmp_path, "trainer.batch_size=1", "trainer.max_steps=5",
                        "trainer.checkpoint_every=0")
    assert (summary["steps_per_epoch"], summary["epoch"], summary["step"]) == (50_000, 1, 5)


# ------------------------------------------------------------------ optimizers

def lecture_ema_momentum(gradient, w, alpha, beta, steps):
    """The lecture's rule, written out: z = beta*z + (1-beta)*g from z = 0, w = w - alpha*z.

    Returns the weights after each step.
    """
    z, out = torch.zeros_like(w), []
    for _ in range(steps):
        z = beta * z + (1 - beta) * gradient(w)
        w = w - alpha * z
        out.append(w)
    return out


def momentum_ema_steps(loss, w0, steps, *overrides):
    """The weights after each step of optimizer=momentum_ema (built as a run builds it) on loss(w)."""
    cfg = compose("optimizer=momentum_ema", "optimizer.fused=false", *overrides)
    w = torch.nn.Parameter(w0.clone())
    optimizer = build_optimizer(cfg.optimizer, [w])
    out = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss(w).backward()
        optimizer.step()
        out.append(w.detach().clone())
    return out


def test_momentum_ema_is_the_lecture_rule_from_z_zero():
    # the audit's case: constant gradient 1, alpha 0.1, beta 0.9: after 10 steps w = -0.1 * sum(1 - 0.9^t) = -0.414
    ours = momentum_ema_steps(lambda w: w.sum(), torch.zeros(1, dtype=torch.float64), 10)
    assert ours[-1].item() == pytest.approx(-0.1 * sum(1 - 0.9**t for t in range(1, 11)), abs=1e-12)
    assert ours[-1].item() == pytest.approx(-0.4138, abs=1e-4)  # torch's dampening=0.9 gave -1.000
    # a real quadratic 0.5*||A w - b||^2, another alpha and beta: the lecture's rule to 1e-12 at every step
    torch.manual_seed(0)
    a, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    w0 = torch.zeros(3, dtype=torch.float64)
    ours = momentum_ema_steps(lambda w: 0.5 * (a @ w - b).pow(2).sum(), w0, 20,
                              "optimizer.momentum=0.8", "optimizer.lr='${optbench.ema_lr:0.05,${.momentum}}'")
    lecture = lecture_ema_momentum(lambda w: a.T @ (a @ w - b), w0, alpha=0.05, beta=0.8, steps=20)
    for step, (w, w_ref) in enumerate(zip(ours, lecture)):
        torch.testing.assert_close(w, w_ref, rtol=1e-12, atol=1e-12, msg=f"step {step + 1}")


def test_momentum_ema_keeps_alpha_when_only_beta_changes():
    assert compose("optimizer=momentum_ema").optimizer.lr == pytest.approx(0.1 * (1 - 0.9))
    assert compose("optimizer=momentum_ema", "optimizer.momentum=0.5").optimizer.lr == pytest.approx(0.1 * 0.5)


def test_rmsprop_uses_the_lectures_rho():
    cfg = compose("optimizer=rmsprop")
    optimizer = build_optimizer(cfg.optimizer, [torch.nn.Parameter(torch.zeros(1))])
    assert optimizer.defaults["alpha"] == 0.9 and optimizer.defaults["eps"] == 1e-8


def test_lbfgs_trains_with_a_schedule(mnist_root, tmp_path):
    summary, metrics, _ = run(mnist_root, tmp_path, "optimizer=lbfgs", "optimizer.max_iter=5", "schedule=linear",
                              "trainer.batch_size=2000", "trainer.max_steps=4", "trainer.checkpoint_every=0")
    assert summary["status"] == "completed"
    np.testing.assert_allclose(step_series(metrics, "lr"), [1 - t / 4 * 0.99 for t in range(4)], rtol=1e-6)
    loss = step_series(metrics, "loss")
    assert loss[-1] < 0.5 * loss[0]


# ------------------------------------------------------------------ clipping, L1, early stopping

def first_step_update(root, tmp_path, *overrides):
    """(recorded grad_norm, the step's actual update / lr, summary) for one plain SGD step with lr 0.1."""
    summary, metrics, run_dir = run(root, tmp_path, "optimizer=sgd", "optimizer.lr=0.1", "trainer.max_steps=1",
                                    *overrides, name="_".join(overrides) or "plain")
    before = torch.load(run_dir / "init.pt", weights_only=True)
    after = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]
    update = torch.cat([(after[k] - before[k]).flatten() for k in before]) / 0.1
    return step_series(metrics, "grad_norm")[0], update, summary


@pytest.fixture(scope="module")
def plain_step(mnist_root, tmp_path_factory):
    """The unclipped, unpenalised step the clipping and L1 tests compare with: one run for the three of them.

    (grad_norm, update / lr, summary, run dir); no test changes it."""
    tmp = tmp_path_factory.mktemp("options")
    return (*first_step_update(mnist_root, tmp), tmp / "plain")


def test_clip_by_norm_caps_the_update_and_records_the_pre_clip_norm(plain_step, mnist_root, tmp_path):
    free_norm, free_update, _, _ = plain_step
    assert free_update.norm().item() == pytest.approx(free_norm, rel=1e-4)  # no clipping: update = gradient
    clipped_norm, clipped_update, summary = first_step_update(mnist_root, tmp_path, "trainer.clip_grad_norm=0.05")
    assert free_norm > 0.05
    assert clipped_norm == pytest.approx(free_norm, rel=1e-6)  # grad_norm is the norm before clipping
    assert clipped_update.norm().item() == pytest.approx(0.05, rel=1e-3)  # the step used the clipped gradient
    torch.testing.assert_close(clipped_update / clipped_update.norm(), free_update / free_update.norm(),
                               rtol=1e-3, atol=1e-5)  # same direction
    assert summary["clipped_steps"] == 1


def test_clip_by_value_clamps_every_entry(plain_step, mnist_root, tmp_path):
    _, free_update, _, _ = plain_step
    _, update, summary = first_step_update(mnist_root, tmp_path, "trainer.clip_grad_value=0.001")
    assert free_update.abs().max() > 0.001
    assert update.abs().max().item() == pytest.approx(0.001, rel=1e-3)
    torch.testing.assert_close(update, free_update.clamp(-0.001, 0.001), rtol=1e-3, atol=1e-6)
    assert summary["clipped_steps"] == 1


def test_l1_penalty_adds_lambda_sign_w_to_the_weight_gradient(plain_step, mnist_root, tmp_path):
    _, free_update, _, plain = plain_step
    _, update, _ = first_step_update(mnist_root, tmp_path, "trainer.l1=0.01")
    before = torch.load(plain / "init.pt", weights_only=True)
    # weights get -lr * l1 * sign(w) more; biases nothing
    expected = torch.cat([(0.01 * before[k].sign() if k.endswith("weight") else torch.zeros_like(before[k])).flatten()
                          for k in before])
    torch.testing.assert_close(free_update - update, expected, rtol=1e-3, atol=1e-5)


def stop_evaluation(curve, patience, min_delta):
    """Index of the evaluation after which the trainer stops, or None."""
    for i in range(len(curve)):
        if evaluations_without_improvement(curve[: i + 1], min_delta) >= patience:
            return i
    return None


def test_early_stopping_decision_on_a_scripted_validation_curve():
    curve = [1.0, 0.8, 0.6, 0.61, 0.59, 0.60, 0.60, 0.60, 0.50]
    assert stop_evaluation(curve, patience=3, min_delta=0.0) == 7  # 0.59 at 4 was the last improvement
    assert stop_evaluation(curve, patience=3, min_delta=0.05) == 5  # 0.59 is not 0.05 better than 0.6
    assert stop_evaluation(curve, patience=5, min_delta=0.0) is None
    assert evaluations_without_improvement([], 0.0) == 0


def test_early_stopping_ends_the_run_completed_and_says_so(mnist_root, tmp_path):
    # min_delta 100: no evaluation after the first can improve, so patience 2 stops after epoch 2 of 5
    summary, _, _ = run(mnist_root, tmp_path, "trainer.batch_size=10000", "trainer.epochs=5", "trainer.patience=2",
                        "trainer.min_delta=100", "trainer.checkpoint_every=0")
    assert summary["status"] == "completed" and summary["stopped_early"] is True
    assert (summary["epoch"], summary["step"]) == (2, 10)
    assert "early stopping" in summary["reason"]
    unstopped, _, _ = run(mnist_root, tmp_path, "trainer.batch_size=25000", "trainer.epochs=3",
                          "trainer.checkpoint_every=0", name="unstopped")
    assert unstopped["stopped_early"] is False and unstopped["epoch"] == 3


# ------------------------------------------------------------------ loss, augmentation

def test_mse_loss_is_squared_error_of_softmax_against_one_hot():
    logits, target = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]), torch.tensor([0, 2])
    p = logits.softmax(1)
    expected = ((p[0] - torch.tensor([1.0, 0, 0])) ** 2).sum() + ((p[1] - torch.tensor([0, 0, 1.0])) ** 2).sum()
    assert SoftmaxMSELoss()(logits, target).item() == pytest.approx(expected.item() / 2)
    assert isinstance(instantiate(compose("loss=mse").loss), SoftmaxMSELoss)


def test_random_shift_moves_each_image_within_the_range():
    images = torch.randint(1, 256, (64, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    shifted = random_shift(images[None], 2, [torch.Generator().manual_seed(0)])[0]
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    seen = set()
    for i in range(len(images)):
        offsets = [(dy, dx) for dy in range(5) for dx in range(5)
                   if torch.equal(shifted[i], padded[i, dy : dy + 28, dx : dx + 28])]
        assert offsets, i  # each output is the image moved by at most 2 pixels, zeros shifted in
        seen.add(offsets[0])
    assert len(seen) > 10  # and the offsets differ from image to image


# ------------------------------------------------------------------ mistakes get one-line errors

@pytest.mark.parametrize(
    "overrides, words",
    [
        (["optimizer=momentum", "optimizer.momentum=-0.5"], "momentum"),
        (["optimizer=adam", "optimizer.betas=[1.0,0.999]"], "beta"),
        (["optimizer=nesterov", "optimizer.momentum=0"], "Nesterov"),
        (["trainer.clip_grad_norm=0"], "trainer.clip_grad_norm"),
        (["trainer.clip_grad_value=-1"], "trainer.clip_grad_value"),
        (["optimizer=lbfgs", "trainer.clip_grad_norm=1"], "lbfgs"),
        (["optimizer=lbfgs", "+optimizer.weight_decay=0.1"], "weight_decay"),
        (["trainer.l1=-1"], "trainer.l1"),
        (["trainer.patience=0"], "trainer.patience"),
        (["schedule.interval=sometimes"], "schedule.interval"),
        (["schedule=inverse_time", "schedule.decay=-1"], "schedule.decay"),
        (["data.augment_shift=-1"], "data.augment_shift"),
    ],
)
def test_bad_option_values_raise_a_user_error(overrides, words, mnist_root, tmp_path):
    with pytest.raises(UserError, match=words) as e:
        run(mnist_root, tmp_path, *overrides, "trainer.max_steps=1")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------ experiment presets

@pytest.mark.parametrize("path", sorted((CONF / "experiment").glob("*.yaml")), ids=lambda p: p.stem)
def test_each_experiment_preset_sweeps_valid_options_and_the_runs_it_states(path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from optbench.compose import check_group_choices, compose_config

    cfg = compose_config([f"+experiment={path.stem}"], hydra=True)
    sweep = [f"{key}={value}" for key, value in cfg.hydra.sweeper.params.items()]
    check_group_choices(sweep)  # a misspelt option is a UserError here
    jobs = math.prod(len(list(o.sweep_string_iterator())) if o.is_sweep_override() else 1
                     for o in OverridesParser.create().parse_overrides(sweep))
    assert jobs == int(re.search(r"\((\d+) runs\)", path.read_text())[1])  # the header tells users the size
    assert cfg.hydra.mode.name == "MULTIRUN"
