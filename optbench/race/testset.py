"""The test set's own limit: how small a difference between two models these 10,000 images can resolve.

Two models scored on the same images are compared image by image (McNemar 1947): only the discordant images
count, b where A is right and B wrong, c the reverse. Under no difference each discordant image goes either
way with probability 1/2, so the exact test is binomial: p = min(1, 2 P(Binom(b + c, 1/2) <= min(b, c))).
The accuracy difference is (b - c) / N. With d = b + c discordant images the smallest difference the test can
resolve is k / N for the smallest k (with d + k even) whose split (d + k) / 2 against (d - k) / 2 has p <=
alpha: the limit of this test set for models that disagree on d images, whatever seeds say.

The seed-to-seed interval answers another question (would another seed give the same difference?); a
difference can clear one and not the other, and the page prints both side by side.

Predictions come from each chosen run's saved weights (checkpoint.pt: the weights at the run's end, the
averaged point for schedule-free) evaluated on the test split, so no trainer change is needed.
"""

from pathlib import Path

import numpy as np

from optbench.results import rundir

ALPHA = 0.05


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts."""
    from scipy.stats import binom

    if b + c == 0:
        return 1.0
    return float(min(1.0, 2 * binom.cdf(min(b, c), b + c, 0.5)))


def smallest_resolvable(discordant_images: int, n_images: int, alpha: float = ALPHA) -> float:
    """The smallest accuracy difference the exact McNemar test resolves at `alpha` when two models disagree
    on `discordant_images` of `n_images`; inf when even a one-sided split (d to 0) is not enough."""
    d = int(discordant_images)
    for k in range(d % 2 if d % 2 else 2, d + 1, 2):
        if mcnemar_p((d + k) // 2, (d - k) // 2) <= alpha:
            return k / n_images
    return np.inf


def compare(correct_a, correct_b, alpha: float = ALPHA) -> dict:
    """A against B on the same images: the difference, McNemar's p, and this pair's smallest resolvable difference."""
    right_a, right_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c, n = int(np.sum(right_a & ~right_b)), int(np.sum(~right_a & right_b)), len(right_a)
    return {"difference": (b - c) / n, "only_a": b, "only_b": c, "p_mcnemar": mcnemar_p(b, c),
            "resolvable": smallest_resolvable(b + c, n, alpha), "images": n}


def predictions(run_dir: Path, data_root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(predicted class, true label) of every test image, from the run's checkpoint.pt and its config."""
    import torch

    from optbench import data
    from optbench.models import build_mlp
    from optbench.trainer import make_splits, normalise

    cfg = rundir.read_config(run_dir)
    state = rundir.read_tensors(Path(run_dir) / rundir.CHECKPOINT, "rerun the race command: it reruns this run")
    model = build_mlp(**cfg.model)
    model.load_state_dict(state["model"])
    model.eval()
    arrays = data.load_arrays(cfg.data.name, data_root or cfg.data.get("root"))
    split = make_splits(arrays, cfg.data.val_size, torch.device("cpu"))  # the training split's mean and std
    x, y = split["test"]
    with torch.no_grad():
        predicted = torch.cat([model(normalise(x[i:i + 2000], split["mean"], split["std"])).argmax(1)
                               for i in range(0, len(x), 2000)])
    return predicted.numpy(), y.numpy()
