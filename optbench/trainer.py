"""Training: build everything from the config, then one plain loop.

The loop keeps every per-step number on the device and reads them back in
blocks (every SYNC_EVERY steps and at each evaluation), so the host never
waits on the accelerator inside a step.
"""

import logging
import math
import os
import signal
import threading
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from optbench import data, results
from optbench.errors import UserError
from optbench.models import build_mlp, init_weights, linear_layers

log = logging.getLogger(__name__)

# Steps between host reads of the buffered step metrics: bounds both the cost
# of the sync and how long a diverged run goes on before it is stopped.
SYNC_EVERY = 50
EVAL_CHUNK = 8192
CHECKPOINT = "checkpoint.pt"


def select_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asked for, but torch sees no CUDA GPU (use device=auto or device=cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise UserError("device=mps asked for, but this machine has no MPS backend (use device=auto or device=cpu)")
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device={name!r} is not a device torch knows (auto, cpu, cuda, cuda:N, mps)") from None


def make_splits(arrays: dict, val_size: int, device: torch.device) -> dict:
    """uint8 images and int64 labels on `device`, plus the training split's pixel mean and std.

    Images stay uint8 (a quarter of float32's memory traffic); `normalise`
    turns a gathered batch into floats with the training statistics.
    """
    images, labels = arrays["train_images"], arrays["train_labels"]
    n_train = len(images) - val_size
    if not 0 <= val_size < len(images):
        raise UserError(f"data.val_size={val_size} must be in [0, {len(images) - 1}]")

    def to(x, dtype):
        return torch.from_numpy(x).to(device=device, dtype=dtype)

    split = {
        "train": (to(images[:n_train], torch.uint8), to(labels[:n_train], torch.int64)),
        "val": (to(images[n_train:], torch.uint8), to(labels[n_train:], torch.int64)),
        "test": (to(arrays["test_images"], torch.uint8), to(arrays["test_labels"], torch.int64)),
    }
    train_x = split["train"][0].float()
    split["mean"], split["std"] = train_x.mean(), train_x.std()
    return split


def normalise(x_uint8: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x_uint8.float() - mean) / std


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


def build_optimizer(optimizer_cfg, params):
    factory = instantiate(optimizer_cfg)
    try:
        return factory(params)
    except (TypeError, ValueError) as e:
        raise UserError(f"optimizer: {e}") from None
    except RuntimeError as e:
        # fused kernels exist only for some devices and dtypes: fall back to torch's default
        if not optimizer_cfg.get("fused"):
            raise
        log.warning("fused optimizer unavailable here (%s); using torch's default implementation", e)
        return factory(params, fused=False)


def optimizer_impl(optimizer) -> str:
    if optimizer.defaults.get("fused"):
        return "fused"
    if optimizer.defaults.get("foreach"):
        return "foreach"
    return "default"


def check_trainer(t: DictConfig, n_train: int) -> None:
    if not 1 <= t.batch_size <= n_train:
        raise UserError(f"trainer.batch_size={t.batch_size} must be between 1 and the training split's {n_train}")
    if t.epochs < 0:
        raise UserError(f"trainer.epochs={t.epochs} must be >= 0")
    if t.max_steps is not None and t.max_steps < 0:
        raise UserError(f"trainer.max_steps={t.max_steps} must be >= 0")
    if t.eval_every is not None and t.eval_every < 1:
        raise UserError(f"trainer.eval_every={t.eval_every} must be >= 1 (or null for once per epoch)")
    if t.log_every < 1:
        raise UserError(f"trainer.log_every={t.log_every} must be >= 1")


class _StopRequest:
    """SIGINT/SIGTERM set a flag; the loop finishes the current step and ends cleanly.

    A second Ctrl-C raises KeyboardInterrupt at once, for a step that hangs.
    """

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None:
            raise KeyboardInterrupt
        self.signal = signum
        log.warning("%s received: stopping after this step", signal.Signals(signum).name)


@contextmanager
def _stop_on_signals():
    stop = _StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop  # signal handlers can only be installed from the main thread
        return
    previous = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int, epoch: int, shuffle: torch.Generator) -> None:
    """Everything needed to continue the run, written atomically (temp file + rename)."""
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "epoch": epoch,
        "rng": {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()},
    }
    if torch.cuda.is_available():
        state["rng"]["cuda"] = torch.cuda.get_rng_state_all()
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def fit(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Train one model as `cfg` says, writing config, metrics and summary into `run_dir`.

    Returns the summary. Status is completed, diverged (non-finite loss or
    gradient), interrupted (SIGINT/SIGTERM) or failed (an exception, re-raised).
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    started = time.perf_counter()
    summary = {
        "status": "running",
        "choices": dict(choices or {}),
        "started_at": _now(),
        **results.provenance(),
    }
    results.write_json_atomic(run_dir / results.SUMMARY, summary)
    try:
        return _fit(cfg, run_dir, summary, started)
    except BaseException as e:
        if summary["status"] == "running":  # failed while setting up, before the loop took over
            summary.update(status="failed", reason=f"{type(e).__name__}: {e}", finished_at=_now())
            results.write_json_atomic(run_dir / results.SUMMARY, summary)
        raise


def _fit(cfg: DictConfig, run_dir: Path, summary: dict, started: float) -> dict:
    device = select_device(cfg.device)
    torch.manual_seed(cfg.seed)
    arrays = data.load_arrays(cfg.data.name, cfg.data.root)
    split = make_splits(arrays, cfg.data.val_size, device)
    train_x, train_y = split["train"]
    n_train = len(train_x)
    check_trainer(cfg.trainer, n_train)

    model = build_mlp(**cfg.model).to(device)
    init_weights(model, cfg.init)
    torch.save(model.state_dict(), run_dir / "init.pt")  # the start point, for distance-from-init and landscapes
    optimizer = build_optimizer(cfg.optimizer, model.parameters())
    scheduler = instantiate(cfg.schedule)(optimizer)
    loss_fn = instantiate(cfg.loss)
    layers = linear_layers(model)
    params = [p for p in model.parameters() if p.requires_grad]
    # which entries of `params` belong to each Linear layer, for per-layer gradient norms
    param_index = {id(p): i for i, p in enumerate(params)}
    layer_params = [[param_index[id(p)] for p in layer.parameters()] for _, layer in layers]

    bs = cfg.trainer.batch_size
    steps_per_epoch = math.ceil(n_train / bs)
    total_steps = cfg.trainer.epochs * steps_per_epoch
    if cfg.trainer.max_steps is not None:
        total_steps = min(total_steps, cfg.trainer.max_steps)
    eval_every = cfg.trainer.eval_every or steps_per_epoch
    shuffle = torch.Generator(device=device).manual_seed(cfg.seed)
    step_names = ["loss", "grad_norm"] + [f"grad_norm/{name}" for name, _ in layers]

    summary.update(
        device=str(device),
        device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        optimizer_impl=optimizer_impl(optimizer),
        n_params=sum(p.numel() for p in params),
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        torch_threads=torch.get_num_threads(),
        tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
    )
    log.info(
        "%s | %d parameters | %s (%s) | %d steps of batch %d",
        device, summary["n_params"], type(optimizer).__name__, summary["optimizer_impl"], total_steps, bs,
    )

    writer = results.MetricsWriter(run_dir)
    history = []  # one dict per evaluation: step, epoch, val_acc, ...
    pending = []  # (step, epoch, lr, tensor of step_names values) not yet read back
    step, epoch, train_time = 0, 0, 0.0
    status, reason = "completed", None

    def flush_steps() -> bool:
        """Write buffered step metrics; False when one of them is not finite."""
        if not pending:
            return True
        values = torch.stack([v for *_, v in pending]).tolist()
        rows = []
        first_bad = None
        for (s, e, lr, _), vals in zip(pending, values):
            rows.append((s, e, "train", "lr", lr))
            rows.extend((s, e, "train", name, v) for name, v in zip(step_names, vals))
            if first_bad is None and not all(math.isfinite(v) for v in vals):
                first_bad = s
        writer.write_rows(rows)
        pending.clear()
        bar.set_postfix(loss=f"{values[-1][0]:.4f}", refresh=False)
        if first_bad is not None:
            summary["diverged_at_step"] = first_bad
            return False
        return True

    def run_eval() -> bool:
        nonlocal train_time
        _sync(device)
        train_time = time.perf_counter() - train_started - eval_time[0]
        t0 = time.perf_counter()
        out = torch.stack([evaluate(model, loss_fn, *split[s], split["mean"], split["std"]) for s in ("train", "val", "test")])
        (tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc) = out.tolist()
        row = dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                   val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=train_time)
        history.append(row)
        for s, (l, a) in zip(("train", "val", "test"), out.tolist()):
            writer.write(step, epoch, s, {"loss": l, "acc": a})
        writer.write(step, epoch, "run", {"train_time": train_time})
        writer.flush()
        eval_time[0] += time.perf_counter() - t0
        bar.set_postfix(val_acc=f"{va_acc:.4f}", refresh=False)
        log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                 epoch, step, tr_loss, va_loss, va_acc, te_acc, train_time)
        _update_summary(summary, history, step, epoch, time.perf_counter() - started)
        results.write_json_atomic(run_dir / results.SUMMARY, summary)
        if not all(math.isfinite(v) for v in (tr_loss, va_loss)):
            summary.setdefault("diverged_at_step", step)
            return False
        return True

    eval_time = [0.0]
    train_started = time.perf_counter()
    bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=None, leave=False)
    try:
        with _stop_on_signals() as stop:
            ok = run_eval()
            while ok and step < total_steps and stop.signal is None:
                epoch += 1
                bar.set_description(f"epoch {epoch}/{cfg.trainer.epochs}")
                order = torch.randperm(n_train, device=device, generator=shuffle)
                for i in range(steps_per_epoch):
                    idx = order[i * bs : (i + 1) * bs]
                    x, y = normalise(train_x[idx], split["mean"], split["std"]), train_y[idx]

                    def closure():
                        optimizer.zero_grad(set_to_none=True)
                        loss = loss_fn(model(x), y)
                        loss.backward()
                        return loss

                    lr = optimizer.param_groups[0]["lr"]
                    loss = optimizer.step(closure)
                    scheduler.step()
                    step += 1
                    bar.update()
                    if step % cfg.trainer.log_every == 0 or step == total_steps:
                        norms = torch.stack(torch._foreach_norm([p.grad for p in params]))
                        layer_norms = [norms[ix].norm() for ix in layer_params]
                        pending.append((step, epoch, lr, torch.stack([loss.detach(), norms.norm(), *layer_norms])))
                    if len(pending) >= SYNC_EVERY and not flush_steps():
                        ok = False
                        break
                    if step % eval_every == 0 or step == total_steps or stop.signal is not None:
                        if not (flush_steps() and run_eval()):
                            ok = False
                            break
                    end_of_epoch = i == steps_per_epoch - 1 or step == total_steps
                    if end_of_epoch and cfg.trainer.checkpoint_every and epoch % cfg.trainer.checkpoint_every == 0:
                        save_checkpoint(run_dir / CHECKPOINT, model, optimizer, scheduler, step, epoch, shuffle)
                    if step >= total_steps or stop.signal is not None:
                        break
            if not ok:
                status = "diverged"
                reason = f"non-finite loss or gradient at step {summary['diverged_at_step']}"
                log.warning("run diverged: %s", reason)
            elif stop.signal is not None:
                status, reason = "interrupted", f"{signal.Signals(stop.signal).name} received at step {step}"
            flush_steps()
    except KeyboardInterrupt:
        status, reason = "interrupted", f"KeyboardInterrupt at step {step}"
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        writer.close()
        summary.update(status=status, reason=reason,
                       finished_at=_now())
        _update_summary(summary, history, step, epoch, time.perf_counter() - started)
        results.write_json_atomic(run_dir / results.SUMMARY, summary)
    log.info("%s: best val acc %s, test acc at that epoch %s", status,
             _fmt(summary.get("best_val_acc")), _fmt(summary.get("test_acc_at_best_val")))
    return summary


def _update_summary(summary: dict, history: list, step: int, epoch: int, wall_time: float) -> None:
    summary.update(step=step, epoch=epoch, wall_time=round(wall_time, 3))
    if not history:
        return
    last = history[-1]
    finite = [h for h in history if math.isfinite(h["val_acc"])]
    best = max(finite, key=lambda h: h["val_acc"]) if finite else last
    summary.update(
        best_val_acc=best["val_acc"],
        best_step=best["step"],
        best_epoch=best["epoch"],
        # test accuracy where validation chose: never used to choose anything
        test_acc_at_best_val=best["test_acc"],
        final={k: v for k, v in last.items() if k not in ("step", "epoch")},
        train_time=round(last["train_time"], 3),
        seconds_per_epoch=round(last["train_time"] / last["epoch"], 3) if last["epoch"] else None,
    )


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
