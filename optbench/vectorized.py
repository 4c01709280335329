"""Many runs in one pass: K models that differ only in seed, optimizer, schedule or init, trained together.

Each parameter of the K models is one stacked [K, ...] tensor, so a training
step is one batched forward/backward (torch.bmm) instead of K small ones, and
each model still draws its own data order from its own seed. The K models are
also K ordinary `nn.Sequential`s whose parameters are views of row k of the
stacked tensors (`p.data = stacked.data[k]`), and each has its own ordinary
torch optimizer and scheduler built exactly as `trainer.fit` builds them: the
update of model k is torch's own code (fused kernels included) with model k's
hyperparameters, the gradient it reads is row k of the stacked gradient, and
its checkpoint is the usual state_dict. That is why a vectorized run matches a
separate one to floating-point tolerance with no optimizer re-implemented here.
The same views make the evaluation diagnostics (diagnostics.at_evaluation:
probe statistics, update sizes, histograms) those of `trainer.fit`, per model.

Runs that cannot be vectorized (dropout draws masks from the global RNG, LBFGS
needs closures, features this loop does not implement) are reported by
`why_not` and run one by one instead.
"""

import csv
import json
import logging
import math
import signal
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm import tqdm

from optbench import data, diagnostics, results
from optbench.errors import UserError
from optbench.models import build_mlp, init_weights, linear_layers
from optbench.trainer import (
    CHECKPOINT, HISTOGRAMS, SYNC_EVERY, _now, _stop_on_signals, _sync, _update_summary, build_optimizer, build_scheduler,
    check_diagnostics, clear_run_files, eval_splits, evaluate, make_splits, normalise, optimizer_impl, run_lengths, save_checkpoint, select_device,
)
from optbench.schedules import warmup_factor

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# keys that may differ between the models of one pass: each model builds its own from them
VARYING = ("seed", "optimizer", "schedule", "init")
# the models of one pass share one memory budget: ~1 MB per model of parameters and Adam state
# for the default MLP, plus K x batch activations
MAX_MODELS = 32
# what the loop below implements; any other key must be switched off (null/0/false/none/off)
KNOWN = {
    "": {"data", "model", "trainer", "optimizer", "schedule", "init", "loss", "seed", "device", "diagnostics"},
    "data": {"name", "root", "val_size", "train_eval_size"},
    "trainer": {"epochs", "max_steps", "batch_size", "eval_every", "log_every", "checkpoint_every", "vectorize",
                # the launcher leaves finished runs (skip_completed) and runs with a checkpoint to resume out of the pass
                "skip_completed", "resume"},
    "model": {"hidden", "activation", "batchnorm", "dropout"},
}
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format


def mode(cfg: DictConfig) -> str:
    value = str(cfg.trainer.get("vectorize", "off"))
    if value not in MODES:
        raise UserError(f"trainer.vectorize={value} is not one of {', '.join(MODES)}")
    return value


def why_not(cfg: DictConfig) -> str | None:
    """Why `cfg` cannot train in a vectorized pass, or None when it can."""
    if cfg.model.get("dropout", 0) > 0:
        return "model.dropout > 0 draws masks from the global random stream, so runs would not match separate ones"
    target = str(cfg.optimizer.get("_target_", ""))
    if not target.startswith("torch.optim.") or target.endswith("LBFGS"):
        return f"optimizer {target} is not a closure-free torch.optim optimizer"
    if cfg.schedule.get("interval", "step") == "eval" or "ReduceLROnPlateau" in str(cfg.schedule.get("_target_")):
        return "a schedule stepped with the validation loss (interval=eval) is not implemented by the vectorized loop"
    for section, known in KNOWN.items():
        node = cfg if not section else cfg[section]
        for key in node:
            if key not in known and not _off(node[key]):
                where = f"{section}.{key}" if section else key
                return f"{where} is not implemented by the vectorized loop"
    return None


def _off(value) -> bool:
    if isinstance(value, DictConfig):
        return all(_off(v) for v in value.values())
    return value in (None, False, 0, "none", "off")


def group_key(cfg: DictConfig) -> str:
    """Configurations with equal keys can share a pass: all but VARYING and trainer.vectorize agree."""
    c = OmegaConf.to_container(cfg, resolve=True)
    for key in VARYING:
        c.pop(key, None)
    c.get("trainer", {}).pop("vectorize", None)
    return json.dumps(c, sort_keys=True, default=str)


def plan(cfgs: list[DictConfig]) -> list[list[int]]:
    """Indices of `cfgs` in passes: lists of more than one index train together, in order of first job."""
    groups: dict[str, list[int]] = {}
    passes: list[list[int]] = []
    for i, cfg in enumerate(cfgs):
        wanted = mode(cfg)
        reason = why_not(cfg) if wanted != "off" else "trainer.vectorize=off"
        if reason is not None:
            if wanted == "on":
                raise UserError(f"trainer.vectorize=on, but this run cannot be vectorized: {reason} "
                                "(use trainer.vectorize=auto to run such runs one by one)")
            if wanted == "auto":
                log.info("job %d runs on its own: %s", i, reason)
            passes.append([i])
            continue
        key = group_key(cfg)
        if key not in groups or len(groups[key]) >= MAX_MODELS:
            groups[key] = []
            passes.append(groups[key])
        groups[key].append(i)
    return passes


# ---------------------------------------------------------------- the stacked model

def stack_models(models: list[nn.Sequential]) -> dict[str, torch.Tensor]:
    """One [K, ...] leaf per parameter (and per batch-norm statistic); model k's tensors become views of row k."""
    stacked = {}
    for name, _ in models[0].named_parameters():
        stacked[name] = torch.stack([m.get_parameter(name).detach() for m in models]).requires_grad_()
    for name, buf in models[0].named_buffers():
        if buf.is_floating_point():  # running mean/var; num_batches_tracked is set at checkpoint time
            stacked[name] = torch.stack([m.get_buffer(name) for m in models])
    for k, m in enumerate(models):
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            if name in stacked:
                t.data = stacked[name].data[k]
    return stacked


def stacked_forward(template: nn.Sequential, stacked: dict, x: torch.Tensor) -> torch.Tensor:
    """Training-mode forward of all K models: x [K, B, ...] -> logits [K, B, n_out]."""
    for i, module in enumerate(template):
        if isinstance(module, nn.Flatten):
            x = x.flatten(2)
        elif isinstance(module, nn.Linear):
            w, b = stacked[f"{i}.weight"], stacked.get(f"{i}.bias")
            x = torch.bmm(x, w.transpose(1, 2)) if b is None else torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
        elif isinstance(module, nn.BatchNorm1d):
            # the K models' channels side by side: per-channel statistics are per-model statistics
            k, n, h = x.shape
            y = F.batch_norm(
                x.transpose(0, 1).reshape(n, k * h),
                stacked[f"{i}.running_mean"].view(-1), stacked[f"{i}.running_var"].view(-1),
                stacked[f"{i}.weight"].view(-1), stacked[f"{i}.bias"].view(-1),
                training=True, momentum=module.momentum, eps=module.eps,
            )
            x = y.view(n, k, h).transpose(0, 1)
        else:  # activations: elementwise, any shape
            x = module(x)
    return x


def batched_loss(loss_fn, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each model's mean loss over its own batch: [K]."""
    if type(loss_fn) is nn.CrossEntropyLoss and loss_fn.weight is None and loss_fn.reduction == "mean":
        per_sample = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none",
                                     ignore_index=loss_fn.ignore_index, label_smoothing=loss_fn.label_smoothing)
        return per_sample.view(y.shape).mean(1)
    return torch.stack([loss_fn(logits[k], y[k]) for k in range(len(y))])


# ---------------------------------------------------------------- one pass

class _Run:
    """What `trainer.fit` keeps for one run: its model, optimizer, writer, summary and history."""

    def __init__(self, k, cfg, run_dir, choices):
        self.k, self.cfg, self.dir = k, cfg, Path(run_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        clear_run_files(self.dir)  # a pass always starts its runs afresh (a killed attempt may have left rows)
        OmegaConf.save(cfg, self.dir / "config.yaml", resolve=True)
        self.summary = {"status": "running", "choices": dict(choices or {}), "started_at": _now(),
                        **results.provenance()}
        results.write_json_atomic(self.dir / results.SUMMARY, self.summary)
        self.history, self.status, self.reason, self.error = [], "running", None, None
        self.writer = None
        self.histogram_file = None
        self.previous, self.last_values = None, {}  # diagnostics: parameters one step back, last step's numbers
        self.log = logging.getLogger(f"optbench.vectorized.{k}")
        self.log.propagate = False  # each run's lines go to its own train.log, not to the others'
        self._handler = logging.FileHandler(self.dir / "train.log")
        self._handler.setFormatter(logging.Formatter(LOG_FORMAT))
        self.log.addHandler(self._handler)
        self.log.setLevel(logging.INFO)

    def close(self, status, reason, step, epoch, wall):
        if self.writer is not None:
            self.writer.close()
        if self.histogram_file is not None:
            self.histogram_file.close()
        self.status = status
        self.summary.update(status=status, reason=reason, finished_at=_now())
        _update_summary(self.summary, self.history, step, epoch, wall)
        results.write_json_atomic(self.dir / results.SUMMARY, self.summary)
        self.log.info("%s: best val acc %s, test acc at that epoch %s", status,
                      _fmt(self.summary.get("best_val_acc")), _fmt(self.summary.get("test_acc_at_best_val")))
        self.log.removeHandler(self._handler)
        self._handler.close()


def fit_many(cfgs: list[DictConfig], run_dirs: list, choices: list[dict] | None = None) -> list[dict]:
    """Train the models of `cfgs` (one `group_key`) in one pass; write each into its run dir like `trainer.fit`.

    Returns one summary per config. A run whose setup fails (a bad optimizer
    argument, say) gets status failed and the others go on; so does the pass
    when one model diverges.
    """
    reasons = {why_not(c) for c in cfgs} - {None}
    if reasons:
        raise UserError(f"these runs cannot be vectorized: {'; '.join(sorted(reasons))}")
    keys = {group_key(c) for c in cfgs}
    if len(keys) != 1:
        raise ValueError("fit_many: the configs differ in more than seed/optimizer/schedule/init")
    started = time.perf_counter()
    runs = [_Run(k, c, d, (choices or [None] * len(cfgs))[k]) for k, (c, d) in enumerate(zip(cfgs, run_dirs))]
    try:
        _fit_many(cfgs[0], runs, started)
    except BaseException as e:
        for r in runs:
            if r.status == "running":
                r.close("failed", f"{type(e).__name__}: {e}", r.summary.get("step", 0), r.summary.get("epoch", 0),
                        time.perf_counter() - started)
        raise
    return [r.summary for r in runs]


def _fit_many(cfg: DictConfig, all_runs: list[_Run], started: float) -> None:
    device = select_device(cfg.device)
    arrays = data.load_arrays(cfg.data.name, cfg.data.root)
    split = make_splits(arrays, cfg.data.val_size, device)
    train_x, train_y = split["train"]
    eval_sets = eval_splits(split, cfg.data.get("train_eval_size"))
    n_train = len(train_x)
    check_diagnostics(cfg.diagnostics)
    bs, steps_per_epoch, total_steps, eval_every = run_lengths(cfg.trainer, n_train)
    loss_fn = instantiate(cfg.loss)

    # each model exactly as trainer.fit builds it: same seed, same random draws in the same order
    runs = []
    for r in all_runs:
        try:
            torch.manual_seed(r.cfg.seed)
            r.model = build_mlp(**r.cfg.model).to(device)
            init_weights(r.model, r.cfg.init)
            torch.save(r.model.state_dict(), r.dir / "init.pt")
            r.optimizer = build_optimizer(r.cfg.optimizer, r.model.parameters())
            r.scheduler, r.interval, r.warmup_steps = build_scheduler(r.cfg.schedule, r.optimizer, total_steps,
                                                                      steps_per_epoch)
            r.shuffle = torch.Generator(device=device).manual_seed(r.cfg.seed)
            runs.append(r)
        except UserError as e:
            r.log.error("run failed: %s", e)
            log.error("%s: run failed: %s", r.dir.name, e)
            r.error = e
            r.close("failed", f"{type(e).__name__}: {e}", 0, 0, time.perf_counter() - started)
    if not runs:
        return
    K = len(runs)
    models = [r.model for r in runs]
    stacked = stack_models(models)
    template = models[0]
    layers = linear_layers(template)
    names = [n for n, _ in template.named_parameters()]
    params = [stacked[n] for n in names]
    # which entries of `params` belong to each Linear layer, for per-layer gradient norms
    module_of = {id(m): prefix for prefix, m in template.named_modules()}
    layer_params = [[j for j, n in enumerate(names) if n.rsplit(".", 1)[0] == module_of[id(layer)]]
                    for _, layer in layers]
    batchnorms = [m for m in template.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    # per-layer and per-parameter gradient norms and evaluation diagnostics as trainer.fit writes them
    diag = cfg.diagnostics
    per_layer = diag.level != "off"
    layer_param_names = [f"{name}.{kind}" for name, layer in layers for kind, _ in layer.named_parameters()]
    layer_param_index = [names.index(f"{module_of[id(layer)]}.{kind}") for _, layer in layers
                         for kind, _ in layer.named_parameters()]
    if not per_layer:
        layer_params, layer_param_index = [], []
    step_names = ["loss", "grad_norm"]
    if per_layer:
        step_names += [f"grad_norm/{name}" for name, _ in layers] + [f"grad_norm/{n}" for n in layer_param_names]
    probe_x = normalise(split["val"][0][: diag.probe_size], split["mean"], split["std"])
    probe_y = split["val"][1][: diag.probe_size]
    histogram_steps = diagnostics.histogram_schedule(diag.histogram_at, total_steps)
    for r in runs:
        r.summary.update(
            device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
            optimizer_impl=optimizer_impl(r.optimizer),
            n_params=sum(p.numel() for p in r.model.parameters()),
            steps_per_epoch=steps_per_epoch,
            total_steps=total_steps,
            torch_threads=torch.get_num_threads(),
            tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
            # train_time and seconds_per_epoch are this model's share: the pass's training time / `models`
            cudnn_benchmark=torch.backends.cudnn.benchmark,
            amp=None,  # trainer.amp=true and trainer.compile run on their own, never in a pass
            compile=None,
            vectorized={"models": K, "index": r.k},
            stopped_early=False,
            flags={name: None for name in ("exploding_gradients", "vanishing_gradients", "dead_relu", "saturated")},
            # a pass does not zero non-finite gradients: such a model leaves the pass at the next read-back
            nonfinite_steps_skipped=None,
        )
        r.summary["diagnostics"] = diag.level
        r.writer = results.MetricsWriter(r.dir)
        r.histogram_file = open(r.dir / HISTOGRAMS, "w", newline="")  # header only with diagnostics=off, as fit's
        r.histogram_csv = csv.writer(r.histogram_file)
        r.histogram_csv.writerow(diagnostics.HISTOGRAM_COLUMNS)
        r.histogram_file.flush()
        if per_layer:
            r.initial = [diagnostics.flat_layer(layer).clone() for _, layer in linear_layers(r.model)]
        r.log.info("%s | %d parameters | %s (%s) | %d steps of batch %d | vectorized with %d models",
                   device, r.summary["n_params"], type(r.optimizer).__name__, r.summary["optimizer_impl"],
                   total_steps, bs, K)
    log.info("vectorized pass of %d runs on %s: %d steps of batch %d", K, device, total_steps, bs)
    # (model's param, row k of the stacked gradient) pairs, rebuilt as views each step
    own = [list(r.model.parameters()) for r in runs]
    alive = list(range(K))
    pending = []  # (step, epoch, [lr per model], [len(step_names), K] tensor) not yet read back
    step, epoch = 0, 0

    def flush_steps() -> None:
        """Write buffered step metrics; a model with a non-finite value is diverged and leaves the pass."""
        if not pending:
            return
        values = torch.stack([v for *_, v in pending]).tolist()  # [steps, metrics, K]: one host sync
        for k in list(alive):
            rows, first_bad = [], None
            for (s, e, lrs, _), vals in zip(pending, values):
                mine = [v[k] for v in vals]
                rows.append((s, e, "step", "lr", lrs[k]))
                rows.extend((s, e, "step", name, v) for name, v in zip(step_names, mine))
                if first_bad is None and not all(math.isfinite(v) for v in mine):
                    first_bad = s
                diagnostics.update_flags(runs[k].summary["flags"], s, dict(zip(step_names, mine)),
                                         runs[k].cfg.diagnostics.thresholds)
            runs[k].writer.write_rows(rows)
            runs[k].last_values = dict(zip(step_names, mine))  # for the health flags at the next evaluation
            if first_bad is not None:
                runs[k].summary["diverged_at_step"] = first_bad
                end(k, "diverged")
        pending.clear()
        bar.set_postfix(loss=f"{min(values[-1][0]):.4f}", refresh=False)

    def end(k: int, status: str, reason: str | None = None) -> None:
        r = runs[k]
        if status == "diverged":
            reason = f"non-finite loss or gradient at step {r.summary['diverged_at_step']}"
            r.log.warning("run diverged: %s", reason)
            log.warning("%s diverged: %s", r.dir.name, reason)
        alive.remove(k)
        r.close(status, reason, step, epoch, time.perf_counter() - started)

    def run_eval() -> None:
        if not alive:  # every model diverged at the read-back just before
            return
        histograms_now = per_layer and diagnostics.histograms_due(diag.level, histogram_steps, step)
        _sync(device)
        # each model's share: every step computes all K stacked models, so time-to-target and --x time compare
        # with separate runs (K = models in the pass, those that left it included)
        pass_time = time.perf_counter() - train_started - eval_time[0]
        train_time = pass_time / K
        t0 = time.perf_counter()
        out = torch.stack([
            torch.stack([evaluate(runs[k].model, loss_fn, *xy, split["mean"], split["std"]) for xy in eval_sets.values()])
            for k in alive
        ]).tolist()
        for k, ((tr_loss, tr_acc), (va_loss, va_acc), (te_loss, te_acc)) in zip(list(alive), out):
            r = runs[k]
            r.history.append(dict(step=step, epoch=epoch, train_loss=tr_loss, train_acc=tr_acc, val_loss=va_loss,
                                  val_acc=va_acc, test_loss=te_loss, test_acc=te_acc, train_time=train_time))
            for s, l, a in (("train", tr_loss, tr_acc), ("val", va_loss, va_acc), ("test", te_loss, te_acc)):
                r.writer.write(step, epoch, s, {"loss": l, "acc": a})
            r.writer.write(step, epoch, "run", {"train_time": train_time})
            if per_layer:
                numbers, layers_seen = diagnostics.at_evaluation(r.model, loss_fn, probe_x, probe_y,
                                                                 cfg.model.activation, diag.saturation, step,
                                                                 r.previous, r.initial)
                r.writer.write(step, epoch, "diag", numbers)
                diagnostics.update_flags(r.summary["flags"], step, {**r.last_values, **numbers}, diag.thresholds)
                if histograms_now:
                    r.histogram_csv.writerows(diagnostics.histogram_rows(step, epoch, layers_seen, diag.histogram_bins))
                    r.histogram_file.flush()
            r.writer.flush()
            r.summary["vectorized"]["pass_train_time"] = round(pass_time, 3)
            r.log.info("epoch %d step %d | train loss %.4f | val loss %.4f acc %.4f | test acc %.4f | %.1f s",
                       epoch, step, tr_loss, va_loss, va_acc, te_acc, train_time)
            _update_summary(r.summary, r.history, step, epoch, time.perf_counter() - started)
            results.write_json_atomic(r.dir / results.SUMMARY, r.summary)
            if not (math.isfinite(tr_loss) and math.isfinite(va_loss)):
                r.summary.setdefault("diverged_at_step", step)
                end(k, "diverged")
        eval_time[0] += time.perf_counter() - t0

    eval_time = [0.0]
    train_started = time.perf_counter()
    bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, disable=None, leave=False)
    status, reason = "completed", None
    try:
        with _stop_on_signals() as stop:
            run_eval()
            while alive and step < total_steps and stop.signal is None:
                epoch += 1
                bar.set_description(f"epoch {epoch}/{cfg.trainer.epochs} x{len(alive)}")
                # each model's own order, drawn from its own generator as trainer.fit draws it
                order = torch.stack([torch.randperm(n_train, device=device, generator=r.shuffle) for r in runs])
                for i in range(steps_per_epoch):
                    idx = order[:, i * bs : (i + 1) * bs]
                    if per_layer and ((step + 1) % eval_every == 0 or step + 1 == total_steps):
                        for k in alive:  # the point one step back, for the update sizes at the evaluation
                            runs[k].previous = (step, [diagnostics.flat_layer(layer).clone()
                                                       for _, layer in linear_layers(runs[k].model)])
                    x, y = normalise(train_x[idx], split["mean"], split["std"]), train_y[idx]
                    losses = batched_loss(loss_fn, stacked_forward(template, stacked, x), y)
                    losses.sum().backward()  # d(sum)/d(loss_k) = 1: each model gets its own gradient
                    lrs = [r.optimizer.param_groups[0]["lr"] for r in runs]
                    for k in alive:
                        r = runs[k]
                        for p, s in zip(own[k], params):
                            p.grad = s.grad[k]
                        # warmup multiplies the rate the schedule set, for this step only (as trainer.fit does)
                        scale = warmup_factor(step, r.warmup_steps)
                        if scale != 1.0:
                            scheduled = [g["lr"] for g in r.optimizer.param_groups]
                            for g in r.optimizer.param_groups:
                                g["lr"] *= scale
                            lrs[k] = r.optimizer.param_groups[0]["lr"]
                        r.optimizer.step()
                        if scale != 1.0:
                            for g, g_lr in zip(r.optimizer.param_groups, scheduled):
                                g["lr"] = g_lr
                        if r.interval == "step":
                            r.scheduler.step()
                    step += 1
                    bar.update()
                    if step % cfg.trainer.log_every == 0 or step == total_steps:
                        norms = torch.stack([s.grad.flatten(1).norm(dim=1) for s in params])  # [n_params, K]
                        layer_norms = [norms[ix].norm(dim=0) for ix in layer_params]
                        pending.append((step, epoch, lrs, torch.stack([losses.detach(), norms.norm(dim=0), *layer_norms,
                                                                       *norms[layer_param_index]])))
                    for s in params:
                        s.grad = None
                    if len(pending) >= SYNC_EVERY:
                        flush_steps()
                    if step % eval_every == 0 or step == total_steps or stop.signal is not None:
                        flush_steps()
                        run_eval()
                    if i == steps_per_epoch - 1:
                        for k in alive:
                            if runs[k].interval == "epoch":
                                runs[k].scheduler.step()
                    end_of_epoch = i == steps_per_epoch - 1 or step == total_steps
                    if end_of_epoch and cfg.trainer.checkpoint_every and epoch % cfg.trainer.checkpoint_every == 0:
                        for bn in batchnorms:
                            for m in (runs[k].model for k in alive):
                                m.get_submodule(module_of[id(bn)]).num_batches_tracked.fill_(step)
                        for k in alive:
                            r = runs[k]
                            save_checkpoint(r.dir / CHECKPOINT, r.model, r.optimizer, r.scheduler, step, epoch,
                                            r.shuffle)
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


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4f}"
