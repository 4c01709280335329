"""Training: one loop for K >= 1 runs.

A single run is K = 1 and trains its plain `nn.Sequential`. A pass of K > 1
runs that differ only in seed, optimizer, schedule or init trains their
parameters stacked into [K, ...] tensors (optbench.vectorized), so one step
is one batched forward and backward for all of them. Either way the step
reads the same: learning rate, forward, backward, guard and clip, optimizer
step, log, evaluate, checkpoint, stop.

Every per-step number stays on the device and is read back in blocks (every
SYNC_EVERY steps and at each evaluation), so the host never waits on the
accelerator inside a step.
"""

import contextlib
import csv
import logging
import math
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from optbench import data, diagnostics, optimizers, rundir, vectorized
from optbench.errors import UserError
from optbench.models import linear_layers
from optbench.schedules import warmup_factor
from optbench.trainer.batches import eval_splits, evaluate, make_splits, normalise, random_shift, sync
from optbench.trainer.runs import Run, close, open_run, unopened, update_summary
from optbench.trainer.setup import (Group, build_runs, check, load_states, optimizer_impl, run_lengths, run_state,
                                    select_device, share_optimizers)

log = logging.getLogger("optbench.trainer")

# Steps between host reads of the buffered step metrics: bounds both the cost
# of the sync and how long a diverged run goes on before it is stopped.
SYNC_EVERY = 50


def fit(cfg: DictConfig, run_dir: str | Path, choices: dict | None = None) -> dict:
    """Train one model as `cfg` says, writing config, metrics and summary into `run_dir`; a pass of one."""
    return fit_pass([cfg], [run_dir], [choices])[0]


def fit_pass(cfgs: list[DictConfig], run_dirs: list, choices: list | None = None, job: str | None = None) -> list[dict]:
    """Train the runs of `cfgs` (one `vectorized.group_key`) in one loop, each into its run dir; their summaries.

    Each run directory is held by this process while it trains (rundir.hold;
    `job` names the executor's job or worker). An unfinished run of the same
    config in its directory (killed, interrupted) continues from its last
    checkpoint when trainer.resume is on; anything else there is replaced.
    Status: completed, diverged (non-finite loss or gradient), interrupted
    (SIGINT/SIGTERM) or failed (an exception, re-raised). A single run's bad
    setting, damaged file or live holder raises UserError; in a pass that run
    fails (or, held elsewhere, is left alone) and the others go on.
    """
    if len({vectorized.group_key(c) for c in cfgs}) != 1:
        raise ValueError("fit_pass: the configs differ in more than seed/optimizer/schedule/init")
    started = time.perf_counter()
    outcome = {}  # run dir -> the summary of a run that could not be opened
    with contextlib.ExitStack() as held:
        runs = []
        for cfg, run_dir, chosen in zip(cfgs, map(Path, run_dirs), choices or [None] * len(cfgs)):
            try:
                run_dir.mkdir(parents=True, exist_ok=True)
                held.enter_context(rundir.hold(run_dir, job))
                runs.append(open_run(cfg, run_dir, chosen, len(cfgs)))
            except UserError as e:
                if len(cfgs) == 1:
                    raise
                outcome[run_dir] = unopened(run_dir, e)
        by_step = {}  # the runs that continue from a checkpoint at the same step train together; fresh ones too
        for r in runs:
            by_step.setdefault(r.resume["step"] if r.resume else None, []).append(r)
        try:
            reasons = {vectorized.why_not(c) for c in cfgs} - {None} if len(cfgs) > 1 else set()
            if reasons:  # each run's summary says failed, and why
                raise UserError(f"these runs cannot share a pass: {'; '.join(sorted(reasons))}")
            for part in by_step.values():
                _fit(part[0].cfg, part, started)
        except BaseException as e:
            for r in runs:
                if r.status == "running":
                    close(r, "failed", f"{type(e).__name__}: {e}", started)
            raise
    opened = {r.dir: r.summary for r in runs}
    return [opened.get(Path(d)) or outcome[Path(d)] for d in run_dirs]


def evaluations_without_improvement(val_losses: list[float], min_delta: float) -> int:
    """Evaluations since the validation loss last fell below the best so far minus min_delta (early stopping)."""
    best, stale = math.inf, 0
    for loss in val_losses:
        if loss < best - min_delta:
            best, stale = loss, 0
        else:
            stale += 1
    return stale


def _fit(cfg: DictConfig, runs: list[Run], started: float) -> None:
    device = select_device(cfg.device)
    check(cfg)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    train_x, train_y = split["train"]
    n_train = len(train_x)
    eval_sets = eval_splits(split, cfg.data.train_eval_size)
    lengths = batch_size, steps_per_epoch, total_steps, eval_every = run_lengths(cfg, n_train)
    t, diag = cfg.trainer, cfg.diagnostics
    loss_fn = instantiate(cfg.loss)
    runs = build_runs(runs, device, lengths)
    if not runs:
        return
    # the runs that share an optimizer side by side: their rows of the stack are one slice
    runs = [runs[k] for members in vectorized.optimizer_groups([r.cfg for r in runs]) for k in members]
    K = len(runs)
    models = [r.model for r in runs]
    forward, leaves = vectorized.forward_of(models)
    if t.compile:
        forward = torch.compile(forward, mode=t.compile)
    groups = share_optimizers(runs, leaves, lengths)
    grad_index = vectorized.grad_index(models[0], device)  # per-layer and per-parameter gradient norms
    per_layer = diag.level != "off"
    step_names = ["loss", "grad_norm"] + (grad_index.names if per_layer else [])
    l1_leaves = [leaves[i] for i in grad_index.linear_weights]
    probe_x = normalise(split["val"][0][: diag.probe_size], split["mean"], split["std"])
    probe_y = split["val"][1][: diag.probe_size]
    histogram_steps = diagnostics.histogram_schedule(diag.histogram_at, total_steps)
    counters = torch.zeros(K, 2, dtype=torch.int64, device=device)  # per run: clipped steps, skipped non-finite steps
    step, epoch, resumed_train_time = 0, 0, [0.0] * K
    resumed_order = None  # each run's data order of the epoch its checkpoint was taken in, when mid-epoch

    if runs[0].resume:
        load_states(groups, runs)
        for k, r in enumerate(runs):
            state = r.resume
            r.model.load_state_dict(state["model"])
            r.generator.set_state(state["rng"]["generator"])
            step, epoch, resumed_train_time[k] = state["step"], state["epoch"], state["train_time"]
            r.history, r.flags = state["history"], state["flags"]
            counters[k] = state["counters"]
            rundir.truncate(r.dir / rundir.METRICS, state["metrics_bytes"])
            rundir.truncate(r.dir / rundir.HISTOGRAMS, state["histogram_bytes"])
            r.log.info("resuming from the checkpoint at epoch %d, step %d", epoch, step)
            if K > 1:
                log.info("%s resumes from its checkpoint at step %d", r.dir.name, step)
        torch.set_rng_state(runs[0].resume["rng"]["torch"])
        if runs[0].resume.get("order") is not None:
            resumed_order = torch.stack([r.resume["order"] for r in runs]).to(device)
        histogram_steps = [h for h in histogram_steps if h > step]
    for k, r in enumerate(runs):
        r.summary.update(
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            optimizer_impl=optimizer_impl(r.group.optimizer),
            n_params=sum(p.numel() for p in r.model.parameters()),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            torch_threads=torch.get_num_threads(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            amp="bf16 autocast (training steps)" if t.amp else None,
            compile=t.compile,
            diagnostics=diag.level,
            flags=r.flags,
        )
        if K > 1:
            # train_time and seconds_per_epoch are this run's share: the pass's training time / K
            r.summary["vectorized"] = {"models": K, "index": k, "optimizer_calls": len(groups)}
        r.writer = rundir.MetricsWriter(r.dir, t.tensorboard, resumed_at=step if r.resume else None)
        r.histogram_file = open(r.dir / rundir.HISTOGRAMS, "a", newline="")
        if r.histogram_file.tell() == 0:
            csv.writer(r.histogram_file).writerow(diagnostics.HISTOGRAM_COLUMNS)
        r.log.info("%s | %d parameters | %s (%s) | %d steps of batch %d%s", device, r.summary["n_params"],
                   type(r.group.optimizer).__name__, r.summary["optimizer_impl"], total_steps, batch_size,
                   f" | in a pass of {K} runs" if K > 1 else "")
    if K > 1:
        log.info("vectorized pass of %d runs on %s: %d steps of batch %d, %d optimizer call(s) per step",
                 K, device, total_steps, batch_size, len(groups))
    alive = list(range(K))
    pending = []  # (step, epoch, [lr per run], [len(step_names), K] tensor) not yet read back
    lrs = [0.0] * K

    def flush_steps() -> None:
        """Write the buffered step metrics (one host read); a run with a non-finite value has diverged."""
        nonlocal last_loss
        if not pending:
            return
        values = torch.stack([v for *_, v in pending]).tolist()  # [steps, metrics, K]
        for k in list(alive):
            r, rows, first_bad = runs[k], [], None
            for (st, ep, step_lrs, _), vals in zip(pending, values):
                mine = [v[k] for v in vals]
                rows.append((st, ep, "step", "lr", step_lrs[k]))
                rows.extend((st, ep, "step", name, v) for name, v in zip(step_names, mine))
                if first_bad is None and not all(math.isfinite(v) for v in mine):
                    first_bad = st
                diagnostics.update_flags(r.flags, st, dict(zip(step_names, mine)), diag.thresholds)
            r.writer.write_rows(rows)
            r.last_values = dict(zip(step_names, mine))
            if first_bad is not None:
                r.summary["diverged_at_step"] = first_bad
                end(k, "diverged", f"non-finite loss or gradient at step {first_bad}")
        pending.clear()
        last_loss = f"{min(values[-1][0]):.4f}" + (" (lowest of the pass)" if K > 1 else "")
        bar.set_postfix(loss=last_loss, refresh=False)

    def record_counters(k: int, counts: list) -> None:
        if t.clip_grad_norm or t.clip_grad_value:
            runs[k].summary["clipped_steps"] = counts[0]
        runs[k].summary.update(nonfinite_steps_skipped=counts[1], step=step, epoch=epoch)

    def end(k: int, status: str, reason: str | None, stopped_early: bool = False) -> None:
        r = runs[k]
        if status == "diverged" and K > 1:
            r.log.warning("run diverged: %s", reason)  # its train.log; the console gets close's line
        r.summary["stopped_early"] = stopped_early
        record_counters(k, counters[k].tolist())
        alive.remove(k)
        close(r, status, reason, started)

    def fail_group(g: Group, e: Exception) -> None:
        groups.remove(g)
        for k in [k for k in alive if runs[k].group is g]:
            runs[k].log.error("run failed", exc_info=True)  # the traceback in its own train.log
            end(k, "failed", f"{type(e).__name__}: {e}")

    def train_time(k: int) -> float:
        # a pass computes all K models at every step: each run's share of its time compares with a run alone
        return resumed_train_time[k] + (time.perf_counter() - train_started - eval_time) / K

    def run_eval(decide: bool = True) -> None:
        """Evaluate every run; with `decide`, also step eval-interval schedules and check early stopping."""
        nonlocal eval_time
        if not alive:  # every run diverged at the read-back just before
            return
        sync(device)
        times = {k: train_time(k) for k in alive}
        t0 = time.perf_counter()
        to_eval_point()
        out = torch.stack([torch.stack([evaluate(runs[k].model, loss_fn, *xy, split["mean"], split["std"])
                                        for xy in eval_sets.values()]) for k in alive]).tolist()
        counts = counters.tolist()
        histograms_now = per_layer and diagnostics.histograms_due(diag.level, histogram_steps, step)
        for k, ((tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc)) in zip(list(alive), out):
            r = runs[k]
            r.history.append(dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                                  val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=times[k]))
            for name, loss, acc in (("train", tr_loss, tr_acc), ("val", va_loss, va_acc), ("test", te_loss, te_acc)):
                r.writer.write(step, epoch, name, {"loss": loss, "acc": acc})
            r.writer.write(step, epoch, "run", {"train_time": times[k]})
            if per_layer:
                numbers, layers_seen = diagnostics.at_evaluation(r.model, loss_fn, probe_x, probe_y,
                                                                 cfg.model.activation, diag.saturation, step,
                                                                 r.previous, r.initial)
                r.writer.write(step, epoch, "diag", numbers)
                diagnostics.update_flags(r.flags, step, {**r.last_values, **numbers}, diag.thresholds)
                if histograms_now:
                    csv.writer(r.histogram_file).writerows(
                        diagnostics.histogram_rows(step, epoch, layers_seen, diag.histogram_bins))
                    r.histogram_file.flush()
            r.writer.flush()
            if K > 1:
                r.summary["vectorized"]["pass_train_time"] = round(times[k] * K, 3)
            r.log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                       epoch, step, tr_loss, va_loss, va_acc, te_acc, times[k])
            record_counters(k, counts[k])
            update_summary(r.summary, r.history, time.perf_counter() - started)
            rundir.write_json(r.dir / rundir.SUMMARY, r.summary)
            if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
                r.summary.setdefault("diverged_at_step", step)
                end(k, "diverged", f"non-finite loss or gradient at step {r.summary['diverged_at_step']}")
                continue
            if not decide:
                continue
            if r.group.interval == "eval" and step > 0:
                r.group.scheduler.step(va_loss)  # the group of a run stepped on its own validation loss is its own
            if t.patience and evaluations_without_improvement([h["val_loss"] for h in r.history],
                                                              t.min_delta) >= t.patience:
                r.log.info("stopped early at epoch %d step %d", epoch, step)
                end(k, "completed", f"early stopping: validation loss did not improve by > {t.min_delta} "
                                    f"in {t.patience} evaluations", stopped_early=True)
        optimizers.set_mode([g.optimizer for g in groups], "train")
        eval_time += time.perf_counter() - t0

    def to_eval_point() -> None:
        """Optimizers with train()/eval() (schedule-free) move the weights to the point they evaluate at;
        batch norm's running statistics are then re-estimated there (on the train-evaluation images)."""
        for g in groups:
            if optimizers.set_mode([g.optimizer], "eval"):
                x_bn = eval_sets["train"][0]
                for k in alive:
                    if runs[k].group is g and optimizers.has_batchnorm(runs[k].model):
                        optimizers.recompute_batchnorm(runs[k].model, (
                            normalise(x_bn[i : i + batch_size], split["mean"], split["std"])
                            for i in range(0, len(x_bn), batch_size)))

    def checkpoint(order: torch.Tensor, epoch_step: int) -> None:
        """Each run's checkpoint after `epoch_step` steps of this epoch (its data order kept when mid-epoch)."""
        flush_steps()
        optimizers.set_mode([g.optimizer for g in groups], "eval")  # schedule-free: save the evaluated weights
        for k in alive:
            r = runs[k]
            r.writer.flush()
            r.histogram_file.flush()
            if K > 1:  # the stacked batch norm does not count batches: record what the run alone would have
                for bn in r.model.modules():
                    if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
                        bn.num_batches_tracked.fill_(step)
            optimizer_state, scheduler_state = run_state(r)
            rundir.save_tensors({
                "model": {name: v.clone() for name, v in r.model.state_dict().items()},  # not the whole stack
                "optimizer": optimizer_state, "scheduler": scheduler_state, "step": step, "epoch": epoch,
                "rng": {"torch": torch.get_rng_state(), "generator": r.generator.get_state()},
                "epoch_step": epoch_step, "order": order[k].cpu() if epoch_step < steps_per_epoch else None,
                "train_time": train_time(k), "history": r.history, "flags": r.flags, "counters": counters[k].cpu(),
                "metrics_bytes": r.writer.tell(), "histogram_bytes": r.histogram_file.tell(),
                "summary": {key: r.summary.get(key) for key in ("clipped_steps", "nonfinite_steps_skipped")},
            }, r.dir / rundir.CHECKPOINT)
        optimizers.set_mode([g.optimizer for g in groups], "train")

    def forward_backward():
        """Every run's loss and gradient at the current weights: [K] losses, [n_params, K] gradient norms.

        The gradients are guarded (a non-finite one is zeroed, never applied)
        and clipped; the norms are those before clipping, what the loss
        surface gave. L-BFGS calls this again inside its line search.
        """
        for p in leaves:
            p.grad = None
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=t.amp):
            losses = vectorized.losses(loss_fn, forward, x, y)
        objective = (losses + t.l1 * vectorized.l1_norms(l1_leaves, K) if t.l1 else losses).sum()
        objective.backward()  # d(sum)/d(loss_k) = 1: each run gets its own gradient
        grads = [p.grad for p in leaves]
        norms = vectorized.norms(grads, K)
        guard_and_clip(grads, norms, t.clip_grad_norm, t.clip_grad_value, counters)
        for g in groups:
            for param, leaf, rows in g.views:
                param.grad = leaf.grad[rows]
        return objective, losses.detach(), norms

    def progress() -> None:
        """Where the runs are, for a log without a terminal (a job's output file) in place of the bar."""
        rate = (step - first_step) / (time.perf_counter() - stepping_since)  # evaluations included: for the ETA
        left = f" | ~{(total_steps - step) / rate:.0f} s left" if rate else ""
        log.info("%sstep %d/%d (%.0f%%) | epoch %d/%d | loss %s | %.1f steps/s%s", label and f"{label}: ", step,
                 total_steps, 100 * step / max(total_steps, 1), epoch, n_epochs, last_loss, rate, left)

    eval_time = 0.0
    n_epochs = math.ceil(total_steps / steps_per_epoch)
    # a pass's bar says how many runs it trains and what differs between them
    label = f"pass of {K} ({', '.join(rundir.differing_keys([r.cfg for r in runs])) or 'same config'})" if K > 1 else ""
    bar = tqdm(total=total_steps, initial=step, unit="step", dynamic_ncols=True, disable=None, leave=False)
    first_step, last_loss = step, "n/a"
    train_started = time.perf_counter()
    status, reason = "completed", None
    try:
        with stop_on_signals() as stop, logging_redirect_tqdm():  # log lines print above the bar, not onto it
            optimizers.set_mode([g.optimizer for g in groups], "train")  # schedule-free steps only in train mode
            if not runs[0].resume:
                run_eval()
            stepping_since = time.perf_counter()
            next_progress = stepping_since + t.progress_every
            while alive and step < total_steps and stop.signal is None:
                if resumed_order is None:  # a new epoch: each run's order drawn from its own generator
                    epoch += 1
                    order, first = torch.stack([torch.randperm(n_train, device=device, generator=r.generator)
                                                for r in runs]), 0
                else:  # the epoch a checkpoint was taken in, from the step after it
                    order, first, resumed_order = resumed_order, runs[0].resume["epoch_step"], None
                bar.set_description(f"{label + ' | ' if label else ''}epoch {epoch}/{n_epochs}")
                for i in range(first, steps_per_epoch):
                    idx = order[:, i * batch_size : (i + 1) * batch_size]
                    x_uint8 = train_x[idx]
                    if cfg.data.augment_shift:
                        x_uint8 = random_shift(x_uint8, cfg.data.augment_shift, [r.generator for r in runs])
                    x, y = normalise(x_uint8, split["mean"], split["std"]), train_y[idx]
                    evaluates_next = (step + 1) % eval_every == 0 or step + 1 == total_steps
                    if per_layer and evaluates_next:
                        for k in alive:  # the point one step back, for the update sizes at the evaluation
                            runs[k].previous = (step, [diagnostics.flat_layer(layer).clone()
                                                       for _, layer in linear_layers(runs[k].model)])
                    # warmup multiplies the rate the schedule set, for this step only
                    scheduled = [[pg["lr"] for pg in g.optimizer.param_groups] for g in groups]
                    for g in groups:
                        for pg in g.optimizer.param_groups:
                            pg["lr"] *= warmup_factor(step, g.warmup_steps)
                    for k, r in enumerate(runs):
                        lrs[k] = r.group.optimizer.param_groups[0]["lr"]
                    if vectorized.needs_closure(cfg):  # L-BFGS, one run: its line search evaluates again
                        evaluations = []

                        def closure():
                            evaluations.append(forward_backward())
                            return evaluations[-1][0]

                        groups[0].optimizer.step(closure)
                        _, losses, norms = evaluations[0]  # at the weights the step started from
                    else:
                        _, losses, norms = forward_backward()
                        for g in list(groups):
                            try:
                                g.optimizer.step()
                            except Exception as e:  # a user's optimizer that raises fails its runs, not the pass
                                if K == 1:
                                    raise
                                fail_group(g, e)
                    for g, g_lrs in zip(groups, scheduled):
                        for pg, lr in zip(g.optimizer.param_groups, g_lrs):
                            pg["lr"] = lr
                        if g.interval == "step":
                            g.scheduler.step()
                    step += 1
                    bar.update()
                    if bar.disable and time.perf_counter() >= next_progress:
                        progress()
                        next_progress = time.perf_counter() + t.progress_every
                    if step % t.log_every == 0 or step == total_steps:
                        pending.append((step, epoch, list(lrs), grad_index.step_values(losses, norms, per_layer)))
                    if len(pending) >= SYNC_EVERY:
                        flush_steps()
                    if evaluates_next:
                        flush_steps()
                        run_eval()
                    if i == steps_per_epoch - 1:
                        for g in groups:
                            if g.interval == "epoch":
                                g.scheduler.step()
                    end_of_epoch = i == steps_per_epoch - 1 or step == total_steps
                    if t.checkpoint_every and (stop.signal is not None or
                                               end_of_epoch and epoch % t.checkpoint_every == 0):
                        checkpoint(order, i + 1)  # on a stop too: resumed, the run goes on as if never stopped
                    if stop.signal is not None and not evaluates_next:
                        flush_steps()
                        run_eval(decide=False)  # where the interrupted run got to (a resume cuts these rows)
                    if not alive or step >= total_steps or stop.signal is not None:
                        break
            if stop.signal is not None:
                status, reason = "interrupted", f"{signal.Signals(stop.signal).name} received at step {step}"
            flush_steps()
    except KeyboardInterrupt:
        status, reason = "interrupted", f"KeyboardInterrupt at step {step}"
    except BaseException as e:
        status, reason = "failed", f"{type(e).__name__}: {e}"
        raise
    finally:
        bar.close()
        for k in list(alive):
            end(k, status, reason)


def guard_and_clip(grads: list, norms: torch.Tensor, clip_norm, clip_value, counters: torch.Tensor) -> None:
    """Per run: zero its gradients when any is NaN/inf, so none is ever applied; then clip by norm and/or value.

    `norms` [n_tensors, K] are the per-tensor gradient norms before clipping,
    K runs along dim 0 of each stacked gradient (K = 1: a plain gradient).
    counters[k, 0] counts the steps clipping changed, counters[k, 1] the
    steps zeroed; both stay on the device (no host sync). Clipping by norm
    is torch's clip_grads_with_norm_ formula (max_norm / (norm + 1e-6),
    at most 1), one factor per run.
    """
    total = norms.norm(dim=0)  # [K]
    bad = ~torch.isfinite(total)
    per_row = [(-1,) + (1,) * (g.dim() - 1) for g in grads]  # a [K] vector against each gradient's rows
    for g, shape in zip(grads, per_row):
        g.masked_fill_(bad.view(shape), 0.0)
    counters[:, 1] += bad
    hit = []
    if clip_norm:
        hit.append((total > clip_norm) & ~bad)  # a zeroed gradient was not clipped
        factor = (clip_norm / (total.nan_to_num(0.0) + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [factor.view(shape) for shape in per_row])
    if clip_value:
        hit.append(vectorized.norms(grads, len(total), math.inf).amax(0) > clip_value)
        torch._foreach_clamp_min_(grads, -clip_value)
        torch._foreach_clamp_max_(grads, clip_value)
    if hit:
        counters[:, 0] += torch.stack(hit).any(0)


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
def stop_on_signals():
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
