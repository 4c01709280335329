"""The one loop against a plain for-loop (torch.optim's "the for-loop is ground truth"), for K = 1 and K = 4."""

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate

from optbench import data
from optbench.models import build_mlp, init_weights, set_dropout_generator
from optbench.trainer import evaluate, fit_pass, make_splits, normalise

from conftest import compose

STEPS, EVAL = 12, 3
SMALL = ("model.hidden=[48,24]", "trainer.batch_size=64", f"trainer.max_steps={STEPS}", f"trainer.eval_every={EVAL}",
         "data.train_eval_size=256", "diagnostics=off", "trainer.checkpoint_every=0", "device=cpu")


def reference(cfg, split) -> list[float]:
    """Each step's training loss, from the plainest loop that does what the config says."""
    torch.manual_seed(cfg.seed)
    model = build_mlp(**cfg.model)
    init_weights(model, cfg.init)
    generator = torch.Generator().manual_seed(cfg.seed)
    set_dropout_generator(model, generator)
    optimizer = instantiate({k: v for k, v in cfg.optimizer.items() if k != "traits"})(model.parameters())
    interval = cfg.schedule.interval
    scheduler = instantiate({k: v for k, v in cfg.schedule.items() if k not in ("interval", "warmup_steps")})(optimizer)
    loss_fn, (x_all, y_all), t, out = torch.nn.CrossEntropyLoss(), split["train"], cfg.trainer, []
    order = torch.randperm(len(x_all), generator=generator)
    for step in range(STEPS):
        idx = order[step * t.batch_size : (step + 1) * t.batch_size]
        loss = loss_fn(model(normalise(x_all[idx], split["mean"], split["std"])), y_all[idx])
        optimizer.zero_grad()
        (loss + t.l1 * sum(m.weight.abs().sum() for m in model if isinstance(m, torch.nn.Linear))).backward()
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.clip_grad_norm)
        optimizer.step()
        out.append(loss.item())
        if interval == "step":
            scheduler.step()
        elif interval == "eval" and (step + 1) % EVAL == 0:
            scheduler.step(evaluate(model, loss_fn, *split["val"], split["mean"], split["std"])[0].item())
    return out


CASES = {
    "sgd": ["optimizer=sgd", "optimizer.lr=0.05"],
    "momentum": ["optimizer=momentum"],
    "adam": ["optimizer=adam"],
    "batchnorm": ["optimizer=sgd", "model.batchnorm=pre"],
    "clipping": ["optimizer=sgd", "optimizer.lr=0.5", "trainer.clip_grad_norm=0.5"],
    "l1": ["optimizer=sgd", "trainer.l1=1e-3"],
    "dropout": ["optimizer=adam", "model.dropout=0.3"],
    "plateau": ["optimizer=sgd", "optimizer.lr=0.3", "schedule=plateau", "schedule.patience=0",
                "schedule.threshold=0.5"],
}


@pytest.fixture(scope="module")
def split(mnist_root):
    return make_splits(data.load_arrays("mnist", mnist_root), 10_000, torch.device("cpu"))


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("K", [1, 4])
def test_the_loop_matches_a_plain_for_loop(mnist_root, split, tmp_path, case, K):
    cfgs = [compose(f"data.root={mnist_root}", *SMALL, *CASES[case], f"seed={seed}") for seed in range(K)]
    summaries = fit_pass(cfgs, [tmp_path / str(k) for k in range(K)])
    for k, (cfg, summary) in enumerate(zip(cfgs, summaries)):
        assert summary["status"] == "completed"
        m = pd.read_csv(tmp_path / str(k) / "metrics.csv")
        ours = m[(m.split == "step") & (m.metric == "loss")].value.tolist()
        assert ours == pytest.approx(reference(cfg, split), rel=2e-5, abs=1e-6), f"run {k}"
    if K > 1:  # a seed sweep of one elementwise optimizer steps all its rows in one call
        assert {s["vectorized"]["optimizer_calls"] for s in summaries} == {1 if case != "plateau" else K}
