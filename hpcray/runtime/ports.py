"""A job-private block of ports for every Ray port flag, claimed per host so jobs never collide."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import socket
from dataclasses import dataclass
from pathlib import Path

import psutil

from hpcray import env

FIRST_PORT = 20000
BLOCK_SIZE = 200
N_BLOCKS = 200          # 20000 .. 59999
PROGRAM_OFFSETS = range(20, 52)  # program services' replicas on this node (32 at once)
WORKER_OFFSET = 52      # offsets 52..199: Ray worker processes (148 per node)
SERVICE_PORTS = {       # ray start flag -> offset in the block
    "--port": 0,
    "--node-manager-port": 1,
    "--object-manager-port": 2,
    "--ray-client-server-port": 3,
    "--dashboard-port": 4,
    "--dashboard-agent-listen-port": 5,
    "--dashboard-agent-grpc-port": 6,
    "--runtime-env-agent-port": 7,
    "--metrics-export-port": 8,
}
HEAD_ONLY = ("--port",)
SERVE_HTTP_OFFSET = 10  # Ray Serve's HTTP proxy on the head (offsets 9..19 are hpcray's own)
METRICS_OFFSET = 13     # the run's Prometheus endpoint, served by the head's node agent
# Ray's Prometheus exporters whose ports are not `ray start` flags but environment variables,
# fixed by default (44217, 44227): two jobs' heads on one node would collide there
RAY_PORT_VARIABLES = {env.RAY_AUTOSCALER_METRIC_PORT: 11, env.RAY_DASHBOARD_METRIC_PORT: 12}
CLAIM_DIR = Path(os.environ.get(env.PORT_CLAIMS, "/tmp/hpcray-ports"))


@dataclass(frozen=True)
class PortBlock:
    base: int

    def port(self, flag: str) -> int:
        return self.base + SERVICE_PORTS[flag]

    @property
    def serve_http_port(self) -> int:
        return self.base + SERVE_HTTP_OFFSET

    @property
    def metrics_port(self) -> int:
        """hpcray's Prometheus endpoint (the head's node agent; docs/metrics.md)."""
        return self.base + METRICS_OFFSET

    @property
    def ray_metrics_port(self) -> int:
        """Ray's own metrics exporter of this node (`--metrics-export-port`)."""
        return self.port("--metrics-export-port")

    @property
    def min_worker_port(self) -> int:
        return self.base + WORKER_OFFSET

    @property
    def max_worker_port(self) -> int:
        return self.base + BLOCK_SIZE - 1

    def ray_flags(self, head: bool = True) -> list[str]:
        """Every port flag of `ray start`; `--port` (the GCS) exists on the head only."""
        flags = [f"{flag}={self.base + off}" for flag, off in SERVICE_PORTS.items()
                 if head or flag not in HEAD_ONLY]
        return flags + [f"--min-worker-port={self.min_worker_port}",
                        f"--max-worker-port={self.max_worker_port}"]

    def ray_port_variables(self) -> dict[str, str]:
        """The environment of `ray start` that moves Ray's fixed ports into this block."""
        return {var: str(self.base + off) for var, off in RAY_PORT_VARIABLES.items()}

    def all_ports(self) -> range:
        return range(self.base, self.base + BLOCK_SIZE)


def preferred_block(cluster_id: str, node_index: int) -> int:
    """Deterministic first choice: different jobs hash apart, nodes of one job step apart."""
    digest = int(hashlib.sha256(cluster_id.encode()).hexdigest()[:8], 16)
    return (digest + node_index) % N_BLOCKS


def port_is_free(port: int) -> bool:
    for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as s:
                s.bind((addr, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            if exc.errno in (errno.EAFNOSUPPORT, errno.EADDRNOTAVAIL):
                continue
            return False
    return True


def _claim_file(index: int) -> Path:
    return CLAIM_DIR / f"block-{index}"


def _try_claim(index: int, owner: str, path: Path | None = None) -> bool:
    path = path or _claim_file(index)
    for _ in range(2):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            try:
                pid = int(path.read_text().split()[0])
            except (OSError, ValueError, IndexError):
                return False
            if psutil.pid_exists(pid):
                return False
            with contextlib.suppress(OSError):
                path.unlink()  # stale claim of a dead process
            continue
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()} {owner}\n")
        return True
    return False


def claim_block(cluster_id: str, node_index: int, base: int | None = None) -> PortBlock:
    """Claim a free block on this host for this process's lifetime (release_block undoes it)."""
    CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(PermissionError):
        os.chmod(CLAIM_DIR, 0o1777)
    if base is not None:  # explicit base from the workflow: one block per node index
        block = PortBlock(base + node_index * BLOCK_SIZE)
        busy = [p for p in block.all_ports() if not port_is_free(p)]
        if busy:
            raise OSError(f"ports {busy[:5]} of the configured block {block.base} are in use")
        return block
    start = preferred_block(cluster_id, node_index)
    for step in range(N_BLOCKS):
        index = (start + step) % N_BLOCKS
        if not _try_claim(index, cluster_id):
            continue
        block = PortBlock(FIRST_PORT + index * BLOCK_SIZE)
        if all(port_is_free(p) for p in block.all_ports()):
            return block
        release_block(block)
    raise OSError("no free port block of 200 ports between 20000 and 60000 on this host")


def release_block(block: PortBlock) -> None:
    _release(_claim_file((block.base - FIRST_PORT) // BLOCK_SIZE))


def _release(path: Path) -> None:
    """Remove a claim file of this process (another process's claim stays)."""
    try:
        if path.read_text().split()[0] == str(os.getpid()):
            path.unlink()
    except (OSError, IndexError):
        pass


def _port_claim_file(port: int) -> Path:
    return CLAIM_DIR / f"port-{port}"


def claim_program_port(owner: str) -> int:
    """A port for one program service replica: from the program offsets of the block this
    node's agent claimed (HPCRAY_PORT_BLOCK, inherited by every Ray process of the node),
    held by this process until release_program_port or its exit. Outside a run's node (no
    block), a port the kernel picks."""
    base = os.environ.get(env.PORT_BLOCK)
    if not base:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    CLAIM_DIR.mkdir(parents=True, exist_ok=True)
    for offset in PROGRAM_OFFSETS:
        port = int(base) + offset
        if not _try_claim(0, owner, _port_claim_file(port)):
            continue
        if port_is_free(port):
            return port
        release_program_port(port)
    raise OSError(f"all {len(PROGRAM_OFFSETS)} program-service ports of this node's block "
                  f"{base} are taken")


def release_program_port(port: int) -> None:
    _release(_port_claim_file(port))
