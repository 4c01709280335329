"""The budget ledger: what each optimizer was given and what it spent, so a reader sees the race was fair.

Per optimizer and phase (tuning: the search trials; seeds: the chosen configuration's reruns): trials, runs,
optimisation steps, seeds, floating-point operations and wall time, summed over its run directories.

FLOPs are counted from the model's shape and the steps, not measured: a training step of an MLP costs about
6 N B operations (Kaplan et al. 2020): 2 N B for the forward pass (a multiply and an add per weight and
example) and 4 N B for the backward pass (the gradients of the activations and of the weights), N the
parameters, B the batch. Activations, the loss and the optimizer's own arithmetic are left out (the last
differs between optimizers: SOAP's eigendecompositions or Muon's Newton-Schulz steps are real extra work, and
the ledger shows wall time beside FLOPs so that such a difference is seen, not hidden). Evaluations are left out:
every optimizer gets the same ones.
"""

FLOPS_PER_PARAM_EXAMPLE = 6  # 2 forward + 4 backward


def mlp_params(hidden, n_in: int = 784, n_out: int = 10, bias: bool = True) -> int:
    """Parameters of an MLP n_in -> hidden... -> n_out (weights and, with `bias`, biases)."""
    widths = [n_in, *map(int, hidden), n_out]
    return sum(a * b + (b if bias else 0) for a, b in zip(widths, widths[1:]))


def train_flops(params: int, batch_size: int, steps: int) -> float:
    """6 N B per step, times the steps."""
    return float(FLOPS_PER_PARAM_EXAMPLE) * params * batch_size * steps


def ledger(runs):
    """One row per optimizer and phase from a table of runs (columns optimizer, phase, trial, seed, steps,
    params, batch_size, wall_time): trials, runs, steps, seeds, FLOPs, wall time."""
    runs = runs.assign(flops=train_flops(runs["params"], runs["batch_size"], runs["steps"]))
    # wall time by Series.sum: groupby's own "sum" is compensated (Kahan) and can move the last digit
    return runs.groupby(["optimizer", "phase"], sort=False).agg(
        trials=("trial", "nunique"), runs=("trial", "size"), steps=("steps", "sum"), seeds=("seed", "nunique"),
        flops=("flops", "sum"), wall_time_s=("wall_time", lambda wall: wall.sum())).reset_index()


def unequal(table) -> list[str]:
    """Sentences naming what differs between optimizers in the tuning phase (trials, steps); [] when fair.

    Only tuning must be equal: the seed phase runs every optimizer on the same seeds by construction, and FLOPs
    follow from steps (same model for all)."""
    tuning = table[table["phase"] == "tuning"].set_index("optimizer")
    return [f"tuning {column} differ: " + ", ".join(f"{k} {v}" for k, v in tuning[column].items())
            for column in ("trials", "steps") if tuning[column].nunique() > 1]
