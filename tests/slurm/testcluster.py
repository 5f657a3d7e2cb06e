"""A real multi-node Slurm on one machine for the tests: munged + slurmctld + one slurmd per
emulated node (`slurmd -N nodeK`), each with its own port and spool dir, fake GPUs on /dev/null.

    python tests/slurm/testcluster.py start DIR [--nodes 2]   # prints `export SLURM_CONF=...`
    python tests/slurm/testcluster.py stop DIR
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol")


def missing_binaries() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class SlurmTestCluster:
    root: Path
    nodes: list[str]
    cpus: int
    gpus: int

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for field in out.split():
            if field.startswith("JobState="):
                return field.split("=", 1)[1]
        return "UNKNOWN"

    def idle(self, nodes: list[str] | None = None) -> bool:
        """Whether every node (or those named) is idle, as sinfo says."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t", check=False)
        states = dict(line.split() for line in out.splitlines() if line.strip())
        return all(states.get(n, "").startswith("idle") for n in nodes or self.nodes)

    def wait_job(self, job_id: str, timeout: float = 120) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = self.job_state(job_id)
            if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                         "OUT_OF_MEMORY"):
                return state
            time.sleep(0.5)
        return self.job_state(job_id)


def _write_config(root: Path, nodes: list[str], cpus: int, gpus: int) -> None:
    host = socket.gethostname().split(".")[0]
    ctld_port = _free_port()
    (root / "state").mkdir(parents=True, exist_ok=True)
    for node in nodes:
        (root / "spool" / node).mkdir(parents=True, exist_ok=True)
    gres_files = "/dev/null"
    if gpus > 1:
        for i in range(gpus):
            dev = root / f"gpu{i}"
            if not dev.exists():
                subprocess.run(["mknod", str(dev), "c", "1", "3"], check=True)
        gres_files = f"{root}/gpu[0-{gpus - 1}]"
    node_lines = "\n".join(
        f"NodeName={n} NodeHostname={host} NodeAddr=127.0.0.1 Port={_free_port()} "
        f"CPUs={cpus} RealMemory=4000 {f'Gres=gpu:{gpus} ' if gpus else ''}State=UNKNOWN"
        for n in nodes)
    node_range = ",".join(nodes)
    (root / "slurm.conf").write_text(f"""\
ClusterName=hpcraytest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge.socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/builtin
MpiDefault=none
KillWait=10
MinJobAge=3600
InactiveLimit=0
GresTypes=gpu
{node_lines}
PartitionName=debug Nodes={node_range} Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE:4
""")
    if gpus:
        (root / "gres.conf").write_text(
            f"AutoDetect=off\nNodeName={node_range} Name=gpu File={gres_files}\n")
    else:
        (root / "gres.conf").write_text("AutoDetect=off\n")


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise RuntimeError(f"test Slurm: {what} not ready after {timeout:.0f}s")


def start(root: str | Path, nodes: int = 2, cpus: int = 2, gpus: int = 1) -> SlurmTestCluster:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    names = [f"node{i + 1}" for i in range(nodes)]
    _write_config(root, names, cpus, gpus)
    key = root / "munge.key"
    if not key.exists():
        key.write_bytes(os.urandom(1024))
    os.chmod(key, 0o600)
    subprocess.run(["munged", f"--socket={root}/munge.socket", f"--key-file={key}",
                    f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                    f"--seed-file={root}/munged.seed", "--force"], check=True)
    _wait_for(lambda: (root / "munge.socket").exists(), 10, "munged")
    cluster = SlurmTestCluster(root, names, cpus, gpus)
    env = {**os.environ, **cluster.env}
    subprocess.run(["slurmctld", "-f", str(cluster.conf)], check=True, env=env)
    for name in names:
        subprocess.run(["slurmd", "-N", name, "-f", str(cluster.conf)], check=True, env=env)
    _wait_for(cluster.idle, 30, "idle nodes")
    return cluster


def _pids(root: Path) -> list[int]:
    pids = []
    for f in root.glob("*.pid"):
        try:
            pids.append(int(f.read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    return pids


def stop(root: str | Path) -> None:
    root = Path(root)
    conf = root / "slurm.conf"
    if conf.exists():
        subprocess.run(["scancel", "--full", "--user=root"], capture_output=True,
                       env={**os.environ, "SLURM_CONF": str(conf)}, timeout=10)
    # slurmd first, then slurmctld, munged last (the others need it while stopping).
    order = sorted(_pids(root), key=lambda p: 0 if p else 1)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in order:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and any(_alive(p) for p in order):
            time.sleep(0.1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("action", choices=["start", "stop"])
    parser.add_argument("dir")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=1)
    args = parser.parse_args()
    if args.action == "start":
        cluster = start(args.dir, args.nodes, args.cpus, args.gpus)
        print(f"export SLURM_CONF={cluster.conf}")
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
