"""What a run leaves behind, and reading it back.

A run directory holds:
  config.yaml   the resolved config (Hydra's unresolved copy is in .hydra/)
  metrics.csv   long format: step, epoch, split, metric, value; appended while training
  summary.json  status, headline numbers, provenance; rewritten atomically
  train.log     the run's log (Hydra's job logging)
"""

import csv
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

METRICS = "metrics.csv"
SUMMARY = "summary.json"
COLUMNS = ("step", "epoch", "split", "metric", "value")


class MetricsWriter:
    """Appends rows to metrics.csv; `flush` makes them durable (called at every evaluation)."""

    def __init__(self, run_dir: Path):
        path = Path(run_dir) / METRICS
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(COLUMNS)

    def write(self, step: int, epoch: int, split: str, values: dict) -> None:
        for metric, value in values.items():
            self._csv.writerow((step, epoch, split, metric, value))

    def write_rows(self, rows) -> None:
        self._csv.writerows(rows)

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())

    def tell(self) -> int:
        """Bytes written so far: where a resumed run cuts the file back to."""
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


def truncate(path: Path, size: int) -> None:
    """Drop what a killed run wrote after its last checkpoint; the resumed run writes it again."""
    if Path(path).exists():
        os.truncate(path, size)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so a reader never sees half a file; a full disk raises OSError.

    The temp name is the writer's own (pid), so processes writing one file at once never share it.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers see the old file or the new one, never half of either."""
    write_bytes_atomic(path, json.dumps(data, indent=2, default=str).encode())


def provenance() -> dict:
    import torch

    import optbench

    versions = {"python": platform.python_version(), "torch": torch.__version__, "optbench": optbench.__version__}
    for name in ("hydra", "omegaconf", "numpy"):
        module = sys.modules.get(name)
        versions[name] = getattr(module, "__version__", None)
    return {"versions": versions, "host": platform.node(), "git_commit": _git_commit()}


def _git_commit() -> str | None:
    """The commit of the optbench source that ran, when it runs from a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True)
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def read_summary(run_dir: Path) -> dict | None:
    path = Path(run_dir) / SUMMARY
    if not path.exists():
        return None
    with open(path) as f:
        return json.load(f)


def read_metrics(run_dir: Path):
    import pandas as pd

    return pd.read_csv(Path(run_dir) / METRICS)


# --- Reading many runs back: one table of runs, one long table of metrics, a ranking ---

PROCESS = "process.json"
FINISHED = ("completed", "diverged")  # outcomes a rerun would only repeat
# config keys that say where or how a run is carried out, not what it computes: a run that differs from another
# only in these is the same run. The one list of them: resume and skip decisions (config_differences) ignore them,
# run folder names leave them out (config.yaml's exclude_keys reads them through a resolver, schema.register)
RUN_SETTINGS = ("data.root", "device", "trainer.skip_completed", "trainer.resume", "trainer.vectorize")
# config keys that are not experimental factors: the run settings, and the seed, which repeats a configuration
NOT_FACTORS = ("seed", *RUN_SETTINGS)
# hyperparameters tuned per group: a group is represented by its best value, chosen on validation
TUNED = ("optimizer.lr",)
# summary fields the report and plots read
SUMMARY_COLUMNS = ("best_val_acc", "test_acc_at_best_val", "final.train_loss", "optimizer_impl",
                   "steps_per_epoch", "train_time", "wall_time")


def write_process(run_dir: Path) -> None:
    """Record which process trains the run, so a reader can tell a live run from a killed one."""
    write_json_atomic(Path(run_dir) / PROCESS, {"host": platform.node(), "pid": os.getpid()})


def _process_alive(run_dir: Path) -> bool:
    try:
        record = json.loads((Path(run_dir) / PROCESS).read_text())
    except (OSError, ValueError):
        return False
    if record.get("host") != platform.node():
        return True  # another machine's process: we cannot tell, so do not call it dead
    try:
        os.kill(int(record["pid"]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_status(run_dir: Path, summary: dict | None) -> str:
    """The summary's status, except that a `running` run whose process is gone is `incomplete`."""
    status = (summary or {}).get("status", "incomplete")
    if status == "running" and not _process_alive(run_dir):
        return "incomplete"
    return status


def same_config(run_dir: Path, cfg) -> bool:
    """Whether run_dir's config.yaml is `cfg` (resolved), ignoring where and how it runs (RUN_SETTINGS)."""
    return not config_differences(run_dir, cfg)


def config_differences(run_dir: Path, cfg) -> list[str]:
    """The dotted keys whose values differ between run_dir's config.yaml and `cfg` (RUN_SETTINGS aside)."""
    from omegaconf import OmegaConf

    path = Path(run_dir) / "config.yaml"
    if not path.exists():
        return ["config.yaml (missing)"]
    old, new = (_flat(OmegaConf.to_container(c, resolve=True)) for c in (OmegaConf.load(path), cfg))
    return sorted(k for k in old.keys() | new.keys()
                  if k not in RUN_SETTINGS and old.get(k, _ABSENT) != new.get(k, _ABSENT))


_ABSENT = object()


def find_runs(dirs) -> list[Path]:
    """Every run directory (one holding summary.json) at or below each of `dirs`."""
    from optbench.errors import UserError

    found = []
    for d in map(Path, dirs):
        if not d.is_dir():
            raise UserError(f"{d} is not a directory")
        found += [p.parent for p in d.rglob(SUMMARY)]
    found = sorted(set(p.resolve() for p in found), key=_natural)
    if not found:
        raise UserError(f"no runs (no {SUMMARY}) found under {', '.join(map(str, dirs))}")
    return found


def _natural(path: Path):
    """Sort 2_... before 10_... (display order only; analysis never reads folder names)."""
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def _flat(d: dict) -> dict:
    import pandas as pd

    if not d:
        return {}
    flat = pd.json_normalize(d, sep=".").iloc[0].to_dict()
    # lists (hidden sizes, betas) as text, so they can be compared and grouped
    return {k: str(v) if isinstance(v, (list, tuple)) else v for k, v in flat.items()}


def load_runs(*dirs):
    """One row per run below `dirs`: flattened config, `<group>.name` choices, summary fields, status.

    Runs that failed, diverged, were interrupted or never finished keep their
    row and their status. `runs.attrs["config_columns"]` names the config part.
    """
    import pandas as pd
    from omegaconf import OmegaConf

    paths = find_runs(dirs or ["."])
    root = Path(os.path.commonpath(paths)) if len(paths) > 1 else paths[0].parent
    rows, config_columns = [], {}
    for path in paths:
        summary = read_summary(path) or {}
        config = {}
        if (path / "config.yaml").exists():
            config = _flat(OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=True))
        choices = {f"{g}.name": v for g, v in summary.get("choices", {}).items() if f"{g}.name" not in config}
        config = {**choices, **config}
        config_columns.update(dict.fromkeys(config))
        fields = _flat({k: v for k, v in summary.items() if k != "choices"})
        fields = {(f"summary.{k}" if k in config else k): v for k, v in fields.items()}
        fields["status"] = run_status(path, summary)
        rows.append({"run": str(path.relative_to(root)), **config, **fields, "run_dir": str(path)})
    runs = pd.DataFrame(rows)
    for column in SUMMARY_COLUMNS:  # present even when no run got far enough to write them
        if column not in runs:
            runs[column] = None
    first = ["run", "status"] + [c for c in config_columns if c.endswith(".name")]
    runs = runs[first + [c for c in runs.columns if c not in first]]
    runs.attrs["config_columns"] = [c for c in config_columns if c in runs.columns]
    return runs


def load_metrics(runs):
    """The long metrics table of every run in `runs`, with a `run` column.

    split "step" holds the per-step numbers (mini-batch loss, lr, gradient
    norms); train/val/test the evaluations; run and diag the rest.
    """
    import pandas as pd

    tables = []
    for run, run_dir in zip(runs["run"], runs["run_dir"]):
        path = Path(run_dir) / METRICS
        if not path.exists() or path.stat().st_size == 0:
            continue
        # a run killed mid-write may end in half a row: skip it rather than fail the whole report
        tables.append(pd.read_csv(path, on_bad_lines="skip").assign(run=run))
    if not tables:
        return pd.DataFrame(columns=[*COLUMNS, "run"])
    return pd.concat(tables, ignore_index=True)


def load_histograms(runs):
    """histograms.csv of every run in `runs` that has one, with a `run` column."""
    import pandas as pd

    tables = [pd.read_csv(Path(d) / "histograms.csv", on_bad_lines="skip").assign(run=run)
              for run, d in zip(runs["run"], runs["run_dir"]) if (Path(d) / "histograms.csv").exists()]
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()


def as_text(values):
    """Values as the text that labels and groups them: 32 not 32.0, null for a missing value.

    (pandas keeps NaN missing through astype(str), and a column holding a
    null turns its integers into floats.)
    """

    def text(v):
        if _missing(v):
            return "null"
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v)

    return values.map(text)


def varied_keys(runs) -> list[str]:
    """The config columns that differ across runs (seed and machine keys excluded), minus redundant ones.

    A key whose value follows from the keys already kept (optimizer._target_
    and optimizer.lr when only the optimizer varied) adds nothing; choices
    (`optimizer.name`) are considered first so they are the ones kept.
    """
    columns = runs.attrs.get("config_columns") or [c for c in runs.columns if c not in ("run", "run_dir", "status")]
    columns = sorted(columns, key=lambda c: not c.endswith(".name"))
    kept = []
    for c in columns:
        if c in NOT_FACTORS or as_text(runs[c]).nunique() < 2:
            continue
        if kept and as_text(runs[kept + [c]]).groupby(kept)[c].nunique().max() < 2:
            continue
        kept.append(c)
    return kept


def resolve_by(runs, by: list[str] | None) -> list[str]:
    """The grouping keys: `by` as given (checked), or what varied apart from tuned hyperparameters."""
    from optbench.errors import UserError

    if by:
        out = []
        for key in by:
            name = key if key in runs.columns else f"{key}.name"
            if name not in runs.columns:
                options = ", ".join(varied_keys(runs) + ["seed"]) or "none (nothing varied)"
                raise UserError(f"--by {key}: no such config key in these runs; keys that varied: {options}")
            out.append(name)
        return out
    varied = varied_keys(runs)
    factors = [k for k in varied if k not in TUNED]
    return factors or varied


def select_best(runs, by: list[str]):
    """Per group of `by`, only the runs of its configuration with the best mean validation accuracy.

    Means are over finished runs (completed or diverged): a killed run's
    partial curve is no result.

    The other varied keys (a swept learning rate) are tuned on validation
    only; a group's test figures then come from that choice alone.
    """
    import pandas as pd

    tuned = [k for k in varied_keys(runs) if k not in by]
    if not tuned:
        return runs
    text = as_text(runs[by + tuned])
    config = text.agg("|".join, axis=1)  # one label per configuration
    group = text[by].agg("|".join, axis=1) if by else pd.Series("", index=runs.index)
    configs = pd.DataFrame({"config": config, "group": group}).drop_duplicates("config").set_index("config")
    finished = runs["best_val_acc"].where(runs["status"].isin(FINISHED))
    configs["score"] = finished.groupby(config).mean().fillna(-1.0)
    best = configs.groupby("group")["score"].idxmax()
    return runs[config.isin(best)]


def to_target(metrics, target: float):
    """Per run: the first evaluation step with validation accuracy >= target, and the training time then."""
    import pandas as pd

    val = metrics[(metrics.split == "val") & (metrics.metric == "acc") & (metrics.value >= target)]
    first = val.groupby("run").step.min().rename("steps_to_target")
    times = metrics[(metrics.split == "run") & (metrics.metric == "train_time")]
    times = times.set_index(["run", "step"]).value
    out = first.to_frame()
    out["time_to_target"] = [times.get((r, s)) for r, s in first.items()]
    return out.reindex(pd.Index(metrics.run.unique(), name="run"))


def rank(runs, metrics, by: list[str] | None = None, target: float = 0.97):
    """One row per group, best mean validation accuracy first (means and stds over the seeds' finished runs)."""
    by = resolve_by(runs, by)
    tuned = [k for k in varied_keys(runs) if k not in by]
    chosen = select_best(runs, by).merge(to_target(metrics, target), left_on="run", right_index=True, how="left")
    chosen = chosen.assign(final_train_loss=chosen.get("final.train_loss"), _all=0)
    # statistics over finished runs only; unfinished ones are counted, not averaged in
    values = ["best_val_acc", "test_acc_at_best_val", "final_train_loss", "steps_to_target", "time_to_target"]
    chosen[values] = chosen[values].astype(float).where(chosen["status"].isin(FINISHED), axis=0)
    keys = (by + tuned) or ["_all"]
    chosen[keys] = as_text(chosen[keys])
    table = chosen.groupby(keys).agg(
        runs=("run", "size"),
        diverged=("status", lambda s: int((s == "diverged").sum())),
        unfinished=("status", lambda s: int((~s.isin(FINISHED)).sum())),
        best_val_acc=("best_val_acc", "mean"),
        best_val_acc_std=("best_val_acc", "std"),
        test_acc=("test_acc_at_best_val", "mean"),
        test_acc_std=("test_acc_at_best_val", "std"),
        final_train_loss=("final_train_loss", "mean"),
        final_train_loss_std=("final_train_loss", "std"),
        reached=("steps_to_target", "count"),
        steps_to_target=("steps_to_target", "mean"),
        time_to_target=("time_to_target", "mean"),
    )
    if "optimizer_impl" in chosen:
        impl = chosen.groupby(keys)["optimizer_impl"]
        table["optimizer_impl"] = impl.agg(lambda s: "/".join(sorted(set(map(str, s.dropna())))))
    table = table.reset_index().drop(columns=["_all"], errors="ignore")
    table = table.sort_values("best_val_acc", ascending=False, na_position="last", ignore_index=True)
    table.attrs.update(by=by, tuned=tuned, target=target)
    return table


def format_ranking(table):
    """The ranking as text cells: mean ± std, counts, the target in the headers."""
    import pandas as pd

    pct = f"{100 * table.attrs.get('target', 0.97):g}%"

    def pm(mean, std, fmt="{:.4f}", std_fmt="{:.4f}"):
        return [
            "" if pd.isna(m) else fmt.format(m) + ("" if pd.isna(s) else " ± " + std_fmt.format(s))
            for m, s in zip(table[mean], table[std])
        ]

    keys = table.attrs.get("by", []) + table.attrs.get("tuned", [])
    out = pd.DataFrame({k: table[k] for k in keys})
    out["runs"] = table["runs"]
    out["diverged"] = table["diverged"]
    if table["unfinished"].any():
        out["unfinished"] = table["unfinished"]
    out["best val acc"] = pm("best_val_acc", "best_val_acc_std")
    out["test acc @ best val"] = pm("test_acc", "test_acc_std")
    out["final train loss"] = pm("final_train_loss", "final_train_loss_std", "{:.4g}", "{:.2g}")  # diverged: 1e+07
    out[f"reached {pct}"] = [f"{r}/{n}" for r, n in zip(table["reached"], table["runs"])]
    out[f"steps to {pct}"] = ["" if pd.isna(v) else f"{v:.0f}" for v in table["steps_to_target"]]
    out[f"time to {pct} (s)"] = ["" if pd.isna(v) else f"{v:.2f}" for v in table["time_to_target"]]
    if "optimizer_impl" in table:
        out["impl"] = table["optimizer_impl"]
    return out


def markdown(table) -> str:
    """A DataFrame as a Markdown table (pandas' to_markdown needs the tabulate package)."""
    cells = as_text(table)
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def export_tensorboard(runs, metrics, out: Path, by: list[str] | None = None) -> list[Path]:
    """Each run's metrics as TensorBoard event files in out/<key=value,...>/seed=<n>/.

    The folder names carry what varied, so TensorBoard (and tbparse, W&B,
    Aim, which import these files) group the seeds of a configuration.
    Tags: `<split>/<metric>` per evaluation, `<split>_step/<metric>` per step.
    """
    from optbench.errors import UserError

    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("export tensorboard needs the tensorboard package: pip install 'optbench[tensorboard]'") from None
    keys = resolve_by(runs, by) if by else varied_keys(runs)
    written = []
    for i, run in runs.iterrows():
        group = ",".join(f"{k}={run[k]}" for k in keys) or "runs"
        name = f"seed={run['seed']}" if "seed" in run and not _missing(run["seed"]) else run["run"]
        log_dir = Path(out) / group.replace("/", "_") / str(name)
        if log_dir in written:
            log_dir = log_dir.with_name(f"{log_dir.name}-{i}")
        rows = metrics[metrics.run == run["run"]]
        with SummaryWriter(log_dir=str(log_dir)) as writer:
            for split, metric, step, value in zip(rows.split, rows.metric, rows.step, rows.value):
                tag = f"{split}/{metric}"
                writer.add_scalar(tag, value, int(step))
        written.append(log_dir)
    return written


def _missing(value) -> bool:
    return value is None or value != value  # None or NaN
