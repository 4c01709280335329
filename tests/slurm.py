"""A throwaway one-node SLURM cluster for tests: Debian's slurmctld, slurmd and munged, configured in a temporary
folder.

The cluster has its own munge key and socket, its own ports, state and
spool folders, and one node (this machine by `hostname -s`, its CPUs and
memory) in one partition; no cgroups, no accounting database. Nothing
under /etc is read or written: every program finds the cluster through
SLURM_CONF, and the munge socket through slurm.conf's AuthInfo. The daemons
run as root (SlurmUser=root), as slurmd must to start jobs. Skips where the
programs are missing (.ci/run installs Debian's slurmctld, slurmd, munge
and slurm-client there) or where this is not root.

What submitit needs from it: `sbatch` (with --requeue, --signal=USR2@90),
`srun` inside the job, `scontrol requeue` from the job when it checkpoints,
`scancel`. It watches job states with `sacct`, which without an accounting
database (AccountingStorageType=accounting_storage/none) refuses every call
("Slurm accounting storage is disabled"); submitit logs "Bypassing sacct
error" and learns that a job ended from its result file instead, which is
how a job that returns or raises ends. Only a job killed before it writes
that file would leave submitit waiting, so the tests start optbench with a
timeout. `sacct --completion` reads the job completion log that
JobCompType=jobcomp/filetxt keeps here (each end of a job, REQUEUED
included); submitit does not ask for it, and it names array tasks by their
own job ids, so it serves the tests, not submitit.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PROGRAMS = ("munged", "slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "sinfo", "squeue", "scontrol",
            "scancel")
# a requeued job waits for the job credential's lifetime before it may start again: 120 s by default, a test's
# whole budget; 10 s still leaves a loaded 2-core machine time to launch a step with it
CRED_EXPIRE_S = 10


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    with open("/proc/meminfo") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
    return kb // 1024


def _program(name: str) -> str | None:
    # the daemons live in /usr/sbin, which a non-login root shell may not have on its PATH
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")


def slurm_conf(folder: Path, node: str, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    return f"""\
ClusterName=optbench
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge.socket,cred_expire={CRED_EXPIRE_S}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
PlugStackConfig={folder}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={folder}/jobcomp.txt
MpiDefault=none
# a requeued job becomes eligible by the clock, which only the periodic scheduling pass notices (every 60 s)
SchedulerParameters=sched_interval=1
ReturnToService=2
# the node is what this file says (a VM's topology may not match what slurmd detects): never drained for it
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def slurm_cluster():
    """The cluster's environment ({"SLURM_CONF": path}), set in os.environ for the module's tests and the processes
    they start (sbatch passes it on to the jobs); the daemons are stopped and the folder deleted afterwards."""
    missing = [p for p in PROGRAMS if _program(p) is None]
    if missing:
        pytest.skip(f"SLURM programs not found ({', '.join(missing)}): apt-get install slurmctld slurmd munge "
                    "slurm-client")
    if os.geteuid() != 0:
        pytest.skip("the throwaway SLURM cluster runs its daemons as root, as slurmd must to start jobs")
    pytest.importorskip("submitit", reason="the slurm extra's submitit: pip install 'optbench[slurm]'")
    folder = Path(tempfile.mkdtemp(prefix="optbench-slurm-"))
    folder.chmod(0o755)  # munged refuses a socket in a folder that not everyone may enter
    for sub in ("state", "spool"):
        (folder / sub).mkdir()
    (folder / "plugstack.conf").touch()  # not Debian's /etc/slurm/plugstack.conf
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    node = socket.gethostname().split(".")[0]
    conf = folder / "slurm.conf"
    conf.write_text(slurm_conf(folder, node, os.cpu_count() or 1, _memory_mb(), _free_port(), _free_port()))
    env = {"SLURM_CONF": str(conf)}
    daemon_env = {**os.environ, **env}
    daemons = []
    patch = pytest.MonkeyPatch()

    def log_tails() -> str:
        return "".join(f"\n--- {p.name}:\n{p.read_text()[-1500:]}" for p in sorted(folder.glob("*.log")))

    try:
        # munged forks into the background once its socket is up; it stops on SIGTERM (its pid file)
        started = subprocess.run([_program("munged"), f"--socket={folder}/munge.socket", f"--key-file={key}",
                                  f"--pid-file={folder}/munged.pid", f"--log-file={folder}/munged.log",
                                  f"--seed-file={folder}/munged.seed"],
                                 capture_output=True, text=True, timeout=30)
        assert started.returncode == 0, f"munged: {started.stderr.strip()}{log_tails()}"
        # in the foreground (-D), as children of this process: stopped by their pid, whatever happens to the folder
        for daemon, flags in (("slurmctld", ["-D"]), ("slurmd", ["-D"])):
            with open(folder / f"{daemon}.out", "w") as out:
                daemons.append(subprocess.Popen([_program(daemon), *flags], env=daemon_env, stdout=out,
                                                stderr=subprocess.STDOUT))
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            assert all(d.poll() is None for d in daemons), f"a SLURM daemon exited{log_tails()}"
            state = subprocess.run(["sinfo", "-h", "-n", node, "-o", "%T"], env=daemon_env, capture_output=True,
                                   text=True, timeout=30).stdout.strip()
            if state == "idle":
                break
            time.sleep(0.2)
        assert state == "idle", f"node {node} is {state or 'not known'} after 60 s{log_tails()}"
        for name, value in env.items():
            patch.setenv(name, value)
        yield env
    finally:
        patch.undo()
        # jobs outlive slurmd (slurmstepd runs them): cancelled first, then the daemons and munged go
        if daemons and daemons[0].poll() is None:
            subprocess.run(["scancel", "--full", "-u", "root"], env=daemon_env,
                           capture_output=True, timeout=30)
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline and subprocess.run(
                    ["squeue", "-h", "-o", "%i"], env=daemon_env, capture_output=True, text=True,
                    timeout=30).stdout.strip():
                time.sleep(0.2)
        for daemon in reversed(daemons):
            daemon.terminate()
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()
                daemon.wait()
        if (folder / "munged.pid").is_file():
            # it writes its seed file as it exits: the folder goes once it has
            subprocess.run([_program("munged"), "--stop", f"--socket={folder}/munge.socket"], capture_output=True,
                           timeout=30)
        shutil.rmtree(folder, ignore_errors=True)
