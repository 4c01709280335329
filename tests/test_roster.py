"""Each option of today's roster is its package's optimizer with the settings its YAML states.

By hand: a few steps of the option, built as the loop builds it, against the
package's class constructed here with the values written out, on a toy
problem; the weights must be equal bit for bit. In a vectorized pass: the
options torch steps row-wise share one optimizer over their rows, the others
get one instance per model over its row views; either way each run must be
the run alone. (Muon's and Schedule-Free's own checks: test_own_and_modern_optimizers.py.)
"""

import inspect

import pandas as pd
import pytest
import torch
from hydra.utils import get_class
from test_own_and_modern_optimizers import assert_pass_matches_separate, cfg_for, metrics

from optbench.models import build_mlp
from optbench.optimizers import OWN_KEYS
from optbench.trainer import build_optimizer, fit, fit_pass

from conftest import compose

pytorch_optimizer = pytest.importorskip("pytorch_optimizer")
schedulefree = pytest.importorskip("schedulefree")

# option -> the package's class and the arguments its YAML gives it
BY_HAND = {
    "nadamw": (torch.optim.NAdam, dict(lr=0.002, betas=(0.9, 0.999), eps=1e-8, momentum_decay=0.004,
                                       weight_decay=0.01, decoupled_weight_decay=True)),
    "radam": (torch.optim.RAdam, dict(lr=0.001, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)),
    "adafactor": (torch.optim.Adafactor, dict(lr=0.01, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0)),
    "lion": (pytorch_optimizer.Lion, dict(lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0, weight_decouple=True)),
    "soap": (pytorch_optimizer.SOAP, dict(lr=0.003, betas=(0.95, 0.95), weight_decay=0.01, precondition_frequency=10,
                                          eps=1e-8)),
    "ademamix": (pytorch_optimizer.AdEMAMix, dict(lr=0.001, betas=(0.9, 0.999, 0.9999), alpha=5.0, weight_decay=0.0,
                                                  eps=1e-8)),
    "adopt": (pytorch_optimizer.ADOPT, dict(lr=0.001, betas=(0.9, 0.9999), weight_decay=0.0, eps=1e-6)),
    "schedulefree_adamw": (schedulefree.AdamWScheduleFree, dict(lr=0.0025, betas=(0.9, 0.999), eps=1e-8,
                                                                weight_decay=0.0, warmup_steps=0)),
    "schedulefree_sgd": (schedulefree.SGDScheduleFree, dict(lr=1.0, momentum=0.9, weight_decay=0.0, warmup_steps=0)),
}
# where a YAML leaves its package's default on purpose (its comment says why)
NOT_THE_PACKAGES_DEFAULT = {"nadamw": {"weight_decay", "decoupled_weight_decay"}, "muon": {"adjust_lr_fn"}}


@pytest.mark.parametrize("option", [*BY_HAND, "muon"])
def test_each_yaml_states_its_packages_defaults(option):
    cfg = compose(f"optimizer={option}").optimizer
    defaults = {name: p.default for name, p in inspect.signature(get_class(cfg._target_)).parameters.items()}
    for key, value in cfg.items():
        if key in ("_target_", "_partial_", *OWN_KEYS) or key in NOT_THE_PACKAGES_DEFAULT.get(option, ()):
            continue
        want = defaults[key]  # a KeyError: the YAML names an argument the class does not take
        assert (list(want) if isinstance(want, tuple) else want) == value, f"{option}: {key}"


@pytest.mark.parametrize("option", list(BY_HAND))
def test_a_few_steps_are_the_packages_optimizer_driven_by_hand(option):
    cls, args = BY_HAND[option]
    cfg = compose(f"optimizer={option}", "model.hidden=[16,8]")
    torch.manual_seed(0)
    model, by_hand = build_mlp(**cfg.model), build_mlp(**cfg.model)
    by_hand.load_state_dict(model.state_dict())
    start = [p.detach().clone() for p in model.parameters()]
    ours = build_optimizer(cfg.optimizer, model.parameters(), model)
    theirs = cls(by_hand.parameters(), **args)
    assert type(ours) is cls
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    for m, o in ((model, ours), (by_hand, theirs)):
        if hasattr(o, "train"):  # schedule-free steps in train mode
            o.train()
        for _ in range(12):  # past SOAP's first re-decomposition (precondition_frequency 10)
            o.zero_grad()
            torch.nn.functional.cross_entropy(m(x), y).backward()
            o.step()
        if hasattr(o, "eval"):
            o.eval()  # and is evaluated at its averaged point
    for (name, a), b, s in zip(model.named_parameters(), by_hand.parameters(), start):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
        assert not torch.equal(a, s), f"{name} did not move: the comparison compares nothing"


@pytest.mark.parametrize("option", ["nadamw", "radam"])
def test_row_wise_options_share_one_optimizer_in_a_pass_and_match_separate_runs(option, mnist_root, tmp_path):
    cfgs = [cfg_for(mnist_root, f"optimizer={option}", "trainer.max_steps=8", f"seed={s}") for s in (0, 1, 2)]
    together = assert_pass_matches_separate(cfgs, tmp_path)
    assert [s["vectorized"]["optimizer_calls"] for s in together] == [1, 1, 1]  # one optimizer over three rows


def test_the_other_options_step_one_instance_per_row_in_a_pass_and_match_separate_runs(mnist_root, tmp_path):
    options = ["adafactor", "lion", "ademamix", "adopt", "soap"]
    cfgs = [cfg_for(mnist_root, f"optimizer={o}", "trainer.max_steps=12", "seed=0") for o in options]
    separate = [fit(c, tmp_path / f"alone{i}") for i, c in enumerate(cfgs)]
    together = fit_pass(cfgs, [tmp_path / f"pass{i}" for i in range(len(cfgs))])
    assert [s["vectorized"]["optimizer_calls"] for s in together] == [5] * 5
    for i, (option, a, b) in enumerate(zip(options, separate, together)):
        assert a["status"] == b["status"] == "completed", (a.get("reason"), b.get("reason"))
        ma, mb = metrics(tmp_path / f"alone{i}"), metrics(tmp_path / f"pass{i}")
        pd.testing.assert_frame_equal(ma.drop(columns="value"), mb.drop(columns="value"))
        # SOAP rotates Adam into the eigenbasis of G G^T, whose many near-equal eigenvalues (MNIST's blank
        # border pixels) make that basis swing with the stacked forward's last-bit rounding: ~1% apart after
        # 12 steps (a run alone is bit-reproducible, and another seed is ~40% apart)
        rtol = 3e-2 if option == "soap" else 1e-4
        pd.testing.assert_series_equal(ma.value, mb.value, rtol=rtol, atol=1e-5, obj=option)
