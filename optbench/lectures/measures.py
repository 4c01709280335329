"""The quantities a claim is decided on, each (run, claim) -> float; NaN where a run cannot give it.

A run is a dict of its summary, config and metrics (running.read_run); the functions read nothing else,
except distinct_units, which reads the run's checkpoint through rundir (tensors only).
"""

from pathlib import Path

import numpy as np

from optbench.results import rundir

WAY_OUT = "move the run directory away, or delete it to train the run again"  # a damaged file's remedy


def evaluations(metrics, split: str, metric: str):
    rows = metrics[(metrics.split == split) & (metrics.metric == metric)]
    return rows.groupby("step")["value"].last()


def _final(key):
    return lambda run, claim: float(run["summary"].get("final", {}).get(key, np.nan))


def _summary(key):
    return lambda run, claim: float(run["summary"].get(key) if run["summary"].get(key) is not None else np.nan)


def train_val_gap(run, claim) -> float:
    """Training minus validation accuracy at the last evaluation: how much of the fit does not carry over."""
    final = run["summary"].get("final", {})
    return float(final.get("train_acc", np.nan)) - float(final.get("val_acc", np.nan))


def gap_at_fit(run, claim) -> float:
    """Training minus validation accuracy at the first evaluation where the training accuracy reaches the
    claim's target: the gap compared at equal fit, not at equal time (NaN where the run never fits that well)."""
    train = evaluations(run["metrics"], "train", "acc")
    val = evaluations(run["metrics"], "val", "acc")
    fitted = train[train >= claim["target"]]
    return float(fitted.iloc[0] - val.get(fitted.index[0], np.nan)) if len(fitted) else np.nan


def batch_size(run) -> int:
    """The run's batch size; null is the whole training split (MNIST's 60k training images less validation)."""
    size = run["config"]["trainer"]["batch_size"]
    return int(size) if size else 60000 - int(run["config"]["data"]["val_size"])


def examples_to_target(run, claim) -> float:
    """Training examples seen (steps x batch size) at the first evaluation with validation accuracy >= target."""
    acc = evaluations(run["metrics"], "val", "acc")
    reached = acc[acc >= claim["target"]]
    return float(reached.index[0] * batch_size(run)) if len(reached) else np.nan


def loss_rise(run, claim) -> float:
    """How far the learning curve climbs: the sum of the rises of log(training loss) from one evaluation to
    the next (the whole-split loss, free of mini-batch noise), up to a non-finite loss. A curve that only
    falls scores 0; each doubling on the way up adds log 2 = 0.69, however often the curve swings."""
    loss = evaluations(run["metrics"], "train", "loss").to_numpy(float)
    if (~np.isfinite(loss)).any():
        loss = loss[: np.argmax(~np.isfinite(loss))]
    return float(np.clip(np.diff(np.log(loss)), 0, None).sum()) if len(loss) > 1 else np.nan


def summed_over_layers(metrics, prefix: str):
    """Per step after step 0, the diagnostic `prefix`/<layer> summed over the layers."""
    rows = metrics[(metrics.split == "diag") & metrics.metric.str.startswith(prefix + "/") & (metrics.step > 0)]
    return rows.groupby("step")["value"].sum()


def layer_series(metrics, prefix: str, step: int = 0) -> np.ndarray:
    """Per hidden layer, in order, the diagnostic `prefix`/fc<i> at `step` (0: the initial weights)."""
    rows = metrics[(metrics.split == "diag") & metrics.metric.str.startswith(prefix + "/") & (metrics.step == step)]
    by_layer = {int(m.rsplit("fc", 1)[1]): v for m, v in zip(rows.metric, rows.value)}
    return np.array([by_layer[i] for i in sorted(by_layer)])


def act_std_drift(run, claim) -> float:
    """|log2(std of the last hidden layer's activations / std of the first's)| at initialisation: 0 when
    the variance stays the same across layers (the lectures' rule), 1 per halving or doubling."""
    std = layer_series(run["metrics"], "act_std")
    return float(abs(np.log2(std[-1] / std[0]))) if len(std) > 1 and std[0] > 0 and std[-1] > 0 else np.nan


def saturated_at_init(run, claim) -> float:
    """Mean over hidden layers of the fraction of (image, unit) pairs whose sigmoid/tanh is saturated, at step 0."""
    values = layer_series(run["metrics"], "saturated")
    return float(values.mean()) if len(values) else np.nan


def update_shrink(run, claim) -> float:
    """Size of the last step's update at the last evaluation over that at the first one after step 0,
    summed over layers: 1 when the step size holds, near 0 when the learning rate vanishes."""
    per_step = summed_over_layers(run["metrics"], "update_size")
    return float(per_step.iloc[-1] / per_step.iloc[0]) if len(per_step) > 1 and per_step.iloc[0] > 0 else np.nan


# rows of a weight matrix this close (relative to its largest entry) count as one unit: float32 rounding
# separates units that started equal by ~1e-4 in 200 steps, random initial weights differ by O(1)
TOLERANCE = 1e-2


def distinct_units(run, claim) -> float:
    """Distinct hidden units in the first layer of the trained network: rows of its weights and bias that
    differ somewhere by more than TOLERANCE of the largest weight. Units that never broke symmetry count once."""
    import torch

    path = Path(run["dir"]) / rundir.CHECKPOINT
    state = rundir.read_tensors(path, WAY_OUT)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise rundir.DamagedFile(path, "holds no model weights", WAY_OUT)
    state = state["model"]
    weight = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 2)
    bias = next(v for k, v in state.items() if k.endswith("bias"))
    rows = torch.cat([weight, bias[:, None]], 1).double().numpy()
    tolerance = TOLERANCE * max(float(np.abs(rows).max()), 1e-12)
    # one row per group of rows within the tolerance of each other (rounding would split near-ties)
    kept: list[np.ndarray] = []
    for row in rows:
        if not any(np.abs(row - other).max() <= tolerance for other in kept):
            kept.append(row)
    return float(len(kept))


# name -> (function, label on the figure, the learning curve drawn beside it: (split, metric, x, log y))
QUANTITIES = {
    "best_val_acc": (_summary("best_val_acc"), "best validation accuracy", ("val", "acc", "step", False)),
    "test_acc": (_summary("test_acc_at_best_val"), "test accuracy at the best validation",
                 ("val", "acc", "step", False)),
    "final_train_loss": (_final("train_loss"), "final training loss", ("train", "loss", "step", True)),
    "train_val_gap": (train_val_gap, "train - validation accuracy (last evaluation)", ("val", "acc", "step", False)),
    "gap_at_fit": (gap_at_fit, "train - validation accuracy where training accuracy first reaches the target",
                   ("train", "acc", "step", False)),
    "examples_to_target": (examples_to_target, "training examples to reach the target validation accuracy",
                           ("val", "acc", "examples", False)),
    "loss_rise": (loss_rise, "total rise of log(training loss) between evaluations", ("train", "loss", "step", True)),
    "act_std_drift": (act_std_drift, "|log2(act std last layer / first layer)| at init",
                      ("diag", "act_std", "layer", True)),
    "saturated_at_init": (saturated_at_init, "saturated fraction of sigmoid units at init",
                          ("diag", "saturated", "layer", False)),
    "update_shrink": (update_shrink, "update size at the end / after the first evaluation",
                      ("diag", "update_size", "step", True)),
    "distinct_units": (distinct_units, "distinct units in the first hidden layer after training",
                       ("val", "acc", "step", False)),
}

