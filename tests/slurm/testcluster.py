"""A real multi-node Slurm on one machine for the tests: munged + slurmctld + one slurmd per
emulated node (`slurmd -N nodeK`), each with its own port and spool dir, fake GPUs on /dev/null.

Each node lives in a network namespace of its own (`hslurm-<tag>-<node>`) with a veth whose
node end is `hsn0` (as on Frontier and Perlmutter), carrying the node's own address on a
bridge in the host namespace (`hsb<tag>`, host-side veths `hsv<tag><k>`). slurmctld listens on
the bridge's address; each slurmd runs inside its node's namespace, so every job step (node
agents, Ray, replicas, drivers) does too. Without CAP_NET_ADMIN the nodes share 127.0.0.1 as
before (`separate_addresses` is False then).

    python tests/slurm/testcluster.py start DIR [--nodes 2]   # prints `export SLURM_CONF=...`
    python tests/slurm/testcluster.py stop DIR
    python tests/slurm/testcluster.py clean                   # leftover namespaces and bridges
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol")
NS_PREFIX = "hslurm-"      # namespaces: hslurm-<tag>-<node>
BRIDGE_PREFIX = "hsb"      # bridges: hsb<tag>
VETH_PREFIX = "hsv"        # host-side veth ends: hsv<tag><k>
NODE_IFACE = "hsn0"        # the node-side veth end, inside each namespace
SUBNETS = ipaddress.ip_network("10.216.0.0/16")  # one /24 per cluster, from here
NETWORK_FILE = "network.json"
NET_LOCK = Path("/tmp/hslurm-network.lock")  # two clusters starting at once pick apart
# who made each cluster's network: <tag>.json with the pid and start time of that process; a
# network whose maker is gone is a leftover (a namespace with no process in it is not: a
# live cluster's node can be empty for a while, between a node's loss and its return)
OWNERS = Path("/tmp/hslurm-owners")
TAG = re.compile(r"[0-9a-f]{6}")
NS_NAME = re.compile(rf"{NS_PREFIX}({TAG.pattern})-node[0-9]+")
BRIDGE_NAME = re.compile(rf"{BRIDGE_PREFIX}({TAG.pattern})")


def missing_binaries() -> list[str]:
    return [d for d in DAEMONS if shutil.which(d) is None and not Path(f"/usr/sbin/{d}").exists()]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the network: one namespace per node on a bridge ------------------------------------------

@dataclass
class Network:
    """Names and addresses of a cluster's namespaces, veths and bridge (network.json)."""

    tag: str
    subnet: str                                   # e.g. 10.216.7.0/24
    bridge: str
    bridge_ip: str                                # slurmctld's address; the host's on the bridge
    namespaces: dict[str, str]                    # node -> namespace
    veths: dict[str, str]                         # node -> host-side veth end
    addresses: dict[str, str]                     # node -> its hsn0 address

    @classmethod
    def plan(cls, tag: str, nodes: list[str], subnet: ipaddress.IPv4Network) -> Network:
        hosts = list(subnet.hosts())
        return cls(tag, str(subnet), f"{BRIDGE_PREFIX}{tag}", str(hosts[0]),
                   {n: f"{NS_PREFIX}{tag}-{n}" for n in nodes},
                   {n: f"{VETH_PREFIX}{tag}{k}" for k, n in enumerate(nodes)},
                   {n: str(hosts[k + 1]) for k, n in enumerate(nodes)})

    def save(self, root: Path) -> None:
        (root / NETWORK_FILE).write_text(json.dumps(self.__dict__, indent=1))

    @classmethod
    def load(cls, root: Path) -> Network | None:
        try:
            return cls(**json.loads((root / NETWORK_FILE).read_text()))
        except (OSError, ValueError, TypeError):
            return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=15)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host namespace has an address or a route in."""
    nets = []
    for line in _ip("-4", "-o", "addr", "show").stdout.splitlines() + \
            _ip("-4", "route", "show", "table", "all", check=False).stdout.splitlines():
        for word in line.split():
            if "/" in word or word[:1].isdigit():
                with contextlib.suppress(ValueError):
                    nets.append(ipaddress.ip_network(word, strict=False))
    return [n for n in nets if isinstance(n, ipaddress.IPv4Network)]


def _free_subnet(tag: str) -> ipaddress.IPv4Network:
    """A /24 of SUBNETS that no address or route of the host overlaps."""
    taken = _host_networks()
    subnets = list(SUBNETS.subnets(new_prefix=24))
    first = int(tag, 16) % len(subnets)
    for k in range(len(subnets)):
        candidate = subnets[(first + k) % len(subnets)]
        if not any(candidate.overlaps(n) for n in taken if n.prefixlen > 0):
            return candidate
    raise RuntimeError(f"test Slurm: no free /24 in {SUBNETS}")


def can_make_namespaces() -> tuple[bool, str]:
    """Whether this process may make network namespaces (CAP_NET_ADMIN), and why not."""
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        return False, "iproute2 (ip) or util-linux (nsenter) missing"
    tag = uuid.uuid4().hex[:6]
    probe, veth = f"{NS_PREFIX}probe-{tag}", f"{VETH_PREFIX}probe{tag}"
    try:  # what _make_network does: a namespace, and a veth pair into it
        for args in (("netns", "add", probe),
                     ("link", "add", veth, "type", "veth", "peer", "name", NODE_IFACE,
                      "netns", probe)):
            proc = _ip(*args, check=False)
            if proc.returncode != 0:
                return False, f"ip {' '.join(args[:2])}: {proc.stderr.strip()}"
        return True, ""
    finally:
        _ip("link", "del", veth, check=False)
        _ip("netns", "del", probe, check=False)


def _make_network(root: Path, nodes: list[str]) -> Network:
    """The bridge on the host, then per node: its namespace, a veth (hsn0 inside) on the
    bridge, its address, lo up. network.json is written before anything is made, so stop()
    removes whatever exists after a failure half-way."""
    with _network_lock():
        tag = uuid.uuid4().hex[:6]
        net = Network.plan(tag, nodes, _free_subnet(tag))
        net.save(root)
        OWNERS.mkdir(mode=0o700, exist_ok=True)
        (OWNERS / f"{tag}.json").write_text(json.dumps(
            {"pid": os.getpid(), "started": _started(os.getpid()), "root": str(root)}))
        _build(net, nodes)
    return net


@contextlib.contextmanager
def _network_lock():
    """Making a network, and cleaning leftovers, one at a time on this host."""
    NET_LOCK.touch(exist_ok=True)
    with open(NET_LOCK) as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _started(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): a pid reused by another
    process does not pass for the maker."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _build(net: Network, nodes: list[str]) -> None:
    prefix = net.subnet.split("/")[1]
    _ip("link", "add", net.bridge, "type", "bridge", "forward_delay", "0")
    _ip("addr", "add", f"{net.bridge_ip}/{prefix}", "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")
    for node in nodes:
        ns, veth = net.namespaces[node], net.veths[node]
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", NODE_IFACE, "netns", ns)
        _ip("link", "set", veth, "master", net.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "addr", "add", f"{net.addresses[node]}/{prefix}", "dev", NODE_IFACE)
        _ip("-n", ns, "link", "set", NODE_IFACE, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        # as on a real node: a default route, so "which address reaches the outside" (Ray's
        # guess when it is not told) names hsn0's
        _ip("-n", ns, "route", "add", "default", "via", net.bridge_ip)


def _namespace_pids(ns: str) -> list[int]:
    proc = _ip("netns", "pids", ns, check=False)
    return [int(p) for p in proc.stdout.split() if p.isdigit()]


def _remove_network(net: Network) -> None:
    """Every process left in the cluster's namespaces (they are this cluster's), then the
    namespaces, veths and bridge; what is already gone is skipped."""
    for ns in net.namespaces.values():
        pids = _namespace_pids(ns)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
    for veth in net.veths.values():
        _ip("link", "del", veth, check=False)  # its hsn0 peer goes with it
    for ns in net.namespaces.values():
        _ip("netns", "del", ns, check=False)
    _ip("link", "del", net.bridge, check=False)


def _maker_alive(tag: str) -> bool:
    try:
        owner = json.loads((OWNERS / f"{tag}.json").read_text())
    except (OSError, ValueError):
        return False
    return owner.get("started") is not None and _started(owner["pid"]) == owner["started"]


def leftovers() -> list[str]:
    """Namespaces and bridges of test clusters (by their exact name patterns) whose maker
    process is gone: what a killed test run left behind. Nothing else is ever named."""
    names = [line.split()[0] for line in _ip("netns", "list", check=False).stdout.splitlines()
             if line.strip()]
    found = [f"netns {n}" for n in names
             if (m := NS_NAME.fullmatch(n)) and not _maker_alive(m.group(1))]
    for line in _ip("-o", "link", "show", "type", "bridge", check=False).stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if (m := BRIDGE_NAME.fullmatch(name)) and not _maker_alive(m.group(1)):
            found.append(f"link {name}")
    return found


def clean_leftovers() -> list[str]:
    """Remove leftovers (their processes first), under the lock that making a network takes."""
    with _network_lock():
        gone = leftovers()
        for what in gone:
            kind, name = what.split()
            if kind == "netns":
                for pid in _namespace_pids(name):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
            _ip(kind, "del", name, check=False)
        for owner in OWNERS.glob("*.json"):  # their networks are gone now
            if TAG.fullmatch(owner.stem) and not _maker_alive(owner.stem):
                owner.unlink(missing_ok=True)
    return gone


# -- the cluster -------------------------------------------------------------------------------

@dataclass
class SlurmTestCluster:
    root: Path
    nodes: list[str]
    cpus: int
    gpus: int
    network: Network | None = None
    why_shared: str = ""   # why the nodes share 127.0.0.1, when they do
    times: dict[str, float] = field(default_factory=dict)  # seconds: network, to_idle

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    @property
    def separate_addresses(self) -> bool:
        """Each node in its own network namespace on its own address (else all 127.0.0.1)."""
        return self.network is not None

    @property
    def addresses(self) -> dict[str, str]:
        """node -> its address (its hsn0's; 127.0.0.1 for all in the shared layout)."""
        if self.network is None:
            return {n: "127.0.0.1" for n in self.nodes}
        return dict(self.network.addresses)

    @property
    def controller_address(self) -> str:
        return self.network.bridge_ip if self.network else "127.0.0.1"

    def namespace(self, node: str) -> str | None:
        return self.network.namespaces[node] if self.network else None

    def on_node(self, node: str) -> list[str]:
        """The argv prefix that runs a command in the node's network namespace (none in the
        shared layout): only the network is entered; mounts (/sys/fs/cgroup) stay the host's,
        as on a real node."""
        ns = self.namespace(node)
        return ["nsenter", f"--net=/run/netns/{ns}"] if ns else []

    def link(self, node: str, up: bool) -> None:
        """Take the node's link to the bridge down (a partition) or bring it back."""
        if self.network is None:
            raise RuntimeError("the nodes share 127.0.0.1: no link to take down")
        _ip("link", "set", self.network.veths[node], "up" if up else "down")

    def start_slurmd(self, node: str) -> None:
        """(Re)start one node's slurmd, inside its namespace."""
        subprocess.run([*self.on_node(node), "slurmd", "-N", node, "-f", str(self.conf)],
                       check=True, env={**os.environ, **self.env}, timeout=30)

    def run(self, *argv: str, check: bool = True, timeout: float = 30) -> str:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **self.env})
        if check and proc.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {proc.stderr.strip() or proc.stdout.strip()}")
        return proc.stdout

    def job_state(self, job_id: str) -> str:
        out = self.run("scontrol", "show", "job", "-o", job_id, check=False)
        for field_ in out.split():
            if field_.startswith("JobState="):
                return field_.split("=", 1)[1]
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


def _write_config(root: Path, nodes: list[str], cpus: int, gpus: int,
                  addresses: dict[str, str], controller: str) -> None:
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
        f"NodeName={n} NodeHostname={host} NodeAddr={addresses[n]} Port={_free_port()} "
        f"CPUs={cpus} RealMemory=4000 {f'Gres=gpu:{gpus} ' if gpus else ''}State=UNKNOWN"
        for n in nodes)
    node_range = ",".join(nodes)
    (root / "slurm.conf").write_text(f"""\
ClusterName=hpcraytest
SlurmctldHost={host}({controller})
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


def start(root: str | Path, nodes: int = 2, cpus: int = 2, gpus: int = 1,
          network: str = "auto") -> SlurmTestCluster:
    """network: 'netns' (a namespace per node, or fail), 'shared' (all on 127.0.0.1), or
    'auto' (namespaces when this process may make them). A failure half-way stops what was
    started and removes what was made before it raises."""
    if network not in ("auto", "netns", "shared"):
        raise ValueError(f"network must be auto, netns or shared, not {network!r}")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    names = [f"node{i + 1}" for i in range(nodes)]
    cluster = SlurmTestCluster(root, names, cpus, gpus)
    t0 = time.monotonic()
    try:
        if network != "shared":
            ok, why = can_make_namespaces()
            if ok:
                cluster.network = _make_network(root, names)
            elif network == "netns":
                raise RuntimeError(f"test Slurm: cannot make network namespaces: {why}")
            else:
                cluster.why_shared = f"no network namespaces ({why}): all nodes on 127.0.0.1"
                print(f"test Slurm: {cluster.why_shared}", file=sys.stderr)
        else:
            cluster.why_shared = "asked for the shared layout: all nodes on 127.0.0.1"
        cluster.times["network"] = time.monotonic() - t0
        _write_config(root, names, cpus, gpus, cluster.addresses, cluster.controller_address)
        key = root / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o600)
        subprocess.run(["munged", f"--socket={root}/munge.socket", f"--key-file={key}",
                        f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log",
                        f"--seed-file={root}/munged.seed", "--force"], check=True, timeout=30)
        _wait_for(lambda: (root / "munge.socket").exists(), 10, "munged")
        env = {**os.environ, **cluster.env}
        subprocess.run(["slurmctld", "-f", str(cluster.conf)], check=True, env=env, timeout=30)
        for name in names:
            cluster.start_slurmd(name)
        _wait_for(cluster.idle, 30, "idle nodes")
    except BaseException:
        stop(root)
        raise
    cluster.times["to_idle"] = time.monotonic() - t0
    return cluster


STOP_ORDER = ("slurmd", "slurmctld", "munged")  # munged last: the others need it to stop


def _pids(root: Path) -> list[int]:
    """The daemons' pids from their pid files, in STOP_ORDER; a pid file whose process is
    not that daemon any more (a stale file, the pid reused) is skipped, so nothing else is
    signalled."""
    found = []
    for f in root.glob("*.pid"):
        daemon = f.stem.split("-")[0]
        try:
            pid = int(f.read_text().split()[0])
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() != daemon:
                    continue
        except (OSError, ValueError, IndexError):
            continue
        if daemon in STOP_ORDER:
            found.append((STOP_ORDER.index(daemon), pid))
    return [pid for _, pid in sorted(found)]


def stop(root: str | Path) -> None:
    """scancel, the daemons, then the namespaces, veths and bridge; each step runs even if
    one before it failed."""
    root = Path(root)
    conf = root / "slurm.conf"
    try:
        if conf.exists():
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run(["scancel", "--full", "--user=root"], capture_output=True,
                               env={**os.environ, "SLURM_CONF": str(conf)}, timeout=10)
        order = _pids(root)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in order:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + 2
            while time.monotonic() < deadline and any(_alive(p) for p in order):
                time.sleep(0.1)
    finally:
        net = Network.load(root)
        if net is not None:
            _remove_network(net)
            (root / NETWORK_FILE).unlink(missing_ok=True)
            (OWNERS / f"{net.tag}.json").unlink(missing_ok=True)


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
    parser.add_argument("action", choices=["start", "stop", "clean"])
    parser.add_argument("dir", nargs="?")
    parser.add_argument("--nodes", type=int, default=2)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--gpus", type=int, default=1)
    parser.add_argument("--network", choices=["auto", "netns", "shared"], default="auto")
    args = parser.parse_args()
    if args.action == "clean":
        for what in clean_leftovers():
            print(f"deleted {what}")
        return 0
    if not args.dir:
        parser.error("start and stop need DIR")
    if args.action == "start":
        cluster = start(args.dir, args.nodes, args.cpus, args.gpus, args.network)
        print(f"export SLURM_CONF={cluster.conf}")
        for node, address in cluster.addresses.items():
            print(f"# {node}: {address}" + (f" in {cluster.namespace(node)}"
                                            if cluster.separate_addresses else ""))
        print(f"# idle after {cluster.times['to_idle']:.2f}s")
    else:
        stop(args.dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
