"""The data a run trains on: splits on the device, normalisation, random shifts, evaluation over a split.

Images stay uint8 on the device until a batch is gathered; `normalise` turns
that batch into floats with the training split's statistics.
"""

import torch

from optbench.errors import UserError

EVAL_CHUNK = 8192


def make_splits(arrays: dict, val_size: int, device: torch.device) -> dict:
    """uint8 images (a quarter of float32's memory traffic) and int64 labels on `device`, plus the training split's
    pixel mean and std."""
    images, labels = arrays["train_images"], arrays["train_labels"]
    n_train = train_size(len(images), val_size)

    def pair(x, y):
        return torch.from_numpy(x).to(device, torch.uint8), torch.from_numpy(y).to(device, torch.int64)

    split = {"train": pair(images[:n_train], labels[:n_train]), "val": pair(images[n_train:], labels[n_train:]),
             "test": pair(arrays["test_images"], arrays["test_labels"])}
    train_x = split["train"][0].float()
    split["mean"], split["std"] = train_x.mean(), train_x.std()
    return split


def train_size(n_images: int, val_size: int) -> int:
    """Images left to train on once the last val_size images of the training file are held out."""
    if not 0 <= val_size < n_images:
        raise UserError(f"data.val_size={val_size} must be in [0, {n_images - 1}]")
    return n_images - val_size


def eval_splits(split: dict, train_eval_size: int | None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The (x, y) each evaluation runs over: train (its first train_eval_size images, or all), val, test."""
    x, y = split["train"]
    return {"train": (x[:train_eval_size], y[:train_eval_size]), "val": split["val"], "test": split["test"]}


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    # in place on the fresh float copy: one allocation instead of three (large ones page-fault on the CPU)
    return x_uint8.float().sub_(mean).div_(std)


def random_shift(x: torch.Tensor, pixels: int, generators: list) -> torch.Tensor:
    """Each (h, w) uint8 image of x [K, n, h, w] moved by its own random (dy, dx) in [-pixels, pixels], zeros
    shifted in; run k's offsets drawn from generators[k], as that run alone draws them.

    One gather on x's device: no per-image loop and no host round trip.
    """
    k, n, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pixels,) * 4)
    dy, dx = torch.stack([torch.randint(0, 2 * pixels + 1, (2, n, 1), device=x.device, generator=g)
                          for g in generators]).unbind(1)  # [K, n, 1] each
    rows = (torch.arange(h, device=x.device) + dy)[..., :, None]
    cols = (torch.arange(w, device=x.device) + dx)[..., None, :]
    run = torch.arange(k, device=x.device)[:, None, None, None]
    return padded[run, torch.arange(n, device=x.device)[None, :, None, None], rows, cols]


@torch.no_grad()
def evaluate(model, loss_fn, x, y, mean, std) -> torch.Tensor:
    """[mean loss, accuracy] over a whole split, as a device tensor (no host sync)."""
    was_training = model.training
    model.eval()
    total = torch.zeros(2, device=x.device)
    for i in range(0, len(x), EVAL_CHUNK):
        logits = model(normalise(x[i : i + EVAL_CHUNK], mean, std))
        target = y[i : i + EVAL_CHUNK]
        total[0] += loss_fn(logits, target) * len(target)
        total[1] += (logits.argmax(1) == target).sum()
    model.train(was_training)
    return total / max(len(x), 1)


def sync(device: torch.device) -> None:
    """Wait for queued work, so a time read afterwards includes it (CUDA and MPS run asynchronously)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()
