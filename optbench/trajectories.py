"""Optimizer paths on 2-D test functions: the lectures' pictures, drawn by the real optimizers.

Each optimizer is the torch.optim object built from the same YAML file as for training (conf/optimizer/, composed with
Hydra, built by trainer.build_optimizer), stepping on one 2-element parameter tensor. The surfaces are the `surface`
config group: Rosenbrock, Beale, a saddle and an ill-conditioned quadratic; `surface.noise` > 0 adds seeded gaussian
noise to every gradient, the stand-in for a mini-batch gradient.
"""

import math
from pathlib import Path

import numpy as np
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf

from optbench.compose import CONF, compose_config
from optbench.errors import UserError
from optbench.trainer import build_optimizer

# what `optbench trajectories` compares when no optimizer= is given (those present in conf/optimizer/)
DEFAULT_OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
# a path that runs this many plot windows away has diverged or escaped: stop it there
ESCAPE = 10.0


def rosenbrock(xy: torch.Tensor, surface: DictConfig) -> torch.Tensor:
    x, y = xy[..., 0], xy[..., 1]
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def beale(xy: torch.Tensor, surface: DictConfig) -> torch.Tensor:
    x, y = xy[..., 0], xy[..., 1]
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


def saddle(xy: torch.Tensor, surface: DictConfig) -> torch.Tensor:
    return xy[..., 0] ** 2 - xy[..., 1] ** 2


def quadratic(xy: torch.Tensor, surface: DictConfig) -> torch.Tensor:
    """0.5 (u^2 + condition v^2), (u, v) being (x, y) turned by -angle: curvatures 1 and `condition`."""
    c, s = math.cos(math.radians(surface.angle)), math.sin(math.radians(surface.angle))
    u = c * xy[..., 0] + s * xy[..., 1]
    v = -s * xy[..., 0] + c * xy[..., 1]
    return 0.5 * (u**2 + surface.condition * v**2)


FUNCTIONS = {"rosenbrock": rosenbrock, "beale": beale, "saddle": saddle, "quadratic": quadratic}


def surface_fn(surface: DictConfig):
    if surface.function not in FUNCTIONS:
        raise UserError(f"surface.function={surface.function!r} is not one of {', '.join(FUNCTIONS)}")
    return lambda xy: FUNCTIONS[surface.function](xy, surface)


def expand(overrides: list[str]) -> tuple[list, list, list[str]]:
    """(optimizers, surfaces, other overrides) from a command line such as `optimizer=sgd,adam optimizer.lr=0.1`."""
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as e:
        raise UserError(" ".join(str(e).split())) from None
    found: dict[str, list] = {}  # option names as Hydra parsed them (a sweep's as text)
    rest: list[str] = []
    for o in parsed:
        if o.key_or_group in ("optimizer", "surface") and not o.is_delete():
            found[o.key_or_group] = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.value()]
        else:
            rest.append(str(o.input_line))  # set for every override parsed from text
    present = [n for n in DEFAULT_OPTIMIZERS if (CONF / "optimizer" / f"{n}.yaml").is_file()]
    return found.get("optimizer") or present, found.get("surface", ["quadratic"]), rest


def compose(optimizer: str, surface: str, overrides: list[str]) -> DictConfig:
    """The trajectories config for one optimizer on one surface.

    Unless the command line sets optimizer.lr, the surface's lr for this optimizer replaces the YAML's own (rates
    tuned for MNIST mini-batches make nothing move on Rosenbrock in 500 steps)."""
    cfg = compose_config([f"optimizer={optimizer}", f"surface={surface}", *overrides], config_name="trajectories")
    lr_given = any(o.split("=", 1)[0].lstrip("+~") == "optimizer.lr" for o in overrides)
    OmegaConf.set_struct(cfg, False)
    cfg.name = optimizer
    if not lr_given and optimizer in cfg.surface.lr:
        cfg.optimizer.lr = cfg.surface.lr[optimizer]
    check(cfg)
    return cfg


def check(cfg: DictConfig) -> None:
    """One-line errors for the numbers a user may override."""
    def number(key, value, low=-math.inf):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= low:
            raise UserError(f"{key}={value!r} must be a number" + (f" >= {low:g}" if low > -math.inf else ""))

    s = cfg.surface
    if isinstance(cfg.steps, bool) or not isinstance(cfg.steps, int) or cfg.steps < 1:
        raise UserError(f"steps={cfg.steps!r} must be an integer >= 1")
    number("surface.noise", s.noise, 0)
    for key in ("condition", "angle"):
        if key in s:
            number(f"surface.{key}", s[key], 1 if key == "condition" else -math.inf)
    for key in ("start", "xlim", "ylim"):
        if not OmegaConf.is_list(s[key]) or len(s[key]) != 2:
            raise UserError(f"surface.{key}={s[key]!r} must be a pair of numbers, e.g. [-1.0, 2.0]")
        for v in s[key]:
            number(f"surface.{key}", v)
    for key in ("xlim", "ylim"):
        if not s[key][0] < s[key][1]:
            raise UserError(f"surface.{key}={list(s[key])} must be [low, high] with low < high")


def run(cfg: DictConfig) -> dict:
    """Step cfg.optimizer on cfg.surface from its start point: path (steps+1, 2) and f at each point.

    One step is one optimizer.step(closure): a single gradient for most optimizers, up to max_iter function
    evaluations for L-BFGS. A path that leaves the window far behind (divergence, or escape down a saddle) stops
    there; `stopped` says at which step."""
    f = surface_fn(cfg.surface)
    xy = torch.tensor(list(cfg.surface.start), dtype=torch.float32, requires_grad=True)
    optimizer = build_optimizer(cfg.optimizer, [xy])
    noise = torch.Generator().manual_seed(cfg.seed)

    def closure():
        optimizer.zero_grad()
        loss = f(xy)
        loss.backward()
        if cfg.surface.noise > 0:
            xy.grad.add_(torch.randn(2, generator=noise), alpha=cfg.surface.noise)
        return loss

    window = np.array([cfg.surface.xlim, cfg.surface.ylim], dtype=float)
    centre, half = window.mean(1), (window[:, 1] - window[:, 0]) / 2
    points, stopped = [xy.detach().clone()], None
    for step in range(1, cfg.steps + 1):
        optimizer.step(closure)
        points.append(xy.detach().clone())
        p = points[-1].numpy()
        if not np.isfinite(p).all() or (np.abs(p - centre) > ESCAPE * half).any():
            stopped = step
            break
    path = torch.stack(points)
    with torch.no_grad():
        values = f(path)
    return {"name": cfg.name, "lr": cfg.optimizer.lr, "optimizer": type(optimizer).__name__,
            "path": path.numpy(), "f": values.numpy(), "stopped": stopped}


def steps_to_reach(result: dict, minimum, distance: float) -> int | None:
    """First step at which the path is within `distance` of `minimum` (None: never)."""
    d = np.linalg.norm(result["path"] - np.asarray(minimum, dtype=float), axis=1)
    hits = np.flatnonzero(d <= distance)
    return int(hits[0]) if len(hits) else None


def _title(surface: DictConfig) -> str:
    name = surface.function
    if name == "quadratic":
        name += f" (condition number {surface.condition:g}, rotated {surface.angle:g} deg)"
    if surface.noise > 0:
        name += f", gradient noise std {surface.noise:g}"
    return name


def _label(r: dict) -> str:
    lr = f", lr {r['lr']:g}" if r["lr"] is not None else ""
    return f"{r['name']} ({r['optimizer']}{lr})" + (f", left the plot at step {r['stopped']}" if r["stopped"] else "")


def view(surface: DictConfig, results: list[dict], pad: float = 0.08) -> tuple[list[float], list[float]]:
    """(xlim, ylim): the box around the paths, the start and the minimum, padded, inside the surface's window.

    The window is where a path may go; the figure shows where they went: paths that stay in a corner of
    Beale's +-4.5 window fill the picture instead."""
    window = np.array([surface.xlim, surface.ylim], dtype=float)
    points = [np.asarray(surface.start, dtype=float)[None]]
    if surface.minimum is not None:
        points.append(np.asarray(surface.minimum, dtype=float)[None])
    points += [r["path"] for r in results]
    xy = np.concatenate(points)
    xy = xy[np.isfinite(xy).all(1) & (xy >= window[:, 0]).all(1) & (xy <= window[:, 1]).all(1)]
    low, high = xy.min(0), xy.max(0)
    margin = pad * np.maximum(high - low, 0.05 * (window[:, 1] - window[:, 0]))
    low, high = np.maximum(low - margin, window[:, 0]), np.minimum(high + margin, window[:, 1])
    return [float(low[0]), float(high[0])], [float(low[1]), float(high[1])]


def _contours(ax, surface: DictConfig, xlim, ylim):
    """Pale contours, so the coloured paths (and the valley floor they follow) stay in front."""
    f = surface_fn(surface)
    X, Y = np.meshgrid(np.linspace(xlim[0], xlim[1], 300), np.linspace(ylim[0], ylim[1], 300))
    with torch.no_grad():
        Z = f(torch.from_numpy(np.stack([X, Y], -1))).numpy()
    style = {"colors": "0.72", "linewidths": 0.6, "zorder": 1}
    if surface.minimum is not None:
        # log-spaced levels: the valley floor and the walls both get contours
        fmin = float(f(torch.tensor(list(surface.minimum), dtype=torch.float64)))
        levels = fmin + np.geomspace(max(Z.min() - fmin, 1e-2), Z.max() - fmin, 22)
        ax.contour(X, Y, Z, levels=levels, **style)
        ax.plot(*surface.minimum, "*", color="black", ms=15, mec="white", mew=0.8, zorder=6, label="minimum")
    else:
        ax.contour(X, Y, Z, levels=20, **style)
    ax.plot(*surface.start, "o", color="black", ms=8, mec="white", mew=0.8, zorder=6, label="start")
    ax.set(xlim=xlim, ylim=ylim, xlabel="x", ylabel="y", aspect="equal")


# where paths share a stretch (the quadratic's valley floor, Rosenbrock's banana), the shorter path is drawn over
# the longer, and narrower: the short one shows all along, the long one as a coloured rim beside it and beyond its
# end; dashes tell paths apart where they cross
WIDEST, NARROWEST = 6.0, 1.8
DASHES = ("-", (0, (5, 1.5)), "-", (0, (1.5, 1.2)), "-", (0, (6, 2, 2, 2)), "-", (0, (3, 1.5)))


def _styles(results: list[dict]) -> list[dict]:
    """Per path (in the given order, which sets its colour): colour, width, dashes and drawing order."""
    from optbench.results.plots import palette

    n = len(results)
    length = [np.nansum(np.linalg.norm(np.diff(r["path"], axis=0), axis=1)) for r in results]
    rank = np.empty(n, dtype=int)
    rank[np.argsort(length)[::-1]] = np.arange(n)  # 0: the longest path, drawn first, widest
    widths = np.linspace(WIDEST, NARROWEST, n) if n > 1 else [2.5]
    return [{"color": c, "lw": widths[k], "ls": DASHES[i % len(DASHES)], "zorder": 2 + k / n}
            for i, (c, k) in enumerate(zip(palette(n), rank))]


def _figsize(xlim, ylim, legend_rows: int, height: float = 5.2) -> tuple[float, float]:
    """A figure as wide as the equal-aspect view needs (between 5 and 11 inches), plus the legend's rows below."""
    ratio = (xlim[1] - xlim[0]) / (ylim[1] - ylim[0])
    width = min(max(height * ratio, 5.0), 11.0)
    return width + 0.8, width / ratio + 1.0 + 0.28 * legend_rows


def plot_paths(surface: DictConfig, results: list[dict]):
    """All paths over the surface's contour plot, zoomed to where they went; legend below."""
    import matplotlib.pyplot as plt

    xlim, ylim = view(surface, results)
    ncols = 2 if len(results) > 2 else len(results) + 2
    fig, ax = plt.subplots(figsize=_figsize(xlim, ylim, -(-(len(results) + 2) // ncols)), layout="constrained")
    _contours(ax, surface, xlim, ylim)
    for r, style in zip(results, _styles(results)):
        ax.plot(*r["path"].T, label=_label(r), **style)
        ax.plot(*r["path"][-1], "o", color=style["color"], ms=7, mec="black", mew=0.8, zorder=5)  # where it ended
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=ncols, fontsize=9,
               title="optimizer (torch class, learning rate); circles: where each path ended", title_fontsize=9)
    ax.set_title(f"{_title(surface)}: {len(results[0]['f']) - 1} steps from {tuple(surface.start)}", fontsize=11)
    return fig


def plot_values(surface: DictConfig, results: list[dict]):
    """f(x_t) against step t, one line per optimizer (f - f_min on a log scale when there is a minimum)."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 4.5), layout="constrained")
    fmin = None if surface.minimum is None else float(
        surface_fn(surface)(torch.tensor(list(surface.minimum), dtype=torch.float64)))
    for r, style in zip(results, _styles(results)):
        y = r["f"] if fmin is None else np.maximum(r["f"] - fmin, 1e-12)
        ax.plot(np.arange(len(y)), y, label=_label(r), **{**style, "lw": min(style["lw"], 2.5)})
    if fmin is None:
        ax.set_yscale("symlog", linthresh=0.1)
        ax.set_ylabel("f(x_t) (symmetric log scale)")
    else:
        ax.set(yscale="log", ylabel="f(x_t) - f(minimum)")
    ax.set(xlabel="step t (optimizer.step calls)", title=_title(surface))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=9)
    return fig


def animate(surface: DictConfig, results: list[dict], frames: int = 100):
    """The paths growing step by step: a matplotlib FuncAnimation (save it with PillowWriter)."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation

    xlim, ylim = view(surface, results)
    fig, ax = plt.subplots(figsize=_figsize(xlim, ylim, -(-(len(results) + 2) // 2)), layout="constrained")
    _contours(ax, surface, xlim, ylim)
    styles = _styles(results)
    lines = [ax.plot([], [], label=_label(r), **style)[0] for r, style in zip(results, styles)]
    heads = [ax.plot([], [], "o", color=line.get_color(), ms=7, mec="black", mew=0.8, zorder=5)[0] for line in lines]
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=8)
    longest = max(len(r["path"]) for r in results)
    ticks = np.unique(np.linspace(0, longest - 1, min(frames, longest)).round().astype(int))
    title = ax.set_title("")

    def draw(t):
        for r, line, head in zip(results, lines, heads):
            p = r["path"][: t + 1]
            line.set_data(p[:, 0], p[:, 1])
            head.set_data(p[-1:, 0], p[-1:, 1])
        title.set_text(f"{_title(surface)}: step {t}")
        return [*lines, *heads, title]

    return FuncAnimation(fig, draw, frames=ticks, blit=False)


def save(surface: DictConfig, results: list[dict], out_dir, gif: bool = False) -> list[Path]:
    """Write <surface>[_noisy]_paths.png, _values.png and, with gif, _paths.gif into out_dir."""
    import matplotlib.pyplot as plt
    from matplotlib.animation import PillowWriter

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = surface.function + ("_noisy" if surface.noise > 0 else "")
    written = [out_dir / f"{stem}_paths.png", out_dir / f"{stem}_values.png"]
    for path, fig in zip(written, (plot_paths(surface, results), plot_values(surface, results))):
        fig.savefig(path, dpi=150)
        plt.close(fig)
    if gif:
        written.append(out_dir / f"{stem}_paths.gif")
        animation = animate(surface, results)
        animation.save(written[-1], writer=PillowWriter(fps=15), dpi=80)
        plt.close(animation._fig)
    return written
