"""`optbench lectures list | run | report`: the argparse front and one claim's run from training to verdict.json."""

import json
import time
from pathlib import Path

import numpy as np

from optbench.errors import UserError
from optbench.lectures.catalogue import CATALOGUE, OUT, SCALES, check, load, names
from optbench.lectures.figures import figure
from optbench.lectures.measures import QUANTITIES
from optbench.lectures.page import collect, write_page
from optbench.lectures.running import load_claim_runs, measure, train
from optbench.lectures.verdicts import comparison_text, judge, verdict_text

def run_claim(claim: dict, out: Path, scale: str, extra, level: float | None, log=print,
              train_first: bool = True, damaged: list | None = None) -> dict | None:
    """Train (what is missing; nothing with train_first=False), measure, judge, draw; the result saved as
    out/<claim>/verdict.json. None when a multirun failed or a group has no finished run to measure. A run
    with a damaged file is skipped with a warning and named in `damaged`."""
    import os
    import shlex

    started, load = time.perf_counter(), os.getloadavg()[0]
    previous = out / claim["name"] / "verdict.json"
    previous = json.loads(previous.read_text()) if previous.is_file() else {}
    trained = train(claim, out, scale, extra, log) if train_first else True
    runs = load_claim_runs(claim, out, scale, extra, damaged)
    values = measure(claim, runs, damaged)
    empty = [g for g, v in values.items() if not v.notna().any()]
    if empty or not trained:
        log(f"{claim['name']}: could not be run" + (f" (no finished run in {', '.join(empty)})" if empty else ""))
        return None
    result = judge(claim, values, level)
    fig = figure(claim, result, runs)
    result["figure"] = f"{claim['name']}/{claim['name']}.png"
    from optbench.plots import DPI

    fig.savefig(out / result["figure"], dpi=DPI)
    import matplotlib.pyplot as plt

    plt.close(fig)
    command = shlex.join(["optbench", "lectures", "run", claim["name"], *(["--scale", scale] * (scale != "default")),
                          *extra])
    if train_first or not previous:  # what the training took, and the 1-minute load average before and after it
        result.update(seconds=time.perf_counter() - started, load=[load, os.getloadavg()[0]], command=command)
    else:  # a report of runs trained before: their time and command stay
        result.update({k: previous[k] for k in ("seconds", "load", "command") if k in previous})
    result["scale"] = scale
    (out / claim["name"] / "verdict.json").write_text(json.dumps(result, indent=1, default=_json))
    return result


def _json(x):
    return float(x) if isinstance(x, (np.floating, np.integer)) else bool(x) if isinstance(x, np.bool_) else str(x)


def main(args: list[str]) -> int:
    import argparse

    from optbench.stats import LEVEL

    parser = argparse.ArgumentParser(
        prog="optbench lectures",
        description="The lecture notes' claims (conf/lectures/), each tested by an experiment on MNIST: "
                    "`list` shows them, `run NAME... | --all` trains what they need and writes verdicts, "
                    "figures and one page (index.md, index.html) into --out.")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "run", "report"],
                        help="list the claims; run: train and judge them; report: judge and draw the runs already "
                             "in --out again, training nothing")
    parser.add_argument("claims", nargs="*", metavar="NAME", help="claims to run (then any train overrides: key=value)")
    parser.add_argument("--all", action="store_true", help="run every claim in the catalogue")
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="default: minutes on a laptop CPU; full: more seeds and longer runs, for a GPU")
    parser.add_argument("--out", default=OUT, help=f"folder for the runs, figures and the page (default: ./{OUT})")
    parser.add_argument("--level", type=float, default=LEVEL, help=f"confidence level (default: {LEVEL:g})")
    parser.add_argument("--catalogue", default=str(CATALOGUE),
                        help="folder of claim files (default: optbench's own conf/lectures/)")
    opts = parser.parse_intermixed_args(args)
    catalogue = Path(opts.catalogue)
    if not catalogue.is_dir():
        raise UserError(f"--catalogue {catalogue}: no such folder")
    if opts.action == "list":
        for name in names(catalogue):
            claim = load(name, catalogue)
            print(f"{name:<28} {claim['lecture'][:3]}  {claim['description']}")
        return 0
    if not 0.5 <= opts.level < 1:
        raise UserError(f"--level {opts.level} must be a confidence level in [0.5, 1), e.g. 0.95")
    extra = [c for c in opts.claims if "=" in c]
    wanted = names(catalogue) if opts.all else [c for c in opts.claims if "=" not in c]
    if not wanted:
        raise UserError(f"lectures {opts.action}: name the claims (`optbench lectures list`) or give --all")
    claims = [load(n, catalogue) for n in wanted]  # every name checked before anything trains
    for claim in claims:
        check(claim, opts.scale, extra)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    done, failed, damaged, started = [], [], [], time.perf_counter()
    for claim in claims:
        print(f"{claim['name']}: {claim['description']}")
        result = run_claim(claim, out, opts.scale, extra, opts.level, train_first=opts.action == "run",
                           damaged=damaged)
        if result is None:
            failed.append(claim["name"])
            continue
        done.append((claim, result))
        print(f"{claim['name']}: {verdict_text(result)} ({result['seconds']:.0f} s)")
        for row in result["comparisons"]:
            print("  " + comparison_text(row, QUANTITIES[claim["quantity"]][1]))
    page = collect(out, catalogue)
    if page:
        for path in write_page(*page, out, title="The lectures, tested: optbench on MNIST"):
            print(f"wrote {path}")
    print(f"{len(done)} claim{'s' * (len(done) != 1)} in {time.perf_counter() - started:.0f} s"
          + (f"; could not be run: {', '.join(failed)}" if failed else "")
          + (f"; skipped {len(damaged)} damaged run{'s' * (len(damaged) != 1)} (warnings above)" if damaged else ""))
    return 1 if failed or damaged else 0

