"""The race's tables, read back from its run directories (every number on the page traces to one):
the ledger's runs, each optimizer's trials, the verdicts, the test set's comparisons and the chosen runs' curves."""

from pathlib import Path

import numpy as np

from optbench.race import running, sequential, testset
from optbench.results import rundir


def run_row(run_dir: Path, optimizer: str, phase: str, trial) -> dict:
    summary = rundir.read_summary(run_dir) or {}
    cfg = rundir.read_config(run_dir)
    return {"optimizer": optimizer, "phase": phase, "trial": trial, "seed": int(cfg.seed),
            "steps": int(summary.get("step") or 0), "params": int(summary.get("n_params") or 0),
            "batch_size": int(cfg.trainer.batch_size), "wall_time": float(summary.get("wall_time") or 0.0),
            "status": summary.get("status"), "run": str(run_dir)}


def ledger_runs(race_dir: Path, studies: dict, seed_counts: dict):
    """One row per run the race counts: the finished trials' runs (a FAIL trial, interrupted, is rerun and not
    counted), the seed runs of the rounds made, and --shapes' runs."""
    import pandas as pd

    rows = []
    for name, entries in studies.items():
        for label, _, study in entries:
            search_dir = race_dir / "tuning" / name / label
            for t in running.finished_trials(study):
                rows += [run_row(search_dir / r, name, "tuning", f"{label}/{t.number}") for r in t.user_attrs["runs"]]
        for s, path in enumerate(running.seed_dirs(race_dir, name, seed_counts.get(name, 0))):
            rows.append(run_row(path, name, "seeds", f"seed {running.FIRST_SEED + s}"))
        for path in sorted((race_dir / "shapes").glob(f"*/{name}/seed=*")):  # --shapes: robustness runs
            if rundir.read_summary(path) is not None:
                rows.append(run_row(path, name, "shapes", path.parent.parent.name))
    return pd.DataFrame(rows)


def trials(studies: dict, lr_key: str = "optimizer.lr"):
    """{optimizer: DataFrame of its finished trials: study, number, params, score (NaN when diverged)}."""
    import pandas as pd

    out = {}
    for name, entries in studies.items():
        rows = [{"study": label, "number": t.number, **t.params, "score": np.nan if t.value is None else t.value}
                for label, _, study in entries for t in running.finished_trials(study)]
        out[name] = pd.DataFrame(rows, columns=None if rows else ["study", "number", lr_key, "score"])
    return out


def chosen(studies: dict, trials: int) -> dict:
    """{optimizer: {study, params, score, edges}}: the best trial on validation, and its edge flags (at the grid
    step of `trials` points per study)."""
    out = {}
    for name, entries in studies.items():
        best = running.best_trial(entries)
        if best is not None:
            label, _, trial = best
            first = running.best_trial([e for e in entries if e[0] != "extra"])
            out[name] = {"study": label, "number": trial.number, "params": dict(trial.params),
                         "score": float(trial.value), "run": f"tuning/{name}/{label}/{trial.user_attrs['runs'][0]}",
                         "edges": running.best_edges(best, trials), "median_of_studies": _median_best(entries),
                         "edges_before_extension": running.best_edges(first, trials)}
    return out


def _median_best(entries) -> float:
    """AlgoPerf's score of a tuning procedure: the median over independent studies of each study's best."""
    bests = [max((t.value for t in s.get_trials(deepcopy=False) if t.value is not None), default=np.nan)
             for label, _, s in entries if label != "extra"]
    return float(np.nanmedian(bests)) if np.isfinite(bests).any() else np.nan


def verdicts(result: dict):
    """One row per comparison with the last look's leader: a resolved one as the look that resolved it saw it
    (its seeds, difference, interval, level), an unresolved one as the last look saw it, with the difference
    it could still hide (the far end of its interval)."""
    import pandas as pd

    last = result["looks"][-1]
    names = result["names"]
    rows = []
    for c in last["comparisons"]:
        # the first look with this leader that resolved this comparison (the procedure keeps a resolution)
        look, row = next(((look, x) for look in result["looks"] if look["leader"] == last["leader"]
                          for x in look["comparisons"] if x["other"] == c["other"] and x["resolved"]), (last, c))
        rows.append({"leader": names[last["leader"]], "other": names[c["other"]], "seeds": look["seeds"],
                     "difference": row["difference"], "low": row["low"], "high": row["high"], "p": row["p"],
                     "p_holm": row["p_holm"], "look_alpha": look["level"],
                     "interval_alpha": row["alpha"], "resolved": row["resolved"],
                     "could_hide": np.nan if row["resolved"] else sequential.hidden_difference(row)})
    return pd.DataFrame(rows)


def looks(result: dict):
    import pandas as pd

    return pd.DataFrame([{"seeds": look["seeds"], "alpha": look["level"], "leader": result["names"][look["leader"]],
                          "resolved": sum(c["resolved"] for c in look["comparisons"]),
                          "comparisons": len(look["comparisons"])} for look in result["looks"]])


def testset_limits(race_dir: Path, names: list[str], leader: str, data_root: str | None, alpha: float):
    """The leader's first seed run against every other's on the 10,000 test images (McNemar), from predictions
    kept in predictions/<opt>.npz (computed once from checkpoint.pt)."""
    import pandas as pd

    correct = {}
    for name in names:
        path = race_dir / "predictions" / f"{name}.npz"
        if not path.exists():
            predicted, labels = testset.predictions(running.seed_dirs(race_dir, name, 1)[0], data_root)
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(path, predicted=predicted, labels=labels)
        kept = np.load(path)
        correct[name] = kept["predicted"] == kept["labels"]
    rows = [{"leader": leader, "other": n, "run_leader": f"seeds/{leader}/seed={running.FIRST_SEED}",
             "run_other": f"seeds/{n}/seed={running.FIRST_SEED}", **testset.compare(correct[leader], correct[n], alpha)}
            for n in names if n != leader]
    return pd.DataFrame(rows)


def curves(race_dir: Path, names: list[str], seed_counts: dict):
    """Validation accuracy at every evaluation of the chosen configurations' seed runs (optimizer, seed, step,
    value)."""
    import pandas as pd

    frames = []
    for name in names:
        for path in running.seed_dirs(race_dir, name, seed_counts[name]):
            m = rundir.read_metrics(path)
            m = m[(m["split"] == "val") & (m["metric"] == "acc")]
            frames.append(pd.DataFrame({"optimizer": name, "seed": int(rundir.read_config(path).seed),
                                        "step": m["step"].to_numpy(), "value": m["value"].to_numpy()}))
    return pd.concat(frames, ignore_index=True)
