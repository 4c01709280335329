"""A throwaway PostgreSQL server for tests: Debian's server programs, a cluster in a temporary folder.

The server listens on a free port of 127.0.0.1 only, with its socket in the
same folder. Connections over TCP need the password (user `postgres`,
scram-sha-256, a new random password per server), as a real server's do;
only the socket trusts local connections.
It refuses to run as root, so under root (tests and CI) it runs as `nobody`.
Skips where the server programs are missing (.ci/run installs Debian's
postgresql there).
"""

import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

UNPRIVILEGED = "nobody"  # on every Debian system; owns only the temporary cluster


def server_programs() -> Path | None:
    """The folder with initdb and pg_ctl: on the PATH, or Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parts[-3]))
    return versions[-1].parent if versions else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", UNPRIVILEGED, "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres_server():
    """(host, port) of a fresh PostgreSQL cluster; stopped and deleted after the module's tests."""
    programs = server_programs()
    if programs is None:
        pytest.skip("PostgreSQL server programs (initdb, pg_ctl) not found: apt-get install postgresql")
    pytest.importorskip("psycopg", reason="the postgres extra's driver: pip install 'optbench[postgres]'")
    # not pytest's tmp_path: its parents are private to root and the server user must reach the folder
    folder = Path(tempfile.mkdtemp(prefix="optbench-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, UNPRIVILEGED)
    env = {**os.environ, "LC_ALL": "C"}
    port = _free_port()

    def run(*cmd):
        done = subprocess.run(_as_server_user([str(programs / cmd[0]), *cmd[1:]]), capture_output=True, text=True,
                              env=env, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"

    password = f"pw-{uuid.uuid4().hex}"  # unique: a test looks for it in every file a search wrote
    pwfile = folder / "pwfile"
    pwfile.write_text(password + "\n")
    if os.geteuid() == 0:
        shutil.chown(pwfile, UNPRIVILEGED)
    run("initdb", "-D", str(data), "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256",
        f"--pwfile={pwfile}", "--encoding=UTF8", "--locale=C", "--no-sync")
    pwfile.unlink()
    # durability off: a test database is thrown away
    options = (f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
               "-c full_page_writes=off -c max_connections=50")
    run("pg_ctl", "-D", str(data), "-l", str(folder / "server.log"), "-o", options, "-w", "-t", "60", "start")
    try:
        yield "127.0.0.1", port, password
    finally:
        subprocess.run(_as_server_user([str(programs / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]),
                       capture_output=True, env=env, timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """The SQLAlchemy URL (with the password) of a new, empty database on the throwaway server, one per test."""
    import psycopg

    host, port, password = postgres_server
    name = f"t_{uuid.uuid4().hex[:12]}"
    # autocommit: CREATE DATABASE cannot run in a transaction
    with psycopg.connect(host=host, port=port, user="postgres", password=password, dbname="postgres",
                         autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    return f"postgresql://postgres:{password}@{host}:{port}/{name}"
