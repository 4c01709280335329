"""optbench search --storage: workers in separate processes share one study on a real PostgreSQL server or a
journal file, run exactly the trials asked for, and rerun a trial whose worker was killed."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings

import pandas as pd
import pytest

from conftest import optbench

optuna = pytest.importorskip("optuna")
from optbench import search  # noqa: E402
from optbench.errors import UserError  # noqa: E402
from optbench.search import running, settings, shared, spaces  # noqa: E402
from optbench.search.shared import PASSWORD_ENV, Shared, masked, open_storage, split_password  # noqa: E402

TRAIN = ["optimizer=sgd", "trainer.max_steps=10", "trainer.checkpoint_every=0", "model.hidden=[32]", "diagnostics=off",
         "data.train_eval_size=500", "data.val_size=1000"]


def _command(search_dir, storage, mnist_root, *flags):
    return [sys.executable, "-m", "optbench", "search", "--dir", str(search_dir), "--storage", storage,
            "--space", "lr", "--sampler", "random", "--threads", "1", *flags, *TRAIN, f"data.root={mnist_root}"]


def _start(cmd):
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs, timeout=240):
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [p.returncode for p in procs], "\n".join(o[-2000:] for o in outputs)


def _study(storage, name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's experimental heartbeat
        return optuna.load_study(study_name=name, storage=open_storage(Shared(storage, name)))


def _check_exactly(search_dir, study, n):
    """n COMPLETE trials numbered 0..n-1, one completed run directory each (000..), nothing else run."""
    trials = study.get_trials(deepcopy=False)
    numbers = [t.number for t in trials]
    assert len(numbers) == len(set(numbers))
    complete = sorted(t.number for t in trials if t.state.name == "COMPLETE")
    assert complete == list(range(n))
    # a trial asked for in a race beyond the budget ends FAIL, unrun, and says so
    for t in trials:
        if t.state.name != "COMPLETE":
            assert t.state.name == "FAIL" and t.user_attrs["reason"].startswith("not run:") and not t.params
    runs = sorted(p.parent.name for p in search_dir.glob("runs/*/summary.json"))
    assert [r[:3] for r in runs] == [f"{i:03d}" for i in range(n)]
    summaries = [json.loads((search_dir / "runs" / r / "summary.json").read_text()) for r in runs]
    assert all(s["status"] == "completed" for s in summaries)
    lrs = [t.params["optimizer.lr"] for t in trials if t.state.name == "COMPLETE"]
    assert len(set(lrs)) == n  # workers asking at once do not draw one point twice
    return trials


@pytest.mark.parametrize("kind", ["postgres", "journal"])
def test_three_workers_share_one_study_and_run_exactly_the_trials_asked_for(kind, mnist_root, tmp_path, request):
    storage = request.getfixturevalue("postgres_url") if kind == "postgres" else str(tmp_path / "study.log")
    s = tmp_path / "s"
    # more trials than workers, so one runs a second while the budget runs out under the others; 4, not 6: each
    # worker's start (its imports) is most of its time, and all three are asking within their first trial
    procs = [_start(_command(s, storage, mnist_root, "--trials", "4")) for _ in range(3)]
    codes, output = _finish(procs)
    assert codes == [0, 0, 0], output
    trials = _check_exactly(s, _study(storage, "s"), 4)
    assert len({t.user_attrs["worker"] for t in trials if t.state.name == "COMPLETE"}) >= 2, output  # shared work
    assert sorted(pd.read_csv(s / "trials.csv").query("state == 'COMPLETE'")["number"]) == list(range(4))
    assert "storage" in (s / "search.yaml").read_text()


def _running_with_params(url, pid):
    """Trial numbers RUNNING in worker `pid` that already drew their point (so their run has started)."""
    import psycopg

    worker = json.dumps(f"{socket.gethostname()}:{pid}")
    with psycopg.connect(url) as connection:
        try:
            rows = connection.execute(
                "select t.number from trials t join trial_user_attributes a using (trial_id) "
                "where t.state = 'RUNNING' and a.key = 'worker' and a.value_json = %s "
                "and exists (select 1 from trial_params p where p.trial_id = t.trial_id)", (worker,)).fetchall()
        except psycopg.errors.UndefinedTable:  # the first worker has not made Optuna's tables yet
            return []
        return [n for (n,) in rows]


def test_a_trial_whose_worker_was_killed_is_rerun_by_another_worker(postgres_url, mnist_root, tmp_path):
    s = tmp_path / "s"
    cmd = _command(s, postgres_url, mnist_root, "--trials", "2", "--heartbeat", "1")
    victim, survivor = _start(cmd), _start(cmd)
    deadline = time.time() + 120
    while time.time() < deadline and not (killed := _running_with_params(postgres_url, victim.pid)):
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)  # mid-trial: no handler runs, the trial stays RUNNING in the database
    victim.wait(timeout=60)
    assert killed, "the victim never started a trial"
    codes, output = _finish([survivor])
    assert codes == [0], output
    study = _study(postgres_url, "s")
    dead = study.trials[killed[0]]
    assert dead.state.name == "FAIL"  # its heartbeat stopped: failed by the survivor, not counted
    retried = [t for t in study.trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retried) == 1 and retried[0].state.name == "COMPLETE"
    assert retried[0].params == dead.params  # the same point, run again
    assert retried[0].user_attrs["worker"].endswith(f":{survivor.pid}")
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 2 and not [t for t in study.trials if t.state.name == "RUNNING"]
    runs = sorted(p.parent.name for p in s.glob("runs/*/summary.json"))
    assert sorted(r[:3] for r in runs) == sorted(f"{t.number:03d}" for t in complete)
    # a worker started later finds the study finished: it neither reruns the dead trial nor adds one (here, a
    # worker with this process's pid: a third interpreter's imports were most of its cost; no --threads, which
    # would stay set in this process)
    threads = cmd.index("--threads")
    again = optbench(*cmd[3:threads], *cmd[threads + 2:])
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(_study(postgres_url, "s").trials) == len(study.trials)


def test_submitit_workers_share_the_study_and_its_password_reaches_no_file_and_no_output(
        postgres_server, postgres_url, mnist_root, tmp_path):
    # the README's form, postgresql://user:password@host/db, with two submitit workers: before, the password was in
    # .submitit/*_submitted.pkl (each worker's pickled arguments) and search.yaml
    pytest.importorskip("submitit")
    password = postgres_server[2]
    assert f":{password}@" in postgres_url
    env = {k: v for k, v in os.environ.items() if k not in (PASSWORD_ENV, "PGPASSWORD")}
    s = tmp_path / "s"
    cmd = _command(s, postgres_url, mnist_root, "--trials", "2", "--workers", "2", "--cluster", "local",
                   "--submitit", "timeout_min=10")
    submitter = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    printed = submitter.communicate(timeout=300)[0]
    assert submitter.returncode == 0, printed[-3000:].decode(errors="replace")
    assert b"submitted 2 workers to local" in printed
    trials = _check_exactly(s, _study(postgres_url, "s"), 2)
    pids = {t.user_attrs["worker"].rpartition(":")[2] for t in trials if t.state.name == "COMPLETE"}
    assert pids and str(submitter.pid) not in pids  # trained in the jobs, not in the submitting process
    assert len(list((s / ".submitit").glob("*_log.out"))) == 2  # one log per worker job
    assert sorted(pd.read_csv(s / "trials.csv").query("state == 'COMPLETE'")["number"]) == list(range(2))
    assert password.encode() not in printed
    files = [p for p in s.rglob("*") if p.is_file()]
    assert [p for p in files if p.name.endswith("_submitted.pkl")], "no worker was submitted"
    assert not [p for p in files if password.encode() in p.read_bytes()]
    assert b"postgres@127.0.0.1" in (s / "search.yaml").read_bytes()  # the URL is recorded, its password is not
    # ?password= in the query string: taken out as well (here on one machine, no workers)
    query = postgres_url.replace(f":{password}@", "@") + f"?password={password}"
    t = tmp_path / "t"
    done = subprocess.run(_command(t, query, mnist_root, "--trials", "1"), capture_output=True, timeout=300, env=env)
    printed = done.stdout + done.stderr
    assert done.returncode == 0, printed[-3000:].decode(errors="replace")
    assert password.encode() not in printed
    assert not [p for p in t.rglob("*") if p.is_file() and password.encode() in p.read_bytes()]


def test_storage_mistakes_are_one_line_errors(tmp_path, postgres_server):
    host, port, password = postgres_server
    spec = {"space": {"optimizer.lr": "log(1e-3, 1)"}}
    with pytest.raises(UserError, match=r"optbench\[mysql\]") as no_driver:
        open_storage(Shared("mysql+pymysql://u:secret@127.0.0.1/x", "s"))
    assert "secret" not in str(no_driver.value)
    with pytest.raises(UserError, match="cannot connect") as wrong:
        open_storage(Shared(f"postgresql://postgres:{password}@{host}:{port}/no_such_database", "s"))
    assert password not in str(wrong.value)
    with pytest.raises(UserError, match="cannot connect.*password authentication failed"):
        open_storage(Shared(f"postgresql://postgres:wrong@{host}:{port}/postgres", "s"))
    with pytest.raises(UserError, match="journal file"):
        open_storage(Shared("study.json", "s"))
    with pytest.raises(UserError, match="needs --dir"):
        search.main(["--space", "lr", "--storage", str(tmp_path / "study.log")])
    with pytest.raises(UserError, match="--workers needs --storage"):
        search.main(["--space", "lr", "--dir", str(tmp_path / "w"), "--workers", "2"])
    pytest.importorskip("submitit")
    workers = ["--space", "lr", "--dir", str(tmp_path / "w"), "--storage", str(tmp_path / "w.log"), "--workers", "2"]
    with pytest.raises(UserError, match="--submitit: Parameter 'bogus'"):
        search.main([*workers, "--cluster", "local", "--submitit", "bogus=3"])
    if not shutil.which("srun"):  # where SLURM is, this would submit
        with pytest.raises(UserError, match="--cluster slurm: .*srun"):
            search.main([*workers, "--cluster", "slurm"])
    # one study name, another search: refused instead of mixing trials
    journal = str(tmp_path / "study.log")
    shared.open_study(Shared(journal, "s"), settings.settle_spec(tmp_path / "a", {**spec, "storage": journal}))
    other = {"space": {"optimizer.lr": "log(1e-2, 1)"}}
    with pytest.raises(UserError, match="other space"):
        shared.open_study(Shared(journal, "s"), settings.settle_spec(tmp_path / "b", other))
    # a directory whose study is on a storage does not quietly start a new SQLite study
    with pytest.raises(UserError, match="pass --storage"):
        search.main(["--dir", str(tmp_path / "a")])


def test_claim_runs_the_first_trials_by_number_and_one_of_a_doubled_grid_point(tmp_path):
    # the race itself, without timing: trials asked for at once, then each decided by the rule a worker applies
    study = shared.open_study(Shared(str(tmp_path / "study.log"), "s"),
                              settings.settle_spec(tmp_path / "s", {"space": {"optimizer.lr": [0.1, 0.2]}}))
    spec = {"sampler": "random", "sampler_seed": 0}
    asked = [study.ask() for _ in range(3)]  # three workers asked when one trial was left of a budget of 2
    study.tell(asked[0], 0.5)
    shared.claim(asked[1], spec, target=2)
    with pytest.raises(shared.NotClaimed, match="had its 2 trials"):
        shared.claim(asked[2], spec, target=2)
    # two workers queued the grid at once: the point's first trial runs, its double does not
    study.enqueue_trial({"optimizer.lr": 0.1})
    study.enqueue_trial({"optimizer.lr": 0.1})
    first, double = study.ask(), study.ask()
    assert first.number < double.number
    with pytest.raises(shared.NotClaimed, match="same grid point"):
        shared.claim(double, spec, target=10)
    study.tell(double, state=optuna.trial.TrialState.FAIL)  # as study.optimize does with a trial not claimed
    shared.claim(first, spec, target=10)
    # a point is free again once its trial failed (a dead worker's point, queued again)
    study.tell(first, state=optuna.trial.TrialState.FAIL)
    study.enqueue_trial({"optimizer.lr": 0.1})
    shared.claim(study.ask(), spec, target=10)


def test_queueing_the_grid_again_adds_no_point_already_queued(tmp_path):
    # every worker (and every resume) queues the grid: only what is neither finished nor queued yet
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'g.db'}")
    points = search.grid(search.parse_space({"optimizer.lr": "log(1e-3, 1)"}), 4)
    assert running.enqueue_grid(study, points) == 4
    assert running.enqueue_grid(study, points) == 4 and len(study.trials) == 4
    trial = study.ask()
    spaces.suggest(trial, "optimizer.lr", search.parse_space({"optimizer.lr": "log(1e-3, 1)"})["optimizer.lr"])
    study.tell(trial, 0.5)
    assert running.enqueue_grid(study, points) == 3 and len(study.trials) == 4


# (URL given to --storage, the password the driver would use): user-info, the query string, both (the query's
# wins, as in SQLAlchemy's drivers), and characters a URL must escape
URLS = [("postgresql://ana:s3cret@db.example:5432/optuna", "s3cret"),
        ("postgresql://ana@db.example/optuna?password=s3cret&sslmode=require", "s3cret"),
        ("postgresql+psycopg://ana:0ther@db.example/optuna?password=s3cret", "s3cret"),
        ("mysql+pymysql://ana:p%40ss%2Fw0rd@db.example/optuna", "p@ss/w0rd")]


@pytest.mark.parametrize("url, password", URLS)
def test_a_storage_url_loses_its_password_before_it_is_recorded_and_masked_in_messages(url, password):
    clean, secret = split_password(url)
    assert secret == password
    for text in (clean, masked(url)):
        assert not [w for w in ("s3cret", "0ther", "p%40ss", "p@ss") if w in text], text
        assert text.startswith(url.split(":")[0]) and "db.example" in text and "ana" in text, text
    assert "***" in masked(url)
    assert ("sslmode=require" in url) == ("sslmode=require" in clean)  # the rest of the query stays


@pytest.mark.parametrize("url", ["postgresql://ana:s3cret@db.example:54x2/optuna",
                                 "postgresql://ana:s3cret@db.example:99999/optuna",
                                 "postgresql://ana:s3c@ret@db.example/optuna", "postgres ql://ana:s3cret@db/optuna"])
def test_a_malformed_storage_url_is_one_line_that_shows_no_password_and_records_nothing(url, tmp_path):
    with pytest.raises(UserError) as refused:
        split_password(url)
    message = str(refused.value)
    assert "\n" not in message and "s3c" not in message and "ret@" not in message and "--storage" in message
    out = optbench("search", "--dir", str(tmp_path / "s"), "--space", "lr", "--storage", url)
    assert out.returncode == 2 and "s3c" not in out.stderr + out.stdout, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert not (tmp_path / "s").exists()  # nothing recorded, so the corrected command starts afresh


def test_a_url_without_password_takes_it_from_the_environment(postgres_server, postgres_url, monkeypatch):
    # what a worker does with the URL it was given: the password is in its environment, never in its job file
    password = postgres_server[2]
    bare = postgres_url.replace(f":{password}@", "@")
    for name in (PASSWORD_ENV, "PGPASSWORD"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match="cannot connect"):
        open_storage(Shared(bare, "s"))
    monkeypatch.setenv(PASSWORD_ENV, password)
    storage = open_storage(Shared(bare, "s"))
    assert storage.get_all_studies() == []
    monkeypatch.setenv(PASSWORD_ENV, "n0t-it")
    with pytest.raises(UserError, match="password authentication failed") as wrong:
        open_storage(Shared(bare, "s"))
    assert "n0t-it" not in str(wrong.value)
