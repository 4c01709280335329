"""A study that workers on several machines share: where it is kept, how workers are submitted, and how they
agree which trials run (the claim protocol).

`--storage` takes
  postgresql://user@host:5432/db            any SQLAlchemy URL (mysql+pymysql://..., sqlite:///...):
                                            Optuna's RDBStorage; the driver comes with an extra
  /shared/path/study.log                    Optuna's JournalStorage in one file (JournalFileBackend), for clusters
                                            whose machines share only a file system; the form optuna-dashboard takes

Without it a search keeps its study in DIR/study.db (SQLite), shared only by processes of one machine.

No password is written anywhere: split_password takes it out of the URL at the command line, Shared holds the
URL without it, and open_storage puts it back in memory from PASSWORD_ENV, which the submitting process sets
for the workers it starts (the package docstring says how a user passes one).

A worker that dies leaves its trial RUNNING. An RDB storage records each running trial's heartbeat in the database
(Optuna's heartbeat_interval); a trial whose heartbeat stopped for 2 x HEARTBEAT seconds is marked FAIL by any live
worker and queued again with the same parameters (Optuna's RetryHeartbeatStaleTrialCallback). Optuna's journal
storage has no heartbeat: there only a dead process of the worker's own machine is noticed (by its PID, as with
SQLite).
"""

import json
import logging
import os
import re
import socket
import time
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from optbench.errors import UserError, first_line
from optbench.results import rundir
from optbench.search.settings import GROWABLE, SPEC_KEYS, comparable
from optbench.search.spaces import seeded_sampler

log = logging.getLogger(__name__)

HEARTBEAT = 30  # seconds between a running trial's heartbeats; its worker counts as dead after twice that
RETRIES = 2  # a trial whose worker died is queued again at most this often (a point that kills every worker ends)
WORKER_TIMEOUT_MIN = 60  # submitit's own default (5 min) would end a worker inside its first trials
# the storage's password, for processes that open it: the submitting process sets it for its workers, which
# inherit it (an environment is no file); a user may set it too, instead of writing it in --storage
PASSWORD_ENV = "OPTBENCH_STORAGE_PASSWORD"
EXTRAS = {"postgresql": "postgres", "mysql": "mysql"}  # SQLAlchemy backend -> the optbench extra with its driver
# seconds between a waiting worker's looks at a shared study: a heartbeat apart (30 s) it sat idle for up to
# that long after the last trial had finished elsewhere
POLL = 2


@dataclass(frozen=True)
class Shared:
    """A study on a storage other machines reach: its URL (or journal file), the study's name, the heartbeat.

    The URL never holds a password (split_password takes it out): a Shared is pickled into every worker's job
    file, and written to search.yaml. open_storage puts the password back, in memory, from PASSWORD_ENV.
    """

    url: str
    study: str
    heartbeat: int = HEARTBEAT


def is_journal(url: str) -> bool:
    """A journal file (PATH.log) rather than a database URL."""
    return "://" not in url and url.endswith(".log")


def masked(url: str) -> str:
    """The URL with its password hidden (user-info and ?password=), for messages; text-based, so a URL that does
    not parse is masked too. Where a password might hold a raw '@', everything up to the last '@' is hidden."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    userinfo, at, host = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.split(':', 1)[0]}:***@{host}"
    return scheme + sep + re.sub(r"([?&;]password=)[^&;]*", r"\1***", rest, flags=re.IGNORECASE)


def split_password(url: str) -> tuple[str, str | None]:
    """(the URL without its password, the password or None): the password is the URL's user-info one, or its
    `?password=` (which wins, as with SQLAlchemy's drivers). A URL that does not parse, or whose port is not a
    port, is a UserError that shows the URL masked."""
    if "://" not in url:
        return url, None
    parsed = _parse(url)
    query = parsed.query.get("password")
    secret = (query[-1] if isinstance(query, tuple) else query) or parsed.password
    # URL.set(password=None) leaves the password as it is: None means "unchanged" there
    clean = parsed._replace(password=None).difference_update_query(["password"])
    return clean.render_as_string(hide_password=False), secret


def storage_url(text: str) -> tuple[str, str | None]:
    """--storage as (the URL to record and hand to the workers, its password): the password taken out
    (split_password), a journal file's path made absolute (workers start in other folders)."""
    url, secret = split_password(text)
    return (str(Path(url).resolve()) if is_journal(url) else url), secret


def _parse(url: str):
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    form = "write it as postgresql://user@host:5432/db (the password: see `optbench search --help`)"
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"--storage {masked(url)}: not a database URL; {form}") from None
    except ValueError:  # SQLAlchemy reads the port with int()
        raise UserError(f"--storage {masked(url)}: the port is not a number; {form}") from None
    if parsed.port is not None and not 0 < parsed.port < 65536:
        raise UserError(f"--storage {masked(url)}: port {parsed.port} is not a port (1-65535); {form}")
    if parsed.host and "@" in parsed.host:
        raise UserError(f"--storage {masked(url)}: write an '@' inside the user name or password as %40")
    return parsed


def open_storage(shared: Shared):
    """The Optuna storage behind `shared.url`; a missing driver or an unreachable server is a one-line error.

    A database URL without a password gets PASSWORD_ENV's, if set, in memory only; without either the driver
    looks for one itself (libpq: PGPASSWORD, ~/.pgpass).
    """
    import optuna

    url = shared.url
    if is_journal(url):
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        if not Path(url).parent.is_dir():
            raise UserError(f"--storage {url}: folder {Path(url).parent} does not exist")
        return JournalStorage(JournalFileBackend(url))  # its default lock (a symlink) works on NFS
    if "://" not in url:
        raise UserError(f"--storage {url}: neither a database URL (postgresql://user@host/db, "
                        "mysql+pymysql://...) nor a journal file (PATH.log)")
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    backend = _parse(url)
    secret = os.environ.get(PASSWORD_ENV)
    if secret and backend.password is None and "password" not in backend.query:
        url = backend.set(password=secret).render_as_string(hide_password=False)
    secret = secret or backend.password or ""
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
                raise UserError(f"--storage {masked(shared.url)}: no driver for {backend.drivername} "
                                f"({e.__cause__ or e}): {hint}") from None
            except (IntegrityError, ProgrammingError):
                # workers starting at once on an empty database race to create Optuna's tables; the loser retries
                if attempt == 4:
                    raise
                time.sleep(0.5 * (attempt + 1))
            except OperationalError as e:
                reason = first_line(e.orig or e)
                if secret:  # a driver may quote its connection options back
                    reason = reason.replace(secret, "***")
                raise UserError(f"--storage {masked(shared.url)}: cannot connect: {reason}") from None


@contextmanager
def password_in_environment(secret: str | None):
    """PASSWORD_ENV set to `secret` while the block runs: the processes started in it (submitit's local workers,
    sbatch's jobs, which take the submitting shell's environment) inherit it, and no file holds it."""
    old = os.environ.get(PASSWORD_ENV)
    if secret is not None:
        os.environ[PASSWORD_ENV] = secret
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(PASSWORD_ENV, None)
        else:
            os.environ[PASSWORD_ENV] = old


def submit_workers(function, args: tuple, workers: int, folder: Path, cluster: str | None, params: dict) -> list:
    """`workers` calls of function(*args) as one submitit job array (SLURM, or local processes); waits for them:
    one line per job that failed (empty: all returned)."""
    try:
        from optbench.cluster import failure, make_executor, map_array
    except ImportError as e:
        if e.name != "submitit":
            raise
        raise UserError("--workers needs submitit: pip install 'optbench[slurm]'") from None
    executor = make_executor(cluster, folder, {"name": "optbench-search", "timeout_min": WORKER_TIMEOUT_MIN, **params},
                             (f"--cluster {cluster}", "--submitit"))
    jobs, ids = map_array(executor, function, [[a] * workers for a in args], "workers")
    print(f"submitted {workers} workers to {executor.cluster}: job {ids}; logs in {folder}", flush=True)
    failed = []
    for job in jobs:
        try:
            job.result()
        except Exception as e:
            failed.append(f"worker {job.job_id} failed: {failure(job, e)}")
    return failed


def open_study(shared: Shared, spec: dict):
    """The shared study, created by whichever worker comes first; refused when it holds another search."""
    import optuna

    study = optuna.create_study(study_name=shared.study, storage=open_storage(shared), load_if_exists=True,
                                direction="maximize")
    mine = json.loads(json.dumps({k: comparable(k, spec[k]) for k in SPEC_KEYS if k not in GROWABLE}))
    theirs = study.user_attrs.get("search")
    if theirs is None:
        study.set_user_attr("search", mine)
    elif theirs != mine:
        clash = ", ".join(k for k in mine if theirs.get(k) != mine[k])
        raise UserError(f"study {shared.study} in {masked(shared.url)} holds a search with other {clash}; "
                        "pick another --dir (the study is named after it)")
    return study


def run_shared(study, spec: dict, target: int, objective, shared: Shared) -> None:
    """Ask for and run trials of a study other machines share until it has `target` finished trials.

    No lock spans machines: the storage numbers trials in the order it creates them, and a trial runs only when
    fewer than `target` trials numbered below it are finished or running (claim), so all workers together run
    `target`. While the rest of the budget is running elsewhere a worker waits, as a heartbeat storage may yet find
    one of those trials' workers dead and queue it again; a journal storage cannot tell, so its workers stop.
    (Optuna finds a trial stale only once it has a heartbeat: a worker killed in the milliseconds between asking and
    its first heartbeat leaves a trial that keeps the others waiting until one of them is stopped.)
    """
    from optuna.storages import fail_stale_trials
    from optuna.trial import TrialState

    heartbeat = not is_journal(shared.url)
    while True:
        if heartbeat:
            fail_stale_trials(study)  # FAIL, and queued again with the same point (RETRIES)
        else:
            fail_orphans(study)
        states = [t.state for t in study.get_trials(deepcopy=False)]
        finished = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        if finished >= target:
            return
        if finished + states.count(TrialState.RUNNING) >= target:
            if not heartbeat:
                return
            time.sleep(min(shared.heartbeat, POLL))  # the last trials' end, or a dead worker's, is seen soon
            continue
        # workers asking at once see the same count: mix in the worker, or they would draw one point
        # (only CMA-ES draws at ask; claim reseeds the others by trial number)
        study.sampler = seeded_sampler(spec, len(states), zlib.crc32(worker_name().encode()))
        study.optimize(objective, n_trials=1, catch=(NotClaimed,))  # Optuna's loop: it keeps the heartbeat


class NotClaimed(Exception):
    """A trial asked for beyond the study's budget, or a grid point another worker queued first: FAIL, never run."""


def claim(trial, spec: dict, target: int) -> None:
    """Raise NotClaimed unless `trial` is one of the study's `target` trials; then seed the sampler by its number.

    The trials numbered below it are decided already or being decided by the same rule, so every worker agrees.
    """
    from optuna.trial import TrialState

    trials = trial.study.get_trials(deepcopy=False)
    below = [t for t in trials if t.number < trial.number]
    live = [t for t in below if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)]
    # a queued grid point (also when a dead worker's grid trial is queued again)
    point = next(t for t in trials if t.number == trial.number).system_attrs.get("fixed_params")
    reason = None
    if len(live) >= target:
        reason = f"the study had its {target} trials when this one was asked for"
    elif point and any(t.system_attrs.get("fixed_params") == point for t in below
                       if t.state != TrialState.FAIL):
        reason = "another worker queued the same grid point first"
    trial.set_user_attr("worker", worker_name())
    if reason:
        trial.set_user_attr("reason", f"not run: {reason}")
        raise NotClaimed(reason)
    # trial n draws the same point whichever worker runs it, as in a search on one machine
    trial.study.sampler = seeded_sampler(spec, trial.number)


def worker_name() -> str:
    """host:pid: the process a trial's `worker` attribute names."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fail_orphans(study, unclaimed: bool = False) -> None:
    """Trials left RUNNING by a killed process of this machine become FAIL, so they do not count and are rerun.

    unclaimed: also a trial with no worker yet. Under the study's lock a trial is asked for and claimed in one
    step, so one left unclaimed belongs to a process stopped inside that step (Ctrl-C right after ask()).
    """
    import optuna
    from optuna.trial import TrialState

    host = socket.gethostname()
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        name, _, pid = t.user_attrs.get("worker", "").rpartition(":")
        dead = name == host and pid.isdigit() and not rundir.pid_alive(int(pid))
        if dead or (unclaimed and "worker" not in t.user_attrs):
            try:
                study.tell(t.number, state=TrialState.FAIL, skip_if_finished=True)
            except optuna.exceptions.UpdateFinishedTrialError:  # a shared study: another worker was first
                continue
            log.warning("trial %d: its process %s is gone; marked FAIL", t.number,
                        pid or "(stopped before claiming it)")
