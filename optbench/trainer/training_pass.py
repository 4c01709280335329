"""A training pass: K >= 1 runs stepped in one loop, the state they share held by one object.

A single run is K = 1 and trains its plain `nn.Sequential`. A pass of K > 1
runs that differ only in seed, optimizer, schedule or init trains their
parameters stacked into [K, ...] tensors (optbench.vectorized), so one step
is one batched forward and backward for all of them. Either way the step
reads the same: batch, learning rate, forward and backward with guard and
clip, optimizer step, schedule, record. The epoch loop around it reads:
step; if due, evaluate; if due, checkpoint; if asked, stop.

Every per-step number stays on the device and is read back in blocks (every
SYNC_EVERY steps and at each evaluation), so the host never waits on the
accelerator inside a step.
"""

import csv
import logging
import math
import time
from typing import cast

import torch
from torch.optim.lr_scheduler import ReduceLROnPlateau
from tqdm import tqdm

from optbench import diagnostics, optimizers, schedules, vectorized
from optbench.models import linear_layers
from optbench.results import rundir
from optbench.trainer import checkpoints
from optbench.trainer.batches import eval_splits, evaluate, normalise, random_shift, sync
from optbench.trainer.runs import Run, close, update_summary
from optbench.trainer.setup import Lengths, Stepper, optimizer_impl, share_optimizers

log = logging.getLogger("optbench.trainer")

# Steps between host reads of the buffered step metrics: bounds both the cost
# of the sync and how long a diverged run goes on before it is stopped.
SYNC_EVERY = 50


class Pass:
    """The K runs of one pass and everything their steps, evaluations and checkpoints share.

    `K` is the number of runs; run k is `runs[k]`, row k of every stacked
    tensor; `alive` holds the k still training. `step` counts optimisation
    steps taken, `epoch` the epochs begun.
    """

    def __init__(self, cfg, runs: list[Run], split: dict, lengths: Lengths, loss_fn, device: torch.device,
                 started: float):
        self.cfg, self.settings, self.diag = cfg, cfg.trainer, cfg.diagnostics
        self.lengths, self.loss_fn, self.device, self.started = lengths, loss_fn, device, started
        self.train_x, self.train_y = split["train"]
        self.mean, self.std = split["mean"], split["std"]
        self.eval_sets = eval_splits(split, cfg.data.train_eval_size)
        # the runs that share an optimizer side by side: their rows of the stack are one slice
        self.runs = [runs[k] for members in vectorized.shared_steppers([r.cfg for r in runs]) for k in members]
        self.K = len(self.runs)
        models = [r.model for r in self.runs]
        self.forward, self.leaves = vectorized.forward_of(models)
        if self.settings.compile:
            self.forward = torch.compile(self.forward, mode=self.settings.compile)
        self.steppers = share_optimizers(self.runs, self.leaves, lengths)
        self.line_search = vectorized.needs_closure(cfg)  # L-BFGS: one run, stepped with a closure
        self.grad_index = vectorized.grad_index(models[0], device)  # per-layer and per-parameter gradient norms
        self.per_layer = self.diag.level != "off"
        self.step_names = ["loss", "grad_norm"] + (self.grad_index.names if self.per_layer else [])
        self.l1_leaves = [self.leaves[i] for i in self.grad_index.linear_weights]
        self.probe_x = normalise(split["val"][0][: self.diag.probe_size], self.mean, self.std)
        self.probe_y = split["val"][1][: self.diag.probe_size]
        self.histogram_steps = diagnostics.histogram_schedule(self.diag.histogram_at, lengths.total_steps)
        # per run: clipped steps, skipped non-finite steps
        self.counters = torch.zeros(self.K, 2, dtype=torch.int64, device=device)
        self.step, self.epoch, self.resumed_train_time = 0, 0, [0.0] * self.K
        # each run's data order of the epoch its checkpoint was taken in, when mid-epoch
        self.resumed_order: torch.Tensor | None = None
        if self.runs[0].resume:
            checkpoints.restore(self)
        self.open_files()
        self.alive = list(range(self.K))
        # (step, epoch, [lr per run], [len(step_names), K] tensor) not yet read back
        self.pending: list[tuple[int, int, list[float], torch.Tensor]] = []
        self.eval_time = 0.0
        self.n_epochs = math.ceil(lengths.total_steps / lengths.steps_per_epoch)
        # a pass's bar says how many runs it trains and what differs between them
        differing = ", ".join(rundir.differing_keys([run.cfg for run in self.runs])) or "same config"
        self.label = f"pass of {self.K} ({differing})" if self.K > 1 else ""
        self.bar = tqdm(total=lengths.total_steps, initial=self.step, unit="step", dynamic_ncols=True, disable=None,
                        leave=False)
        self.first_step, self.last_loss = self.step, "n/a"
        self.train_started = time.perf_counter()

    def open_files(self) -> None:
        """Each run's summary told how it trains, its metrics and histogram files opened; one log line each."""
        lengths, device = self.lengths, self.device
        for k, run in enumerate(self.runs):
            run.summary.update(
                device=str(device),
                device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
                optimizer_impl=optimizer_impl(run.stepper.optimizer),
                n_params=sum(p.numel() for p in run.model.parameters()),
                steps_per_epoch=lengths.steps_per_epoch, total_steps=lengths.total_steps,
                torch_threads=torch.get_num_threads(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                cudnn_benchmark=torch.backends.cudnn.benchmark,
                amp="bf16 autocast (training steps)" if self.settings.amp else None, compile=self.settings.compile,
                diagnostics=self.diag.level, flags=run.flags)
            if self.K > 1:
                # train_time and seconds_per_epoch are this run's share: the pass's training time / K
                run.summary["vectorized"] = {"models": self.K, "index": k, "optimizer_calls": len(self.steppers)}
            run.writer = rundir.MetricsWriter(run.dir, self.settings.tensorboard,
                                              resumed_at=self.step if run.resume else None)
            run.histogram_file = open(run.dir / rundir.HISTOGRAMS, "a", newline="")
            if run.histogram_file.tell() == 0:
                csv.writer(run.histogram_file).writerow(diagnostics.HISTOGRAM_COLUMNS)
            run.log.info("%s | %d parameters | %s (%s) | %d steps of batch %d%s", device, run.summary["n_params"],
                         type(run.stepper.optimizer).__name__, run.summary["optimizer_impl"], lengths.total_steps,
                         lengths.batch_size, f" | in a pass of {self.K} runs" if self.K > 1 else "")
        if self.K > 1:
            log.info("vectorized pass of %d runs on %s: %d steps of batch %d, %d optimizer call(s) per step",
                     self.K, device, lengths.total_steps, lengths.batch_size, len(self.steppers))

    # ------------------------------------------------------------------ the loop and its step

    def train(self, stop) -> None:
        """Step until the last step, the last run's end, or `stop` (a signal): evaluate and checkpoint when due."""
        steps_per_epoch, total_steps, batch_size = (self.lengths.steps_per_epoch, self.lengths.total_steps,
                                                    self.lengths.batch_size)
        optimizers.set_mode(self.optimizers(), "train")  # schedule-free steps only in train mode
        if not self.runs[0].resume:
            self.run_eval()
        self.stepping_since = time.perf_counter()
        self.next_progress = self.stepping_since + self.settings.progress_every
        while self.alive and self.step < total_steps and stop.signal is None:
            order, first = self.epoch_order()
            self.bar.set_description(f"{self.label + ' | ' if self.label else ''}epoch {self.epoch}/{self.n_epochs}")
            for epoch_step in range(first, steps_per_epoch):
                evaluates = (self.step + 1) % self.lengths.eval_every == 0 or self.step + 1 == total_steps
                self.train_step(order[:, epoch_step * batch_size : (epoch_step + 1) * batch_size], evaluates)
                if evaluates:
                    self.flush_steps()
                    self.run_eval()
                last_of_epoch = epoch_step == steps_per_epoch - 1
                if last_of_epoch:
                    self.advance_schedules("epoch")
                if self.checkpoint_due(last_of_epoch or self.step == total_steps, stop):
                    # on a stop too: resumed, the run goes on as if never stopped
                    checkpoints.save(self, order, epoch_step + 1)
                if stop.signal is not None and not evaluates:
                    self.flush_steps()
                    self.run_eval(decide=False)  # where the interrupted run got to (a resume cuts these rows)
                if not self.alive or self.step >= total_steps or stop.signal is not None:
                    break

    def checkpoint_due(self, epoch_done: bool, stop) -> bool:
        every = self.settings.checkpoint_every
        return bool(every) and (stop.signal is not None or epoch_done and self.epoch % every == 0)

    def epoch_order(self) -> tuple[torch.Tensor, int]:
        """Each run's order of the training images for this epoch [K, n_train], and the epoch's first step."""
        if self.resumed_order is None:  # a new epoch: each run's order drawn from its own generator
            self.epoch += 1
            return torch.stack([torch.randperm(len(self.train_x), device=self.device, generator=run.generator)
                                for run in self.runs]), 0
        # the epoch a checkpoint was taken in, from the step after it
        order, self.resumed_order = self.resumed_order, None
        return order, checkpoints.resumed(self.runs[0])["epoch_step"]

    def train_step(self, rows: torch.Tensor, evaluates_next: bool) -> None:
        """One optimisation step of every run on its batch, `rows` [K, batch size] of the training split."""
        images = self.train_x[rows]
        if self.cfg.data.augment_shift:
            images = random_shift(images, self.cfg.data.augment_shift, [run.generator for run in self.runs])
        x, y = normalise(images, self.mean, self.std), self.train_y[rows]
        if self.per_layer and evaluates_next:
            self.keep_previous_weights()
        with schedules.warmup(self.steppers, self.step):  # the scheduled rate, scaled for this step only
            lrs = [run.stepper.optimizer.param_groups[0]["lr"] for run in self.runs]
            if self.line_search:
                losses, norms = self.step_with_closure(x, y)
            else:
                _, losses, norms = self.forward_backward(x, y)
                self.step_optimizers()
        self.advance_schedules("step")
        self.step += 1
        self.bar.update()
        self.progress()
        if self.step % self.settings.log_every == 0 or self.step == self.lengths.total_steps:
            self.pending.append((self.step, self.epoch, lrs,
                                 self.grad_index.step_values(losses, norms, self.per_layer)))
        if len(self.pending) >= SYNC_EVERY:
            self.flush_steps()

    def forward_backward(self, x: torch.Tensor, y: torch.Tensor):
        """Every run's loss and gradient at the current weights: [K] losses, [n_params, K] gradient norms.

        The gradients are guarded (a non-finite one is zeroed, never applied)
        and clipped; the norms are those before clipping, what the loss
        surface gave. L-BFGS calls this again inside its line search.
        """
        settings = self.settings
        for p in self.leaves:
            p.grad = None
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=settings.amp):
            losses = vectorized.losses(self.loss_fn, self.forward, x, y)
        penalised = losses + settings.l1 * vectorized.l1_norms(self.l1_leaves, self.K) if settings.l1 else losses
        objective = penalised.sum()
        objective.backward()  # d(sum)/d(loss_k) = 1: each run gets its own gradient
        grads = [p.grad for p in self.leaves]
        norms = vectorized.norms(grads, self.K)
        vectorized.guard_and_clip(grads, norms, settings.clip_grad_norm, settings.clip_grad_value, self.counters)
        for stepper in self.steppers:
            for param, leaf, rows in stepper.views:
                param.grad = leaf.grad[rows]
        return objective, losses.detach(), norms

    def step_with_closure(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """L-BFGS, one run: its line search evaluates the loss again; the losses and norms recorded are those at
        the weights the step started from."""
        evaluations = []

        def closure():
            evaluations.append(self.forward_backward(x, y))
            return evaluations[-1][0]

        self.steppers[0].optimizer.step(closure)
        _, losses, norms = evaluations[0]
        return losses, norms

    def step_optimizers(self) -> None:
        for stepper in list(self.steppers):
            try:
                stepper.optimizer.step()
            except Exception as e:  # a user's optimizer that raises fails its runs, not the pass
                if self.K == 1:
                    raise
                self.fail_stepper(stepper, e)

    def advance_schedules(self, event: str) -> None:
        """Step the schedules that step on `event` (step | epoch); eval ones step in `judge` with the val loss."""
        for stepper in self.steppers:
            if stepper.interval == event:
                stepper.scheduler.step()

    def keep_previous_weights(self) -> None:
        for k in self.alive:  # the point one step back, for the update sizes at the evaluation
            self.runs[k].previous = (self.step, [diagnostics.flat_layer(layer).clone()
                                                 for _, layer in linear_layers(self.runs[k].model)])

    def optimizers(self) -> list:
        return [stepper.optimizer for stepper in self.steppers]

    def progress(self) -> None:
        """Where the runs are, every trainer.progress_every seconds, for a log without a terminal (a job's output
        file) in place of the bar."""
        if not self.bar.disable or time.perf_counter() < self.next_progress:
            return
        rate = (self.step - self.first_step) / (time.perf_counter() - self.stepping_since)  # evaluations included
        left = f" | ~{(self.lengths.total_steps - self.step) / rate:.0f} s left" if rate else ""
        log.info("%sstep %d/%d (%.0f%%) | epoch %d/%d | loss %s | %.1f steps/s%s", self.label and f"{self.label}: ",
                 self.step, self.lengths.total_steps, 100 * self.step / max(self.lengths.total_steps, 1), self.epoch,
                 self.n_epochs, self.last_loss, rate, left)
        self.next_progress = time.perf_counter() + self.settings.progress_every

    # ------------------------------------------------------------------ reading back, evaluating, saving

    def flush_steps(self) -> None:
        """Write the buffered step metrics (one host read); a run with a non-finite value has diverged."""
        if not self.pending:
            return
        values = torch.stack([v for *_, v in self.pending]).tolist()  # [steps, metrics, K]
        for k in list(self.alive):
            run, rows, first_bad = self.runs[k], [], None
            for (step, epoch, step_lrs, _), step_values in zip(self.pending, values):
                mine = dict(zip(self.step_names, [v[k] for v in step_values]))
                rows.append((step, epoch, "step", "lr", step_lrs[k]))
                rows.extend((step, epoch, "step", name, v) for name, v in mine.items())
                if first_bad is None and not all(math.isfinite(v) for v in mine.values()):
                    first_bad = step
                diagnostics.update_flags(run.flags, step, mine, self.diag.thresholds)
            run.writer.write_rows(rows)
            run.last_values = mine
            if first_bad is not None:
                run.summary["diverged_at_step"] = first_bad
                self.end(k, "diverged", f"non-finite loss or gradient at step {first_bad}")
        self.pending.clear()
        self.last_loss = f"{min(values[-1][0]):.4f}" + (" (lowest of the pass)" if self.K > 1 else "")
        self.bar.set_postfix(loss=self.last_loss, refresh=False)

    def run_eval(self, decide: bool = True) -> None:
        """Evaluate every run; with `decide`, also step eval-interval schedules and check early stopping."""
        if not self.alive:  # every run diverged at the read-back just before
            return
        sync(self.device)
        times = {k: self.train_time(k) for k in self.alive}
        eval_started = time.perf_counter()
        self.to_eval_point()
        results = torch.stack([torch.stack([evaluate(self.runs[k].model, self.loss_fn, *xy, self.mean, self.std)
                                            for xy in self.eval_sets.values()]) for k in self.alive]).tolist()
        counts = self.counters.tolist()
        histograms_now = self.per_layer and diagnostics.histograms_due(self.diag.level, self.histogram_steps, self.step)
        for k, result in zip(list(self.alive), results):
            self.record_evaluation(k, result, times[k], counts[k], histograms_now)
            self.judge(k, train_loss=result[0][0], val_loss=result[1][0], decide=decide)
        optimizers.set_mode(self.optimizers(), "train")
        self.eval_time += time.perf_counter() - eval_started

    def record_evaluation(self, k: int, result: list, train_time: float, counts: list, histograms_now: bool) -> None:
        """Run k's evaluation in its history, metrics, diagnostics, histograms, log and summary."""
        run, step, epoch = self.runs[k], self.step, self.epoch
        (tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc) = result
        run.history.append(dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                                val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=train_time))
        for name, loss, acc in (("train", tr_loss, tr_acc), ("val", va_loss, va_acc), ("test", te_loss, te_acc)):
            run.writer.write(step, epoch, name, {"loss": loss, "acc": acc})
        run.writer.write(step, epoch, "run", {"train_time": train_time})
        if self.per_layer:
            assert run.initial is not None  # setup.build_runs keeps every run's start point
            numbers, layers_seen = diagnostics.at_evaluation(run.model, self.loss_fn, self.probe_x, self.probe_y,
                                                             self.cfg.model.activation, self.diag.saturation, step,
                                                             run.previous, run.initial)
            run.writer.write(step, epoch, "diag", numbers)
            diagnostics.update_flags(run.flags, step, {**run.last_values, **numbers}, self.diag.thresholds)
            if histograms_now:
                csv.writer(run.histogram_file).writerows(
                    diagnostics.histogram_rows(step, epoch, layers_seen, self.diag.histogram_bins))
                run.histogram_file.flush()
        run.writer.flush()
        if self.K > 1:
            run.summary["vectorized"]["pass_train_time"] = round(train_time * self.K, 3)
        run.log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                     epoch, step, tr_loss, va_loss, va_acc, te_acc, train_time)
        self.record_counters(k, counts)
        update_summary(run.summary, run.history, time.perf_counter() - self.started)
        rundir.write_json(run.dir / rundir.SUMMARY, run.summary)

    def judge(self, k: int, train_loss: float, val_loss: float, decide: bool) -> None:
        """After run k's evaluation: diverged, or (with `decide`) its plateau schedule's step and early stopping."""
        run, settings = self.runs[k], self.settings
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            run.summary.setdefault("diverged_at_step", self.step)
            self.end(k, "diverged", f"non-finite loss or gradient at step {run.summary['diverged_at_step']}")
            return
        if not decide:
            return
        if run.stepper.interval == "eval" and self.step > 0:
            # the stepper of a run stepped on its own validation loss is its own; its scheduler takes a metric
            cast(ReduceLROnPlateau, run.stepper.scheduler).step(val_loss)
        if settings.patience and evaluations_without_improvement([h["val_loss"] for h in run.history],
                                                                 settings.min_delta) >= settings.patience:
            run.log.info("stopped early at epoch %d step %d", self.epoch, self.step)
            self.end(k, "completed", f"early stopping: validation loss did not improve by > {settings.min_delta} "
                                     f"in {settings.patience} evaluations", stopped_early=True)

    def to_eval_point(self) -> None:
        """Optimizers with train()/eval() (schedule-free) move the weights to the point they evaluate at;
        batch norm's running statistics are then re-estimated there (on the train-evaluation images)."""
        batch_size = self.lengths.batch_size
        for stepper in self.steppers:
            if optimizers.set_mode([stepper.optimizer], "eval"):
                x_bn = self.eval_sets["train"][0]
                for k in self.alive:
                    if self.runs[k].stepper is stepper and optimizers.has_batchnorm(self.runs[k].model):
                        optimizers.recompute_batchnorm(self.runs[k].model, (
                            normalise(x_bn[i : i + batch_size], self.mean, self.std)
                            for i in range(0, len(x_bn), batch_size)))

    # ------------------------------------------------------------------ how runs end

    def train_time(self, k: int) -> float:
        # a pass computes all K models at every step: each run's share of its time compares with a run alone
        return self.resumed_train_time[k] + (time.perf_counter() - self.train_started - self.eval_time) / self.K

    def record_counters(self, k: int, counts: list) -> None:
        if self.settings.clip_grad_norm or self.settings.clip_grad_value:
            self.runs[k].summary["clipped_steps"] = counts[0]
        self.runs[k].summary.update(nonfinite_steps_skipped=counts[1], step=self.step, epoch=self.epoch)

    def end(self, k: int, status: str, reason: str | None, stopped_early: bool = False) -> None:
        run = self.runs[k]
        if status == "diverged" and self.K > 1:
            run.log.warning("run diverged: %s", reason)  # its train.log; the console gets close's line
        run.summary["stopped_early"] = stopped_early
        self.record_counters(k, self.counters[k].tolist())
        self.alive.remove(k)
        close(run, status, reason, self.started)

    def fail_stepper(self, stepper: Stepper, error: Exception) -> None:
        self.steppers.remove(stepper)
        for k in [k for k in self.alive if self.runs[k].stepper is stepper]:
            self.runs[k].log.error("run failed", exc_info=True)  # the traceback in its own train.log
            self.end(k, "failed", f"{type(error).__name__}: {error}")

    def finish(self, status: str, reason: str | None) -> None:
        """The pass is over: every run still training ends with `status`."""
        self.bar.close()
        for k in list(self.alive):
            self.end(k, status, reason)


def evaluations_without_improvement(val_losses: list[float], min_delta: float) -> int:
    """Evaluations since the validation loss last fell below the best so far minus min_delta (early stopping)."""
    best, stale = math.inf, 0
    for loss in val_losses:
        if loss < best - min_delta:
            best, stale = loss, 0
        else:
            stale += 1
    return stale
