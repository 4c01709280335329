"""One run directory: its files, how each is written and read back, its status, and who holds it.

A run directory holds:
  config.yaml      the resolved config (Hydra's unresolved copy and the overrides are in .hydra/)
  metrics.csv      long format: step, epoch, split, metric, value; appended while training
  histograms.csv   activation and gradient histograms (diagnostics)
  summary.json     status, headline numbers, provenance; rewritten atomically
  train.log        the run's log
  init.pt, checkpoint.pt   the initial weights and the last checkpoint: tensors and plain values only
  process.json     the process that trains (or last trained) it: host, pid, job, heartbeat

Writes go through a temporary file in the same folder and a rename, so a reader sees the old file or the new one,
never half of either; the temporary file is removed on any error (a full disk leaves nothing behind). Reads of
what another process or person may have damaged go through `read_*`, which turn a damaged file into a DamagedFile:
one line naming the file and the way out. Nothing read from a run directory is executed: tensors load with
`weights_only=True`, configs are read as data and never instantiated.

A process that trains into a directory holds it (`hold`): process.json is created exclusively (O_EXCL, which works
on network file systems where flock may not) and its heartbeat is renewed while the run trains. Another process
never starts over, resumes or appends to a directory whose holder is alive: same host and its pid still running,
or, for a holder on another host, a heartbeat younger than STALE seconds.
"""

import csv
import errno
import hashlib
import io
import itertools
import json
import logging
import os
import pickle
import platform
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import cast

import optbench
from optbench.errors import UserError

CONFIG = "config.yaml"
METRICS = "metrics.csv"
HISTOGRAMS = "histograms.csv"
SUMMARY = "summary.json"
LOG = "train.log"
INIT = "init.pt"
CHECKPOINT = "checkpoint.pt"
PROCESS = "process.json"
TENSORBOARD = "tensorboard"  # event files of trainer.tensorboard=true
COLUMNS = ("step", "epoch", "split", "metric", "value")
STATUSES = ("running", "completed", "diverged", "interrupted", "failed")
FINISHED = ("completed", "diverged")  # outcomes a rerun would only repeat
LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job log format
# errors that mean "no room": a full disk, a quota, a file-size limit
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
HEARTBEAT = 30  # seconds between a holder's renewals of process.json
STALE = 10 * HEARTBEAT  # a holder on another host silent this long is gone
NAME_BYTES = 120  # longest folder name made from overrides; the file system allows 255


class DamagedFile(UserError):
    """A file of a run directory that cannot be read as what it should be: names it and the way out."""

    def __init__(self, path, what: str, way_out: str):
        super().__init__(f"{path}: {what}; {way_out}")
        self.path, self.what = Path(path), what


class Held(UserError):
    """A run directory another live process holds."""


# --- writing ---------------------------------------------------------------------------------------------------


def write_bytes(path: Path, data: bytes) -> None:
    """Write via a temporary file and a rename; the temporary file is removed on any error (a full disk raises
    OSError and leaves nothing). The temporary name is the writer's own (pid), so writers never share one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: Path, data: dict) -> None:
    write_bytes(path, json.dumps(data, indent=2, default=str).encode())


def write_config(run_dir: Path, cfg) -> None:
    from omegaconf import OmegaConf

    write_bytes(Path(run_dir) / CONFIG, OmegaConf.to_yaml(cfg, resolve=True).encode())


def save_tensors(obj, path: Path) -> None:
    """torch.save, atomically; serialised in memory first so a full disk raises a plain OSError."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(path, buffer.getvalue())


def truncate(path: Path, size: int) -> None:
    """Drop what a killed run wrote after its last checkpoint (the resumed run writes it again); never grow a file:
    one shorter than the checkpoint says is damaged."""
    path = Path(path)
    if not path.exists():
        return
    if path.stat().st_size < size:
        raise DamagedFile(path, f"is shorter ({path.stat().st_size} bytes) than its checkpoint says ({size})",
                          "trainer.resume=false starts the run again")
    os.truncate(path, size)


class MetricsWriter:
    """Appends rows to metrics.csv; `flush` makes them durable (called at every evaluation).

    With `tensorboard`, every row also goes to TensorBoard event files in the run's tensorboard/ folder under the
    tags `optbench export tensorboard` uses (`<split>/<metric>`), one event per step, flushed at every read-back, so
    a sweep can be watched while it trains.
    """

    def __init__(self, run_dir: Path, tensorboard: bool = False, resumed_at: int | None = None):
        path = Path(run_dir) / METRICS
        new = not path.exists() or path.stat().st_size == 0
        self._file = open(path, "a", newline="")
        self._csv = csv.writer(self._file)
        if new:
            self._csv.writerow(COLUMNS)
        self._events = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # a resumed run writes again the steps after its checkpoint: TensorBoard drops the old ones from there
            self._events = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD), purge_step=resumed_at)

    def write(self, step: int, epoch: int, split: str, values: dict) -> None:
        self.write_rows([(step, epoch, split, metric, value) for metric, value in values.items()])

    def write_rows(self, rows) -> None:
        self._csv.writerows(rows)
        if self._events is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        events = self._events.file_writer
        assert events is not None  # open until close()
        # one event of all the step's values: a tenth of add_scalar's cost per value (protobuf, event queue)
        for step, same_step in itertools.groupby(rows, key=lambda row: row[0]):
            values = [Summary.Value(tag=f"{split}/{metric}", simple_value=float(value))
                      for _, _, split, metric, value in same_step]
            events.add_summary(Summary(value=values), global_step=int(step))

    def flush(self) -> None:
        self._file.flush()
        os.fsync(self._file.fileno())
        if self._events is not None:
            self._events.flush()

    def tell(self) -> int:
        """Bytes written so far: where a resumed run cuts the file back to."""
        self._file.flush()
        return self._file.tell()

    def close(self) -> None:
        if not self._file.closed:
            try:
                self.flush()
            finally:
                self._file.close()
        if self._events is not None:
            self._events.close()


def log_handler(run_dir: Path) -> logging.FileHandler:
    """A handler that appends to the run's train.log in Hydra's format."""
    handler = logging.FileHandler(Path(run_dir) / LOG)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def log_line(run_dir: Path, message: str, level: int = logging.ERROR) -> None:
    """One line in the run's train.log, from outside its training (why it could not train)."""
    handler = log_handler(run_dir)
    try:
        handler.emit(logging.LogRecord("optbench", level, __file__, 0, message, None, None))
    finally:
        handler.close()


def provenance() -> dict:
    import torch

    loaded = {name: getattr(sys.modules.get(name), "__version__", None) for name in ("hydra", "omegaconf", "numpy")}
    versions = {"python": platform.python_version(), "torch": torch.__version__, "optbench": optbench.__version__,
                **loaded}
    return {"versions": versions, "host": platform.node(), "git_commit": _git_commit()}


def _git_commit() -> str | None:
    """The commit of the optbench source that ran, when it runs from a git checkout."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain"], capture_output=True, text=True,
                               timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def folder_name(text: str, limit: int = NAME_BYTES) -> str:
    """`text` (a run's overrides) as one folder name that stays where it is put: '/', '\\' and control characters
    become '_', a leading '.' too; longer than `limit` bytes, a readable prefix and 8 hex digits of the whole
    text's hash (two long names that share the prefix stay apart)."""
    safe = "".join("_" if c in "/\\" or not c.isprintable() else c for c in str(text))
    if safe.startswith("."):
        safe = "_" + safe[1:]
    if len(safe.encode()) <= limit:
        return safe
    digest = hashlib.sha256(str(text).encode()).hexdigest()[:8]
    prefix = safe.encode()[: limit - 9].decode(errors="ignore")
    return f"{prefix}-{digest}"


_made: dict[str, str] = {}  # folder asked for -> the one made for it, in this command (new_folders resets it)


def new_folder(path: str) -> str:
    """`path`, made now; or `path-2`, `path-3`, ... when it exists already (made by another process in the same
    second). The same answer for the same path until `new_folders()`: Hydra resolves its run folder more than once."""
    if path not in _made:
        for n in itertools.count(1):
            candidate = Path(path if n == 1 else f"{path}-{n}")
            with suppress(FileExistsError):
                candidate.mkdir(parents=True)
                _made[path] = str(candidate)
                break
    return _made[path]


def new_folders() -> None:
    """Forget the folders made so far: the next command in this process (the tests call several) makes its own."""
    _made.clear()


# --- reading ---------------------------------------------------------------------------------------------------


def read_summary(run_dir: Path) -> dict | None:
    """summary.json as a dict; None when there is none; DamagedFile when it is not a JSON object."""
    path = Path(run_dir) / SUMMARY
    way_out = "move the run directory away, or delete it to train the run again"
    try:
        summary = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise DamagedFile(path, f"cannot be read ({_reason(e)})", way_out) from None
    if not isinstance(summary, dict) or summary.get("status") not in (*STATUSES, None):
        raise DamagedFile(path, "is not an optbench summary", way_out)
    return summary


def read_config(run_dir: Path):
    """config.yaml as an OmegaConf config (data, never instantiated); None when there is none."""
    import yaml
    from omegaconf import OmegaConf

    path = Path(run_dir) / CONFIG
    way_out = "move the run directory away, or delete config.yaml to let the run start again"
    try:
        data = yaml.safe_load(path.read_bytes())
    except FileNotFoundError:
        return None
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise DamagedFile(path, f"cannot be read ({_reason(e)})", way_out) from None
    if not isinstance(data, dict):
        raise DamagedFile(path, "is not a config (not a mapping of keys)", way_out)
    return OmegaConf.create(data)


def read_tensors(path: Path, way_out: str, device="cpu"):
    """A checkpoint or init.pt: tensors and plain values only (weights_only=True), so a planted pickle runs no
    code; anything else is a DamagedFile."""
    import torch

    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise DamagedFile(path, "is missing", way_out) from None
    except pickle.UnpicklingError as e:
        # torch names a class it refused as an "Unsupported global"; bytes that are no pickle at all fail sooner
        cause = next((line[line.index("Unsupported"):].split(" was ")[0] for line in str(e).splitlines()
                      if "Unsupported" in line), type(e).__name__)
        what = ("holds objects other than tensors (refused: loading them could run code)"
                if cause.startswith("Unsupported global") else f"is not a checkpoint ({cause})")
        raise DamagedFile(path, what, way_out) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError) as e:
        raise DamagedFile(path, f"cannot be read ({_reason(e)})", way_out) from None


def read_metrics(run_dir: Path):
    """metrics.csv as a DataFrame: a half-written last row (what a kill leaves) and rows whose values are not
    numbers are dropped; DamagedFile when the file is not an optbench metrics table at all."""
    import pandas as pd

    path = Path(run_dir) / METRICS
    way_out = "move the run directory away (or delete its metrics.csv) and run the command again"
    try:  # as text first: a value written as "nan" (a diverged run) is a number, an empty field is half a row
        table = pd.read_csv(path, on_bad_lines="skip", dtype=str, na_filter=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as e:
        raise DamagedFile(path, f"cannot be read ({_reason(e)})", way_out) from None
    if list(table.columns) != list(COLUMNS):
        raise DamagedFile(path, f"is not an optbench metrics table (its first line is not {','.join(COLUMNS)})",
                          way_out)
    numbers = {c: pd.to_numeric(table[c], errors="coerce") for c in ("step", "epoch", "value")}
    keep = numbers["step"].notna() & numbers["epoch"].notna() & (table["split"] != "") & (table["metric"] != "")
    keep &= numbers["value"].notna() | table["value"].str.lower().isin(["nan", "inf", "-inf"])
    table = table[keep].assign(step=numbers["step"][keep].astype("int64"),
                               epoch=numbers["epoch"][keep].astype("int64"), value=numbers["value"][keep])
    return table.reset_index(drop=True)


def _reason(e: BaseException) -> str:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    return f"{type(e).__name__}: {lines[0][:160]}" if lines else type(e).__name__


# --- status and ownership --------------------------------------------------------------------------------------


def status(run_dir: Path, summary: dict | None) -> str:
    """The summary's status, except that a `running` run that no live process holds is `incomplete`."""
    found = (summary or {}).get("status", "incomplete")
    return "incomplete" if found == "running" and holder(run_dir) is None else found


def holder(run_dir: Path) -> dict | None:
    """The record of the live process that holds run_dir, or None (no holder, released, or gone)."""
    path = Path(run_dir) / PROCESS
    try:
        record = json.loads(path.read_text())
        beat = path.stat().st_mtime
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("released"):
        return None
    return record if _alive(record, beat) else None


def held_elsewhere(run_dir: Path) -> dict | None:
    """The record of a live process other than this one that holds run_dir, or None."""
    record = holder(run_dir)
    mine = record is not None and record.get("host") == socket.gethostname() and record.get("pid") == os.getpid()
    return None if mine else record


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine (another user's counts too)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _alive(record: dict, heartbeat: float) -> bool:
    if record.get("host") != socket.gethostname():  # another machine: only its heartbeat tells
        return time.time() - heartbeat < STALE
    try:
        pid = int(record["pid"])
    except (KeyError, ValueError, TypeError):
        return False
    if not pid_alive(pid):
        return False
    started = _process_start(pid)
    return started is None or record.get("process_start") in (None, started)  # a reused pid is another process


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


@contextmanager
def hold(run_dir: Path, job: str | None = None):
    """Hold run_dir for this process while the block runs: Held (naming the holder) when a live process holds it.

    `job` names the executor's job or worker that trains it; the GPUs this process sees are kept beside it, so a
    spread-out sweep says where each run went.
    """
    run_dir = Path(run_dir)
    record = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
              "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if job is not None:
        record.update(job=job, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"))
    _acquire(run_dir, record)
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(run_dir / PROCESS, stop), daemon=True)
    beat.start()
    try:
        yield record
    finally:
        stop.set()
        beat.join()
        with suppress(OSError):  # a full disk: the holder's pid is gone soon, which frees the directory as well
            write_json(run_dir / PROCESS, {**record, "released": time.strftime("%Y-%m-%dT%H:%M:%S%z")})


def _acquire(run_dir: Path, record: dict) -> None:
    path = run_dir / PROCESS
    data = json.dumps(record, indent=2).encode()
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        with _breaking(run_dir):  # one process at a time takes over a released or dead holder's file
            current = holder(run_dir)
            if current is not None:
                raise Held(f"{run_dir} is being trained by process {current.get('pid')} on {current.get('host')}"
                           f"{' (' + current['job'] + ')' if current.get('job') else ''} since "
                           f"{current.get('since', '?')}: wait for it, or give another run directory") from None
            write_bytes(path, data)
        return
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@contextmanager
def _breaking(run_dir: Path):
    """A short exclusive section (an O_EXCL file) for taking over process.json; one a dead process left behind
    for over a minute is removed."""
    path = run_dir / f".{PROCESS}.break"
    for _ in range(200):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            break
        except FileExistsError:
            with suppress(OSError):
                if time.time() - path.stat().st_mtime > 60:
                    path.unlink(missing_ok=True)
            time.sleep(0.05)
    else:
        raise Held(f"{run_dir}: another process keeps taking it over ({path}); try again")
    try:
        yield
    finally:
        path.unlink(missing_ok=True)


def _heartbeat(path: Path, stop: threading.Event) -> None:
    while not stop.wait(HEARTBEAT):
        with suppress(OSError):
            os.utime(path)


# --- what a run is: its config against another, its line in a log ---------------------------------------------

# config keys that say where or how a run is carried out, not what it computes: a run that differs from another
# only in these is the same run. The one list of them: resume and skip decisions (config_differences) ignore them,
# run folder names leave them out (config.yaml's exclude_keys reads them through a resolver, schema.register)
RUN_SETTINGS = ("data.root", "device", "trainer.skip_completed", "trainer.resume", "trainer.vectorize",
                "trainer.progress_every", "trainer.tensorboard")
# config keys that are not experimental factors: the run settings, and the seed, which repeats a configuration
NOT_FACTORS = ("seed", *RUN_SETTINGS)
_ABSENT = object()
# the one line per finished run, and a sweep's summary at its end: the console, and sweep.log in a sweep's folder
sweep_log = logging.getLogger("optbench.sweep")


def flat(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists (hidden sizes, betas) as text, so they can be compared and grouped."""
    out = {}
    for key, value in (d or {}).items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{name}."))
        else:
            out[name] = str(value) if isinstance(value, (list, tuple)) else value
    return out


def resolved(cfg) -> dict:
    from omegaconf import OmegaConf

    return flat(cast(dict, OmegaConf.to_container(cfg, resolve=True)))  # a DictConfig becomes a dict


def config_differences(run_dir: Path, cfg) -> list[str]:
    """The dotted keys whose values differ between run_dir's config.yaml and `cfg` (RUN_SETTINGS aside)."""
    old = read_config(run_dir)
    if old is None:
        return [f"{CONFIG} (missing)"]
    before, now = resolved(old), resolved(cfg)
    return sorted(k for k in before.keys() | now.keys()
                  if k not in RUN_SETTINGS and before.get(k, _ABSENT) != now.get(k, _ABSENT))


def differing_keys(cfgs) -> list[str]:
    """What differs between configs, in words a user typed: `optimizer` when the class differs, else `optimizer.lr`."""
    flats = [resolved(c) for c in cfgs]
    keys = sorted(k for k in set().union(*flats) if len({str(f.get(k, _ABSENT)) for f in flats}) > 1)
    whole = {k.rsplit(".", 1)[0] for k in keys if k.endswith("._target_")}
    return sorted(whole | {k for k in keys if k.split(".")[0] not in whole})


def raised_flags(summary: dict) -> list[str]:
    """The health flags (diagnostics.FLAGS) a run raised, in the order they are defined."""
    return [name for name, at in (summary.get("flags") or {}).items() if at is not None]


def run_line(name: str, summary: dict) -> str:
    """`<run> <status> | best val acc, test acc at it | flags | time | why`, for a run that ended."""
    def fmt(x):
        return "n/a" if x is None or x != x else f"{x:.4f}"

    flags = raised_flags(summary)
    line = (f"{name} {summary.get('status')} | best val acc {fmt(summary.get('best_val_acc'))}, test acc at it "
            f"{fmt(summary.get('test_acc_at_best_val'))}" + (f" | flags: {', '.join(flags)}" if flags else "")
            + f" | {summary.get('train_time') or 0.0:.1f} s")
    if summary.get("status") != "completed" and summary.get("reason"):
        line += f" | {summary['reason']}"
    return line
