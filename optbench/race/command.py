"""`optbench race`: the command line, race.yaml (what a resumed race may not change), and the steps in order:
tune every optimizer on the same budget, flag (and with --extend-edges answer) edges, seeds in rounds, the test
set's limit, sensitivity, robustness, the page."""

import argparse
import logging
import shlex
import sys
import time
from datetime import datetime
from pathlib import Path

import yaml

from optbench.compose import check_group_choices
from optbench.errors import UserError
from optbench.race import budget, page, robustness, running, sensitivity, sequential, spaces, tables
from optbench.results import rundir
from optbench.search.command import add_worker_flags, check_workers, submitit_params
from optbench.search.settings import check_spec, comparable
from optbench.search.shared import password_in_environment, storage_url

SAVED = "race.yaml"
# the default scale: 4 optimizers in about 15 minutes on a 2-core CPU (docs/race.md): 32 Sobol trials (a power of
# two: balanced Sobol points) and up to 9 seeds of 2000 steps (5 epochs) each, 4 x (32 + 3..9) = 140..164 runs
DEFAULTS = {"trials": 32, "studies": 1, "steps": 2000, "first_seeds": 3, "seed_step": 2, "max_seeds": 9,
            "alpha": sequential.ALPHA, "epsilon": sensitivity.EPSILON, "sampler_seed": 0}
# fixed for every run of the default scale; the command line's overrides win
# a decaying schedule: rankings flip while the rate decays (Wen et al. 2025), so the checkpoints read earlier show it
SCALE = ["model.hidden=[128]", "data.train_eval_size=2000", "schedule=cosine"]
COMPARED = ("optimizers", "spaces", "trials", "studies", "overrides", "seeds", "alpha", "sampler_seed", "extend_edges",
            "shapes")


def main(args: list[str]) -> int:
    started = time.perf_counter()
    opts = _parser().parse_intermixed_args(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    race_dir = Path(opts.dir or f"races/{datetime.now():%Y-%m-%d_%H-%M-%S}")
    given = _given(opts)
    given["storage"], secret = storage_url(opts.storage) if opts.storage else (None, None)
    check_workers(opts.workers, given["storage"] or (_read(race_dir) or {}).get("storage"))
    params = submitit_params(opts.submitit)
    settings = settle(race_dir, given)
    with password_in_environment(secret):
        if opts.workers:
            failed = running.submit(race_dir, settings, opts.threads, opts.workers, opts.cluster, params)
            if failed:
                for line in failed:
                    print(f"optbench: error: {line}", file=sys.stderr)
                return 1
        return _after_tuning(race_dir, settings, opts, started)


def _after_tuning(race_dir: Path, settings: dict, opts, started: float) -> int:
    """The studies (run here, or read once the workers finished them), the seed rounds, robustness, the page."""
    studies = running.tune(race_dir, settings, opts.threads)
    if settings["extend_edges"]:
        studies = running.extend(race_dir, settings, studies, opts.threads)
    chosen = tables.chosen(studies, settings["trials"])
    if len(chosen) < 2:
        print("optbench: error: fewer than two optimizers completed a trial: nothing to race "
              "(tuning/<opt>/*/trials.csv gives each reason)", file=sys.stderr)
        return 1
    params = {n: c["params"] for n, c in chosen.items()}
    result = running.seed_rounds(race_dir, settings, params)
    shapes = running.shape_scores(race_dir, settings, params)
    finish(race_dir, settings, studies, chosen, result, shapes, opts.data_root, time.perf_counter() - started)
    print(f"race directory: {race_dir} (race.md, race.html)")
    return 0


def _parser() -> argparse.ArgumentParser:
    d = DEFAULTS
    parser = argparse.ArgumentParser(
        prog="optbench race",
        description="A fair race between optimizers: each tuned over its own declared space with the same budget "
        "(trials x steps, Sobol points), the chosen configurations rerun with paired seeds in rounds until every "
        "comparison with the leader is resolved, the test set's limit, sensitivity and robustness on one page. "
        "Overrides (e.g. trainer.max_steps=500 data.root=...) are fixed for every run.")
    parser.add_argument("--optimizers", help="comma-separated options of conf/optimizer, e.g. adamw,lion,soap,muon")
    parser.add_argument("--trials", type=int, help=f"trials per optimizer and study (default {d['trials']})")
    parser.add_argument("--studies", type=int, help=f"independent studies per optimizer (default {d['studies']})")
    parser.add_argument("--steps", type=int, help=f"optimisation steps of every run (default {d['steps']})")
    parser.add_argument("--seeds", help=f"FIRST,STEP,CAP: seeds of the first round, added per round, the cap "
                        f"(default {d['first_seeds']},{d['seed_step']},{d['max_seeds']})")
    parser.add_argument("--alpha", type=float, help=f"error rate over all looks and pairs (default {d['alpha']})")
    parser.add_argument("--epsilon", type=float, help=f"accuracy margin of the good region (default {d['epsilon']})")
    parser.add_argument("--sampler-seed", type=int, help="scramble of study 0's Sobol points")
    parser.add_argument("--space", action="append", default=[], metavar="OPT:FILE.yaml",
                        help="replace an optimizer's declared space (conf/race/spaces.yaml) by a file's")
    parser.add_argument("--extend-edges", action="store_true",
                        help="spend the same extra budget on every optimizer, widening the range of a flagged one")
    parser.add_argument("--shapes", help="robustness across models: other hidden layer shapes, ';'-separated, e.g. "
                        "'[64];[256,256]': the chosen configurations rerun there (first round's seeds), ranks compared")
    parser.add_argument("--dir", help="race directory; an existing one is resumed (default races/<time>)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    add_worker_flags(parser, "race", "each study is named after --dir and the optimizer, and the seed rounds run in "
                     "the submitting process")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides fixed for every run")
    return parser


def _given(opts) -> dict:
    """The settings this command gives (None where it gives none, so a resumed race keeps its own)."""
    for flag in ("trials", "studies", "steps"):
        if getattr(opts, flag) is not None and getattr(opts, flag) < 1:
            raise UserError(f"--{flag}={getattr(opts, flag)} must be >= 1")
    seeds = None
    if opts.seeds:
        try:
            first, step, cap = (int(x) for x in opts.seeds.split(","))
            sequential.looks(first, step, cap)
        except ValueError:
            raise UserError(f"--seeds {opts.seeds}: write FIRST,STEP,CAP with FIRST >= 2, STEP >= 1, "
                            "CAP >= FIRST") from None
        seeds = {"first": first, "step": step, "cap": cap}
    if opts.alpha is not None and not 0 < opts.alpha < 1:
        raise UserError(f"--alpha={opts.alpha} must lie between 0 and 1")
    if opts.epsilon is not None and not 0 <= opts.epsilon < 1:
        raise UserError(f"--epsilon={opts.epsilon} must be an accuracy margin in [0, 1)")
    optimizers = [o for o in (opts.optimizers or "").split(",") if o] or None
    if optimizers is not None:
        if len(set(optimizers)) < 2:
            raise UserError(f"--optimizers {opts.optimizers}: a race needs two or more different optimizers")
        check_group_choices([f"optimizer={o}" for o in optimizers])
    opts.data_root = next((o.split("=", 1)[1] for o in opts.overrides
                           if o.split("=", 1)[0].lstrip("+") == "data.root"), None)
    return {"optimizers": optimizers, "trials": opts.trials, "studies": opts.studies, "steps": opts.steps,
            "seeds": seeds, "alpha": opts.alpha, "epsilon": opts.epsilon, "sampler_seed": opts.sampler_seed,
            "space_files": dict(spaces.read_space_option(s) for s in opts.space), "extend_edges": opts.extend_edges,
            "overrides": list(opts.overrides) or None, "shapes": _shapes(opts.shapes)}


def _shapes(text: str | None) -> list[str] | None:
    """--shapes '[64];[256,256]' -> ['[64]', '[256,256]'], each checked as a list of positive widths."""
    if not text:
        return None
    shapes = [t.strip().replace(" ", "") for t in text.split(";") if t.strip()]
    for shape in shapes:
        inner = shape.removeprefix("[").removesuffix("]")
        if not (shape.startswith("[") and shape.endswith("]") and inner
                and all(w.isdigit() and int(w) > 0 for w in inner.split(","))):
            raise UserError(f"--shapes {text}: write hidden layer shapes as [64];[256,256] (positive widths)")
    return shapes


def settle(race_dir: Path, given: dict) -> dict:
    """The race's full settings: the given ones over the defaults, or race.yaml's when it exists (the given ones
    must agree, but where and how runs run: data.root, device). Written to race.yaml."""
    saved = _read(race_dir)
    full = _fill(given) if given["optimizers"] else None
    if saved is None:
        if full is None:
            raise UserError("--optimizers is needed (e.g. --optimizers adamw,lion,soap,muon), or a --dir to resume")
    else:
        if full is not None:
            clash = [k for k in COMPARED if comparable(k, full[k]) != comparable(k, saved.get(k))
                     and (k != "overrides" or given["overrides"] is not None)]
            if clash:
                raise UserError(f"{race_dir} holds a race with other {', '.join(clash)}; resume it without "
                                "changing them (or give only --dir), or pick a new --dir")
        if given["storage"] is not None and saved.get("storage") is None:
            raise UserError(f"{race_dir} keeps its studies in study.db files (SQLite), not in --storage: "
                            "resume it without --storage, or pick a new --dir")
        full = {**saved, "overrides": _resumed_overrides(saved["overrides"], given["overrides"]),
                # workers may name one server differently; without --storage a race keeps where its studies are
                "storage": given["storage"] or saved.get("storage"),
                # the good region's margin only reads the runs: a resumed race may draw it anew
                "epsilon": saved["epsilon"] if given["epsilon"] is None else given["epsilon"]}
    for name in full["optimizers"]:  # every space and override composed before anything is written
        check_spec({"space": full["spaces"][name], "overrides": running.run_overrides(full, name), "seeds": [0]})
    race_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_bytes(race_dir / SAVED, yaml.safe_dump(full, sort_keys=False).encode())
    return full


def _resumed_overrides(saved: list[str], given: list[str] | None) -> list[str]:
    """The saved experiment, run where and how this command says (data.root, device: rundir.RUN_SETTINGS); a run
    setting it does not name stays as saved (the race's own trainer.vectorize=off among them)."""
    if not given:
        return saved
    factors = comparable("overrides", given)
    how = [o for o in given if o not in factors]
    named = {o.split("=", 1)[0].lstrip("+") for o in how}
    kept = [o for o in saved if o not in comparable("overrides", saved) and o.split("=", 1)[0].lstrip("+") not in named]
    return [*comparable("overrides", saved), *kept, *how]


def _fill(given: dict) -> dict:
    d = DEFAULTS
    steps = given["steps"] or d["steps"]
    user = given["overrides"] or []
    keys = {o.split("=", 1)[0].lstrip("+") for o in user}
    fixed = [o for o in [*SCALE, f"trainer.max_steps={steps}", f"trainer.eval_every={max(1, steps // 10)}",
                         "trainer.vectorize=off"] if o.split("=", 1)[0] not in keys]
    return {"optimizers": given["optimizers"],
            "spaces": {o: spaces.space_for(o, given["space_files"]) for o in given["optimizers"]},
            "trials": given["trials"] or d["trials"], "studies": given["studies"] or d["studies"], "steps": steps,
            "overrides": [*fixed, *user],
            "seeds": given["seeds"] or {"first": d["first_seeds"], "step": d["seed_step"], "cap": d["max_seeds"]},
            "alpha": given["alpha"] or d["alpha"],
            "epsilon": d["epsilon"] if given["epsilon"] is None else given["epsilon"],
            "sampler_seed": d["sampler_seed"] if given["sampler_seed"] is None else given["sampler_seed"],
            "extend_edges": bool(given["extend_edges"]), "shapes": given["shapes"] or [], "storage": given["storage"]}


def _read(race_dir: Path) -> dict | None:
    path = race_dir / SAVED
    try:
        saved = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise rundir.DamagedFile(path, f"cannot be read ({type(e).__name__})",
                                 "move it away or pick a new --dir") from None
    if not isinstance(saved, dict) or not set(COMPARED) <= set(saved):
        raise rundir.DamagedFile(path, "is not a race's settings", "move it away or pick a new --dir")
    return saved


def finish(race_dir: Path, settings: dict, studies: dict, chosen: dict, result: dict, shapes: dict, data_root,
           wall: float) -> dict:
    """Every table (CSV beside the page) and the page."""
    names = result["names"]
    counts = {n: result["looks"][-1]["seeds"] for n in names}
    leader = names[result["looks"][-1]["leader"]]
    trials = tables.trials(studies)
    curves = tables.curves(race_dir, names, counts)
    r = {"dir": race_dir, "settings": settings, "chosen": chosen, "counts": result["counts"],
         "verdicts": tables.verdicts(result), "looks": tables.looks(result),
         "limits": tables.testset_limits(race_dir, names, leader, data_root, settings["alpha"]),
         "ledger": budget.ledger(tables.ledger_runs(race_dir, studies, counts)), "trials": trials,
         "chosen_table": _chosen_table(chosen),
         "sensitivity": sensitivity.table({n: t for n, t in trials.items() if len(t)}, epsilon=settings["epsilon"]),
         "checkpoints": robustness.at_checkpoints(curves), "targets": robustness.relaxed_targets(curves),
         "shapes": robustness.across(shapes) if len(shapes) > 1 else None,
         "command": "optbench race " + shlex.join(_argv(race_dir, settings)), "wall_time": wall}
    r["verdict_lines"] = page.verdict_lines(r["verdicts"], r["limits"])
    for name in ("verdicts", "looks", "limits", "ledger", "chosen_table", "sensitivity", "checkpoints", "targets",
                 "shapes"):
        if r[name] is not None:
            r[name].to_csv(race_dir / f"{name}.csv", index=False)
    page.save(race_dir, r)
    for line in r["verdict_lines"]:
        print(line)
    return r


def _argv(race_dir: Path, settings: dict) -> list[str]:
    """The command that reproduces the race (and, run again, resumes it); spaces given by file are in race.yaml."""
    s, seeds = settings, settings["seeds"]
    return ["--optimizers", ",".join(s["optimizers"]), "--trials", str(s["trials"]), "--studies", str(s["studies"]),
            "--steps", str(s["steps"]), "--seeds", f"{seeds['first']},{seeds['step']},{seeds['cap']}",
            "--alpha", f"{s['alpha']:g}", "--epsilon", f"{s['epsilon']:g}", "--sampler-seed", str(s["sampler_seed"]),
            *(["--extend-edges"] if s["extend_edges"] else []),
            *(["--shapes", ";".join(s["shapes"])] if s["shapes"] else []),
            *(["--storage", s["storage"]] if s.get("storage") else []), "--dir", str(race_dir), *s["overrides"]]


def _chosen_table(chosen: dict):
    import pandas as pd

    def flags(edges: dict) -> str:
        return ", ".join(f"{k} {side}" for k, side in edges.items())

    return pd.DataFrame([{"optimizer": n, "study": c["study"], "trial": c["number"], "val_acc": c["score"],
                          "median_of_studies": c["median_of_studies"], "edges": flags(c["edges"]),
                          "edges_before_extension": flags(c["edges_before_extension"]), **c["params"],
                          "tuning_run": c["run"], "seed_runs": f"seeds/{n}/seed=*"} for n, c in chosen.items()])
