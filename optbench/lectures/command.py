"""`optbench lectures list | run | report`: the argparse front and one claim's run from training to verdict.json."""

import json
import os
import shlex
import time
from pathlib import Path

import numpy as np

from optbench.errors import UserError
from optbench.lectures.catalogue import CATALOGUE, OUT, SCALES, check, condition, load, names, untestable
from optbench.lectures.figures import figure
from optbench.lectures.measures import QUANTITIES
from optbench.lectures.page import collect, handout, scales_table, write_page
from optbench.lectures.running import load_claim_runs, measure, train
from optbench.lectures.verdicts import UNTESTABLE, comparison_text, judge, verdict_text


def run_claim(claim: dict, out: Path, scale: str, extra, level: float | None, train_first: bool = True,
              damaged: list | None = None) -> dict | None:
    """Train (what is missing; nothing with train_first=False), measure, judge, draw; the result saved as
    out/<claim>/verdict.json with the experiment's condition, and the claim's handout beside it. A claim not
    testable at `scale` trains nothing and says why. None when a group has no finished run to measure; when
    a multirun failed, the runs that finished are judged and the result says training_failed. A run with a damaged
    file is skipped with a warning and named in `damaged`."""
    started, load = time.perf_counter(), os.getloadavg()[0]
    command = shlex.join(["optbench", "lectures", "run", claim["name"], *(["--scale", scale] * (scale != "default")),
                          *extra])
    folder = out / claim["name"]
    folder.mkdir(parents=True, exist_ok=True)
    why = untestable(claim, scale)
    if why:
        result = {"verdict": UNTESTABLE, "reason": why, "groups": [], "comparisons": [], "seconds": 0.0,
                  "command": command, "scale": scale, "condition": condition(claim, scale)}
    else:
        previous = json.loads((folder / "verdict.json").read_text()) if (folder / "verdict.json").is_file() else {}
        trained = train(claim, out, scale, extra) if train_first else True
        runs = load_claim_runs(claim, out, scale, extra, damaged)
        values = measure(claim, runs, damaged)
        if empty := [g for g, v in values.items() if not v.notna().any()]:
            print(f"{claim['name']}: could not be run (no finished run in {', '.join(empty)})")
            return None
        result = judge(claim, values, level)
        if not trained:  # a run that failed or was refused (a damaged one): judged on those that finished
            result["training_failed"] = True
            print(f"{claim['name']}: some runs did not train (see the log named above); judged on those that finished")
        result.update(scale=scale, condition=condition(claim, scale))  # the figure prints them
        result["figure"] = _draw(claim, result, runs, out)
        if train_first or previous.get("scale") != scale:  # the training's time, the load average before and after
            result.update(seconds=time.perf_counter() - started, load=[load, os.getloadavg()[0]], command=command)
        else:  # a report of runs trained before: their time and command stay
            result.update({k: previous[k] for k in ("seconds", "load", "command") if k in previous})
    (folder / "verdict.json").write_text(json.dumps(result, indent=1, default=_json))
    (folder / "handout.md").write_text(handout(claim, result))
    return result


def _draw(claim: dict, result: dict, runs: list[dict], out: Path) -> str:
    """The claim's figure saved beside its verdict; its path relative to `out`."""
    import matplotlib.pyplot as plt

    from optbench.results.plots import DPI

    fig = figure(claim, result, runs)
    path = f"{claim['name']}/{claim['name']}.png"
    fig.savefig(out / path, dpi=DPI)
    plt.close(fig)
    return path


def _json(x):
    return float(x) if isinstance(x, (np.floating, np.integer)) else bool(x) if isinstance(x, np.bool_) else str(x)


def main(args: list[str]) -> int:
    import argparse

    from optbench.results.stats import LEVEL

    parser = argparse.ArgumentParser(
        prog="optbench lectures",
        description="The lecture notes' claims (conf/lectures/), each tested by an experiment on MNIST: "
                    "`list` shows them, `run NAME... | --all` trains what they need and writes verdicts, "
                    "figures and one page (index.md, index.html) into --out.")
    parser.add_argument("action", nargs="?", default="list", choices=["list", "run", "report", "table"],
                        help="list the claims; run: train and judge them; report: judge and draw the runs already "
                             "in --out again, training nothing; table FOLDER...: the verdicts of several --out "
                             "folders (one per scale) side by side, as markdown, changes marked")
    parser.add_argument("claims", nargs="*", metavar="NAME", help="claims to run (then any train overrides: key=value)")
    parser.add_argument("--all", action="store_true", help="run every claim in the catalogue")
    parser.add_argument("--scale", choices=SCALES, default="default",
                        help="default: a 2-core CPU, the catalogue in about 15 minutes; middle: a laptop over a lunch "
                             "break (about an hour); full: more seeds and longer runs, for a GPU")
    parser.add_argument("--out", help=f"folder for the runs, figures and the page (default: ./{OUT}, and "
                                      f"./{OUT}-middle, ./{OUT}-full at the larger scales: each scale's verdicts "
                                      "and page stay beside the others)")
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
    if opts.action == "table":
        folders = [Path(f) for f in opts.claims] or [Path(OUT), Path(f"{OUT}-middle")]
        missing = [str(f) for f in folders if not f.is_dir()]
        if missing:
            raise UserError(f"lectures table: no such folder {', '.join(missing)} "
                            "(give the --out folders of each scale)")
        print(scales_table(folders, catalogue), end="")
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
    out = Path(opts.out or (OUT if opts.scale == "default" else f"{OUT}-{opts.scale}"))
    out.mkdir(parents=True, exist_ok=True)
    done, failed, started = [], [], time.perf_counter()
    damaged: list[str] = []  # the damaged files' messages, filled in by load_claim_runs
    for claim in claims:
        print(f"{claim['name']}: {claim['description']}")
        result = run_claim(claim, out, opts.scale, extra, opts.level, train_first=opts.action == "run",
                           damaged=damaged)
        if result is None:
            failed.append(claim["name"])
            continue
        done.append((claim, result))
        print(f"{claim['name']}: {verdict_text(result)} ({result['seconds']:.0f} s; condition: {result['condition']})")
        for row in result["comparisons"]:
            print("  " + comparison_text(row, QUANTITIES[claim["quantity"]][1]))
    partial = [claim["name"] for claim, result in done if result.get("training_failed")]
    page = collect(out, catalogue)
    if page:
        for path in write_page(*page, out, title="The lectures, tested: optbench on MNIST"):
            print(f"wrote {path}")
    print(f"{len(done)} claim{'s' * (len(done) != 1)} in {time.perf_counter() - started:.0f} s"
          + (f"; could not be run: {', '.join(failed)}" if failed else "")
          + (f"; judged on the runs that trained: {', '.join(partial)}" if partial else "")
          + (f"; skipped {len(damaged)} damaged run{'s' * (len(damaged) != 1)} (warnings above)" if damaged else ""))
    return 1 if failed or partial or damaged else 0

