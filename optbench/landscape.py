"""Loss-landscape slices of a trained MLP, read from its run directory.

Three slices of the training loss on a fixed subset of the training split:
  - along one random direction d:           L(w + a d)            (1-D curve)
  - on the plane of two random directions:  L(w + a d1 + b d2)    (2-D contour)
  - on the segment from the initial to the final weights: L((1-t) w0 + t w) (Goodfellow, Vinyals & Saxe 2015,
    "Qualitatively characterizing neural network optimization problems").
Random directions are filter-normalised (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets"): every row
of a weight matrix (the incoming weights of one unit, a "filter" of a Linear layer) is rescaled to the norm of the
same row of the weights, so that a = 1 means "as far again as the weights themselves" in every layer alike. Biases and
batch-norm parameters get a zero direction, as in the paper.

All grid points are evaluated in batches with torch.func: `vmap` over `functional_call`, so one call runs a chunk of
models on the whole subset.
"""

import inspect
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from torch.func import functional_call, vmap

from optbench import data
from optbench.compose import CONF
from optbench.errors import UserError
from optbench.models import build_mlp
from optbench.results import RUN_SETTINGS, as_text, key_words, load_runs, rundir
from optbench.trainer import make_splits, normalise, select_device

# what a run's own loss config may add to the package's option: plain values, passed as keyword arguments
PLAIN = (int, float, bool, str, type(None))


def load_run(run_dir, which: str = "final", device: str | None = None):
    """(cfg, model, init_state, final_state) of a run; the model holds `which` ("final" or "init") weights, in
    eval mode. Only data is read from the folder: tensors with weights_only, the config's values; what is
    instantiated (the loss) is the package's own option, by the name the run recorded (`loss_of`)."""
    run_dir = Path(run_dir)
    missing = [f for f in (rundir.CONFIG, rundir.INIT, rundir.CHECKPOINT) if not (run_dir / f).is_file()]
    if missing:
        raise UserError(f"{run_dir} is not a finished run directory: no {', '.join(missing)} "
                        "(runs write them from optbench train; checkpoint.pt at the end of each epoch)")
    cfg = rundir.read_config(run_dir)
    way_out = "landscape needs the run's own files: train the run again"
    dev = select_device(device or cfg.get("device", "auto"))
    init = rundir.read_tensors(run_dir / rundir.INIT, way_out, dev)
    final = rundir.read_tensors(run_dir / rundir.CHECKPOINT, way_out, dev)
    try:
        model = build_mlp(**cfg.model).to(dev)
        model.load_state_dict(final["model"] if which == "final" else init)
    except (TypeError, KeyError, RuntimeError, AttributeError) as e:
        raise rundir.DamagedFile(run_dir / rundir.CONFIG, f"does not describe the weights beside it ({e})",
                                 way_out) from None
    model.eval()  # batch norm uses its running statistics, dropout is off: L(w) is a function of w alone
    return cfg, model, init, final["model"]


def loss_of(run_dir: Path, cfg):
    """The run's loss, built from the package's own conf/loss/<name>.yaml (the name from its summary), with the
    run's plain-valued arguments: never a `_target_` read from the folder, which could name any callable."""
    summary = rundir.read_summary(run_dir) or {}
    # each conf/loss/<name>.yaml is a mapping (its _target_ and arguments)
    options = {p.stem: cast(DictConfig, OmegaConf.load(p)) for p in sorted((CONF / "loss").glob("*.yaml"))}
    name = (summary.get("choices") or {}).get("loss")
    if name is None:  # trained through the Python API without choices: the option whose class the run names
        target = (cfg.get("loss") or {}).get("_target_")
        name = next((n for n, option in options.items() if option.get("_target_") == target), None)
    if name not in options:
        raise UserError(f"{run_dir}: its loss is not one of optbench's ({', '.join(options)}); landscape rebuilds a "
                        "run only from optbench's own options")
    option = options[name]
    takes = inspect.signature(get_class(option._target_)).parameters  # arguments meant for another class: left out
    # the run's loss section is a mapping, so its container is a dict with string keys
    recorded = cast(dict[str, Any], OmegaConf.to_container(cfg.get("loss") or {}))
    extra = {k: v for k, v in recorded.items() if k in takes and isinstance(v, PLAIN)}
    return instantiate(option, **extra)


def training_subset(cfg, samples: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `samples` images of the run's training split, normalised as in training."""
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, device)
    x, y = split["train"]
    if not 1 <= samples <= len(x):
        raise UserError(f"--samples={samples} must be between 1 and the training split's {len(x)}")
    return normalise(x[:samples], split["mean"], split["std"]), y[:samples]


def filter_normalised_direction(params: dict[str, torch.Tensor], generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A gaussian direction with each row of each weight matrix scaled to that row's norm in `params`; 1-D
    parameters (biases, batch-norm scale and shift) get zeros."""
    direction = {}
    for name, p in params.items():
        if p.dim() <= 1:
            direction[name] = torch.zeros_like(p)
            continue
        d = torch.randn(p.shape, generator=generator, device=generator.device, dtype=p.dtype).to(p.device)
        scale = p.flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1).clamp_min(1e-12)
        direction[name] = d * scale.view(-1, *[1] * (p.dim() - 1))
    return direction


@torch.no_grad()
def losses_along(model, loss_fn, x, y, base: dict, directions: list[dict], coeffs: torch.Tensor,
                 chunk: int = 16) -> torch.Tensor:
    """L(base + sum_k coeffs[g, k] * directions[k]) for every row g of coeffs, as a tensor of len(coeffs).

    `model` is build_mlp's Sequential (Flatten, first Linear, rest); buffers keep the model's values. The first
    Linear holds most of the multiply-adds (784 inputs), and its output is linear in its weights: x W^T on the slice
    is x W0^T + sum_k c_k x D_k^T. So it is computed once per direction, and only the rest of the network runs per
    grid point (about 3x faster for the default MLP)."""
    rest = model[2:]
    w, b = "1.weight", "1.bias"
    inputs = x.flatten(1)
    products = torch.stack([F.linear(inputs, p[w], p.get(b)) for p in (base, *directions)])  # (1 + k, N, h)
    names = [n for n in base if n not in (w, b)]
    stacked = {n: torch.stack([d[n] for d in directions]) for n in names}  # (k, *shape)

    def loss_at(params, hidden):
        return loss_fn(functional_call(rest, params, (hidden,)), y)

    out = []
    for c in coeffs.to(device=x.device, dtype=x.dtype).split(chunk):
        params = {n: base[n] + torch.tensordot(c, stacked[n], dims=1) for n in names}
        out.append(vmap(loss_at)(params, products[0] + torch.tensordot(c, products[1:], dims=1)))
    return torch.cat(out)


def landscape(run_dir, points: int = 41, span: float = 1.0, samples: int = 10000, which: str = "final",
              seed: int = 0, device: str | None = None, chunk: int = 16) -> dict:
    """Every slice of one run as numpy arrays, plus the time the evaluation took (seconds)."""
    if points < 3:
        raise UserError(f"--points={points} must be >= 3")
    if not span > 0:
        raise UserError(f"--span={span} must be > 0")
    cfg, model, init, final = load_run(run_dir, which, device)
    dev = next(model.parameters()).device
    x, y = training_subset(cfg, samples, dev)
    loss_fn = loss_of(Path(run_dir), cfg)
    base = {n: p.detach() for n, p in model.named_parameters()}
    gen = torch.Generator(device="cpu").manual_seed(seed)
    d1, d2 = filter_normalised_direction(base, gen), filter_normalised_direction(base, gen)

    started = time.perf_counter()
    a = torch.linspace(-span, span, points)
    grid = torch.cartesian_prod(a, a)  # row-major: grid[i * points + j] = (a[i], a[j])
    surface = losses_along(model, loss_fn, x, y, base, [d1, d2], grid, chunk).view(points, points)
    curve = losses_along(model, loss_fn, x, y, base, [d1], a[:, None], chunk)
    t = torch.linspace(-0.5, 1.5, points)
    start = {n: init[n].to(dev) for n in base}
    interp = losses_along(model, loss_fn, x, y, start, [{n: final[n].to(dev) - start[n] for n in base}],
                          t[:, None], chunk)
    return {"name": Path(run_dir).resolve().name, "run_dir": str(run_dir), "which": which, "samples": len(x),
            "alpha": a.numpy(), "surface": surface.cpu().numpy(), "curve": curve.cpu().numpy(), "t": t.numpy(),
            "interp": interp.cpu().numpy(), "seconds": time.perf_counter() - started}


# what a panel title says about a run when nothing else tells the runs apart
SETTINGS = ("optimizer.name", "optimizer.lr", "trainer.batch_size", "trainer.epochs", "model.hidden",
            "model.activation")


def titles(results: list[dict]) -> tuple[list[str], str]:
    """(a title per run: the settings that differ between the runs, in words; what they share, for the figure title).

    A folder's name is a time stamp more often than not (outputs/2026-12-01_17-59-38); its config says what it is."""
    import pandas as pd

    rows = [load_runs(r["run_dir"]).iloc[0] for r in results] if all("run_dir" in r for r in results) else []
    if not rows:
        return [r["name"] for r in results], ""
    frame = pd.DataFrame(rows).reset_index(drop=True)
    table = as_text(frame.drop(columns=["run", "run_dir", "status"], errors="ignore"))
    config = [c for c in rows[0].index if c in table and c not in RUN_SETTINGS and "._target_" not in c
              and (c.split(".")[0] in ("optimizer", "trainer", "model", "init", "schedule", "data", "loss")
                   or c == "seed")]
    varied = [c for c in config if table[c].nunique() > 1]
    shared = [c for c in SETTINGS if c in table and c not in varied]

    def words(keys, row):
        return ", ".join(f"{table.loc[row, k]}" if k == "optimizer.name" else f"{key_words(k)} {table.loc[row, k]}"
                         for k in keys)

    panels = [words(varied, i) if varied else words(shared, i) for i in table.index]
    if len(set(panels)) < len(panels):  # the same run twice, or runs alike in every setting
        panels = [f"{p} ({r['name']})" for p, r in zip(panels, results)]
    return panels, words(shared, table.index[0]) if varied else ""


def plot_curves(results: list[dict]):
    """1-D slices: loss along the random direction, and along the init -> final segment."""
    import matplotlib.pyplot as plt
    import pandas as pd

    from optbench.results.plots import log_y, palette

    names, shared = titles(results)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4.4), layout="constrained")
    for r, name, colour in zip(results, names, palette(len(results))):
        ax1.plot(r["alpha"], r["curve"], color=colour, lw=2, label=f"{name} ({r['which']} weights)")
        ax2.plot(r["t"], r["interp"], color=colour, lw=2, label=name)
    ax1.set(xlabel="step along a filter-normalised random direction, a", ylabel="training loss (cross-entropy, log)",
            title="1-D slice: L(w + a d)")
    ax2.set(xlabel="interpolation t (0: initial weights, 1: final weights)",
            ylabel="training loss (cross-entropy, log)", title="Linear interpolation: L((1-t) w0 + t w)")
    for t in (0, 1):
        ax2.axvline(t, color="0.4", lw=0.8, ls=":")
    for ax, key in ((ax1, "curve"), (ax2, "interp")):
        values = np.concatenate([r[key] for r in results])
        log_y(ax, pd.Series(values[np.isfinite(values)]))
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=9)
    fig.suptitle(f"Training loss on {results[0]['samples']} training images" + (f"; {shared}" if shared else ""))
    return fig


def plot_surfaces(results: list[dict]):
    """2-D contours, one panel per run, on one shared logarithmic colour scale."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    finite = np.concatenate([r["surface"][np.isfinite(r["surface"])] for r in results])
    lo, hi = float(finite.min()), float(finite.max())
    levels, norm = np.geomspace(lo, hi, 30), LogNorm(lo, hi)
    names, shared = titles(results)
    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results) + 1.4, 4.9), layout="constrained",
                             squeeze=False)
    for ax, r, name in zip(axes[0], results, names):
        a = r["alpha"]
        # surface[i, j] is at (a[i], a[j]): transpose so that the first direction runs along x
        cs = ax.contourf(a, a, r["surface"].T, levels=levels, norm=norm, cmap="viridis")
        ax.contour(a, a, r["surface"].T, levels=levels[::3], colors="white", linewidths=0.4, alpha=0.6)
        ax.plot(0, 0, "+", color="red", ms=12, mew=2)
        ax.set(xlabel="direction 1, a", ylabel="direction 2, b", title=name, aspect="equal")
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.yaxis.set_major_locator(MaxNLocator(5))
    bar = fig.colorbar(cs, ax=axes[0].tolist(), label="training loss (cross-entropy, log scale)")
    # ticks at 1, 2, 5 times a power of ten, as plain numbers: values one reads off, not the contour levels
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0) if np.log10(hi / lo) < 3 else (1.0,)))
    bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    fig.suptitle(f"2-D slice L(w + a d1 + b d2), filter-normalised directions, {results[0]['samples']} training images"
                 + (f"\n{shared}" if shared else "") + f"; red +: the {results[0]['which']} weights")
    return fig


def save_figures(results: list[dict], out_dir) -> list[Path]:
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    prefix = "landscape" + ("_init" if results[0]["which"] == "init" else "")
    paths = [out_dir / f"{prefix}_1d.png", out_dir / f"{prefix}_2d.png", out_dir / f"{prefix}.npz"]
    for path, fig in zip(paths, (plot_curves(results), plot_surfaces(results))):
        fig.savefig(path, dpi=150)
        plt.close(fig)
    arrays = {f"{i}_{k}": v for i, r in enumerate(results) for k, v in r.items() if isinstance(v, np.ndarray)}
    # numpy's stubs match **arrays against savez's allow_pickle: bool keyword, not its **kwds of arrays
    np.savez(paths[2], **arrays)  # type: ignore[arg-type]
    return paths
