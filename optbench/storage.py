"""Where `optbench search` keeps a study that workers on several machines share, and how workers are submitted.

`--storage` takes
  postgresql://user:password@host:5432/db   any SQLAlchemy URL (mysql+pymysql://..., sqlite:///...):
                                            Optuna's RDBStorage; the driver comes with an extra
  /shared/path/study.log                    Optuna's JournalStorage in one file (JournalFileBackend), for clusters
                                            whose machines share only a file system; the form optuna-dashboard takes

Without it a search keeps its study in DIR/study.db (SQLite), shared only by processes of one machine.

A worker that dies leaves its trial RUNNING. An RDB storage records each
running trial's heartbeat in the database (Optuna's heartbeat_interval); a
trial whose heartbeat stopped for 2 x HEARTBEAT seconds is marked FAIL by
any live worker and queued again with the same parameters (Optuna's
RetryHeartbeatStaleTrialCallback). Optuna's journal storage has no
heartbeat: there only a dead process of the worker's own machine is noticed
(by its PID, as with SQLite).
"""

import time
from dataclasses import dataclass
from pathlib import Path

from optbench.errors import UserError

HEARTBEAT = 30  # seconds between a running trial's heartbeats; its worker counts as dead after twice that
RETRIES = 2  # a trial whose worker died is queued again at most this often (a point that kills every worker ends)
WORKER_TIMEOUT_MIN = 60  # submitit's own default (5 min) would end a worker inside its first trials
EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}  # SQLAlchemy backend -> the optbench extra with its driver


@dataclass(frozen=True)
class Shared:
    """A study on a storage other machines reach: its URL (or journal file), the study's name, the heartbeat."""

    url: str
    study: str
    heartbeat: int = HEARTBEAT


def is_journal(url: str) -> bool:
    return "://" not in url and url.endswith(".log")


def masked(url: str) -> str:
    """The URL with its password hidden, for messages and search.yaml."""
    if "://" not in url:
        return url
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(shared: Shared):
    """The Optuna storage behind `shared.url`; a missing driver or an unreachable server is a one-line error."""
    import warnings

    import optuna

    url = shared.url
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if not Path(url).parent.is_dir():
            raise UserError(f"--storage {url}: folder {Path(url).parent} does not exist")
        return JournalStorage(JournalFileBackend(url))  # its default lock (a symlink) works on NFS
    if "://" not in url:
        raise UserError(f"--storage {url}: neither a database URL (postgresql://user:password@host/db, "
                        "mysql+pymysql://...) nor a journal file (PATH.log)")
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, IntegrityError, OperationalError, ProgrammingError

    try:
        backend = make_url(url)
    except ArgumentError:
        raise UserError(f"--storage {url}: not a database URL (postgresql://user:password@host/db)") from None
    extra = EXTRAS.get(backend.get_backend_name())
    hint = f"pip install 'optbench[{extra}]'" if extra else f"install SQLAlchemy's driver for {backend.drivername}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat_interval
        for attempt in range(5):
            try:
                return optuna.storages.RDBStorage(
                    url, engine_kwargs={"pool_pre_ping": True},  # a trial outlasts idle connections
                    heartbeat_interval=shared.heartbeat,
                    heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=RETRIES))
            except ImportError as e:
                raise UserError(f"--storage {masked(url)}: no driver for {backend.drivername} "
                                f"({e.__cause__ or e}): {hint}") from None
            except (IntegrityError, ProgrammingError):
                # workers starting at once on an empty database race to create Optuna's tables; the loser retries
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
            except OperationalError as e:
                raise UserError(f"--storage {masked(url)}: cannot connect: {_first_line(e.orig or e)}") from None


def submit_workers(function, args: tuple, workers: int, folder: Path, cluster: str | None, params: dict) -> list:
    """`workers` calls of function(*args) as one submitit job array (SLURM, or local processes); waits for them.

    Returns one line per job that failed (empty: all returned).
    """
    try:
        import submitit
    except ImportError:
        raise UserError("--workers needs submitit: pip install 'optbench[slurm]'") from None
    try:
        executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
    except RuntimeError as e:  # --cluster slurm where there is no srun
        raise UserError(f"--cluster {cluster}: {_first_line(e)}") from None
    try:
        executor.update_parameters(**{"name": "optbench-search", "timeout_min": WORKER_TIMEOUT_MIN, **params})
    except (ValueError, AssertionError, TypeError, NameError) as e:  # submitit's ways of naming a bad parameter
        raise UserError(f"--submitit: {_first_line(e)}") from None
    try:
        jobs = executor.map_array(function, *[[a] * workers for a in args])
    except (submitit.core.utils.FailedSubmissionError, OSError) as e:  # sbatch refused the array, or is missing
        raise UserError(f"could not submit the workers: {_first_line(e)}") from None
    ids = sorted({job.job_id.split("_")[0] for job in jobs})  # one id for a SLURM array, one per local process
    print(f"submitted {workers} workers to {executor.cluster}: job {', '.join(ids)}; logs in {folder}", flush=True)
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as e:  # submitit re-raises the job's error with its log; one line per job here
            lines = [line for line in str(e).splitlines() if line.strip()]
            failed.append(f"worker {job.job_id} failed: {lines[-1] if lines else type(e).__name__} "
                          f"(log: {job.paths.stderr})")
    return failed


def _first_line(error: Exception) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
