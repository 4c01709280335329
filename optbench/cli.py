"""`optbench <command>`: picks the subcommand and hands the rest over.

`train` goes to a Hydra app untouched, so every Hydra feature works
(overrides, -m, --cfg, --help, tab completion); its task is
`jobs.train_task`, and configs are composed and checked in `compose`.
Nothing here imports torch at module level: `optbench --help` and
`optbench list` answer at once. Only the `optbench` entry point imports
this module. Imports follow the package's rule (optbench/__init__.py); the
commands that read runs import `optbench.results` themselves, since
several name a local `results` too.
"""

import argparse
import errno
import importlib
import logging
import os
import sys
from contextlib import contextmanager
from pathlib import Path

from optbench import config_dirs
from optbench.compose import CONF, check_group_choices, check_sweep, compose_config, groups, suggest, validate_overrides
from optbench.errors import UserError
from optbench.results import rundir
from optbench.results.rundir import DISK_FULL

# a full disk, a quota, a read-only or forbidden folder: the user's to choose another place
CANNOT_WRITE = (*DISK_FULL, errno.EACCES, errno.EROFS, errno.EPERM)
# printed as written; a line ending in a backslash goes on at the next (the printed line is the joined one)
USAGE = """\
usage: optbench <command> [args]

commands:
  train [overrides]     train one model (Hydra app: `optbench train --help`; -m for sweeps;
                        --dry-run: build and check everything, train nothing)
  list                  every config group and its options, with what each is for
  data download|check   obtain MNIST and verify it, or verify what is on disk
  report DIR... [--by KEY] [--target 0.97] [--level 0.95] [--baseline GROUP] [--all-pairs] [--html] [--profile] \
[--out DIR]
                        one table of every run below the DIRs (runs.csv, metrics.csv.gz) and a ranking \
(ranking.md/.csv),
                        into the first DIR or --out; --html: also report.html, ranking + figures + configs + command
                        in one offline page; --profile: AlgoPerf performance profiles and scores \
(time/steps to --target)
  plot DIR... [--by KEY] [--x step|epoch|time] [--format png|svg|pdf] [--level 0.95] [--baseline GROUP] [--out DIR]
                        learning curves, gradient norms, learning rates, lr sensitivity, final metrics of the runs
                        below the DIRs, into the first DIR's plots/ or --out
  export tensorboard DIR [--out DIR/tensorboard]
                        every run's metrics as TensorBoard event files (needs `pip install optbench[tensorboard]`)
  search --space NAME [--sampler random|tpe|cmaes|grid] [--trials N] [--seeds 0,1] [--dir DIR] [overrides]
                        Optuna search over config keys; every trial is a run directory (`optbench search -h`);
                        --space crowded_valley: one-shot vs tuning budgets per schedule (valley.csv/.png)
  race --optimizers A,B,... [--trials N] [--steps S] [--dir DIR]  a fair race: equal budgets, seeds until resolved
  gradcheck [overrides] autograd vs finite differences on the configured model (float64)
  trajectories [overrides] [--gif] [--out DIR]
                        optimizers from conf/optimizer/ stepping on a 2-D surface (surface=quadratic|...)
  landscape RUN_DIR [RUN_DIR2] [--points 41] [--span 1] [--samples 10000] [--init]
                        training-loss slices around a run's weights (random directions, init->final)
  lectures [list] | run NAME...|--all [--scale default|middle|full] [--out DIR] [overrides] | report NAME...|--all
           | table DIR...  the lecture notes' claims (conf/lectures/), each trained and judged: verdicts with
                        intervals, a figure and a handout per claim, one page (index.md, index.html) for them all;
                        report: judge and draw what is already trained; table: the scales' verdicts side by side
  bench [overrides] [--epochs 2] [--rounds 2] [--sweep 8]
                        seconds per epoch: optbench vs a DataLoader loop vs the GEMM floor; vectorized sweep speedup

examples:
  optbench train optimizer=adam
  optbench train optimizer=sgd optimizer.lr=0.05 trainer.epochs=5 seed=3
  optbench train -m optimizer=sgd,adam seed=0,1
  optbench train +experiment=optimizers          # a preset comparison (conf/experiment/), then:
  optbench report multirun/<stamp> && optbench plot multirun/<stamp>
  optbench trajectories optimizer=sgd,momentum,adam surface=rosenbrock --gif
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = (argv[0], argv[1:]) if argv else ("--help", [])
    commands = {"train": train, "list": list_options, "data": data_command, "gradcheck": gradcheck_command,
                "trajectories": trajectories_command, "landscape": landscape_command, "search": _main_of("search"),
                "report": report_command, "plot": plot_command, "export": export_command,
                "bench": _main_of("bench"), "lectures": _main_of("lectures"), "race": _main_of("race.command")}
    if command in ("-h", "--help", "help"):
        print(USAGE, end="")
        return 0
    if command not in commands:
        return _fail(f"unknown command {command!r}{suggest(command, commands)}; see `optbench --help`")
    try:
        return commands[command](rest) or 0
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        print("optbench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `optbench list | head`: the reader has gone, nothing went wrong
        sys.stdout = open(os.devnull, "w")  # so the interpreter's own flush at exit stays quiet
        return 0
    except OSError as e:
        if e.errno not in CANNOT_WRITE:
            raise
        return _fail(f"cannot write {e.filename or 'the output folder'}: {e.strerror}; give another folder "
                     "(--out DIR, --dir DIR, hydra.run.dir=DIR or hydra.sweep.dir=DIR)")
    except SystemExit as e:  # Hydra's and argparse's exits: a return code for callers in process too
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
        return e.code if isinstance(e.code, int) else int(e.code is not None)


def _fail(message: str) -> int:
    print(f"optbench: error: {message}", file=sys.stderr)
    return 2


def _main_of(module: str):
    """optbench.`module`'s main(args), imported only when its command runs (torch stays off `optbench --help`)."""
    return lambda args: importlib.import_module(f"optbench.{module}").main(args)


def train(args: list[str]) -> int:
    import hydra

    from optbench import jobs, schema

    if "--dry-run" in args:
        return dry_run([a for a in args if a != "--dry-run"])
    schema.register()
    rundir.new_folders()
    variants = validate_overrides(args)  # also every group option a sweep names
    if len(variants) > 1:
        check_sweep(variants)
    _writable(args)
    jobs.failed_runs.clear()
    with _hydra_app(args):
        hydra.main(config_path="conf", config_name="config", version_base="1.3")(jobs.train_task)()
    for line in jobs.failed_runs:
        print(f"optbench: error: {line}", file=sys.stderr)
    return 1 if jobs.failed_runs else 0


def _writable(args: list[str]) -> None:
    """The folder the runs go into can be made: a read-only or full one is one line here, not Hydra's traceback."""
    if {"--help", "-h", "--cfg", "-c", "--info", "--hydra-help"} & set(args):
        return  # nothing is trained
    multirun = "-m" in args or "--multirun" in args
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    given = [a.split("=", 1)[1] for a in args if a.startswith(key)]
    folder = Path(given[-1]) if given else Path("multirun" if multirun else "outputs")
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists())
    probe = existing / f".optbench-probe-{os.getpid()}"
    try:  # a real write: root passes every permission check, but not a read-only or full file system
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.errno not in CANNOT_WRITE:
            raise
        raise UserError(f"cannot write into {existing}: {e.strerror}; give another folder with {key}DIR") from None


@contextmanager
def _hydra_app(args: list[str]):
    """Hydra reads sys.argv and sets up logging itself: give it exactly what followed `train`, then put both back,
    so main() can be called in process (the tests do) without leaving Hydra's log handlers behind."""
    argv, root = sys.argv, logging.getLogger()
    handlers, level = root.handlers[:], root.level
    sys.argv = [f"{Path(argv[0]).name} train", *args]
    try:
        yield
    finally:
        sys.argv = argv
        for handler in root.handlers:
            if handler not in handlers:
                handler.close()
        root.handlers[:] = handlers
        root.setLevel(level)


def dry_run(args: list[str]) -> int:
    """`optbench train --dry-run [overrides]`: compose, validate and build everything, train nothing, write nothing."""
    cfg = compose_config(args)
    from optbench.trainer import prepare

    setup = prepare(cfg)
    n_params = sum(p.numel() for p in setup.model.parameters())
    print(f"ok: {type(setup.optimizer).__name__} on {setup.device}, {n_params} parameters, {setup.total_steps} steps "
          f"of batch {setup.batch_size} ({setup.steps_per_epoch} per epoch), schedule per {setup.interval}")
    return 0


def list_options(args: list[str]) -> int:
    """Print each group's options with the first comment line of its YAML file."""
    extra = config_dirs.extra_option_dirs(args)  # `optbench list --config-dir DIR`: the user's own options too
    for group in groups():
        print(f"{group}:")
        for option, path in config_dirs.options(group, CONF, extra).items():
            print(f"  {option:<20} {_describe(path)}{'' if path.is_relative_to(CONF) else f'  ({path})'}")
    return 0


def _describe(path: Path) -> str:
    comments = [line.lstrip("# ").strip() for line in path.read_text().splitlines() if line.startswith("#")]
    return next((c for c in comments if not c.startswith("@")), "")  # not a Hydra header (# @package)


def gradcheck_command(args: list[str]) -> int:
    """optbench gradcheck [overrides]: lecture 000's numerical derivative against backprop."""
    if args and args[0] in ("-h", "--help"):
        print("usage: optbench gradcheck [overrides]   (same overrides as train, e.g. model.activation=tanh)")
        return 0
    cfg = compose_config(args)
    import torch
    from hydra.utils import instantiate

    from optbench import data, diagnostics
    from optbench.models import build_mlp, init_weights
    from optbench.trainer import make_splits, normalise

    torch.manual_seed(cfg.seed)
    split = make_splits(data.load_arrays(cfg.data.name, cfg.data.root), cfg.data.val_size, torch.device("cpu"))
    x, y = split["val"][0][:64], split["val"][1][:64]
    model = build_mlp(**cfg.model)
    init_weights(model, cfg.init)
    rows = diagnostics.gradcheck(model, instantiate(cfg.loss), normalise(x, split["mean"], split["std"]), y)
    print(f"{'parameter':<14} {'max abs error':>14} {'max rel error':>14}  verdict")
    for r in rows:
        verdict = "pass" if r["passed"] else "FAIL"
        print(f"{r['param']:<14} {r['max_abs_error']:>14.2e} {r['max_rel_error']:>14.2e}  {verdict}")
    failed = [r["param"] for r in rows if not r["passed"]]
    print(f"gradient check {'failed for ' + ', '.join(failed) if failed else 'passed'} "
          f"({len(rows)} tensors, 5 sampled entries each, float64 central differences)")
    return 1 if failed else 0


def trajectories_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench trajectories",
        description="Step optimizers from conf/optimizer/ on a 2-D surface from conf/surface/ and draw their paths.",
        epilog="overrides: optimizer=sgd,momentum,adam (a list: one path each) surface=quadratic,saddle (one figure "
               "each) steps=200 optimizer.lr=0.01 (all optimizers) surface.lr.sgd=0.01 (one) surface.noise=0.5 "
               "surface.condition=50 seed=1")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides of the trajectories config")
    parser.add_argument("--gif", action="store_true", help="also write an animated GIF of the paths")
    parser.add_argument("--out", default="trajectories", help="folder for the figures (default: ./trajectories)")
    opts = parser.parse_intermixed_args(args)
    check_group_choices(opts.overrides)
    from optbench import trajectories as tr

    optimizers, surfaces, rest = tr.expand(opts.overrides)
    for surface in surfaces:
        cfgs = [tr.compose(name, surface, rest) for name in optimizers]
        results = [tr.run(cfg) for cfg in cfgs]
        for r in results:
            x, y = r["path"][-1]
            print(f"{surface:<11} {r['name']:<13} lr {r['lr']:<8.4g} f {r['f'][-1]:<12.4g} at ({x:.4g}, {y:.4g})"
                  + (f"  left the plot at step {r['stopped']}" if r["stopped"] else ""))
        for path in tr.save(cfgs[0].surface, results, opts.out, opts.gif):
            print(f"wrote {path}")
    return 0


def landscape_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench landscape",
        description="Training loss around a run's weights: along filter-normalised random directions (1-D, 2-D) "
                    "and on the line from the initial to the final weights.")
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="one run directory, or two to compare side by side")
    parser.add_argument("--points", type=int, default=41, help="grid points per axis (default: 41)")
    parser.add_argument("--span", type=float, default=1.0,
                        help="the grid covers [-span, span] per direction (default: 1)")
    parser.add_argument("--samples", type=int, default=10000,
                        help="training images the loss is taken over (default: 10000)")
    parser.add_argument("--init", action="store_true",
                        help="slice around the initial weights instead of the final ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random directions (default: 0)")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, ... (default: the run's own device setting)")
    parser.add_argument("--out", default=None, help="folder for the figures (default: RUN_DIR/plots of the first run)")
    opts = parser.parse_args(args)
    if len(opts.runs) > 2:
        raise UserError(f"landscape compares at most two runs, got {len(opts.runs)}")
    from optbench import landscape as ls

    results = []
    for run in opts.runs:
        which = "init" if opts.init else "final"
        r = ls.landscape(run, opts.points, opts.span, opts.samples, which, opts.seed, opts.device)
        centre = r["surface"][opts.points // 2, opts.points // 2] if opts.points % 2 else float("nan")
        print(f"{run}: {opts.points}x{opts.points} grid + 2 lines of {opts.points} on {r['samples']} images "
              f"in {r['seconds']:.1f} s; loss at the centre {centre:.4f}")
        results.append(r)
    for path in ls.save_figures(results, opts.out or Path(opts.runs[0]) / "plots"):
        print(f"wrote {path}")
    return 0


def data_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="optbench data", description="Obtain or verify the dataset files.")
    parser.add_argument("action", choices=["download", "check"])
    parser.add_argument("--name", default="mnist", help="dataset (default: mnist)")
    parser.add_argument("--root", default=None,
                        help="folder of the IDX files (default: $OPTBENCH_DATA/<name> or ~/.cache/optbench/<name>)")
    opts = parser.parse_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from optbench import data

    if opts.action == "download":
        print(f"{opts.name}: ready in {data.download(opts.name, opts.root)}")
        return 0
    rows = data.check(opts.name, opts.root)
    for file, ok, message in rows:
        print(f"{'ok ' if ok else 'BAD'} {file}: {message}")
    return 0 if all(ok for _, ok, _ in rows) else 1


def _by(value: str | None) -> list[str] | None:
    return [k.strip() for k in value.split(",") if k.strip()] if value else None


def _report_parser() -> argparse.ArgumentParser:
    from optbench.results.stats import LEVEL, MARGIN

    parser = argparse.ArgumentParser(
        prog="optbench report",
        description="Collect every run below DIR into runs.csv and metrics.csv.gz, rank the groups, "
                    "print the ranking and save it as ranking.md and ranking.csv.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run directories (searched recursively)")
    parser.add_argument("--by",
                        help="group by these config keys, comma-separated (default: what varied, seed excluded)")
    parser.add_argument("--target", type=float, default=0.97, help="validation accuracy to reach (default: 0.97)")
    parser.add_argument("--out", help="folder for the tables (and report.html) (default: the first DIR)")
    parser.add_argument("--html", action="store_true",
                        help="also write report.html: ranking, figures, configs and command in one offline page")
    parser.add_argument("--profile", action="store_true",
                        help="also AlgoPerf performance profiles and scores (each seed a problem): profile.csv, plots/")
    parser.add_argument("--level", type=float, default=LEVEL,
                        help=f"confidence level of the intervals; 1 - level is the tests' alpha (default: {LEVEL:g})")
    parser.add_argument("--baseline", metavar="GROUP",
                        help="compare every group with this one (e.g. adam), not the best")
    parser.add_argument("--margin", type=float, default=MARGIN,
                        help="equivalence margin: a group below the best whose interval of the difference lies "
                        f"within +-MARGIN shares its rank (default: {MARGIN:g}; 0: none)")
    parser.add_argument("--all-pairs", action="store_true",
                        help="also compare every pair of groups (Holm's correction over all pairs); "
                             "see comparisons.csv")
    return parser


def report_command(args: list[str]) -> int:
    opts = _report_parser().parse_args(args)
    if not 0 < opts.target <= 1:
        raise UserError(f"--target {opts.target} must be an accuracy in (0, 1]")
    if not 0.5 <= opts.level < 1:
        raise UserError(f"--level {opts.level} must be a confidence level in [0.5, 1), e.g. 0.95")
    if not 0 <= opts.margin < 1:
        raise UserError(f"--margin {opts.margin} must be an accuracy difference in [0, 1), e.g. 0.005")
    from optbench import results

    runs = results.load_runs(*opts.dirs)
    metrics = results.load_metrics(runs)
    out = Path(opts.out or opts.dirs[0])
    out.mkdir(parents=True, exist_ok=True)
    runs.to_csv(out / "runs.csv", index=False)
    metrics.to_csv(out / "metrics.csv.gz", index=False)
    table = results.rank(runs, metrics, _by(opts.by), opts.target, opts.level, opts.baseline, opts.margin or None)
    text = results.format_ranking(table)
    table.to_csv(out / "ranking.csv", index=False)
    (out / "ranking.md").write_text(results.markdown(text))
    statuses = ", ".join(f"{n} {s}" for s, n in runs["status"].value_counts().items())
    by, tuned = table.attrs["by"], table.attrs["tuned"]
    print(f"{len(runs)} runs ({statuses}); grouped by {', '.join(by) or 'nothing (one group)'}"
          + (f"; {', '.join(tuned)} chosen per group on validation" if tuned else ""))
    print(text.to_string(index=False))
    written = ["runs.csv", "metrics.csv.gz", "ranking.md", "ranking.csv"]
    lines = results.verdict_lines(table)
    if lines:
        print("\n" + "\n".join(lines))
    families = results.comparison_families(table, results.group_values(runs, by), opts.all_pairs)
    pairs = results.pair_lines(families)
    if pairs:
        print("\n".join(pairs))
    if families:
        import pandas as pd

        pd.concat([f.assign(family=name) for name, f in families.items()]).to_csv(out / "comparisons.csv", index=False)
        written.append("comparisons.csv")
    if tuned:
        cost = results.tuning_cost(results.tuning_trials(runs, by))
        cost.to_csv(out / "tuning_cost.csv", index=False)
        written.append("tuning_cost.csv")
        print(f"\ntuning cost: expected best val acc after n trials drawn from each group's finished runs "
              f"(every {', '.join(tuned)} and seed; Dodge et al. 2019)")
        print(cost.to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep=""))
    print(f"wrote {len(written)} files into {out}{_where(opts)}: {', '.join(written)}")
    if opts.profile:
        from optbench.results import profiles

        profiles.write_profile(runs, metrics, _by(opts.by), opts.target, out)
    if opts.html:
        from optbench.results import html as html_report
        from optbench.results import plots

        figures = plots.figures(runs, metrics, by, "step", opts.level, opts.baseline)
        page = html_report.build(runs, table, figures, html_report.sweep_commands(runs),
                                 title=f"optbench report: {', '.join(opts.dirs)}",
                                 notes=lines, tuning=cost if tuned else None)
        (out / "report.html").write_text(page, encoding="utf-8")
        print(f"wrote {out / 'report.html'}: open it in a browser (offline, figures included)")
    return _skipped(runs)


def _where(opts) -> str:
    """Why the output went where it did, when several folders were read and --out did not say."""
    return " (the first DIR; --out DIR to choose)" if len(opts.dirs) > 1 and not opts.out else ""


def plot_command(args: list[str]) -> int:
    from optbench.results.stats import LEVEL

    parser = argparse.ArgumentParser(
        prog="optbench plot",
        description="Draw the runs below each DIR (sweeps or single runs, together) into DIR/plots/ of the first DIR.")
    parser.add_argument("dirs", nargs="+", metavar="DIR", help="sweep or run directories (searched recursively)")
    parser.add_argument("--by",
                        help="colour by these config keys, comma-separated (default: what varied, seed excluded)")
    parser.add_argument("--x", choices=["step", "epoch", "time"], default="step", help="x axis of the curves")
    parser.add_argument("--format", choices=["png", "svg", "pdf"], default="png")
    parser.add_argument("--out", help="folder for the figures (default: DIR/plots of the first DIR)")
    parser.add_argument("--level", type=float, default=LEVEL,
                        help=f"confidence level of the differences' intervals (default: {LEVEL:g})")
    parser.add_argument("--baseline", metavar="GROUP", help="differences against this group (e.g. adam), not the best")
    opts = parser.parse_args(args)
    if not 0.5 <= opts.level < 1:
        raise UserError(f"--level {opts.level} must be a confidence level in [0.5, 1), e.g. 0.95")
    from optbench import results
    from optbench.results import plots

    runs = results.load_runs(*opts.dirs)
    metrics = results.load_metrics(runs)
    figures = plots.figures(runs, metrics, results.resolve_by(runs, _by(opts.by)), opts.x, opts.level, opts.baseline)
    out = Path(opts.out or Path(opts.dirs[0]) / "plots")
    out.mkdir(parents=True, exist_ok=True)
    for name, fig in figures.items():
        fig.savefig(out / f"{name}.{opts.format}", dpi=plots.DPI)
    print(f"{len(runs)} runs from {', '.join(opts.dirs)}; wrote {len(figures)} figures into {out}{_where(opts)}: "
          + ", ".join(f"{name}.{opts.format}" for name in figures))
    return _skipped(runs)


def export_command(args: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="optbench export", description="Write every run's metrics in another tool's format.")
    parser.add_argument("format", choices=["tensorboard"])
    parser.add_argument("dir", metavar="DIR")
    parser.add_argument("--by", help="name TensorBoard runs by these config keys (default: what varied)")
    parser.add_argument("--out", help="folder for the event files (default: DIR/tensorboard)")
    opts = parser.parse_args(args)
    from optbench import results

    runs = results.load_runs(opts.dir)
    out = Path(opts.out or Path(opts.dir) / "tensorboard")
    written = results.export_tensorboard(runs, results.load_metrics(runs), out, _by(opts.by))
    print(f"wrote {len(written)} runs to {out}; view with: tensorboard --logdir {out}")
    return _skipped(runs)


def _skipped(runs) -> int:
    """1 when damaged runs were left out (each named in a warning line already), so scripts notice; else 0."""
    skipped = runs.attrs.get("skipped", [])
    for line in skipped:
        print(f"optbench: warning: skipped {line}", file=sys.stderr)
    if skipped:
        print(f"optbench: {len(skipped)} damaged run(s) left out; the rest is done", file=sys.stderr)
    return 1 if skipped else 0
