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

    def close(self) -> None:
        if not self._file.closed:
            self.flush()
            self._file.close()


def write_json_atomic(path: Path, data: dict) -> None:
    """Readers see the old file or the new one, never half of either."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
